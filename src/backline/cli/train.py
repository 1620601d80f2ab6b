"""`backline train`: train on a point-in-time training set and register the model."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from backline.cli.common import _open, _positive, cli_name
from backline.core.console import err, out


def add_commands(sub: Any) -> None:
    """Add `train` to the top-level subparsers."""
    p = sub.add_parser("train", help="train on a point-in-time training set and register the model")
    p.add_argument("--service", help="feature service (default: train.service)")
    p.add_argument(
        "--max-steps",
        type=_positive(int, "--max-steps"),
        help="optimizer steps (default: train.max_steps)",
    )
    p.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="continue from the newest good checkpoint (auto)",
    )
    p.add_argument(
        "--nproc",
        type=_positive(int, "--nproc"),
        default=1,
        help="workers through torchrun DDP (1)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (cpu)")
    p.add_argument("--model", default="fraud", help="registry model name (fraud)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    with _open(args) as project:
        registered = project.train(
            model_name=args.model,
            service=args.service,
            max_steps=args.max_steps,
            resume=args.resume,
            nproc=args.nproc,
            device=args.device,
            progress=err.is_terminal and not args.json,
        )
    result, version, pkg = registered.train, registered.version, registered.package
    if args.json:
        print(
            json.dumps(
                {
                    "model": version.model,
                    "version": version.version,
                    "run_id": result.run_id,
                    "steps": result.steps,
                    "resumed_from": result.resumed_from,
                    "metrics": dataclasses.asdict(result.metrics),
                    "training_set_digest": result.training_set_digest,
                    "served_variant": pkg.served,
                    "already_registered": registered.already_registered,
                },
                default=str,
            )
        )
        return 0
    m = result.metrics
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    speed = result.samples_per_second
    rate = "throughput unknown" if speed != speed else f"{speed:,.0f} samples/s"  # NaN
    out.print(
        f"Trained run {result.run_id}: {result.steps} steps on {result.train_examples:,} examples "
        f"({rate}{resumed})"
    )
    out.print(
        f"  holdout ({result.holdout_examples:,} examples, {m.positives} fraud): AUC-PR {m.auc_pr:.4f}, "
        f"ROC-AUC {m.roc_auc:.4f}, recall@{m.target_fpr:.0%} FPR {m.recall_at_fpr:.4f}, ECE {m.ece:.4f}"
    )
    what = (
        "Already registered as" if registered.already_registered else "Registered"
    )  # a finished run trained again: same package, same version
    out.print(
        f"{what} [bold]{version.model} v{version.version}[/] (served variant: {pkg.served}). "
        f"Next: {cli_name()} models gate {version.model} {version.version}"
    )
    return 0
