"""Backs docs/results.md, Tables 3 and 5: each row's paired difference and its interval.

Tables 3 and 5 of a finished run with training seeds (workflow/presets/table3.yaml,
table5.yaml): summarize's tables, each row's paired difference to its baseline with its 95%
interval and the interval's half-width (the episode count is chosen by it), and the job time
the rows took.

    python bench/ablations.py results/synthetic [--name table5]

Writes bench/results/{name}.json and .md (default name: ablations).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from record import arguments, describe, save

from latentfss.stages import summarize

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("results", type=Path, help="a run's results/{dataset} folder")
    parser.add_argument("--name", default="ablations", help="of the results files")
    args = parser.parse_args()
    paths = sorted(args.results.glob("fold*/shot*/eval/metrics.json"))
    paths += sorted(args.results.glob("variants/*/fold*/shot*/eval/metrics.json"))
    runs = summarize.read_metrics(paths)
    runs = runs[runs["shot"] == 1]
    tables = {}
    same = runs[~runs["remain"]]
    if "0000" in set(same["key"]):
        tables["Table 3"] = ("0000", summarize.table3(same), same)
    if {"0100", "1111"} <= set(runs["key"]):
        tables["Table 5"] = ("0100", summarize.table5(runs), runs)
        # and what Remain adds to the train set alone
        tables["Table 5, Remain"] = ("1110", "", runs[runs["key"].isin(["1110", "1111"])])
    jobs = pd.read_csv(args.results / "benchmarks.csv")
    variant_jobs = jobs[jobs["job"].str.contains("_train[0-9]+_", regex=True)]
    results = {
        "models": int(runs.groupby(["fold", "bg", "mine", "remain", "train_seed"]).ngroups),
        "train_seeds": sorted(runs["train_seed"].unique().tolist()),
        "episodes": int(len(pd.read_csv(runs["scores"].iloc[0]))),
        "variant_job_minutes": round(float(variant_jobs["seconds"].sum()) / 60, 1),
        "tables": {},
        # each row's mean over folds and test seeds, per training seed
        "seed_means": {
            key: {int(seed): round(float(m), 2) for seed, m in g.droplevel(0).items()}
            for key, g in runs.groupby(["key", "train_seed"])["miou"].mean().groupby(level=0)
        },
    }
    for name, (baseline, text, rows) in tables.items():
        diffs = summarize.differences(rows, baseline).reset_index()
        diffs["half_width"] = (diffs["high"] - diffs["low"]) / 2
        results["tables"][name] = {
            "baseline": baseline,
            "text": text,
            "differences": diffs.round(3).to_dict(orient="records"),
            "widest_half_width": round(float(diffs["half_width"].max()), 2),
        }
    save(results, report, args.out, args.name)


def report(r: dict) -> list[str]:
    lines = [
        f"## {' and '.join(n for n in r['tables'] if ',' not in n)} with training seeds "
        "(`bench/ablations.py`)",
        "",
        f"Machine: {describe(r['machine'])}. 1-shot, {r['models']} models (folds x rows' "
        f"models x training seeds {r['train_seeds']}), every row on the same "
        f"{r['episodes']} episodes per fold (the test seeds' lists together); "
        f"{r['variant_job_minutes']} job-minutes for the variants' jobs (two at a time on the "
        "cores). " + summarize.LEGEND,
    ]
    for name, t in r["tables"].items():
        if not t["text"]:  # a difference alone
            (d,) = (d for d in t["differences"] if d["run"] != t["baseline"])
            lines += [
                "",
                f"{name}: switches {d['run']} ({d['value']:.1f}) against {t['baseline']}: "
                f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] points.",
            ]
            continue
        lines += [
            "",
            f"{name} (baseline: switches {t['baseline']}); the widest interval is "
            f"+-{t['widest_half_width']:.2f} points.",
            "",
            t["text"],
        ]
    return lines


if __name__ == "__main__":
    main()
