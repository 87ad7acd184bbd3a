"""The results tables (rule summarize): mIoU per fold and shot with the mean, laid out like the
paper's Table 1; with variant runs, one row per set of switches like its Table 3, and its
Table 5 when the full method ran with and without Remain; inference speed and parameters like
its Table 7. Every value is a mean over training seeds and test seeds, given with both spreads;
a Table 3 or 5 row's difference to its baseline row comes with its paired 95% interval
(`latentfss.intervals`)."""

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


SWITCHES = ["fg", "bg", "mine", "remain"]
ROW = ["shot", *SWITCHES]  # a table row: its shot and switches


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path}: missing or not valid JSON; run `latentfss evaluate`") from None


def read_metrics(paths: list[Path]) -> pd.DataFrame:
    """One row per metrics.json (a model's evaluation): its row's switches, training seed,
    mIoU per test seed (list) and the rest."""
    rows = []
    for path in paths:
        m = _read_json(path)
        rows.append(
            {
                "shot": m["shot"],
                "fold": m["fold"],
                "fg": m["evaluate"]["fg_rectify"],
                "bg": m["model_config"]["bg_rectify"],
                "mine": m["model_config"]["mine"],
                "remain": m.get("mining", {}).get("remain", False),  # older runs: none
                "train_seed": m.get("train_seed", 0),  # older runs: none
                "lists": {name: 100 * r["miou"] for name, r in m["runs"].items()},
                "miou": 100 * m["miou"],
                "fbiou": 100 * m["fbiou"],
                "episodes_per_s": m["episodes_per_s"],
                "model_episodes_per_s": m.get("model_episodes_per_s")
                or float("nan"),  # older: none
                "parameters": m["parameters"],
                "device": m["device"],
                "model": m["model"],
                **{
                    f"{stage}_machine": describe_machine(record) if record else "not recorded"
                    for stage, record in m.get("machine", {"train": None, "evaluate": None}).items()
                },
                "scores": path.with_name(layout.SCORES),
            }
        )
    runs = pd.DataFrame(rows)
    runs["key"] = runs[SWITCHES].astype(int).astype(str).agg("".join, axis=1)  # e.g. '1110'
    return runs


def _lists(runs: pd.DataFrame) -> pd.DataFrame:
    """runs -> one row per (run, list): its mIoU."""
    keys = [*ROW, "key", "fold", "train_seed"]
    per_list = runs[keys].join(pd.DataFrame(runs["lists"].tolist(), index=runs.index))
    return per_list.melt(id_vars=keys, var_name="list", value_name="miou")


def per_fold(runs: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: per row and fold, the mIoU (mean over training seeds and lists), its spread
    over training seeds (of each model's mean over lists) and over lists (of the mean over
    training seeds), FB-IoU and speed (means over training seeds)."""
    keys = [*ROW, "fold"]
    groups = runs.groupby(keys)
    table = groups.agg(
        key=("key", "first"),
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
    table.insert(2, "miou_std", lists.groupby(keys).std())
    return table.reset_index()


def row_spreads(runs: pd.DataFrame) -> pd.DataFrame:
    """Per table row (shot, key): the spread of its fold mean over training seeds (each seed's
    mean over folds and lists) and over lists (each list's mean over folds and seeds)."""
    row = ["shot", "key"]
    seeds = runs.groupby([*row, "train_seed"])["miou"].mean()
    lists = _lists(runs).groupby([*row, "list"])["miou"].mean()
    return pd.DataFrame({"train": seeds.groupby(row).std(), "test": lists.groupby(row).std()})


def differences(runs: pd.DataFrame, baseline: str) -> pd.DataFrame | None:
    """One shot's runs -> each row's (key) mIoU difference to `baseline` with its paired 95%
    confidence interval (`intervals.paired_differences`), in points; None, said in one line,
    when a run has no scores.csv (evaluated before it) or the rows were not scored on the same
    episodes."""
    if not runs["scores"].map(Path.is_file).all():
        log.warning("no intervals: a run has no %s (evaluated before it)", layout.SCORES)
        return None
    scores = pd.concat(
        pd.read_csv(r.scores).assign(run=r.key, fold=r.fold, train_seed=r.train_seed)
        for r in runs.itertuples()
    )
    try:
        return 100 * paired_differences(scores, baseline)
    except ValueError as e:
        log.warning("no intervals: %s", e)
        return None


def table1(main: pd.DataFrame, title: str) -> str:
    """One row; per shot: fold columns then the mean (mIoU %, mean over training and test
    seeds); below it, the mean's spreads."""
    header, rule, cells = ["Method"], ["---"], [title]
    for shot, group in per_fold(main).groupby("shot"):
        for _, r in group.iterrows():
            header.append(f"{shot}-shot fold{r['fold']}")
            cells.append(f"{r['miou']:.1f}")
        header.append(f"{shot}-shot mean")
        cells.append(f"**{group['miou'].mean():.1f}**")
    rule += ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(row) + " |" for row in (header, rule, cells)] + [""]
    for (shot, _), spread in row_spreads(main).iterrows():
        lines.append(
            f"- {shot}-shot mean: standard deviation {_spread(spread.test)} over the test seeds, "
            f"{_spread(spread.train)} over the training seeds ({main['train_seed'].nunique()})."
        )
    return "\n".join(lines)


def _spread(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.1f}"


def _difference(d) -> str:
    """Δ [low, high], bold where the interval excludes 0."""
    text = f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
    return f"**{text}**" if d["low"] > 0 or d["high"] < 0 else text


def rows_table(runs: pd.DataFrame, labels: dict[str, list[str]], baseline: str, header) -> str:
    """A table of rows (`labels`: run key -> its label cells, in order; those that ran), per
    shot: fold cells, the bold mean, its spreads over training and test seeds and the paired
    difference to the `baseline` row with its 95% interval."""
    folds = sorted(runs["fold"].unique())
    columns = [*header, "shot", *(f"fold{f}" for f in folds), "Mean", "sd train", "sd test", "Δ"]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + ":-:|" * len(header) + "---:|" * (len(folds) + 5),
    ]
    for shot, ran in runs.groupby("shot"):
        diffs = differences(ran, baseline) if baseline in set(ran["key"]) else None
        mious = per_fold(ran).set_index(["key", "fold"])["miou"]
        spreads = row_spreads(ran).loc[shot]
        for key in (k for k in labels if k in spreads.index):
            miou = mious.loc[key]
            cells = [*labels[key], str(shot)]
            cells += [f"{miou[f]:.1f}" if f in miou else "–" for f in folds]
            cells += [f"**{miou.mean():.1f}**", *map(_spread, spreads.loc[key, ["train", "test"]])]
            if diffs is None:
                cells.append("–")
            else:
                cells.append("baseline" if key == baseline else _difference(diffs.loc[key]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = (
    "Mean: over folds, training seeds and test seeds. sd train, sd test: the sample standard "
    "deviation of the mean over the training seeds and over the test seeds. Δ: the difference "
    "to the baseline row, paired (the same episode lists), with its 95% bootstrap interval "
    "(episodes resampled within each fold and test seed, training seeds within each fold); "
    "bold where the interval excludes 0."
)


def table3(runs: pd.DataFrame) -> str:
    """One row per set of switches, in the paper's order (fewest switches first); Δ to the row
    with every switch off."""
    keys = sorted(set(runs["key"]), key=lambda k: (k[:3].count("1"), k[:3].replace("0", "2")))
    labels = {k: ["✓" if on == "1" else "" for on in k[:3]] for k in keys}
    return rows_table(runs, labels, "0000", ["FG", "BG", "Mine"])


TABLE5 = {"None": "0100", "Trainset": "1110", "Trainset + Remain": "1111"}


def table5(runs: pd.DataFrame) -> str:
    """The paper's Table 5 rows that ran: None, Trainset, Trainset + Remain; Δ to None."""
    labels = {key: [name] for name, key in TABLE5.items()}
    return rows_table(runs, labels, TABLE5["None"], ["Unlabeled source"])


def table7(main: pd.DataFrame) -> str:
    """The paper's speed: one episode at a time, nothing cached; beside it the throughput of
    the evaluation jobs, which encode each image once (means over folds)."""
    lines = [
        "| shot | episodes/s, one at a time | episodes/s, evaluation job | FB-IoU mean | "
        "parameters | device |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for shot, g in main.groupby("shot"):
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
        ("train", "training", runs.drop_duplicates("model"), "model"),  # fg on, off: one model
        ("evaluate", "evaluation", runs, "evaluation"),
    ):
        for text, count in jobs[f"{stage}_machine"].value_counts().items():
            lines.append(f"- {name}: {text} ({count} {kind}{'s' if count > 1 else ''})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    runs = read_metrics([*args.metrics, *args.variants])
    keys = runs["key"]
    main = runs[keys == keys.iloc[0]]
    with atomic_file(args.csv) as tmp:
        per_fold(runs).to_csv(tmp, index=False, float_format="%.4f")
    text = (
        f"# Results: {args.title}\n\nMean IoU (%) of 1-way episodes on each fold's novel "
        "classes, mean over training and test seeds (paper Table 1 layout).\n\n"
        + table1(main, args.title)
        + "\n\nPer fold and shot, with FB-IoU: see summary.csv.\n\n"
    )
    # Table 3: the runs that mine what the main run mines (remain is moot without mining)
    same = runs[(runs["remain"] == main["remain"].iloc[0]) | ~runs["mine"]]
    if len(set(keys[same.index])) > 1:
        text += (
            "## Ablations (paper Table 3 layout)\n\nmIoU (%) with each component on (✓) or "
            "off. FG: foreground rectification (Eq. 8-9); BG: global background prototype "
            "(Eq. 6-7); Mine: the mining branch (Eq. 1). " + LEGEND + "\n\n" + table3(same) + "\n\n"
        )
    if {TABLE5["Trainset"], TABLE5["Trainset + Remain"]} <= set(keys):
        text += (
            "## Sources of unlabelled data (paper Table 5 layout)\n\nmIoU (%). None: BG "
            "rectification alone; Trainset: the full method, mining the fold's train set; "
            "Trainset + Remain: mining the train images without a large base class too. "
            + LEGEND
            + "\n\n"
            + table5(runs)
            + "\n\n"
        )
    text += "## Speed (paper Table 7 layout)\n\n" + table7(main) + "\n\n"
    text += "## Machine\n\n" + machines(runs) + "\n"
    with atomic_file(args.md) as tmp:
        tmp.write_text(text)
    log.info(
        "summary of %d rows, %d evaluated models -> %s, %s",
        keys.nunique(),
        len(runs),
        args.csv,
        args.md,
    )
