"""One intra-op thread in this process: the tests' tiny models gain nothing from more, the
numbers match the worker processes the tests start with OMP_NUM_THREADS=1, and on a machine
loaded by other jobs, spinning OpenMP threads made these tests up to ten times slower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
