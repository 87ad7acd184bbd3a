"""The PASCAL preset rehearsed at full data scale on the CPU: the preset's DAG through Snakemake
on generated official archives (`bench/pascal_prepare.py`: 12,031 images of 500 x 375, the
official list counts), with a stand-in encoder (`bench/standin/`: ResNet-50's output, 1,024
channels at stride 8, from a cheap projection), so that every data-dependent cost is real.

    python bench/rehearsal.py pascal --data DIR [--fractions 0.25 0.5 1] [--no-keep-features]

Only the counts that multiply time shrink: fold 0, 1-shot, `train.iterations` 4, one test seed
of 100 episodes. The train list is the first `fraction` of voc_sbd (5,953 images); each
fraction is its own run. Per stage: wall time and peak RSS (Snakemake's benchmark files), disk
written, and the work done; across the fractions, each figure's growth exponent in the train
images (a least-squares slope of log figure on log images). `--real-encoder N` also times
extract-features with the real ResNet-50 on the first N train images.

Writes bench/results/rehearsal_pascal.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from record import describe, machine, run_stage, save

from latentfss import store
from latentfss.datasets import pascal

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # on top of config.yaml and workflow/presets/pascal.yaml
    "folds": [0],
    "shots": [1],
    "encoder": {"arch": "resnet50", "weights": "none", "calibration_images": 64},
    "train": {"iterations": 4, "log_every": 2, "checkpoint_every": 2, "workers": 1},
    "evaluate": {"episodes": 100, "seeds": [0], "workers": 1},
}
OUTPUTS = {  # rule -> its outputs under results/pascal (the disk each stage writes)
    "prepare": ["dataset"],
    "extract_features": ["features.zarr", "encoder_init.pt"],
    "pool_prototypes": ["prototypes.zarr"],
    "cluster": ["fold0/clusters.zarr"],
    "write_pseudo_masks": ["fold0/pseudo_masks.zarr"],
    "train": ["fold0/shot1/model.pt"],
    "build_bank": ["fold0/shot1/bank"],
    "evaluate": ["fold0/shot1/eval"],
}


def disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def work_done(results: Path) -> dict[str, int]:
    """What the stages did: images encoded, prototypes clustered, regions banked."""
    protos = store.open_group(results / "prototypes.zarr", "pool-prototypes")
    clusters = store.open_group(results / "fold0/clusters.zarr", "cluster")
    regions = store.open_group(results / "fold0/shot1/bank/regions.zarr", "build-bank")
    return {
        "train_images": int(protos["image_id"].shape[0]),
        "prototypes": int(protos["fg"].shape[0]),
        "fold_train_set": int(clusters["train_set"].shape[0]),
        "bank_regions": int(regions["image"].shape[0]),
    }


def rehearse(data: Path, fraction: float, keep_features: bool, runs: Path) -> dict:
    run = runs / f"pascal-{fraction:g}"
    run.mkdir(parents=True, exist_ok=True)
    train = pascal.split(data, "voc_sbd").train
    ids = train[: round(fraction * len(train))]
    (run / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    settings = {
        **SETTINGS,
        "dataset": {"name": "pascal", "root": str(data), "train_list": str(run / "train.txt")},
        "annotation": {"keep_features": keep_features},
    }
    (run / "rehearsal.yaml").write_text(yaml.safe_dump(settings))
    shutil.copy(REPO / "config.yaml", run)  # the Snakefile's configfile, in its workdir
    configs = [REPO / "workflow/presets/pascal.yaml", run / "rehearsal.yaml"]
    env = {
        **os.environ,
        "LATENTFSS_STANDIN": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "bench/standin"), os.environ.get("PYTHONPATH", "")]
        ),
        "LATENTFSS_DEVICE": "cpu",
    }
    command = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(run), "--cores", "2"]
    command += ["--configfile", *map(str, configs)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    results = run / "results/pascal"
    jobs = pd.read_csv(results / "benchmarks.csv").set_index("job")
    stages = {
        rule: {
            "seconds": float(jobs.filter(regex=f"^{rule}", axis=0)["seconds"].sum()),
            "peak_rss_mb": float(jobs.filter(regex=f"^{rule}", axis=0)["max_rss_mb"].max()),
            "disk_mb": round(
                sum(disk_mb(results / o) for o in outputs if (results / o).exists()), 1
            ),
        }
        for rule, outputs in OUTPUTS.items()
    }
    work = work_done(results)
    shutil.rmtree(results / "features.zarr", ignore_errors=True)  # the next run's disk
    return {"fraction": fraction, "images": len(ids), "stages": stages, "work": work}


def exponents(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Each stage's growth: the slope of log(figure) on log(train images) over the runs."""
    images = np.log([r["images"] for r in runs])
    grow = {}
    for rule in OUTPUTS:
        grow[rule] = {
            key: round(
                float(
                    np.polyfit(
                        images, np.log([max(r["stages"][rule][key], 1e-3) for r in runs]), 1
                    )[0]
                ),
                2,
            )
            for key in ("seconds", "peak_rss_mb", "disk_mb")
        }
    return grow


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["pascal"])
    parser.add_argument("--data", type=Path, required=True, help="bench/pascal_prepare.py's tree")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument(
        "--keep-features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="features.zarr as the preset keeps it (44 GB at the full list)",
    )
    parser.add_argument("--real-encoder", type=int, default=0, metavar="N")
    parser.add_argument("--runs", type=Path, default=REPO / ".bench-rehearsal")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    runs = [rehearse(args.data, f, args.keep_features, args.runs) for f in args.fractions]
    results = {
        "machine": machine(),
        "settings": SETTINGS,
        "keep_features": args.keep_features,
        "runs": runs,
        "growth": exponents(runs) if len(runs) > 1 else None,
        "real_encoder": real_encoder(args.data, args.real_encoder, args.runs)
        if args.real_encoder
        else None,
    }
    save(results, report(results), args.out, "rehearsal_pascal")


def report(r: dict) -> str:
    lines = [
        "## The PASCAL preset rehearsed at data scale (`bench/rehearsal.py pascal`)",
        "",
        f"Machine: {describe(r['machine'])}. The preset's DAG through Snakemake on the generated "
        "official archives with the stand-in encoder (1,024 channels at stride 8), fold 0, "
        f"1-shot, {r['settings']['train']['iterations']} training steps, one test seed of "
        f"{r['settings']['evaluate']['episodes']} episodes, keep_features {r['keep_features']}.",
        "",
        "| train images | stage | seconds | peak RSS MB | disk MB |",
        "|---:|---|---:|---:|---:|",
    ]
    for run in r["runs"]:
        for rule, s in run["stages"].items():
            lines.append(
                f"| {run['images']:,} | {rule} | {s['seconds']:.1f} | {s['peak_rss_mb']:.0f} | "
                f"{s['disk_mb']:,.1f} |"
            )
    for run in r["runs"]:
        lines += ["", f"Work at {run['images']:,} train images: {run['work']}."]
    if r["growth"]:
        lines += ["", "Growth exponents in the train images (1 = linear):", ""]
        lines += ["| stage | seconds | peak RSS | disk |", "|---|---:|---:|---:|"]
        lines += [
            f"| {rule} | {g['seconds']} | {g['peak_rss_mb']} | {g['disk_mb']} |"
            for rule, g in r["growth"].items()
        ]
        flagged = [
            f"{rule} ({what} exponent {g[key]})"
            for rule, g in r["growth"].items()
            for key, what, limit in (("seconds", "time", 1.1), ("peak_rss_mb", "memory", 0.5))
            if g[key] > limit
        ]
        lines += [
            "",
            "Faster than linear in time, or memory that grows with the data: "
            + (", ".join(flagged) + " (a defect to fix)." if flagged else "none."),
        ]
    if r["real_encoder"]:
        e = r["real_encoder"]
        lines += [
            "",
            f"extract-features with the real ResNet-50 (random weights, 473) on {e['images']} "
            f"train images: {e['seconds']} s, {e['seconds_per_image']} s an image (start-up "
            f"included), peak RSS {e['peak_rss_mb']} MB.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
