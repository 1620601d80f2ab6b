"""Fault injection for the crash tests: the one hook, read from one environment variable.

The kill tests prove that a process SIGKILLed at a named point of a write leaves nothing
half-done. Production code marks those points with `maybe_fail("POINT")`; a test runs the
process with BACKLINE_TEST_FAULT set to a comma-separated list of items:

    POINT            SIGKILL this process when it reaches POINT
    POINT@WHEN       SIGKILL it at POINT only when the call passes when=WHEN (e.g. a step)
    POINT=SECONDS    sleep SECONDS each time it reaches POINT (to widen a race window)

`kill_at` and `pause_at` write those items, so tests never spell the format by hand. The
points, by module:

    data/ingest.py, data/offline_store.py   ingest_after_staging, ingest_mid_move,
                                            ingest_before_commit
    registry/store.py                       registry_before_commit
    train/checkpoint.py                     checkpoint_slow (a pause), and @STEP:
                                            checkpoint_after_first_file,
                                            checkpoint_before_rename, checkpoint_after_rename
    features/online/sqlite_store.py and
    features/online/redis_store.py          online_before_commit

Unset (always, outside tests), a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time

FAULT_ENV = "BACKLINE_TEST_FAULT"


def maybe_fail(point: str, when: object = None) -> None:
    """Vanish as SIGKILL would (or pause), if BACKLINE_TEST_FAULT names `point`."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, eq, seconds = item.strip().partition("=")
        if eq:
            if name == point:
                time.sleep(float(seconds))
            continue
        name, at, value = name.partition("@")
        if name == point and (not at or (when is not None and value == str(when))):
            _vanish()


def kill_at(point: str, when: object = None) -> str:
    """The BACKLINE_TEST_FAULT item that SIGKILLs at `point` (at `when` only, if given)."""
    return point if when is None else f"{point}@{when}"


def pause_at(point: str, seconds: float) -> str:
    """The BACKLINE_TEST_FAULT item that sleeps `seconds` at `point`."""
    return f"{point}={seconds}"


def _vanish() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the kill lands first
