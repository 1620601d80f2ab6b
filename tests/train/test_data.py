"""Training sets: labels as known at the cutoff (no time travel), a time-based split, a stable
digest, and one clear line for each way a training set can be impossible."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from backline.core.config import Config, load_config
from backline.core.errors import NotFoundError, SchemaError
from backline.core.workspace import init_project
from backline.data.generator import generate
from backline.data.ingest import ingest
from backline.features.repository import apply, load_definitions
from backline.train.dataset import build_training_set

from .helpers import GENERATED, fraud_project, generated_labels, utc

CUTOFF = utc("2026-03-05T00:00:00Z")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return fraud_project(tmp_path_factory.mktemp("data") / "proj")


def test_default_cutoff_is_the_latest_label_and_the_split_is_by_event_time(cfg: Config) -> None:
    ts = build_training_set(cfg)
    labels = generated_labels()
    assert ts.cutoff == pc.max(labels.column("label_time")).as_py()
    assert ts.train.num_rows + ts.holdout.num_rows == labels.num_rows and ts.unlabelled == 0
    assert ts.categorical_features == ("last_country", "last_channel")
    assert len(ts.numeric_features) == 18 and "amount_to_mean_30d" in ts.numeric_features
    assert ts.train.column_names == [
        "transaction_id",
        "event_timestamp",
        *load_definitions_outputs(cfg),
        "is_fraud",
    ]
    train_times = ts.train.column("event_timestamp")
    holdout_times = ts.holdout.column("event_timestamp")
    assert ts.holdout_start == ts.event_time_range[1] - timedelta(days=5)
    assert pc.max(train_times).as_py() <= ts.holdout_start < pc.min(holdout_times).as_py()
    assert pc.max(holdout_times).as_py() == ts.event_time_range[1]
    assert train_times.to_pylist() == sorted(train_times.to_pylist())
    assert set(ts.feature_views) == {
        "card_velocity",
        "card_amounts",
        "card_diversity",
        "card_last_seen",
        "merchant_volume",
    }
    assert len(ts.digest) == 64


def test_labels_count_only_if_they_arrived_by_the_cutoff(cfg: Config) -> None:
    ts = build_training_set(cfg, cutoff=CUTOFF)
    data = generate(GENERATED)
    tx_time = dict(
        zip(
            data.transactions.column("transaction_id").to_pylist(),
            data.transactions.column("event_time").to_pylist(),
            strict=True,
        )
    )
    expected = {
        row["transaction_id"]: row["is_fraud"]
        for row in data.labels.to_pylist()
        if row["label_time"] <= CUTOFF and tx_time[row["transaction_id"]] < CUTOFF
    }
    got = pa.concat_tables([ts.train, ts.holdout])
    assert (
        dict(
            zip(
                got.column("transaction_id").to_pylist(),
                got.column("is_fraud").to_pylist(),
                strict=True,
            )
        )
        == expected
    )
    before = sum(t < CUTOFF for t in tx_time.values())
    assert ts.unlabelled == before - len(expected) > 0
    assert ts.cutoff == CUTOFF


def test_a_label_from_after_the_cutoff_cannot_change_the_training_set(
    cfg: Config, tmp_path: Path
) -> None:
    """Flip every label that arrived after the cutoff: same training set, same digest, even in
    another project ingested at another time. Flip one that arrived before: a new digest."""
    labels = generated_labels()
    late = pc.greater(
        labels.column("label_time"), pa.scalar(CUTOFF, labels.schema.field("label_time").type)
    )
    flipped = pc.if_else(late, pc.invert(labels.column("is_fraud")), labels.column("is_fraud"))
    other = fraud_project(tmp_path / "late", labels=labels.set_column(3, "is_fraud", flipped))
    assert (
        build_training_set(other, cutoff=CUTOFF).digest
        == build_training_set(cfg, cutoff=CUTOFF).digest
    )
    assert build_training_set(other).digest != build_training_set(cfg).digest  # all arrived by now

    early = pc.invert(late).to_pylist().index(True)
    one_flipped = labels.column("is_fraud").to_pylist()
    one_flipped[early] = not one_flipped[early]
    changed = fraud_project(
        tmp_path / "early", labels=labels.set_column(3, "is_fraud", pa.array(one_flipped))
    )
    assert (
        build_training_set(changed, cutoff=CUTOFF).digest
        != build_training_set(cfg, cutoff=CUTOFF).digest
    )


def test_same_data_same_digest(cfg: Config) -> None:
    a, b = build_training_set(cfg), build_training_set(cfg)
    assert a.digest == b.digest and a.train.equals(b.train) and a.holdout.equals(b.holdout)


@pytest.mark.parametrize(
    ("cutoff", "message"),
    [
        (
            "2025-12-31T00:00:00Z",
            r"empty training set: source 'transactions' has no rows .* before",
        ),
        ("2026-01-01T12:00:00Z", r"no labels by the cutoff: none of the \d+ transactions rows"),
        ("2026-01-20T00:00:00Z", r"the training split has a single class: all \d+ labels are true"),
    ],
)
def test_impossible_training_sets_say_why(cfg: Config, cutoff: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        build_training_set(cfg, cutoff=cutoff)


def test_unknown_service(cfg: Config) -> None:
    with pytest.raises(
        NotFoundError, match=r"unknown feature service 'fraud_v2'\. Did you mean 'fraud_v1'"
    ):
        build_training_set(cfg, service="fraud_v2")


def test_no_labels_at_all(tmp_path: Path) -> None:
    project = init_project(tmp_path / "nolabels")
    cfg = load_config(project, env={})
    path = project / "data" / "tx.parquet"
    import pyarrow.parquet as pq

    pq.write_table(generate(GENERATED).transactions.slice(0, 200), path)
    ingest(cfg, "transactions", path)
    apply(cfg, load_definitions(cfg))
    with pytest.raises(
        NotFoundError, match=r"source 'labels' holds no labels.*backline ingest labels"
    ):
        build_training_set(cfg)


# -- revisions: a label source whose primary key allows several labels per transaction ----------

LabelRows = list[dict[str, Any]]
REVISION_CUTOFFS = ("2026-03-01T00:00:00Z", "2026-03-05T00:00:00Z", None)


@pytest.fixture(scope="module")
def revised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[LabelRows]]:
    """The fraud project with labels keyed on (transaction_id, label_time), and revisions in
    later batches: every 5th transaction's label is flipped 2 days after it arrived, and every
    15th flipped back 4 days after. The +4d batch is ingested *before* the +2d batch, so the
    label that arrived last is not the one ingested last. Returns the config and the label
    rows of each batch, in ingest order."""
    root = tmp_path_factory.mktemp("revisions") / "proj"
    original = generated_labels()
    cfg = fraud_project(root, label_key=("transaction_id", "label_time"))
    rows = original.to_pylist()
    flipped = [
        {**r, "is_fraud": not r["is_fraud"], "label_time": r["label_time"] + timedelta(days=2)}
        for r in rows[::5]
    ]
    back = [{**r, "label_time": r["label_time"] + timedelta(days=4)} for r in rows[::15]]
    batches = [rows]
    for name, batch in (("back", back), ("flipped", flipped)):
        path = cfg.root / "data" / f"labels-{name}.parquet"
        pq.write_table(pa.Table.from_pylist(batch, schema=original.schema), path)
        result = ingest(cfg, "labels", path)
        assert result.rows_accepted == len(batch), result.quarantine_reasons
        batches.append(batch)
    return cfg, batches


def known_labels(batches: list[LabelRows], cutoff: object) -> dict[str, bool]:
    """Brute force: per transaction, of its labels with label_time <= cutoff, the one with the
    latest label_time (then the latest batch) counts."""
    best: dict[str, tuple[object, int, bool]] = {}
    for order, batch in enumerate(batches):
        for r in batch:
            if r["label_time"] > cutoff:
                continue
            key = (r["label_time"], order)
            tx = r["transaction_id"]
            if tx not in best or key > best[tx][:2]:
                best[tx] = (*key, r["is_fraud"])
    return {tx: v[2] for tx, v in best.items()}


@pytest.mark.parametrize("cutoff", REVISION_CUTOFFS)
def test_the_latest_label_to_arrive_by_the_cutoff_counts(
    revised: tuple[Config, list[LabelRows]], cutoff: str | None
) -> None:
    cfg, batches = revised
    ts = build_training_set(cfg, cutoff=cutoff)
    when = ts.cutoff
    if cutoff is None:  # the default is the latest arrival: the last revision
        assert when == max(r["label_time"] for b in batches for r in b)
    tx_time = {
        tx: t
        for tx, t in zip(
            *(
                generate(GENERATED).transactions.column(c).to_pylist()
                for c in ("transaction_id", "event_time")
            ),
            strict=True,
        )
    }
    expected = {tx: v for tx, v in known_labels(batches, when).items() if tx_time[tx] < when}
    got = pa.concat_tables([ts.train, ts.holdout])
    ids = got.column("transaction_id").to_pylist()
    assert len(ids) == len(set(ids)), "one example per transaction, however many labels"
    assert dict(zip(ids, got.column("is_fraud").to_pylist(), strict=True)) == expected
    assert ts.unlabelled == sum(t < when for t in tx_time.values()) - len(expected)

    # The data make the assertion above able to fail: at this cutoff, some transactions have a
    # revision that arrived by then and differs from their first label (so "the earliest wins"
    # is wrong), and some have a later one that differs from what counts (so does "the latest
    # ever wins").
    first = known_labels(batches[:1], when)
    ever = known_labels(batches, max(r["label_time"] for b in batches for r in b))
    assert sum(first[tx] != v for tx, v in expected.items()) > 0
    if cutoff is not None:
        assert sum(ever[tx] != v for tx, v in expected.items()) > 0


@pytest.mark.slow
def test_a_revision_after_the_cutoff_is_invisible(
    revised: tuple[Config, list[LabelRows]], tmp_path: Path
) -> None:
    """At a cutoff, the project with revisions gives the training set, digest included, of a
    project that holds only the labels that had arrived by then."""
    cfg, batches = revised
    cutoff = utc(REVISION_CUTOFFS[1])
    arrived = [r for b in batches for r in b if r["label_time"] <= cutoff]
    later = sum(r["label_time"] > cutoff for b in batches[1:] for r in b)
    assert later > 0
    only = fraud_project(
        tmp_path / "arrived",
        labels=pa.Table.from_pylist(arrived, schema=generated_labels().schema),
        label_key=("transaction_id", "label_time"),
    )
    assert (
        build_training_set(only, cutoff=cutoff).digest
        == build_training_set(cfg, cutoff=cutoff).digest
    )


def load_definitions_outputs(cfg: Config) -> list[str]:
    from backline.features.repository import resolve_service

    return list(resolve_service(load_definitions(cfg), "fraud_v1").outputs)
