"""Scoring in fixed batch sizes on a device: the padding a CUDA graph needs, and the graphs.

    scorer = load_package(folder, device="cuda", buckets=power_of_two_buckets(256))
    scorer.warm()       # every bucket once, before a server says it is ready
    scorer.mode         # "cuda_graph"; "eager" on CPU, or where capture failed (scorer.fallback)

Why buckets: a CUDA graph replays fixed kernels on fixed memory, so it has one batch size, and
a server's batches have every size from 1 to its largest. Each batch runs at the smallest
bucket that holds it; the padding rows are zeros (numeric) and index 0 (unknown category), and
their scores are discarded. A batch larger than the largest bucket runs as chunks of it. The
fp32 program scores each row on its own (a row's score moves by 1.5e-7 at most with its batch
mates, measured), so padding changes a real row's score by float rounding at most.

What runs where: `encode`, the vocabulary lookup of strings, stays on the CPU in the
TorchScript program; `score_codes` (the preprocessing math and the network) runs on the device
from static input buffers, one captured graph per bucket. A call fills the bucket's pinned host
buffers (rows, then zero padding), copies them into the static buffers, replays the graph and
copies the output back. On the CPU the same `BucketRunner` runs with no graph and no copies to
a device (mode "eager"): that is how the padding and slicing are tested without a GPU.

When capture fails, the runner falls back to eager calls on the device and says why in
`fallback`. Not torch.compile(mode="reduce-overhead"): the package's program is TorchScript,
which torch.compile refuses outright and Dynamo cannot trace into (a fundamental graph break in
torch 2.13), so "compiled" would run the same eager calls.

A runner is for one thread at a time (its buffers are shared); a lock makes concurrent calls
wait rather than mix their rows.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from backline.core.errors import InputError

#: Where a package's program can run.
DEVICES = ("cpu", "cuda")
#: Calls of each bucket on a side stream before its graph is captured: CUDA's lazy module
#: loading, cuBLAS workspaces and TorchScript's profiling runs happen there, not in the capture.
CAPTURE_WARMUP = 3

#: score_codes(numeric float64 [B, Dn], codes int64 [B, Dc]) -> probabilities float32 [B]
ScoreCodes = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Chunk(NamedTuple):
    """Rows start..stop-1 of a batch, scored in one call at batch size `bucket` (>= stop - start)."""

    start: int
    stop: int
    bucket: int


def check_buckets(buckets: Iterable[int]) -> tuple[int, ...]:
    """`buckets` as a tuple, or an InputError naming what is wrong with it."""
    try:
        values = tuple(buckets)
    except TypeError:
        raise InputError(
            f"buckets = {buckets!r} is not a sequence of batch sizes. Pass ascending sizes, "
            "e.g. (1, 2, 4, 8, 16, 32, 64, 128, 256)."
        ) from None
    bad = [b for b in values if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1]
    if not values or bad:
        raise InputError(
            f"buckets = {values!r}: every bucket must be a batch size of at least 1"
            f"{f' ({bad[0]!r} is not)' if bad else ', and there must be one'}. Pass ascending "
            "sizes, e.g. power_of_two_buckets(256)."
        )
    sizes = tuple(int(b) for b in values)
    if any(a >= b for a, b in itertools.pairwise(sizes)):
        raise InputError(
            f"buckets = {sizes!r} are not strictly ascending. Sort them and drop repeats: "
            f"{tuple(sorted(set(sizes)))!r}."
        )
    return sizes


def power_of_two_buckets(max_batch: int) -> tuple[int, ...]:
    """(1, 2, 4, ..., max_batch): every power of two below max_batch, then max_batch itself.

    A batch of n rows then pads at most to 2n - 1 rows, and a server's largest batch is a
    bucket of its own."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch = {max_batch!r}; the largest batch must be at least 1.")
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return (*sizes, max_batch)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n` rows (1 <= n <= the largest bucket)."""
    if not 1 <= n <= buckets[-1]:
        raise ValueError(f"{n} rows do not fit a bucket of {tuple(buckets)}")
    return buckets[bisect.bisect_left(buckets, n)]


def plan(n: int, buckets: Sequence[int]) -> list[Chunk]:
    """The calls that score an `n`-row batch: chunks of the largest bucket while more rows than
    it remain, then the rest at the smallest bucket that holds them."""
    largest = buckets[-1]
    chunks = []
    start = 0
    while n - start > largest:
        chunks.append(Chunk(start, start + largest, largest))
        start += largest
    if start < n:
        chunks.append(Chunk(start, n, bucket_for(n - start, buckets)))
    return chunks


def fill(buffer: torch.Tensor, rows: torch.Tensor) -> None:
    """`rows` into the top of `buffer`, zeros below them (the padding rows)."""
    n = rows.shape[0]
    buffer[:n].copy_(rows)
    buffer[n:].zero_()


def capture_cuda_graph(
    fn: ScoreCodes, numeric: torch.Tensor, codes: torch.Tensor
) -> tuple[Callable[[], None], torch.Tensor]:
    """(replay, static output): `fn` on the static inputs `numeric` and `codes` (on one CUDA
    device), captured as a CUDA graph the way PyTorch's documentation does it.

    Warm-up calls run on a side stream first (CAPTURE_WARMUP), then one call is captured on
    a stream of the inputs' device (torch.cuda.graph's shared default stream belongs to
    whichever device was current when it was first made). Each replay, on the caller's
    current stream, rewrites the static output from whatever the static inputs hold. The
    capture is thread-local: another thread still serving the previous model on the same
    device while a new one is captured is not an error.
    """
    with torch.cuda.device(numeric.device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP):
                fn(numeric, codes)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
            out = fn(numeric, codes)
    return graph.replay, out


#: capture(fn, static numeric, static codes) -> (replay, static output); swapped in tests.
Capture = Callable[
    [ScoreCodes, torch.Tensor, torch.Tensor], tuple[Callable[[], None], torch.Tensor]
]


@dataclass
class _Slot:
    """One bucket: its static inputs on the device, and how to score them."""

    numeric: torch.Tensor
    """(bucket, Dn) float64 on the device; a graph reads exactly this memory."""
    codes: torch.Tensor
    """(bucket, Dc) int64 on the device."""
    host_numeric: torch.Tensor
    """Where a call's rows are written first: pinned host memory on CUDA, the static buffer
    itself on the CPU."""
    host_codes: torch.Tensor
    host_out: torch.Tensor | None
    """Pinned (bucket,) float32 the output is copied into on CUDA; None on the CPU."""
    run: Callable[[], torch.Tensor]
    """Scores the static inputs: a graph replay returning its static output, or an eager call."""


class BucketRunner:
    """Scores (numeric, codes) in fixed batch sizes on one device; see the module docstring."""

    def __init__(
        self,
        score_codes: ScoreCodes,
        buckets: Sequence[int],
        n_numeric: int,
        n_categorical: int,
        device: torch.device,
        *,
        graphs: bool,
        capture: Capture = capture_cuda_graph,
        staged: bool | None = None,
    ) -> None:
        """`graphs`: capture each bucket with `capture` (falling back to eager calls if that
        fails). `staged`: write rows into host buffers and copy them to the device's static
        buffers, and the output back (what a GPU needs); by default on every device but the
        CPU. The tests turn it on for the CPU, to run the GPU's copy path there."""
        self.buckets = check_buckets(buckets)
        self.device = device
        self._staged = device.type != "cpu" if staged is None else staged
        self.mode = "eager"
        """"cuda_graph" when every bucket was captured, else "eager"."""
        self.fallback: str | None = None
        """Why graphs were asked for but are not in use; None otherwise."""
        self._score = score_codes
        self._width = (n_numeric, n_categorical)
        self._lock = threading.Lock()
        with torch.inference_mode():
            self._slots = {b: self._slot(b) for b in self.buckets}
            if graphs:
                try:
                    for slot in self._slots.values():
                        slot.run = self._captured(slot, capture)
                    self.mode = "cuda_graph"
                except Exception as exc:  # capture raises RuntimeError and CUDA's own errors
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    self.fallback = (
                        f"CUDA graph capture failed ({type(exc).__name__}: {first}); scoring "
                        "with eager calls on the device instead"
                    )
                    self._slots = {b: self._slot(b) for b in self.buckets}

    def _slot(self, bucket: int) -> _Slot:
        n_numeric, n_categorical = self._width
        numeric = torch.zeros((bucket, n_numeric), dtype=torch.float64, device=self.device)
        codes = torch.zeros((bucket, n_categorical), dtype=torch.int64, device=self.device)
        if not self._staged:
            host_numeric, host_codes, host_out = numeric, codes, None
        else:  # pinned, so the copies to and from a GPU are asynchronous DMA
            pin = self.device.type == "cuda"
            host_numeric = torch.zeros(numeric.shape, dtype=numeric.dtype, pin_memory=pin)
            host_codes = torch.zeros(codes.shape, dtype=codes.dtype, pin_memory=pin)
            host_out = torch.zeros(bucket, dtype=torch.float32, pin_memory=pin)
        return _Slot(
            numeric, codes, host_numeric, host_codes, host_out, lambda: self._score(numeric, codes)
        )

    def _captured(self, slot: _Slot, capture: Capture) -> Callable[[], torch.Tensor]:
        replay, out = capture(self._score, slot.numeric, slot.codes)

        def run() -> torch.Tensor:
            replay()
            return out

        return run

    def __call__(self, numeric: torch.Tensor, codes: torch.Tensor) -> np.ndarray:
        """Probabilities float32 [N] for numeric [N, Dn] and codes [N, Dc] (CPU tensors)."""
        n = numeric.shape[0]
        if codes.shape[0] != n:
            raise ValueError(f"numeric has {n} rows but codes has {codes.shape[0]}")
        out = np.empty(n, dtype=np.float32)
        with self._lock, torch.inference_mode():
            for chunk in plan(n, self.buckets):
                scores = self._execute(
                    self._slots[chunk.bucket],
                    numeric[chunk.start : chunk.stop],
                    codes[chunk.start : chunk.stop],
                )
                out[chunk.start : chunk.stop] = scores[: chunk.stop - chunk.start]
        return out

    def _execute(self, slot: _Slot, numeric: torch.Tensor, codes: torch.Tensor) -> np.ndarray:
        """Scores of the slot's whole bucket: `numeric` and `codes` rows, then padding."""
        fill(slot.host_numeric, numeric)
        fill(slot.host_codes, codes)
        if slot.host_out is None:  # not staged: the host buffers are the static inputs
            return slot.run().numpy()
        slot.numeric.copy_(slot.host_numeric, non_blocking=True)
        slot.codes.copy_(slot.host_codes, non_blocking=True)
        slot.host_out.copy_(slot.run(), non_blocking=True)
        if self.device.type == "cuda":
            # copies and replay are queued on the current stream; the output is read, and the
            # host buffers refilled by the next call, only once they are done
            torch.cuda.current_stream(self.device).synchronize()
        return slot.host_out.numpy()


def parse_device(device: str | torch.device) -> torch.device:
    """torch.device for "cpu", "cuda" or "cuda:N"; an InputError for anything else. Whether
    CUDA can be used here is `check_cuda`'s question."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICES:
        raise InputError(f'device = {device!r}; a package runs on "cpu" or "cuda" (or "cuda:N").')
    return parsed


def check_cuda(device: torch.device) -> torch.device:
    """`device` with its index (the current device for plain "cuda"), or an InputError saying
    why this process cannot use it."""
    if not torch.cuda.is_available():
        raise InputError(
            f"device = {str(device)!r}, but torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, built with CUDA {torch.version.cuda or 'none'}). Install a "
            "CUDA build of torch on a machine with an NVIDIA GPU and its driver, or load with "
            'device="cpu".'
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise InputError(
            f"device = {str(device)!r}, but this process sees {torch.cuda.device_count()} CUDA "
            "device(s). Pick one of them (CUDA_VISIBLE_DEVICES renumbers them from 0)."
        )
    return torch.device("cuda", index)
