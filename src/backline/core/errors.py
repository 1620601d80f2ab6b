"""One exception tree for everything backline reports to a user.

    BacklineError                 root: the CLI prints str(err) on one line and exits 2
    ├── ConfigError               backline.toml or a BACKLINE_* variable is wrong
    ├── WorkspaceError            no project here, or `init` would overwrite one
    ├── UsageError                a command-line argument is wrong
    ├── SchemaError               a declared schema is inconsistent, or data cannot fit it
    ├── InputError                an input file or folder cannot be read at all
    ├── NotFoundError             a named thing (source, batch, file) does not exist
    ├── StoreError                a store exists but cannot be used (locked, unreachable)
    ├── DriftSpecError            a `--drift` spec does not parse
    ├── GateFailed                a model version did not pass (or never ran) its promotion gate
    ├── TrainingInterrupted       SIGTERM stopped training after a checkpoint; rerun to resume
    └── TrainingFailed            training workers failed and torchrun gave up restarting them

Every message says what was wrong, which value it was, and how to fix it, e.g.:
    backline.toml: unknown key 'offline.urii'. Did you mean 'uri'? Valid keys: uri, catalog.
"""

from __future__ import annotations


class BacklineError(Exception):
    """Root of every error a user can cause or fix. Never shown with a traceback."""

    #: HTTP status the serving layer answers with for this error.
    http_status: int = 400


class ConfigError(BacklineError):
    """backline.toml or an environment override is wrong."""


class WorkspaceError(BacklineError):
    """The project folder is missing, or an operation would clobber it."""


class UsageError(BacklineError):
    """A command-line argument has a wrong value."""


class SchemaError(BacklineError):
    """A schema declaration is inconsistent, or data cannot be made to fit it."""


class InputError(BacklineError):
    """An input file or folder cannot be read at all."""


class NotFoundError(BacklineError):
    """A named object does not exist."""

    http_status = 404


class StoreError(BacklineError):
    """A store cannot be used: unreachable, locked, or written by a newer backline."""

    http_status = 503


class DriftSpecError(BacklineError):
    """A drift specification for the generator does not parse."""


class GateFailed(BacklineError):
    """A model version has no passing gate: promotion is refused (or the gate itself failed)."""

    http_status = 409


class TrainingInterrupted(BacklineError):
    """SIGTERM stopped training after a checkpoint; running the same command again resumes."""


class TrainingFailed(BacklineError):
    """The training workers failed and torchrun gave up restarting them."""

    http_status = 500
