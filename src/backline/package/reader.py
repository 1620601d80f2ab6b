"""Reading a model package back and scoring with it: what a model server needs, and nothing else.

    scorer = load_package(Path("out/fraud-v3"))   # verifies every file's sha256 first
    probs = scorer.score(table)                   # float32 [N], from the raw feature columns

`backline.package.export.package` writes the folder (see its docstring for the layout) and
measures it; this module reads it back with torch and onnxruntime alone, never pickle.

A folder that is not a package at all (no package.json) or a variant it does not hold is an
`InputError`: the caller asked for the wrong thing. A package whose files do not match
package.json, are missing, or cannot be read is an `IntegrityError`: it was damaged or tampered
with after packaging, and the fix is to fetch it again, not to change the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from backline.core.errors import InputError, IntegrityError, SchemaError
from backline.package.preprocess import Preprocessor

FORMAT = "backline.serving/1"
SIGNATURE_FORMAT = "backline.signature/1"
MODEL_FILE = "model.pt"
INT8_FILE = "model_int8.pt"
ONNX_FILE = "model.onnx"
PREPROCESS_FILE = "preprocess.json"
SIGNATURE_FILE = "signature.json"
MANIFEST_FILE = "package.json"
#: The ways a package can run its model.
VARIANTS = ("fp32", "int8", "onnx")

#: int8 is kept only if its holdout AUC-PR is at most this much below fp32's.
INT8_MAX_AUC_PR_DROP = 0.005
#: ... and only if its p50 latency is at least this fraction below fp32's at every batch size:
#: a smaller gain is within the run-to-run noise of one machine (about 10% here).
INT8_MIN_SPEEDUP = 0.10
#: Largest |probability - training-time probability| each variant may show on the parity rows.
FP32_TOLERANCE = 1e-6
ONNX_TOLERANCE = 1e-5
#: int8 is approximate and batch-dependent (0.05-0.065 measured on fraud-shaped models, most of
#: it from the batch's activation range), so its bound is loose, but absolute: an int8 program
#: over it is dropped, never kept with its own error as its tolerance.
INT8_TOLERANCE = 0.1
#: Batch sizes whose latency is measured: one request, and a full server batch.
LATENCY_BATCHES = (1, 256)
#: Holdout rows each variant also scores one at a time (with the edge rows), for parity.
ALONE_ROWS = 2_000
#: Rounds of timed calls per variant and batch size; each round gives its own p99.
LATENCY_ROUNDS = 10
#: Timed calls per round at batch 1 (`package(latency_runs=...)`).
LATENCY_CALLS = 200
#: Untimed calls per variant before the first round.
LATENCY_WARMUP = 20
#: How Latency.p99_ms is formed now: the lowest of the rounds' p99s (see backline.package.latency).
LATENCY_STATISTIC = "best_round_p99"
#: ... and how packages written before rounds existed formed it.
LATENCY_POOLED = "pooled_p99"
#: Rows scored per call when a Scorer scores a large table.
SCORE_CHUNK = 65_536


# ---------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class PackageFile:
    name: str
    sha256: str
    size: int
    """Bytes."""


@dataclass(frozen=True)
class Latency:
    batch: int
    p50_ms: float
    """Median of every timed call."""
    p99_ms: float
    """The judged p99, formed as `statistic` says: the best round's p99 (LATENCY_STATISTIC)."""
    runs: int
    """Timed calls in all, taken in turns with the other variants (rounds x calls_per_round)."""
    rounds: int = 1
    calls_per_round: int = 0
    statistic: str = LATENCY_POOLED
    """best_round_p99, or pooled_p99 for a package measured before rounds existed."""
    threads: int = 0
    """torch intra-op threads during the measurement (1 at batch 1); 0 when not recorded."""
    warmup: int = 0
    """Untimed calls before the first round."""
    round_p99_ms: tuple[float, ...] = ()
    """Each round's p99, in order (preempted calls left out; see package.latency)."""
    preempted_calls: int = 0
    """Timed calls during which the scheduler took the core away."""


@dataclass(frozen=True)
class VariantReport:
    """One way of running the model, measured on the machine that packaged it."""

    name: str
    """fp32 (model.pt), int8 (model_int8.pt) or onnx (model.onnx)."""
    file: str
    kept: bool
    """Whether the file is in the package."""
    entry: str
    """What the latencies time, e.g. "forward(numeric, categorical)"."""
    size_bytes: int
    auc_pr: float
    """On the holdout scored in batches of 256; NaN when it has no positive label."""
    recall_at_fpr: float
    """At the package's target_fpr, on the holdout scored in batches of 256."""
    parity_max_abs: float
    """Largest |probability - training-time probability| over the parity rows, scored in
    batches of 256 and (up to ALONE_ROWS holdout rows and every edge row) one at a time."""
    parity_tolerance: float
    """The bound parity_max_abs must stay within: FP32_TOLERANCE, ONNX_TOLERANCE or
    INT8_TOLERANCE (packages written before that bound existed recorded int8's own error)."""
    batch_spread: float
    """Largest |score of a row alone - its score in a batch of 256| over the rows scored alone:
    float rounding for fp32 and ONNX; int8's dynamic quantization makes scores batch-dependent."""
    latency: tuple[Latency, ...]

    def at(self, batch: int) -> Latency:
        for item in self.latency:
            if item.batch == batch:
                return item
        raise KeyError(batch)


@dataclass(frozen=True)
class ServingPackage:
    """A written serving package and everything measured while writing it (package.json)."""

    root: Path
    files: tuple[PackageFile, ...]
    """Every file of the folder except package.json itself, sorted by name."""
    variants: tuple[VariantReport, ...]
    served: str
    """The variant a server loads by default: int8 when it was kept, else fp32."""
    int8_decision: str
    """Why int8 was kept or dropped, with the numbers."""
    reference_auc_pr: float
    """AUC-PR of the training-time model (Python preprocessing + eager network) on the holdout."""
    target_fpr: float
    holdout_rows: int
    holdout_positives: int
    parity_rows: int
    """Holdout rows plus generated edge rows (missing, unknown and extreme values)."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """Library versions, CPU and thread counts the latencies were measured with."""

    def file(self, name: str) -> PackageFile:
        for item in self.files:
            if item.name == name:
                return item
        raise InputError(
            f"serving package {self.root} has no file {name!r}; it has "
            f"{', '.join(f.name for f in self.files)}. Re-export it with `package`."
        )

    def variant(self, name: str) -> VariantReport:
        for item in self.variants:
            if item.name == name:
                return item
        raise InputError(
            f"serving package {self.root} measured no variant {name!r}; it has "
            f"{', '.join(v.name for v in self.variants)}."
        )

    def artifacts(self) -> dict[str, Path]:
        """Every file, package.json included, by name: what to pass to `Registry.register`."""
        names = [f.name for f in self.files] + [MANIFEST_FILE]
        return {name: self.root / name for name in sorted(names)}

    @property
    def total_bytes(self) -> int:
        """Size of the whole folder, package.json included: what ships to a server."""
        return sum(f.size for f in self.files) + (self.root / MANIFEST_FILE).stat().st_size

    @property
    def request_latency(self) -> Latency:
        """One request (batch 1) with the served variant, as measured when packaged."""
        return self.variant(self.served).at(1)

    @property
    def latency_p99_ms(self) -> float:
        """p99 of one request (batch 1) with the served variant (see Latency.statistic)."""
        return self.request_latency.p99_ms


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch 2.13 warns that TorchScript and torch.ao.quantization are deprecated, and the ONNX
    exporter prints progress; neither is news to whoever calls package()."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# ---------------------------------------------------------------------------------------------
# inputs from a table


def table_inputs(table: pa.Table, pre: Preprocessor) -> tuple[torch.Tensor, list[list[str | None]]]:
    """The program's inputs from raw feature columns: numeric float64 [N, Dn] (null -> NaN,
    booleans 0/1) and one list of strings (or None) per categorical feature."""
    missing = [name for name in pre.feature_names if name not in table.column_names]
    if missing:
        raise SchemaError(
            f"the table lacks feature column(s) {', '.join(map(repr, missing))} that the model "
            f"expects (columns: {', '.join(table.column_names)}). Send every column of "
            "signature.json."
        )
    numeric = np.empty((table.num_rows, len(pre.numeric)), dtype=np.float64)
    for j, stats in enumerate(pre.numeric):
        column = table.column(stats.name)
        try:
            values = column.cast(pa.float64()).fill_null(math.nan)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"feature {stats.name!r} has type {column.type} whose values cannot be read as "
                f"numbers ({exc}). Send numbers, booleans or nulls for it."
            ) from None
        numeric[:, j] = values.to_numpy()
    categorical: list[list[str | None]] = []
    for vocabulary in pre.categorical:
        column = table.column(vocabulary.name)
        try:
            categorical.append(column.cast(pa.string()).to_pylist())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"feature {vocabulary.name!r} has type {column.type} that cannot be read as text "
                f"({exc}). Send strings or nulls for it."
            ) from None
    return torch.from_numpy(numeric), categorical


def vocabulary_codes(categorical: Sequence[Sequence[str | None]], pre: Preprocessor) -> np.ndarray:
    """The program's encode() in numpy: int64 [N, Dc], 0 for None or unseen values."""
    n = len(categorical[0]) if categorical else 0
    codes = np.zeros((n, len(pre.categorical)), dtype=np.int64)
    for k, vocabulary in enumerate(pre.categorical):
        index = pc.index_in(
            pa.array(categorical[k], pa.string()),
            value_set=pa.array(vocabulary.values, pa.string()),
        )
        codes[:, k] = np.asarray(index.fill_null(-1).to_numpy(), dtype=np.int64) + 1
    return codes


def label_array(table: pa.Table, label_column: str, what: str) -> np.ndarray:
    if label_column not in table.column_names:
        raise SchemaError(
            f"the {what} has no label column {label_column!r} (columns: "
            f"{', '.join(table.column_names)}). Pass label_column= the name train.label_column has."
        )
    column = table.column(label_column)
    if column.null_count:
        raise SchemaError(
            f"the {what}'s label column {label_column!r} has {column.null_count} null value(s). "
            "Keep only labelled rows."
        )
    try:
        labels = np.asarray(column.cast(pa.float64()).to_numpy(), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise SchemaError(
            f"the {what}'s label column {label_column!r} has type {column.type}. Use bool or 0/1."
        ) from None
    if not np.isin(labels, (0.0, 1.0)).all():
        raise SchemaError(
            f"the {what}'s label column {label_column!r} holds values other than 0 and 1. "
            "Use bool or 0/1 labels."
        )
    return labels


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_package(root: Path) -> ServingPackage:
    """The ServingPackage recorded in ROOT/package.json (files are not verified here)."""
    root = Path(root)
    path = root / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{root} is not a serving package: it has no {MANIFEST_FILE}. Pass the folder that "
            "`package` wrote."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON ({exc}). Re-export the package.") from None
    except OSError as exc:
        raise IntegrityError(
            f"{path} cannot be read ({exc.strerror or exc}). Fetch the package again."
        ) from None

    def f(value: Any) -> float:
        return math.nan if value is None else float(value)

    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        return ServingPackage(
            root=root,
            files=tuple(PackageFile(d["name"], d["sha256"], int(d["size"])) for d in doc["files"]),
            variants=tuple(
                VariantReport(
                    name=v["name"],
                    file=v["file"],
                    kept=bool(v["kept"]),
                    entry=v["entry"],
                    size_bytes=int(v["size_bytes"]),
                    auc_pr=f(v["auc_pr"]),
                    recall_at_fpr=f(v["recall_at_fpr"]),
                    parity_max_abs=float(v["parity_max_abs"]),
                    parity_tolerance=float(v["parity_tolerance"]),
                    batch_spread=float(v["batch_spread"]),
                    latency=tuple(_latency(x) for x in v["latency"]),
                )
                for v in doc["variants"]
            ),
            served=str(doc["served"]),
            int8_decision=str(doc["int8_decision"]),
            reference_auc_pr=f(doc["reference_auc_pr"]),
            target_fpr=float(doc["target_fpr"]),
            holdout_rows=int(doc["holdout_rows"]),
            holdout_positives=int(doc["holdout_positives"]),
            parity_rows=int(doc["parity_rows"]),
            environment={str(k): str(v) for k, v in doc["environment"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(
            f"{path} is not a valid serving manifest ({type(exc).__name__}: {exc}). Re-export "
            "the package rather than editing it."
        ) from None


def _latency(doc: Mapping[str, Any]) -> Latency:
    """One latency entry of package.json; entries written before rounds existed lack the
    round fields and read as a single pooled round."""
    runs = int(doc["runs"])
    return Latency(
        batch=int(doc["batch"]),
        p50_ms=float(doc["p50_ms"]),
        p99_ms=float(doc["p99_ms"]),
        runs=runs,
        rounds=int(doc.get("rounds", 1)),
        calls_per_round=int(doc.get("calls_per_round", runs)),
        statistic=str(doc.get("statistic", LATENCY_POOLED)),
        threads=int(doc.get("threads", 0)),
        warmup=int(doc.get("warmup", 0)),
        round_p99_ms=tuple(float(x) for x in doc.get("round_p99_ms", ())),
        preempted_calls=int(doc.get("preempted_calls", 0)),
    )


# ---------------------------------------------------------------------------------------------
# loading and scoring


class Scorer:
    """Scores Arrow tables of raw feature columns with one variant of a serving package."""

    def __init__(
        self,
        root: Path,
        pre: Preprocessor,
        variant: str,
        run: Callable[[torch.Tensor, list[list[str | None]]], np.ndarray],
        entry: str,
        size_bytes: int,
    ) -> None:
        self.root = root
        self.preprocess = pre
        self.variant = variant
        self.entry = entry
        self.size_bytes = size_bytes
        self._run = run

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.preprocess.feature_names

    def score(self, table: pa.Table) -> np.ndarray:
        """Probabilities float32 [N], one per row, in row order."""
        parts = []
        for start in range(0, table.num_rows, SCORE_CHUNK):
            numeric, categorical = table_inputs(table.slice(start, SCORE_CHUNK), self.preprocess)
            parts.append(self.score_inputs(numeric, categorical))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def score_inputs(
        self, numeric: torch.Tensor, categorical: list[list[str | None]]
    ) -> np.ndarray:
        """Probabilities float32 [N] from the program's inputs (see `table_inputs`)."""
        return self._run(numeric, categorical)

    def prepared_call(self, table: pa.Table) -> Callable[[], np.ndarray]:
        """A call that scores `table` from inputs already taken out of Arrow (for timing)."""
        numeric, categorical = table_inputs(table, self.preprocess)
        return lambda: self._run(numeric, categorical)


def load_package(root: Path, variant: str = "served", *, verify: bool = True) -> Scorer:
    """A Scorer for the package in `root`: variant "served" (what package.json says a server
    should load), "fp32", "int8" (only if it was kept) or "onnx" (needs onnxruntime)."""
    root = Path(root)
    manifest = read_package(root)
    if verify:
        for item in manifest.files:
            path = root / item.name
            if not path.is_file():
                raise IntegrityError(
                    f"serving package {root} lacks {item.name}, which package.json lists. Copy "
                    "the whole folder, or fetch it again from the registry."
                )
            try:
                actual = _sha256(path)
            except OSError as exc:
                raise IntegrityError(
                    f"{path} cannot be read ({exc.strerror or exc}). Fetch the package again."
                ) from None
            if actual != item.sha256:
                raise IntegrityError(
                    f"{path} has sha256 {actual[:12]}..., but package.json records "
                    f"{item.sha256[:12]}...; the file changed after packaging. Fetch it again."
                )
    pre = _read_preprocess(root)
    name = manifest.served if variant == "served" else variant
    if name not in VARIANTS:
        raise InputError(f"unknown serving variant {variant!r}. Use served, {', '.join(VARIANTS)}.")
    report = next((v for v in manifest.variants if v.name == name), None)
    if report is None or not report.kept:
        why = (
            manifest.int8_decision
            if name == "int8"
            else "it was packaged without ONNX (onnx=False, or onnx libraries not installed)"
        )
        raise InputError(
            f'serving package {root} has no {name} model: {why}. Load "served" or "fp32".'
        )
    return _load_scorer(root, pre, name)


def _read_preprocess(root: Path) -> Preprocessor:
    """preprocess.json of a package; a file that is missing or does not parse is damage."""
    path = root / PREPROCESS_FILE
    try:
        return Preprocessor.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(
            f"serving package {root}: {PREPROCESS_FILE} cannot be read ({exc}). Fetch the "
            "package again."
        ) from None
    except SchemaError as exc:
        raise IntegrityError(f"serving package {root}: {PREPROCESS_FILE}: {exc}") from None


def _load_scorer(root: Path, pre: Preprocessor, variant: str) -> Scorer:
    if variant in ("fp32", "int8"):
        path = root / (MODEL_FILE if variant == "fp32" else INT8_FILE)
        try:
            with _quiet_torch():
                program = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        program.eval()

        def run_torch(numeric: torch.Tensor, categorical: list[list[str | None]]) -> np.ndarray:
            with torch.inference_mode():
                return program(numeric, categorical).numpy()

        entry = "forward(numeric, categorical)"
        return Scorer(root, pre, variant, run_torch, entry, path.stat().st_size)
    if variant == "onnx":
        import onnxruntime

        path = root / ONNX_FILE
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # idle workers sleep instead of spinning, so they leave the cores to torch's threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, Fail, NoSuchFile)
            raise _unreadable(path, exc) from None

        def run_onnx(numeric: torch.Tensor, categorical: list[list[str | None]]) -> np.ndarray:
            codes = vocabulary_codes(categorical, pre)
            feed = {"numeric": numeric.numpy(), "codes": codes}
            return np.asarray(session.run(["probability"], feed)[0])

        entry = "vocabulary_codes + session.run(numeric, codes)"
        return Scorer(root, pre, variant, run_onnx, entry, path.stat().st_size)
    raise InputError(f"unknown serving variant {variant!r}. Use served, fp32, int8 or onnx.")


def _unreadable(path: Path, exc: BaseException) -> IntegrityError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return IntegrityError(
        f"{path} cannot be loaded as a model ({first}). The file is damaged; fetch the package "
        "again, or re-export it."
    )
