"""backline: the machine-learning infrastructure that stands behind a model.

One install, one project folder: ingest, features, training, registry, serving, monitoring.

    import backline

    with backline.open("fraud-project") as project:
        project.sql("SELECT count(*) FROM transactions")

`backline.open` returns a `Project`, the one handle a Python user, a server or a scheduler
holds; docs/python-api.md shows it end to end.
"""

__version__ = "0.1.0"  # first: modules below read it while this package is still importing

from backline.project import Project, open

__all__ = ["Project", "__version__", "open"]
