"""The results tables (rule summarize): mIoU per fold and shot with the mean, laid out like the
paper's Table 1, and inference speed and parameters like its Table 7."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from latentfss.errors import InputError
from latentfss.fs import atomic_file

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", nargs="+", type=Path, help="fold*/shot*/eval/metrics.json")
    parser.add_argument("--csv", required=True, type=Path, help="summary.csv to write")
    parser.add_argument("--md", required=True, type=Path, help="summary.md to write")
    parser.add_argument("--title", default="latentfss", help="row label (method, dataset)")


def read_metrics(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise InputError(
                f"{path}: missing or not valid JSON; run `latentfss evaluate`"
            ) from None
        rows.append({"shot": m["shot"], "fold": m["fold"], "miou": 100 * m["miou"],
                     "miou_std": 100 * m["miou_std"], "fbiou": 100 * m["fbiou"],
                     "episodes_per_s": m["episodes_per_s"], "parameters": m["parameters"],
                     "device": m["device"]})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["shot", "fold"]).reset_index(drop=True)


def table1(results: pd.DataFrame, title: str) -> str:
    """One row; per shot: fold columns then the mean (mIoU %, mean over seeds)."""
    header, rule, cells = ["Method"], ["---"], [title]
    for shot, group in results.groupby("shot"):
        for _, r in group.iterrows():
            header.append(f"{shot}-shot fold{r['fold']}")
            cells.append(f"{r['miou']:.1f}")
        header.append(f"{shot}-shot mean")
        cells.append(f"**{group['miou'].mean():.1f}**")
    rule += ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(row) + " |" for row in (header, rule, cells))


def table7(results: pd.DataFrame) -> str:
    lines = ["| shot | episodes/s (mean over folds) | FB-IoU mean | parameters | device |",
             "|---:|---:|---:|---:|---|"]  # fmt: skip
    for shot, g in results.groupby("shot"):
        lines.append(f"| {shot} | {g['episodes_per_s'].mean():.1f} | {g['fbiou'].mean():.1f} | "
                     f"{g['parameters'].iloc[0] / 1e6:.2f}M | {g['device'].iloc[0]} |")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    results = read_metrics(args.metrics)
    with atomic_file(args.csv) as tmp:
        results.to_csv(tmp, index=False, float_format="%.4f")
    text = (f"# Results: {args.title}\n\nMean IoU (%) of 1-way episodes on each fold's novel "
            "classes, mean over seeds (paper Table 1 layout).\n\n" + table1(results, args.title)
            + "\n\nPer fold and shot, with the spread over seeds and FB-IoU: see summary.csv.\n\n"
            "## Speed (paper Table 7 layout)\n\n" + table7(results) + "\n")  # fmt: skip
    with atomic_file(args.md) as tmp:
        tmp.write_text(text)
    log.info("summary of %d runs -> %s, %s", len(results), args.csv, args.md)
