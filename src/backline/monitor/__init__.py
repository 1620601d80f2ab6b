"""Monitoring: comparing what a model serves with what it was trained on.

Today this holds the reference profile (`backline.monitor.profile`): the training data's
distributions, computed when a version is registered and stored in its lineage. Drift checks,
served-traffic profiles and alerts will grow here, reading those profiles back.

`profile` imports only `backline.core`, numpy and pyarrow, because the registry stores a
profile with every version and must not depend on anything above it.
"""
