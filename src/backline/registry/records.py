"""The records the registry hands out: frozen dataclasses, safe to pass between stages.

    mv = registry.get("fraud", "champion")
    mv.version, mv.content_digest, mv.lineage.metrics["auc_pr"]
    mv.artifact("model.pt").sha256

Every timestamp is tz-aware UTC. `to_jsonable` turns any of them into plain JSON values for
`--json` output.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backline.core.errors import InvalidArgument, NotFoundError, SchemaError
from backline.registry.lineage import Lineage, encode_float, require_utc

#: Alias actions in the audit log.
ACTIONS = ("set", "promote", "force-promote", "rollback")


@dataclass(frozen=True)
class ArtifactInfo:
    """One file of a model version, stored once per content under the artifact root."""

    name: str
    """The name it was registered under, e.g. "model.pt" or "preprocess.json"."""

    sha256: str
    """Hex sha256 of the bytes; also its address in the artifact store."""

    size: int
    """Size in bytes."""


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version of a model. Aliases point at it; nothing else ever changes it."""

    model: str
    version: int
    """1, 2, 3 ... per model, in registration order."""

    created_at: datetime
    actor: str
    """Who registered it."""

    description: str
    content_digest: str
    """sha256 over the sorted (artifact name, artifact sha256) pairs: equal digests, equal files."""

    artifacts: tuple[ArtifactInfo, ...]
    """Sorted by name."""

    lineage: Lineage

    def artifact(self, name: str) -> ArtifactInfo:
        for info in self.artifacts:
            if info.name == name:
                return info
        raise NotFoundError(
            f"{self.model} v{self.version} has no artifact {name!r}. Its artifacts: "
            f"{', '.join(a.name for a in self.artifacts)}."
        )


@dataclass(frozen=True)
class GateCheck:
    """One check of a promotion gate: the value measured against its threshold."""

    name: str
    """e.g. "auc_pr_floor", "non_inferiority", "latency_p99_ms"."""

    value: float
    threshold: float
    passed: bool
    detail: str = ""
    """One line for people, e.g. "lower bound 0.812 vs champion 0.820 - 0.01"."""


@dataclass(frozen=True)
class GateRecord:
    """The outcome of evaluating one version against the gate."""

    passed: bool
    """True only when every check passed."""

    checks: tuple[GateCheck, ...]
    evaluated_at: datetime
    eval_set_digest: str
    """Digest of the evaluation set the checks ran on."""

    champion_version: int | None
    """The champion it was compared with (None when there was no champion)."""

    def __post_init__(self) -> None:
        if not self.checks:
            raise SchemaError(
                "GateRecord has no checks. Record at least one GateCheck, passed or failed."
            )
        all_passed = all(c.passed for c in self.checks)
        if self.passed != all_passed:
            failed = [c.name for c in self.checks if not c.passed]
            raise SchemaError(
                f"GateRecord.passed = {self.passed} but "
                + (f"checks {', '.join(failed)} failed" if failed else "every check passed")
                + ". Set passed to all(check.passed for check in checks)."
            )
        object.__setattr__(self, "checks", tuple(self.checks))
        object.__setattr__(self, "evaluated_at", require_utc(self.evaluated_at, "evaluated_at"))


@dataclass(frozen=True)
class AliasEvent:
    """One line of the append-only alias audit log."""

    seq: int
    """Position in the log; strictly increasing."""

    model: str
    alias: str
    action: str
    """set, promote, force-promote (gate bypassed) or rollback."""

    old_version: int | None
    new_version: int | None
    actor: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class AliasInfo:
    """Where an alias points now."""

    alias: str
    version: int
    updated_at: datetime
    actor: str


@dataclass(frozen=True)
class ModelSummary:
    """A row of `backline models list`."""

    name: str
    created_at: datetime
    versions: int
    latest_version: int
    aliases: tuple[AliasInfo, ...]


@dataclass(frozen=True)
class MetricDelta:
    name: str
    a: float | None
    b: float | None
    delta: float | None
    """b - a when both versions have the metric."""


@dataclass(frozen=True)
class FieldChange:
    """A lineage field whose value differs, rendered as text (None when absent)."""

    field: str
    a: str | None
    b: str | None


@dataclass(frozen=True)
class ArtifactChange:
    name: str
    status: str
    """added, removed or changed."""

    a_sha256: str | None
    b_sha256: str | None


@dataclass(frozen=True)
class VersionDiff:
    """What changed from version `a` to version `b` of one model."""

    model: str
    a: int
    b: int
    metrics: tuple[MetricDelta, ...]
    lineage: tuple[FieldChange, ...]
    features: tuple[FieldChange, ...]
    """Feature views whose version differs; `field` is the view name."""

    artifacts: tuple[ArtifactChange, ...]

    @property
    def same_content(self) -> bool:
        return not self.artifacts


def to_jsonable(value: object) -> object:
    """Plain JSON values for any registry record (datetimes as ISO text, non-finite as text)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# names and the JSON form of gate checks


def check_model_name(model: str) -> None:
    if not isinstance(model, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", model):
        raise InvalidArgument(
            f"model name {model!r} is not allowed. Use letters, digits, '_', '.' and '-' "
            "(no ':' or '@', which separate versions and aliases)."
        )


def check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", alias):
        raise InvalidArgument(
            f"alias {alias!r} is not allowed. Start with a lower-case letter; then letters, "
            "digits, '_' and '-', e.g. 'challenger'."
        )
    if alias == "latest":
        raise InvalidArgument("alias 'latest' is reserved: it always means the newest version.")


def required_text(value: str, what: str, hint: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} is empty; give {hint}.")
    return value.strip()


def check_to_obj(check: GateCheck) -> dict[str, object]:
    return {
        "name": check.name,
        "value": encode_float(float(check.value)),
        "threshold": encode_float(float(check.threshold)),
        "passed": bool(check.passed),
        "detail": check.detail,
    }


def check_from_obj(obj: Any) -> GateCheck:
    return GateCheck(
        name=obj["name"],
        value=float(obj["value"]),
        threshold=float(obj["threshold"]),
        passed=bool(obj["passed"]),
        detail=obj.get("detail", ""),
    )


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """'fraud' -> ('fraud', None); 'fraud:3' -> ('fraud', '3'); 'fraud@champion' ->
    ('fraud', 'champion'). What follows the name is a version or an alias; the registry tells
    which when it resolves it."""
    if not isinstance(spec, str):
        raise InvalidArgument(f"model spec {spec!r} is not text; pass e.g. 'fraud@champion'.")
    for sep in ("@", ":"):
        if sep in spec:
            name, ref = spec.split(sep, 1)
            if name and ref:
                return name, ref
            break
    else:
        if spec:
            return spec, None
    raise InvalidArgument(
        f"{spec!r} is not MODEL, MODEL:VERSION or MODEL@ALIAS; e.g. fraud, fraud:3, fraud@champion."
    )
