"""What a training step depends on besides the model and optimizer, and how steps are recorded.

DataOrder        which examples each step reads: a pure function of (seed, epoch, offset)
WarmupCosine     the learning-rate multiplier per step
rng_state()      every RNG of the process as tensors (checkpointable, weights_only-loadable)
LossLog          "STEP LOSS_HEX" per step, cut back to a checkpoint's step on resume
parameter_sha256 one hash of a model's parameters, to compare runs bitwise
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backline.core.errors import ConfigError
from backline.core.files import write_text_atomic


class WarmupCosine:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine down to `floor`."""

    def __init__(self, warmup: int, total: int, floor: float = 0.1) -> None:
        self.warmup = min(warmup, total)
        self.total = total
        self.floor = floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class DataOrder:
    """Which examples each step reads. Epoch e visits `permutation(seed, e)` of range(n); a step
    takes the next batch * world positions and rank r gets the r-th `batch` of them. An epoch's
    last incomplete global batch is dropped. The position (epoch, offset) is all the state."""

    def __init__(
        self, n: int, batch: int, world: int, rank: int, seed: int, epoch: int = 0, offset: int = 0
    ) -> None:
        if batch * world > n:
            raise ConfigError(
                f"train.batch_size = {batch} x {world} worker(s) is more than the {n} training "
                f"examples. Lower train.batch_size to at most {n // world}."
            )
        self.n, self.batch, self.world, self.rank, self.seed = n, batch, world, rank, seed
        self.epoch, self.offset = epoch, offset
        self._perm: tuple[int, np.ndarray] | None = None

    def next(self) -> np.ndarray:
        """Indices of this rank's examples for the next step, shape (batch,)."""
        step = self.batch * self.world
        if self.offset + step > self.n:
            self.epoch, self.offset = self.epoch + 1, 0
        if self._perm is None or self._perm[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._perm = (self.epoch, rng.permutation(self.n))
        start = self.offset + self.rank * self.batch
        self.offset += step
        return self._perm[1][start : start + self.batch]


def rng_state(device: str) -> dict[str, Any]:
    """Every RNG of this process as tensors and plain values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None,
    }
    return state


def set_rng_state(state: dict[str, Any], device: str) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if device.startswith("cuda") and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int, rank: int) -> None:
    """Per-rank streams for Python, NumPy and torch (dropout); derived, so ranks differ."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def parameter_sha256(model: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every entry of the state dict, sorted by name."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def on_cpu(obj: Any) -> Any:
    """The same structure with every tensor on the CPU (GPU tensors copied), so a checkpoint
    loads on any machine; CPU tensors are shared, as `save` serializes them at once."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


class LossLog:
    """Appends 'STEP LOSS_HEX' lines; cut back to `resume_step` when opened."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        kept = [line for line in read_loss_log_lines(path) if int(line.split()[0]) <= resume_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._lock = threading.Lock()

    def append(self, step: int, loss: float) -> None:
        os.write(self._fd, f"{step} {loss.hex()}\n".encode())

    def sync(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def read_loss_log_lines(path: Path) -> list[str]:
    """Well-formed lines of a loss log (a torn last line is dropped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            try:
                float.fromhex(parts[1])
            except ValueError:
                continue
            out.append(line)
    return out


def read_loss_log(path: Path) -> list[tuple[int, float]]:
    return [(int(a), float.fromhex(b)) for a, b in map(str.split, read_loss_log_lines(path))]
