"""Feature definitions: entities, feature views, on-demand features and feature services.

`backline features plan` shows what changed; `backline features apply` records it.
Uncomment and edit once backline.toml declares a source (here `events`):

    from backline.features import Aggregate, Entity, FeatureService, FeatureView, Field

    user = Entity("user", join_keys=["user_id"])
    user_activity = FeatureView(
        "user_activity",
        entities=[user],
        source="events",
        aggregates=[Aggregate("count", window="1h"), Aggregate("mean", "value", window="7d")],
    )
    latest_value = FeatureView(
        "latest_value", entities=[user], source="events", fields=[Field("value")], ttl="30d"
    )
    model_v1 = FeatureService("model_v1", features=[user_activity, latest_value])

The fraud example (`backline init fraud`) defines a complete set.
"""
