"""Backs docs/results.md, "Table 1: the default run": runs side by side with intervals.

Table 1 of several default runs side by side, with the test seeds' intervals: per fold and
shot the mIoU (mean over seeds) from each run's summary.csv, the 4-fold mean, its standard
error from the seeds' spread (miou_std / sqrt(seeds), combined over the folds), and each run's
difference from the first with a 95% interval (1.96 standard errors; test seeds alone, not
training runs).

    python bench/table1.py LABEL=results/synthetic [LABEL=OTHER/results/synthetic ...]

Writes bench/results/table1.json and .md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from record import arguments, describe, save

REPO = Path(__file__).resolve().parents[1]


def main_rows(results: Path) -> pd.DataFrame:
    """The main run's rows of summary.csv (the ablation rows left out), with each fold's seeds."""
    table = pd.read_csv(results / "summary.csv")
    if "remain" in table:
        table = table[table.fg & table.bg & table.mine & ~table.remain]
    seeds = [
        len(
            json.loads((results / f"fold{r.fold}/shot{r.shot}/eval/metrics.json").read_text())[
                "runs"
            ]
        )
        for r in table.itertuples()
    ]
    return table.assign(seeds=seeds)


def shot_summary(rows: pd.DataFrame) -> dict:
    """Per-fold mIoU, the 4-fold mean and its standard error over the test seeds."""
    variance = ((rows.miou_std**2) / rows.seeds).sum() / len(rows) ** 2
    return {
        "folds": rows.sort_values("fold").miou.round(1).tolist(),
        "mean": round(float(rows.miou.mean()), 2),
        "se": round(math.sqrt(variance), 2),
        "fbiou": round(float(rows.fbiou.mean()), 1),
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("runs", nargs="+", help="LABEL=results folder; the first is the reference")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        label, folder = item.split("=", 1)
        rows = main_rows(Path(folder))
        runs[label] = {shot: shot_summary(g) for shot, g in rows.groupby("shot")}
    first = next(iter(runs.values()))
    for summary in runs.values():
        for shot, s in summary.items():
            s["difference"] = round(s["mean"] - first[shot]["mean"], 2)
            s["interval95"] = round(1.96 * math.hypot(s["se"], first[shot]["se"]), 2)
    results = {"runs": runs}
    save(results, markdown, args.out, "table1")


def markdown(r: dict) -> list[str]:
    lines = [
        "## Table 1 of the default runs (`bench/table1.py`)",
        "",
        f"Machine: {describe(r['machine'])}. Each run's summary.csv: mIoU per fold (mean over "
        "test seeds), the 4-fold mean +- its standard error from the seeds' spread, and the "
        "difference from the first row with its 95% interval (test seeds alone; each row is "
        "one training run per fold).",
        "",
        "| run | shot | folds | mean +- se | difference | FB-IoU |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, summary in r["runs"].items():
        for shot, s in summary.items():
            folds = " / ".join(f"{m:.1f}" for m in s["folds"])
            lines.append(
                f"| {label} | {shot} | {folds} | {s['mean']:.1f} +- {s['se']:.2f} "
                f"| {s['difference']:+.1f} +- {s['interval95']:.1f} | {s['fbiou']:.1f} |"
            )
    return lines


if __name__ == "__main__":
    main()
