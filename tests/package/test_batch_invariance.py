"""A row's score must not depend on the rows batched beside it: measured per variant by
`package`, ~0 for fp32, and int8 is dropped (fp32 served) when it moves more than
INT8_BATCH_TOLERANCE."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
import torch

from backline.core.errors import InputError
from backline.package import export
from backline.package.export import (
    BATCH_INVARIANCE_SIZES,
    FP32_TOLERANCE,
    INT8_BATCH_TOLERANCE,
    Latency,
    Scorer,
    ServingPackage,
    load_package,
    read_package,
    table_inputs,
)
from backline.package.latency import torch_threads
from tests.package.conftest import Trained, package_of


def force_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether int8 is faster depends on the machine: count it faster, so that the other parts
    of the int8 rule decide."""
    monkeypatch.setattr(export, "_int8_faster", lambda latency: (True, "faster: test"))


# --- what package measures ---------------------------------------------------------------------


def test_fp32_is_batch_invariant_and_int8_is_not(packaged: ServingPackage) -> None:
    fp32, int8 = packaged.variant("fp32"), packaged.variant("int8")
    for v in (fp32, int8):
        assert [b for b, _ in v.batch_invariance_by_batch] == sorted(BATCH_INVARIANCE_SIZES)
        assert v.batch_invariance_max_abs == max(x for _, x in v.batch_invariance_by_batch)
        assert v.batch_invariance_max_abs >= v.batch_spread  # the batches of 256 count too
    assert fp32.batch_invariance_max_abs <= FP32_TOLERANCE
    # dynamic quantization scales activations by the batch's range: ~0.05 here, 50x the bound
    assert int8.batch_invariance_max_abs > 10 * INT8_BATCH_TOLERANCE
    assert not int8.kept and packaged.served == "fp32"
    assert "batch-dependent" in packaged.int8_decision
    assert f"batch dependence {int8.batch_invariance_max_abs:.3g}" in packaged.int8_decision
    assert not (packaged.root / export.INT8_FILE).exists()


def test_fp32_scores_do_not_depend_on_the_batch(packaged: ServingPackage, rows: pa.Table) -> None:
    """Checked here on its own rows, not read from package.json: each row alone against the
    same row in batches of 2, 16 and 256 with random mates."""
    scorer = load_package(packaged.root, "fp32")
    numeric, categorical = table_inputs(rows, scorer.preprocess)
    rng = np.random.default_rng(7)
    riders = rng.choice(rows.num_rows, 24, replace=False)
    alone = np.array(
        [scorer.score_inputs(numeric[[i]], [[c[i]] for c in categorical])[0] for i in riders]
    )
    worst = 0.0
    with torch_threads(1):  # as a server worker; many small calls
        for size in (2, 16, 256):
            for k, row in enumerate(riders):
                batch = rng.choice(rows.num_rows, size)
                at = int(rng.integers(size))
                batch[at] = row
                cat = [[c[i] for i in batch] for c in categorical]
                got = scorer.score_inputs(numeric[batch], cat)
                worst = max(worst, abs(float(got[at]) - float(alone[k])))
    assert worst <= 1e-6


def test_batch_invariant_int8_is_kept(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int8 program that scores each row on its own passes the batch rule: here the
    'quantizer' hands back the float program, which is exactly batch-invariant."""
    monkeypatch.setattr(
        torch.ao.quantization, "quantize_dynamic", lambda core, *args, **kwargs: core
    )
    force_faster(monkeypatch)
    pkg = package_of(trained, tmp_path / "p")
    int8 = pkg.variant("int8")
    assert int8.batch_invariance_max_abs <= FP32_TOLERANCE
    assert int8.kept and pkg.served == "int8", pkg.int8_decision
    assert pkg.int8_decision.startswith("kept: ")
    assert f"batch dependence {int8.batch_invariance_max_abs:.3g}" in pkg.int8_decision
    assert load_package(pkg.root).variant == "int8"


def test_batch_dependent_int8_is_dropped_for_that_alone(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real dynamic int8 program, counted faster: accurate enough and within its parity
    bound, so only the batch rule drops it, and a server gets fp32."""
    force_faster(monkeypatch)
    pkg = package_of(trained, tmp_path / "p")
    int8 = pkg.variant("int8")
    assert int8.parity_max_abs <= export.INT8_TOLERANCE
    assert pkg.variant("fp32").auc_pr - int8.auc_pr <= export.INT8_MAX_AUC_PR_DROP
    assert pkg.int8_decision.startswith("dropped: batch-dependent: "), pkg.int8_decision
    assert not int8.kept and pkg.served == "fp32"
    with pytest.raises(InputError, match="has no int8 model: dropped: batch-dependent"):
        load_package(pkg.root, "int8")
    assert load_package(pkg.root).variant == "fp32"


# --- the measurement itself --------------------------------------------------------------------


class FakeScorer:
    """score_inputs of a program whose score for a row is its first numeric value, plus
    `mix` times the mean of its batch (0: batch-invariant)."""

    def __init__(self, mix: float) -> None:
        self.mix = mix

    def score_inputs(self, numeric: torch.Tensor, categorical: Any) -> np.ndarray:
        first = numeric[:, 0].numpy()
        return (first + self.mix * first.mean()).astype(np.float32)


def as_scorer(fake: FakeScorer) -> Scorer:
    """_batch_dependence calls only score_inputs."""
    return cast(Scorer, fake)


def fake_inputs(n: int) -> tuple[torch.Tensor, list[list[str | None]]]:
    values = torch.linspace(0.0, 1.0, n, dtype=torch.float64).unsqueeze(1)
    return values, [[f"v{i}" for i in range(n)]]


def test_batch_dependence_compares_each_row_with_itself() -> None:
    n, holdout_rows = 300, 290  # the last 10 play the edge rows
    inputs = fake_inputs(n)
    riders = np.r_[np.arange(0, holdout_rows, 7), np.arange(holdout_rows, n)]

    def alone(scorer: FakeScorer) -> np.ndarray:
        return np.array([scorer.score_inputs(inputs[0][[i]], None)[0] for i in riders])

    still, mixing = FakeScorer(0.0), FakeScorer(0.01)
    invariant = export._batch_dependence(
        as_scorer(still), inputs, riders, alone(still), holdout_rows
    )
    assert invariant == dict.fromkeys(BATCH_INVARIANCE_SIZES, 0.0)
    mixed = export._batch_dependence(as_scorer(mixing), inputs, riders, alone(mixing), holdout_rows)
    assert set(mixed) == set(BATCH_INVARIANCE_SIZES)
    # a row moves by 0.01 * |its batch's mean - its own value|: up to ~0.005 here
    assert all(2e-3 < x <= 0.01 for x in mixed.values()), mixed


def test_a_nan_score_is_not_invariant() -> None:
    class NanScorer(FakeScorer):
        def score_inputs(self, numeric: torch.Tensor, categorical: Any) -> np.ndarray:
            out = super().score_inputs(numeric, categorical)
            return np.where(numeric[:, 0].numpy() > 0.5, np.nan, out).astype(np.float32)

    inputs = fake_inputs(40)
    riders = np.arange(40)
    alone = inputs[0][:, 0].numpy().astype(np.float32)
    got = export._batch_dependence(as_scorer(NanScorer(0.0)), inputs, riders, alone, 40)
    assert all(math.isnan(x) for x in got.values())
    keep, why = export._int8_decision(
        {"fp32": 0.8, "int8": 0.8}, fast_latency(), 0.01, export._worst(got.values())
    )
    assert not keep and "batch-dependent" in why


def fast_latency() -> dict[str, tuple[Latency, ...]]:
    return {
        "fp32": (Latency(1, 1.0, 2.0, 10), Latency(256, 4.0, 5.0, 10)),
        "int8": (Latency(1, 0.5, 2.0, 10), Latency(256, 2.0, 5.0, 10)),
    }


def test_int8_rule_with_the_batch_bound() -> None:
    def decide(dependence: float | None, parity: float = 0.01) -> tuple[bool, str]:
        return export._int8_decision({"fp32": 0.8, "int8": 0.8}, fast_latency(), parity, dependence)

    keep, why = decide(INT8_BATCH_TOLERANCE)  # the bound itself is allowed
    assert keep and why.startswith("kept: "), why
    assert "batch-invariant" in why
    for over in (float(np.nextafter(INT8_BATCH_TOLERANCE, 1.0)), 0.05, math.nan):
        keep, why = decide(over)
        assert not keep and why.startswith("dropped: batch-dependent: "), why
        assert f"batch dependence {over:.3g} (limit {INT8_BATCH_TOLERANCE}" in why
    keep, why = decide(0.05, parity=0.5)
    assert why.startswith("dropped: too far from the training-time scores and batch-dependent")
    keep, why = decide(None)  # callers that do not measure it: the three other checks alone
    assert keep and "batch dependence" not in why


# --- package.json ------------------------------------------------------------------------------


def test_manifest_records_it_and_older_manifests_read_as_unknown(
    packaged: ServingPackage, tmp_path: Path
) -> None:
    doc = json.loads((packaged.root / "package.json").read_text())
    for entry in doc["variants"]:
        v = packaged.variant(entry["name"])
        assert entry["batch_invariance_max_abs"] == v.batch_invariance_max_abs
        assert entry["batch_invariance"] == {str(b): x for b, x in v.batch_invariance_by_batch}
    assert read_package(packaged.root) == packaged
    older = tmp_path / "older"
    shutil.copytree(packaged.root, older)
    for entry in doc["variants"]:
        del entry["batch_invariance_max_abs"], entry["batch_invariance"]
    (older / "package.json").write_text(json.dumps(doc))
    for v in read_package(older).variants:
        assert math.isnan(v.batch_invariance_max_abs) and v.batch_invariance_by_batch == ()
    assert load_package(older, verify=False).variant == "fp32"


def test_a_nan_figure_is_written_as_null(packaged: ServingPackage, tmp_path: Path) -> None:
    """A program that scores NaN has an unknown batch dependence: null in package.json (JSON
    has no NaN), NaN again when read."""
    fp32 = packaged.variant("fp32")
    broken = dataclasses.replace(
        fp32, batch_invariance_max_abs=math.nan, batch_invariance_by_batch=((2, math.nan),)
    )
    pkg = dataclasses.replace(packaged, root=tmp_path, variants=(broken,))
    (tmp_path / "package.json").write_text(export._manifest_json(pkg))
    entry = json.loads((tmp_path / "package.json").read_text())["variants"][0]
    assert entry["batch_invariance_max_abs"] is None and entry["batch_invariance"] == {"2": None}
    (back,) = read_package(tmp_path).variants
    assert math.isnan(back.batch_invariance_max_abs)
    assert [b for b, _ in back.batch_invariance_by_batch] == [2]
    assert math.isnan(back.batch_invariance_by_batch[0][1])
