"""The default run rule by rule: each rule's jobs, their seconds and peak memory, from the
benchmarks.csv a `snakemake --cores 2` run writes (gathered from Snakemake's own benchmark
files), so that every stage, summaries and figures included, has a measured time.

    python bench/default_run.py [--results results/synthetic] [--wall SECONDS]
        [--before OTHER/results/synthetic --before-wall SECONDS]

`--wall` is the run's wall-clock time, measured around the snakemake command; `--before` adds
each rule's seconds of another run (the code before a change, run in the same session). Writes
bench/results/default_run.json and default_run.md (assembled into BENCHMARKS.md by
bench/report.py).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
from record import describe, machine, save

REPO = Path(__file__).resolve().parents[1]


def by_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Rows per rule, in the order the rules first ran: a job's benchmark file is named after
    its rule, then its wildcards (fold, shot, ablation switches)."""
    jobs = jobs[~jobs["job"].str.startswith("total")].copy()
    jobs["rule"] = jobs["job"].map(lambda job: re.sub(r"_(fold|fg|bg)\d.*$", "", job))
    table = jobs.groupby("rule", sort=False).agg(
        jobs=("job", "size"),
        seconds=("seconds", "sum"),
        longest=("seconds", "max"),
        peak_rss_mb=("max_rss_mb", "max"),
    )
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results/synthetic")
    parser.add_argument("--wall", type=float, help="the run's wall-clock seconds")
    parser.add_argument("--before", type=Path, help="another run's results folder")
    parser.add_argument("--before-wall", type=float, help="that run's wall-clock seconds")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    table = by_rule(pd.read_csv(args.results / "benchmarks.csv"))
    results = {
        "machine": machine(),
        "wall_seconds": args.wall,
        "rules": table.round(1).to_dict(orient="records"),
    }
    if args.before:
        before = by_rule(pd.read_csv(args.before / "benchmarks.csv")).set_index("rule")
        results["before_wall_seconds"] = args.before_wall
        for rule in results["rules"]:
            rule["seconds_before"] = before["seconds"].round(1).get(rule["rule"])
    save(results, markdown(results), args.out, "default_run")


def markdown(r: dict) -> str:
    total = sum(rule["seconds"] for rule in r["rules"])
    wall = f"; the run took {r['wall_seconds'] / 60:.1f} minutes" if r["wall_seconds"] else ""
    if r.get("before_wall_seconds"):
        wall += (
            f"; the code before, run in the same session, {r['before_wall_seconds'] / 60:.1f} "
            f"(ratio {r['wall_seconds'] / r['before_wall_seconds']:.2f})"
        )
    before = "seconds_before" in r["rules"][0]
    lines = [
        "## The default run, rule by rule (`bench/default_run.py`)",
        "",
        f"Machine: {describe(r['machine'])}. `snakemake --cores 2` on a fresh clone, from the "
        "run's own `benchmarks.csv` (Snakemake's benchmark files: wall seconds and peak RSS of "
        f"each job, two jobs at a time sharing the 2 cores); {total / 60:.1f} job-minutes in "
        f"all{wall}. summarize and the inspect rules render tables and figures: they have no "
        "FLOP or byte floor worth the name. (Snakemake samples memory while a job runs: a job "
        "of under a second can show less than its real peak.)",
        "",
        "| rule | jobs | seconds (all jobs) | longest job s | peak RSS (MB) |"
        + (" seconds, the code before |" if before else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if before else ""),
    ]
    for rule in r["rules"]:
        was = rule.get("seconds_before")
        lines.append(
            f"| {rule['rule']} | {rule['jobs']} | {rule['seconds']} | "
            f"{rule['longest']} | {rule['peak_rss_mb']} |"
            + (f" {'-' if was is None else was} |" if before else "")
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
