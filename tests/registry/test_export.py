"""The serving package: parity with the training-time model, the files, the int8 rule, loading."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from backline.core.errors import InputError, IntegrityError, SchemaError, WorkspaceError
from backline.package import export
from backline.package.export import (
    FP32_TOLERANCE,
    INT8_MAX_AUC_PR_DROP,
    INT8_TOLERANCE,
    ONNX_TOLERANCE,
    Latency,
    ServingPackage,
    load_package,
    package,
    read_package,
)
from backline.package.preprocess import Preprocessor
from backline.train.model import FraudMLP
from backline.train.run import predict_proba

NUMERIC = ("amount", "txn_count", "is_online", "ratio")
CATEGORICAL = ("merchant", "country")


def make_table(n: int, seed: int) -> pa.Table:
    """Card transactions with a learnable fraud signal, nulls included, in mixed Arrow types."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.2, n)
    count = rng.integers(0, 40, n)
    online = rng.random(n) < 0.4
    ratio = rng.normal(0.0, 1.0, n).astype(np.float32)
    merchant = rng.choice([f"m{i:02d}" for i in range(25)], n)
    country = rng.choice(["US", "GB", "FR", "DE", "NG", "BR"], n)
    logit = (
        -3.5
        + 0.6 * np.log(amount)
        - 0.05 * count
        + 1.2 * online
        + 2.0 * (country == "NG")
        + 1.5 * np.isin(merchant, ["m03", "m07", "m11"])
    )
    fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pa.table(
        {
            "amount": pa.array(amount, mask=rng.random(n) < 0.05),
            "txn_count": pa.array(count, pa.int64()),
            "is_online": pa.array(online),
            "ratio": pa.array(ratio, pa.float32(), mask=rng.random(n) < 0.05),
            "merchant": pa.array(merchant, mask=rng.random(n) < 0.03),
            "country": pa.array(country),
            "is_fraud": pa.array(fraud),
        }
    )


def train_model(pre: Preprocessor, table: pa.Table, *, steps: int, seed: int) -> FraudMLP:
    torch.manual_seed(seed)
    model = FraudMLP(pre.n_numeric_inputs, pre.vocab_sizes, 4, (32, 16))
    x_num, x_cat = (torch.from_numpy(a) for a in pre.transform(table))
    labels = torch.from_numpy(np.asarray(table.column("is_fraud").to_numpy(), dtype=np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, labels.numel(), (256,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(x_num[idx], x_cat[idx]), labels[idx]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def edge_table(pre: Preprocessor) -> pa.Table:
    """Missing numerics (null, NaN, inf), extremes, unknown/empty/null categories."""
    known = pre.categorical[0].values[0]
    return pa.table(
        {
            "amount": pa.array([None, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0]),
            "txn_count": pa.array([2**53, -(2**53), None, 0, 1, 3, 7, 10**12], pa.int64()),
            "is_online": pa.array([None, True, False, True, None, False, True, False]),
            "ratio": pa.array(
                [math.nan, None, 3.4e38, -3.4e38, math.inf, 1e-45, 0.5, -0.5], pa.float32()
            ),
            "merchant": pa.array([None, "never-seen", "", known, "M03", "m03 ", known, "\u00e9"]),
            "country": pa.array(["US", None, "XX", "", "NG", "ng", "GB", "US"]),
        }
    )


def reference_scores(model: torch.nn.Module, pre: Preprocessor, table: pa.Table) -> np.ndarray:
    """The training-time path: preprocessing in Python, then the trainer's own scoring."""
    return predict_proba(model, *pre.transform(table))


@pytest.fixture(scope="module")
def trained() -> tuple[Preprocessor, FraudMLP, pa.Table]:
    train = make_table(6000, seed=1)
    pre = Preprocessor.fit(train, NUMERIC, CATEGORICAL, min_count=5)
    return pre, train_model(pre, train, steps=150, seed=0), make_table(600, seed=2)


@pytest.fixture(scope="module")
def packaged(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], tmp_path_factory: pytest.TempPathFactory
) -> ServingPackage:
    pre, model, holdout = trained
    out = tmp_path_factory.mktemp("pkg") / "fraud"
    return package(
        model, pre, holdout, out, target_fpr=0.05, label_column="is_fraud", latency_runs=30
    )


def parity_rows(pre: Preprocessor, holdout: pa.Table) -> pa.Table:
    return pa.concat_tables(
        [
            holdout.select(list(pre.feature_names)),
            edge_table(pre).cast(holdout.select(list(pre.feature_names)).schema),
        ]
    )


# --- parity ------------------------------------------------------------------------------------


def test_fp32_program_scores_like_training(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], packaged: ServingPackage
) -> None:
    pre, model, holdout = trained
    rows = parity_rows(pre, holdout)
    expected = reference_scores(model, pre, rows)
    scorer = load_package(packaged.root, "fp32")
    got = scorer.score(rows)
    assert got.dtype == np.float32 and got.shape == (rows.num_rows,)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=FP32_TOLERANCE)
    # a row alone scores the same as in a batch
    alone = np.concatenate(
        [scorer.score(rows.slice(i, 1)) for i in range(rows.num_rows - 8, rows.num_rows)]
    )
    np.testing.assert_allclose(alone, expected[-8:], rtol=0, atol=FP32_TOLERANCE)
    assert packaged.variant("fp32").parity_max_abs <= FP32_TOLERANCE


def test_onnx_scores_like_training(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], packaged: ServingPackage
) -> None:
    pre, model, holdout = trained
    rows = parity_rows(pre, holdout)
    got = load_package(packaged.root, "onnx").score(rows)
    np.testing.assert_allclose(got, reference_scores(model, pre, rows), rtol=0, atol=ONNX_TOLERANCE)
    assert packaged.variant("onnx").parity_max_abs <= ONNX_TOLERANCE


def test_int8_measured_and_kept_only_by_the_rule(packaged: ServingPackage) -> None:
    int8, fp32 = packaged.variant("int8"), packaged.variant("fp32")
    assert math.isfinite(int8.parity_max_abs) and int8.parity_tolerance == INT8_TOLERANCE
    # dynamic quantization scales activations by the batch's range: scores depend on the batch
    assert int8.batch_spread > fp32.batch_spread
    assert fp32.batch_spread <= FP32_TOLERANCE
    faster = all(
        q.p50_ms <= (1 - export.INT8_MIN_SPEEDUP) * f.p50_ms
        for q, f in zip(int8.latency, fp32.latency, strict=True)
    )
    accurate = fp32.auc_pr - int8.auc_pr <= INT8_MAX_AUC_PR_DROP
    invariant = int8.batch_invariance_max_abs <= export.INT8_BATCH_TOLERANCE
    assert int8.kept == (
        faster and accurate and invariant and int8.parity_max_abs <= INT8_TOLERANCE
    )
    assert (packaged.root / export.INT8_FILE).exists() == int8.kept
    if not int8.kept:
        with pytest.raises(InputError, match="has no int8 model"):
            load_package(packaged.root, "int8")


def force_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether int8 is faster depends on the machine: count it faster, so that the accuracy and
    parity parts of the int8 rule decide (they stay live). Dynamic int8 is batch-dependent
    (about 0.09, tests/package/test_batch_invariance.py drops it for that): the batch bound is
    lifted here so the other parts of the rule can be seen."""
    monkeypatch.setattr(export, "_int8_faster", lambda latency: (True, "faster: test"))
    monkeypatch.setattr(export, "INT8_BATCH_TOLERANCE", 1.0)


def package_int8(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], out: Path
) -> tuple[ServingPackage, np.ndarray, tuple[torch.Tensor, list[list[str | None]]]]:
    """A package of the trained model, the training-time scores of its parity rows, and the
    rows as program inputs."""
    pre, model, holdout = trained
    pkg = package(
        model,
        pre,
        holdout,
        out,
        target_fpr=0.05,
        label_column="is_fraud",
        onnx=False,
        latency_runs=10,
    )
    features = holdout.select(list(pre.feature_names))
    rows = pa.concat_tables([features, export._edge_rows(features, pre)])
    return pkg, reference_scores(model, pre, rows), export.table_inputs(rows, pre)


def test_kept_int8_scores_within_the_absolute_bound(
    trained: tuple[Preprocessor, FraudMLP, pa.Table],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    force_faster(monkeypatch)
    pkg, expected, inputs = package_int8(trained, tmp_path / "p")
    int8 = pkg.variant("int8")
    assert pkg.served == "int8" and int8.kept, pkg.int8_decision
    assert int8.parity_tolerance == INT8_TOLERANCE and int8.parity_max_abs <= INT8_TOLERANCE
    scorer = load_package(pkg.root)
    assert scorer.variant == "int8"
    for batch in (1, 256):
        got = export._score_batched(scorer, inputs, batch)
        assert np.abs(got - expected).max() <= INT8_TOLERANCE  # a constant, not a measurement
    assert pkg.latency_p99_ms == pkg.variant("int8").at(1).p99_ms


def random_weights(core: torch.nn.Module) -> None:
    """The quantizer's input loses its training: every layer back to fresh random weights."""
    torch.manual_seed(123)
    for layer in core.modules():
        if isinstance(layer, torch.nn.Linear | torch.nn.Embedding):
            layer.reset_parameters()


def shifted_logit(core: torch.nn.Module) -> None:
    """The last layer's bias moved by +2: every probability is off, but the order of the scores,
    and so AUC-PR, is kept. Only the parity bound can tell."""
    last = [layer for layer in core.modules() if isinstance(layer, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias += 2.0


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [random_weights, shifted_logit])
def test_a_broken_int8_program_is_dropped(
    trained: tuple[Preprocessor, FraudMLP, pa.Table],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    breakage: Callable[[torch.nn.Module], None],
) -> None:
    real = torch.ao.quantization.quantize_dynamic

    def broken_quantizer(core: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        breakage(core)
        return real(core, *args, **kwargs)

    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", broken_quantizer)
    force_faster(monkeypatch)
    pkg, expected, inputs = package_int8(trained, tmp_path / "p")
    int8, fp32 = pkg.variant("int8"), pkg.variant("fp32")
    assert int8.parity_max_abs > INT8_TOLERANCE and int8.parity_tolerance == INT8_TOLERANCE
    assert not int8.kept and pkg.served == "fp32"
    assert "too far from the training-time scores" in pkg.int8_decision
    if breakage is shifted_logit:  # the AUC-PR rule alone would have kept it
        assert fp32.auc_pr - int8.auc_pr <= INT8_MAX_AUC_PR_DROP
        assert "too inaccurate" not in pkg.int8_decision
    assert not (pkg.root / export.INT8_FILE).exists()
    with pytest.raises(InputError, match="has no int8 model"):
        load_package(pkg.root, "int8")
    served = load_package(pkg.root)  # what a server loads is the fp32 program, within its bound
    assert served.variant == "fp32"
    got = export._score_batched(served, inputs, 256)
    assert np.abs(got - expected).max() <= FP32_TOLERANCE


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_program_needs_only_torch(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], packaged: ServingPackage
) -> None:
    """A server can call model.pt with torch.jit.load and plain lists: no backline code."""
    pre, model, _ = trained
    program = torch.jit.load(str(packaged.root / "model.pt"))
    assert list(program.numeric_names) == list(NUMERIC)
    assert list(program.categorical_names) == list(CATEGORICAL)
    numeric = torch.tensor(
        [[12.5, 3.0, 1.0, math.nan], [math.inf, 0.0, 0.0, 0.25]], dtype=torch.float64
    )
    categorical = [["m03", None], ["NG", "nowhere"]]
    with torch.no_grad():
        got = program(numeric, categorical).numpy()
    rows = pa.table(
        {
            "amount": [12.5, math.inf],
            "txn_count": [3, 0],
            "is_online": [True, False],
            "ratio": [math.nan, 0.25],
            "merchant": ["m03", None],
            "country": ["NG", "nowhere"],
        }
    )
    np.testing.assert_allclose(got, reference_scores(model, pre, rows), rtol=0, atol=FP32_TOLERANCE)
    codes = program.encode(categorical, 2)
    _, x_cat = pre.transform(rows)
    assert codes.tolist() == x_cat.tolist()
    with pytest.raises(torch.jit.Error, match="categorical columns"):
        program(numeric, categorical[:1])


def test_program_loads_in_a_process_without_backline(packaged: ServingPackage) -> None:
    script = (
        "import sys, warnings, torch\n"
        "warnings.simplefilter('ignore')\n"
        f"program = torch.jit.load({str(packaged.root / 'model.pt')!r})\n"
        "numeric = torch.tensor([[1.0, 2.0, 0.0, float('nan')]], dtype=torch.float64)\n"
        "p = program(numeric, [['m03'], [None]])\n"
        "assert 'backline' not in sys.modules, 'loading imported backline'\n"
        "print(float(p[0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 0.0 < float(done.stdout.strip().splitlines()[-1]) < 1.0


# --- the package -------------------------------------------------------------------------------


def test_package_files_and_manifest(packaged: ServingPackage) -> None:
    root = packaged.root
    names = {p.name for p in root.iterdir()}
    expected = {"model.pt", "model.onnx", "preprocess.json", "signature.json", "package.json"}
    assert expected <= names and names <= expected | {"model_int8.pt"}
    assert ("model_int8.pt" in names) == packaged.variant("int8").kept
    assert not list(root.parent.glob(".*.tmp"))  # the work folder was renamed, not left behind
    for item in packaged.files:
        assert item.size == (root / item.name).stat().st_size
        assert item.sha256 == export._sha256(root / item.name)
    # nothing a server loads is a pickle: TorchScript and ONNX archives, JSON
    assert (root / "model.pt").read_bytes()[:2] == b"PK"
    assert (root / "model.onnx").read_bytes()[:1] != b"\x80"
    assert read_package(root) == packaged
    doc = json.loads((root / "package.json").read_text())
    assert doc["served"] == packaged.served and doc["int8_decision"] == packaged.int8_decision
    for variant in packaged.variants:
        assert [x.batch for x in variant.latency] == [1, 256]
        for x in variant.latency:
            # rounds of timed calls; the judged p99 is the best round's (package.latency)
            assert x.statistic == "best_round_p99" and x.rounds == export.LATENCY_ROUNDS
            assert len(x.round_p99_ms) == x.rounds and x.p99_ms == min(x.round_p99_ms)
            assert x.runs == x.rounds * x.calls_per_round and x.p50_ms > 0
        one = variant.at(1)
        assert one.threads == 1 and one.calls_per_round == 30  # latency_runs: calls per round
        served = next(v for v in doc["variants"] if v["name"] == variant.name)["latency"][0]
        assert served["statistic"] == "best_round_p99" and served["threads"] == 1
        assert len(served["round_p99_ms"]) == export.LATENCY_ROUNDS
    assert packaged.latency_p99_ms == packaged.variant(packaged.served).at(1).p99_ms
    assert packaged.total_bytes == sum(p.stat().st_size for p in root.iterdir())
    assert set(packaged.artifacts()) == names
    signature = json.loads((root / "signature.json").read_text())
    assert signature["inputs"]["numeric"]["columns"] == list(NUMERIC)
    assert signature["inputs"]["categorical"]["columns"] == list(CATEGORICAL)
    assert Preprocessor.from_json((root / "preprocess.json").read_text()) is not None


def test_served_variant_and_auc(packaged: ServingPackage) -> None:
    fp32 = packaged.variant("fp32")
    assert fp32.auc_pr == pytest.approx(packaged.reference_auc_pr, abs=1e-6)
    assert fp32.auc_pr > 0.3  # the toy model learned something, so the int8 rule means something
    assert packaged.served == ("int8" if packaged.variant("int8").kept else "fp32")
    assert load_package(packaged.root).variant == packaged.served


def test_int8_rule() -> None:
    def lat(b1: float, b256: float) -> dict[str, tuple[Latency, ...]]:
        return {
            "fp32": (Latency(1, 1.0, 2.0, 10), Latency(256, 4.0, 5.0, 10)),
            "int8": (Latency(1, b1, 2.0, 10), Latency(256, b256, 5.0, 10)),
        }

    def decide(auc: tuple[float, float], b1: float, b256: float, parity: float = 0.05) -> Any:
        return export._int8_decision({"fp32": auc[0], "int8": auc[1]}, lat(b1, b256), parity)

    keep, why = decide((0.80, 0.797), 0.9, 3.0)
    assert keep and why.startswith("kept")
    # both limits included (0.01 - 0.005 is exactly the float 0.005)
    keep, why = decide((0.01, 0.005), 0.9, 3.0, parity=INT8_TOLERANCE)
    assert keep, why
    keep, why = decide((0.80, 0.79), 0.9, 3.0)
    assert not keep and "too inaccurate" in why and "0.01000" in why
    keep, why = decide((0.80, 0.80), 1.1, 3.0)
    assert not keep and "not faster" in why
    keep, why = decide((0.80, 0.80), 0.95, 3.0)
    assert not keep and "not faster" in why  # 5% is noise, not a speed-up
    keep, why = decide((0.80, 0.80), 0.5, 4.5)
    assert not keep and "not faster" in why
    keep, why = decide((math.nan, math.nan), 0.5, 3.0)
    assert not keep and "no positive label" in why
    # faster and as accurate, but its probabilities are off: dropped on the absolute bound
    for parity in (float(np.nextafter(INT8_TOLERANCE, 1.0)), 0.53, math.nan):
        keep, why = decide((0.80, 0.80), 0.5, 3.0, parity=parity)
        assert not keep and why.startswith("dropped: too far from the training-time scores: ")


# --- loading and errors ------------------------------------------------------------------------


def test_tampered_file_is_refused(packaged: ServingPackage, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(packaged.root, copy)
    (copy / "preprocess.json").write_text((copy / "preprocess.json").read_text() + " ")
    with pytest.raises(IntegrityError, match="changed after packaging"):
        load_package(copy)
    (copy / "preprocess.json").unlink()
    with pytest.raises(IntegrityError, match=r"lacks preprocess\.json"):
        load_package(copy)
    with pytest.raises(InputError, match=r"no package\.json"):
        load_package(tmp_path)
    with pytest.raises(InputError, match="unknown serving variant"):
        load_package(packaged.root, "fp16")


def test_unreadable_package_is_an_integrity_error(packaged: ServingPackage, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(packaged.root, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    (copy / "model.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(IntegrityError, match=r"model\.pt cannot be loaded as a model"):
        load_package(copy, "fp32", verify=False)
    (copy / "preprocess.json").write_text("{")
    with pytest.raises(IntegrityError, match=r"preprocess\.json: preprocessing JSON is not valid"):
        load_package(copy, "fp32", verify=False)
    (copy / "package.json").write_text("{")
    with pytest.raises(IntegrityError, match="is not valid JSON"):
        load_package(copy)
    (copy / "package.json").write_text("[]")
    with pytest.raises(IntegrityError, match="is not a valid serving manifest"):
        load_package(copy)


def test_scoring_errors_are_one_line(packaged: ServingPackage) -> None:
    scorer = load_package(packaged.root, "fp32")
    table = edge_table(scorer.preprocess)
    with pytest.raises(SchemaError, match="'country'"):
        scorer.score(table.drop_columns(["country"]))
    bad = table.set_column(0, "amount", pa.array(["x"] * table.num_rows))
    with pytest.raises(SchemaError, match=r"'amount'.*cannot be read as numbers"):
        scorer.score(bad)
    assert scorer.score(table.slice(0, 0)).shape == (0,)


def test_package_refuses_what_it_cannot_package(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], packaged: ServingPackage, tmp_path: Path
) -> None:
    pre, model, holdout = trained
    kwargs = {"target_fpr": 0.05, "label_column": "is_fraud", "onnx": False, "latency_runs": 10}
    with pytest.raises(WorkspaceError, match="never written over"):
        package(model, pre, holdout, packaged.root, **kwargs)
    with pytest.raises(SchemaError, match="no label column 'fraud'"):
        package(model, pre, holdout, tmp_path / "a", **{**kwargs, "label_column": "fraud"})
    with pytest.raises(SchemaError, match="'merchant'"):
        package(model, pre, holdout.drop_columns(["merchant"]), tmp_path / "b", **kwargs)
    wrong = FraudMLP(pre.n_numeric_inputs + 1, pre.vocab_sizes, 4, (8,))
    with pytest.raises(SchemaError, match="cannot score the preprocessing's output"):
        package(wrong, pre, holdout, tmp_path / "c", **kwargs)

    class Unscriptable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
            return self.inner(x_num, x_cat) * float(np.float32(1.0))

    with pytest.raises(SchemaError, match="cannot be compiled to TorchScript"):
        package(Unscriptable(), pre, holdout, tmp_path / "d", **kwargs)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_package_without_onnx_and_without_positives(
    trained: tuple[Preprocessor, FraudMLP, pa.Table], tmp_path: Path
) -> None:
    pre, model, holdout = trained
    negatives = holdout.filter(pa.compute.invert(holdout.column("is_fraud")))
    pkg = package(
        model,
        pre,
        negatives.slice(0, 50),
        tmp_path / "p",
        target_fpr=0.05,
        label_column="is_fraud",
        onnx=False,
        latency_runs=10,
    )
    assert [v.name for v in pkg.variants] == ["fp32", "int8"]
    assert not (pkg.root / "model.onnx").exists()
    with pytest.raises(InputError, match="packaged without ONNX"):
        load_package(pkg.root, "onnx")
    assert math.isnan(pkg.reference_auc_pr) and not pkg.variant("int8").kept
    assert "no positive label" in pkg.int8_decision
    assert read_package(pkg.root) == pkg  # NaN AUC-PR survives package.json as null
    assert json.loads((pkg.root / "package.json").read_text())["reference_auc_pr"] is None


def test_table_inputs_match_preprocess_spec(
    trained: tuple[Preprocessor, FraudMLP, pa.Table],
) -> None:
    pre, _, _ = trained
    table = edge_table(pre)
    numeric, categorical = export.table_inputs(table, pre)
    assert numeric.dtype == torch.float64 and tuple(numeric.shape) == (8, len(NUMERIC))
    assert math.isnan(numeric[0, 0]) and math.isnan(numeric[1, 0])  # null and NaN
    _, x_cat = pre.transform(table)
    np.testing.assert_array_equal(export.vocabulary_codes(categorical, pre), x_cat)


def test_edge_rows_follow_each_column_type() -> None:
    table = pa.table(
        {
            "small": pa.array([1, 2, 3, 4, 5] * 2, pa.int8()),
            "unsigned": pa.array([1, 2, 3, 4, 5] * 2, pa.uint16()),
            "half": pa.array([0.5] * 10, pa.float32()),
            "flag": pa.array([True, False] * 5),
            "code": pa.array([1, 2] * 5, pa.int32()),
        }
    )
    pre = Preprocessor.fit(table, ["small", "unsigned", "half", "flag"], ["code"], min_count=1)
    edges = export._edge_rows(table.select(list(pre.feature_names)), pre)
    assert edges.schema == table.select(list(pre.feature_names)).schema
    assert max(edges.column("small").to_pylist(), key=lambda v: v or 0) == 127
    assert edges.column("small").null_count > 0 and edges.column("code").null_count > 0
    x_num, _ = pre.transform(edges)  # the spec's own math accepts every edge row
    assert np.isfinite(x_num).all()
