"""Features of the fraud example: what a card-fraud team computes from raw authorisations.

`backline features plan` shows what changed; `backline features apply` records it.
Windows are (T - window, T] at the entity's time T, the same in training and in serving.
"""

from backline.features import (
    Aggregate,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeature,
)

card = Entity("card", join_keys=["card_id"], description="A payment card.")
merchant = Entity("merchant", join_keys=["merchant_id"], description="A merchant.")

# How fast is the card being used? Bursts and card testing show up here first.
card_velocity = FeatureView(
    "card_velocity",
    entities=[card],
    source="transactions",
    aggregates=[
        Aggregate("count", window="10m"),
        Aggregate("count", window="1h"),
        Aggregate("count", window="24h"),
        Aggregate("sum", "amount", window="1h"),
    ],
)

# The card's normal spending level, to compare a new amount with.
card_amounts = FeatureView(
    "card_amounts",
    entities=[card],
    source="transactions",
    aggregates=[
        Aggregate("mean", "amount", window="7d"),
        Aggregate("stddev", "amount", window="7d"),
        Aggregate("max", "amount", window="7d"),
        Aggregate("mean", "amount", window="30d"),
        Aggregate("count", window="30d"),
    ],
)

# Many countries or devices in a day is unusual for one card.
card_diversity = FeatureView(
    "card_diversity",
    entities=[card],
    source="transactions",
    aggregates=[
        Aggregate("count_distinct", "country", window="24h"),
        Aggregate("count_distinct", "device_id", window="24h"),
        Aggregate("count_distinct", "merchant_category", window="24h"),
    ],
)

# Where was the card last seen, and with what?
card_last_seen = FeatureView(
    "card_last_seen",
    entities=[card],
    source="transactions",
    fields=[
        Field("country", name="last_country"),
        Field("channel", name="last_channel"),
        Field("amount", name="last_amount"),
    ],
    ttl="30d",
)

# Merchant-level volume: a merchant under attack sees a spike.
merchant_volume = FeatureView(
    "merchant_volume",
    entities=[merchant],
    source="transactions",
    aggregates=[
        Aggregate("count", window="1h", name="merchant_count_1h"),
        Aggregate("count", window="24h", name="merchant_count_24h"),
        Aggregate("mean", "amount", window="24h", name="merchant_amount_mean_24h"),
    ],
)

# Request-time ratios: the amount being authorised against the card's history.
amount_to_mean_30d = OnDemandFeature(
    "amount_to_mean_30d",
    inputs={"amount": "request:amount", "mean": "card_amounts:amount_mean_30d"},
    function=lambda amount, mean: amount / mean,
    description="Amount of this authorisation divided by the card's 30-day mean amount.",
)
amount_zscore_7d = OnDemandFeature(
    "amount_zscore_7d",
    inputs={
        "amount": "request:amount",
        "mean": "card_amounts:amount_mean_7d",
        "std": "card_amounts:amount_stddev_7d",
    },
    function=lambda amount, mean, std: (amount - mean) / std,
    description="How many 7-day standard deviations this amount is from the card's 7-day mean.",
)

fraud_v1 = FeatureService(
    "fraud_v1",
    [
        card_velocity,
        card_amounts,
        card_diversity,
        card_last_seen,
        merchant_volume,
        amount_to_mean_30d,
        amount_zscore_7d,
    ],
    description="Everything the fraud model consumes.",
)
