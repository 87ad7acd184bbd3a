"""Backs docs/running.md, "What a full run costs": the presets at full data scale.

Each preset's DAG through Snakemake on the CPU, on archives generated in the official formats
(made where --data is absent) and with bench/standin/'s encoder, so that every data-dependent
cost is real; each fraction of the train images is its own run. What runs and what is measured:
its subsection "What the rehearsal runs".

    python bench/rehearsal.py pascal --data DIR [--fractions 0.25 1]
    python bench/rehearsal.py coco --data DIR [--fractions 0.0625 1] [--sample 1000]

Writes bench/results/rehearsal_{pascal,coco}.json and .md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import deque
from functools import partial
from pathlib import Path

import coco_archives
import limits
import numpy as np
import pandas as pd
import pascal_archives
import yaml
import zarr
from record import arguments, describe, save, scratch, table

from latentfss import layout, store
from latentfss.datasets import pascal
from latentfss.datasets.images import read_image, read_mask, resized_batches
from latentfss.datasets.index import read_index
from latentfss.scoring import SPEED_EPISODES

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"arch": "resnet50", "weights": "none", "calibration_images": 64}
SETTINGS = {  # on top of config.yaml and workflow/presets/{dataset}.yaml
    "pascal": {
        "folds": [0],
        "shots": [1],
        "encoder": ENCODER,
        "train": {"iterations": 4, "log_every": 2, "checkpoint_every": 2, "workers": 1},
        "evaluate": {"episodes": 1000, "seeds": [0], "workers": 2},
    },
    "coco": {"folds": [0], "shots": [1], "encoder": ENCODER},
}
SETTINGS["coco sample"] = SETTINGS["pascal"]
STAGE_FILES = {  # rule: its Snakemake benchmark file and its outputs (the disk it writes)
    "prepare": ("prepare", [layout.INDEX]),
    "extract_features": ("extract_features_main", [layout.FEATURES, layout.ENCODER_INIT]),
    "pool_prototypes": ("pool_prototypes_main", [layout.PROTOTYPES]),
    "cluster": ("cluster_main_fold0", [layout.CLUSTERS]),
    "write_pseudo_masks": ("write_pseudo_masks_main_fold0_train_set", [layout.PSEUDO_MASKS]),
    "train": ("train_main_train0_fold0_shot1", [layout.MODEL]),
    "build_bank": ("build_bank_main_train0_fold0_shot1", [layout.BANK]),
    "evaluate": ("evaluate_main_train0_fold0_shot1", [layout.EVAL]),
}
FOLD0 = {"row": "main", "tseed": 0, "fold": 0, "shot": 1, "images": "train_set"}
OUTPUTS = {rule: [p.format(**FOLD0) for p in paths] for rule, (_, paths) in STAGE_FILES.items()}
RULES = list(STAGE_FILES)  # the DAG's rules in order
ANNOTATION = RULES[:5]  # coco at 1/4 of its sides: up to the pseudo masks
SCALE = 0.25  # coco: the generated images' sides, of COCO's
INPUT_SIZE = 121  # coco: annotation.input_size on them (the grid of 473 on the scaled images)
COCO_PRESET = yaml.safe_load((REPO / "workflow/presets/coco.yaml").read_text())
PER_IMAGE = ["prepare", "pool_prototypes", "write_pseudo_masks"]  # coco: work per image, no
# fixed part worth the name (extract_features only writes encoder_init.pt, cluster's prototypes
# do not grow with the pixels): what the sample extrapolates to the full count
STAGE_COLUMNS = {
    "stage": "{stage}",
    "seconds": "{seconds:.1f}",
    "host s": "{host_s:.1f}",
    "device s here": "{device_s:.1f}",
    "device GFLOP": "{gflop:,.0f}",
    "device GB moved": "{device_gb:,.1f}",
    "host floor s (host / floor)": "{floor}",
    "peak memory MB (PSS)": "{peak_mb:.0f}",
    "disk MB": "{disk_mb:,.1f}",
}
GROWTH = ("seconds", "host_s", "peak_mb", "disk_mb")


def disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def work_done(results: Path, banked: bool) -> dict[str, int]:
    """What the stages did: images indexed and encoded, prototypes clustered, regions banked."""
    protos = store.open_group(results / OUTPUTS["pool_prototypes"][0], "pool-prototypes")
    clusters = store.open_group(results / OUTPUTS["cluster"][0], "cluster")
    work = {
        "train_images": int(protos["image_id"].shape[0]),
        "prototypes": int(protos["fg"].shape[0]),
        "fold_train_set": int(clusters["train_set"].shape[0]),
        "pixels_csv_mb": round(disk_mb(results / layout.INDEX / "pixels.csv"), 1),
    }
    if banked:
        bank = results / OUTPUTS["build_bank"][0]
        regions = store.open_group(bank / "regions.zarr", "build-bank")
        work["bank_regions"] = int(regions["image"].shape[0])
    return work


def host_floors(results: Path, rules: list[str], threads: int = 2) -> dict:
    """Each data-bound stage's host work alone, in seconds, on the run's own files: starting
    its process, decoding its inputs with `threads` threads (masks, images, and the features
    read from features.zarr or, where there is none, the images resized to the encoder's
    input) and writing its outputs again (`bench/limits.py`)."""
    index = read_index(results / layout.INDEX)
    train, features = index.split("train"), results / OUTPUTS["extract_features"][0]
    train_set = store.open_group(results / OUTPUTS["cluster"][0], "cluster")["train_set"][:]
    if features.exists():
        feats = zarr.open_group(str(features), mode="r")["feats"]
        blocks = range(0, len(train), 64)
        encoded = limits.clock(lambda: deque((feats[s : s + 64] for s in blocks), 0))
    else:
        size = yaml.safe_load((results.parents[1] / "rehearsal.yaml").read_text())
        size = size.get("annotation", {}).get("input_size", 473)
        paths = train["image"].tolist()
        encoded = limits.clock(lambda: deque(resized_batches(paths, size, 64, threads), 0))
    decoding = partial(limits.decoding, threads=threads)
    mask = partial(read_mask, num_classes=index.num_classes)
    inputs = {
        "pool_prototypes": decoding(mask, train["mask"].tolist()) + encoded,
        "write_pseudo_masks": encoded * len(train_set) / len(train),
    }
    outputs = {rule: results / OUTPUTS[rule][0] for rule in inputs}
    if "build_bank" in rules:
        masks = store.open_group(outputs["write_pseudo_masks"], "write-pseudo-masks")["masks"]
        images = index.images.loc[train_set, "image"].tolist()
        inputs["build_bank"] = decoding(
            lambda row: (read_image(images[row]), masks[row]), range(len(images))
        )
        outputs["build_bank"] = results / OUTPUTS["build_bank"][0] / "regions.zarr"
        episodes = pd.read_csv(results / OUTPUTS["evaluate"][0] / "episodes_seed0.csv")
        queries = episodes["query"].tolist()
        shots = [[int(i) for i in str(s).split()] for s in episodes["supports"]]
        shown = sorted(set(queries).union(*shots))
        for query, supports in zip(queries[:SPEED_EPISODES], shots, strict=False):
            shown += [query, *supports]  # read again, one episode at a time: Table 7's speed
        rows = list(index.images.loc[shown].itertuples())
        inputs["evaluate"] = decoding(lambda row: (read_image(row.image), mask(row.mask)), rows)
    floors = {}
    for rule, seconds in inputs.items():
        if rule in outputs:
            with scratch() as target:
                seconds += limits.rewriting(outputs[rule], Path(target) / "floor.zarr")
        floors[rule] = round(seconds + limits.startup_seconds(rule.replace("_", "-")), 1)
    return floors


def measured(run: Path, results: Path, rule: str) -> dict:
    """A stage's seconds and peak memory (its Snakemake benchmark file's PSS: the job's
    processes' proportional set sizes summed, so that the pages a forked loader worker shares
    with its parent count once, where the RSS sum counts them in each), its device work (as
    bench/standin/ counted it), the host's seconds (the rest) and the disk it wrote."""
    bench = pd.read_csv(results / layout.BENCHMARKS / f"{STAGE_FILES[rule][0]}.tsv", sep="\t")
    device = json.loads((run / "device_work" / f"{rule.replace('_', '-')}.json").read_text())
    seconds = float(bench["s"].iloc[0])
    return {
        "seconds": round(seconds, 1),
        "host_s": round(seconds - sum(device[k] for k in ("inside_s", "dispatch_s", "own_s")), 1),
        "device_s": round(device["seconds"], 1),
        "device_ops": device["ops"],
        "gflop": round(device["flops"] / 1e9, 1),
        "device_gb": round(device["bytes"] / 1e9, 2),
        "peak_mb": round(float(bench["max_pss"].iloc[0])),
        "disk_mb": round(sum(disk_mb(results / o) for o in OUTPUTS[rule]), 1),  # 0 if not kept
    }


def rehearse(dataset: str, run: Path, settings: dict, rules: list[str]) -> dict:
    """The preset's DAG up to `rules[-1]` through Snakemake in `run`: each stage's figures and
    host floor, the work done. features.zarr is deleted after, for the next run's disk."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "rehearsal.yaml").write_text(yaml.safe_dump(settings))
    shutil.copy(REPO / "config.yaml", run)  # the Snakefile's configfile, in its workdir
    configs = [REPO / f"workflow/presets/{dataset}.yaml", run / "rehearsal.yaml"]
    env = {
        "LATENTFSS_DEVICE": "cpu",  # unless the caller's says otherwise
        **os.environ,
        "LATENTFSS_STANDIN": "1",
        "LATENTFSS_DEVICE_WORK": str(run / "device_work"),
        "PYTHONPATH": f"{REPO / 'bench/standin'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    results = run / "results" / dataset
    command = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(run), "--cores", "2"]
    if rules != RULES:  # else the whole DAG
        command += [str(results.relative_to(run) / o) for o in OUTPUTS[rules[-1]]]
    command += ["--configfile", *map(str, configs)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    stages = {rule: measured(run, results, rule) for rule in rules}
    for rule, seconds in host_floors(results, rules).items():
        stages[rule]["host_floor_s"] = seconds
    work = work_done(results, "build_bank" in rules)
    shutil.rmtree(results / OUTPUTS["extract_features"][0], ignore_errors=True)
    return {"stages": stages, "work": work}


def rehearse_pascal(data: Path, fraction: float, runs: Path) -> dict:
    """The first `fraction` of voc_sbd's train list."""
    run = runs / f"pascal-{fraction:g}"
    run.mkdir(parents=True, exist_ok=True)
    ids = pascal.split(data, "voc_sbd").train
    ids = ids[: round(fraction * len(ids))]
    (run / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    settings = SETTINGS["pascal"] | {
        "dataset": {"name": "pascal", "root": str(data), "train_list": str(run / "train.txt")},
    }
    return {"fraction": fraction, "images": len(ids), **rehearse("pascal", run, settings, RULES)}


def rehearse_coco(data: Path, fraction: float, runs: Path, scale: float = SCALE) -> dict:
    """The first `fraction` of each split of the generated COCO at `data`, whose images have
    `scale` of COCO's sides (the support threshold scales with their area): up to fold 0's
    pseudo masks, or at COCO's own sides (the sample) the whole DAG as pascal runs it."""
    sample = scale == 1
    input_size = COCO_PRESET["annotation"]["input_size"] if sample else INPUT_SIZE
    run = runs / f"coco-{fraction:g}-{input_size}"
    root = data if fraction == 1 else runs / f"coco-data-{fraction:g}"
    if fraction != 1:
        coco_archives.subset(data, root, fraction)
    images = len(json.loads(coco_archives.instances(root, "train2014").read_text())["images"])
    min_pixels = round(COCO_PRESET["protocol"]["min_support_pixels"] * scale**2)
    settings = SETTINGS["coco sample" if sample else "coco"] | {
        "dataset": {"name": "coco", "root": str(root)},
        "annotation": {"input_size": input_size},
        "protocol": {"min_support_pixels": min_pixels},
    }
    result = rehearse("coco", run, settings, RULES if sample else ANNOTATION)
    facts = {"input_size": input_size, "min_support_pixels": min_pixels}
    return {"fraction": fraction, "images": images, **facts, **result}


def coco_sample(count: int, runs: Path) -> dict:
    """The whole DAG on `count` train images at COCO's own sides: the per-image cost of what
    scales with pixels."""
    root = runs / f"coco-sample-{count}"
    if not root.exists():
        splits = {"train2014": count, "val2014": count // 2}
        coco_archives.make_coco(root, splits, 1.0, os.cpu_count())
    return rehearse_coco(root, 1, runs, scale=1.0)


def exponents(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Each stage's growth: the slope of log(figure) on log(train images) over the runs."""
    images = np.log([r["images"] for r in runs])

    def slope(rule: str, key: str) -> float:
        figures = np.log([max(r["stages"][rule][key], 1e-3) for r in runs])
        return round(float(np.polyfit(images, figures, 1)[0]), 2)

    return {rule: {key: slope(rule, key) for key in GROWTH} for rule in runs[0]["stages"]}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("dataset", choices=["pascal", "coco"])
    parser.add_argument("--data", type=Path, required=True, help="the archives (made when absent)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--sample", type=int, default=0, help="coco: N images at COCO's sides")
    parser.add_argument("--runs", type=Path, default=REPO / ".bench-rehearsal")
    args = parser.parse_args()
    results = {"dataset": args.dataset, "settings": SETTINGS[args.dataset]}
    if args.dataset == "pascal":
        if not args.data.exists():
            pascal_archives.make_archives(args.data, os.cpu_count())
        runs = [rehearse_pascal(args.data, f, args.runs) for f in args.fractions]
    else:
        if not args.data.exists():
            coco_archives.make_coco(args.data, coco_archives.SPLITS, SCALE, os.cpu_count())
        runs = [rehearse_coco(args.data, f, args.runs) for f in args.fractions]
        results |= {
            "scale": SCALE,
            "input_size": INPUT_SIZE,
            "data": coco_archives.facts(args.data),
            "sample": coco_sample(args.sample, args.runs) if args.sample else None,
        }
    results |= {"runs": runs, "growth": exponents(runs) if len(runs) > 1 else None}
    save(results, report, args.out, f"rehearsal_{args.dataset}")


def stage_rows(stages: dict, **extra) -> list[dict]:
    """The stage table's rows; the host floor with the host's seconds over it, where measured."""
    rows = []
    for rule, s in stages.items():
        floor = s.get("host_floor_s")
        cell = "-" if floor is None else f"{floor:.1f} ({s['host_s'] / floor:.1f}x)"
        rows.append({"stage": rule, "floor": cell, **extra, **s})
    return rows


def report(r: dict) -> list[str]:
    """The figures; what they rest on: docs/running.md, "What a full run costs"."""
    coco = r["dataset"] == "coco"
    shape = f"images at {r['scale']:g} of COCO's sides" if coco else "1-shot"
    stages = [row for run in r["runs"] for row in stage_rows(run["stages"], images=run["images"])]
    lines = [
        f"## The {r['dataset'].upper()} preset rehearsed at data scale "
        f"(`bench/rehearsal.py {r['dataset']}`)",
        "",
        f"Machine: {describe(r['machine'])}. Fold 0, the stand-in encoder, {shape}.",
        "",
        *table(stages, {"train images": "{images:,}", **STAGE_COLUMNS}),
    ]
    if r["growth"]:
        lines += ["", "Growth exponents in the train images (1 = linear):", ""]
        growth = [{"stage": rule, **g} for rule, g in r["growth"].items()]
        lines += table(growth, {"stage": "{stage}", **{k: f"{{{k}}}" for k in GROWTH}})
    if coco and r["sample"]:
        sample, episodes = r["sample"], SETTINGS["coco sample"]["evaluate"]["episodes"]
        lines += [
            "",
            f"The whole DAG at COCO's own sides ({sample['images']:,} train images, "
            f"{sample['work']['fold_train_set']:,} in fold 0's train set, "
            f"{episodes:,} test episodes):",
            "",
            *table(stage_rows(sample["stages"]), STAGE_COLUMNS),
        ]
    return lines


if __name__ == "__main__":
    main()
