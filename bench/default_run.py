"""Backs docs/results.md, "What the default run costs": every rule's time and memory.

The default run rule by rule: each rule's jobs, their seconds and peak memory, from the
benchmarks.csv a `snakemake --cores 2` run writes (gathered from Snakemake's own benchmark
files), so that every stage, summaries and figures included, has a measured time.

    python bench/default_run.py [--results results/synthetic] [--wall SECONDS]
    python bench/default_run.py --run DIR [--commit HEAD] [-- SNAKEMAKE ARGUMENTS]

`--wall` is the run's wall-clock time, measured around the snakemake command. With `--run`, a
fresh clone of the commit in DIR runs `snakemake --cores 2` (and the arguments after --) as a
new user's would, with that clone's own code, and its wall time goes into the tables.
Writes bench/results/default_run.json and default_run.md (assembled into docs/benchmarks.md
by bench/report.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from record import arguments, describe, save, table

from latentfss import layout

REPO = Path(__file__).resolve().parents[1]


def by_rule(jobs: pd.DataFrame, rows=("main",)) -> pd.DataFrame:
    """Rows per rule, in the order the rules first ran: a job's benchmark file is named after
    its rule, then its wildcards (the row first, of `rows`)."""
    jobs = jobs[~jobs["job"].str.startswith("total")].copy()
    row = re.compile(rf"_({'|'.join(rows)})(_.*)?$")
    jobs["rule"] = jobs["job"].map(lambda job: row.sub("", job))
    table = jobs.groupby("rule", sort=False).agg(
        jobs=("job", "size"),
        seconds=("seconds", "sum"),
        longest=("seconds", "max"),
        peak_rss_mb=("max_rss_mb", "max"),
    )
    return table.reset_index()


def fresh_run(folder: Path, commit: str, extra: list[str]) -> dict:
    """Clone `commit` into `folder` and run `snakemake --cores 2 EXTRA` there with the clone's
    own latentfss (its src/ first on the path): the command, commit and wall seconds."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "-q", commit], check=True)
    path = os.pathsep.join(filter(None, [str(folder / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *extra]
    start = time.perf_counter()
    with open(folder / "run.log", "w") as log:
        subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=log, check=True)
    wall = time.perf_counter() - start
    head = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    shown = " ".join(["snakemake", *command[3:]])
    return {"command": shown, "commit": head, "wall_seconds": round(wall, 1)}


def main() -> None:
    parser = arguments(__doc__, results=True)
    parser.add_argument("--wall", type=float, help="the run's wall-clock seconds")
    parser.add_argument("--run", type=Path, help="a new folder: clone, run and time it there")
    parser.add_argument("--commit", default="HEAD", help="with --run: the commit to clone")
    parser.add_argument("snakemake", nargs="*", help="with --run: more snakemake arguments")
    args = parser.parse_args()
    if args.snakemake and not args.run:
        parser.error("snakemake arguments go with --run")
    run = {"wall_seconds": args.wall}
    if args.run:
        run = fresh_run(args.run, args.commit, args.snakemake)
        args.results = args.run / "results/synthetic"
    table = by_rule(pd.read_csv(args.results / layout.BENCHMARK_TABLE))
    results = {**run, "rules": table.round(1).to_dict(orient="records")}
    save(results, markdown, args.out, "default_run")


def markdown(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/results.md."""
    total = sum(rule["seconds"] for rule in r["rules"])
    wall = f"; wall {r['wall_seconds'] / 60:.1f} minutes" if r["wall_seconds"] else ""
    if "commit" in r:
        wall += f" (`{r['command']}`, {r['commit']})"
    lines = [
        "## The default run, rule by rule (`bench/default_run.py`)",
        "",
        f"Machine: {describe(r['machine'])}. {total / 60:.1f} job-minutes{wall}.",
        "",
    ]
    return lines + table(
        r["rules"],
        {
            "rule": "{rule}",
            "jobs": "{jobs}",
            "seconds (all jobs)": "{seconds}",
            "longest job s": "{longest}",
            "peak RSS (MB)": "{peak_rss_mb}",
        },
    )


if __name__ == "__main__":
    main()
