"""Backs docs/results.md, "Tables 1, 3 and 5: every row in one run": paired differences.

The rows of a finished run with training seeds (workflow/presets/table1/3/5.yaml, together):
summarize's table of the rows asked for, each row's paired difference to the reference row
with its 95% interval and the interval's half-width (the episode count is chosen by it), each
row's mean per training seed, and the job time the run took.

    python bench/ablations.py results/synthetic --reference none [--rows none fg ...]
        [--shot 1] [--name table5]

Writes bench/results/{name}.json and .md (default name: ablations).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from default_run import by_rule
from record import arguments, describe, save

from latentfss import layout
from latentfss.stages import summarize


def evaluations(results: Path, rows: list[str] | None) -> list[str]:
    """`ROW=METRICS` of every evaluation in the run's row folders (`rows`: those only)."""
    pattern = layout.EVAL.format(row="*", tseed="*", fold="*", shot="*") + "/" + layout.METRICS
    found = sorted(results.glob(pattern))
    named = [f"{p.relative_to(results).parts[0]}={p}" for p in found]
    return [e for e in named if rows is None or e.split("=", 1)[0] in rows]


def rows(results: Path) -> list[str]:
    """The run's row folders, the longest name first (a benchmark file names its row)."""
    return sorted((p.name for p in results.iterdir() if p.is_dir()), key=len, reverse=True)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("results", type=Path, help="a run's results/{dataset} folder")
    parser.add_argument("--reference", required=True, help="the row the others are compared with")
    parser.add_argument("--rows", nargs="*", help="the rows of the table, in order (all)")
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--name", default="ablations", help="of the results files")
    args = parser.parse_args()
    runs = summarize.read_metrics(evaluations(args.results, args.rows))
    runs = runs[runs["shot"] == args.shot]
    if args.rows:  # the table in the order asked for
        runs = runs.assign(order=runs["row"].map(args.rows.index)).sort_values(
            "order", kind="stable"
        )
    diffs = summarize.differences(runs, args.reference).reset_index()
    diffs["half_width"] = (diffs["high"] - diffs["low"]) / 2
    jobs = pd.read_csv(args.results / layout.BENCHMARK_TABLE)
    results = {
        "reference": args.reference,
        "models": int(runs["model"].nunique()),
        "train_seeds": sorted(runs["train_seed"].unique().tolist()),
        "episodes": int(len(pd.read_csv(runs["scores"].iloc[0]))),
        "job_minutes": round(float(jobs["seconds"].iloc[:-1].sum()) / 60, 1),
        # per rule over every row of the run: its jobs and their minutes
        "rules": {
            r.rule: {"jobs": int(r.jobs), "minutes": round(r.seconds / 60, 1)}
            for r in by_rule(jobs, rows(args.results)).itertuples()
        },
        "table": summarize.rows_table(runs, args.reference),
        "differences": diffs.round(3).to_dict(orient="records"),
        "widest_half_width": round(float(diffs["half_width"].max()), 2),
        # each row's mean over folds and test seeds, per training seed
        "seed_means": {
            row: {int(seed): round(float(m), 2) for seed, m in g.droplevel(0).items()}
            for row, g in runs.groupby(["row", "train_seed"])["miou"].mean().groupby(level=0)
        },
    }
    save(results, report, args.out, args.name)


def report(r: dict) -> list[str]:
    rules = ", ".join(f"{k}: {v['jobs']} in {v['minutes']}" for k, v in r["rules"].items())
    return [
        f"## Rows against {r['reference']} with training seeds (`bench/ablations.py`)",
        "",
        f"Machine: {describe(r['machine'])}. {r['models']} models (folds x rows' models x "
        f"training seeds {r['train_seeds']}), every row on the same {r['episodes']} episodes "
        f"per fold (the test seeds' lists together); {r['job_minutes']} job-minutes in all "
        f"({rules}). "
        f"The widest interval is +-{r['widest_half_width']:.2f} points. " + summarize.LEGEND,
        "",
        r["table"],
    ]


if __name__ == "__main__":
    main()
