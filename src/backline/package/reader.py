"""Reading a model package back and scoring with it: what a model server needs, and nothing else.

    scorer = load_package(Path("out/fraud-v3"))   # verifies every file's sha256 first
    probs = scorer.score(table)                   # float32 [N], from the raw feature columns

`backline.package.export.package` writes the folder (see its docstring for the layout) and
measures it; this module reads it back with torch and onnxruntime alone, never pickle.
`load_package(root, device="cuda", buckets=...)` runs the fp32 program on a GPU in fixed batch
sizes with CUDA graphs (backline.package.device; docs/gpu.md).

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
import logging
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
from backline.package import device as device_module
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
#: Largest |a row's score inside a batch - its score alone| an int8 program may show, over rows
#: batched with random and with extreme mates at each of BATCH_INVARIANCE_SIZES; over it, int8 is
#: dropped and fp32 served. A server batches requests that have nothing to do with each other,
#: so one request's score must not hinge on which others arrived with it. 1e-3 is a tenth of a
#: percentage point of probability: 0.2-0.3% of the fraud-shaped holdout rows lie that close to
#: their recall-at-FPR threshold, against 1.3-5% within the 0.05 of dynamic int8. And it sits far
#: from both sides: dynamic int8 moves rows by 0.054-0.095 on fraud-shaped models, fp32 by 1.2e-7
#: (docs/gpu.md has the measurements).
INT8_BATCH_TOLERANCE = 1e-3
#: Batch sizes in which sampled rows are scored beside random mates (batch dependence).
BATCH_INVARIANCE_SIZES = (2, 16, 256)
#: Holdout rows (spread evenly; the edge rows too) scored inside those batches.
BATCH_INVARIANCE_ROWS = 512
#: Seed of the mates drawn for the batch-dependence measurement.
BATCH_INVARIANCE_SEED = 0
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

_log = logging.getLogger(__name__)


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
    batch_invariance_max_abs: float = math.nan
    """Largest |a row's score inside a batch - its score alone| over BATCH_INVARIANCE_ROWS
    holdout rows and the edge rows, each batched with random mates and with edge-row mates at
    every size of BATCH_INVARIANCE_SIZES (and the batch_spread rows): what a server's batching
    can do to one row's score. NaN: unknown (a package written before this was measured)."""
    batch_invariance_by_batch: tuple[tuple[int, float], ...] = ()
    """(batch size, largest |in batch - alone|) per size measured; empty when unknown."""

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
                    batch_invariance_max_abs=f(v.get("batch_invariance_max_abs")),
                    batch_invariance_by_batch=tuple(
                        sorted((int(k), f(x)) for k, x in v.get("batch_invariance", {}).items())
                    ),
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
    """Scores Arrow tables of raw feature columns with one variant of a serving package.

    On the CPU without buckets it calls the program's forward() with each batch as it comes.
    With `buckets`, or on CUDA, it encodes the strings on the CPU and runs score_codes in fixed
    batch sizes on the device (backline.package.device): `mode` says whether CUDA graphs are in
    use, `fallback` why not where they were asked for.
    """

    def __init__(
        self,
        root: Path,
        pre: Preprocessor,
        variant: str,
        run: Callable[[torch.Tensor, list[list[str | None]]], np.ndarray],
        entry: str,
        size_bytes: int,
        *,
        device: str = "cpu",
        buckets: tuple[int, ...] | None = None,
        mode: str = "eager",
        fallback: str | None = None,
    ) -> None:
        self.root = root
        self.preprocess = pre
        self.variant = variant
        self.entry = entry
        self.size_bytes = size_bytes
        self.device = device
        """Where score_codes runs: "cpu" or "cuda:N" (encode always runs on the CPU)."""
        self.buckets = buckets
        """The batch sizes every call runs at (ascending), or None: each batch as it comes."""
        self.mode = mode
        """"cuda_graph" (one captured graph per bucket) or "eager"."""
        self.fallback = fallback
        """Why CUDA graphs were asked for (device cuda with buckets) but are not in use."""
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

    def warm(self) -> None:
        """Score one batch of every bucket (one row without buckets), all missing values and
        unknown categories, so that no request pays for a first call: TorchScript's profiling
        runs, CUDA's lazy loading. A server calls it before it reports ready."""
        for n in self.buckets or (1,):
            numeric = torch.zeros((n, len(self.preprocess.numeric)), dtype=torch.float64)
            categorical: list[list[str | None]] = [[None] * n for _ in self.preprocess.categorical]
            self._run(numeric, categorical)


def load_package(
    root: Path,
    variant: str = "served",
    *,
    verify: bool = True,
    device: str = "cpu",
    buckets: Sequence[int] | None = None,
) -> Scorer:
    """A Scorer for the package in `root`: variant "served" (what package.json says a server
    should load), "fp32", "int8" (only if it was kept) or "onnx" (needs onnxruntime).

    `device`: "cpu", or "cuda" / "cuda:N" for the fp32 program on a GPU ("served" means fp32
    there: the int8 decision was made for the CPU, and its kernels run only there).
    `buckets`: ascending batch sizes; each batch then runs at the smallest that holds it,
    padded, and a larger one in chunks of the largest (backline.package.device). On CUDA each
    bucket is captured as a CUDA graph; without buckets CUDA runs eager calls of any size.
    """
    root = Path(root)
    target = device_module.parse_device(device)
    sizes = None if buckets is None else device_module.check_buckets(buckets)
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
    if variant == "served":
        name = "fp32" if target.type == "cuda" else manifest.served
    else:
        name = variant
    if name not in VARIANTS:
        raise InputError(f"unknown serving variant {variant!r}. Use served, {', '.join(VARIANTS)}.")
    if target.type == "cuda" and name != "fp32":
        why = {
            "int8": "its dynamically quantized kernels (fbgemm, qnnpack) run only on the CPU",
            "onnx": "it is loaded with ONNX Runtime's CPU provider",
        }[name]
        raise InputError(
            f'the {name} variant cannot run on device {str(device)!r}: {why}. Load "fp32" (or '
            '"served") on CUDA, or this variant with device="cpu".'
        )
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
    if target.type == "cuda":
        target = device_module.check_cuda(target)
    return _load_scorer(root, pre, name, device=target, buckets=sizes)


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


_CPU = torch.device("cpu")

#: encode(categorical, n) -> codes int64 [n, Dc] on the CPU
Encode = Callable[[list[list[str | None]], int], torch.Tensor]


def _load_scorer(
    root: Path,
    pre: Preprocessor,
    variant: str,
    *,
    device: torch.device = _CPU,
    buckets: tuple[int, ...] | None = None,
) -> Scorer:
    plain = device.type == "cpu" and buckets is None  # forward() / session.run, as they come
    if variant in ("fp32", "int8"):
        path = root / (MODEL_FILE if variant == "fp32" else INT8_FILE)
        try:
            with _quiet_torch():
                program = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        program.eval()
        size = path.stat().st_size
        if plain:

            def run_torch(numeric: torch.Tensor, categorical: list[list[str | None]]) -> np.ndarray:
                with torch.inference_mode():
                    return program(numeric, categorical).numpy()

            entry = "forward(numeric, categorical)"
            return Scorer(root, pre, variant, run_torch, entry, size)
        if not (hasattr(program, "encode") and hasattr(program, "score_codes")):
            raise InputError(
                f"{path} has no encode() and score_codes() (it predates them), so it cannot run "
                f"on {device} or in buckets. Re-export the package, or load it on the CPU "
                "without buckets."
            )
        return _device_scorer(
            root, pre, variant, program.encode, program.score_codes, size, device, buckets
        )
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
        size = path.stat().st_size

        def run_onnx(numeric: torch.Tensor, categorical: list[list[str | None]]) -> np.ndarray:
            codes = vocabulary_codes(categorical, pre)
            feed = {"numeric": numeric.numpy(), "codes": codes}
            return np.asarray(session.run(["probability"], feed)[0])

        if plain:
            entry = "vocabulary_codes + session.run(numeric, codes)"
            return Scorer(root, pre, variant, run_onnx, entry, size)

        def encode_onnx(categorical: list[list[str | None]], n: int) -> torch.Tensor:
            return torch.from_numpy(vocabulary_codes(categorical, pre))

        def score_onnx(numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            feed = {"numeric": numeric.numpy(), "codes": codes.numpy()}
            return torch.from_numpy(np.asarray(session.run(["probability"], feed)[0]))

        return _device_scorer(root, pre, variant, encode_onnx, score_onnx, size, device, buckets)
    raise InputError(f"unknown serving variant {variant!r}. Use served, fp32, int8 or onnx.")


def _device_scorer(
    root: Path,
    pre: Preprocessor,
    variant: str,
    encode: Encode,
    score_codes: device_module.ScoreCodes,
    size_bytes: int,
    device: torch.device,
    buckets: tuple[int, ...] | None,
) -> Scorer:
    """encode on the CPU, then score_codes on `device`: in buckets (device_module.BucketRunner,
    with CUDA graphs on CUDA), or eager at each batch's own size."""
    n_numeric, n_categorical = len(pre.numeric), len(pre.categorical)

    def codes_of(numeric: torch.Tensor, categorical: list[list[str | None]]) -> torch.Tensor:
        if numeric.dim() != 2 or numeric.shape[1] != n_numeric:
            raise SchemaError(
                f"numeric inputs have shape {tuple(numeric.shape)}; the program takes "
                f"(N, {n_numeric}). Build them with table_inputs."
            )
        if len(categorical) != n_categorical:
            raise SchemaError(
                f"{len(categorical)} categorical column(s) given; the program takes "
                f"{n_categorical}. Build them with table_inputs."
            )
        return encode(categorical, numeric.shape[0])

    where = "the CPU" if device.type == "cpu" else str(device)
    if buckets is not None:
        runner = device_module.BucketRunner(
            score_codes, buckets, n_numeric, n_categorical, device, graphs=device.type == "cuda"
        )

        def run(numeric: torch.Tensor, categorical: list[list[str | None]]) -> np.ndarray:
            return runner(numeric, codes_of(numeric, categorical))

        how = "CUDA graph replay" if runner.mode == "cuda_graph" else "score_codes"
        entry = f"encode (CPU) + {how} on {where} in buckets of {', '.join(map(str, buckets))}"
        mode, fallback = runner.mode, runner.fallback
    else:

        def run(numeric: torch.Tensor, categorical: list[list[str | None]]) -> np.ndarray:
            codes = codes_of(numeric, categorical)
            with torch.inference_mode():
                return score_codes(numeric.to(device), codes.to(device)).cpu().numpy()

        entry = f"encode (CPU) + score_codes on {where}"
        mode, fallback = "eager", None
    scorer = Scorer(
        root,
        pre,
        variant,
        run,
        entry,
        size_bytes,
        device=str(device),
        buckets=buckets,
        mode=mode,
        fallback=fallback,
    )
    if device.type == "cuda" and mode != "cuda_graph":
        # graphs ran every bucket while capturing; eager calls are tried once here, so a
        # program that cannot run on the GPU fails at load, not on the first request
        try:
            run(torch.zeros((1, n_numeric), dtype=torch.float64), [[None]] * n_categorical)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"serving package {root}: the {variant} program cannot run on {device} "
                f'({first}). Load it with device="cpu".'
            ) from None
    if fallback is not None:
        _log.warning("serving package %s on %s: %s", root, device, fallback)
    return scorer


def _unreadable(path: Path, exc: BaseException) -> IntegrityError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return IntegrityError(
        f"{path} cannot be loaded as a model ({first}). The file is damaged; fetch the package "
        "again, or re-export it."
    )
