"""One training process: `python -m backline.train.worker RUN_DIR [--device cpu|cuda]`.

Reads RUN_DIR/spec.json and RUN_DIR/data/train.pt (written by `run_training`, or by
`prepare_run_dir`), joins the process group when torchrun started it, trains with `fit` (which
resumes from the newest good checkpoint), and (rank 0) writes RUN_DIR/fit.json.

Exit codes: 0 done, 2 a user error (one line on stderr), 143 stopped by SIGTERM after a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from backline.core.errors import BacklineError
from backline.train.distributed import DistContext
from backline.train.loop import (
    SPEC_FILE,
    TRAIN_DATA,
    TensorData,
    TrainingInterrupted,
    TrainSpec,
    fit,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backline.train.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    ctx: DistContext | None = None
    try:
        spec = TrainSpec.from_json((args.run_dir / SPEC_FILE).read_text())
        data = TensorData.load(args.run_dir / TRAIN_DATA)
        ctx = DistContext.from_env(args.device)
        fit(spec, data, args.run_dir, ctx=ctx, progress=args.progress)
    except TrainingInterrupted as exc:
        print(f"backline: {exc}", file=sys.stderr)
        return 143
    except BacklineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
