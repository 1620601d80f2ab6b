"""backline: the machine-learning infrastructure that stands behind a model.

One install, one project folder: ingest, features, training, registry, serving, monitoring.
"""

__version__ = "0.1.0"
