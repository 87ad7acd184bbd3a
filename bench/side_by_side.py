"""Backs docs/running.md, "Running on a cluster": CPU-only jobs side by side.

Two GPU-type jobs on a CPU-only machine: one after the other with all threads each, or side
by side with one thread each (what the default profile does without a GPU). The jobs are
`latentfss evaluate` of fold 0 and fold 1, 5-shot, on the models and banks of an existing run.

    python bench/side_by_side.py [--results results/synthetic] [--seeds 2]

Writes bench/results/side_by_side.json and .md (assembled into docs/benchmarks.md by
bench/report.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import arguments, describe, save

REPO = Path(__file__).resolve().parents[1]


def evaluate(results: Path, fold: int, out: Path, seeds: int, threads: int) -> subprocess.Popen:
    run, params = results / f"fold{fold}/shot5", json.dumps({"seeds": list(range(seeds))})
    argv = [
        sys.executable,
        "-m",
        "latentfss.cli",
        "--log-level",
        "WARNING",
        "evaluate",
        "--index",
        results / "dataset",
        "--model",
        run / "model.pt",
        "--bank",
        run / "bank",
        "--fold",
        fold,
        "--shot",
        5,
        "--out",
        out,
        "--params",
        params,
        "--threads",
        threads,
    ]
    return subprocess.Popen([str(a) for a in argv], stderr=subprocess.DEVNULL)


def wall(processes_in_turn: list[list]) -> float:
    """Seconds to run each group of processes together, the groups one after another."""
    start = time.perf_counter()
    for group in processes_in_turn:
        running = [start_job() for start_job in group]
        if any(p.wait() != 0 for p in running):
            raise SystemExit("evaluate failed")
    return time.perf_counter() - start


def main() -> None:
    parser = arguments(__doc__, results=True)
    parser.add_argument("--seeds", type=int, default=2, help="100 episodes per seed")
    args = parser.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:

        def job(fold, threads):
            return lambda: evaluate(
                args.results, fold, Path(tmp) / f"{fold}_{threads}", args.seeds, threads
            )

        in_turn = wall([[job(0, cores)], [job(1, cores)]])
        side_by_side = wall([[job(0, cores // 2), job(1, cores // 2)]])
    results = {
        "seeds": args.seeds,
        "in_turn_seconds": round(in_turn, 2),
        "side_by_side_seconds": round(side_by_side, 2),
        "saving": round(1 - side_by_side / in_turn, 3),
    }
    save(results, markdown, args.out, "side_by_side")


def markdown(r: dict) -> list[str]:
    cores = r["machine"]["cores"]
    return [
        "## Two jobs on a CPU-only machine (`bench/side_by_side.py`)",
        "",
        f"Machine: {describe(r['machine'])}. Two `latentfss evaluate` jobs (folds 0 and 1, "
        f"5-shot, {r['seeds']} x 100 episodes, process start included): one after the other "
        f"with {cores} threads each took {r['in_turn_seconds']} s, side by side with "
        f"{cores // 2} each {r['side_by_side_seconds']} s ({100 * r['saving']:.0f}% less). "
        "Hence the default profile holds GPU-type jobs to one at a time only where a GPU "
        "exists, and those jobs take one torch thread.",
        "",
    ]


if __name__ == "__main__":
    main()
