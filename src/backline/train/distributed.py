"""Several training processes on one machine: torchrun launches them, DDP keeps them in step.

    launch(run_dir, nproc=2, max_restarts=3, device="cpu")   # the parent: runs torchrun, waits
    ctx = DistContext.from_env("cpu")                         # a worker: joins the process group

torchrun (`python -m torch.distributed.run`) runs `python -m backline.train.worker RUN_DIR` N
times with a c10d rendezvous on localhost (`--standalone`). The workers use gloo on CPU and NCCL
on GPUs (one GPU per worker). When a worker dies, torchrun stops the others and starts the
whole group again, up to `--max-restarts` times; every worker then resumes from the newest good
checkpoint, which rank 0 chooses and broadcasts so that all ranks load the same one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from backline.core.errors import InvalidArgument

# A collective that waits this long is stuck (a peer died without closing its sockets);
# failing lets torchrun restart the group instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


@dataclass(frozen=True)
class DistContext:
    """Which worker this process is, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    """cpu, or cuda:LOCAL_RANK."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> DistContext:
        """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and join the process group."""
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        where = "cpu"
        if device == "cuda":
            check_device("cuda", world)
            torch.cuda.set_device(local)
            where = f"cuda:{local}"
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if device == "cuda" else "gloo"
            dist.init_process_group(
                backend=backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
            )
        return cls(rank=rank, world_size=world, local_rank=local, device=where)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64); the identity for one process."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_from_main(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def check_device(device: str, nproc: int = 1) -> None:
    """Refuse a device this machine does not have, with what to do instead."""
    if device not in ("cpu", "cuda"):
        raise InvalidArgument(
            f"--device {device!r} is not a device backline trains on; use cpu or cuda."
        )
    if device == "cuda":
        if not torch.cuda.is_available():
            build = torch.__version__
            raise InvalidArgument(
                f"--device cuda, but torch {build} sees no CUDA device. Use --device cpu, or "
                "install a CUDA build of torch on a machine with a GPU."
            )
        if nproc > torch.cuda.device_count():
            raise InvalidArgument(
                f"--nproc {nproc} with --device cuda needs {nproc} GPUs, but "
                f"{torch.cuda.device_count()} are visible. Use --nproc "
                f"{torch.cuda.device_count()} or fewer."
            )


def torchrun_command(
    run_dir: Path, *, nproc: int, max_restarts: int, device: str, progress: bool = False
) -> list[str]:
    """The command `launch` runs, one worker per process, rendezvous on localhost only."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # c10d rendezvous on localhost:<free port>, nothing else listens
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.2",
        "-m",
        "backline.train.worker",
        str(run_dir),
        "--device",
        device,
    ]
    return [*cmd, "--progress"] if progress else cmd


def worker_env(nproc: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the workers: loopback sockets, and the cores shared between them."""
    env = dict(os.environ if base is None else base)
    # A fresh store per restart: with the rendezvous store shared (torch's default), a restarted
    # rank can read the dead group's gloo/NCCL addresses and fail to connect (seen with torch
    # 2.13; pytorch/pytorch#135712), burning a restart or hanging.
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    return env


@dataclass(frozen=True)
class Launched:
    """How a torchrun launch ended."""

    returncode: int
    stopped: bool
    """True when this process got SIGTERM and passed it on (the workers checkpoint and stop)."""


def launch(
    run_dir: Path,
    *,
    nproc: int,
    max_restarts: int,
    device: str = "cpu",
    progress: bool = False,
    env: Mapping[str, str] | None = None,
) -> Launched:
    """Run the workers under torchrun and wait; torchrun's own log goes to stderr. A SIGTERM
    to this process is passed to torchrun, which passes it to the workers."""
    if nproc < 1:
        raise InvalidArgument(f"--nproc {nproc}: run at least one worker.")
    check_device(device, nproc)
    cmd = torchrun_command(
        run_dir, nproc=nproc, max_restarts=max_restarts, device=device, progress=progress
    )
    proc = subprocess.Popen(cmd, env=worker_env(nproc, env))
    stopped = threading.Event()

    def forward(signum: int, frame: FrameType | None) -> None:
        stopped.set()
        proc.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        returncode = proc.wait()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:  # pragma: no cover - only on an exception while waiting
            proc.kill()
            proc.wait()
    return Launched(returncode, stopped.is_set())
