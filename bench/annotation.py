"""Backs docs/method.md, "The offline annotation": its stages' speed and flat memory.

Offline-annotation benchmark: throughput, peak memory and distance to the floor
(bench/limits.py) of each stage on the synthetic benchmark at the default config, at two dataset
sizes.

    python bench/annotation.py [--threads 2] [--out bench/results]

Writes bench/results/annotation.json and annotation.md (assembled into docs/benchmarks.md by
bench/report.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import limits
import torch
import zarr
from record import arguments, describe, run_stage, save, scratch, table

from latentfss.config import defaults
from latentfss.encoder import Encoder
from latentfss.runtime import pick_device

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    "make-synthetic",
    "prepare",
    "extract-features",
    "pool-prototypes",
    "cluster",
    "write-pseudo-masks",
)


def annotate(config: dict, num_train: int, threads: int, work: Path) -> dict:
    """Every annotation stage on a synthetic dataset of `num_train` train images (fold 0)."""
    work.mkdir()
    synthetic = json.dumps({**config["synthetic"], "num_train": num_train})
    annotation = json.dumps({k: v for k, v in config["annotation"].items() if k != "keep_features"})
    index, features = work / "dataset", work / "features.zarr"
    run = {
        "make-synthetic": run_stage("make-synthetic", out=work / "voc", params=synthetic),
        "prepare": run_stage(
            "prepare", out=index, threads=threads, params=json.dumps({"root": str(work / "voc")})
        ),
        "extract-features": run_stage(
            "extract-features",
            index=index,
            out=features,
            encoder_out=work / "encoder_init.pt",
            encoder=json.dumps(config["encoder"]),
            params=annotation,
            threads=threads,
            seed=config["seed"],
        ),
        "pool-prototypes": run_stage(
            "pool-prototypes",
            index=index,
            features=features,
            out=work / "prototypes.zarr",
            threads=threads,
        ),
        "cluster": run_stage(
            "cluster",
            index=index,
            prototypes=work / "prototypes.zarr",
            fold=0,
            out=work / "clusters.zarr",
            params=json.dumps(config["cluster"]),
            threads=threads,
        ),
        "write-pseudo-masks": run_stage(
            "write-pseudo-masks",
            index=index,
            features=features,
            clusters=work / "clusters.zarr",
            out=work / "pseudo_masks.zarr",
            threads=threads,
        ),
    }
    everything = num_train + config["synthetic"]["num_val"]
    for name, result in run.items():
        result["images"] = everything if name in ("make-synthetic", "prepare") else num_train
        result["images_per_s"] = round(result["images"] / result["seconds"], 1)
    return run


def least_work(config: dict, work: Path, num_train: int, encoder_flops: int) -> dict:
    """What each stage cannot avoid doing: the encoder's and K-Means's FLOPs; the feature bytes
    that pooling and pseudo-mask writing read; the image files written, then read."""
    files = sum(f.stat().st_size for f in (work / "voc").rglob("*") if f.is_file())
    feature_bytes = zarr.open_group(str(work / "features.zarr"), mode="r")["feats"].nbytes
    masks = zarr.open_group(str(work / "pseudo_masks.zarr"), mode="r")["masks"].nbytes
    clusters = zarr.open_group(str(work / "clusters.zarr"), mode="r")
    (members,), (_, dims) = clusters["member"].shape, clusters["centroids"].shape
    c = config["cluster"]
    passes = num_train + min(config["encoder"]["calibration_images"], num_train)
    return {
        "make-synthetic": {"disk_bytes": files},
        "prepare": {"bytes": files},
        "extract-features": {"flops": passes * encoder_flops},
        "pool-prototypes": {"bytes": feature_bytes},
        "cluster": {"flops": 2 * members * c["k"] * dims * c["niter"] * c["nredo"]},
        "write-pseudo-masks": {"bytes": feature_bytes + masks},
    }


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[800, 1600],
        help="train images; peak memory must not grow with them",
    )
    args = parser.parse_args()
    config = defaults()  # the default run's config
    torch.set_num_threads(args.threads)
    encoder = Encoder(config["encoder"]["arch"]).eval()
    size = config["annotation"]["input_size"]
    with torch.inference_mode():
        encoder_flops = limits.count_flops(lambda: encoder(torch.zeros(1, 3, size, size)))
    with scratch() as tmp:  # on the disk the pipeline writes to
        rates = limits.measure(pick_device(), tmp)
        startups = {name: limits.startup_seconds(name) for name in STAGES}
        sizes = {}
        for n in args.sizes:
            work = Path(tmp) / str(n)
            sizes[n] = annotate(config, n, args.threads, work)
            for name, need in least_work(config, work, n, encoder_flops).items():
                sizes[n][name].update(work=need, startup=startups[name])
        rates = limits.measure(pick_device(), tmp, before=rates)
        limits.add_floors([row for stages in sizes.values() for row in stages.values()], rates)
        work = Path(tmp) / str(args.sizes[0])
        features_mb = sum(f.stat().st_size for f in (work / "features.zarr").rglob("*"))
    results = {
        "threads": args.threads,
        "limits": rates,
        "encoder_flops_per_image": encoder_flops,
        "config": {k: config[k] for k in ("synthetic", "encoder", "annotation", "cluster")},
        "sizes": sizes,
        "features_zarr_mb": round(features_mb / 2**20, 1),
    }
    save(results, markdown, args.out, "annotation")


def markdown(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/method.md."""
    lines = [
        "## Offline annotation (`bench/annotation.py`)",
        "",
        f"Machine: {describe(r['machine'])}; {r['threads']} threads. "
        f"{limits.describe(r['limits'])}; the encoder "
        f"{r['encoder_flops_per_image'] / 1e9:.2f} GFLOP an image.",
        "",
    ]
    rows = [
        {"name": name, "size": size, **s, "limits": limits.cells(s)}
        for size, stages in r["sizes"].items()
        for name, s in stages.items()
    ]
    lines += table(
        rows,
        {
            "stage": "{name}",
            "train images": "{size}",
            "images": "{images}",
            "seconds": "{seconds}",
            "images/s": "{images_per_s}",
            "peak RSS (MB)": "{peak_rss_mb}",
            limits.HEADER: "{limits}",
        },
    )
    first = next(iter(r["sizes"]))
    return lines + ["", f"features.zarr at {first} train images: {r['features_zarr_mb']} MB."]


if __name__ == "__main__":
    main()
