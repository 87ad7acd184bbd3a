"""Offline-annotation benchmark: throughput and peak memory of each stage on the synthetic
benchmark at the default config, and faiss K-Means against scikit-learn's on the same prototypes.

    python bench/annotation.py [--threads 2] [--out bench/results]

Writes bench/results/annotation.json and annotation.md (assembled into BENCHMARKS.md by
bench/report.py). Needs `pip install -e '.[bench]'` for scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import describe, machine, save

# Only the standard library is imported before the stages run: a forked child's peak RSS
# (ru_maxrss) counts the pages it shares with its parent, so the parent must stay small.
REPO = Path(__file__).resolve().parents[1]


def timed_stage(stage: str, **flags) -> dict:
    """Run `latentfss STAGE --flag value ...` in its own process: seconds and peak memory."""
    argv = [str(a) for key, value in flags.items() for a in (f"--{key.replace('_', '-')}", value)]
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "latentfss.cli", "--log-level", "WARNING",
                                stage, *argv], stderr=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage failed: {stage}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def euclidean_sse(x, assign) -> float:
    """K-Means objective of an assignment: squared distances to each cluster's mean."""
    return float(sum(((x[assign == k] - x[assign == k].mean(0)) ** 2).sum()
                     for k in set(assign.tolist())))  # fmt: skip


def compare_kmeans(x, k: int, niter: int, nredo: int, repeats: int = 3) -> dict:
    import numpy as np
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
        "points": list(unit.shape), "k": k, "niter": niter, "nredo": nredo,
        "faiss_seconds": round(faiss_s, 4), "sklearn_seconds": round(sklearn_s, 4),
        "sklearn_over_faiss": round(sklearn_s / faiss_s, 2),
        "faiss_inertia_spherical": round(faiss_own, 3), "sklearn_inertia": round(sk.inertia_, 3),
        "faiss_sse_of_assignment": round(euclidean_sse(unit, faiss_assign), 3),
        "sklearn_sse_of_assignment": round(euclidean_sse(unit, sk.labels_), 3),
    }  # fmt: skip


def annotate(config: dict, num_train: int, threads: int, work: Path) -> dict:
    """Every annotation stage on a synthetic dataset of `num_train` train images (fold 0)."""
    work.mkdir()
    synthetic = json.dumps({**config["synthetic"], "num_train": num_train})
    annotation = json.dumps({k: v for k, v in config["annotation"].items()
                             if k != "temporary_features"})  # fmt: skip
    index, features = work / "dataset", work / "features.zarr"
    run = {
        "make-synthetic": timed_stage("make-synthetic", out=work / "voc", params=synthetic),
        "prepare": timed_stage("prepare", out=index, threads=threads,
                               params=json.dumps({"root": str(work / "voc")})),
        "extract-features": timed_stage("extract-features", index=index, out=features,
                                        encoder_out=work / "encoder_init.pt",
                                        encoder=json.dumps(config["encoder"]), params=annotation,
                                        threads=threads, seed=config["seed"]),
        "pool-prototypes": timed_stage("pool-prototypes", index=index, features=features,
                                       out=work / "prototypes.zarr", threads=threads),
        "cluster": timed_stage("cluster", index=index, prototypes=work / "prototypes.zarr",
                               fold=0, out=work / "clusters.zarr",
                               params=json.dumps(config["cluster"]), threads=threads),
        "write-pseudo-masks": timed_stage("write-pseudo-masks", index=index, features=features,
                                          clusters=work / "clusters.zarr",
                                          out=work / "pseudo_masks.zarr", threads=threads),
    }  # fmt: skip
    everything = num_train + config["synthetic"]["num_val"]
    for name, result in run.items():
        result["images"] = everything if name in ("make-synthetic", "prepare") else num_train
        result["images_per_s"] = round(result["images"] / result["seconds"], 1)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 1600],
                        help="train images; peak memory must not grow with them")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    import yaml  # light: the config is plain YAML with every key written out

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        works = {n: Path(tmp) / str(n) for n in args.sizes}
        sizes = {n: annotate(config, n, args.threads, work) for n, work in works.items()}
        import numpy as np  # only now: the stages' processes have all been measured
        import zarr

        work = works[args.sizes[0]]  # the K-Means comparison runs on these prototypes
        protos = zarr.open_group(str(work / "prototypes.zarr"), mode="r")
        members = zarr.open_group(str(work / "clusters.zarr"), mode="r")["member"][:]
        prototypes = protos["fg"][:][members]
        features_mb = sum(f.stat().st_size for f in (work / "features.zarr").rglob("*"))
    cluster = config["cluster"]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 1024))
    stand_in = centres[rng.integers(0, 40, 9000)] + rng.normal(0, 2.0, (9000, 1024))
    results = {
        "machine": machine(), "threads": args.threads,
        "config": {k: config[k] for k in ("synthetic", "encoder", "annotation", "cluster")},
        "sizes": sizes, "features_zarr_mb": round(features_mb / 2**20, 1),
        "kmeans_synthetic_fold0": compare_kmeans(prototypes, cluster["k"], cluster["niter"],
                                                 cluster["nredo"]),
        "kmeans_pascal_sized_stand_in": compare_kmeans(stand_in.astype(np.float32), cluster["k"],
                                                       cluster["niter"], cluster["nredo"]),
    }  # fmt: skip
    save(results, markdown(results), args.out, "annotation")


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "## Offline annotation (`bench/annotation.py`)", "",
        f"Machine: {describe(m)}; {r['threads']} threads. Synthetic benchmark at the "
        f"default config ({r['config']['encoder']['arch']}, input "
        f"{r['config']['annotation']['input_size']}) with "
        f"{' and '.join(map(str, r['sizes']))} train images: pooling, clustering and "
        "pseudo-mask writing stream through Zarr, so their peak memory should not grow with "
        "the dataset.", "",
        "| stage | train images | images | seconds | images/s | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for size, stages in r["sizes"].items():
        for name, s in stages.items():
            lines.append(f"| {name} | {size} | {s['images']} | {s['seconds']} | "
                         f"{s['images_per_s']} | {s['peak_rss_mb']} |")  # fmt: skip
    first = next(iter(r["sizes"]))
    lines += ["", f"features.zarr on disk at {first} train images: {r['features_zarr_mb']} MB.",
              "",
              "K-Means, faiss (spherical) against scikit-learn (k-means++, Euclidean on the "
              "L2-normalised vectors), same K, iterations and restarts; median of 3 runs "
              "after a warm-up. "
              "`SSE` scores each method's assignment by the same measure (squared distances "
              "to its clusters' means).", "",
              "| data | points x dims | faiss s | sklearn s | sklearn/faiss | faiss SSE | "
              "sklearn SSE |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    datasets = {"kmeans_synthetic_fold0": "synthetic fold-0 prototypes",
                "kmeans_pascal_sized_stand_in": "Gaussian mixture, PASCAL-sized"}  # fmt: skip
    for key, label in datasets.items():
        k = r[key]
        lines.append(f"| {label} | {k['points'][0]} x {k['points'][1]} | "
                     f"{k['faiss_seconds']} | {k['sklearn_seconds']} | "
                     f"{k['sklearn_over_faiss']} | {k['faiss_sse_of_assignment']} | "
                     f"{k['sklearn_sse_of_assignment']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
