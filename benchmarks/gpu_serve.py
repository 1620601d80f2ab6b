"""The fraud model on a GPU: eager calls against CUDA graphs, per batch size.

    .venv/bin/python benchmarks/gpu_serve.py                         # a small fraud-shaped package
    .venv/bin/python benchmarks/gpu_serve.py --package out/fraud     # or the package you give it
    .venv/bin/python benchmarks/gpu_serve.py --json gpu.json         # the table, and the figures
    .venv/bin/python benchmarks/gpu_serve.py --device cpu --quick    # the CPU side, in seconds

Trains nothing. Without --package it packages an untrained FraudMLP (hidden 128, 64; 16
numeric and 3 categorical features, seeded) with `package`: latency does not depend on the
weights. For each batch size (1, 8, 64, 256, 1024, 4096) it times the package's fp32 program
three ways, each call followed by a synchronize of the device:

    eager   score_codes(numeric, codes) on inputs already on the device: a launch per op
    graph   the batch size's CUDA graph replayed on its static inputs (backline.package.device)
    scorer  load_package(..., device=, buckets=the batch sizes).score_inputs from CPU inputs:
            encode on the CPU, copies in and out, replay: what one server batch costs

Each figure is the median of --runs runs (at least 3) with the runs' min-max beside it: p50
and p99 of --calls timed calls per run in microseconds, and the scorer's throughput (rows per
second of back-to-back calls). Measured earlier on an H200, to compare with: eager at batch 1
110 us; graph at batch 1 25 us; graph at batch 4096 28 us.

Without a CUDA device (and without --device cpu) it prints "skipped: no CUDA device ..." and
exits 0, so a sweep of every benchmark passes on a CPU machine. On --device cpu there is no
graph: that column reads n/a and the scorer pads to the buckets with eager calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BATCHES = (1, 8, 64, 256, 1024, 4096)
#: (batch, method) -> microseconds measured earlier on an H200, printed beside the table
REFERENCE_H200_US = {(1, "eager"): 110.0, (1, "graph"): 25.0, (4096, "graph"): 28.0}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--package", type=Path, help="a serving package folder (default: build one)"
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure, at least 3 (5)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per run (200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per run (20)")
    parser.add_argument(
        "--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--quick", action="store_true", help="3 runs of 10 calls, batches up to 256: a smoke test"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.calls, args.warmup = 3, 10, 2
    if args.runs < 3 or args.calls < 1 or args.warmup < 0:
        parser.error("--runs must be at least 3, --calls at least 1, --warmup at least 0")
    try:
        batches = tuple(sorted({int(b) for b in args.batches.split(",")}))
    except ValueError:
        parser.error(f"--batches {args.batches!r}: give sizes like 1,8,64")
    if args.quick:
        batches = tuple(b for b in batches if b <= 256) or batches[:1]
    if not batches or batches[0] < 1:
        parser.error(f"--batches {args.batches!r}: every size must be at least 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "skipped: no CUDA device (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Run it on a "
            "machine with an NVIDIA GPU, or pass --device cpu to exercise the script."
        )
        return 0

    with tempfile.TemporaryDirectory(prefix="backline-gpu-") as tmp:
        root = args.package or build_package(Path(tmp) / "fraud")
        result = measure(root, args.device, batches, args.runs, args.calls, args.warmup)
    if not args.package:
        result["package"] = "built: untrained FraudMLP (128, 64), 16 numeric + 3 categorical"
    result["command"] = "benchmarks/gpu_serve.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


def build_package(out: Path) -> Path:
    """A fraud-shaped package of an untrained, seeded FraudMLP (no ONNX)."""
    import numpy as np
    import pyarrow as pa
    import torch

    from backline.package.export import package
    from backline.package.preprocess import Preprocessor
    from backline.train.model import FraudMLP

    rng = np.random.default_rng(0)
    n = 2048
    columns: dict[str, Any] = {
        f"num_{j:02d}": pa.array(rng.lognormal(1.0, 1.0, n), mask=rng.random(n) < 0.02)
        for j in range(16)
    }
    columns["merchant"] = pa.array(rng.choice([f"m{i:03d}" for i in range(200)], n))
    columns["country"] = pa.array(rng.choice(["US", "GB", "FR", "DE", "NG", "BR", "IN"], n))
    columns["device"] = pa.array(rng.choice([f"d{i:02d}" for i in range(40)], n))
    columns["is_fraud"] = pa.array(np.arange(n) % 20 == 0)
    table = pa.table(columns)
    numeric = [f"num_{j:02d}" for j in range(16)]
    pre = Preprocessor.fit(table, numeric, ["merchant", "country", "device"], min_count=1)
    torch.manual_seed(0)
    model = FraudMLP(pre.n_numeric_inputs, pre.vocab_sizes, 8, (128, 64)).eval()
    package(
        model,
        pre,
        table.slice(0, 512),
        out,
        target_fpr=0.01,
        label_column="is_fraud",
        onnx=False,
        latency_runs=10,
    )
    return out


def measure(
    root: Path, device: str, batches: Sequence[int], runs: int, calls: int, warmup: int
) -> dict[str, Any]:
    """The figures of every batch size (see the module docstring)."""
    import numpy as np
    import torch

    from backline.package import load_package
    from backline.package.device import capture_cuda_graph, parse_device
    from backline.package.reader import MODEL_FILE, table_inputs

    scorer = load_package(root, "fp32", device=device, buckets=batches)
    target = parse_device(scorer.device)
    on_cuda = target.type == "cuda"
    program = torch.jit.load(str(root / MODEL_FILE), map_location=target)
    program.eval()
    source = generated_rows(scorer.preprocess, 512)
    rows = source.take(np.arange(max(batches)) % source.num_rows)
    numeric, categorical = table_inputs(rows, scorer.preprocess)
    codes = program.encode(categorical, numeric.shape[0])

    def sync() -> None:
        if on_cuda:
            torch.cuda.current_stream(target).synchronize()

    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        for b in batches:
            num_b, cat_b = numeric[:b], [c[:b] for c in categorical]
            dev_num, dev_codes = num_b.to(target), codes[:b].to(target)

            def eager(n: torch.Tensor = dev_num, c: torch.Tensor = dev_codes) -> None:
                program.score_codes(n, c)
                sync()

            def served(n: torch.Tensor = num_b, c: list[list[str | None]] = cat_b) -> None:
                scorer.score_inputs(n, c)

            entry: dict[str, Any] = {
                "batch": b,
                "eager": summarize(time_runs(eager, runs, calls, warmup), b),
                "graph": None,
                "scorer": summarize(time_runs(served, runs, calls, warmup), b),
            }
            if on_cuda:
                replay, _ = capture_cuda_graph(
                    program.score_codes, dev_num.clone(), dev_codes.clone()
                )

                def graph(replay: Callable[[], None] = replay) -> None:
                    replay()
                    sync()

                entry["graph"] = summarize(time_runs(graph, runs, calls, warmup), b)
            out.append(entry)
    return {
        "device": str(target),
        "device_name": torch.cuda.get_device_name(target) if on_cuda else "cpu",
        "torch": torch.__version__,
        "package": str(root),
        "scorer_mode": scorer.mode,
        "scorer_fallback": scorer.fallback,
        "threads": torch.get_num_threads(),
        "runs": runs,
        "calls_per_run": calls,
        "warmup_per_run": warmup,
        "batches": out,
        "reference_h200_us": {f"{m} batch {b}": us for (b, m), us in REFERENCE_H200_US.items()},
    }


def generated_rows(pre: Any, n: int) -> Any:
    """`n` rows of every feature of the preprocessing spec `pre`, seeded: numbers drawn around
    each feature's training mean, known and unseen categories. The model's speed does not
    depend on the values; a package does not store its holdout."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    columns: dict[str, Any] = {s.name: rng.normal(s.mean, s.std or 1.0, n) for s in pre.numeric}
    for v in pre.categorical:
        columns[v.name] = rng.choice([*v.values[:50], "unseen"], n).tolist()
    return pa.table(columns).select(list(pre.feature_names))


def time_runs(call: Callable[[], None], runs: int, calls: int, warmup: int) -> list[list[float]]:
    """Per run, the microseconds of each timed call."""
    out = []
    for _ in range(runs):
        for _ in range(warmup):
            call()
        times = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            call()
            times.append((time.perf_counter_ns() - start) / 1e3)
        out.append(times)
    return out


def summarize(runs: list[list[float]], batch: int) -> dict[str, dict[str, float]]:
    """p50, p99 and rows/s of each run; the median run's figure with the runs' min and max."""
    import numpy as np

    per_run = {
        "p50_us": [float(np.percentile(r, 50)) for r in runs],
        "p99_us": [float(np.percentile(r, 99)) for r in runs],
        "rows_per_s": [batch * len(r) / (sum(r) / 1e6) for r in runs],
    }
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in per_run.items()
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"backline gpu_serve: {result['device']} ({result['device_name']}), torch "
        f"{result['torch']}; scorer mode {result['scorer_mode']}"
        + (f" ({result['scorer_fallback']})" if result["scorer_fallback"] else "")
    )
    print(
        f"median of {result['runs']} runs x {result['calls_per_run']} calls [min-max of the "
        "runs]; microseconds, rows/s"
    )
    methods = ("eager", "graph", "scorer")
    table = [["batch", *(f"{m} {s}" for m in methods for s in ("p50", "p99")), "scorer rows/s"]]
    for entry in result["batches"]:
        cells = [str(entry["batch"])]
        for method in methods:
            figures = entry[method]
            cells += [_figure(figures[stat] if figures else None) for stat in ("p50_us", "p99_us")]
        table.append([*cells, _figure(entry["scorer"]["rows_per_s"], rate=True)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        "H200 reference: "
        + "; ".join(f"{k} {v:.0f} us" for k, v in result["reference_h200_us"].items())
    )
    print(f"command: {result['command']}")


def _figure(x: dict[str, float] | None, *, rate: bool = False) -> str:
    if x is None:
        return "n/a"
    fmt = "{:,.0f}" if rate else "{:.1f}"
    return f"{fmt.format(x['median'])} [{fmt.format(x['min'])}-{fmt.format(x['max'])}]"


if __name__ == "__main__":
    sys.exit(main())
