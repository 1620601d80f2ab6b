"""Fixed batch sizes (buckets) and the CUDA path: padding and slicing are checked on the CPU,
where the same BucketRunner runs without graphs; what needs a GPU is marked `gpu`."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from backline.core.errors import InputError, SchemaError
from backline.package import device as device_module
from backline.package.device import BucketRunner, Chunk, bucket_for, plan, power_of_two_buckets
from backline.package.reader import ServingPackage, load_package, table_inputs
from tests.package.conftest import Trained, package_of

BUCKETS = (1, 2, 4, 8, 16)
#: 1, 3, every bucket edge and one past it, the largest + 1, and 2 * largest + 5
SIZES = sorted({1, 3, *BUCKETS, *(b + 1 for b in BUCKETS), 2 * BUCKETS[-1] + 5})

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
has_onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


# --- the plan ----------------------------------------------------------------------------------


def test_plan_covers_every_row_once_at_the_smallest_bucket() -> None:
    assert plan(0, BUCKETS) == []
    assert plan(3, BUCKETS) == [Chunk(0, 3, 4)]
    assert plan(16, BUCKETS) == [Chunk(0, 16, 16)]
    assert plan(17, BUCKETS) == [Chunk(0, 16, 16), Chunk(16, 17, 1)]
    assert plan(37, BUCKETS) == [Chunk(0, 16, 16), Chunk(16, 32, 16), Chunk(32, 37, 8)]
    for buckets in (BUCKETS, (3, 10), (1,), (5,)):
        for n in range(0, 4 * buckets[-1] + 3):
            chunks = plan(n, buckets)
            covered = [i for c in chunks for i in range(c.start, c.stop)]
            assert covered == list(range(n))  # every row once, in order
            for c in chunks[:-1]:
                assert c.stop - c.start == c.bucket == buckets[-1]  # only the last is padded
            for c in chunks:
                rows = c.stop - c.start
                assert c.bucket in buckets and rows <= c.bucket
                assert all(b < rows for b in buckets if b < c.bucket)  # the smallest that fits


def test_bucket_for_and_power_of_two_buckets() -> None:
    assert [bucket_for(n, BUCKETS) for n in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]
    for n in (0, 17):
        with pytest.raises(ValueError, match="do not fit"):
            bucket_for(n, BUCKETS)
    assert power_of_two_buckets(1) == (1,)
    assert power_of_two_buckets(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert power_of_two_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    with pytest.raises(InputError, match="at least 1"):
        power_of_two_buckets(0)


@pytest.mark.parametrize(
    ("buckets", "match"),
    [
        ((), "there must be one"),
        ((0, 4), r"\(0 is not\)"),
        ((1, 2.5), r"\(2.5 is not\)"),
        ((True, 4), r"\(True is not\)"),
        ((4, 2), r"not strictly ascending.*\(2, 4\)"),
        ((1, 2, 2), r"not strictly ascending.*\(1, 2\)"),
        (7, "not a sequence of batch sizes"),
    ],
)
def test_bad_buckets_are_refused(buckets: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        device_module.check_buckets(buckets)  # type: ignore[arg-type]


# --- the runner, with a program whose output names its row -------------------------------------


class Recorder:
    """score_codes that returns numeric[:, 0] + 1000 * codes[:, 0] (so a row's output says which
    row it was), and records every batch it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        self.calls.append((numeric.clone(), codes.clone()))
        return (numeric[:, 0] + 1000.0 * codes[:, 0]).to(torch.float32)


def identity_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    numeric = torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1).repeat(1, 3)
    codes = (torch.arange(n, dtype=torch.int64) % 7 + 1).unsqueeze(1).repeat(1, 2)
    return numeric, codes


def fake_capture(
    fn: device_module.ScoreCodes, numeric: torch.Tensor, codes: torch.Tensor
) -> tuple[Callable[[], None], torch.Tensor]:
    """A CUDA graph's contract on the CPU: captured once on the static inputs, and each replay
    rewrites the same output tensor from whatever those inputs hold now."""
    out = fn(numeric, codes).clone()

    def replay() -> None:
        out.copy_(fn(numeric, codes))

    return replay, out


def runner_for(path: str) -> tuple[BucketRunner, Recorder]:
    """eager: the CPU path. graph: a graph's static buffers. staged: the GPU's copies through
    separate host buffers (not pinned: pinning needs CUDA)."""
    program = Recorder()
    runner = BucketRunner(
        program,
        BUCKETS,
        3,
        2,
        torch.device("cpu"),
        graphs="graph" in path,
        capture=fake_capture,
        staged="staged" in path,
    )
    program.calls.clear()  # the capture's own calls
    return runner, program


@pytest.mark.parametrize("path", ["eager", "graph", "eager staged", "graph staged"])
def test_runner_pads_slices_and_calls_only_at_bucket_sizes(path: str) -> None:
    runner, program = runner_for(path)
    assert runner.mode == ("cuda_graph" if "graph" in path else "eager")
    assert runner.fallback is None
    for n in [*SIZES, 0, 2, 5, 1]:  # the graph's static buffers are reused between sizes
        program.calls.clear()
        numeric, codes = identity_inputs(n)
        got = runner(numeric, codes)
        expected = (numeric[:, 0] + 1000.0 * codes[:, 0]).to(torch.float32).numpy()
        np.testing.assert_array_equal(got, expected)  # every row its own, in order
        assert got.dtype == np.float32 and got.shape == (n,)
        chunks = plan(n, BUCKETS)
        assert [c[0].shape[0] for c in program.calls] == [c.bucket for c in chunks]
        for (seen_numeric, seen_codes), chunk in zip(program.calls, chunks, strict=True):
            rows = chunk.stop - chunk.start
            assert torch.equal(seen_numeric[:rows], numeric[chunk.start : chunk.stop])
            assert torch.equal(seen_codes[:rows], codes[chunk.start : chunk.stop])
            assert not seen_numeric[rows:].any() and not seen_codes[rows:].any()  # zero padding


def test_a_failed_capture_falls_back_to_eager() -> None:
    def broken(*args: object) -> tuple[Callable[[], None], torch.Tensor]:
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    runner = BucketRunner(
        Recorder(), BUCKETS, 3, 2, torch.device("cpu"), graphs=True, capture=broken
    )
    assert runner.mode == "eager"
    assert runner.fallback is not None
    assert "RuntimeError: operation not permitted when stream is capturing)" in runner.fallback
    numeric, codes = identity_inputs(21)
    np.testing.assert_array_equal(
        runner(numeric, codes), (numeric[:, 0] + 1000.0 * codes[:, 0]).float().numpy()
    )


# --- a real package on the CPU -----------------------------------------------------------------


def test_bucketed_scores_equal_unbucketed(packaged: ServingPackage, rows: pa.Table) -> None:
    plain = load_package(packaged.root, "fp32")
    bucketed = load_package(packaged.root, "fp32", buckets=BUCKETS)
    assert (plain.buckets, plain.mode, plain.device) == (None, "eager", "cpu")
    assert (bucketed.buckets, bucketed.mode, bucketed.device) == (BUCKETS, "eager", "cpu")
    assert bucketed.variant == "fp32" and bucketed.root == packaged.root
    assert bucketed.feature_names == plain.feature_names and bucketed.fallback is None
    numeric, categorical = table_inputs(rows, plain.preprocess)
    worst = 0.0
    for n in SIZES:
        start = 7 * n % (rows.num_rows - n)  # different rows for each size
        num, cat = numeric[start : start + n], [c[start : start + n] for c in categorical]
        want, got = plain.score_inputs(num, cat), bucketed.score_inputs(num, cat)
        assert got.shape == (n,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"n = {n}")
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-6
    # the table path chunks the same way
    np.testing.assert_allclose(bucketed.score(rows), plain.score(rows), rtol=0, atol=1e-6)
    assert bucketed.score(rows.slice(0, 0)).shape == (0,)


def test_rows_are_distinct_enough_to_catch_misalignment(
    packaged: ServingPackage, rows: pa.Table
) -> None:
    """The equality above would miss a shifted row if neighbouring rows scored alike."""
    scores = load_package(packaged.root, "fp32").score(rows.slice(0, 40))
    assert np.abs(np.diff(scores)).min() > 1e-4


def test_warm_runs_every_bucket_once(
    packaged: ServingPackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = BucketRunner._execute

    def spy(self: BucketRunner, slot: Any, numeric: torch.Tensor, codes: torch.Tensor) -> Any:
        seen.append(slot.numeric.shape[0])  # the bucket: its static buffer's rows
        return real(self, slot, numeric, codes)

    monkeypatch.setattr(BucketRunner, "_execute", spy)
    scorer = load_package(packaged.root, buckets=BUCKETS)
    assert seen == []
    scorer.warm()
    assert seen == list(BUCKETS)
    plain = load_package(packaged.root)
    plain.warm()  # one row, through forward()
    assert seen == list(BUCKETS)


def test_score_inputs_checks_its_inputs(packaged: ServingPackage, rows: pa.Table) -> None:
    scorer = load_package(packaged.root, buckets=BUCKETS)
    numeric, categorical = table_inputs(rows.slice(0, 3), scorer.preprocess)
    with pytest.raises(SchemaError, match=r"shape \(3, 3\); the program takes \(N, 4\)"):
        scorer.score_inputs(numeric[:, :3], categorical)
    with pytest.raises(SchemaError, match="1 categorical column"):
        scorer.score_inputs(numeric, categorical[:1])


# --- the device argument -----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_clear_error(packaged: ServingPackage) -> None:
    for device in ("cuda", "cuda:0"):
        with pytest.raises(
            InputError, match=r"torch\.cuda\.is_available\(\) is False.*device=\"cpu\""
        ):
            load_package(packaged.root, device=device, buckets=BUCKETS)


def test_unknown_device_and_cpu_only_variants(packaged: ServingPackage, tmp_path: Path) -> None:
    for device in ("tpu", "mps", "", "cuda:x"):
        with pytest.raises(InputError, match='runs on "cpu" or "cuda"'):
            load_package(packaged.root, device=device)
    # int8 and onnx never run on CUDA, whether or not this machine has it
    for variant in ("int8", "onnx"):
        with pytest.raises(InputError, match=f"the {variant} variant cannot run on device 'cuda'"):
            load_package(packaged.root, variant, device="cuda")
    with pytest.raises(InputError, match="not strictly ascending"):
        load_package(packaged.root, buckets=(4, 2))
    assert load_package(packaged.root, device=torch.device("cpu")).device == "cpu"  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(not has_onnx, reason="needs onnx, onnxruntime and onnxscript")
def test_onnx_in_buckets(trained: Trained, tmp_path: Path, rows: pa.Table) -> None:
    pkg = package_of(trained, tmp_path / "p", onnx=True)
    plain = load_package(pkg.root, "onnx")
    bucketed = load_package(pkg.root, "onnx", buckets=BUCKETS)
    assert bucketed.variant == "onnx" and bucketed.buckets == BUCKETS
    some = rows.slice(0, 2 * BUCKETS[-1] + 5)
    np.testing.assert_allclose(bucketed.score(some), plain.score(some), rtol=0, atol=1e-6)
    assert not math.isnan(pkg.variant("onnx").batch_invariance_max_abs)


# --- on a GPU ----------------------------------------------------------------------------------


@gpu
@needs_cuda
def test_cuda_graphs_score_like_the_cpu(packaged: ServingPackage, rows: pa.Table) -> None:
    cpu = load_package(packaged.root, "fp32")
    gpu = load_package(packaged.root, device="cuda", buckets=BUCKETS)
    assert gpu.mode == "cuda_graph", gpu.fallback
    assert gpu.variant == "fp32" and gpu.device.startswith("cuda") and gpu.buckets == BUCKETS
    gpu.warm()
    numeric, categorical = table_inputs(rows, cpu.preprocess)
    for n in [*SIZES, 1, 37, 3]:  # buckets replayed in any order
        num, cat = numeric[:n], [c[:n] for c in categorical]
        np.testing.assert_allclose(
            gpu.score_inputs(num, cat), cpu.score_inputs(num, cat), rtol=0, atol=1e-5
        )
    np.testing.assert_allclose(gpu.score(rows), cpu.score(rows), rtol=0, atol=1e-5)


@gpu
@needs_cuda
def test_cuda_without_buckets_runs_eager(packaged: ServingPackage, rows: pa.Table) -> None:
    cpu = load_package(packaged.root, "fp32")
    gpu = load_package(packaged.root, "served", device="cuda")
    assert (gpu.mode, gpu.buckets, gpu.variant) == ("eager", None, "fp32")
    gpu.warm()
    np.testing.assert_allclose(gpu.score(rows), cpu.score(rows), rtol=0, atol=1e-5)
