"""One exception tree for everything backline reports to a user.

    BacklineError                 root: the CLI prints str(err) on one line and exits 2
    ├── ConfigError               backline.toml or a BACKLINE_* variable is wrong
    ├── WorkspaceError            no project here, or `init` would overwrite one
    ├── InvalidArgument           an argument of a library call has a wrong value
    │   └── UsageError            a command-line argument has a wrong value
    ├── SchemaError               a declared schema is inconsistent, or data cannot fit it
    ├── InputError                an input file or folder cannot be read at all
    ├── NotFoundError             a named thing (source, batch, file) does not exist
    ├── StoreError                a store exists but cannot be used (locked, unreachable)
    ├── DriftSpecError            a `--drift` spec does not parse
    ├── GateFailed                a model version did not pass (or never ran) its promotion gate
    ├── TrainingInterrupted       SIGTERM stopped training after a checkpoint; rerun to resume
    ├── TrainingFailed            training workers failed and torchrun gave up restarting them
    └── IntegrityError            a stored artifact does not match its recorded digest, or is unreadable

Every message says what was wrong, which value it was, and how to fix it, e.g.:
    backline.toml: unknown key 'offline.urii'. Did you mean 'uri'? Valid keys: uri, catalog.

Each class also carries a stable, machine-readable `code` and the `http_status` the serving
layer answers with, so an HTTP body needs no lookup table:

    except BacklineError as exc:
        return JSONResponse(exc.to_json(), status_code=exc.http_status)
        # {"error": {"code": "not_found", "message": "..."}}

Codes are part of the public interface (docs/errors.md lists them): a class keeps its code
for good, and a new class gets a new one.
"""

from __future__ import annotations


class BacklineError(Exception):
    """Root of every error a user can cause or fix. Never shown with a traceback."""

    #: Stable machine-readable name of this kind of error (snake_case, never reused).
    code: str = "backline_error"
    #: HTTP status the serving layer answers with for this error.
    http_status: int = 400

    def to_json(self) -> dict[str, dict[str, str]]:
        """The body an HTTP answer carries: {"error": {"code": ..., "message": ...}}."""
        return {"error": {"code": self.code, "message": str(self)}}


class ConfigError(BacklineError):
    """backline.toml or an environment override is wrong."""

    code = "config_error"


class WorkspaceError(BacklineError):
    """The project folder is missing, or an operation would clobber it."""

    code = "workspace_error"


class InvalidArgument(BacklineError):
    """An argument of a library call has a wrong value (a Python caller, or a server request,
    passed it; there may be no command line at all)."""

    code = "invalid_argument"


class UsageError(InvalidArgument):
    """A command-line argument has a wrong value: raised by the `backline` command itself.
    A subclass of InvalidArgument, so `except InvalidArgument` catches both."""

    code = "usage_error"


class SchemaError(BacklineError):
    """A schema declaration is inconsistent, or data cannot be made to fit it."""

    code = "schema_error"


class InputError(BacklineError):
    """An input file or folder cannot be read at all."""

    code = "input_error"


class NotFoundError(BacklineError):
    """A named object does not exist."""

    code = "not_found"
    http_status = 404


class StoreError(BacklineError):
    """A store cannot be used: unreachable, locked, or written by a newer backline."""

    code = "store_unavailable"
    http_status = 503


class DriftSpecError(BacklineError):
    """A drift specification for the generator does not parse."""

    code = "drift_spec_error"


class GateFailed(BacklineError):
    """A model version has no passing gate: promotion is refused (or the gate itself failed)."""

    code = "gate_failed"
    http_status = 409


class TrainingInterrupted(BacklineError):
    """SIGTERM stopped training after a checkpoint; running the same command again resumes."""

    code = "training_interrupted"


class TrainingFailed(BacklineError):
    """The training workers failed and torchrun gave up restarting them."""

    code = "training_failed"
    http_status = 500


class IntegrityError(BacklineError):
    """A stored artifact (a serving package, a checkpoint) does not match its recorded digest
    or cannot be read: the store was tampered with or damaged, not the request."""

    code = "integrity_error"
    http_status = 500
