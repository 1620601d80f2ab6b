"""Requests built from a project's own data: its names, its skew, its held-out values.

The project (conftest.data_root) trains on a service of its own, card_spend, keyed by the card
alone: a builder that wrote the fraud example's names instead of reading them fails here."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

import backline
from backline.bench.requests import build_requests, instances_of, zipf_weights
from backline.core.errors import InvalidArgument, NotFoundError


def _holdout(project: backline.Project) -> dict[str, float]:
    """transaction_id -> amount of the last train.holdout (5 days) of transactions."""
    rows = project.sql(
        "SELECT transaction_id, amount FROM transactions WHERE event_time > "
        "(SELECT max(event_time) FROM transactions) - INTERVAL 5 DAY"
    ).to_pylist()
    return {r["transaction_id"]: r["amount"] for r in rows}


def test_instances_carry_the_services_keys_and_real_held_out_values(data_root: Path) -> None:
    with backline.open(data_root) as project:
        made = build_requests(project, count=300, service="fraud_v1", seed=1)
        data = project.sql("SELECT card_id, merchant_id FROM transactions").to_pylist()
        pairs = {(r["card_id"], r["merchant_id"]) for r in data}
        holdout = _holdout(project)
        everything = project.sql("SELECT count(*) AS n FROM transactions").column("n")[0].as_py()
    assert (made.entity_columns, made.request_fields) == (("card_id", "merchant_id"), ("amount",))
    assert made.id_columns == ("transaction_id",) and made.holdout_rows == len(holdout)
    rows = instances_of(made.bodies)
    assert len(made.bodies) == 300 and len(rows) == 300
    for row in rows:
        assert set(row) == {"card_id", "merchant_id", "amount", "transaction_id"}
        assert (row["card_id"], row["merchant_id"]) in pairs  # a pair the data holds
        # the amount of a held-out transaction, passed with that transaction's id
        assert holdout[row["transaction_id"]] == row["amount"]
    assert len(holdout) < everything  # the held-out window is the end of the data, not all


def test_the_names_come_from_the_projects_train_service(data_root: Path) -> None:
    with backline.open(data_root) as project:
        made = build_requests(project, count=50)
    assert made.service == "card_spend"
    assert (made.entity_columns, made.request_fields) == (("card_id",), ("amount",))
    assert all(set(r) == {"card_id", "amount", "transaction_id"} for r in instances_of(made.bodies))


def test_skew_sends_most_traffic_to_the_busiest_entities(data_root: Path) -> None:
    with backline.open(data_root) as project:
        ranked = project.sql(
            "SELECT card_id, count(*) AS n FROM transactions GROUP BY 1 ORDER BY n DESC, card_id"
        ).to_pylist()
        skewed = build_requests(project, count=3000, skew=1.2, seed=2)
        uniform = build_requests(project, count=3000, skew=0, seed=2)
    cards = len(ranked)
    hot = Counter(r["card_id"] for r in instances_of(skewed.bodies))
    flat = Counter(r["card_id"] for r in instances_of(uniform.bodies))
    assert skewed.entities == uniform.entities == cards
    # Zipf(1.2) over ~200 ranks gives rank 1 about 25% of the traffic; uniform gives 1/200
    assert hot[ranked[0]["card_id"]] / 3000 == pytest.approx(zipf_weights(cards, 1.2)[0], abs=0.03)
    assert hot.most_common(1)[0][0] == ranked[0]["card_id"]
    assert flat.most_common(1)[0][1] / 3000 < 0.02 and len(flat) > 0.9 * cards
    top10 = {r["card_id"] for r in ranked[:10]}
    assert sum(hot[c] for c in top10) / 3000 > 0.5 > 0.1 > sum(flat[c] for c in top10) / 3000


def test_zipf_weights() -> None:
    w = zipf_weights(4, 1.0)
    assert w.sum() == pytest.approx(1.0) and w[0] / w[1] == pytest.approx(2.0)
    assert zipf_weights(5, 0.0) == pytest.approx([0.2] * 5)
    with pytest.raises(InvalidArgument, match="skew must be 0 or more"):
        zipf_weights(3, -0.5)


def test_at_is_the_latest_event_for_historical_data_and_absent_for_live_data(
    data_root: Path,
) -> None:
    with backline.open(data_root) as project:
        historical = build_requests(project, count=5)
        latest = historical.latest_event
        live = build_requests(project, count=5, now=latest + timedelta(hours=2))
        none = build_requests(project, count=5, at=None)
        given = build_requests(project, count=5, at="2026-01-05T12:00:00")
        with pytest.raises(InvalidArgument, match="not an ISO time"):
            build_requests(project, count=5, at="yesterday")
    assert historical.at == latest.isoformat().replace("+00:00", "Z")
    assert all(json.loads(b)["at"] == historical.at for b in historical.bodies)
    assert live.at is None and all("at" not in json.loads(b) for b in live.bodies)
    assert none.at is None and all("at" not in json.loads(b) for b in none.bodies)
    assert given.at == "2026-01-05T12:00:00Z"  # no zone: UTC


def test_same_seed_same_requests_and_k_instances_each(data_root: Path) -> None:
    with backline.open(data_root) as project:
        a = build_requests(project, count=20, instances=3, seed=5)
        b = build_requests(project, count=20, instances=3, seed=5)
        c = build_requests(project, count=20, instances=3, seed=6)
    assert a.bodies == b.bodies != c.bodies
    assert all(len(json.loads(x)["instances"]) == 3 for x in a.bodies)


def test_a_project_without_data_says_to_ingest(project: Path) -> None:
    with backline.open(project) as handle:
        handle.apply()
        with pytest.raises(NotFoundError, match=r"holds no rows.*backline ingest transactions"):
            build_requests(handle, count=5)
