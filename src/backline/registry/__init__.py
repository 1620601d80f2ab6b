"""Model registry: immutable versions with lineage, content-addressed artifacts, gated aliases.

    from backline.registry import open_registry
    registry = open_registry(cfg)
    mv = registry.register("fraud", {"model.pt": path}, lineage, actor="trainer")
    registry.promote("fraud", mv.version, actor="ci", reason="passed the gate")

The registry keeps versions, artifacts, aliases and the audit log, and nothing else: it reads
no training code, and a model server does not import it (that is `backline.package`). The
reference profile a version records is `backline.monitor.profile`. See docs/registry.md.
"""

from backline.registry.lineage import Lineage, config_hash, git_commit, library_versions
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
    "FieldChange",
    "GateCheck",
    "GateRecord",
    "GcResult",
    "Lineage",
    "MetricDelta",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "VersionDiff",
    "VersionRef",
    "config_hash",
    "git_commit",
    "library_versions",
    "open_registry",
]
