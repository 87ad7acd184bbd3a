"""The data protocol measured on a finished run: each fold's train set and Remain, the
results tables before and after a protocol change, and the three `evaluate.resize` modes on
the same models and the same episode lists.

    python bench/protocol.py [--results results/synthetic] [--before OTHER/results/synthetic]

For each mode other than the run's own, every (fold, shot) gets a region bank and an
evaluation in that mode (each stage in its own process, as the workflow runs it); the run's
own mode is read from its eval/metrics.json. The episode lists do not depend on the mode, so
the modes score the same episodes. `--before` adds the tables of a run of the code before
(its summary.csv), and its models scored by today's evaluation, to tell the change in
evaluation from the change in training. Writes bench/results/protocol.json and protocol.md
(assembled into BENCHMARKS.md by bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd
import yaml
import zarr
from record import describe, machine, run_stage, save, scratch

from latentfss.datasets.evaluation import RESIZE_MODES
from latentfss.datasets.index import read_index

REPO = Path(__file__).resolve().parents[1]
SWITCHES = ["fg", "bg", "mine", "remain"]


def train_sets(results: Path) -> list[dict]:
    """Per fold: its train set (clusters.zarr) and Remain, the other train images."""
    train = len(read_index(results / "dataset").split("train"))
    rows = []
    for clusters in sorted(results.glob("fold*/clusters.zarr")):
        size = zarr.open_group(str(clusters), mode="r")["train_set"].shape[0]
        rows.append(
            {
                "fold": int(clusters.parent.name[4:]),
                "train": train,
                "train_set": size,
                "remain": train - size,
            }
        )
    return rows


def small_queries(results: Path, min_pixels: int) -> list[dict]:
    """Per shot: the share of test episodes (every seed and fold of the main run) whose query
    holds less than `min_pixels` of the episode's class; the sampling before the reference
    protocol drew none of them."""
    pixels = read_index(results / "dataset").pixels.set_index(["image_id", "class_id"])["pixels"]
    rows = []
    for shot in sorted({int(p.name[4:]) for p in results.glob("fold*/shot*")}):
        lists = [pd.read_csv(p) for p in results.glob(f"fold*/shot{shot}/eval/episodes_seed*.csv")]
        episodes = pd.concat(lists)
        sizes = pixels.loc[list(zip(episodes["query"], episodes["class_id"], strict=True))]
        rows.append(
            {
                "shot": shot,
                "episodes": len(episodes),
                "small": int((sizes.to_numpy() < min_pixels).sum()),
            }
        )
    return rows


def evaluate(
    results: Path,
    run: Path,
    fold: int,
    shot: int,
    mode: str,
    config: dict,
    threads: int,
    bank: Path | None = None,
) -> dict:
    """mIoU of one trained model evaluated in `mode` as the workflow runs it (its own process);
    a region bank is built in that mode unless `bank` is given."""
    params = {**config["evaluate"], "resize": mode}
    bank_keys = ("resize", "input_size", "batch_size", "workers")
    with scratch() as tmp:
        if bank is None:
            bank = Path(tmp) / "bank"
            run_stage(
                "build-bank",
                index=results / "dataset",
                model=run / "model.pt",
                pseudo_masks=results / f"fold{fold}/pseudo_masks.zarr",
                out=bank,
                params=json.dumps({k: params[k] for k in bank_keys}),
                threads=threads,
            )
        timed = run_stage(
            "evaluate",
            index=results / "dataset",
            model=run / "model.pt",
            bank=bank,
            fold=fold,
            shot=shot,
            out=Path(tmp) / "eval",
            params=json.dumps(params),
            protocol=json.dumps(config["protocol"]),
            threads=threads,
        )
        miou = json.loads((Path(tmp) / "eval/metrics.json").read_text())["miou"]
    row = {
        "mode": mode,
        "fold": fold,
        "shot": shot,
        "miou": 100 * miou,
        "evaluate_seconds": timed["seconds"],
    }
    print(row, flush=True)
    return row


def main_runs(results: Path) -> list[tuple[Path, dict]]:
    """(run directory, metrics.json) of every fold and shot of the main run."""
    paths = sorted(results.glob("fold*/shot*/eval/metrics.json"))
    return [(path.parents[1], json.loads(path.read_text())) for path in paths]


def other_modes(results: Path, config: dict, threads: int) -> list[dict]:
    """mIoU of every (fold, shot) of the main run in each resize mode (the run's own read from
    its metrics.json)."""
    rows = []
    for run, m in main_runs(results):
        fold, shot, own = m["fold"], m["shot"], m["evaluate"]["resize"]
        rows.append({"mode": own, "fold": fold, "shot": shot, "miou": 100 * m["miou"]})
        rows += [
            evaluate(results, run, fold, shot, mode, config, threads)
            for mode in RESIZE_MODES
            if mode != own
        ]
    return rows


def before_models(before: Path, config: dict, threads: int) -> list[dict]:
    """The models of a run of the code before, in its only input mode (square) with its own
    banks, scored by today's evaluation: today's episode lists and upsampling."""
    return [
        evaluate(before, run, m["fold"], m["shot"], "square", config, threads, bank=run / "bank")
        for run, m in main_runs(before)
    ]


def tables(summary: Path) -> dict:
    """Table 1 (the main runs) and every ablation row's mean, from a run's summary.csv."""
    runs = pd.read_csv(summary)
    if "remain" not in runs:  # runs of the code before mining.remain existed
        runs["remain"] = False
    main = runs[runs.fg & runs.bg & runs.mine & ~runs.remain]  # the default's switches
    table1 = {
        f"{shot}-shot": {"folds": g["miou"].round(1).tolist(), "mean": g["miou"].mean()}
        for shot, g in main.groupby("shot")
    }
    rows = runs.groupby(["shot", *SWITCHES])["miou"]
    ablations = [
        {
            "shot": key[0],
            **dict(zip(SWITCHES, map(bool, key[1:]), strict=True)),
            "folds": g.round(1).tolist(),
            "mean": g.mean(),
        }
        for key, g in rows
    ]
    return {"table1": table1, "rows": ablations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results/synthetic")
    parser.add_argument("--before", type=Path, help="results of a run of the code before")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    results = {
        "machine": machine(),
        "threads": args.threads,
        "evaluate": config["evaluate"],
        "train_sets": train_sets(args.results),
        "small_queries": small_queries(args.results, config["protocol"]["min_support_pixels"]),
        "after": tables(args.results / "summary.csv"),
        "before": tables(args.before / "summary.csv") if args.before else None,
        "modes": other_modes(args.results, config, args.threads),
        "before_models": (
            before_models(args.before, config, args.threads) if args.before else None
        ),
    }
    save(results, markdown(results), args.out, "protocol")


def _mark(row: dict) -> str:
    labels = dict(zip(SWITCHES, ("FG", "BG", "Mine", "Remain"), strict=True))
    return " + ".join(label for key, label in labels.items() if row[key]) or "baseline"


def markdown(r: dict) -> str:
    e = r["evaluate"]
    lines = [
        "## The data protocol (`bench/protocol.py`)",
        "",
        f"Machine: {describe(r['machine'])}. The synthetic default run; mIoU (%), mean over "
        f"{len(e['seeds'])} seeds of {e['episodes']} episodes.",
        "",
        "Each fold's train set (train images holding a base class with at least "
        "`min_support_pixels`) and Remain (the others):",
        "",
        "| fold | train images | train set | Remain |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {t['fold']} | {t['train']} | {t['train_set']} | {t['remain']} |"
        for t in r["train_sets"]
    ]
    lines += [
        "",
        "Test episodes whose query holds less than `min_support_pixels` of the "
        "episode's class (the class is drawn among those present at any size):",
        "",
    ]
    lines += [
        f"- {q['shot']}-shot: {q['small']} of {q['episodes']} "
        f"({100 * q['small'] / q['episodes']:.1f}%)"
        for q in r["small_queries"]
    ]
    runs = [("after", r["after"])] + ([("before", r["before"])] if r["before"] else [])
    lines += [
        "",
        "Every row that ran, per fold and its mean (FG, BG, Mine: Table 3's switches; "
        "Remain: Table 5's):",
        "",
        "| code | shot | switches | folds | mean |",
        "|---|---:|---|---|---:|",
    ]
    for name, t in runs:
        for row in t["rows"]:
            folds = " / ".join(f"{v:.1f}" for v in row["folds"])
            lines.append(
                f"| {name} | {row['shot']} | {_mark(row)} | {folds} | **{row['mean']:.1f}** |"
            )
    modes = pd.DataFrame(r["modes"])
    lines += [
        "",
        f"The main run's models in each `evaluate.resize` mode (input "
        f"{e['input_size']} for pfenet and square; each mode's own region bank):",
        "",
        "| mode | shot | folds | mean |",
        "|---|---:|---|---:|",
    ]
    for (mode, shot), g in modes.sort_values("fold").groupby(["mode", "shot"]):
        lines.append(f"| {mode} | {shot} | {_folds(g)} | **{g['miou'].mean():.1f}** |")
    if r["before_models"]:
        lines += [
            "",
            "The models of the code before, in its input (square) with its banks, "
            "scored by today's evaluation (today's episode lists and upsampling) and by "
            "its own (its summary.csv):",
            "",
            "| evaluation | shot | folds | mean |",
            "|---|---:|---|---:|",
        ]
        today = pd.DataFrame(r["before_models"]).sort_values("fold")
        own = pd.DataFrame(r["before"]["rows"])
        own = own[own["fg"] & own["bg"] & own["mine"]]
        for shot, g in today.groupby("shot"):
            lines.append(f"| today's | {shot} | {_folds(g)} | **{g['miou'].mean():.1f}** |")
            before = own[own["shot"] == shot].iloc[0]
            folds = " / ".join(f"{v:.1f}" for v in before["folds"])
            lines.append(f"| its own | {shot} | {folds} | **{before['mean']:.1f}** |")
    return "\n".join(lines) + "\n"


def _folds(runs: pd.DataFrame) -> str:
    return " / ".join(f"{v:.1f}" for v in runs["miou"])


if __name__ == "__main__":
    main()
