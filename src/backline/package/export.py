"""Writing the serving package: one folder a server loads with torch alone, no pickle anywhere.

    pkg = package(model, pre, ts.holdout, Path("out/fraud-v3"), target_fpr=0.01, label_column="is_fraud")
    pkg.variant("fp32").parity_max_abs        # measured against the training-time model
    scorer = load_package(Path("out/fraud-v3"))
    probs = scorer.score(table)               # float32 [N], from the raw feature columns

The folder:

    model.pt          TorchScript: the preprocessing math of preprocess.json, the vocabulary
                      lookup and the network in one program. forward(numeric, categorical):
                      numeric float64 [N, Dn] (NaN or inf = missing), categorical one list of
                      N strings (or None) per categorical feature -> probabilities float32 [N]
    model_int8.pt     the same with int8 dynamically quantized Linear layers; present only when
                      it was INT8_MIN_SPEEDUP faster here at batch 1 and 256 AND lost at
                      most INT8_MAX_AUC_PR_DROP AUC-PR AND its parity error is within
                      INT8_TOLERANCE AND a row's score moves by at most
                      INT8_BATCH_TOLERANCE with the rows batched beside it
    model.onnx        score_codes(numeric, codes) of model.pt for ONNX Runtime (vocabulary
                      lookup outside: codes int64 [N, Dc] as in preprocess.json)
    preprocess.json   the fitted preprocessing spec (see backline.package.preprocess)
    signature.json    input columns, their types and order; the output
    package.json      sha256 and size of every file, parity errors, AUC-PR, latencies, the int8
                      decision and the machine it was measured on

torch.jit.load reads TorchScript's own archive (code plus tensors), never arbitrary Python
objects. torch.jit.script and torch.ao.quantization are deprecated in torch 2.13 but still
work; the ONNX file is the torch-independent copy of the same computation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import uuid
from collections.abc import Iterable, Mapping
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from backline.core.errors import SchemaError, WorkspaceError
from backline.package import latency
from backline.package.metrics import average_precision, recall_at_fpr
from backline.package.preprocess import Preprocessor
from backline.package.reader import (  # noqa: F401 - re-exported: the package API lives here too
    ALONE_ROWS,
    BATCH_INVARIANCE_ROWS,
    BATCH_INVARIANCE_SEED,
    BATCH_INVARIANCE_SIZES,
    FORMAT,
    FP32_TOLERANCE,
    INT8_BATCH_TOLERANCE,
    INT8_FILE,
    INT8_MAX_AUC_PR_DROP,
    INT8_MIN_SPEEDUP,
    INT8_TOLERANCE,
    LATENCY_BATCHES,
    LATENCY_CALLS,
    LATENCY_ROUNDS,
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_FILE,
    ONNX_TOLERANCE,
    PREPROCESS_FILE,
    SCORE_CHUNK,
    SIGNATURE_FILE,
    SIGNATURE_FORMAT,
    VARIANTS,
    Latency,
    PackageFile,
    Scorer,
    ServingPackage,
    VariantReport,
    _load_scorer,
    _quiet_torch,
    _sha256,
    label_array,
    load_package,
    read_package,
    table_inputs,
    vocabulary_codes,
)

# ---------------------------------------------------------------------------------------------
# the programs


class _Core(nn.Module):
    """preprocess.json's numeric math, then the network, then a sigmoid.

    Follows backline.package.preprocess exactly: float64 (v - mean) / std clipped to [-clip, clip],
    0 where missing, cast to float32, then one missing indicator per feature.
    """

    if TYPE_CHECKING:  # buffers; TorchScript cannot read string annotations on the class
        mean: torch.Tensor
        std: torch.Tensor

    def __init__(self, model: nn.Module, pre: Preprocessor) -> None:
        super().__init__()
        self.model = model
        self.n_numeric = len(pre.numeric)
        self.n_categorical = len(pre.categorical)
        self.clip = float(pre.clip)
        self.register_buffer(
            "mean", torch.tensor([s.mean for s in pre.numeric], dtype=torch.float64)
        )
        self.register_buffer("std", torch.tensor([s.std for s in pre.numeric], dtype=torch.float64))

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        # numeric (N, Dn) float64, codes (N, Dc) int64 -> probabilities (N,) float32
        finite = torch.isfinite(numeric)
        z = torch.clamp((numeric - self.mean) / self.std, -self.clip, self.clip)
        z = torch.where(finite, z, torch.zeros_like(z))
        x_num = torch.cat([z.to(torch.float32), (~finite).to(torch.float32)], dim=1)  # (N, 2*Dn)
        return torch.sigmoid(self.model(x_num, codes))


class _Serving(nn.Module):
    """The TorchScript program of model.pt: raw columns in, probabilities out."""

    def __init__(self, core: nn.Module, pre: Preprocessor) -> None:
        super().__init__()
        self.core = core
        self.n_numeric = len(pre.numeric)
        # torch.jit.Attribute: TorchScript cannot infer the type of an empty list or dict
        self.numeric_names = torch.jit.Attribute([s.name for s in pre.numeric], list[str])
        self.categorical_names = torch.jit.Attribute([v.name for v in pre.categorical], list[str])
        # index 0 is unknown, so value i of the vocabulary is i + 1 (as in preprocess.json)
        self.vocabularies = torch.jit.Attribute(
            [{value: i + 1 for i, value in enumerate(v.values)} for v in pre.categorical],
            list[dict[str, int]],
        )

    @torch.jit.export
    def encode(self, categorical: list[list[str | None]], n: int) -> torch.Tensor:
        """Vocabulary indices int64 (n, Dc); None and unseen values are 0."""
        if len(categorical) != len(self.vocabularies):
            raise ValueError(
                f"expected {len(self.vocabularies)} categorical columns, got {len(categorical)}"
            )
        out = torch.zeros((n, len(self.vocabularies)), dtype=torch.int64)
        for k, vocabulary in enumerate(self.vocabularies):
            column = categorical[k]
            if len(column) != n:
                raise ValueError(
                    f"categorical column {self.categorical_names[k]} has {len(column)} values "
                    f"for {n} rows"
                )
            codes: list[int] = []
            for value in column:
                codes.append(0 if value is None else vocabulary.get(value, 0))
            out[:, k] = torch.tensor(codes, dtype=torch.int64)
        return out

    @torch.jit.export
    def score_codes(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Probabilities from numeric values and vocabulary indices (what model.onnx computes)."""
        return self.core(numeric.to(torch.float64), codes)

    def forward(self, numeric: torch.Tensor, categorical: list[list[str | None]]) -> torch.Tensor:
        # numeric (N, Dn) float64 raw values, categorical Dc lists of N -> probabilities (N,)
        if numeric.dim() != 2 or numeric.size(1) != self.n_numeric:
            raise ValueError(f"numeric must have shape (N, {self.n_numeric})")
        codes = self.encode(categorical, numeric.size(0))
        return self.core(numeric.to(torch.float64), codes)


# ---------------------------------------------------------------------------------------------
# package


def package(
    model: nn.Module,
    preprocess_spec: Preprocessor,
    holdout: pa.Table,
    out_dir: Path,
    *,
    target_fpr: float,
    label_column: str,
    onnx: bool | None = None,
    latency_runs: int = LATENCY_CALLS,
) -> ServingPackage:
    """Write the serving package of `model` to `out_dir` (new or empty) and measure it.

    `onnx`: True requires the ONNX export (onnxscript, onnx and onnxruntime installed), False
    skips it, None exports it when those libraries are installed. `latency_runs`: timed calls
    per round at batch 1 (LATENCY_ROUNDS rounds; see backline.package.latency).
    """
    pre = preprocess_spec
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise WorkspaceError(
            f"{out_dir} already exists and is not an empty folder; a serving package is never "
            "written over another. Pass a new folder."
        )
    if latency_runs < 10:
        raise ValueError(f"latency_runs = {latency_runs}; time at least 10 calls")
    labels = label_array(holdout, label_column, "holdout")
    if onnx is None:
        onnx = _onnx_available()
    elif onnx and not _onnx_available():
        raise WorkspaceError(
            "ONNX export needs onnx, onnxscript and onnxruntime, which are not installed. "
            'Install them (pip install "backline[dev]") or pass onnx=False.'
        )

    if not pre.feature_names:
        raise SchemaError("the preprocess spec has no features; package a model that reads some.")
    reference = _frozen_copy(model)
    core = _Core(reference, pre).eval()
    table_inputs(holdout.slice(0, 0), pre)  # a SchemaError naming any missing feature column
    features = holdout.select(list(pre.feature_names))
    parity_table = pa.concat_tables([features, _edge_rows(features, pre)])
    expected = _reference_scores(reference, pre, parity_table)
    holdout_rows = holdout.num_rows

    work = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    work.mkdir(parents=True)
    try:
        (work / PREPROCESS_FILE).write_text(pre.to_json(), encoding="utf-8")
        (work / SIGNATURE_FILE).write_text(_signature_json(pre), encoding="utf-8")
        with _quiet_torch():
            torch.jit.save(_script(_Serving(core, pre)), str(work / MODEL_FILE))
            quantized = torch.ao.quantization.quantize_dynamic(
                _Core(_frozen_copy(model), pre).eval(), {nn.Linear}, dtype=torch.qint8
            )
            torch.jit.save(_script(_Serving(quantized, pre)), str(work / INT8_FILE))
            if onnx:
                _export_onnx(core, pre, parity_table, work / ONNX_FILE)
        # measure what was written, loaded back the way a server loads it
        scorers = {"fp32": _load_scorer(work, pre, "fp32"), "int8": _load_scorer(work, pre, "int8")}
        if onnx:
            scorers["onnx"] = _load_scorer(work, pre, "onnx")
        # Each variant scores the parity rows in batches of 256, as a server would, and a
        # sample of them alone (batch 1): int8's dynamic quantization scales activations by the
        # batch's range, so its score for a row depends on the rows batched with it.
        inputs = table_inputs(parity_table, pre)
        alone_rows = _alone_sample(holdout_rows, parity_table.num_rows)
        alone_inputs = (
            inputs[0][alone_rows],
            [[column[i] for i in alone_rows] for column in inputs[1]],
        )
        batched = {n: _score_batched(s, inputs, LATENCY_BATCHES[-1]) for n, s in scorers.items()}
        # one thread, as a server worker scores a request: thousands of tiny calls, which
        # every thread's hand-off makes 10x slower when other jobs share the cores
        with latency.torch_threads(1):
            alone = {n: _score_batched(s, alone_inputs, 1) for n, s in scorers.items()}
        latencies = _measure_latency(scorers, parity_table, latency_runs)

        reference_auc = _auc_pr(labels, expected[:holdout_rows])
        variant_auc = {n: _auc_pr(labels, s[:holdout_rows]) for n, s in batched.items()}
        parity = {
            n: max(_max_abs(batched[n], expected), _max_abs(alone[n], expected[alone_rows]))
            for n in scorers
        }
        spread = {n: _max_abs(alone[n], batched[n][alone_rows]) for n in scorers}
        # A server batches unrelated requests: each sampled row also rides in batches of
        # several sizes beside random mates and beside extreme (edge-row) mates.
        riders = _rider_sample(alone_rows, holdout_rows)
        with latency.torch_threads(1):
            dependence = {
                n: _batch_dependence(
                    s, inputs, riders, alone[n][np.searchsorted(alone_rows, riders)], holdout_rows
                )
                for n, s in scorers.items()
            }
        for n in scorers:  # the batches of 256 the parity rows were scored in count too
            size = LATENCY_BATCHES[-1]
            dependence[n][size] = _worst([dependence[n].get(size, 0.0), spread[n]])
        keep_int8, decision = _int8_decision(
            variant_auc, latencies, parity["int8"], _worst(dependence["int8"].values())
        )
        if not keep_int8:
            (work / INT8_FILE).unlink()

        variants = []
        for name, file in (("fp32", MODEL_FILE), ("int8", INT8_FILE), ("onnx", ONNX_FILE)):
            if name not in scorers:
                continue
            tolerance = {"fp32": FP32_TOLERANCE, "int8": INT8_TOLERANCE, "onnx": ONNX_TOLERANCE}[
                name
            ]
            variants.append(
                VariantReport(
                    name=name,
                    file=file,
                    kept=name != "int8" or keep_int8,
                    entry=scorers[name].entry,
                    size_bytes=scorers[name].size_bytes,
                    auc_pr=variant_auc[name],
                    recall_at_fpr=_recall(labels, batched[name][:holdout_rows], target_fpr),
                    parity_max_abs=parity[name],
                    batch_spread=spread[name],
                    parity_tolerance=tolerance,
                    latency=latencies[name],
                    batch_invariance_max_abs=_worst(dependence[name].values()),
                    batch_invariance_by_batch=tuple(sorted(dependence[name].items())),
                )
            )
        result = ServingPackage(
            root=out_dir,
            files=tuple(
                _describe(work / name)
                for name in sorted(p.name for p in work.iterdir() if p.is_file())
            ),
            variants=tuple(variants),
            served="int8" if keep_int8 else "fp32",
            int8_decision=decision,
            reference_auc_pr=reference_auc,
            target_fpr=target_fpr,
            holdout_rows=holdout_rows,
            holdout_positives=int(labels.sum()),
            parity_rows=parity_table.num_rows,
            environment=_environment(),
        )
        (work / MANIFEST_FILE).write_text(_manifest_json(result), encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _script(program: _Serving) -> torch.jit.ScriptModule:
    try:
        return torch.jit.script(program)
    except Exception as exc:  # the TorchScript compiler raises several unrelated types
        raise SchemaError(
            f"the model cannot be compiled to TorchScript ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0]}). Keep its forward(x_num, x_cat) within what "
            "torch.jit.script supports, as FraudMLP does."
        ) from None


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode without gradients, so packaging never touches the caller's model."""
    copy = deepcopy(model)
    copy.eval()
    for param in copy.parameters():
        param.requires_grad_(False)
    return copy


def _reference_scores(model: nn.Module, pre: Preprocessor, table: pa.Table) -> np.ndarray:
    """What training computes: preprocessing in Python, the eager network, a sigmoid."""
    x_num, x_cat = pre.transform(table)
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(x_num), torch.from_numpy(x_cat))
    except (RuntimeError, IndexError, TypeError) as exc:
        raise SchemaError(
            f"the model cannot score the preprocessing's output (x_num {tuple(x_num.shape)}, "
            f"x_cat {tuple(x_cat.shape)}): {str(exc).splitlines()[0]}. Package the model "
            "with the preprocess spec it was trained with."
        ) from None
    if tuple(logits.shape) != (table.num_rows,):
        raise SchemaError(
            f"the model returns shape {tuple(logits.shape)} for {table.num_rows} rows; a serving "
            "package needs one logit per row, shape (N,)."
        )
    return torch.sigmoid(logits).numpy().astype(np.float32)


def _edge_rows(holdout: pa.Table, pre: Preprocessor) -> pa.Table:
    """Rows that stress the preprocessing: nulls, NaN, infinities, huge and tiny numbers,
    unknown, empty and known categories. Column types follow the holdout's."""
    cases_float = [None, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, 1e6]
    cases_bool = [None, True, False]
    n = max(len(cases_float), 4)
    columns: dict[str, pa.Array] = {}
    for j, stats in enumerate(pre.numeric):
        kind = holdout.schema.field(stats.name).type
        if pa.types.is_floating(kind):
            cases: list[Any] = cases_float
        elif pa.types.is_boolean(kind):
            cases = cases_bool
        else:  # integers: the extremes of the type, up to 2**53 (exact as float64)
            low, high = _int_range(kind)
            cases = [None, high, low, 0, 1]
        values = [cases[(i + j) % len(cases)] for i in range(n)]
        columns[stats.name] = pa.array(values, type=kind)
    for k, vocabulary in enumerate(pre.categorical):
        kind = holdout.schema.field(vocabulary.name).type
        known = list(vocabulary.values[:2])
        cat_cases: list[Any] = [None, "\u2400never-seen", "", *known]
        if not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
            cat_cases = [None, *[_cast_or_none(v, kind) for v in known]]
        values = [cat_cases[(i + k) % len(cat_cases)] for i in range(n)]
        columns[vocabulary.name] = pa.array(values, type=kind)
    return pa.table(columns).select(list(pre.feature_names)).cast(holdout.schema)


def _int_range(kind: pa.DataType) -> tuple[int, int]:
    bits = kind.bit_width
    if pa.types.is_signed_integer(kind):
        return max(-(2 ** (bits - 1)), -(2**53)), min(2 ** (bits - 1) - 1, 2**53)
    return 0, min(2**bits - 1, 2**53)


def _cast_or_none(value: str, kind: pa.DataType) -> Any:
    try:
        return pa.array([value]).cast(kind)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _export_onnx(core: nn.Module, pre: Preprocessor, sample: pa.Table, path: Path) -> None:
    # the exporter logs a warning per torchvision operator it cannot register; none are used
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    numeric, categorical = table_inputs(sample.slice(0, max(2, min(sample.num_rows, 8))), pre)
    codes = torch.from_numpy(vocabulary_codes(categorical, pre))
    batch = torch.export.Dim("batch")
    import onnx as onnx_lib

    try:
        torch.onnx.export(
            core,
            (numeric, codes),
            str(path),
            dynamo=True,
            input_names=["numeric", "codes"],
            output_names=["probability"],
            dynamic_shapes={"numeric": {0: batch}, "codes": {0: batch}},
            external_data=False,
        )
        onnx_lib.checker.check_model(str(path))
    except Exception as exc:  # the exporter and the checker raise many types
        raise SchemaError(
            f"the model cannot be exported to ONNX ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0]}). Package it with onnx=False, or keep its "
            "forward within what torch.export supports."
        ) from None


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _auc_pr(labels: np.ndarray, scores: np.ndarray) -> float:
    if labels.size == 0 or labels.sum() == 0:
        return math.nan
    return average_precision(labels, scores)


def _recall(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    if labels.size == 0:
        return math.nan
    return recall_at_fpr(labels, scores, target_fpr)[0]


def _alone_sample(holdout_rows: int, total: int) -> np.ndarray:
    """Rows scored one at a time: up to ALONE_ROWS holdout rows spread evenly, and every
    generated edge row (those follow the holdout)."""
    spaced = np.linspace(0, holdout_rows - 1, num=min(holdout_rows, ALONE_ROWS))
    picked = np.unique(spaced.round().astype(np.int64))
    return np.r_[picked, np.arange(holdout_rows, total, dtype=np.int64)]


def _rider_sample(alone_rows: np.ndarray, holdout_rows: int) -> np.ndarray:
    """Rows whose batch dependence is measured: up to BATCH_INVARIANCE_ROWS of the holdout rows
    scored alone (spread evenly) and every edge row; a subset of `alone_rows`, sorted."""
    holdout = alone_rows[alone_rows < holdout_rows]
    spaced = np.linspace(0, holdout.size - 1, num=min(holdout.size, BATCH_INVARIANCE_ROWS))
    picked = holdout[np.unique(spaced.round().astype(np.int64))]
    return np.r_[picked, alone_rows[alone_rows >= holdout_rows]]


def _batch_dependence(
    scorer: Scorer,
    inputs: tuple[torch.Tensor, list[list[str | None]]],
    riders: np.ndarray,
    alone: np.ndarray,
    holdout_rows: int,
) -> dict[int, float]:
    """{batch size: largest |score of a rider in a batch - its score alone (`alone`)|}.

    For each size of BATCH_INVARIANCE_SIZES the riders, shuffled, fill at most half of each
    batch; the rest are mates drawn (seeded: BATCH_INVARIANCE_SEED) from every parity row, and
    in a second pass from the edge rows only, whose extreme values stretch an activation range
    the most. Rows then sit at shuffled positions. A program that scores each row on its own
    (fp32, ONNX) shows float rounding here; int8's dynamic quantization scales activations by
    the range of the whole batch.
    """
    numeric, categorical = inputs
    total = numeric.shape[0]
    rng = np.random.default_rng(BATCH_INVARIANCE_SEED)
    pools = [np.arange(total)]
    if total > holdout_rows:
        pools.append(np.arange(holdout_rows, total))
    alone_of = dict(zip(riders.tolist(), alone.tolist(), strict=True))
    out: dict[int, float] = {}
    for size in BATCH_INVARIANCE_SIZES:
        per_batch = max(1, size // 2)
        worst = 0.0
        for pool in pools:
            order = rng.permutation(riders)
            for start in range(0, order.size, per_batch):
                group = order[start : start + per_batch]
                members = np.r_[group, rng.choice(pool, size - group.size)]
                shuffle = rng.permutation(size)
                batch = members[shuffle]
                scores = scorer.score_inputs(
                    numeric[torch.from_numpy(batch)],
                    [[column[i] for i in batch.tolist()] for column in categorical],
                )
                positions = np.flatnonzero(shuffle < group.size)
                expected = np.array([alone_of[int(i)] for i in batch[positions]])
                moved = np.abs(scores[positions].astype(np.float64) - expected)
                worst = _worst([worst, *moved.tolist()])
        out[size] = worst
    return out


def _worst(values: Iterable[float]) -> float:
    """The largest value; NaN if any is NaN (a NaN score must not read as invariant)."""
    return float(np.max(np.asarray(list(values), dtype=np.float64), initial=0.0))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b), initial=0.0))


def _score_batched(
    scorer: Scorer, inputs: tuple[torch.Tensor, list[list[str | None]]], batch: int
) -> np.ndarray:
    numeric, categorical = inputs
    parts = [
        scorer.score_inputs(
            numeric[start : start + batch],
            [column[start : start + batch] for column in categorical],
        )
        for start in range(0, numeric.shape[0], batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _measure_latency(
    scorers: Mapping[str, Scorer], table: pa.Table, runs: int
) -> dict[str, tuple[Latency, ...]]:
    """p50 and p99 per variant and batch size (see backline.package.latency).

    Batch 1 is timed on one torch thread, as a server worker scores one request, in
    LATENCY_ROUNDS rounds of `runs` calls; its p99 is the best round's, which other jobs on the
    machine cannot inflate. Larger batches run on every thread, in the same rounds of
    `runs / LATENCY_ROUNDS` calls (at least 10): they decide only the int8 rule, on p50.
    """
    out: dict[str, list[Latency]] = {name: [] for name in scorers}
    for batch in LATENCY_BATCHES:
        per_round = runs if batch == 1 else max(10, runs // LATENCY_ROUNDS)
        measured = latency.measure(
            scorers, table, batch, rounds=LATENCY_ROUNDS, calls_per_round=per_round
        )
        for name, item in measured.items():
            out[name].append(item)
    return {name: tuple(items) for name, items in out.items()}


def _int8_faster(latency: Mapping[str, tuple[Latency, ...]]) -> tuple[bool, str]:
    """(int8's p50 is INT8_MIN_SPEEDUP below fp32's at every batch size, the figures)."""
    pairs = list(zip(latency["int8"], latency["fp32"], strict=True))
    faster = all(q.p50_ms <= (1 - INT8_MIN_SPEEDUP) * f.p50_ms for q, f in pairs)
    speed = ", ".join(
        f"batch {f.batch} p50 {q.p50_ms:.3f} ms vs fp32 {f.p50_ms:.3f} ms" for q, f in pairs
    )
    return faster, f"{speed} (needs {INT8_MIN_SPEEDUP:.0%} faster at each)"


def _int8_decision(
    auc: Mapping[str, float],
    latency: Mapping[str, tuple[Latency, ...]],
    parity: float,
    batch_dependence: float | None = None,
) -> tuple[bool, str]:
    """(keep, why): keep only if int8 is faster (_int8_faster), its AUC-PR is at most
    INT8_MAX_AUC_PR_DROP below fp32's, its parity error (`parity`, max |int8 probability -
    training-time probability| on the parity rows) is within INT8_TOLERANCE, and its
    `batch_dependence` (max |a row's score in a batch - alone|, see _batch_dependence) is
    within INT8_BATCH_TOLERANCE. `package` always passes it; None leaves that check out."""
    faster, speed = _int8_faster(latency)
    close = parity <= INT8_TOLERANCE  # False for NaN
    agreement = f"parity error {parity:.4g} (limit {INT8_TOLERANCE})"
    invariant = batch_dependence is None or batch_dependence <= INT8_BATCH_TOLERANCE
    if batch_dependence is not None:
        agreement += (
            f"; batch dependence {batch_dependence:.3g} (limit {INT8_BATCH_TOLERANCE}: largest "
            "move of a row's score with the rows batched beside it)"
        )
    if math.isnan(auc["fp32"]) or math.isnan(auc["int8"]):
        return (
            False,
            "dropped: the holdout has no positive label, so the AUC-PR drop is unknown "
            f"({agreement}; {speed})",
        )
    drop = auc["fp32"] - auc["int8"]
    accurate = drop <= INT8_MAX_AUC_PR_DROP
    numbers = f"AUC-PR drop {drop:.5f} (limit {INT8_MAX_AUC_PR_DROP}); {agreement}; {speed}"
    if faster and accurate and close and invariant:
        why = (
            "faster at every batch size and accurate enough"
            if batch_dependence is None
            else "faster at every batch size, accurate enough and batch-invariant"
        )
        return True, f"kept: {why}: {numbers}"
    reasons = [
        r
        for r, bad in (
            ("not faster", not faster),
            ("too inaccurate", not accurate),
            ("too far from the training-time scores", not close),
            ("batch-dependent", not invariant),
        )
        if bad
    ]
    return False, f"dropped: {' and '.join(reasons)}: {numbers}"


def _describe(path: Path) -> PackageFile:
    return PackageFile(path.name, _sha256(path), path.stat().st_size)


def _environment() -> dict[str, str]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "quantized_engine": str(torch.backends.quantized.engine),
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    return env


# ---------------------------------------------------------------------------------------------
# package.json and signature.json


def _signature_json(pre: Preprocessor) -> str:
    doc = {
        "format": SIGNATURE_FORMAT,
        "inputs": {
            "numeric": {
                "columns": [s.name for s in pre.numeric],
                "dtype": "float64",
                "shape": ["batch", len(pre.numeric)],
                "missing": "null, NaN, +inf and -inf are missing; booleans are 0/1",
            },
            "categorical": {
                "columns": [v.name for v in pre.categorical],
                "dtype": "string",
                "layout": "one list per column, in this order, each with one value per row",
                "unknown": "null and values outside the vocabulary are index 0",
            },
        },
        "output": {"name": "probability", "dtype": "float32", "shape": ["batch"]},
        "programs": {
            MODEL_FILE: {
                "forward": "(numeric float64 [N, Dn], categorical list[list[str | None]]) -> [N]",
                "score_codes": "(numeric float64 [N, Dn], codes int64 [N, Dc]) -> [N]",
                "encode": "(categorical list[list[str | None]], n int) -> codes int64 [N, Dc]",
            },
            ONNX_FILE: {
                "inputs": {"numeric": "float64 [N, Dn]", "codes": "int64 [N, Dc]"},
                "outputs": {"probability": "float32 [N]"},
            },
        },
    }
    return json.dumps(doc, indent=1) + "\n"


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _latency_json(x: Latency) -> dict[str, Any]:
    return {
        "batch": x.batch,
        "p50_ms": x.p50_ms,
        "p99_ms": x.p99_ms,
        "runs": x.runs,
        "statistic": x.statistic,
        "rounds": x.rounds,
        "calls_per_round": x.calls_per_round,
        "warmup": x.warmup,
        "threads": x.threads,
        "round_p99_ms": list(x.round_p99_ms),
        "preempted_calls": x.preempted_calls,
    }


def _manifest_json(pkg: ServingPackage) -> str:
    doc = {
        "format": FORMAT,
        "served": pkg.served,
        "int8_decision": pkg.int8_decision,
        "reference_auc_pr": _num(pkg.reference_auc_pr),
        "target_fpr": pkg.target_fpr,
        "holdout_rows": pkg.holdout_rows,
        "holdout_positives": pkg.holdout_positives,
        "parity_rows": pkg.parity_rows,
        "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in pkg.files],
        "variants": [
            {
                "name": v.name,
                "file": v.file,
                "kept": v.kept,
                "entry": v.entry,
                "size_bytes": v.size_bytes,
                "auc_pr": _num(v.auc_pr),
                "recall_at_fpr": _num(v.recall_at_fpr),
                "parity_max_abs": v.parity_max_abs,
                "parity_tolerance": v.parity_tolerance,
                "batch_spread": v.batch_spread,
                "batch_invariance_max_abs": _num(v.batch_invariance_max_abs),
                "batch_invariance": {str(b): _num(x) for b, x in v.batch_invariance_by_batch},
                "latency": [_latency_json(x) for x in v.latency],
            }
            for v in pkg.variants
        ],
        "environment": dict(pkg.environment),
    }
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"
