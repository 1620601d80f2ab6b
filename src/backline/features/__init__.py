"""Feature store: definitions, point-in-time training sets, materialization, online reads."""

from backline.features.definitions import (
    Aggregate,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeature,
)

__all__ = ["Aggregate", "Entity", "FeatureService", "FeatureView", "Field", "OnDemandFeature"]
