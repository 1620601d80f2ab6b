"""Mutation testing of the modules that enforce the documented invariants (`make mutate`).

    make mutate                                          # every group, sampled, ~30 min
    .venv/bin/python benchmarks/mutate.py --group gate   # one group (a name or a prefix)
    .venv/bin/python benchmarks/mutate.py --module src/backline/pipeline/gate.py --all

mutmut (pinned in the Makefile) plants one-line bugs in a module, one function at a time, and
runs the module's mapped tests against each: a mutant that no test fails on "survived", and
is either a test that could not fail or a change that does not matter. The run never touches
src/: every group works in a fresh copy of the repository (the working tree, or `--rev REV`)
in a temporary folder, and mutmut writes its mutants under that copy's mutants/.

Modules are run in groups, one per invariant, so that mutmut collects which test executes
which function once per group. For each mutant, mutmut runs only the mapped tests that
execute the mutated function (`-x`: the first failure kills it). Tests marked slow, spark or
gpu are left out; redis and postgres tests run when those services answer.

A full run of every mutant (~5,000) takes hours on two cores, so by default each module runs
a seeded random sample (`--sample`, `--all` for everything). The score is killed / (killed +
survived + no tests) over the mutants that ran; a timeout counts as killed, a mutant whose
function no mapped test executes ("no tests") as undetected. It prints the surviving mutants
(file:line and the diff) and a table per module, and writes benchmarks/.mutate/summary.json
and benchmarks/.mutate/survivors.txt.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / ".mutate"
MARKERS = "not slow and not spark and not gpu"
# mutmut's statuses that count as the tests noticing the mutant
DETECTED = ("killed", "timeout", "segfault")
UNDETECTED = ("survived", "no tests")


@dataclass(frozen=True)
class Group:
    """The modules behind one invariant and, for each, the tests that claim to guard it."""

    name: str
    modules: dict[str, tuple[str, ...]]

    @property
    def tests(self) -> list[str]:
        seen: dict[str, None] = {}
        for tests in self.modules.values():
            seen.update(dict.fromkeys(tests))
        return list(seen)


GROUPS = (
    Group(
        "point-in-time and windows",
        {
            "src/backline/features/compile.py": ("tests/features/test_history.py",),
            "src/backline/features/history.py": (
                "tests/features/test_history.py",
                "tests/features/test_keys.py",
            ),
            "src/backline/features/engines/duckdb.py": (
                "tests/features/test_history.py",
                "tests/features/test_keys.py",
            ),
        },
    ),
    Group(
        "online reads",
        {
            "src/backline/features/online/read.py": (
                "tests/features/test_online.py",
                "tests/features/test_materialize.py",
            ),
            "src/backline/features/online/codec.py": (
                "tests/features/test_online.py",
                "tests/features/test_materialize.py",
            ),
            "src/backline/features/online/sqlite_store.py": (
                "tests/features/test_online.py",
                "tests/features/test_materialize.py",
            ),
        },
    ),
    Group(
        "checkpoints and resume",
        {
            # test_resume.py (SIGKILL at random moments, then resume) is left out: its one
            # test takes ~85 s, and test_loop.py resumes bitwise after SIGTERM in ~1 s.
            "src/backline/train/checkpoint.py": (
                "tests/train/test_checkpoint.py",
                "tests/train/test_loop.py",
            ),
            "src/backline/train/state.py": (
                "tests/train/test_checkpoint.py",
                "tests/train/test_loop.py",
            ),
        },
    ),
    Group(
        "registry immutability and the gate",
        {
            "src/backline/registry/schema.py": (
                "tests/registry/test_registry.py",
                "tests/registry/test_migrations.py",
            ),
            "src/backline/registry/store.py": (
                "tests/registry/test_registry.py",
                "tests/registry/test_atomicity.py",
            ),
            "src/backline/pipeline/gate.py": (
                "tests/registry/test_gate.py",
                "tests/registry/test_latency.py",
            ),
        },
    ),
    Group(
        "validation and commit",
        {
            "src/backline/data/validation.py": (
                "tests/data/test_ingest.py",
                "tests/data/test_nothing_lost.py",
            ),
            "src/backline/data/ingest.py": (
                "tests/data/test_ingest.py",
                "tests/data/test_nothing_lost.py",
                "tests/data/test_atomicity.py",
            ),
            "src/backline/data/offline_store.py": (
                "tests/data/test_ingest.py",
                "tests/data/test_atomicity.py",
            ),
        },
    ),
)


@dataclass
class ModuleResult:
    path: str
    generated: int = 0
    sampled: int = 0
    status: Counter[str] = field(default_factory=Counter)
    survivors: list[dict[str, str]] = field(default_factory=list)

    @property
    def detected(self) -> int:
        return sum(self.status[s] for s in DETECTED)

    @property
    def undetected(self) -> int:
        return sum(self.status[s] for s in UNDETECTED)

    @property
    def score(self) -> float | None:
        ran = self.detected + self.undetected
        return self.detected / ran if ran else None


def snapshot(dest: Path, rev: str | None) -> None:
    """Copy the repository into dest: a commit (`git archive`), or the working tree's tracked
    and untracked-but-not-ignored files."""
    dest.mkdir(parents=True)
    if rev:
        archive = subprocess.run(
            ["git", "archive", rev], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def write_config(work: Path, group: Group) -> None:
    """mutmut reads [mutmut] from setup.cfg when pyproject.toml has no [tool.mutmut]."""
    # forkserver: each mutant's worker is forked from a process that never ran a test, since
    # torch's thread pools do not survive a fork of a process that has used them
    lines = ["[mutmut]", "source_paths = src", "process_isolation = forkserver", "only_mutate ="]
    lines += [f"    {m}" for m in group.modules]
    lines += ["also_copy =", "    examples", "    docs", "    README.md"]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -m", f"    {MARKERS}"]
    lines += ["pytest_add_cli_args_test_selection ="]
    lines += [f"    {t}" for t in group.tests]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


# Generates the mutants without running any test, so that the driver can pick its sample
# before mutmut's `run` (which would otherwise try every mutant).
GENERATE = """
import os
from mutmut import __main__ as m
m.set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
m.copy_src_dir()
m.copy_also_copy_files()
m.setup_source_paths()
print(m.create_mutants(int(os.environ.get("MUTATE_CHILDREN", "2"))))
"""


def meta(work: Path, module: str) -> dict[str, int | None]:
    data = json.loads((work / "mutants" / f"{module}.meta").read_text())
    codes: dict[str, int | None] = data["exit_code_by_key"]
    return codes


def status_of(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return str(status_by_exit_code[code])


def locate(path: Path, mutant: str, diff: str) -> int | None:
    """The line in the original file that the mutant changes."""
    mangled = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    if mangled.startswith("x_"):
        cls, name = None, mangled[2:]
    else:
        _, cls, name = mangled.split("ǁ")
    tree = ast.parse(path.read_text())
    start = None
    for node in ast.walk(tree):
        body = node.body if isinstance(node, ast.ClassDef) and node.name == cls else None
        if cls is None and isinstance(node, ast.Module):
            body = node.body
        for item in body or ():
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == name:
                start = item.lineno
    removed = next(
        (ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")),
        None,
    )
    if start is None or removed is None:
        return start
    lines = path.read_text().splitlines()
    for number in range(start, len(lines) + 1):
        if lines[number - 1].strip() == removed.strip():
            return number
    return start


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End mutmut and every worker it forked (they share its session)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_group(
    group: Group, args: argparse.Namespace, env: dict[str, str], log: Path, timeout: float
) -> list[ModuleResult]:
    work = Path(tempfile.mkdtemp(prefix="backline-mutate-")) / "repo"
    results = [ModuleResult(m) for m in group.modules]
    try:
        snapshot(work, args.rev)
        write_config(work, group)
        env = {**env, "PYTHONPATH": str(work / "mutants" / "src")}
        mutmut = [str(Path(sys.executable).parent / "mutmut")]
        nice = ["nice", "-n", str(args.nice)] if args.nice else []
        with log.open("a") as out:
            out.write(f"\n==== {group.name} in {work}\n")
            out.flush()
            subprocess.run(
                [*nice, sys.executable, "-c", GENERATE], cwd=work, env=env, stdout=out, stderr=out
            )
        rng = random.Random(args.seed)
        chosen: list[str] = []
        for result in results:
            if not (work / result.path).is_file():
                print(f"  {result.path} is not in the snapshot: moved? (GROUPS in {__file__})")
                result.status["missing"] = 1
                continue
            names = sorted(meta(work, result.path))
            result.generated = len(names)
            pick = (
                names if args.all or len(names) <= args.sample else rng.sample(names, args.sample)
            )
            result.sampled = len(pick)
            chosen += sorted(pick)
        started = time.monotonic()
        # A second try when mutmut stops before any mutant ran: its first step runs the mapped
        # tests once with `-x`, so one flaky test on a loaded machine would lose the group.
        for attempt in (1, 2):
            left = timeout - (time.monotonic() - started)
            with log.open("a") as out:
                proc = subprocess.Popen(
                    [*nice, *mutmut, "run", "--max-children", str(args.max_children), *chosen],
                    cwd=work,
                    env=env,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
                try:
                    proc.wait(timeout=max(left, 1))
                except subprocess.TimeoutExpired:
                    stop(proc)
                    print(
                        f"  {group.name}: stopped after {timeout:.0f} s; unrun mutants not counted"
                    )
                except BaseException:  # Ctrl-C: take mutmut and its workers down too
                    stop(proc)
                    raise
            print(
                f"  {group.name}: mutmut ran {time.monotonic() - started:.0f} s (exit {proc.returncode})"
            )
            if proc.returncode in (0, -signal.SIGTERM):
                break
            print(f"  {group.name}: mutmut failed (a clean test run failing?); see {log}")
            ran = any(
                code is not None
                for r in results
                if not r.status["missing"]
                for code in meta(work, r.path).values()
            )
            if ran or attempt == 2:
                break
            print(f"  {group.name}: no mutant ran; trying once more")
        for result in results:
            if result.status["missing"]:
                continue
            codes = meta(work, result.path)
            picked = set(chosen)
            for name, code in codes.items():
                if name not in picked:
                    continue
                status = status_of(code)
                result.status[status] += 1
                if status in UNDETECTED:
                    shown = subprocess.run(
                        [*mutmut, "show", name], cwd=work, env=env, capture_output=True, text=True
                    ).stdout
                    diff = "\n".join(shown.splitlines()[1:])
                    line = locate(work / result.path, name, diff)
                    result.survivors.append(
                        {
                            "mutant": name,
                            "status": status,
                            "where": f"{result.path}:{line}",
                            "diff": diff,
                        }
                    )
        return results
    finally:
        if args.keep:
            print(f"  kept {work}")
        else:
            shutil.rmtree(work.parent, ignore_errors=True)


def pick_groups(args: argparse.Namespace) -> list[Group]:
    groups = list(GROUPS)
    if args.group:
        groups = [g for g in groups if any(g.name.startswith(p) or p in g.name for p in args.group)]
    if args.module:
        wanted = {m.removeprefix("./") for m in args.module}
        groups = [
            Group(g.name, {m: t for m, t in g.modules.items() if m in wanted})
            for g in groups
            if wanted & set(g.modules)
        ]
    return groups


def table(results: list[tuple[str, ModuleResult]]) -> str:
    head = "| module | mutants | ran | killed | timeout | survived | no tests | not run | score |"
    rows = [head, "|" + "---|" * 9]
    for _, r in results:
        ran = r.detected + r.undetected
        score = "-" if r.score is None else f"{r.score:.0%}"
        rows.append(
            f"| {r.path.removeprefix('src/backline/')} | {r.generated} | {ran} | {r.status['killed']} "
            f"| {r.status['timeout'] + r.status['segfault']} | {r.status['survived']} "
            f"| {r.status['no tests']} | {r.sampled - ran} | {score} |"
        )
    return "\n".join(rows)


def write_summary(
    done: list[tuple[str, ModuleResult]], args: argparse.Namespace, minutes: float
) -> None:
    """benchmarks/.mutate/summary.json, rewritten after each group so a stopped run keeps its
    finished groups."""
    summary = {
        "command": " ".join(sys.argv),
        "sample": None if args.all else args.sample,
        "seed": args.seed,
        "markers": MARKERS,
        "minutes": round(minutes, 1),
        "modules": [
            {
                "group": g,
                "module": r.path,
                "tests": dict(next(x for x in GROUPS if x.name == g).modules)[r.path],
                "generated": r.generated,
                "sampled": r.sampled,
                "status": dict(r.status),
                "score": r.score,
                "survivors": r.survivors,
            }
            for g, r in done
        ],
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", help="a group by name or part of it")
    parser.add_argument(
        "--module", action="append", help="a module path, e.g. src/backline/pipeline/gate.py"
    )
    parser.add_argument("--sample", type=int, default=12, help="mutants per module (12)")
    parser.add_argument("--all", action="store_true", help="every mutant (hours)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (0)")
    parser.add_argument(
        "--budget",
        type=float,
        default=30,
        help="minutes for the whole run, shared by the groups (30)",
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--nice", type=int, default=10, help="niceness of the runs (10; 0: none)")
    parser.add_argument("--rev", help="test this commit instead of the working tree")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args()

    groups = pick_groups(args)
    if not groups:
        parser.error("no group or module matches")
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "mutmut.log"
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("MUTANT_UNDER_TEST", "PYTHONPATH")}
    env["MUTATE_CHILDREN"] = str(args.max_children)
    print(
        f"backline mutation testing: {len(groups)} group(s), "
        f"{'every mutant' if args.all else f'{args.sample} sampled mutants a module (seed {args.seed})'}, "
        f"{args.max_children} workers, tests -m '{MARKERS}'; log in {log.relative_to(ROOT)}"
    )
    started = time.monotonic()
    done: list[tuple[str, ModuleResult]] = []
    for left, group in zip(range(len(groups), 0, -1), groups, strict=True):
        # each group gets an equal share of what the groups before it left unused
        timeout = (args.budget * 60 - (time.monotonic() - started)) / left
        print(f"- {group.name}: {', '.join(group.modules)} (at most {timeout:.0f} s)")
        done += [(group.name, r) for r in run_group(group, args, env, log, max(timeout, 60))]
        write_summary(done, args, (time.monotonic() - started) / 60)

    survivors = [s for _, r in done for s in r.survivors]
    report = []
    for s in survivors:
        report.append(f"{s['where']}  {s['status']}  {s['mutant']}\n{s['diff']}\n")
    (OUT / "survivors.txt").write_text("\n".join(report))
    print(f"\nSurviving mutants ({len(survivors)}):\n")
    print("\n".join(report) if report else "  none")
    print(table(done))
    minutes = (time.monotonic() - started) / 60
    print(f"\n{minutes:.1f} min; survivors in {(OUT / 'survivors.txt').relative_to(ROOT)}")
    write_summary(done, args, minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
