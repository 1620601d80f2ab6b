"""Who is acting, for the audit log: one answer for the command line and the pipeline."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping

ACTOR_ENV = "BACKLINE_ACTOR"
UNKNOWN = "unknown"


def audit_actor(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The actor recorded with a registry change, in this order:

    1. `explicit` (`--actor`, or the `actor=` argument of a library call), when not empty;
    2. the BACKLINE_ACTOR environment variable, when set and not empty (a CI job or a
       scheduler names itself there);
    3. the login name (`getpass.getuser()`: LOGNAME, USER, LNAME, USERNAME, then the user
       database);
    4. "unknown", when there is none (some containers run as a user without a name).
    """
    if explicit:
        return str(explicit)
    named = (os.environ if env is None else env).get(ACTOR_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no user database entry
        return UNKNOWN
