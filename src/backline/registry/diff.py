"""What changed between two versions of a model: metrics, lineage, features, files.

d = diff_versions(registry.get("fraud", 3), registry.get("fraud", 4))
[(m.name, m.delta) for m in d.metrics]    # [("auc_pr", 0.012), ...]
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime

from backline.core.errors import InvalidArgument
from backline.registry.records import (
    ArtifactChange,
    FieldChange,
    MetricDelta,
    ModelVersion,
    VersionDiff,
)

#: Lineage fields compared one to one (library versions and features are compared per key).
_SCALAR_FIELDS = (
    "training_set_digest",
    "data_start",
    "data_end",
    "code_commit",
    "config_hash",
    "checkpoint_id",
)


def diff_versions(a: ModelVersion, b: ModelVersion) -> VersionDiff:
    if a.model != b.model:
        raise InvalidArgument(
            f"cannot diff {a.model} v{a.version} with {b.model} v{b.version}: versions of two "
            "different models. Diff two versions of one model."
        )
    la, lb = a.lineage, b.lineage
    metrics = []
    for name in sorted(set(la.metrics) | set(lb.metrics)):
        va, vb = la.metrics.get(name), lb.metrics.get(name)
        delta = vb - va if va is not None and vb is not None else None
        if delta is not None and math.isnan(delta):
            delta = None
        metrics.append(MetricDelta(name, va, vb, delta))

    lineage = []
    for field in _SCALAR_FIELDS:
        ta, tb = _text(getattr(la, field)), _text(getattr(lb, field))
        if ta != tb:
            lineage.append(FieldChange(field, ta, tb))
    for lib in sorted(set(la.library_versions) | set(lb.library_versions)):
        ta, tb = la.library_versions.get(lib), lb.library_versions.get(lib)
        if ta != tb:
            lineage.append(FieldChange(f"library_versions.{lib}", ta, tb))
    pa_, pb_ = _profile_digest(a), _profile_digest(b)
    if pa_ != pb_:
        lineage.append(FieldChange("reference_profile", pa_, pb_))

    features = [
        FieldChange(view, la.feature_versions.get(view), lb.feature_versions.get(view))
        for view in sorted(set(la.feature_versions) | set(lb.feature_versions))
        if la.feature_versions.get(view) != lb.feature_versions.get(view)
    ]

    files_a = {x.name: x.sha256 for x in a.artifacts}
    files_b = {x.name: x.sha256 for x in b.artifacts}
    artifacts = []
    for name in sorted(set(files_a) | set(files_b)):
        sa, sb = files_a.get(name), files_b.get(name)
        if sa == sb:
            continue
        status = "added" if sa is None else "removed" if sb is None else "changed"
        artifacts.append(ArtifactChange(name, status, sa, sb))
    return VersionDiff(
        a.model,
        a.version,
        b.version,
        tuple(metrics),
        tuple(lineage),
        tuple(features),
        tuple(artifacts),
    )


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _profile_digest(mv: ModelVersion) -> str | None:
    profile = mv.lineage.reference_profile
    if profile is None:
        return None
    return "sha256:" + hashlib.sha256(profile.to_json().encode()).hexdigest()[:16]
