"""The pipeline as an Apache Airflow DAG, for teams whose orchestrator is Airflow.

    backline pipeline export --airflow dags/

writes one Python file that Airflow's scheduler loads. It has one task per pipeline step, with
the steps' dependencies as its edges. Each task runs that step through the CLI:

    backline --project /abs/project run --until STEP --logical-time <the run's logical time>

so Airflow decides *when* and backline decides *what*. The run key is the same (project name,
logical time) as in `backline run` and `backline schedule`. An Airflow retry of a task, a
cleared task or a backfill of a past date therefore finds the steps that already succeeded for
that key and does not redo them. A task whose upstream tasks succeeded runs only its own step.

What the file takes from backline.toml, at export time (re-export after changing it):
- `[schedule] cron` and `timezone` become a `CronTriggerTimetable`: the logical time of a run
  is the cron time itself, as in `backline schedule`. No cron means a DAG that runs only when
  triggered. `catchup` maps to the DAG's `catchup`.
- `[schedule] until` drops the steps after it.
- `[schedule] max_attempts`, `backoff_base`, `backoff_factor` and `backoff_max` become each
  task's `retries`, `retry_delay`, `retry_exponential_backoff` and `max_retry_delay`.
  Airflow's exponential backoff doubles the delay and adds jitter, so a factor other than 2 is
  approximated.

Retries only help with retryable failures. `backline run` exits 1 for those (a store that was
down) and 2 for a user error (bad config, a candidate that failed the gate). The task raises
`AirflowFailException` on exit 2, which fails it at once without using up retries.

The DAG file imports only Airflow and the standard library: backline is never installed into
Airflow's environment, and Airflow never into backline's. Tasks call the backline executable
named at export time (`--backline-command`; default: the one running the export) by its
absolute path. The file works with Airflow 2.10 and 3.x.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from backline.core.config import Config
from backline.core.errors import UsageError
from backline.core.files import atomic_path

DAG_ID = re.compile(r"[^A-Za-z0-9_.-]")
LOGICAL_TIME = "{{ (logical_date or dag_run.run_after).isoformat() }}"
"""The run's logical time as Airflow renders it: the logical date (Airflow 2, and scheduled or
backfilled runs in Airflow 3), else the time a manual run was asked for (Airflow 3)."""


def dag_id(cfg: Config) -> str:
    """backline_<project name>, with anything Airflow refuses in a DAG id replaced by '_'."""
    return "backline_" + DAG_ID.sub("_", cfg.project.name)


def default_command() -> list[str]:
    """The backline executable beside the running Python, else `python -m backline`."""
    beside = Path(sys.executable).parent / "backline"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("backline")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "backline"]


def steps_to_run(cfg: Config) -> list[tuple[str, tuple[str, ...]]]:
    """(step, the steps it needs) in order, cut after `[schedule] until` when it is set."""
    from backline.pipeline.steps import GRAPH

    until = cfg.schedule.until
    steps = [(s.name, s.needs) for s in GRAPH.steps]
    if not until:
        return steps
    names = [name for name, _ in steps]
    if until not in names:  # the scheduler checks this when it starts; the DAG must too
        raise UsageError(
            f"[schedule] until = {until!r} is not a pipeline step; steps: {', '.join(names)}."
        )
    needed = {until}
    for name, needs in reversed(steps):
        if name in needed:
            needed.update(needs)
    return [(name, needs) for name, needs in steps if name in needed]


def render_dag(
    cfg: Config,
    *,
    command: Sequence[str],
    start: date | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The DAG file's text (see the module docstring). `start`: the DAG's start_date (a day in
    the schedule's zone; default: the day of the export). Airflow runs nothing for a logical
    date before it, so set it early enough for the backfills you plan."""
    s = cfg.schedule
    moment = generated_at or datetime.now(UTC)
    first = start or moment.date()
    steps = steps_to_run(cfg)
    retries = s.max_attempts - 1
    lines = [
        f'"""Airflow DAG for the backline project {cfg.project.name!r}.',
        "",
        f"Written by `backline pipeline export --airflow` on {moment:%Y-%m-%d %H:%M} UTC from",
        f"{cfg.root / 'backline.toml'}. Re-export after changing that file instead of editing",
        "this one. Each task runs one step with `backline run --until STEP`; the run key",
        "(project, logical time) makes retries, clears and backfills idempotent.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import subprocess",
        "from datetime import timedelta",
        "",
        "import pendulum",
        "",
        "try:  # Airflow 3",
        "    from airflow.sdk import DAG, task",
        "    from airflow.sdk.exceptions import AirflowFailException",
        "except ImportError:  # Airflow 2",
        "    from airflow import DAG",
        "    from airflow.decorators import task",
        "    from airflow.exceptions import AirflowFailException",
        "from airflow.timetables.trigger import CronTriggerTimetable",
        "",
        f"BACKLINE = {list(command)!r}",
        f"PROJECT = {str(cfg.root)!r}",
        f"STEPS = {[name for name, _ in steps]!r}",
        f"NEEDS = {dict((name, list(needs)) for name, needs in steps)!r}",
        f"CRON = {s.cron!r}",
        f"TIMEZONE = {s.timezone!r}",
        "",
        "",
        "def run_step(step: str, logical_time: str) -> None:",
        '    """One pipeline step for the run key (project, logical_time)."""',
        "    argv = [*BACKLINE, '--project', PROJECT, 'run', '--until', step,",
        "            '--logical-time', logical_time]",
        "    print('$ ' + ' '.join(argv), flush=True)",
        "    code = subprocess.run(argv, check=False).returncode",
        "    if code == 2:  # a user error: bad config, a failed gate; retrying cannot help",
        "        raise AirflowFailException(",
        "            f'backline run --until {step} stopped on a user error (exit 2); see the log'",
        "        )",
        "    if code != 0:  # retryable (exit 1) or a crash: Airflow's retries apply",
        "        raise RuntimeError(f'backline run --until {step} failed with exit code {code}')",
        "",
        "",
        "with DAG(",
        f"    dag_id={dag_id(cfg)!r},",
        "    description='backline pipeline: ' + ' -> '.join(STEPS),",
        "    schedule=CronTriggerTimetable(CRON, timezone=TIMEZONE) if CRON else None,",
        f"    start_date=pendulum.datetime({first.year}, {first.month}, {first.day}, tz=TIMEZONE),",
        f"    catchup={s.catchup!r},",
        "    max_active_runs=1,  # one run of a project's pipeline at a time",
        "    tags=['backline'],",
        "    default_args={",
        f"        'retries': {retries},",
        f"        'retry_delay': timedelta(seconds={s.backoff_base.total_seconds():g}),",
        f"        'retry_exponential_backoff': {s.backoff_factor > 1 and retries > 0!r},",
        f"        'max_retry_delay': timedelta(seconds={s.backoff_max.total_seconds():g}),",
        "    },",
        "):",
        "    tasks = {",
        f"        step: task(task_id=step)(run_step)(step, {LOGICAL_TIME!r})",
        "        for step in STEPS",
        "    }",
        "    for step, needs in NEEDS.items():",
        "        for need in needs:",
        "            tasks[need] >> tasks[step]",
        "",
    ]
    return "\n".join(lines)


def export_airflow(
    cfg: Config,
    folder: Path,
    *,
    command: Sequence[str] | None = None,
    start: date | None = None,
) -> Path:
    """Write the DAG file into `folder` (created if missing); returns its path."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--airflow {folder}: that is a file; name the DAG folder to write into.")
    argv = list(command) if command else default_command()
    if not argv:
        raise UsageError("--backline-command is empty; name the backline executable to run.")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dag_id(cfg)}.py"
    text = render_dag(cfg, command=argv, start=start)
    compile(text, str(path), "exec")  # a broken file would only show up inside Airflow
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def split_command(text: str) -> list[str]:
    """--backline-command as a shell would split it ('/opt/venv/bin/backline')."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(
            f"--backline-command {text!r}: {exc}; quote it as a shell would."
        ) from None
