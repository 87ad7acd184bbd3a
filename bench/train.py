"""Training benchmark: iterations/s and peak memory of `latentfss train` at the default config,
1-shot and 5-shot, on the annotation artifacts of an existing run (results/synthetic by default).

    python bench/train.py [--results results/synthetic] [--iterations 40] [--threads 2]

Writes bench/results/train.json and train.md (assembled into BENCHMARKS.md by bench/report.py).
On a CUDA machine the same run measures the GPU path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from record import describe, machine, save

REPO = Path(__file__).resolve().parents[1]


def timed_train(results: Path, out: Path, shot: int, params: dict, threads: int) -> dict:
    """One training run in its own process: wall seconds, its own steps/s, peak RSS."""
    argv = [sys.executable, "-m", "latentfss.cli", "--log-level", "WARNING", "train",
            "--index", results / "dataset", "--encoder-init", results / "encoder_init.pt",
            "--pseudo-masks", results / "fold0/pseudo_masks.zarr", "--fold", "0",
            "--shot", shot, "--out", out / "model.pt", "--log-csv", out / "train.csv",
            "--params", json.dumps(params), "--threads", threads]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen([str(a) for a in argv], stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed ({shot}-shot)")
    return {"shot": shot, "iterations": params["iterations"], "seconds": round(seconds, 2),
            "iterations_per_s": round(params["iterations"] / seconds, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results/synthetic")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if not (args.results / "fold0/pseudo_masks.zarr").is_dir():
        raise SystemExit(f"{args.results}: run `snakemake --cores 2` first (needs fold 0's "
                         "pseudo masks)")  # fmt: skip
    params = {**config["train"], "iterations": args.iterations,
              "checkpoint_every": 10 * args.iterations}  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for shot in (1, 5):
            runs.append(timed_train(args.results, Path(tmp) / f"shot{shot}", shot, params,
                                    args.threads))  # fmt: skip
    results = {"machine": machine(), "threads": args.threads, "train": config["train"],
               "runs": runs}  # fmt: skip
    save(results, markdown(results), args.out, "train")


def markdown(r: dict) -> str:
    t, m = r["train"], r["machine"]
    lines = [
        "## Training (`bench/train.py`)", "",
        f"Machine: {describe(m)}; {r['threads']} threads. Default synthetic config: ResNet-18, "
        f"crop {t['crop']}, "
        f"B = {t['batch_episodes']} episodes + M = {t['batch_pseudo']} pseudo-labelled images "
        "per iteration, fold 0. Seconds include process start, data loading and saving; "
        "peak RSS is the training process's own (its data-loader worker is a process of its own; "
        "Snakemake's benchmark files count both).", "",
        "| shot | iterations | seconds | iterations/s | peak RSS (MB) |",
        "|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for run in r["runs"]:
        lines.append(f"| {run['shot']} | {run['iterations']} | {run['seconds']} | "
                     f"{run['iterations_per_s']} | {run['peak_rss_mb']} |")  # fmt: skip
    lines += ["", "Not measured yet: the PASCAL preset (ResNet-50, crop 473, B = 4, M = 32) on a "
              "GPU and the fraction of step time the GPU is busy; no GPU was lent to the task "
              "that built this.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
