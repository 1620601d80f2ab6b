"""The training loop: deterministic, checkpointed, resumable; one process or N under torchrun.

    spec = TrainSpec(model=ModelConfig(30, (40, 5), 8, (128, 64)), max_steps=2000, batch_size=1024,
                     learning_rate=3e-3, pos_weight=50.0)
    prepare_run_dir(run_dir, spec, TensorData(x_num, x_cat, y))
    fit(spec, TensorData.load(run_dir / "data" / "train.pt"), run_dir)    # resumes if it can

    python -m backline.train.worker RUN_DIR                           # the same, as a process
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m backline.train.worker RUN_DIR

Resumed equals uninterrupted: everything a step depends on is either a pure function of
(seed, epoch, step) or in the checkpoint. The data order is `permutation(seed, epoch)`, so the
loader position is just (epoch, offset); the model, AdamW, the LR schedule and every RNG
(Python, NumPy, torch CPU and CUDA, per rank) are saved and restored. A run killed anywhere and
resumed therefore takes bitwise the same steps, given the same machine, torch and thread count.

Each step appends "STEP LOSS" to RUN/loss.log, the loss as float.hex (exact). The log is
fsynced before every checkpoint commits, and cut back to the checkpoint's step on resume, so a
resumed run's log is comparable line for line with an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import torch
from torch import nn

from backline.core.errors import TrainingInterrupted
from backline.core.files import atomic_path, write_text_atomic
from backline.train.checkpoint import CheckpointStore, Loaded, Snapshot, load_checkpoint
from backline.train.distributed import DistContext
from backline.train.model import ModelConfig
from backline.train.state import (
    DataOrder,
    LossLog,
    WarmupCosine,
    on_cpu,
    parameter_sha256,
    rng_state,
    seed_everything,
    set_rng_state,
)

LOSS_LOG = "loss.log"
SPEC_FILE = "spec.json"
TRAIN_DATA = "data/train.pt"
FIT_RESULT = "fit.json"


@dataclass(frozen=True)
class TrainSpec:
    """Everything that decides the numbers a run produces (and how often it checkpoints)."""

    model: ModelConfig
    max_steps: int
    """Optimizer steps in total; a resumed run stops at the same step."""
    batch_size: int
    """Examples per step per worker; the global batch is batch_size * world size."""
    learning_rate: float
    """Peak learning rate, reached at the end of warm-up."""
    pos_weight: float = 1.0
    """BCEWithLogitsLoss pos_weight: n_negative / n_positive of the training split."""
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    """Seeds the initial weights, the data order (with the epoch) and dropout."""
    checkpoint_every: int = 200
    keep_checkpoints: int = 3

    def to_json(self) -> str:
        return json.dumps({"format": "backline.train-spec/1", **asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        doc = json.loads(text)
        doc.pop("format", None)
        model = doc.pop("model")
        model["vocab_sizes"] = tuple(model["vocab_sizes"])
        model["hidden"] = tuple(model["hidden"])
        return cls(model=ModelConfig(**model), **doc)

    def digest(self) -> str:
        """sha256 of what changes the math; checkpoint_every and keep_checkpoints do not."""
        doc = asdict(self)
        doc.pop("checkpoint_every")
        doc.pop("keep_checkpoints")
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TensorData:
    """Preprocessed examples: x_num float32 (N, Dn), x_cat int64 (N, Dc), y float32 (N,)."""

    x_num: torch.Tensor
    x_cat: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"x_num": self.x_num, "x_cat": self.x_cat, "y": self.y}, tmp)

    @classmethod
    def load(cls, path: Path) -> TensorData:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["x_num"], d["x_cat"], d["y"])


@dataclass(frozen=True)
class FitResult:
    """What one `fit` call (one process, or rank 0 of a group) did."""

    steps: int
    """The step the model is at: max_steps unless interrupted."""
    resumed_from: int | None
    """Step of the checkpoint this process started from; None when it started from scratch."""
    world_size: int
    seconds: float
    samples_per_second: float
    """Examples per second over the steps this process ran, summed over workers."""
    final_loss: float | None
    parameter_sha256: str
    checkpoint: str | None
    """The newest committed checkpoint folder."""
    checkpoint_block_seconds: float
    """Time the loop stood still for the periodic checkpoints: taking the snapshot, serializing
    it, joining the previous writer. The final, synchronous save is not counted."""
    checkpoints_written: int
    """Checkpoints committed by this process, the final one included."""
    interrupted: bool = False
    restarts: int = 0
    """How often torchrun had restarted the worker group before this attempt."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FitResult:
        doc = json.loads(text)
        doc["notes"] = tuple(doc.get("notes", ()))
        return cls(**doc)


def prepare_run_dir(run_dir: Path, spec: TrainSpec, data: TensorData) -> None:
    """Write what the workers read: the spec and the preprocessed training examples."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / SPEC_FILE, spec.to_json())
    data.save(run_dir / TRAIN_DATA)


def reset_run_dir(run_dir: Path) -> None:
    """Forget training progress (checkpoints and loss log): --resume never."""
    CheckpointStore(run_dir / "checkpoints", keep=1).clear()
    (run_dir / LOSS_LOG).unlink(missing_ok=True)
    (run_dir / FIT_RESULT).unlink(missing_ok=True)


# -- the loop ---------------------------------------------------------------------------------


def fit(
    spec: TrainSpec,
    data: TensorData,
    run_dir: Path,
    *,
    ctx: DistContext | None = None,
    progress: bool = False,
    notify: Callable[[str], None] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> FitResult:
    """Train to spec.max_steps, resuming from the newest good checkpoint in run_dir/checkpoints.

    `progress` draws a bar on stderr (a terminal only); `on_progress` is called after every
    step with a TrainProgress (main process only).
    """
    ctx = ctx or DistContext()
    say = notify or _stderr
    started = time.perf_counter()
    notes: list[str] = []
    store = CheckpointStore(run_dir / "checkpoints", keep=spec.keep_checkpoints)
    with _deterministic(ctx.device), _sigterm_flag() as stop:
        torch.manual_seed(spec.seed)  # identical initial weights on every rank
        model = spec.model.build().to(ctx.device)
        seed_everything(spec.seed, ctx.rank)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(spec.warmup_steps, spec.max_steps)
        )
        step, epoch, offset = 0, 0, 0
        loaded = _resume_point(store, ctx, spec, notes)
        if loaded is not None:
            model.load_state_dict(loaded.payloads["model.pt"])
            optimizer.load_state_dict(loaded.payloads["optimizer.pt"])
            trainer = loaded.payloads["trainer.pt"]
            schedule.load_state_dict(trainer["scheduler"])
            step, epoch, offset = trainer["step"], trainer["epoch"], trainer["offset"]
            states = trainer["rng"]
            if len(states) == ctx.world_size:
                set_rng_state(states[ctx.rank], ctx.device)
            else:  # a different world size cannot be bitwise anyway: fresh per-rank streams
                seed_everything(spec.seed + step, ctx.rank)
                notes.append(
                    f"resumed a {len(states)}-worker checkpoint on {ctx.world_size} worker(s): "
                    "training continues, but not bitwise as it would have on the same count"
                )
        resumed_from = step if loaded is not None else None
        for note in notes:
            if ctx.is_main:
                say(note)

        log = LossLog(run_dir / LOSS_LOG, step) if ctx.is_main else None
        store.before_commit = log.sync if log is not None else None
        if ctx.is_main:
            store.prepare()
        net: nn.Module = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
            net = DistributedDataParallel(model, device_ids=ids)
        loss_fn = nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor([spec.pos_weight], device=ctx.device)
        )
        order = DataOrder(
            len(data), spec.batch_size, ctx.world_size, ctx.rank, spec.seed, epoch, offset
        )
        x_num, x_cat, y = (t.to(ctx.device) for t in (data.x_num, data.x_cat, data.y))

        first_step, loss_value, blocked, written = step, None, 0.0, 0
        interrupted = False
        bar = _Progress(spec.max_steps, step) if progress and ctx.is_main else None
        watch = bar is not None or (on_progress is not None and ctx.is_main)
        t_first = time.perf_counter()
        try:
            model.train()
            while step < spec.max_steps:
                idx = torch.from_numpy(order.next()).to(ctx.device)
                logits = net(x_num[idx], x_cat[idx])  # (B, Dn), (B, Dc) -> (B,)
                loss = loss_fn(logits, y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                total, stops = ctx.all_sum([float(loss.detach()), float(stop.is_set())])
                loss_value = total / ctx.world_size
                if log is not None:
                    log.append(step, loss_value)
                if watch:
                    report = _report(
                        step,
                        first_step,
                        spec.max_steps,
                        loss_value,
                        time.perf_counter() - t_first,
                        spec.batch_size * ctx.world_size,
                    )
                    if bar is not None:
                        bar.update(report)
                    if on_progress is not None and ctx.is_main:
                        on_progress(report)
                interrupted = stops > 0
                final = step == spec.max_steps or interrupted
                if step % spec.checkpoint_every == 0 or final:
                    t0 = time.perf_counter()
                    snap = _snapshot(model, optimizer, schedule, order, step, ctx, spec)
                    if snap is not None:
                        store.save(snap, background=not final)
                        written += 1
                    if not final:
                        blocked += time.perf_counter() - t0
                if interrupted:
                    break
            store.wait()
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        seconds = time.perf_counter() - started
        ran = step - first_step
        result = FitResult(
            steps=step,
            resumed_from=resumed_from,
            world_size=ctx.world_size,
            seconds=seconds,
            samples_per_second=ran * spec.batch_size * ctx.world_size / seconds if ran else 0.0,
            final_loss=loss_value,
            parameter_sha256=parameter_sha256(model),
            checkpoint=str(store.last_saved or (loaded.path if loaded else "")) or None,
            checkpoint_block_seconds=blocked,
            checkpoints_written=written,
            interrupted=interrupted,
            restarts=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            notes=tuple(notes),
        )
    if ctx.is_main:
        write_text_atomic(run_dir / FIT_RESULT, result.to_json())
    if interrupted:
        raise TrainingInterrupted(
            f"training stopped by SIGTERM at step {step} of {spec.max_steps}; a checkpoint was "
            f"saved in {store.last_saved}. Run the same command again to resume from it."
        )
    return result


def _resume_point(
    store: CheckpointStore, ctx: DistContext, spec: TrainSpec, notes: list[str]
) -> Loaded | None:
    """Rank 0 picks the newest good checkpoint and tells the others which; all load it."""
    chosen: str | None = None
    loaded: Loaded | None = None
    if ctx.is_main:
        loaded, skipped = store.load_latest()
        notes.extend(skipped)
        if loaded is not None and loaded.meta.get("spec") != spec.digest():
            notes.append(f"checkpoint {loaded.path} belongs to another spec; starting over")
            loaded = None
        if loaded is None and (skipped or store.committed()):
            notes.append(f"no usable checkpoint in {store.root}; training from step 0")
        chosen = str(loaded.path) if loaded is not None else None
    chosen = ctx.broadcast_from_main(chosen)
    if not ctx.is_main and chosen is not None:
        loaded = load_checkpoint(Path(chosen))
    return loaded


def _snapshot(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    order: DataOrder,
    step: int,
    ctx: DistContext,
    spec: TrainSpec,
) -> Snapshot | None:
    """Everything a resume needs, at a step boundary; None on ranks > 0."""
    states = ctx.gather_to_main(rng_state(ctx.device))
    if not ctx.is_main:
        return None
    assert states is not None
    trainer = {
        "step": step,
        "epoch": order.epoch,
        "offset": order.offset,
        "world_size": ctx.world_size,
        "scheduler": on_cpu(schedule.state_dict()),
        "rng": [on_cpu(s) for s in states],
    }
    return Snapshot(
        step=step,
        world_size=ctx.world_size,
        payloads={
            "model.pt": on_cpu(model.state_dict()),
            "optimizer.pt": on_cpu(optimizer.state_dict()),
            "trainer.pt": trainer,
        },
        meta={"spec": spec.digest()},
    )


@contextmanager
def _deterministic(device: str) -> Iterator[None]:
    """Deterministic CUDA kernels while training; the caller's setting is restored afterwards.

    On the CPU the kernels this model uses are deterministic already, and the switch would cost
    every (re)started worker 1.4 s of imports (it pulls in torch._inductor)."""
    if not device.startswith("cuda"):
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """SIGTERM sets a flag; the loop checkpoints at the next step boundary and stops."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class TrainProgress:
    """Where training stands after a step: what the progress bar shows."""

    step: int
    total: int
    loss: float
    samples_per_second: float
    """Examples per second over the steps this process ran, summed over workers."""
    eta_seconds: float | None
    """Time left at that rate; None before a step has been timed."""


def _report(
    step: int, first: int, total: int, loss: float, elapsed: float, per_step: int
) -> TrainProgress:
    """`elapsed` seconds since step `first`; `per_step` examples per step over all workers."""
    ran = step - first
    steps_per_second = ran / elapsed if elapsed > 0 and ran else 0.0
    eta = (total - step) / steps_per_second if steps_per_second > 0 else None
    return TrainProgress(step, total, loss, steps_per_second * per_step, eta)


class _Progress:
    """A rich progress bar on stderr: steps, loss, samples/s and the time left; terminal only."""

    def __init__(self, total: int, done: int) -> None:
        self._bar = None
        if not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  {task.fields[rate]:>9,.0f} samples/s  "
                "ETA {task.fields[eta]}"
            ),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._bar.add_task(
            "train", total=total, completed=done, rate=0.0, loss=0.0, eta="-"
        )
        self._bar.start()

    def update(self, report: TrainProgress) -> None:
        if self._bar is None or (report.step % 10 and report.step != report.total):
            return
        eta = "-" if report.eta_seconds is None else _clock(report.eta_seconds)
        self._bar.update(
            self._task,
            completed=report.step,
            rate=report.samples_per_second,
            loss=report.loss,
            eta=eta,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _stderr(message: str) -> None:
    print(f"backline: {message}", file=sys.stderr, flush=True)
