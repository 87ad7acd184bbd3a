"""Backs docs/results.md, "Tables 1, 3 and 5: every row in one run": paired differences.

    python bench/ablations.py results/synthetic --reference none [--rows none fg ...]
        [--shot 1] [--name table5]

A run's rows against --reference and per training seed, and its job time. Writes
bench/results/{name}.json and .md (default name: ablations).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from default_run import by_rule
from record import arguments, describe, save

from latentfss import layout
from latentfss.stages import summarize


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("results", type=Path, help="a run's results/{dataset} folder")
    parser.add_argument("--reference", required=True, help="the row the others are compared with")
    parser.add_argument("--rows", nargs="*", help="the rows of the table, in order (default: all)")
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--name", default="ablations", help="the results files' name")
    args = parser.parse_args()
    rows = args.rows or sorted(p.name for p in args.results.iterdir() if p.is_dir())
    run, pattern = args.results, f"{layout.EVAL}/{layout.METRICS}"
    evaluations = [  # ROW=METRICS of every evaluation of the rows, in their order
        f"{row}={path}"
        for row in rows
        for path in sorted(run.glob(pattern.format(row=row, tseed="*", fold="*", shot="*")))
    ]
    runs = summarize.read_metrics(evaluations)
    runs = runs[runs["shot"] == args.shot]
    diffs = summarize.differences(runs, args.reference).reset_index()
    diffs["half_width"] = (diffs["high"] - diffs["low"]) / 2
    rules = by_rule(args.results)
    seed_means = runs.groupby(["row", "train_seed"])["miou"].mean()
    results = {
        "reference": args.reference,
        "models": int(runs["model"].nunique()),
        "train_seeds": sorted(runs["train_seed"].unique().tolist()),
        "episodes": int(len(pd.read_csv(runs["scores"].iloc[0]))),
        "job_minutes": round(float(rules["seconds"].sum()) / 60, 1),
        "rules": {
            r.rule: {"jobs": int(r.jobs), "minutes": round(r.seconds / 60, 1)}
            for r in rules.itertuples()
        },
        "table": summarize.rows_table(runs, args.reference),
        "differences": diffs.round(3).to_dict(orient="records"),
        "widest_half_width": round(float(diffs["half_width"].max()), 2),
        # each row's mean over folds and test seeds, per training seed
        "seed_means": {
            row: {int(seed): round(float(m), 2) for (_, seed), m in g.items()}
            for row, g in seed_means.groupby(level=0)
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
