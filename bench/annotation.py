"""Backs docs/method.md, "The offline annotation": its stages' speed and flat memory.

Offline-annotation benchmark: throughput, peak memory and distance to the floor
(bench/limits.py) of each stage on the synthetic benchmark at the default config, at two dataset
sizes, and faiss K-Means against scikit-learn's on the same prototypes.

    python bench/annotation.py [--threads 2] [--out bench/results]

Writes bench/results/annotation.json and annotation.md (assembled into docs/benchmarks.md by
bench/report.py). Needs `pip install -e '.[bench]'` for scikit-learn.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import limits
import numpy as np
import torch
import zarr
from record import arguments, describe, run_stage, save, scratch

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


def euclidean_sse(x, assign) -> float:
    """K-Means objective of an assignment: squared distances to each cluster's mean."""
    return float(
        sum(((x[assign == k] - x[assign == k].mean(0)) ** 2).sum() for k in set(assign.tolist()))
    )


def compare_kmeans(x, k: int, niter: int, nredo: int, repeats: int = 3) -> dict:
    from sklearn.cluster import KMeans

    from latentfss.clustering import ClusterConfig, spherical_kmeans

    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    runs = {"faiss": [], "sklearn": []}
    spherical_kmeans(unit, ClusterConfig(k, 2, 1), seed=0)  # warm-up: thread pools, page-in
    KMeans(k, n_init=1, max_iter=2, random_state=0).fit(unit)
    for _ in range(repeats):
        start = time.perf_counter()
        _, faiss_assign, faiss_own = spherical_kmeans(unit, ClusterConfig(k, niter, nredo), seed=0)
        runs["faiss"].append(time.perf_counter() - start)
        start = time.perf_counter()
        sk = KMeans(k, n_init=nredo, max_iter=niter, random_state=0).fit(unit)
        runs["sklearn"].append(time.perf_counter() - start)
    faiss_s, sklearn_s = statistics.median(runs["faiss"]), statistics.median(runs["sklearn"])
    return {
        "points": list(unit.shape),
        "k": k,
        "niter": niter,
        "nredo": nredo,
        "faiss_seconds": round(faiss_s, 4),
        "sklearn_seconds": round(sklearn_s, 4),
        "sklearn_over_faiss": round(sklearn_s / faiss_s, 2),
        "faiss_inertia_spherical": round(faiss_own, 3),
        "sklearn_inertia": round(sk.inertia_, 3),
        "faiss_sse_of_assignment": round(euclidean_sse(unit, faiss_assign), 3),
        "sklearn_sse_of_assignment": round(euclidean_sse(unit, sk.labels_), 3),
    }


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
        work = Path(tmp) / str(args.sizes[0])  # the K-Means comparison runs on these prototypes
        protos = zarr.open_group(str(work / "prototypes.zarr"), mode="r")
        members = zarr.open_group(str(work / "clusters.zarr"), mode="r")["member"][:]
        prototypes = protos["fg"][:][members]
        features_mb = sum(f.stat().st_size for f in (work / "features.zarr").rglob("*"))
    cluster = config["cluster"]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 1024))
    stand_in = centres[rng.integers(0, 40, 9000)] + rng.normal(0, 2.0, (9000, 1024))
    results = {
        "threads": args.threads,
        "limits": rates,
        "encoder_flops_per_image": encoder_flops,
        "config": {k: config[k] for k in ("synthetic", "encoder", "annotation", "cluster")},
        "sizes": sizes,
        "features_zarr_mb": round(features_mb / 2**20, 1),
        "kmeans_synthetic_fold0": compare_kmeans(
            prototypes, cluster["k"], cluster["niter"], cluster["nredo"]
        ),
        "kmeans_pascal_sized_stand_in": compare_kmeans(
            stand_in.astype(np.float32), cluster["k"], cluster["niter"], cluster["nredo"]
        ),
    }
    save(results, markdown, args.out, "annotation")


def markdown(r: dict) -> list[str]:
    m = r["machine"]
    lines = [
        "## Offline annotation (`bench/annotation.py`)",
        "",
        f"Machine: {describe(m)}; {r['threads']} threads. Synthetic benchmark at the "
        f"default config ({r['config']['encoder']['arch']}, input "
        f"{r['config']['annotation']['input_size']}) with "
        f"{' and '.join(map(str, r['sizes']))} train images: pooling, clustering and "
        "pseudo-mask writing stream through Zarr, so their peak memory should not grow with "
        "the dataset. Each stage runs as its own process (seconds include its start-up).",
        "",
        f"Limits measured in the same run (`bench/limits.py`): {limits.describe(r['limits'])}. "
        "A stage's floor is its least work over the limit that bounds it: compute = FLOPs "
        f"counted by torch's FlopCounterMode (the encoder: "
        f"{r['encoder_flops_per_image'] / 1e9:.2f} GFLOP per image, over every train image "
        "and the BatchNorm-calibration images; K-Means: 2 n K d per iteration and restart); "
        "memory = the float16 features read (and masks written); disk = the image files "
        "written (make-synthetic) or read (prepare). `% of limit` = floor / seconds; `after "
        "start-up` leaves out the stage's process start-up (Python and its imports: "
        "`latentfss STAGE --help`).",
        "",
        f"| stage | train images | images | seconds | images/s | peak RSS (MB) | {limits.HEADER} |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for size, stages in r["sizes"].items():
        for name, s in stages.items():
            lines.append(
                f"| {name} | {size} | {s['images']} | {s['seconds']} | "
                f"{s['images_per_s']} | {s['peak_rss_mb']} | "
                f"{limits.cells(s)} |"
            )
    first = next(iter(r["sizes"]))
    lines += [
        "",
        f"features.zarr on disk at {first} train images: {r['features_zarr_mb']} MB.",
        "",
        "K-Means, faiss (spherical) against scikit-learn (k-means++, Euclidean on the "
        "L2-normalised vectors), same K, iterations and restarts; median of 3 runs "
        "after a warm-up. "
        "`SSE` scores each method's assignment by the same measure (squared distances "
        "to its clusters' means).",
        "",
        "| data | points x dims | faiss s | sklearn s | sklearn/faiss | faiss SSE | sklearn SSE |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    datasets = {
        "kmeans_synthetic_fold0": "synthetic fold-0 prototypes",
        "kmeans_pascal_sized_stand_in": "Gaussian mixture, PASCAL-sized",
    }
    for key, label in datasets.items():
        k = r[key]
        lines.append(
            f"| {label} | {k['points'][0]} x {k['points'][1]} | "
            f"{k['faiss_seconds']} | {k['sklearn_seconds']} | "
            f"{k['sklearn_over_faiss']} | {k['faiss_sse_of_assignment']} | "
            f"{k['sklearn_sse_of_assignment']} |"
        )
    return lines


if __name__ == "__main__":
    main()
