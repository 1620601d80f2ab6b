"""Resumed equals uninterrupted: a trainer process SIGKILLed again and again (at random steps,
during start-up, and inside checkpoint writes), restarted with resume=auto each time, ends with
the same parameters and the same per-step losses, bit for bit, as a run never interrupted."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from backline.core.faults import FAULT_ENV, kill_at, pause_at
from backline.train.checkpoint import CheckpointStore
from backline.train.loop import LOSS_LOG, prepare_run_dir

from .helpers import (
    fit_result,
    logged_step,
    run_worker,
    small_spec,
    synthetic_data,
    wait_for,
    worker_command,
    worker_env,
)

# kill modes, in order; "random" waits for a random step, the checkpoint_* modes make the
# trainer SIGKILL itself at that point of a checkpoint write (BACKLINE_TEST_FAULT)
PLAN = [
    "random",
    "checkpoint:after_first_file",
    "random",
    "startup",
    "checkpoint:before_rename",
    "random",
    "sigterm",
    "random",
    "checkpoint:after_rename",
    "random",
    "random",
    "random",
    "random",
]


def test_killed_anywhere_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    spec, data = small_spec(max_steps=400), synthetic_data()
    reference = tmp_path / "reference"
    prepare_run_dir(reference, spec, data)
    done = run_worker(reference)
    assert done.returncode == 0, done.stderr

    run = tmp_path / "interrupted"
    prepare_run_dir(run, spec, data)
    rng = random.Random(20260301)
    kills, during_write = 0, 0
    for mode in PLAN:
        resume = _newest_good_step(run)
        env = worker_env(BACKLINE_TEST_FAULT=pause_at("checkpoint_slow", 0.004))
        if mode.startswith("checkpoint:"):
            stage = mode.split(":")[1]
            at = (resume // spec.checkpoint_every + rng.randint(1, 3)) * spec.checkpoint_every
            at = min(at, spec.max_steps)
            env[FAULT_ENV] = kill_at(f"checkpoint_{stage}", at)
        proc = subprocess.Popen(worker_command(run), env=env, stderr=subprocess.PIPE, text=True)
        try:
            if mode.startswith("checkpoint:"):
                assert proc.wait(timeout=60) == -signal.SIGKILL, (
                    proc.stderr.read() if proc.stderr else ""
                )
            elif mode == "startup":
                time.sleep(rng.uniform(0.05, 1.0))
                proc.kill()
            else:
                target = max(resume, logged_step(run)) + rng.randint(1, 25)
                wait_for(lambda: logged_step(run) >= target or proc.poll() is not None)  # noqa: B023
                if mode == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(timeout=60) == 143
                    stopped = logged_step(run)
                    assert (run / "checkpoints" / f"step-{stopped:09d}").is_dir()
                    continue
                proc.kill()
            kills += proc.wait(timeout=60) == -signal.SIGKILL
            during_write += any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    done = run_worker(run)
    assert done.returncode == 0, done.stderr
    assert kills >= 10 and during_write >= 2, (kills, during_write)
    final = fit_result(run)
    assert final.resumed_from is not None and final.steps == spec.max_steps
    assert final.parameter_sha256 == fit_result(reference).parameter_sha256
    assert (run / LOSS_LOG).read_bytes() == (reference / LOSS_LOG).read_bytes()


def _newest_good_step(run: Path) -> int:
    loaded, _ = CheckpointStore(run / "checkpoints", keep=2).load_latest()
    return loaded.step if loaded is not None else 0
