"""The results table (rule summarize): one table of every row of the run (`runs:`), its mIoU
per fold and shot with the mean, laid out like the paper's Tables 1 and 3; each row's
difference to the reference row with its paired 95% interval (`latentfss.intervals`); what
each row overrides and whose work it shares; inference speed and parameters like the paper's
Table 7. Every value is a mean over training seeds and test seeds, given with both spreads."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from latentfss import layout
from latentfss.errors import InputError
from latentfss.fs import atomic_file
from latentfss.intervals import paired_differences
from latentfss.machine import describe_machine

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "evaluations",
        nargs="+",
        metavar="ROW=METRICS",
        help="a row's name and the metrics.json of one of its evaluations",
    )
    parser.add_argument(
        "--rows",
        default="{}",
        help="JSON: each row's overrides and the rows whose work it shares (latentfss.runs)",
    )
    parser.add_argument("--reference", help="the row the others are compared with (the first)")
    parser.add_argument("--csv", required=True, type=Path, help="summary.csv to write")
    parser.add_argument("--md", required=True, type=Path, help="summary.md to write")
    parser.add_argument("--title", default="latentfss", help="what was run (method, dataset)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path}: missing or not valid JSON; run `latentfss evaluate`") from None


def read_metrics(evaluations: list[str]) -> pd.DataFrame:
    """`ROW=METRICS` strings -> one row per evaluation: its row, training seed, fold, shot, mIoU
    per test seed (list) and the rest."""
    rows = []
    for evaluation in evaluations:
        row, sep, path = evaluation.partition("=")
        if not sep:
            raise InputError(f"{evaluation}: expected ROW=METRICS (a row's name, a metrics.json)")
        m, scores = _read_json(Path(path)), Path(path).with_name(layout.SCORES)
        if not scores.is_file():
            raise InputError(f"{scores}: missing; run `latentfss evaluate` again")
        rows.append(
            {
                "row": row,
                "shot": m["shot"],
                "fold": m["fold"],
                "train_seed": m["train_seed"],
                "lists": {name: 100 * r["miou"] for name, r in m["runs"].items()},
                "miou": 100 * m["miou"],
                "fbiou": 100 * m["fbiou"],
                "episodes_per_s": m["episodes_per_s"],
                "model_episodes_per_s": m["model_episodes_per_s"],
                "parameters": m["parameters"],
                "device": m["device"],
                "model": m["model"],
                **{f"{stage}_machine": describe_machine(r) for stage, r in m["machine"].items()},
                "scores": scores,
            }
        )
    return pd.DataFrame(rows)


def _lists(runs: pd.DataFrame) -> pd.DataFrame:
    """runs -> one row per (evaluation, list): its mIoU."""
    keys = ["row", "shot", "fold", "train_seed"]
    per_list = runs[keys].join(pd.DataFrame(runs["lists"].tolist(), index=runs.index))
    return per_list.melt(id_vars=keys, var_name="list", value_name="miou")


def per_fold(runs: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: per row, shot and fold, the mIoU (mean over training seeds and lists), its
    spread over training seeds (of each model's mean over lists) and over lists (of the mean
    over training seeds), FB-IoU and speed (means over training seeds)."""
    keys = ["row", "shot", "fold"]
    table = runs.groupby(keys, sort=False).agg(
        miou=("miou", "mean"),
        miou_train_std=("miou", "std"),
        train_seeds=("train_seed", "nunique"),
        fbiou=("fbiou", "mean"),
        episodes_per_s=("episodes_per_s", "mean"),
        model_episodes_per_s=("model_episodes_per_s", "mean"),
        parameters=("parameters", "first"),
        device=("device", "first"),
    )
    lists = _lists(runs).groupby([*keys, "list"])["miou"].mean()
    table.insert(1, "miou_std", lists.groupby(keys).std())
    return table.reset_index()


def row_spreads(runs: pd.DataFrame) -> pd.DataFrame:
    """Per row: the spread of its fold mean over training seeds (each seed's mean over folds
    and lists) and over lists (each list's mean over folds and seeds)."""
    seeds = runs.groupby(["row", "train_seed"])["miou"].mean()
    lists = _lists(runs).groupby(["row", "list"])["miou"].mean()
    return pd.DataFrame({"train": seeds.groupby("row").std(), "test": lists.groupby("row").std()})


def differences(runs: pd.DataFrame, reference: str) -> pd.DataFrame | None:
    """One shot's runs -> each row's mIoU difference to `reference` with its paired 95%
    confidence interval (`intervals.paired_differences`), in points; None, said in one line,
    when the rows were not scored on the same episodes."""
    scores = pd.concat(
        pd.read_csv(r.scores).assign(run=r.row, fold=r.fold, train_seed=r.train_seed)
        for r in runs.itertuples()
    )
    try:
        return 100 * paired_differences(scores, reference)
    except ValueError as e:
        log.warning("no intervals: %s", e)
        return None


def _spread(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.1f}"


def _difference(d) -> str:
    """Δ [low, high], bold where the interval excludes 0."""
    text = f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
    return f"**{text}**" if d["low"] > 0 or d["high"] < 0 else text


def rows_table(runs: pd.DataFrame, reference: str) -> str:
    """Every row, per shot: fold cells, the bold mean, its spreads over training and test seeds
    and the paired difference to the `reference` row with its 95% interval."""
    folds = sorted(runs["fold"].unique())
    columns = ["Row", "shot", *(f"fold{f}" for f in folds), "Mean", "sd train", "sd test", "Δ"]
    lines = ["| " + " | ".join(columns) + " |", "|:--|" + "---:|" * (len(columns) - 1)]
    for shot, ran in runs.groupby("shot"):
        diffs = differences(ran, reference)
        mious = per_fold(ran).set_index(["row", "fold"])["miou"]
        spreads = row_spreads(ran)
        for row in ran["row"].unique():
            miou = mious.loc[row]
            cells = [row, str(shot), *(f"{miou[f]:.1f}" if f in miou else "–" for f in folds)]
            cells += [f"**{miou.mean():.1f}**", *map(_spread, spreads.loc[row])]
            if row == reference:
                cells.append("reference")
            else:
                cells.append("–" if diffs is None else _difference(diffs.loc[row]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = (
    "Mean: over folds, training seeds and test seeds. sd train, sd test: the sample standard "
    "deviation of the mean over the training seeds and over the test seeds. Δ: the difference "
    "to the reference row, paired (the same episode lists), with its 95% bootstrap interval "
    "(episodes resampled within each fold and test seed, training seeds within each fold); "
    "bold where the interval excludes 0."
)


def rows_described(rows: dict) -> str:
    """What each row overrides, and the rows whose work it uses where not its own."""
    lines = ["| Row | overrides | uses the work of |", "|:--|:--|:--|"]
    for name, row in rows.items():
        overrides = ", ".join(f"{k}: {json.dumps(v)}" for k, v in row["overrides"].items())
        shared = [f"{level}: {owner}" for level, owner in row["shares"].items() if owner]
        others = ", ".join(s for s in shared if not s.endswith(f": {name}"))
        lines.append(f"| {name} | {overrides or '–'} | {others or '–'} |")
    return "\n".join(lines)


def table7(runs: pd.DataFrame) -> str:
    """The paper's speed: one episode at a time, nothing cached; beside it the throughput of
    the evaluation jobs, which encode each image once (means over folds)."""
    lines = [
        "| shot | episodes/s, one at a time | episodes/s, evaluation job | FB-IoU mean | "
        "parameters | device |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for shot, g in runs.groupby("shot"):
        lines.append(
            f"| {shot} | {g['model_episodes_per_s'].mean():.1f} | "
            f"{g['episodes_per_s'].mean():.1f} | {g['fbiou'].mean():.1f} | "
            f"{g['parameters'].iloc[0] / 1e6:.2f}M | {g['device'].iloc[0]} |"
        )
    return "\n".join(lines)


def machines(runs: pd.DataFrame) -> str:
    """Where the models were trained and evaluated: each machine (CPU, vector extensions, torch,
    oneDNN, torch threads) with its number of models and of evaluations. Float sums run in an
    order of the machine's and the threads', so two runs that differ there may differ in their
    results."""
    lines = []
    for stage, name, jobs, kind in (
        ("train", "training", runs.drop_duplicates("model"), "model"),  # rows share models
        ("evaluate", "evaluation", runs.drop_duplicates("scores"), "evaluation"),
    ):
        for text, count in jobs[f"{stage}_machine"].value_counts().items():
            lines.append(f"- {name}: {text} ({count} {kind}{'s' if count > 1 else ''})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    runs = read_metrics(args.evaluations)
    reference = args.reference or runs["row"].iloc[0]
    if reference not in set(runs["row"]):
        raise InputError(f"--reference: {reference!r} is not a row of the evaluations given")
    with atomic_file(args.csv) as tmp:
        per_fold(runs).to_csv(tmp, index=False, float_format="%.4f")
    text = (
        f"# Results: {args.title}\n\nMean IoU (%) of 1-way episodes on each fold's novel "
        f"classes, every row on the same episode lists; reference row: {reference}. "
        + LEGEND
        + "\n\n"
        + rows_table(runs, reference)
        + "\n\nPer fold, shot and row, with FB-IoU: see summary.csv.\n\n"
    )
    rows = json.loads(args.rows)
    if rows:
        text += "## Rows\n\n" + rows_described(rows) + "\n\n"
    text += f"## Speed of {reference} (paper Table 7 layout)\n\n"
    text += table7(runs[runs["row"] == reference]) + "\n\n"
    text += "## Machine\n\n" + machines(runs) + "\n"
    with atomic_file(args.md) as tmp:
        tmp.write_text(text)
    log.info(
        "summary of %d rows, %d evaluations -> %s, %s",
        runs["row"].nunique(),
        len(runs),
        args.csv,
        args.md,
    )
