"""The trainer in one process: data order, RNG capture, loss log, and resume after SIGTERM or
damage ending bitwise where an uninterrupted run ends."""

from __future__ import annotations

import io
import os
import random
import signal
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backline.core.errors import ConfigError
from backline.train.checkpoint import CheckpointStore, load_checkpoint
from backline.train.loop import (
    LOSS_LOG,
    TrainingInterrupted,
    TrainProgress,
    TrainSpec,
    fit,
    prepare_run_dir,
)
from backline.train.state import (
    DataOrder,
    LossLog,
    WarmupCosine,
    read_loss_log,
    rng_state,
    set_rng_state,
)

from .helpers import FsyncLog, logged_step, small_spec, synthetic_data, wait_for


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """An uninterrupted run: final parameter sha256 and its loss log."""
    run = tmp_path_factory.mktemp("reference")
    prepare_run_dir(run, small_spec(), synthetic_data())
    result = fit(small_spec(), synthetic_data(), run, notify=lambda _: None)
    assert result.steps == 300 and result.resumed_from is None
    return result.parameter_sha256, (run / LOSS_LOG).read_bytes()


def test_data_order_is_a_seeded_permutation_sharded_by_rank() -> None:
    orders = [DataOrder(n=10, batch=2, world=2, rank=r, seed=5) for r in (0, 1)]
    epoch0 = [np.concatenate([o.next() for o in orders]) for _ in range(2)]
    seen = np.concatenate(epoch0)
    assert len(set(seen.tolist())) == 8  # 2 steps x 4, no repeats; the last 2 are dropped
    first = orders[0].next()  # a new epoch: a different permutation
    assert (orders[0].epoch, orders[0].offset) == (1, 4)
    again = DataOrder(n=10, batch=2, world=2, rank=0, seed=5, epoch=1, offset=0)
    assert again.next().tolist() == first.tolist()
    expected = np.random.default_rng([5, 0]).permutation(10)
    assert epoch0[0].tolist() == expected[:4].tolist()
    with pytest.raises(ConfigError, match=r"batch_size = 8 x 2 worker\(s\).*at most 5"):
        DataOrder(n=10, batch=8, world=2, rank=0, seed=0)


def test_rng_states_survive_a_weights_only_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    buffer = io.BytesIO()
    torch.save(rng_state("cpu"), buffer)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True), "cpu")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_warmup_then_cosine_to_the_floor() -> None:
    f = WarmupCosine(warmup=4, total=104, floor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(54) == pytest.approx(0.55) and f(104) == pytest.approx(0.1)


def test_the_trainers_schedule_decays_to_a_tenth_of_the_peak(tmp_path: Path) -> None:
    """The schedule `fit` builds (WarmupCosine with its default floor, docs/training.md: "cosine
    decay to a tenth of the peak at train.max_steps"), read back from its checkpoints."""
    spec = small_spec(max_steps=40, warmup_steps=10, checkpoint_every=5, keep_checkpoints=100)
    prepare_run_dir(tmp_path, spec, synthetic_data())
    fit(spec, synthetic_data(), tmp_path, notify=lambda _: None)
    lrs = {}
    for path in CheckpointStore(tmp_path / "checkpoints", keep=100).committed():
        loaded = load_checkpoint(path)
        lrs[loaded.payloads["trainer.pt"]["step"]] = loaded.payloads["optimizer.pt"][
            "param_groups"
        ][0]["lr"]
    assert sorted(lrs) == list(range(5, 41, 5))
    peak = spec.learning_rate
    assert lrs[5] == pytest.approx(peak * 6 / 10)  # warm-up: (step + 1) / warmup
    assert lrs[10] == pytest.approx(peak)  # the end of warm-up
    assert peak > lrs[15] > lrs[20] > lrs[25] > lrs[30] > lrs[35] > lrs[40]
    assert lrs[25] == pytest.approx(peak * 0.55)  # half way down the cosine
    assert lrs[40] == pytest.approx(peak * 0.1)  # the floor
    # the same schedule built the way the trainer builds it, with the defaults of TrainSpec
    default = replace(spec, warmup_steps=TrainSpec.warmup_steps, max_steps=1000)
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=default.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(default.warmup_steps, default.max_steps)
    )
    for _ in range(default.max_steps):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(default.learning_rate * 0.1)


def test_loss_log_is_cut_back_to_the_resume_step(tmp_path: Path) -> None:
    path = tmp_path / LOSS_LOG
    log = LossLog(path, 0)
    for step in range(1, 6):
        log.append(step, 1 / step)
    log.close()
    with open(path, "ab") as f:
        f.write(b"6 0x1.5")  # torn by a kill
    LossLog(path, 3).close()
    assert read_loss_log(path) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]


def test_finished_run_resumes_at_the_end_without_training(
    tmp_path: Path, reference: tuple[str, bytes]
) -> None:
    prepare_run_dir(tmp_path, small_spec(), synthetic_data())
    first = fit(small_spec(), synthetic_data(), tmp_path)
    again = fit(small_spec(), synthetic_data(), tmp_path)
    assert first.parameter_sha256 == again.parameter_sha256 == reference[0]
    assert again.resumed_from == 300 and again.checkpoints_written == 0
    assert (tmp_path / LOSS_LOG).read_bytes() == reference[1]


def test_sigterm_checkpoints_then_resume_is_bitwise(
    tmp_path: Path, reference: tuple[str, bytes]
) -> None:
    interrupted_at = _train_until_sigterm(tmp_path, at_step=137)
    assert interrupted_at >= 137
    assert (tmp_path / "checkpoints" / f"step-{interrupted_at:09d}").is_dir()
    notes: list[str] = []
    result = fit(small_spec(), synthetic_data(), tmp_path, notify=notes.append)
    assert result.resumed_from == interrupted_at and notes == []
    assert result.parameter_sha256 == reference[0]
    assert (tmp_path / LOSS_LOG).read_bytes() == reference[1]


def test_damaged_newest_checkpoint_falls_back_and_still_matches(
    tmp_path: Path, reference: tuple[str, bytes]
) -> None:
    step = _train_until_sigterm(tmp_path, at_step=95)
    newest = tmp_path / "checkpoints" / f"step-{step:09d}" / "model.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    notes: list[str] = []
    result = fit(small_spec(), synthetic_data(), tmp_path, notify=notes.append)
    assert result.resumed_from is not None and result.resumed_from < step
    assert any("is damaged" in n and "bytes" in n for n in notes)
    assert result.parameter_sha256 == reference[0]
    assert (tmp_path / LOSS_LOG).read_bytes() == reference[1]


def test_no_good_checkpoint_trains_from_scratch_with_a_message(
    tmp_path: Path, reference: tuple[str, bytes]
) -> None:
    _train_until_sigterm(tmp_path, at_step=45)
    for folder in (tmp_path / "checkpoints").glob("step-*"):
        (folder / "manifest.json").unlink()
    notes: list[str] = []
    result = fit(small_spec(), synthetic_data(), tmp_path, notify=notes.append)
    assert result.resumed_from is None
    assert any("no usable checkpoint" in n and "training from step 0" in n for n in notes)
    assert result.parameter_sha256 == reference[0]
    assert (tmp_path / LOSS_LOG).read_bytes() == reference[1]


def test_the_loss_log_is_durable_up_to_each_checkpoint_before_it_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume cuts the log back to the checkpoint's step: if a power cut lost log lines that
    a committed checkpoint had already passed, the resumed log would have a hole. So every
    checkpoint commits only after an fsync of the log that covered its step."""
    spec = small_spec(max_steps=30, checkpoint_every=10)
    prepare_run_dir(tmp_path, spec, synthetic_data())
    log = FsyncLog(monkeypatch)
    fit(spec, synthetic_data(), tmp_path, notify=lambda _: None)
    root, loss_log = (tmp_path / "checkpoints").resolve(), (tmp_path / LOSS_LOG).resolve()
    lines = (tmp_path / LOSS_LOG).read_bytes().splitlines(keepends=True)
    # the log is a new file (LossLog writes it atomically): its name is durable before any
    # checkpoint that relies on its lines commits
    created = log.index("rename", loss_log)
    assert log.index("fsync", loss_log.parent, created) < log.index(
        "rename", root / "step-000000010"
    )
    for step in (10, 20, 30):
        commit = log.index("rename", root / f"step-{step:09d}")
        synced = [size for k, p, size in log.events[:commit] if k == "fsync" and p == loss_log]
        assert synced and synced[-1] is not None, f"loss log not fsynced before step {step}"
        assert synced[-1] >= len(b"".join(lines[:step])), step


def _train_until_sigterm(run: Path, at_step: int) -> int:
    """Train in this process and send ourselves SIGTERM once the log reaches `at_step`."""
    prepare_run_dir(run, small_spec(), synthetic_data())

    def send() -> None:
        wait_for(lambda: logged_step(run) >= at_step, every=0.0005)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with pytest.raises(
        TrainingInterrupted, match=r"stopped by SIGTERM at step (\d+) of 300"
    ) as info:
        fit(small_spec(), synthetic_data(), run)
    sender.join()
    return int(str(info.value).split("at step ")[1].split()[0])


def test_progress_reports_steps_loss_throughput_and_time_left(tmp_path: Path) -> None:
    spec = small_spec(max_steps=30, checkpoint_every=15)
    prepare_run_dir(tmp_path, spec, synthetic_data())
    reports: list[TrainProgress] = []
    fit(spec, synthetic_data(), tmp_path, notify=lambda _: None, on_progress=reports.append)
    assert [r.step for r in reports] == list(range(1, 31))
    assert {r.total for r in reports} == {30}
    losses = [float.fromhex(line.split()[1]) for line in read_lines(tmp_path / LOSS_LOG)]
    assert [r.loss for r in reports] == losses
    assert all(r.samples_per_second > 0 for r in reports)
    assert all(r.eta_seconds is not None and r.eta_seconds >= 0 for r in reports)
    assert reports[-1].eta_seconds == 0
    # a finished run reports no step, and the report's fields are what the bar shows
    again: list[TrainProgress] = []
    fit(spec, synthetic_data(), tmp_path, notify=lambda _: None, on_progress=again.append)
    assert again == []


def test_progress_figures_from_elapsed_time() -> None:
    from backline.train import loop

    report = loop._report(15, 5, 25, 0.5, 2.0, 64)  # 10 steps of 64 examples in 2 s
    assert report.samples_per_second == pytest.approx(320)
    assert report.eta_seconds == pytest.approx(2.0)  # 10 steps left at 5 steps/s
    assert loop._report(5, 5, 25, 0.5, 2.0, 64).eta_seconds is None
    assert loop._clock(4.2) == "0:04" and loop._clock(3725) == "1:02:05"


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]
