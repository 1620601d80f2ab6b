"""Model registry: immutable versions with lineage, content-addressed artifacts, gated aliases.

    from backline.registry import open_registry
    registry = open_registry(cfg)
    mv = registry.register("fraud", {"model.pt": path}, lineage, actor="trainer")
    registry.promote("fraud", mv.version, actor="ci", reason="passed the gate")

See docs/registry.md.
"""

from backline.registry.lineage import Lineage, config_hash, git_commit, library_versions
from backline.registry.profile import (
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    profile_from_arrow,
)
from backline.registry.records import (
    AliasEvent,
    AliasInfo,
    ArtifactChange,
    ArtifactInfo,
    FieldChange,
    GateCheck,
    GateRecord,
    MetricDelta,
    ModelSummary,
    ModelVersion,
    VersionDiff,
)
from backline.registry.schema import SCHEMA_VERSION
from backline.registry.store import CHAMPION, GcResult, Registry, VersionRef, open_registry

__all__ = [
    "CHAMPION",
    "SCHEMA_VERSION",
    "AliasEvent",
    "AliasInfo",
    "ArtifactChange",
    "ArtifactInfo",
    "CategoricalProfile",
    "FieldChange",
    "GateCheck",
    "GateRecord",
    "GcResult",
    "Lineage",
    "MetricDelta",
    "ModelSummary",
    "ModelVersion",
    "NumericProfile",
    "ReferenceProfile",
    "Registry",
    "VersionDiff",
    "VersionRef",
    "config_hash",
    "git_commit",
    "library_versions",
    "open_registry",
    "profile_from_arrow",
]
