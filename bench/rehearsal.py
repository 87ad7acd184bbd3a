"""Backs docs/running.md, "What a full run costs": the presets at full data scale.

The PASCAL and COCO presets rehearsed at full data scale on the CPU: the preset's DAG through
Snakemake on generated data in the official formats, with a stand-in encoder (`bench/standin/`:
ResNet-50's output, 1,024 channels at stride 8, from a cheap projection), so that every
data-dependent cost is real.

    python bench/rehearsal.py pascal --data DIR [--fractions 0.25 0.5 1] [--no-keep-features]
    python bench/rehearsal.py coco --data DIR [--fractions 0.0625 0.25 1] [--sample 1000]

pascal: the archives of `bench/pascal_archives.py` (12,031 images of 500 x 375, the official
list counts; generated when DIR is absent). Only the counts that multiply time shrink: fold 0,
1-shot, `train.iterations` 4, one test seed of 100 episodes. The train list is the first
`fraction` of voc_sbd (5,953 images). `--real-encoder N` also times extract-features with the
real ResNet-50 on N images.

coco: `bench/coco_archives.py`'s COCO 2014 at full count, images at 1/4 of COCO's sides
(generated when DIR is absent), up to fold 0's pseudo masks, annotation.input_size 121 (the
grid of 473 on the scaled images); `--sample N` runs N images at COCO's own sides and 473, for
the costs that scale with pixels; prepare's memory is polled over its process tree.

Each fraction is its own run. Per stage: wall time and peak RSS (Snakemake's benchmark files),
disk written, and the work done; across the fractions, each figure's growth exponent in the
train images (a least-squares slope of log figure on log images).

Writes bench/results/rehearsal_{pascal,coco}.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import coco_archives
import numpy as np
import pandas as pd
import pascal_archives
import yaml
from record import arguments, describe, run_stage, save, table, tree_memory

from latentfss import layout, store
from latentfss.datasets import pascal

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"arch": "resnet50", "weights": "none", "calibration_images": 64}
SETTINGS = {  # on top of config.yaml and workflow/presets/{dataset}.yaml
    "pascal": {
        "folds": [0],
        "shots": [1],
        "encoder": ENCODER,
        "train": {"iterations": 4, "log_every": 2, "checkpoint_every": 2, "workers": 1},
        "evaluate": {"episodes": 100, "seeds": [0], "workers": 1},
    },
    "coco": {"folds": [0], "shots": [1], "encoder": ENCODER},
}
FOLD0 = {"row": "main", "tseed": 0, "fold": 0, "shot": 1, "images": "train_set"}
OUTPUTS = {  # rule -> its outputs under results/{dataset} (the disk each stage writes)
    rule: [pattern.format(**FOLD0) for pattern in patterns]
    for rule, patterns in {
        "prepare": [layout.INDEX],
        "extract_features": [layout.FEATURES, layout.ENCODER_INIT],
        "pool_prototypes": [layout.PROTOTYPES],
        "cluster": [layout.CLUSTERS],
        "write_pseudo_masks": [layout.PSEUDO_MASKS],
        "train": [layout.MODEL],
        "build_bank": [layout.BANK],
        "evaluate": [layout.EVAL],
    }.items()
}
BENCH_FILES = {  # rule -> its Snakemake benchmark file under results/{dataset}/benchmarks
    "prepare": "prepare",
    "extract_features": "extract_features_main",
    "pool_prototypes": "pool_prototypes_main",
    "cluster": "cluster_main_fold0",
    "write_pseudo_masks": "write_pseudo_masks_main_fold0_train_set",
    "train": "train_main_train0_fold0_shot1",
    "build_bank": "build_bank_main_train0_fold0_shot1",
    "evaluate": "evaluate_main_train0_fold0_shot1",
}
TARGETS = {"pascal": [], "coco": OUTPUTS["write_pseudo_masks"]}  # [] = the whole DAG
ANNOTATION = ["prepare", "extract_features", "pool_prototypes", "cluster", "write_pseudo_masks"]
RULES = {"pascal": list(OUTPUTS), "coco": ANNOTATION}  # the rules each rehearsal runs
SCALE = 0.25  # coco: the generated images' sides, of COCO's
COCO_PRESET = yaml.safe_load((REPO / "workflow/presets/coco.yaml").read_text())
PER_IMAGE = ["prepare", "pool_prototypes", "write_pseudo_masks"]  # coco: work per image, no
# fixed part worth the name (extract_features only writes encoder_init.pt, cluster's prototypes
# do not grow with the pixels): what the sample extrapolates to the full count
STAGE_COLUMNS = {
    "stage": "{stage}",
    "seconds": "{seconds:.1f}",
    "peak RSS MB": "{peak_rss_mb:.0f}",
    "disk MB": "{disk_mb:,.1f}",
}
GROWTH = ("seconds", "peak_rss_mb", "disk_mb")


def disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def work_done(results: Path, dataset: str) -> dict[str, int]:
    """What the stages did: images indexed and encoded, prototypes clustered, regions banked."""
    protos = store.open_group(results / OUTPUTS["pool_prototypes"][0], "pool-prototypes")
    clusters = store.open_group(results / OUTPUTS["cluster"][0], "cluster")
    work = {
        "train_images": int(protos["image_id"].shape[0]),
        "prototypes": int(protos["fg"].shape[0]),
        "fold_train_set": int(clusters["train_set"].shape[0]),
        "pixels_csv_mb": round(disk_mb(results / layout.INDEX / "pixels.csv"), 1),
    }
    if dataset == "pascal":
        bank = results / OUTPUTS["build_bank"][0]
        regions = store.open_group(bank / "regions.zarr", "build-bank")
        work["bank_regions"] = int(regions["image"].shape[0])
    return work


def rehearse(dataset: str, run: Path, settings: dict) -> dict:
    """The preset's DAG (up to TARGETS) through Snakemake in `run`: per stage seconds, peak
    RSS, disk written; the work done. features.zarr is deleted after, for the next run's disk."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "rehearsal.yaml").write_text(yaml.safe_dump(settings))
    shutil.copy(REPO / "config.yaml", run)  # the Snakefile's configfile, in its workdir
    configs = [REPO / f"workflow/presets/{dataset}.yaml", run / "rehearsal.yaml"]
    env = {
        **os.environ,
        "LATENTFSS_STANDIN": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "bench/standin"), os.environ.get("PYTHONPATH", "")]
        ),
        "LATENTFSS_DEVICE": "cpu",
    }
    results = run / "results" / dataset
    command = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(run), "--cores", "2"]
    command += [str(results.relative_to(run) / t) for t in TARGETS[dataset]]
    command += ["--configfile", *map(str, configs)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    stages = {}
    for rule in RULES[dataset]:
        bench = pd.read_csv(results / layout.BENCHMARKS / f"{BENCH_FILES[rule]}.tsv", sep="\t")
        outputs = [results / o for o in OUTPUTS[rule] if (results / o).exists()]
        stages[rule] = {
            "seconds": round(float(bench["s"].iloc[0]), 1),
            "peak_rss_mb": round(float(bench["max_rss"].iloc[0])),
            "disk_mb": round(sum(map(disk_mb, outputs)), 1),
        }
    work = work_done(results, dataset)
    shutil.rmtree(results / OUTPUTS["extract_features"][0], ignore_errors=True)
    return {"stages": stages, "work": work}


def rehearse_pascal(data: Path, fraction: float, keep_features: bool, runs: Path) -> dict:
    """The first `fraction` of voc_sbd's train list."""
    run = runs / f"pascal-{fraction:g}"
    run.mkdir(parents=True, exist_ok=True)
    ids = pascal.split(data, "voc_sbd").train
    ids = ids[: round(fraction * len(ids))]
    (run / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    settings = SETTINGS["pascal"] | {
        "dataset": {"name": "pascal", "root": str(data), "train_list": str(run / "train.txt")},
        "annotation": {"keep_features": keep_features},
    }
    return {"fraction": fraction, "images": len(ids), **rehearse("pascal", run, settings)}


def rehearse_coco(data: Path, fraction: float, input_size: int, scale: float, runs: Path) -> dict:
    """The first `fraction` of each split of the generated COCO at `data`, whose images have
    `scale` of COCO's sides: the support threshold scales with their area."""
    run = runs / f"coco-{fraction:g}-{input_size}"
    root = data if fraction == 1 else runs / f"coco-data-{fraction:g}"
    if fraction != 1:
        coco_archives.subset(data, root, fraction)
    images = len(json.loads((root / "annotations/instances_train2014.json").read_text())["images"])
    min_pixels = round(COCO_PRESET["protocol"]["min_support_pixels"] * scale**2)
    settings = SETTINGS["coco"] | {
        "dataset": {"name": "coco", "root": str(root)},
        "annotation": {"input_size": input_size},
        "protocol": {"min_support_pixels": min_pixels},
    }
    result = rehearse("coco", run, settings)
    facts = {"input_size": input_size, "min_support_pixels": min_pixels}
    return {"fraction": fraction, "images": images, **facts, **result}


def prepare_memory(data: Path, runs: Path) -> dict:
    """`latentfss prepare` on the full generated COCO, 2 workers as in the rehearsal: its
    process tree's peak RSS (Snakemake's figure) against its PSS (what a cgroup charges)."""
    out = runs / "prepare-memory"
    shutil.rmtree(out, ignore_errors=True)
    params = json.dumps({"name": "coco", "root": str(data)})
    command = ["latentfss", "prepare", "--out", str(out), "--params", params, "--threads", "2"]
    return tree_memory(command)


def exponents(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Each stage's growth: the slope of log(figure) on log(train images) over the runs."""
    images = np.log([r["images"] for r in runs])

    def slope(rule: str, key: str) -> float:
        figures = np.log([max(r["stages"][rule][key], 1e-3) for r in runs])
        return round(float(np.polyfit(images, figures, 1)[0]), 2)

    return {
        rule: {key: slope(rule, key) for key in ("seconds", "peak_rss_mb", "disk_mb")}
        for rule in runs[0]["stages"]
    }


def real_encoder(data: Path, count: int, runs: Path) -> dict:
    """extract-features with the real (random-weight) ResNet-50 at 473 on `count` train images."""
    run = runs / f"real-{count}"
    run.mkdir(parents=True, exist_ok=True)
    ids = pascal.split(data, "voc_sbd").train[:count]
    (run / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    dataset = json.dumps(
        {"name": "pascal", "root": str(data), "train_list": str(run / "train.txt")}
    )
    run_stage("prepare", out=run / "dataset", params=dataset)
    timed = run_stage(
        "extract-features",
        index=run / "dataset",
        out=run / "features.zarr",
        encoder_out=run / "encoder_init.pt",
        encoder=json.dumps({"arch": "resnet50", "weights": "none", "calibration_images": 16}),
        params=json.dumps({"input_size": 473, "batch_size": 16}),
        device="cpu",
        threads=os.cpu_count(),
    )
    return {"images": count, **timed, "seconds_per_image": round(timed["seconds"] / count, 3)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("dataset", choices=["pascal", "coco"])
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="bench/pascal_archives.py's or coco_archives.py's tree (made when absent)",
    )
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument(
        "--keep-features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pascal: features.zarr as the preset keeps it (44 GB at the full list)",
    )
    parser.add_argument("--real-encoder", type=int, default=0, metavar="N", help="pascal")
    parser.add_argument(
        "--input-size", type=int, default=121, help="coco: annotation.input_size of the runs"
    )
    parser.add_argument(
        "--sample", type=int, default=0, metavar="N", help="coco: N images at COCO's pixels too"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="coco: keep the runs in the results JSON, re-read the data's facts, measure only "
        "what the JSON lacks, rewrite",
    )
    parser.add_argument("--runs", type=Path, default=REPO / ".bench-rehearsal")
    args = parser.parse_args()
    results = {"dataset": args.dataset, "settings": SETTINGS[args.dataset]}
    if args.dataset == "pascal":
        if not args.data.exists():
            pascal_archives.make_archives(args.data, os.cpu_count())
        runs = [
            rehearse_pascal(args.data, f, args.keep_features, args.runs) for f in args.fractions
        ]
        results |= {
            "keep_features": args.keep_features,
            "real_encoder": real_encoder(args.data, args.real_encoder, args.runs)
            if args.real_encoder
            else None,
        }
    elif args.reuse:  # the runs of the results file; only what it lacks is measured
        results = json.loads((args.out / "rehearsal_coco.json").read_text())
        runs, results["data"] = results["runs"], coco_archives.facts(args.data)
        if "prepare_memory" not in results:
            results["prepare_memory"] = prepare_memory(args.data, args.runs)
    else:
        if not args.data.exists():
            coco_archives.make_coco(args.data, coco_archives.SPLITS, SCALE, os.cpu_count())
        runs = [
            rehearse_coco(args.data, f, args.input_size, SCALE, args.runs) for f in args.fractions
        ]
        results |= {
            "scale": SCALE,
            "input_size": args.input_size,
            "data": coco_archives.facts(args.data),
            "sample": coco_sample(args.sample, args.runs) if args.sample else None,
            "prepare_memory": prepare_memory(args.data, args.runs),
        }
    results |= {"runs": runs, "growth": exponents(runs) if len(runs) > 1 else None}
    save(results, report, args.out, f"rehearsal_{args.dataset}")


def coco_sample(count: int, runs: Path) -> dict:
    """The COCO runs' DAG on `count` train images at COCO's own sides and the preset's
    annotation input size: the per-image cost of what scales with pixels."""
    root = runs / f"coco-sample-{count}"
    if not root.exists():
        splits = {"train2014": count, "val2014": count // 2}
        coco_archives.make_coco(root, splits, 1.0, os.cpu_count())
    return rehearse_coco(root, 1, COCO_PRESET["annotation"]["input_size"], 1.0, runs)


def report(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/running.md."""
    coco = r["dataset"] == "coco"
    lines = [
        f"## The {r['dataset'].upper()} preset rehearsed at data scale "
        f"(`bench/rehearsal.py {r['dataset']}`)",
        "",
        f"Machine: {describe(r['machine'])}. Fold 0, the stand-in encoder"
        + (f", images at {r['scale']:g} of COCO's sides." if coco else ", 1-shot."),
        "",
    ]
    stages = [
        {"images": run["images"], "stage": rule, **s}
        for run in r["runs"]
        for rule, s in run["stages"].items()
    ]
    lines += table(stages, {"train images": "{images:,}", **STAGE_COLUMNS})
    if r["growth"]:
        lines += ["", "Growth exponents in the train images (1 = linear):", ""]
        growth = [{"stage": rule, **g} for rule, g in r["growth"].items()]
        lines += table(growth, {"stage": "{stage}", **{k: f"{{{k}}}" for k in GROWTH}})
    if not coco and r["real_encoder"]:
        lines += ["", f"extract-features, the real ResNet-50 at 473: {r['real_encoder']}."]
    if coco and r["sample"]:
        sample, full = r["sample"], r["runs"][-1]
        ratio = full["images"] / sample["images"]
        lines += [
            "",
            f"At COCO's own sides ({sample['images']:,} images; full count x {ratio:.1f}):",
        ]
        rows = [
            {
                "stage": rule,
                **s,
                "full": s["seconds"] * ratio,
                "of_scaled": s["seconds"] * ratio / full["stages"][rule]["seconds"],
            }
            for rule, s in sample["stages"].items()
            if rule in PER_IMAGE
        ]
        lines += [
            "",
            *table(
                rows,
                {
                    **STAGE_COLUMNS,
                    "full count s": "{full:,.0f}",
                    "x the scaled run": "{of_scaled:.1f}",
                },
            ),
        ]
    if coco and r.get("prepare_memory"):
        lines += ["", f"prepare's process tree at the full count: {r['prepare_memory']}."]
    return lines


if __name__ == "__main__":
    main()
