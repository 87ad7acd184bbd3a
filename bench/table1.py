"""Backs docs/results.md, "Table 1: the default run": runs side by side with intervals.

Table 1 of several default runs side by side: per fold and shot the mIoU (mean over test seeds)
from each run's summary.csv, the 4-fold mean and its standard error from the test seeds' spread
(miou_std / sqrt(seeds), combined over the folds), and each run's difference from the first
with a 95% interval (1.96 standard errors; test seeds alone). The runs named by --spread (the
default pipeline with other pipeline seeds) give the between-run spread of the 4-fold mean and
the range a further run falls in with 95% probability (the t prediction interval of one more
draw, mean +- t(n-1) sd sqrt(1 + 1/n)); every other run is checked against it.

    python bench/table1.py LABEL=results/synthetic [LABEL=OTHER/results/synthetic ...]
        [--spread LABEL LABEL LABEL]

Writes bench/results/table1.json and .md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from record import arguments, artifact, describe, save, table
from scipy import stats

from latentfss import layout
from latentfss.machine import describe_machine

REPO = Path(__file__).resolve().parents[1]


def main_rows(results: Path) -> pd.DataFrame:
    """Row main's lines of summary.csv, with each fold's seeds."""
    table = pd.read_csv(results / layout.SUMMARY_CSV)
    table = table[table.row == "main"]
    metrics = [
        json.loads(
            (artifact(results, layout.EVAL, fold=r.fold, shot=r.shot) / layout.METRICS).read_text()
        )
        for r in table.itertuples()
    ]
    return table.assign(
        seeds=[len(m["runs"]) for m in metrics],
        machine=[trained_on(m) for m in metrics],
    )


def trained_on(metrics: dict) -> str:
    return describe_machine(metrics["machine"]["train"])


def shot_summary(rows: pd.DataFrame) -> dict:
    """Per-fold mIoU, the 4-fold mean and its standard error over the test seeds."""
    variance = ((rows.miou_std**2) / rows.seeds).sum() / len(rows) ** 2
    return {
        "folds": rows.sort_values("fold").miou.round(1).tolist(),
        "mean": round(float(rows.miou.mean()), 3),
        "se": round(math.sqrt(variance), 2),
        "fbiou": round(float(rows.fbiou.mean()), 1),
    }


def between_runs(means: list[float]) -> dict:
    """The spread of n runs' means and the 95% prediction interval of one more run's."""
    n, mean, sd = len(means), float(np.mean(means)), float(np.std(means, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd * math.sqrt(1 + 1 / n)
    return {
        "runs": n,
        "mean": round(mean, 3),
        "sd": round(sd, 2),
        "bounds": (mean - half, mean + half),
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("runs", nargs="+", help="LABEL=results folder; the first is the reference")
    parser.add_argument("--spread", nargs="*", default=[], help="runs that give the range")
    args = parser.parse_args()
    labels = [item.split("=", 1)[0] for item in args.runs]
    if args.spread and (len(args.spread) < 2 or not set(args.spread) <= set(labels)):
        parser.error("--spread: two or more of the runs' labels")
    runs, machines = {}, {}
    for item in args.runs:
        label, folder = item.split("=", 1)
        rows = main_rows(Path(folder))
        runs[label] = {str(shot): shot_summary(g) for shot, g in rows.groupby("shot")}
        machines[label] = sorted(set(rows.machine))
    first = next(iter(runs.values()))
    for summary in runs.values():
        for shot, s in summary.items():
            s["difference"] = round(s["mean"] - first[shot]["mean"], 2)
            s["interval95"] = round(1.96 * math.hypot(s["se"], first[shot]["se"]), 2)
    results = {"runs": runs, "machines": machines}
    if args.spread:
        spread = {
            shot: between_runs([runs[label][shot]["mean"] for label in args.spread])
            for shot in first
        }
        for shot, s in spread.items():
            s["labels"] = args.spread
            s["folds"] = np.mean([runs[label][shot]["folds"] for label in args.spread], 0)
            s["folds"] = s["folds"].round(1).tolist()
            s["test_se"] = round(float(np.mean([runs[lb][shot]["se"] for lb in args.spread])), 2)
            low, high = s.pop("bounds")
            s["range95"] = [round(low, 1), round(high, 1)]
            s["inside"] = {
                label: low <= summary[shot]["mean"] <= high
                for label, summary in runs.items()
                if label not in args.spread
            }
        results["spread"] = spread
    save(results, markdown, args.out, "table1")


def markdown(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/results.md."""
    lines = ["## Table 1 of the default runs (`bench/table1.py`)", ""]
    lines += [f"Machine: {describe(r['machine'])}.", ""]
    rows = [
        {"label": label, "shot": shot, **s, "per_fold": " / ".join(f"{m:.1f}" for m in s["folds"])}
        for label, summary in r["runs"].items()
        for shot, s in summary.items()
    ]
    lines += table(
        rows,
        {
            "run": "{label}",
            "shot": "{shot}",
            "folds": "{per_fold}",
            "mean +- se": "{mean:.1f} +- {se:.2f}",
            "difference": "{difference:+.1f} +- {interval95:.1f}",
            "FB-IoU": "{fbiou:.1f}",
        },
    )
    lines += ["", *(f"- {label}: {'; '.join(m)}" for label, m in r.get("machines", {}).items())]
    if "spread" in r:
        spread = [
            {
                "shot": shot,
                **s,
                "per_fold": " / ".join(f"{m:.1f}" for m in s["folds"]),
                "inside_runs": ", ".join(
                    f"{k}: {'yes' if v else 'no'}" for k, v in s["inside"].items()
                ),
            }
            for shot, s in r["spread"].items()
        ]
        lines += ["", f"Between the runs {', '.join(spread[0]['labels'])}:", ""]
        lines += table(
            spread,
            {
                "shot": "{shot}",
                "folds": "{per_fold}",
                "mean": "{mean:.1f}",
                "sd between runs": "{sd:.2f}",
                "test-seed se": "{test_se:.2f}",
                "range95": "[{range95[0]:.1f}, {range95[1]:.1f}]",
                "inside": "{inside_runs}",
            },
        )
    return lines


if __name__ == "__main__":
    main()
