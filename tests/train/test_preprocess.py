"""The preprocessing artifact: the documented math, fitted on train only, exact through JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from backline.core.errors import SchemaError
from backline.package.preprocess import Preprocessor

TRAIN = pa.table(
    {
        "amount": pa.array([10.0, 20.0, None, 30.0, float("nan")]),
        "count": pa.array([1, 1, 1, 1, 1], pa.int64()),  # constant: std 1
        "flag": pa.array([True, False, True, None, True]),
        "country": pa.array(["US", "US", "GB", None, "US"]),
        "channel": pa.array(["pos", "web", "pos", "web", "pos"]),
    }
)


def fitted(min_count: int = 2) -> Preprocessor:
    return Preprocessor.fit(
        TRAIN, ["amount", "count", "flag"], ["country", "channel"], min_count=min_count
    )


def test_fit_uses_present_values_only() -> None:
    pre = fitted()
    amount, count, flag = pre.numeric
    assert (amount.mean, amount.std) == (20.0, pytest.approx(np.std([10.0, 20.0, 30.0])))
    assert (count.mean, count.std) == (1.0, 1.0)
    assert flag.mean == pytest.approx(0.75) and flag.std == pytest.approx(np.std([1, 0, 1, 1]))
    # US x3 and pos x3, web x2 reach min_count=2; GB (once) does not; sorted by code point
    assert [v.values for v in pre.categorical] == [("US",), ("pos", "web")]
    assert pre.vocab_sizes == (2, 3) and pre.n_numeric_inputs == 6


def test_transform_follows_the_documented_math() -> None:
    pre = fitted()
    table = pa.table(
        {
            "amount": pa.array([20.0, None, 1e9, float("inf")]),
            "count": pa.array([3, 1, None, 1], pa.int64()),
            "flag": pa.array([False, True, True, None]),
            "country": pa.array(["US", "GB", None, "FR"]),
            "channel": pa.array(["web", "pos", "atm", None]),
        }
    )
    x_num, x_cat = pre.transform(table)
    assert x_num.dtype == np.float32 and x_num.shape == (4, 6)
    assert x_cat.dtype == np.int64 and x_cat.shape == (4, 2)
    std = float(np.std([10.0, 20.0, 30.0]))
    flag = pre.numeric[2]
    expected = np.array(
        [
            # normalised amount, count, flag           | missing indicators
            [0.0, 2.0, (0 - flag.mean) / flag.std, 0, 0, 0],
            [0.0, 0.0, (1 - flag.mean) / flag.std, 1, 0, 0],
            [10.0, 0.0, (1 - flag.mean) / flag.std, 0, 1, 0],  # 1e9 clipped to +10
            [0.0, 0.0, 0.0, 1, 0, 1],  # inf is missing, like null
        ],
        dtype=np.float64,
    )
    assert std > 0
    np.testing.assert_array_equal(x_num, expected.astype(np.float32))
    # GB was too rare, FR unseen, null missing: all index 0; "web" is index 2
    np.testing.assert_array_equal(x_cat, [[1, 2], [0, 1], [0, 0], [0, 0]])


def test_json_round_trip_is_exact() -> None:
    pre = Preprocessor.fit(
        pa.table({"x": pa.array([0.1, 0.2, 0.7, 1 / 3]), "c": pa.array(["é", "a", "é", "a"])}),
        ["x"],
        ["c"],
        min_count=1,
    )
    text = pre.to_json()
    again = Preprocessor.from_json(text)
    assert again == pre and again.to_json() == text and again.digest() == pre.digest()
    doc = json.loads(text)
    assert doc["format"] == "backline.preprocess/1" and doc["categorical"][0]["values"] == [
        "a",
        "é",
    ]
    assert doc["numeric"][0]["mean"] == pre.numeric[0].mean  # repr of a float is exact


def test_min_count_and_empty_columns() -> None:
    pre = fitted(min_count=4)
    assert [v.values for v in pre.categorical] == [(), ()]
    empty = Preprocessor.fit(pa.table({"x": pa.array([None, None], pa.float64())}), ["x"], [])
    assert (empty.numeric[0].mean, empty.numeric[0].std) == (0.0, 1.0)
    x_num, _ = empty.transform(pa.table({"x": pa.array([5.0])}))
    assert x_num.tolist() == [[5.0, 0.0]]


def test_errors_name_the_problem() -> None:
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) 'channel'"):
        fitted().transform(TRAIN.drop_columns(["channel"]))
    with pytest.raises(SchemaError, match=r"preprocessing JSON is not valid.*retrain"):
        Preprocessor.from_json('{"format": "other"}')
    bad = json.loads(fitted().to_json())
    bad["numeric"][0]["std"] = "NaN"
    with pytest.raises(SchemaError, match="not a finite number"):
        Preprocessor.from_json(json.dumps(bad))
    assert not math.isnan(fitted().numeric[0].mean)
