"""The preprocessing artifact: fitted on the training split only, stored as JSON, used by both
training and serving (so the server scores a request exactly as training saw the row).

    pre = Preprocessor.fit(ts.train, ts.numeric_features, ts.categorical_features, min_count=5)
    x_num, x_cat = pre.transform(table)     # float32 [N, 2*Dn], int64 [N, Dc]
    Path("preprocess.json").write_text(pre.to_json())
    pre = Preprocessor.from_json(text)

The exact math, which any re-implementation (TorchScript in the serving artifact) must follow.
Dn numeric features j = 0..Dn-1, each with fitted (mean_j, std_j); Dc categorical features
k = 0..Dc-1, each with a vocabulary V_k; `clip` (default 10).

    numeric value v (booleans as 0/1), taken as float64:
        missing  = v is null, NaN, +inf or -inf
        z        = 0                                              if missing
                   min(max((v - mean_j) / std_j, -clip), clip)    otherwise (float64 math)
        x_num[:, j]      = float32(z)
        x_num[:, Dn + j] = 1.0 if missing else 0.0                (the missing indicator)
    categorical value s (a string):
        x_cat[:, k] = 1 + (position of s in V_k)   if s is in V_k
                      0                            if s is null or not in V_k (unknown)

Fitting, on the training split only:
    mean_j = arithmetic mean of the non-missing values (0 if there are none)
    std_j  = population standard deviation (ddof 0) of those values; 1 if it is 0 or undefined
    V_k    = the distinct non-null values seen at least `min_count` times, sorted by code point
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.errors import SchemaError

FORMAT = "backline.preprocess/1"


@dataclass(frozen=True)
class NumericStats:
    name: str
    mean: float
    std: float
    """Never 0: a constant or empty feature gets 1."""


@dataclass(frozen=True)
class Vocabulary:
    name: str
    values: tuple[str, ...]
    """Index i + 1 is values[i]; index 0 is unknown or missing."""

    @property
    def size(self) -> int:
        """Embedding rows needed: the values plus index 0."""
        return len(self.values) + 1


@dataclass(frozen=True)
class Preprocessor:
    """Fitted preprocessing: see the module docstring for the exact math."""

    numeric: tuple[NumericStats, ...]
    categorical: tuple[Vocabulary, ...]
    clip: float = 10.0
    """Normalised values are clipped to [-clip, clip], so one extreme ratio cannot swamp a batch."""
    min_count: int = 5
    """How often a value had to appear in the training split to get its own index."""

    @property
    def n_numeric_inputs(self) -> int:
        """Width of x_num: a value and a missing indicator per numeric feature."""
        return 2 * len(self.numeric)

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return tuple(v.size for v in self.categorical)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.numeric) + tuple(v.name for v in self.categorical)

    @classmethod
    def fit(
        cls,
        table: pa.Table,
        numeric: Sequence[str],
        categorical: Sequence[str],
        *,
        min_count: int = 5,
        clip: float = 10.0,
    ) -> Preprocessor:
        """Fit on `table` (the training split, never the holdout)."""
        _require(table, [*numeric, *categorical])
        stats = []
        for name in numeric:
            values, missing = _numeric(table.column(name))
            present = values[~missing]
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size else 1.0
            if not math.isfinite(std) or std == 0.0:
                std = 1.0
            stats.append(NumericStats(name, mean, std))
        vocabs = []
        for name in categorical:
            counts = pc.value_counts(table.column(name).cast(pa.string()))
            kept = sorted(
                v.as_py()
                for v, c in zip(counts.field("values"), counts.field("counts"), strict=True)
                if v.is_valid and c.as_py() >= min_count
            )
            vocabs.append(Vocabulary(name, tuple(kept)))
        return cls(tuple(stats), tuple(vocabs), float(clip), int(min_count))

    def transform(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """x_num float32 [N, 2*Dn] (normalised values, then missing indicators) and
        x_cat int64 [N, Dc] (vocabulary indices, 0 = unknown)."""
        _require(table, list(self.feature_names))
        n, dn = table.num_rows, len(self.numeric)
        x_num = np.zeros((n, 2 * dn), dtype=np.float32)
        for j, s in enumerate(self.numeric):
            values, missing = _numeric(table.column(s.name))
            with np.errstate(all="ignore"):
                z = np.clip((values - s.mean) / s.std, -self.clip, self.clip)
            x_num[:, j] = np.where(missing, 0.0, z).astype(np.float32)
            x_num[:, dn + j] = missing.astype(np.float32)
        x_cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for k, v in enumerate(self.categorical):
            column = table.column(v.name).cast(pa.string())
            index = pc.index_in(column, value_set=pa.array(v.values, pa.string()))
            x_cat[:, k] = np.asarray(index.fill_null(-1).to_numpy(), dtype=np.int64) + 1
        return x_num, x_cat

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "clip": self.clip,
            "min_count": self.min_count,
            "numeric": [{"name": s.name, "mean": s.mean, "std": s.std} for s in self.numeric],
            "categorical": [{"name": v.name, "values": list(v.values)} for v in self.categorical],
        }
        return json.dumps(doc, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            numeric = tuple(
                NumericStats(str(d["name"]), _finite(d["mean"]), _finite(d["std"]))
                for d in doc["numeric"]
            )
            categorical = tuple(
                Vocabulary(str(d["name"]), tuple(str(x) for x in d["values"]))
                for d in doc["categorical"]
            )
            return cls(numeric, categorical, _finite(doc["clip"]), int(doc["min_count"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaError(
                f"preprocessing JSON is not valid ({type(exc).__name__}: {exc}). It is written by "
                "`backline train`; retrain to regenerate it rather than editing it."
            ) from None

    def digest(self) -> str:
        """sha256 of the JSON form: names this exact preprocessing in lineage records."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _numeric(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (0 where missing) and the missing mask, both shape [N]."""
    values = np.asarray(
        column.cast(pa.float64()).fill_null(math.nan).to_numpy(), dtype=np.float64
    ).copy()
    missing = ~np.isfinite(values)
    values[missing] = 0.0
    return values, missing


def _finite(value: Any) -> float:
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _require(table: pa.Table, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise SchemaError(
            f"the table lacks feature column(s) {', '.join(map(repr, missing))} that the "
            f"preprocessing expects (columns: {', '.join(table.column_names)}). Build it from "
            "the same feature service the model was trained on."
        )
