"""Backs docs/method.md, "The offline annotation": keep_features and precision.

What `annotation.keep_features: false` costs, how well pseudo masks compress, and how far the
annotation's precision moves the pseudo masks.

    python bench/keep_features.py [--threads 2]

1. On the synthetic default (800 train images, ResNet-18, input 256): extract-features,
   pool-prototypes and write-pseudo-masks (fold 0) each as its own process, reading
   features.zarr or computing the features again from encoder_init.pt; their arrays must be
   equal. The annotation's time both ways counts write-pseudo-masks once per fold (4).
2. Pseudo masks at PASCAL's image sizes: 64 synthetic train images of 400-500 px, input 473:
   stored bytes against the uncompressed array (the padding compresses to nothing).
3. Precision: fold 0's pseudo masks from features computed in fp32 (what the stages do, TF32
   off on CUDA) against features computed under bf16 autocast (what training's encoder runs
   in on CUDA; here on the CPU) and against fp32 features with a relative error of 1e-6 (the
   size of the differences between fp32 kernels, CPU against GPU): the share of pixels whose
   label changes.

Writes bench/results/keep_features.json and keep_features.md (assembled into docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
import zarr
from record import arguments, describe, run_stage, save, scratch

from latentfss.datasets.index import read_index
from latentfss.features import AnnotationConfig, Features, annotation_encoder, normalised_batches
from latentfss.prototypes import nearest_representative

REPO = Path(__file__).resolve().parents[1]


def equal_stores(a: Path, b: Path) -> bool:
    first, second = (zarr.open_group(str(p), mode="r") for p in (a, b))
    return all(np.array_equal(array[:], second[key][:]) for key, array in first.arrays())


def stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def annotation_times(config: dict, work: Path, threads: int, sizes=None, input_size=None) -> dict:
    """Each stage both ways on a fresh synthetic dataset; seconds and peak RSS."""
    synthetic = {**config["synthetic"], **(sizes or {})}
    annotation = {k: v for k, v in config["annotation"].items() if k != "keep_features"}
    annotation["input_size"] = input_size or annotation["input_size"]
    index, init = work / "dataset", work / "encoder_init.pt"
    run_stage("make-synthetic", out=work / "voc", params=json.dumps(synthetic))
    run_stage("prepare", out=index, params=json.dumps({"root": str(work / "voc")}))
    common = {
        "encoder_out": init,
        "encoder": json.dumps(config["encoder"]),
        "params": json.dumps(annotation),
        "threads": threads,
    }
    runs = {
        "extract-features (kept)": run_stage(
            "extract-features", index=index, out=work / "features.zarr", **common
        ),
        "extract-features (encoder only)": run_stage("extract-features", index=index, **common),
    }
    sources = {
        "kept": {"features": work / "features.zarr"},
        "computed": {"encoder_init": init, "annotation": json.dumps(annotation)},
    }
    for name, source in sources.items():
        runs[f"pool-prototypes ({name})"] = run_stage(
            "pool-prototypes",
            index=index,
            out=work / f"prototypes_{name}.zarr",
            threads=threads,
            **source,
        )
    run_stage(
        "cluster",
        index=index,
        prototypes=work / "prototypes_kept.zarr",
        fold=0,
        out=work / "clusters.zarr",
        params=json.dumps(config["cluster"]),
        threads=threads,
    )
    for name, source in sources.items():
        runs[f"write-pseudo-masks ({name})"] = run_stage(
            "write-pseudo-masks",
            index=index,
            clusters=work / "clusters.zarr",
            out=work / f"masks_{name}.zarr",
            threads=threads,
            **source,
        )
    equal = {
        kind: equal_stores(work / f"{kind}_kept.zarr", work / f"{kind}_computed.zarr")
        for kind in ("prototypes", "masks")
    }
    masks = zarr.open_group(str(work / "masks_kept.zarr"), mode="r")["masks"]
    return {
        "runs": runs,
        "equal": equal,
        "masks_nbytes": masks.nbytes,
        "masks_stored": stored_bytes(work / "masks_kept.zarr"),
        "features_nbytes": zarr.open_group(str(work / "features.zarr"))["feats"].nbytes,
        "features_stored": stored_bytes(work / "features.zarr"),
    }


@torch.inference_mode()
def precision(work: Path, images: int) -> dict:
    """Share of pseudo-mask pixels (feature grid, first `images` train images) that change."""
    train = read_index(work / "dataset").split("train").iloc[:images]
    group = zarr.open_group(str(work / "features.zarr"), mode="r")
    cfg = AnnotationConfig(
        **{k: v for k, v in group.attrs["annotation"].items() if k in ("input_size", "batch_size")}
    )
    reps = torch.from_numpy(zarr.open_group(str(work / "clusters.zarr"))["centroids"][:])
    fp32 = torch.from_numpy(
        np.concatenate(
            [b for _, b in Features.read(work / "features.zarr").blocks(np.arange(images))]
        ).astype(np.float32)
    )
    encoder = annotation_encoder(work / "encoder_init.pt", torch.device("cpu"))
    batches = normalised_batches(train["image"].tolist(), cfg, torch.device("cpu"), 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = torch.cat([encoder(b).float() for b in batches]).half().float()
    noisy = (
        (fp32 * (1 + 1e-6 * torch.randn(fp32.shape, generator=torch.Generator().manual_seed(0))))
        .half()
        .float()
    )
    labels = nearest_representative(fp32, reps)
    return {
        "images": images,
        "pixels": labels.numel(),
        "bf16_changed": float((nearest_representative(bf16, reps) != labels).float().mean()),
        "fp32_noise_1e-6_changed": float(
            (nearest_representative(noisy, reps) != labels).float().mean()
        ),
    }


def main() -> None:
    parser = arguments(__doc__, threads=True)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    with scratch() as tmp:
        default = annotation_times(config, Path(tmp) / "default", args.threads)
        precise = precision(Path(tmp) / "default", 200)
        large = annotation_times(
            config,
            Path(tmp) / "large",
            args.threads,
            sizes={"num_train": 64, "num_val": 8, "min_size": 400, "max_size": 500},
            input_size=473,
        )
    results = {
        "threads": args.threads,
        "default": default,
        "pascal_sized": large,
        "precision": precise,
    }
    save(results, markdown, args.out, "keep_features")


def markdown(r: dict) -> list[str]:
    runs = r["default"]["runs"]
    seconds = {name: run["seconds"] for name, run in runs.items()}
    kept = (
        seconds["extract-features (kept)"]
        + seconds["pool-prototypes (kept)"]
        + 4 * seconds["write-pseudo-masks (kept)"]
    )
    computed = (
        seconds["extract-features (encoder only)"]
        + seconds["pool-prototypes (computed)"]
        + 4 * seconds["write-pseudo-masks (computed)"]
    )
    large, p = r["pascal_sized"], r["precision"]
    lines = [
        "## Annotation without features.zarr (`bench/keep_features.py`)",
        "",
        f"Machine: {describe(r['machine'])}; {r['threads']} threads. Synthetic default (800 "
        "train images, ResNet-18, input 256); each stage its own process (seconds include "
        "start-up).",
        "",
        "| stage | seconds | peak RSS (MB) |",
        "|---|---:|---:|",
        *[f"| {name} | {run['seconds']} | {run['peak_rss_mb']} |" for name, run in runs.items()],
        "",
        f"The same arrays both ways: prototypes {r['default']['equal']['prototypes']}, pseudo "
        f"masks {r['default']['equal']['masks']}. Annotation with write-pseudo-masks once per "
        f"fold (x4): {kept:.1f} s kept, {computed:.1f} s computed again "
        f"({computed / kept:.2f}x), for no features.zarr "
        f"({r['default']['features_stored'] / 2**20:.0f} MB here).",
        "",
        f"Pseudo masks of 64 synthetic images of 400-500 px (input 473): "
        f"{large['masks_nbytes'] / 2**20:.1f} MB as an array, "
        f"{large['masks_stored'] / 2**20:.2f} MB stored "
        f"({large['masks_nbytes'] / large['masks_stored']:.0f}x smaller); features.zarr "
        f"{large['features_stored'] / large['features_nbytes']:.0%} of its array "
        f"(equal both ways: {large['equal']['masks']}).",
        "",
        f"Precision (fold 0, the first {p['images']} train images, {p['pixels']:,} feature-grid "
        f"pixels): features under bf16 autocast change {p['bf16_changed']:.2%} of the labels "
        f"({round(p['bf16_changed'] * p['pixels']):,}); fp32 features with a relative error of "
        f"1e-6 change {round(p['fp32_noise_1e-6_changed'] * p['pixels']):,} of them.",
    ]
    return lines


if __name__ == "__main__":
    main()
