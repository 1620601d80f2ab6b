"""backline: the machine-learning infrastructure that stands behind a model.

One install, one project folder: ingest, features, training, registry, serving, monitoring.

    import backline

    with backline.open("fraud-project") as project:
        project.sql("SELECT count(*) FROM transactions")

`backline.open` returns a `Project`, the one handle a Python user, a server or a scheduler
holds; docs/python-api.md shows it end to end.
"""

from backline.project import Project, open

__version__ = "0.1.0"

__all__ = ["Project", "__version__", "open"]
