"""Backs docs/results.md, "Table 1: the default run": runs side by side with intervals.

    python bench/table1.py LABEL=results/synthetic [LABEL=OTHER/results/synthetic ...]
        [--spread LABEL LABEL LABEL]

The runs named by --spread (the default with other pipeline seeds) give the range a further
run falls in. Writes bench/results/table1.json and .md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from record import arguments, describe, save, table
from scipy import stats

from latentfss import layout
from latentfss.machine import describe_machine


def main_rows(results: Path) -> pd.DataFrame:
    """Row main's lines of summary.csv, with their test seeds' count and training machine."""
    rows = pd.read_csv(results / layout.SUMMARY_CSV).query("row == 'main'")
    metrics = [
        json.loads((first_seed(results, r.fold, r.shot) / layout.METRICS).read_text())
        for r in rows.itertuples()
    ]
    return rows.assign(
        seeds=[len(m["runs"]) for m in metrics],
        machine=[describe_machine(m["machine"]["train"]) for m in metrics],
    )


def first_seed(results: Path, fold: int, shot: int) -> Path:
    """Row main's evaluation of the run's lowest training seed (a run may train seed 1 alone)."""
    found = results.glob(layout.EVAL.format(row="main", tseed="*", fold=fold, shot=shot))
    seeds = {int(p.relative_to(results).parts[1].removeprefix("train")): p for p in found}
    if not seeds:
        raise SystemExit(f"{results}: no evaluation of row main, fold {fold}, {shot}-shot")
    return seeds[min(seeds)]


def shot_summary(rows: pd.DataFrame) -> dict:
    """Per-fold mIoU, the 4-fold mean and its standard error over the test seeds."""
    variance = ((rows.miou_std**2) / rows.seeds).sum() / len(rows) ** 2
    return {
        "folds": rows.sort_values("fold").miou.round(1).tolist(),
        "mean": round(float(rows.miou.mean()), 3),
        "se": round(math.sqrt(variance), 2),
        "fbiou": round(float(rows.fbiou.mean()), 1),
    }


def spread(runs: dict, labels: list[str], shot: str) -> dict:
    """The spread of the `labels` runs' means and the 95% prediction interval of one more run's
    (t with n - 1 degrees of freedom), with whether each other run falls in it."""
    of = [runs[label][shot] for label in labels]
    means = [s["mean"] for s in of]
    n, mean, sd = len(means), float(np.mean(means)), float(np.std(means, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd * math.sqrt(1 + 1 / n)
    low, high = mean - half, mean + half
    return {
        "runs": n,
        "mean": round(mean, 3),
        "sd": round(sd, 2),
        "labels": labels,
        "folds": np.mean([s["folds"] for s in of], 0).round(1).tolist(),
        "test_se": round(float(np.mean([s["se"] for s in of])), 2),
        "range95": [round(low, 1), round(high, 1)],
        "inside": {
            label: low <= summary[shot]["mean"] <= high
            for label, summary in runs.items()
            if label not in labels
        },
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("runs", nargs="+", help="LABEL=results folder; the first is the reference")
    parser.add_argument("--spread", nargs="*", default=[], help="runs that give the range")
    args = parser.parse_args()
    folders = dict(item.split("=", 1) for item in args.runs)
    if args.spread and (len(args.spread) < 2 or not set(args.spread) <= set(folders)):
        parser.error("--spread: two or more of the runs' labels")
    rows = {label: main_rows(Path(folder)) for label, folder in folders.items()}
    runs = {
        label: {str(shot): shot_summary(g) for shot, g in r.groupby("shot")}
        for label, r in rows.items()
    }
    first = next(iter(runs.values()))
    for summary in runs.values():
        for shot, s in summary.items():  # against the first run, from the test seeds alone
            s["difference"] = round(s["mean"] - first[shot]["mean"], 2)
            s["interval95"] = round(1.96 * math.hypot(s["se"], first[shot]["se"]), 2)
    results = {"runs": runs, "machines": {k: sorted(set(r.machine)) for k, r in rows.items()}}
    if args.spread:
        results["spread"] = {shot: spread(runs, args.spread, shot) for shot in first}
    save(results, markdown, args.out, "table1")


def fold_columns(count: int) -> dict[str, str]:
    """Each fold's mIoU, a column each."""
    folds = range(count)
    return {" | ".join(f"fold{f}" for f in folds): " | ".join(f"{{folds[{f}]:.1f}}" for f in folds)}


def markdown(r: dict) -> list[str]:
    lines = ["## Table 1 of the default runs (`bench/table1.py`)", ""]
    lines += [f"Machine: {describe(r['machine'])}.", ""]
    rows = [
        {"label": label, "shot": shot, **s}
        for label, summary in r["runs"].items()
        for shot, s in summary.items()
    ]
    lines += table(
        rows,
        {
            "run": "{label}",
            "shot": "{shot}",
            **fold_columns(len(rows[0]["folds"])),
            "mean +- se": "{mean:.1f} +- {se:.2f}",
            "difference": "{difference:+.1f} +- {interval95:.1f}",
            "FB-IoU": "{fbiou:.1f}",
        },
    )
    lines += ["", *(f"- {label}: {'; '.join(m)}" for label, m in r["machines"].items())]
    if "spread" in r:
        spread = [{"shot": shot, **s} for shot, s in r["spread"].items()]
        for s in spread:
            outside = [label for label, inside in s["inside"].items() if not inside]
            s["outside"] = ", ".join(outside) or "none"
        lines += ["", f"Between the runs {', '.join(spread[0]['labels'])}:", ""]
        lines += table(
            spread,
            {
                "shot": "{shot}",
                **fold_columns(len(spread[0]["folds"])),
                "mean": "{mean:.1f}",
                "sd between runs": "{sd:.2f}",
                "test-seed se": "{test_se:.2f}",
                "range95": "[{range95[0]:.1f}, {range95[1]:.1f}]",
                "other runs outside it": "{outside}",
            },
        )
    return lines


if __name__ == "__main__":
    main()
