"""Backs docs/results.md, "What the default run costs": every rule's time and memory.

    python bench/default_run.py [--results results/synthetic] [--wall SECONDS]
    python bench/default_run.py --run DIR [--commit HEAD] [-- SNAKEMAKE ARGUMENTS]

From the run's benchmarks.csv. Writes bench/results/default_run.json and .md.
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


def by_rule(results: Path) -> pd.DataFrame:
    """A run's jobs per rule, in the order the rules first ran. A job's benchmark file is named
    after its rule, then its wildcards, the row (a folder of the run) first."""
    jobs = pd.read_csv(results / layout.BENCHMARK_TABLE)
    jobs = jobs[~jobs["job"].str.startswith("total")]
    rows = "|".join(re.escape(p.name) for p in results.iterdir() if p.is_dir())
    rule = jobs["job"].str.replace(rf"_({rows})(_.*)?$", "", regex=True).rename("rule")
    table = jobs.groupby(rule, sort=False).agg(
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
    git = ["git", "-C", str(folder)]
    subprocess.run([*git, "checkout", "-q", commit], check=True)
    head = subprocess.check_output([*git, "rev-parse", "--short", "HEAD"], text=True).strip()
    path = os.pathsep.join(filter(None, [str(folder / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = ["snakemake", "--cores", "2", *extra]
    start = time.perf_counter()
    with open(folder / "run.log", "w") as log:
        python = [sys.executable, "-m", *command]
        subprocess.run(python, cwd=folder, env=env, stdout=log, stderr=log, check=True)
    wall = time.perf_counter() - start
    return {"command": " ".join(command), "commit": head, "wall_seconds": round(wall, 1)}


def main() -> None:
    parser = arguments(__doc__, results=True)
    parser.add_argument("--wall", type=float, help="the run's wall-clock seconds (of snakemake)")
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
    rules = by_rule(args.results).round(1).to_dict(orient="records")
    save({**run, "rules": rules}, markdown, args.out, "default_run")


def markdown(r: dict) -> list[str]:
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
