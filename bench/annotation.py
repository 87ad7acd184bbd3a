"""Backs docs/method.md, "The offline annotation": its data-bound stages against the host floor.

pool_prototypes and write_pseudo_masks on generated COCO-format data (`bench/coco_archives.py`)
at PASCAL's image sizes (COCO's shapes at a 500-pixel long side; features.zarr kept, as the
PASCAL preset does) and at COCO's (the features computed again, as the COCO preset does), with
the stand-in encoder of bench/standin/ (ResNet-50's 1,024 channels at stride 8, input 473). Each
stage runs as its own process; its time less the process's start-up is set against its host
floor: the same images' inputs decoded (PNG masks; features.zarr's chunks, or the JPEGs decoded
and resized to 473) and its outputs encoded and written, timed alone with the same threads.
`--baseline SRC` runs the same stages from another checkout's src/ on the same data.

    python bench/annotation.py [--images 200] [--threads 2] [--baseline /tmp/old/src]

Writes bench/results/annotation.json and annotation.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import coco_archives
import limits
import numpy as np
import torch
import yaml
import zarr
from record import REPO, arguments, describe, run_stage, save, scratch, table

from latentfss.datasets.images import read_mask, resized_batches
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise
from latentfss.features import annotation_encoder
from latentfss.prototypes import nearest_representative, present_labels, region_prototypes
from latentfss.runtime import pick_device

SIZES = {"pascal": 500 / 640, "coco": 1.0}  # the images' sides, of COCO's
KEEP_FEATURES = {"pascal": True, "coco": False}  # as the presets
STAGES = ("pool-prototypes", "write-pseudo-masks")
ANNOTATION = {"input_size": 473, "batch_size": 16}
ENCODER = {"arch": "resnet50", "weights": "none", "calibration_images": 8}


def prepared(root: Path, images: int, scale: float, threads: int) -> tuple[Path, Path, dict]:
    """Data, index, the initial encoder (and features.zarr) and fold 0's clusters under root."""
    coco_archives.make_coco(root / "coco", {"train2014": images, "val2014": 8}, scale, threads)
    preset = yaml.safe_load((REPO / "workflow/presets/coco.yaml").read_text())
    index, data = root / "dataset", {"name": "coco", "root": str(root / "coco")}
    run_stage("prepare", out=index, params=json.dumps(data), threads=threads)
    encoder = {"encoder_out": root / "encoder_init.pt", "encoder": json.dumps(ENCODER)}
    params = json.dumps(ANNOTATION)
    run_stage(
        "extract-features",
        index=index,
        out=root / "features.zarr",
        **encoder,
        params=params,
        threads=threads,
    )
    flags = {"features": root / "features.zarr"}
    run_stage(
        "pool-prototypes", index=index, out=root / "prototypes.zarr", threads=threads, **flags
    )
    protocol = preset["protocol"] | {"min_support_pixels": round(2048 * scale**2)}
    run_stage(
        "cluster",
        index=index,
        prototypes=root / "prototypes.zarr",
        fold=0,
        out=root / "clusters.zarr",
        params=json.dumps(preset["cluster"]),
        protocol=json.dumps(protocol),
        threads=threads,
    )
    return index, root / "clusters.zarr", flags


def timed_stages(index: Path, clusters: Path, features: dict, out: Path, threads: int) -> dict:
    """Each stage as its own process: wall seconds, peak RSS."""
    common = {"index": index, "threads": threads, **features}
    return {
        "pool-prototypes": run_stage("pool-prototypes", out=out / "p.zarr", **common),
        "write-pseudo-masks": run_stage(
            "write-pseudo-masks", clusters=clusters, out=out / "m.zarr", **common
        ),
    }


def host_floor(root: Path, index_dir: Path, clusters: Path, keep: bool, threads: int) -> dict:
    """Each stage's host work alone, in seconds: its inputs decoded, its outputs written."""
    index = read_index(index_dir)
    train = index.split("train")
    masks = limits.decoding(lambda path: read_mask(path, index.num_classes), train["mask"], threads)
    if keep:
        feats = zarr.open_group(str(root / "features.zarr"), mode="r")["feats"]
        features = limits.clock(lambda: [feats[s : s + 64] for s in range(0, feats.shape[0], 64)])
    else:
        paths = train["image"].tolist()
        size, batch = ANNOTATION["input_size"], ANNOTATION["batch_size"]
        features = limits.clock(lambda: list(resized_batches(paths, size, batch, threads)))
    train_set = zarr.open_group(str(clusters), mode="r")["train_set"]
    share = train_set.shape[0] / len(train)  # the rows write_pseudo_masks reads
    return {
        "pool-prototypes": {
            "inputs": features + masks,
            "outputs": limits.rewriting(root / "prototypes.zarr", root / "floor-p.zarr"),
        },
        "write-pseudo-masks": {
            "inputs": features * share,
            "outputs": limits.rewriting(root / "stage/m.zarr", root / "floor-m.zarr"),
        },
    }


@torch.inference_mode()
def device_work(root: Path, index_dir: Path, clusters: Path, keep: bool, threads: int) -> dict:
    """Each stage's device work alone, in seconds, on inputs already decoded and in the
    device's memory: the images' normalisation and the encoder's forward passes (where the
    features are computed), Eq. 2 image by image, Eq. 3 a block's images of one size together.
    On the CPU the stage's host time is the rest."""
    torch.set_num_threads(threads)
    device = pick_device(os.environ.get("LATENTFSS_DEVICE", "auto"))
    index = read_index(index_dir)
    train = index.split("train")
    feats = zarr.open_group(str(root / "features.zarr"), mode="r")["feats"][:]
    masks = [torch.from_numpy(read_mask(p, index.num_classes).copy()) for p in train["mask"]]
    masks = [mask.to(device) for mask in masks]
    group = zarr.open_group(str(clusters), mode="r")
    reps, rows = torch.from_numpy(group["centroids"][:]), np.isin(train.index, group["train_set"])
    sizes, reps = train[["height", "width"]].to_numpy()[rows], reps.to(device)
    selected, feats = torch.from_numpy(feats[rows]).to(device), torch.from_numpy(feats).to(device)

    def timed(step) -> float:
        def synchronised() -> None:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return limits.clock(synchronised)

    def pool() -> None:
        for image_feats, mask in zip(feats, masks, strict=True):
            region_prototypes(image_feats.float(), mask, present_labels(mask, True)[0])

    def label() -> None:
        for start in range(0, len(selected), 64):
            block, shapes = selected[start : start + 64].float(), sizes[start : start + 64]
            for shape in np.unique(shapes, axis=0):
                same = torch.from_numpy((shapes == shape).all(axis=1)).to(device)
                nearest_representative(block[same], reps, tuple(shape)).to(torch.uint8).cpu()

    work = {"pool-prototypes": timed(pool), "write-pseudo-masks": timed(label)}
    if not keep:
        encoder = annotation_encoder(root / "encoder_init.pt", device)
        size, batch = ANNOTATION["input_size"], ANNOTATION["batch_size"]
        normalise = Normalise(device)
        paths = train["image"].tolist()
        batches = [torch.from_numpy(b) for b in resized_batches(paths, size, batch, threads)]

        def encode() -> None:  # as features.embed, the images already decoded
            for images in batches:
                images = normalise(normalise.unit(images))
                encoder(images.contiguous(memory_format=torch.channels_last)).half().contiguous()

        forward = timed(encode)
        work["pool-prototypes"] += forward
        work["write-pseudo-masks"] += forward * rows.mean()
    return work


def measure(name: str, images: int, threads: int, baseline: str | None, tmp: Path) -> dict:
    root = tmp / name
    index, clusters, stored = prepared(root, images, SIZES[name], threads)
    keep = KEEP_FEATURES[name]
    features = (
        stored
        if keep
        else {"encoder_init": root / "encoder_init.pt", "annotation": json.dumps(ANNOTATION)}
    )
    runs = {"stage": timed_stages(index, clusters, features, root / "stage", threads)}
    if baseline:
        path = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = os.pathsep.join([baseline, path])
        try:
            runs["baseline"] = timed_stages(index, clusters, features, root / "old", threads)
        finally:
            os.environ["PYTHONPATH"] = path
    floor = host_floor(root, index, clusters, keep, threads)
    device = device_work(root, index, clusters, keep, threads)
    return {"images": images, "keep_features": keep, "runs": runs, "floor": floor, "device": device}


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument("--images", type=int, default=200, help="train images per size")
    parser.add_argument("--baseline", help="another checkout's src/, timed on the same data")
    args = parser.parse_args()
    os.environ["LATENTFSS_STANDIN"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "bench/standin"), os.environ.get("PYTHONPATH", "")]
    )
    import standin.sitecustomize  # noqa: F401 (this process's encoder too: device_work)

    startup = {stage: limits.startup_seconds(stage) for stage in STAGES}
    with scratch() as tmp:
        sizes = {
            name: measure(name, args.images, args.threads, args.baseline, Path(tmp))
            for name in SIZES
        }
    baseline = args.baseline and os.popen(f"git -C {args.baseline} rev-parse --short HEAD").read()
    results = {
        "threads": args.threads,
        "startup": startup,
        "baseline": baseline.strip() if baseline else None,
        "sizes": sizes,
    }
    save(results, markdown, args.out, "annotation")


def markdown(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/method.md."""
    lines = [
        "## The annotation's data-bound stages against the host floor (`bench/annotation.py`)",
        "",
        f"Machine: {describe(r['machine'])}; {r['threads']} threads, device cpu, the stand-in "
        "encoder. Seconds after the process's start-up. Device work alone: the encoder, Eq. 2 "
        "and Eq. 3 on inputs in memory; the host's time is the rest. Host floor: the same "
        "inputs decoded and outputs written, alone.",
        "",
    ]
    rows = []
    for name, size in r["sizes"].items():
        for run, stages in size["runs"].items():
            for stage, s in stages.items():
                seconds = s["seconds"] - r["startup"][stage]
                row = {"size": name, "stage": stage, "images": size["images"], "seconds": seconds}
                row |= {
                    "features": "features.zarr" if size["keep_features"] else "computed",
                    "code": r["baseline"] if run == "baseline" else "this commit",
                    "per_image_ms": 1000 * seconds / size["images"],
                    "rss": s["peak_rss_mb"],
                    "device": "-",
                    "host": "-",
                    "floor": sum(size["floor"][stage].values()),
                    "ratio": "-",
                }
                if run == "stage":  # the device work alone is this commit's
                    host = seconds - size["device"][stage]
                    row |= {
                        "device": f"{size['device'][stage]:.2f}",
                        "host": f"{host:.2f}",
                        "ratio": f"{host / row['floor']:.1f}",
                    }
                rows.append(row)
    lines += table(
        rows,
        {
            "images at": "{size}",
            "features": "{features}",
            "stage": "{stage}",
            "code": "{code}",
            "train images": "{images}",
            "seconds": "{seconds:.2f}",
            "ms an image": "{per_image_ms:.1f}",
            "peak RSS MB": "{rss}",
            "device work alone s": "{device}",
            "host s (the rest)": "{host}",
            "host floor s": "{floor:.2f}",
            "host x floor": "{ratio}",
        },
    )
    return lines


if __name__ == "__main__":
    main()
