"""`backline serve` side by side with what users would pick instead: same model, same requests.

    .venv/bin/python benchmarks/serve_vs_peers.py                 # every peer, 3 runs, 10 s a point
    .venv/bin/python benchmarks/serve_vs_peers.py --quick         # 1 run, 2 s a point (smoke test)
    .venv/bin/python benchmarks/serve_vs_peers.py --peers backline,fastapi --runs 1 --json out.json

The servers, each answering POST /v1/models/fraud:predict with the body backline serves
({"instances": [...], "at": ...} -> {"model_name", "model_version", "scores"}):

    backline         `backline serve --project DIR` (its dynamic batching, prediction log on
                     unless --no-prediction-log)
    fastapi          FastAPI + pydantic, one feature read and one model call per request, the
                     endpoint a plain `def` (FastAPI's advice for blocking work): the unbatched
                     reference
    fastapi-async    the same endpoint as `async def` (no threadpool hop; not in the default set)
    ray              Ray Serve, `@serve.batch`, tuned: batch 64, 2 ms wait, 128 ongoing requests
                     per replica, access log off, direct ingress (RAY_SERVE_THROUGHPUT_OPTIMIZED)
    ray-default      Ray Serve, `@serve.batch` with Serve's defaults (batch 10, 10 ms wait, 5
                     ongoing requests), requests through the HTTP proxy
    bentoml          BentoML, an API service in front of a `batchable=True` scorer service, tuned:
                     max_batch_size 32, max_latency_ms 20 (the SLO), metrics and access log off
    bentoml-default  the same services with BentoML's defaults (100, 60000 ms, metrics and log on)
    noop             Starlette answering a constant without parsing: the HTTP floor

Every peer but noop does backline's work per batch through backline's Python API, from its own
venv (benchmarks/_serve_peers/common.py): parse the body, read the online features of the
instances (`project.online_features(service, entities, request=..., at=...)`), build the table
(`OnlineFeatures.to_arrow()`), score it (`project.model("fraud@champion").score(table)`).

Each peer lives in its own venv under benchmarks/.peers/NAME/ (git-ignored), made on first use:
torch==2.13.0 first (the CPU wheel), then backline from this checkout (-e), then the framework at
a pinned version. The fraud project (`backline demo`: data, features materialized, a champion) is
made once under benchmarks/.peers/project/ and reused.

Method. The whole peer (every process it spawns: Ray's GCS, raylet and actors, BentoML's
supervisor and workers) runs under `taskset -c 0`, with OMP_NUM_THREADS=1; this script, with the
load generator (backline.bench.loadgen), pins itself to core 1. What each peer spawned, and on
which cores, is recorded. For each peer, once started and ready, and after its answers are checked
against `scorer.score` on the same rows (sequential and concurrent requests, to 1e-6):

    1. closed loop, 8 and 64 clients: the most it does (successful requests per second)
    2. open loop (Poisson arrivals), a rate sweep around that maximum: goodput at the SLO, the
       highest offered rate whose p99 <= --slo-ms (20) with < 1% errors, reported as the
       requests per second answered within the SLO at that rate
    3. open loop at 10% of backline's maximum (of this run), or --low-rate: p50 and p99 at
       low load. When backline's 10% is beyond the unbatched FastAPI's saturation (it is
       here: ~290/s against ~240/s), pass --low-rate at 10% of FastAPI's maximum (25) so
       that both are compared unsaturated.

An open-loop point lasts --duration, or longer at a low rate so that its p99 rests on 2,000
requests (500 with --quick), at most three times --duration.

The runs interleave the peers (run 1: every peer, then run 2, ...), backline first in each run;
each figure is the median over runs with its spread (min-max). Ratios (per run, then median):
backline's goodput over the best other peer's (target >= 2), backline's maximum over the no-op
floor's (target >= 0.7), backline's low-load p99 minus the unbatched FastAPI's (target <= 1 ms).
The machine is shared and noisy: read the ratios and the spreads as well as the figures; each
point also records the load average and the share of a core the peer's processes used, and the
load generator's own warnings (it fell behind its schedule). The exit code is 0 even when a
target is missed; it is 1 when a peer cannot be run or answers wrongly.

Time: a run of every default peer takes 15-20 minutes at 10 s a point (the slow peers' low
rates stretch their points), the venvs a few minutes once; --quick about 6 minutes. Peer logs:
benchmarks/.peers/logs/NAME-runK.log.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APPS = HERE / "_serve_peers"
sys.path.insert(0, str(HERE))

import _peers  # noqa: E402

DEFAULT_PROJECT = _peers.PEERS / "project"
LOGS = _peers.PEERS / "logs"
PREDICT_PATH = "/v1/models/fraud:predict"
READY_PATH = "/v2/health/ready"
MODEL = "fraud@champion"

TORCH = "torch==2.13.0"
UVICORN_STACK = ["uvicorn==0.54.0", "uvloop==0.23.0", "httptools==0.9.0"]
FASTAPI = "fastapi==0.165.0"
STARLETTE = "starlette==1.10.0"
RAY = "ray[serve]==2.60.0"
BENTOML = "bentoml==1.4.40"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CORE = 0
LOADGEN_CORE = 1
PARITY_TOL = 1e-6
MAX_ERROR_RATE = 0.01
TARGET_GOODPUT_RATIO = 2.0
TARGET_FLOOR_RATIO = 0.7
TARGET_LOW_P99_DELTA_MS = 1.0
LOW_LOAD_FRACTION = 0.10
UNBATCHED_REFERENCE = "fastapi"
FLOOR = "noop"


# ------------------------------------------------------------------------------------------
# The peers
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    what: str
    venv: str | None
    """Its venv under benchmarks/.peers/ (None: this checkout's own .venv, for backline)."""
    requirements: tuple[str, ...] = ()
    with_backline: bool = True
    """torch, then this checkout (-e), installed before `requirements`."""
    args: Callable[[Path, Path, int], list[str]] = field(default=lambda py, project, port: [])
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = READY_PATH
    parity: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    packages: tuple[str, ...] = ()
    """Whose installed versions the report names."""
    start_timeout: float = 180.0


def _app(name: str) -> str:
    return str(APPS / name)


def _backline_args(prediction_log: bool) -> Callable[[Path, Path, int], list[str]]:
    def args(py: Path, project: Path, port: int) -> list[str]:
        cmd = [str(py), "-m", "backline.cli", "serve", "--project", str(project)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--model", MODEL]
        return cmd if prediction_log else [*cmd, "--no-prediction-log"]

    return args


RAY_TUNED = {"max_batch_size": 64, "batch_wait_ms": 2.0, "max_ongoing_requests": 128}
RAY_DEFAULT = {"max_batch_size": 10, "batch_wait_ms": 10.0, "max_ongoing_requests": 5}
BENTO_TUNED = {"max_batch_size": 32, "max_latency_ms": 20}
BENTO_DEFAULT = {"max_batch_size": 100, "max_latency_ms": 60000}
# both: BentoML's client to the scorer is kept instead of being replaced every 100 calls, which
# fails the calls in flight (see _serve_peers/bentoml_service.py)
BENTO_BOTH = {"runner_connection_max_requests": 10**9}


def _ray_args(cfg: dict[str, Any], direct: bool) -> Callable[[Path, Path, int], list[str]]:
    def args(py: Path, project: Path, port: int) -> list[str]:
        cmd = [str(py), _app("ray_app.py"), "--project", str(project), "--port", str(port)]
        cmd += ["--max-batch-size", str(cfg["max_batch_size"])]
        cmd += ["--batch-wait-ms", str(cfg["batch_wait_ms"])]
        cmd += ["--max-ongoing", str(cfg["max_ongoing_requests"])]
        return [*cmd, "--direct-ingress"] if direct else [*cmd, "--access-log"]

    return args


def _bento_args(py: Path, project: Path, port: int) -> list[str]:
    bentoml = py.parent / "bentoml"
    return [
        str(bentoml),
        "serve",
        "bentoml_service:FraudAPI",
        "--working-dir",
        str(APPS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _bento_env(cfg: dict[str, Any], lean: bool) -> dict[str, str]:
    return {
        "FRAUD_BENTO_MAX_BATCH": str(cfg["max_batch_size"]),
        "FRAUD_BENTO_MAX_LATENCY_MS": str(cfg["max_latency_ms"]),
        "FRAUD_BENTO_LEAN": "1" if lean else "",
        "BENTOML_HOME": str(_peers.PEERS / "bentoml" / "home"),
        "BENTOML_DO_NOT_TRACK": "True",
    }


RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def peers(
    prediction_log: bool = True,
    ray_tuned: dict[str, Any] | None = None,
    bento_tuned: dict[str, Any] | None = None,
) -> dict[str, Peer]:
    """Every peer this script knows, backline's and the tuned peers' settings as given."""
    ray = {**RAY_TUNED, **(ray_tuned or {})}
    bento = {**BENTO_TUNED, **(bento_tuned or {})}
    fastapi_reqs = (FASTAPI, *UVICORN_STACK)
    fastapi_pkgs = ("fastapi", "starlette", "pydantic", "uvicorn")
    return {
        p.name: p
        for p in (
            Peer(
                "backline",
                "backline serve (dynamic batching"
                + (", prediction log on)" if prediction_log else ", no prediction log)"),
                None,
                args=_backline_args(prediction_log),
                settings={"prediction_log": prediction_log},
                packages=("backline", "uvicorn", "torch"),
            ),
            Peer(
                "fastapi",
                "FastAPI, one model call per request (def endpoint)",
                "fastapi",
                fastapi_reqs,
                args=lambda py, project, port: [
                    str(py),
                    _app("fastapi_app.py"),
                    "--project",
                    str(project),
                    "--port",
                    str(port),
                    "--mode",
                    "def",
                ],
                settings={"endpoint": "def (threadpool)", "batching": "none"},
                packages=(*fastapi_pkgs, "torch"),
            ),
            Peer(
                "fastapi-async",
                "FastAPI, one model call per request (async def endpoint)",
                "fastapi",
                fastapi_reqs,
                args=lambda py, project, port: [
                    str(py),
                    _app("fastapi_app.py"),
                    "--project",
                    str(project),
                    "--port",
                    str(port),
                    "--mode",
                    "async",
                ],
                settings={"endpoint": "async def (in the event loop)", "batching": "none"},
                packages=(*fastapi_pkgs, "torch"),
            ),
            Peer(
                "ray",
                "Ray Serve @serve.batch, tuned (direct ingress)",
                "ray",
                (RAY,),
                args=_ray_args(ray, direct=True),
                env=RAY_ENV,
                settings={**ray, "direct_ingress": True, "access_log": False},
                packages=("ray", "starlette", "uvicorn", "torch"),
            ),
            Peer(
                "ray-default",
                "Ray Serve @serve.batch, defaults (via proxy)",
                "ray",
                (RAY,),
                args=_ray_args(RAY_DEFAULT, direct=False),
                env=RAY_ENV,
                settings={**RAY_DEFAULT, "direct_ingress": False, "access_log": True},
                packages=("ray", "starlette", "uvicorn", "torch"),
            ),
            Peer(
                "bentoml",
                "BentoML adaptive batching, tuned",
                "bentoml",
                (BENTOML,),
                args=_bento_args,
                env=_bento_env(bento, lean=True),
                ready_path="/readyz",
                settings={**bento, **BENTO_BOTH, "metrics": False, "access_log": False},
                packages=("bentoml", "starlette", "uvicorn", "torch"),
            ),
            Peer(
                "bentoml-default",
                "BentoML adaptive batching, defaults",
                "bentoml",
                (BENTOML,),
                args=_bento_args,
                env=_bento_env(BENTO_DEFAULT, lean=False),
                ready_path="/readyz",
                settings={**BENTO_DEFAULT, **BENTO_BOTH, "metrics": True, "access_log": True},
                packages=("bentoml", "starlette", "uvicorn", "torch"),
            ),
            Peer(
                "noop",
                "Starlette no-op (HTTP floor)",
                "noop",
                (STARLETTE, *UVICORN_STACK),
                with_backline=False,
                args=lambda py, project, port: [str(py), _app("noop_app.py"), "--port", str(port)],
                parity=False,
                settings={"work": "reads the body, answers a constant"},
                packages=("starlette", "uvicorn"),
            ),
        )
    }


DEFAULT_PEERS = ("backline", "fastapi", "ray", "ray-default", "bentoml", "bentoml-default", "noop")


def peer_python(peer: Peer, log: Callable[[str], None]) -> Path:
    """The interpreter that runs `peer`, its venv made on first use."""
    if peer.venv is None:
        return Path(sys.executable)
    first: list[list[str]] = []
    key = ""
    if peer.with_backline:
        first = [[TORCH], ["-e", str(REPO)]]
        # a changed pyproject.toml (say, a new dependency) rebuilds the venv
        key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    return _peers.ensure_venv(peer.venv, list(peer.requirements), log=log, first=first, key=key)


def versions(python: Path, packages: Sequence[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


# ------------------------------------------------------------------------------------------
# The project and the requests
# ------------------------------------------------------------------------------------------


def ensure_project(root: Path, log: Callable[[str], None]) -> Path:
    """A fraud project with data, features materialized and a champion: `root` when it holds
    one, else made there by `backline demo` (only under benchmarks/.peers/, or in a new folder)."""
    root = root.resolve()
    stamp = root / ".serve-bench.json"
    if (root / "backline.toml").is_file() and (stamp.is_file() or root != DEFAULT_PROJECT):
        _require_champion(root)
        return root
    if root.exists():
        if root != DEFAULT_PROJECT.resolve():
            raise SystemExit(f"{root} exists but holds no backline project; pick another folder")
        shutil.rmtree(root)
    log(f"making the fraud project in {root} (backline demo; about a minute)")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "backline.cli", "demo", "--dir", str(root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"backline demo failed:\n{(done.stdout + done.stderr)[-4000:]}")
    _require_champion(root, promote=True)
    stamp.write_text(json.dumps({"made": datetime.now(UTC).isoformat(), "by": "backline demo"}))
    log(f"project ready in {time.perf_counter() - t0:.0f} s")
    return root


def _require_champion(root: Path, promote: bool = False) -> None:
    import backline
    from backline.registry import CHAMPION

    name = MODEL.split("@")[0]
    with backline.open(root) as project:
        registry = project.registry
        try:
            registry.get(name, CHAMPION)
            return
        except Exception:
            if not promote:
                raise SystemExit(f"{root}: no {MODEL}; train and promote a model first") from None
        latest = registry.get(name, "latest")
        registry.promote(name, latest.version, actor="serve_vs_peers", reason="benchmark")


def make_requests(project: Path, count: int, instances: int) -> tuple[list[bytes], str | None]:
    """Request bodies from the project's own data (backline.bench.requests), and their `at`."""
    import backline
    from backline.bench.requests import build_requests

    with backline.open(project) as handle:
        made = build_requests(handle, count=count, instances=instances, seed=0)
    return made.bodies, made.at


class Expected:
    """What the champion gives for a body: read with backline's Python API and scored by the
    package, each body on its own (the reference every peer's answer is held to)."""

    def __init__(self, project: Path) -> None:
        import backline

        self.project = backline.open(project)
        self.service = self.project.config.train.service
        self.scorer = self.project.model(MODEL)
        self.version = self.project.registry.get(*MODEL.split("@")).version
        from backline.features.online import ReadPlan

        plan = ReadPlan(self.project.config, self.project.definitions, self.service)
        self.keys, self.fields = tuple(plan.entity_columns), tuple(plan.request_fields)

    def scores(self, body: bytes) -> list[float]:
        from backline.bench.requests import parse_at

        doc = json.loads(body)
        rows = doc["instances"]
        at = parse_at(doc["at"]) if doc.get("at") else datetime.now(UTC)
        online = self.project.online_features(
            self.service,
            [{k: r[k] for k in self.keys} for r in rows],
            request=[{f: r[f] for f in self.fields} for r in rows] if self.fields else None,
            at=at,
        )
        return [float(v) for v in self.scorer.score(online.to_arrow())]

    def close(self) -> None:
        self.project.close()


# ------------------------------------------------------------------------------------------
# Running a peer: pinned, its processes tracked, stopped
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_call(port: int, path: str, body: bytes | None = None, timeout: float = 10.0):
    """(status, text) of one request on a fresh connection; status 0 when it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _proc_tree(root_pid: int, token: str) -> list[int]:
    """The live processes of a peer: descendants of `root_pid`, and any process whose
    environment carries `token` (Ray's and BentoML's workers start sessions of their own)."""
    parents: dict[int, int] = {}
    marked: set[int] = set()
    needle = f"BACKLINE_BENCH_PEER={token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            parents[pid] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    marked.add(pid)
        except (OSError, ValueError):
            continue
    found = {root_pid} if root_pid in parents else set()
    found |= marked
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def _describe(pid: int) -> dict[str, Any] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        rss_kb = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
        cores = sorted(os.sched_getaffinity(pid))
    except (OSError, ValueError):
        return None
    shown = " ".join(a if len(a) < 60 else "..." + a[-40:] for a in argv) or comm
    name = comm
    if argv and argv[0].startswith("ray::"):  # Ray's actors retitle themselves; comm is cut
        name = shown = argv[0].split()[0].split(".")[0]  # less the method running now
    elif comm.startswith("python") and len(argv) > 1:  # which script or module
        rest = [a for a in argv[1:] if a != "-u"]
        if rest[:1] == ["-m"] and len(rest) > 1:
            name = f"python -m {rest[1]}"
        elif rest:
            name = f"python {Path(rest[0]).name}"
        if "--service-name" in argv[:-1]:  # BentoML's workers
            name += f" [{argv[argv.index('--service-name') + 1]}]"
    return {"pid": pid, "name": name, "cmd": shown[:160], "cores": cores, "rss_mb": rss_kb / 1024}


class Running:
    """One peer, started under taskset on the server core, for a `with` block."""

    def __init__(
        self, peer: Peer, python: Path, project: Path, log_path: Path, pin: bool = True
    ) -> None:
        self.peer = peer
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.command = peer.args(python, project, self.port)
        if pin:
            self.command = ["taskset", "-c", str(SERVER_CORE), *self.command]
        self.pinned = pin
        self.env = {
            **os.environ,
            **peer.env,
            "BACKLINE_BENCH_PEER": self.token,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "FRAUD_PROJECT": str(project),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, dict[str, Any]] = {}
        self.ready_s = 0.0

    def __enter__(self) -> Running:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        t0 = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=APPS,
            start_new_session=True,
        )
        try:
            self._wait_ready(t0)
        except BaseException:
            self.__exit__()
            raise
        self.ready_s = time.perf_counter() - t0
        self.snapshot()
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self.process is not None
        path = self.peer.ready_path
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.peer.name} exited with code {self.process.returncode} before it was "
                    f"ready; its log ({self.log_path}) ends with:\n{self.tail()}"
                )
            status, _ = http_call(self.port, path, timeout=2.0)
            if status == 200:
                break
            if time.perf_counter() - t0 > self.peer.start_timeout:
                raise RuntimeError(
                    f"{self.peer.name} was not ready on :{self.port}{path} after "
                    f"{self.peer.start_timeout:g} s; its log ends with:\n{self.tail()}"
                )
            time.sleep(0.25)

    def tail(self, lines: int = 25) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").rstrip()
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self) -> None:
        """Note every process the peer has now (kept until the end, for the report)."""
        assert self.process is not None
        for pid in _proc_tree(self.process.pid, self.token):
            info = _describe(pid)
            if info is None:
                continue
            old = self.seen.get(pid)
            if old is not None:
                info["rss_mb"] = max(info["rss_mb"], old["rss_mb"])
            self.seen[pid] = info

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the peer's live processes have used so far."""
        assert self.process is not None
        total = 0
        for pid in _proc_tree(self.process.pid, self.token):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLOCK_TICKS

    def spawned(self) -> dict[str, Any]:
        procs = sorted(self.seen.values(), key=lambda p: p["pid"])
        return {
            "processes": len(procs),
            "rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
            "all_on_server_core": self.pinned and all(p["cores"] == [SERVER_CORE] for p in procs),
            "list": [{**p, "rss_mb": round(p["rss_mb"], 1)} for p in procs],
        }

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            self.snapshot()
        tree = _proc_tree(self.process.pid, self.token)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=45)
        deadline = time.perf_counter() + 10
        left = _alive([*tree, *_proc_tree(self.process.pid, self.token)])
        while left and time.perf_counter() < deadline:
            time.sleep(0.2)
            left = _alive(left)
        for pid in left:  # only the processes of this peer, by id
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


def _alive(pids: Sequence[int]) -> list[int]:
    out = []
    for pid in sorted(set(pids)):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z":
            out.append(pid)
    return out


# ------------------------------------------------------------------------------------------
# Checking answers
# ------------------------------------------------------------------------------------------


def check_parity(
    run: Running, bodies: Sequence[bytes], expected: Expected, count: int = 16
) -> dict[str, Any]:
    """The peer's scores for `count` bodies (and one body of three instances), sent one at a
    time and then 8 at once, against the reference; its name and version too."""
    picked = list(bodies[:count])
    docs = [json.loads(b) for b in bodies[count : count + 3]]
    merged = {"instances": [i for d in docs for i in d["instances"]]}
    if docs and docs[0].get("at"):
        merged["at"] = docs[0]["at"]
    picked.append(json.dumps(merged).encode())
    want = [expected.scores(b) for b in picked]
    problems: list[str] = []
    worst = 0.0

    retried = 0

    def one(k: int) -> None:
        nonlocal worst, retried
        for attempt in range(4):  # a 503 (overloaded, warming up) is not a wrong answer
            status, text = http_call(run.port, PREDICT_PATH, picked[k])
            if status not in (429, 503):
                break
            retried += 1
            time.sleep(0.25 * (attempt + 1))
        if status != 200:
            problems.append(f"HTTP {status}: {text[:200]}")
            return
        got = json.loads(text)
        if got.get("model_name") != "fraud" or got.get("model_version") != expected.version:
            problems.append(f"answered {got.get('model_name')} v{got.get('model_version')}")
        scores = got.get("scores") or []
        if len(scores) != len(want[k]):
            problems.append(f"{len(scores)} scores for {len(want[k])} instances")
            return
        worst = max(worst, *(abs(a - b) for a, b in zip(scores, want[k], strict=True)))

    for k in range(len(picked)):
        one(k)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(len(picked))))
    return {
        "requests": 2 * len(picked),
        "retried_429_503": retried,
        "max_abs_diff": worst,
        "ok": not problems and worst <= PARITY_TOL,
        "problems": sorted(set(problems))[:5],
    }


# ------------------------------------------------------------------------------------------
# Measuring: the one place that calls the load generator
# ------------------------------------------------------------------------------------------


def load(
    url: str,
    bodies: Sequence[bytes],
    *,
    duration: float,
    slo_ms: float,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One measurement with backline.bench.loadgen: closed loop with `concurrency` clients, or
    open loop (Poisson) at `rate`; the loadgen's report as a dict, with ok_rate (successful
    requests per second), error_rate and `passed` (p99 <= SLO, errors < 1%) added."""
    from backline.bench import loadgen

    common = {"duration": duration, "slo_ms": slo_ms, "client_timeout_s": 5.0}
    if concurrency is not None:
        report = loadgen.run_closed_loop(url, bodies, concurrency=concurrency, **common)
    else:
        assert rate is not None
        report = loadgen.run_open_loop(url, bodies, rate=rate, seed=seed, **common)
    data = report.to_json()
    data["ok_rate"] = report.ok / report.duration_s
    total = max(report.scheduled, 1)
    data["error_rate"] = (total - report.ok) / total
    p99 = report.latency_ms.get("p99")
    data["passed"] = bool(
        report.ok and p99 is not None and p99 <= slo_ms and data["error_rate"] < MAX_ERROR_RATE
    )
    return data


@dataclass
class Plan:
    duration: float
    slo_ms: float
    sweep_up: tuple[float, ...]
    sweep_down: tuple[float, ...]
    bisect: int
    warmup: float
    low_min_requests: int = 2000
    """Open-loop points run until this many requests were scheduled (up to 3x duration)."""


def sweep(
    measure: Callable[[float], dict[str, Any]], saturation: float, plan: Plan
) -> dict[str, Any]:
    """Offered rates around `saturation` (fractions of it, up until one fails; down when the
    first fails), then `plan.bisect` halvings between the best pass and the first fail.
    `measure(rate)` gives a `load` report. Goodput: within-SLO answers per second at the best
    passing rate (0 when none passed)."""
    points: list[dict[str, Any]] = []
    best: float | None = None
    fail: float | None = None

    def at(rate: float) -> bool:
        rate = max(rate, 1.0)
        point = measure(rate)
        point["offered_rate"] = rate
        points.append(point)
        return bool(point["passed"])

    for frac in plan.sweep_up:
        rate = frac * saturation
        if at(rate):
            best = rate
        else:
            fail = rate
            break
    if best is None:
        for frac in plan.sweep_down:
            rate = frac * saturation
            if at(rate):
                best = rate
                break
            fail = rate
    for _ in range(plan.bisect):
        if best is None or fail is None or fail / best < 1.05:
            break
        mid = math.sqrt(best * fail)
        if at(mid):
            best = mid
        else:
            fail = mid
    passing = [p for p in points if p["passed"]]
    top = max(passing, key=lambda p: p["goodput"]) if passing else None
    return {
        "goodput": top["goodput"] if top else 0.0,
        "goodput_rate": top["offered_rate"] if top else None,
        "goodput_p99_ms": top["latency_ms"]["p99"] if top else None,
        "first_failing_rate": fail,
        "points": points,
    }


def measure_peer(
    run: Running,
    bodies: Sequence[bytes],
    plan: Plan,
    *,
    low_rate: float | None,
    seed: int,
    log: Callable[[str], None],
    own_low: bool = False,
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring on a running peer. Step 3 runs at `low_rate`, or with
    `own_low` at LOW_LOAD_FRACTION of this peer's own maximum (backline's, which sets the rate
    for the others); not at all when neither is given."""
    url = run.base + PREDICT_PATH

    def point_at(**kw: Any) -> dict[str, Any]:
        """`load`, with the machine's load average before it and the share of a core the
        peer's processes used during it (how busy the server core was, and how noisy)."""
        loadavg = os.getloadavg()[0]
        cpu0, t0 = run.cpu_seconds(), time.perf_counter()
        point = load(url, bodies, slo_ms=plan.slo_ms, **kw)
        point["server_cpu_share"] = (run.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
        point["loadavg_1m_before"] = loadavg
        return point

    point_at(duration=plan.warmup, concurrency=8)
    out: dict[str, Any] = {"closed": {}}
    for c in (8, 64):
        point = point_at(duration=plan.duration, concurrency=c)
        out["closed"][str(c)] = point
        log(f"  closed c={c}: {_point_line(point)}")
        _settle(run)
    saturation = max(p["ok_rate"] for p in out["closed"].values())
    out["max_rps"] = saturation

    def open_at(rate: float) -> dict[str, Any]:
        point = point_at(duration=_open_duration(plan, rate), rate=rate, seed=seed)
        log(f"  open {rate:,.0f}/s: {_point_line(point)}")
        _settle(run, point)
        return point

    if saturation > 0:
        out["sweep"] = sweep(open_at, saturation, plan)
    else:
        out["sweep"] = {"goodput": 0.0, "goodput_rate": None, "points": []}
    if own_low and low_rate is None:
        low_rate = LOW_LOAD_FRACTION * saturation
    if low_rate:
        point = point_at(duration=_open_duration(plan, low_rate), rate=low_rate, seed=seed)
        point["offered_rate"] = low_rate
        out["low"] = point
        log(f"  low load {low_rate:,.0f}/s: {_point_line(point)}")
    run.snapshot()
    return out


def _open_duration(plan: Plan, rate: float) -> float:
    """Long enough at a low rate for its p99 to rest on plan.low_min_requests requests (a p99
    of 50 requests is their maximum), up to three times plan.duration."""
    return min(max(plan.duration, plan.low_min_requests / rate), 3 * plan.duration)


def _settle(run: Running, point: dict[str, Any] | None = None) -> None:
    """After an overloaded point, give the server a moment to empty its queues."""
    run.snapshot()
    if point is None or not point.get("passed", True):
        time.sleep(1.0)


def _point_line(p: dict[str, Any]) -> str:
    lat = p["latency_ms"]
    errors = ", ".join(f"{k}: {v}" for k, v in p["errors"].items()) or "no errors"
    text = (
        f"{p['ok_rate']:,.0f} ok/s, goodput {p['goodput']:,.0f}/s, p50 {_ms(lat.get('p50'))}, "
        f"p99 {_ms(lat.get('p99'))} ms, {errors}; server {p['server_cpu_share']:.0%} of a core, "
        f"load avg {p['loadavg_1m_before']:.1f}"
    )
    if p.get("warnings"):
        text += " [generator: " + "; ".join(w.split(":")[0] for w in p["warnings"]) + "]"
    return text


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


# ------------------------------------------------------------------------------------------
# Figures over runs
# ------------------------------------------------------------------------------------------

FIGURES = (
    ("closed_c8_rps", "c=8 req/s", lambda m: m["closed"]["8"]["ok_rate"]),
    ("closed_c8_p99_ms", "c=8 p99 ms", lambda m: m["closed"]["8"]["latency_ms"]["p99"]),
    ("closed_c64_rps", "c=64 req/s", lambda m: m["closed"]["64"]["ok_rate"]),
    ("closed_c64_p99_ms", "c=64 p99 ms", lambda m: m["closed"]["64"]["latency_ms"]["p99"]),
    ("max_rps", "max req/s", lambda m: m["max_rps"]),
    ("goodput_rps", "goodput/s", lambda m: m["sweep"]["goodput"]),
    ("goodput_rate", "at rate/s", lambda m: m["sweep"]["goodput_rate"]),
    ("low_p50_ms", "low p50 ms", lambda m: m["low"]["latency_ms"]["p50"] if "low" in m else None),
    ("low_p99_ms", "low p99 ms", lambda m: m["low"]["latency_ms"]["p99"] if "low" in m else None),
    ("low_error_rate", "low err", lambda m: m["low"]["error_rate"] if "low" in m else None),
)


def figures(measured: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, _, get in FIGURES:
        try:
            value = get(measured)
        except (KeyError, TypeError):
            value = None
        out[key] = None if value is None else float(value)
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median and min-max of the values measured (None where a run had none)."""
    got = [v for v in values if v is not None and math.isfinite(v)]
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "n": len(got)}


def ratios(run_figures: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """The issue's three comparisons for one run's figures (None where a side is missing)."""
    bl = run_figures.get("backline", {})
    others = [
        f.get("goodput_rps")
        for name, f in run_figures.items()
        if name not in ("backline", FLOOR) and f.get("goodput_rps") is not None
    ]
    best = max(others) if others else None
    best_peer = None
    if best is not None:
        best_peer = next(
            n
            for n, f in run_figures.items()
            if n not in ("backline", FLOOR) and f.get("goodput_rps") == best
        )
    out: dict[str, Any] = {"best_peer": best_peer, "best_peer_goodput": best}
    g = bl.get("goodput_rps")
    out["goodput_vs_best_peer"] = (g / best) if g is not None and best else None
    floor = run_figures.get(FLOOR, {}).get("max_rps")
    m = bl.get("max_rps")
    out["max_vs_noop_floor"] = (m / floor) if m is not None and floor else None
    ref = run_figures.get(UNBATCHED_REFERENCE, {}).get("low_p99_ms")
    low = bl.get("low_p99_ms")
    out["low_p99_minus_unbatched_ms"] = (low - ref) if low is not None and ref is not None else None
    return out


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    runs = results["runs"]
    names = list(results["peers"])
    per_peer: dict[str, Any] = {}
    for name in names:
        per_run = [r["figures"].get(name) for r in runs if r["figures"].get(name)]
        per_peer[name] = {key: spread([f[key] for f in per_run]) for key, _, _ in FIGURES}
    per_run_ratios = [ratios(r["figures"]) for r in runs]
    summary_ratios: dict[str, Any] = {}
    for key in ("goodput_vs_best_peer", "max_vs_noop_floor", "low_p99_minus_unbatched_ms"):
        summary_ratios[key] = spread([r[key] for r in per_run_ratios])
    summary_ratios["best_peer_by_run"] = [r["best_peer"] for r in per_run_ratios]
    summary_ratios["best_peer_goodput_by_run"] = [r["best_peer_goodput"] for r in per_run_ratios]
    targets = {
        "goodput_vs_best_peer": {"target": f">= {TARGET_GOODPUT_RATIO:g}"},
        "max_vs_noop_floor": {"target": f">= {TARGET_FLOOR_RATIO:g}"},
        "low_p99_minus_unbatched_ms": {"target": f"<= {TARGET_LOW_P99_DELTA_MS:g} ms"},
    }
    checks = {
        "goodput_vs_best_peer": lambda v: v >= TARGET_GOODPUT_RATIO,
        "max_vs_noop_floor": lambda v: v >= TARGET_FLOOR_RATIO,
        "low_p99_minus_unbatched_ms": lambda v: v <= TARGET_LOW_P99_DELTA_MS,
    }
    for key, entry in targets.items():
        median = summary_ratios[key]["median"]
        entry["median"] = median
        entry["met"] = None if median is None else bool(checks[key](median))
    return {"peers": per_peer, "ratios": summary_ratios, "targets": targets}


def _fmt(s: dict[str, Any], digits: int = 0) -> str:
    if s["median"] is None:
        return "-"
    f = f"{{:,.{digits}f}}"
    text = f.format(s["median"])
    if s["n"] > 1:
        text += f" ({f.format(s['min'])}-{f.format(s['max'])})"
    return text


def print_table(results: dict[str, Any], summary: dict[str, Any]) -> None:
    columns = [
        ("max_rps", "max req/s", 0),
        ("closed_c8_rps", "c=8 req/s", 0),
        ("closed_c64_rps", "c=64 req/s", 0),
        ("goodput_rps", f"goodput p99<={results['config']['slo_ms']:g}ms", 0),
        ("low_p99_ms", "p99 ms at low load", 2),
    ]
    rows = [["peer", *(title for _, title, _ in columns)]]
    for name, figs in summary["peers"].items():
        rows.append([name, *(_fmt(figs[key], d) for key, _, d in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    low = results.get("low_rate_by_run") or []
    print(
        f"runs: {len(results['runs'])}, {results['config']['duration']:g} s a point; "
        "median (min-max); low load = " + (", ".join(f"{r:,.0f}/s" for r in low if r) or "-")
    )
    for i, row in enumerate(rows):
        print(
            "  ".join(
                c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    names = {
        "goodput_vs_best_peer": "backline goodput / best peer's",
        "max_vs_noop_floor": "backline max req/s / no-op floor's",
        "low_p99_minus_unbatched_ms": f"backline p99 - {UNBATCHED_REFERENCE} p99 at low load (ms)",
    }
    for key, entry in summary["targets"].items():
        s = summary["ratios"][key]
        met = {None: "not measured", True: "met", False: "MISSED"}[entry["met"]]
        print(f"{names[key]:<52} {_fmt(s, 2):>22}   target {entry['target']}: {met}")
    best = [b for b in summary["ratios"]["best_peer_by_run"] if b]
    if best:
        goodputs = summary["ratios"]["best_peer_goodput_by_run"]
        shown = ", ".join(f"{b} ({g:,.0f}/s)" for b, g in zip(best, goodputs, strict=False))
        print(f"best other peer by goodput, by run: {shown}")
        if all(g == 0 for g in goodputs if g is not None):
            print("  (no other peer kept its p99 within the SLO at any rate: no goodput ratio)")


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _shown(settings: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def _settings(defaults: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    """Parse K=V,... into the types of `defaults`' values; only its keys are allowed."""

    def parse(text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in defaults:
                raise argparse.ArgumentTypeError(
                    f"{part!r}: write K=V with K one of {', '.join(defaults)}"
                )
            try:
                out[key] = type(defaults[key])(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number") from None
        return out

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", type=Path, default=DEFAULT_PROJECT)
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS), help="comma-separated peer names")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 s a point, 1 run, a short sweep")
    p.add_argument("--json", type=Path, help="write every figure, version and process here")
    p.add_argument("--slo-ms", type=float, default=20.0)
    p.add_argument("--instances", type=int, default=1, help="instances per request (1)")
    p.add_argument("--low-rate", type=float, help="low-load rate (default: 10%% of backline's max)")
    p.add_argument(
        "--no-prediction-log",
        dest="prediction_log",
        action="store_false",
        help="run backline serve without its prediction log (the peers keep none)",
    )
    p.add_argument(
        "--ray-tuned",
        type=_settings(RAY_TUNED),
        default={},
        metavar="K=V,...",
        help=f"the tuned Ray peer's settings ({_shown(RAY_TUNED)})",
    )
    p.add_argument(
        "--bento-tuned",
        type=_settings(BENTO_TUNED),
        default={},
        metavar="K=V,...",
        help=f"the tuned BentoML peer's settings ({_shown(BENTO_TUNED)})",
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to cores")
    p.add_argument("--setup-only", action="store_true", help="make the venvs and project, stop")
    args = p.parse_args(argv)

    catalog = peers(args.prediction_log, args.ray_tuned, args.bento_tuned)
    chosen = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in catalog]
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(catalog)}")
    chosen.sort(key=lambda n: n != "backline")  # backline first: its max sets the low-load rate
    if args.quick:
        args.duration, args.runs = min(args.duration, 2.0), 1
        plan = Plan(args.duration, args.slo_ms, (0.5, 0.8, 1.0), (0.25, 0.1), 0, 1.0, 500)
    else:
        plan = Plan(
            args.duration, args.slo_ms, (0.5, 0.7, 0.85, 1.0, 1.15), (0.3, 0.15, 0.05), 2, 3.0
        )
    pin = args.pin and len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    if args.pin and not pin:
        _log("not pinning: needs 2 cores and taskset")

    project = ensure_project(args.project, _log)
    pythons = {name: peer_python(catalog[name], _log) for name in chosen}
    if args.setup_only:
        _log("venvs and project ready")
        return 0
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    bodies, at = make_requests(project, 4096, args.instances)
    expected = Expected(project)
    results: dict[str, Any] = {
        "config": {
            "project": str(project),
            "peers": chosen,
            "duration": args.duration,
            "runs": args.runs,
            "quick": args.quick,
            "slo_ms": args.slo_ms,
            "instances_per_request": args.instances,
            "requests": len(bodies),
            "at": at,
            "prediction_log": args.prediction_log,
            "pinned": pin,
            "server_core": SERVER_CORE if pin else None,
            "loadgen_core": LOADGEN_CORE if pin else None,
            "sweep": {"up": plan.sweep_up, "down": plan.sweep_down, "bisect": plan.bisect},
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "started": datetime.now(UTC).isoformat(),
            "load_average_at_start": os.getloadavg(),
        },
        "peers": {},
        "runs": [],
        "low_rate_by_run": [],
    }
    for name in chosen:
        peer = catalog[name]
        results["peers"][name] = {
            "what": peer.what,
            "settings": peer.settings,
            "venv": str(pythons[name].parent.parent),
            "versions": versions(pythons[name], peer.packages),
            "spawned": [],
            "parity": [],
            "ready_s": [],
        }
    failed = False
    try:
        for k in range(args.runs):
            _log(f"run {k + 1} of {args.runs}")
            run_out: dict[str, Any] = {"measured": {}, "figures": {}, "errors": {}}
            low_rate = args.low_rate
            for name in chosen:
                peer = catalog[name]
                info = results["peers"][name]
                log_path = LOGS / f"{name}-run{k + 1}.log"
                _log(f"{name}: starting ({peer.what})")
                try:
                    with Running(peer, pythons[name], project, log_path, pin) as running:
                        info["ready_s"].append(round(running.ready_s, 1))
                        info["command"] = running.command
                        _log(f"{name}: ready in {running.ready_s:.1f} s on :{running.port}")
                        if peer.parity:
                            parity = check_parity(running, bodies, expected)
                            info["parity"].append(parity)
                            _log(
                                f"{name}: parity {'ok' if parity['ok'] else 'FAILED'} "
                                f"({parity['requests']} requests, max |diff| "
                                f"{parity['max_abs_diff']:.1e}) {'; '.join(parity['problems'])}"
                            )
                            if not parity["ok"]:
                                failed = True
                        measured = measure_peer(
                            running,
                            bodies,
                            plan,
                            low_rate=low_rate,
                            seed=k,
                            log=_log,
                            own_low=name == "backline",
                        )
                        info["spawned"].append(running.spawned())
                    run_out["measured"][name] = measured
                    run_out["figures"][name] = figures(measured)
                    run_out.setdefault("order", []).append(name)
                    if name == "backline" and low_rate is None and "low" in measured:
                        low_rate = measured["low"]["offered_rate"]
                except Exception as exc:
                    failed = True
                    run_out["errors"][name] = str(exc)
                    _log(f"{name}: FAILED: {exc}")
            if low_rate is None:
                _log("no low-load rate (backline not measured and no --low-rate): step 3 skipped")
            results["low_rate_by_run"].append(low_rate)
            results["runs"].append(run_out)
            if args.json:  # what is done so far, in case a later run is interrupted
                args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        expected.close()
    results["summary"] = summarize(results)
    results["machine"]["finished"] = datetime.now(UTC).isoformat()
    print_table(results, results["summary"])
    for name, info in results["peers"].items():
        if info["spawned"]:
            last = info["spawned"][-1]
            names = sorted({p["name"] for p in last["list"]})
            where = "all on core 0" if last["all_on_server_core"] else "NOT all on core 0"
            print(
                f"{name}: {last['processes']} process(es), {last['rss_mb']:,.0f} MB RSS, {where}: "
                f"{', '.join(names)}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        _log(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
