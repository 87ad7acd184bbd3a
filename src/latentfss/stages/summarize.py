"""The results tables (rule summarize): mIoU per fold and shot with the mean, laid out like the
paper's Table 1; with ablation runs, one row per set of switches like its Table 3, and its
Table 5 when the full method ran with and without Remain; inference speed and parameters like
its Table 7."""

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
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        type=Path,
        help="metrics.json of the other runs (Table 3 and 5 rows, other training seeds)",
    )
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
        rows.append(
            {
                "shot": m["shot"],
                "fold": m["fold"],
                "fg": m["evaluate"]["fg_rectify"],
                "bg": m["model_config"]["bg_rectify"],
                "mine": m["model_config"]["mine"],
                "remain": m.get("mining", {}).get("remain", False),  # older runs: none
                "miou": 100 * m["miou"],
                "miou_std": 100 * m["miou_std"],
                "fbiou": 100 * m["fbiou"],
                "episodes_per_s": m["episodes_per_s"],
                "model_episodes_per_s": m.get("model_episodes_per_s"),  # older: none
                "parameters": m["parameters"],
                "device": m["device"],
            }
        )
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


SWITCHES = {"fg": "FG", "bg": "BG", "mine": "Mine"}
TABLE5 = {
    "None": (False, True, False, False),
    "Trainset": (True, True, True, False),
    "Trainset + Remain": (True, True, True, True),
}  # (fg, bg, mine, remain)


def _row(group: pd.DataFrame, folds: list[int]) -> str:
    """The fold cells and the bold mean of one row's runs (mIoU %)."""
    miou = group.set_index("fold")["miou"]
    cells = [f"{miou[f]:.1f}" if f in miou else "–" for f in folds]
    return f"{' | '.join(cells)} | **{miou.mean():.1f}** |"


def table3(results: pd.DataFrame) -> str:
    """One row per set of switches and shot, in the paper's order: fewest switches first."""
    folds = sorted(results["fold"].unique())
    lines = [
        "| FG | BG | Mine | shot | " + " | ".join(f"fold{f}" for f in folds) + " | Mean |",
        "|:-:|:-:|:-:|---:|" + "---:|" * (len(folds) + 1),
    ]
    rows = results.groupby(["shot", *SWITCHES])
    order = sorted(rows.groups, key=lambda k: (k[0], sum(k[1:]), [not s for s in k[1:]]))
    for key in order:
        marks = ["✓" if on else "" for on in key[1:]]
        lines.append(f"| {' | '.join(marks)} | {key[0]} | {_row(rows.get_group(key), folds)}")
    return "\n".join(lines)


def table5(results: pd.DataFrame) -> str:
    """The paper's Table 5 rows that ran, per shot: None, Trainset, Trainset + Remain."""
    folds = sorted(results["fold"].unique())
    lines = [
        "| Unlabeled source | shot | " + " | ".join(f"fold{f}" for f in folds) + " | Mean |",
        "|---|---:|" + "---:|" * (len(folds) + 1),
    ]
    for shot, runs in results.groupby("shot"):
        switches = runs[["fg", "bg", "mine", "remain"]].apply(tuple, axis=1)
        for name, key in TABLE5.items():
            if (switches == key).any():
                lines.append(f"| {name} | {shot} | {_row(runs[switches == key], folds)}")
    return "\n".join(lines)


def table7(results: pd.DataFrame) -> str:
    """The paper's speed: one episode at a time, nothing cached; beside it the throughput of
    the evaluation jobs, which encode each image once (means over folds)."""
    lines = [
        "| shot | episodes/s, one at a time | episodes/s, evaluation job | FB-IoU mean | "
        "parameters | device |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for shot, g in results.groupby("shot"):
        lines.append(
            f"| {shot} | {g['model_episodes_per_s'].astype(float).mean():.1f} | "
            f"{g['episodes_per_s'].mean():.1f} | {g['fbiou'].mean():.1f} | "
            f"{g['parameters'].iloc[0] / 1e6:.2f}M | {g['device'].iloc[0]} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    results = read_metrics(args.metrics)
    runs = pd.concat([results, read_metrics(args.variants)]) if args.variants else results
    with atomic_file(args.csv) as tmp:
        runs.to_csv(tmp, index=False, float_format="%.4f")
    text = (
        f"# Results: {args.title}\n\nMean IoU (%) of 1-way episodes on each fold's novel "
        "classes, mean over seeds (paper Table 1 layout).\n\n"
        + table1(results, args.title)
        + "\n\nPer fold and shot, with the spread over seeds and FB-IoU: see summary.csv.\n\n"
    )
    # Table 3: the runs that mine what the main run mines (remain is moot without mining)
    same = runs[(runs["remain"] == results["remain"].iloc[0]) | ~runs["mine"]]
    if len(same) > len(results):
        text += (
            "## Ablations (paper Table 3 layout)\n\nmIoU (%) with each component on (✓) or "
            "off. FG: foreground rectification (Eq. 8-9); BG: global background prototype "
            "(Eq. 6-7); Mine: the mining branch (Eq. 1).\n\n" + table3(same) + "\n\n"
        )
    full = runs["fg"] & runs["bg"] & runs["mine"]
    if (full & runs["remain"]).any() and (full & ~runs["remain"]).any():
        text += (
            "## Sources of unlabelled data (paper Table 5 layout)\n\nmIoU (%). None: BG "
            "rectification alone; Trainset: the full method, mining the fold's train set; "
            "Trainset + Remain: mining the train images without a large base class too.\n\n"
            + table5(runs)
            + "\n\n"
        )
    text += "## Speed (paper Table 7 layout)\n\n" + table7(results) + "\n"
    with atomic_file(args.md) as tmp:
        tmp.write_text(text)
    log.info(
        "summary of %d runs (+%d ablation runs) -> %s, %s",
        len(results),
        len(runs) - len(results),
        args.csv,
        args.md,
    )
