"""core/suggest.py: the one "Did you mean" hint every error message appends."""

from __future__ import annotations

from backline.core.suggest import did_you_mean


def test_names_the_closest_option_after_a_space() -> None:
    assert did_you_mean("urii", ["catalog", "uri"]) == " Did you mean 'uri'?"


def test_nothing_when_no_option_is_close() -> None:
    assert did_you_mean("zzzz", ["catalog", "uri"]) == ""
    assert did_you_mean("uri", []) == ""


def test_accepts_any_value_and_any_iterable_of_names() -> None:
    assert did_you_mean(12, ("123", "abc")) == " Did you mean '123'?"
    assert did_you_mean("fraud_vl", {"fraud_v1": 1}) == " Did you mean 'fraud_v1'?"
