"""Backs docs/method.md, "The offline annotation": train sets, Remain, resize modes.

The data protocol measured on a finished run: each fold's train set and Remain, the test
queries below `min_support_pixels`, and the three `evaluate.resize` modes on the same models and
the same episode lists.

    python bench/protocol.py [--results results/synthetic]

For each mode other than the run's own, every (fold, shot) gets a region bank and an
evaluation in that mode (each stage in its own process, as the workflow runs it); the run's
own mode is read from its eval/metrics.json. The episode lists do not depend on the mode, so
the modes score the same episodes. Writes bench/results/protocol.json and protocol.md
(assembled into docs/benchmarks.md by bench/report.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
import zarr
from record import arguments, describe, run_stage, save, scratch

from latentfss.datasets.evaluation import RESIZE_MODES
from latentfss.datasets.index import read_index

REPO = Path(__file__).resolve().parents[1]


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
) -> dict:
    """mIoU of one trained model evaluated in `mode` as the workflow runs it (its own process),
    with a region bank built in that mode."""
    params = {**config["evaluate"], "resize": mode}
    bank_keys = ("resize", "input_size", "batch_size", "workers")
    with scratch() as tmp:
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


def main() -> None:
    parser = arguments(__doc__, results=True, threads=True)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    results = {
        "threads": args.threads,
        "evaluate": config["evaluate"],
        "train_sets": train_sets(args.results),
        "small_queries": small_queries(args.results, config["protocol"]["min_support_pixels"]),
        "modes": other_modes(args.results, config, args.threads),
    }
    save(results, markdown, args.out, "protocol")


def markdown(r: dict) -> list[str]:
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
    return lines


def _folds(runs: pd.DataFrame) -> str:
    return " / ".join(f"{v:.1f}" for v in runs["miou"])


if __name__ == "__main__":
    main()
