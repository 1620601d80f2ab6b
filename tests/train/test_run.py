"""run_training end to end on the fraud example: the run folder, re-runs that resume, the
preprocessing artifact reproducing the holdout metrics, torchrun, and clear usage errors."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal

import pytest
import torch

from backline.core.config import Config
from backline.core.errors import ConfigError, InvalidArgument, StoreError, TrainingInterrupted
from backline.package.metrics import evaluate
from backline.package.preprocess import Preprocessor
from backline.train.loop import TrainProgress
from backline.train.run import TrainResult, load_model, predict_proba, run_training
from backline.train.state import read_loss_log

from .helpers import fraud_project, logged_step, with_train


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return fraud_project(
        tmp_path_factory.mktemp("run") / "proj",
        max_steps=40,
        batch_size=256,
        hidden=(16,),
        checkpoint_every=10,
        warmup_steps=5,
    )


@pytest.fixture(scope="module")
def first(cfg: Config) -> TrainResult:
    return run_training(cfg, progress=False)


def test_a_run_leaves_everything_in_its_folder(cfg: Config, first: TrainResult) -> None:
    run = first.run_dir
    assert run.parent == cfg.root / ".backline" / "runs"
    assert first.run_id.startswith("fraud_v1-" + first.training_set_digest[:10] + "-")
    for name in ("run.json", "spec.json", "preprocess.json", "model.json", "data/train.pt"):
        assert (run / name).is_file(), name
    assert first.checkpoint == run / "checkpoints" / "step-000000040"
    assert first.model_path == first.checkpoint / "model.pt"
    assert [s for s, _ in read_loss_log(first.loss_log)] == list(range(1, 41))
    assert (first.steps, first.world_size, first.resumed_from) == (40, 1, None)
    info = json.loads((run / "run.json").read_text())
    assert info["training_set_digest"] == first.training_set_digest
    assert info["feature_views"] == dict(first.feature_views) and len(info["feature_views"]) == 5
    summary = json.loads(first.metrics_path.read_text())
    assert summary["parameter_sha256"] == first.parameter_sha256
    assert summary["metrics"]["auc_pr"] == first.metrics.auc_pr
    m = first.metrics
    assert m.examples == first.holdout_examples and 0 < m.positives < m.examples
    assert m.roc_auc > 0.6 and 0 <= m.recall_at_fpr <= 1 and 0 <= m.ece <= 1


def test_the_artifacts_reproduce_the_holdout_metrics(cfg: Config, first: TrainResult) -> None:
    """What serving will load (preprocess.json, model.json, model.pt) scores the holdout exactly
    as training did."""
    from backline.train.dataset import build_training_set

    pre = Preprocessor.from_json(first.preprocess_path.read_text())
    model = load_model(first.run_dir)
    holdout = build_training_set(cfg).holdout
    probs = predict_proba(model, *pre.transform(holdout))
    labels = holdout.column("is_fraud").to_numpy(zero_copy_only=False).astype(float)
    assert evaluate(labels, probs, target_fpr=cfg.train.target_fpr) == first.metrics
    state = torch.load(first.model_path, weights_only=True)
    assert set(state) == set(model.state_dict())


def test_running_again_resumes_the_finished_run(cfg: Config, first: TrainResult) -> None:
    again = run_training(cfg, progress=False)
    assert again.run_id == first.run_id and again.resumed_from == 40
    assert again.parameter_sha256 == first.parameter_sha256 and again.metrics == first.metrics


def test_resume_never_retrains_to_the_same_parameters(cfg: Config, first: TrainResult) -> None:
    log = first.loss_log.read_bytes()
    fresh = run_training(cfg, resume="never", progress=False)
    assert fresh.run_id == first.run_id and fresh.resumed_from is None
    assert fresh.parameter_sha256 == first.parameter_sha256
    assert fresh.loss_log.read_bytes() == log


def test_other_settings_are_another_run(cfg: Config, first: TrainResult) -> None:
    shorter = run_training(cfg, max_steps=20, progress=False)
    assert shorter.run_id != first.run_id and shorter.steps == 20
    wider = run_training(with_train(cfg, hidden=(8,)), max_steps=20, progress=False)
    assert wider.run_id not in (first.run_id, shorter.run_id)


def test_two_workers_under_torchrun(cfg: Config) -> None:
    result = run_training(with_train(cfg, seed=1), max_steps=20, nproc=2, progress=False)
    assert (result.world_size, result.steps) == (2, 20)
    assert [s for s, _ in read_loss_log(result.loss_log)] == list(range(1, 21))


def test_a_run_in_progress_is_not_trained_twice(cfg: Config, first: TrainResult) -> None:
    with open(first.run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match=r"is being trained by another process"):
            run_training(cfg, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resume": "sometimes"}, r"--resume 'sometimes' is not a mode; use auto or never"),
        ({"nproc": 0}, r"--nproc 0: run at least one worker"),
        ({"max_steps": 0}, r"--max-steps 0: train at least one step"),
        ({"device": "tpu"}, r"--device 'tpu' is not a device backline trains on"),
    ],
)
def test_usage_errors(cfg: Config, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        run_training(cfg, progress=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so(cfg: Config) -> None:
    with pytest.raises(InvalidArgument, match=r"--device cuda, but torch .* sees no CUDA device"):
        run_training(cfg, device="cuda", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    ],
)
def test_stopped_mid_run_and_resumed_equals_uninterrupted(cfg: Config, device: str) -> None:
    """Stop a run mid-way, lose the checkpoint it wrote on the way out (as a kill before that
    commit would), resume from the periodic checkpoint before it: the parameters and every
    step's loss equal an uninterrupted run's, bit for bit. The CPU case runs everywhere and is
    the same code as the CUDA one, so this test is known to fail when resume is broken."""
    cfg = with_train(cfg, dropout=0.1)  # dropout draws random numbers: their state must resume
    reference = run_training(cfg, device=device, resume="never", progress=False)
    expected_log = reference.loss_log.read_bytes()
    assert reference.resumed_from is None and reference.steps == 40

    def stop_at_15(report: TrainProgress) -> None:
        if report.step == 15:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop checkpoints and stops soon after

    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at step (\d+)") as info:
        run_training(cfg, device=device, resume="never", progress=False, on_progress=stop_at_15)
    stopped = int(str(info.value).split("at step ")[1].split()[0])
    assert 15 <= stopped < 20, stopped
    run_dir = reference.run_dir
    shutil.rmtree(run_dir / "checkpoints" / f"step-{stopped:09d}")
    assert logged_step(run_dir) == stopped  # lines 11..stopped are cut back on resume

    resumed = run_training(cfg, device=device, progress=False)
    assert resumed.run_id == reference.run_id and resumed.device == device
    assert resumed.resumed_from == 10 and resumed.steps == 40
    assert resumed.parameter_sha256 == reference.parameter_sha256
    assert resumed.loss_log.read_bytes() == expected_log
    assert resumed.metrics == reference.metrics


def test_a_batch_larger_than_the_training_set(cfg: Config) -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size = 1000000 x 2 worker\(s\) is more"):
        run_training(with_train(cfg, batch_size=1_000_000), nproc=2, progress=False)
