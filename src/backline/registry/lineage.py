"""Lineage: everything needed to say where a model version came from, and to rebuild it.

lineage = Lineage(
    training_set_digest=ts.digest,
    feature_versions={"card_stats": "3f9a1c2e"},
    data_start=start, data_end=end,
    code_commit=git_commit(cfg.root),
    config_hash=config_hash(cfg),
    library_versions=library_versions(),
    metrics={"auc_pr": 0.81},
    checkpoint_id="step-2000",
    reference_profile=profile_from_arrow(table, score_column="score"),
)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from backline.core.errors import SchemaError
from backline.monitor.profile import ReferenceProfile, profile_from_obj

#: Libraries whose versions `library_versions()` records, besides Python itself.
LIBRARIES = ("torch", "numpy", "pyarrow", "duckdb", "backline")


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from. Stored with the version and never changed."""

    training_set_digest: str
    """Digest of the exact training set (rows and columns) the model was fitted on."""

    feature_versions: Mapping[str, str] = field(default_factory=dict)
    """Feature view name -> the applied definition version it was built from."""

    data_start: datetime | None = None
    """Earliest event time in the training data (UTC)."""

    data_end: datetime | None = None
    """Latest event time in the training data (UTC); the training cutoff."""

    code_commit: str | None = None
    """`git rev-parse HEAD` of the project folder, or None when it is not a git checkout."""

    config_hash: str = ""
    """sha256 of the effective configuration (see `config_hash`)."""

    library_versions: Mapping[str, str] = field(default_factory=dict)
    """python, torch, numpy, pyarrow, duckdb, backline -> version."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    """Evaluation metrics by name (non-finite values are kept as such)."""

    checkpoint_id: str | None = None
    """The training checkpoint the weights came from."""

    reference_profile: ReferenceProfile | None = None
    """Training-data distributions of every input and of the scores, for drift monitoring."""

    def __post_init__(self) -> None:
        for name in ("feature_versions", "library_versions"):
            mapping = getattr(self, name)
            if not isinstance(mapping, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                raise SchemaError(
                    f"Lineage.{name} = {mapping!r} must map names to version strings."
                )
            object.__setattr__(self, name, dict(mapping))
        metrics: dict[str, float] = {}
        for key, value in dict(self.metrics).items():
            if not isinstance(key, str) or isinstance(value, bool):
                raise SchemaError(
                    f"Lineage.metrics[{key!r}] = {value!r}: metrics map names to numbers."
                )
            try:
                metrics[key] = float(value)
            except (TypeError, ValueError):
                raise SchemaError(
                    f"Lineage.metrics[{key!r}] = {value!r} is not a number. Record numbers only."
                ) from None
        object.__setattr__(self, "metrics", metrics)
        for name in ("data_start", "data_end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, require_utc(value, f"Lineage.{name}"))
        if self.data_start and self.data_end and self.data_start > self.data_end:
            raise SchemaError(
                f"Lineage.data_start = {self.data_start.isoformat()} is after data_end = "
                f"{self.data_end.isoformat()}. Swap them."
            )

    def columns(self) -> dict[str, Any]:
        """The registry row's lineage columns (JSON-ready values)."""
        return {
            "training_set_digest": self.training_set_digest,
            "feature_versions": dict(sorted(self.feature_versions.items())),
            "data_start": self.data_start,
            "data_end": self.data_end,
            "code_commit": self.code_commit,
            "config_hash": self.config_hash,
            "library_versions": dict(sorted(self.library_versions.items())),
            "metrics": {k: encode_float(v) for k, v in sorted(self.metrics.items())},
            "checkpoint_id": self.checkpoint_id,
            "reference_profile": (
                json.loads(self.reference_profile.to_json()) if self.reference_profile else None
            ),
        }

    @classmethod
    def from_columns(cls, row: Mapping[Any, Any]) -> Lineage:
        """The inverse of `columns`, from a registry row."""
        profile = row["reference_profile"]
        return cls(
            training_set_digest=row["training_set_digest"],
            feature_versions=row["feature_versions"] or {},
            data_start=row["data_start"],
            data_end=row["data_end"],
            code_commit=row["code_commit"],
            config_hash=row["config_hash"],
            library_versions=row["library_versions"] or {},
            metrics={k: decode_float(v) for k, v in (row["metrics"] or {}).items()},
            checkpoint_id=row["checkpoint_id"],
            reference_profile=profile_from_obj(profile) if profile is not None else None,
        )


def require_utc(value: datetime, what: str) -> datetime:
    """A tz-aware datetime converted to UTC, or a SchemaError naming the field."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SchemaError(
            f"{what} = {value!r} must be a tz-aware datetime; pass e.g. datetime.now(UTC)."
        )
    return value.astimezone(UTC)


def encode_float(value: float) -> float | str:
    """JSON has no NaN or infinity; PostgreSQL's jsonb refuses them. Keep them as text."""
    return value if math.isfinite(value) else repr(value)


def decode_float(value: float | str) -> float:
    return float(value)


# ---------------------------------------------------------------------------------------------
# helpers that fill lineage fields


def git_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding `folder`, or None when there is none (or no git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) >= 40 else None


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a model's behaviour depends on (installed ones)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def config_hash(cfg: object) -> str:
    """sha256 of a config dataclass as canonical JSON, without its folder (`root`).

    Two copies of the same project in different folders hash the same; any knob that differs,
    including one set from the environment, changes the hash.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise SchemaError(f"config_hash needs a Config dataclass, not {type(cfg).__name__}.")
    data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "root"}
    text = json.dumps(_plain(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)  # timedelta, datetime, Path
