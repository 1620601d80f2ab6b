"""The "Did you mean ...?" hint that error messages append for a misspelt name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: object, options: Iterable[str]) -> str:
    """ " Did you mean 'x'?" for the closest of `options` to `word`, or "" if none is close.

    The hint starts with a space so that it can follow a sentence directly:
    f"unknown key {key!r}.{did_you_mean(key, keys)} Valid keys: ..."
    """
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
