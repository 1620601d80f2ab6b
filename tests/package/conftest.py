"""A small fraud-shaped model and its serving package, built once for the package tests.

Card transactions with a learnable signal (nulls included, mixed Arrow types), a FraudMLP
trained for a few dozen steps (enough for distinct scores and a real int8 quantization error),
and `package` run on it the way `backline train` does, without ONNX to stay quick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from backline.package.export import package
from backline.package.latency import torch_threads
from backline.package.preprocess import Preprocessor
from backline.package.reader import ServingPackage
from backline.train.model import FraudMLP

NUMERIC = ("amount", "txn_count", "is_online", "ratio")
CATEGORICAL = ("merchant", "country")


def fraud_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.2, n)
    count = rng.integers(0, 40, n)
    online = rng.random(n) < 0.4
    ratio = rng.normal(0.0, 1.0, n).astype(np.float32)
    merchant = rng.choice([f"m{i:02d}" for i in range(25)], n)
    country = rng.choice(["US", "GB", "FR", "DE", "NG", "BR"], n)
    logit = (
        -3.0
        + 0.6 * np.log(amount)
        - 0.05 * count
        + 1.2 * online
        + 2.0 * (country == "NG")
        + 1.5 * np.isin(merchant, ["m03", "m07", "m11"])
    )
    fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pa.table(
        {
            "amount": pa.array(amount, mask=rng.random(n) < 0.05),
            "txn_count": pa.array(count, pa.int64()),
            "is_online": pa.array(online),
            "ratio": pa.array(ratio, pa.float32(), mask=rng.random(n) < 0.05),
            "merchant": pa.array(merchant, mask=rng.random(n) < 0.03),
            "country": pa.array(country),
            "is_fraud": pa.array(fraud),
        }
    )


def train_model(pre: Preprocessor, table: pa.Table, *, steps: int, seed: int) -> FraudMLP:
    torch.manual_seed(seed)
    model = FraudMLP(pre.n_numeric_inputs, pre.vocab_sizes, 4, (32, 16))
    x_num, x_cat = (torch.from_numpy(a) for a in pre.transform(table))
    labels = torch.from_numpy(np.asarray(table.column("is_fraud").to_numpy(), dtype=np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, labels.numel(), (256,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(x_num[idx], x_cat[idx]), labels[idx]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


Trained = tuple[Preprocessor, FraudMLP, pa.Table]


@pytest.fixture(scope="session")
def trained() -> Trained:
    """(preprocessing, model, holdout of 400 rows)."""
    train = fraud_table(3000, seed=1)
    pre = Preprocessor.fit(train, NUMERIC, CATEGORICAL, min_count=5)
    # one thread: on a machine whose cores other jobs share, threads waiting on each other
    # make these small steps several times slower
    with torch_threads(1):
        model = train_model(pre, train, steps=80, seed=0)
    return pre, model, fraud_table(400, seed=2)


def package_of(trained: Trained, out: Path, *, onnx: bool = False) -> ServingPackage:
    """`package` on one torch thread (see `trained`); its batch-256 latencies are then
    one-thread figures, which no test here judges."""
    pre, model, holdout = trained
    with torch_threads(1):
        return package(
            model,
            pre,
            holdout,
            out,
            target_fpr=0.05,
            label_column="is_fraud",
            onnx=onnx,
            latency_runs=10,
        )


@pytest.fixture(scope="session")
def packaged(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> ServingPackage:
    return package_of(trained, tmp_path_factory.mktemp("pkg") / "fraud")


@pytest.fixture(scope="session")
def rows(trained: Trained) -> pa.Table:
    """Feature rows to score: the holdout's, with nulls."""
    pre, _, holdout = trained
    return holdout.select(list(pre.feature_names))
