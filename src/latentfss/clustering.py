"""Representative sub-clusters of a fold (section 3.3.1): spherical K-Means on base-class
prototypes plus the mean background prototype, into clusters.zarr (`cluster_fold`).

The fold's train set is the train images holding a base class with >= min_support_pixels
(both references train on these only); its list is stored as `train_set` for the later stages.
Spherical K-Means runs over the fg prototypes of its base classes (novel classes are never
annotated in training images), and representative 0 = the mean of its per-image background
prototypes, in which novel-class pixels count as background. Remain (the other train images)
has no part in either: its labels are not used.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import faiss
import numpy as np

from latentfss import store
from latentfss.config import ClusterConfig, ProtocolConfig
from latentfss.datasets.index import read_index
from latentfss.episodes import base_classes, fold_images, novel_classes
from latentfss.errors import InputError
from latentfss.fs import atomic_dir

log = logging.getLogger(__name__)


def spherical_kmeans(
    x: np.ndarray, cfg: ClusterConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """K-Means on the unit sphere (cosine geometry) with faiss, on the GPUs when faiss sees any.

    x (M, C) float32 -> centroids (K, C) unit-norm, assign (M,) int64, inertia (the sum of
    squared distances of the normalised points to their centroids, best of nredo runs).
    """
    if len(x) < cfg.k:
        raise ValueError(f"{len(x)} prototypes cannot make {cfg.k} clusters")
    unit = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12), "float32")
    kmeans = faiss.Kmeans(
        unit.shape[1],
        cfg.k,
        niter=cfg.niter,
        nredo=cfg.nredo,
        spherical=True,
        seed=seed,
        max_points_per_centroid=1 << 30,
        verbose=False,
        gpu=faiss.get_num_gpus() > 0,
    )
    kmeans.train(unit)
    distances, assign = kmeans.index.search(unit, 1)
    return kmeans.centroids.copy(), assign[:, 0].astype(np.int64), float(distances.sum())


def fold_background(
    bg: np.ndarray,
    bg_weight: np.ndarray,
    fg: np.ndarray,
    fg_weight: np.ndarray,
    fg_image: np.ndarray,
    hidden: np.ndarray,
) -> np.ndarray:
    """Per-image background prototypes of a fold, where `hidden` fg rows (novel classes, which
    training images must not reveal) count as background: the Eq. 2 average over both.

    bg (N, C), bg_weight (N,); fg (M, C), fg_weight (M,), fg_image (M,) rows of bg, hidden (M,)
    bool -> (N, C); images with no background at all get NaN rows.
    """
    sums = bg * bg_weight[:, None]
    mass = bg_weight.astype(np.float64).copy()
    np.add.at(sums, fg_image[hidden], fg[hidden] * fg_weight[hidden, None])
    np.add.at(mass, fg_image[hidden], fg_weight[hidden])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / mass[:, None]).astype(np.float32)


def representatives(
    prototypes,
    train_set: np.ndarray,
    fold: int,
    num_classes: int,
    split: str,
    cfg: ClusterConfig,
    seed: int,
) -> dict:
    """centroids (K+1, C) with row 0 = background, member (M_f,), assign (M_f,), inertia; from
    the prototypes of the images in `train_set` (image ids) only."""
    in_set = np.isin(prototypes["image_id"][:], train_set)  # per prototypes.zarr image row
    fg_class, fg_image = prototypes["fg_class"][:], prototypes["fg_image"][:]
    member = np.flatnonzero(
        np.isin(fg_class, base_classes(fold, num_classes, split)) & in_set[fg_image]
    )
    hidden = np.isin(fg_class, novel_classes(fold, num_classes, split))
    fg = prototypes["fg"][:]  # (M, C) float32: 1 GB on COCO (236,608 x 1,024, rehearsed)
    centroids, assign, inertia = spherical_kmeans(fg[member], cfg, seed)
    bg = fold_background(
        prototypes["bg"][:],
        prototypes["bg_weight"][:],
        fg,
        prototypes["fg_weight"][:],
        fg_image,
        hidden,
    )
    background = np.nanmean(bg[in_set], axis=0, keepdims=True)  # images without bg: skipped
    return {
        "centroids": np.concatenate([background, centroids]).astype(np.float32),
        "member": member,
        "assign": assign,
        "inertia": inertia,
    }


def cluster_fold(
    index_dir: Path,
    prototypes_path: Path,
    fold: int,
    out: Path,
    cfg: ClusterConfig,
    protocol: ProtocolConfig,
    seed: int = 0,
    threads: int = 1,
) -> None:
    """A fold's train set and its K+1 representatives into `out` (clusters.zarr)."""
    faiss.omp_set_num_threads(threads)
    log.info(
        "K-Means on %s",
        f"{faiss.get_num_gpus()} GPU(s)"
        if faiss.get_num_gpus()
        else f"the CPU ({threads} faiss threads)",
    )
    index = read_index(index_dir)
    base = base_classes(fold, index.num_classes, protocol.class_split)
    train = index.split("train").index
    train_set = fold_images(
        index.pixels[index.pixels["image_id"].isin(train)], base, protocol.min_support_pixels
    )
    prototypes = store.open_group(prototypes_path, "pool-prototypes")
    try:
        result = representatives(
            prototypes,
            train_set,
            fold,
            index.num_classes,
            protocol.class_split,
            cfg,
            seed,
        )
    except ValueError as e:
        raise InputError(f"cluster fold {fold}: {e}") from None
    with atomic_dir(out) as tmp:
        group = store.create_group(
            tmp,
            fold=fold,
            K=cfg.k,
            seed=seed,
            inertia=result["inertia"],
            cluster=dataclasses.asdict(cfg),
            protocol=dataclasses.asdict(protocol),
            base_classes=list(base),
        )
        for name in ("centroids", "member", "assign"):
            store.write_array(group, name, result[name])
        store.write_array(group, "train_set", train_set.astype(np.int64))
    sizes = np.bincount(result["assign"], minlength=cfg.k)
    log.info(
        "fold %d: train set %d images, Remain %d",
        fold,
        len(train_set),
        len(train) - len(train_set),
    )
    log.info(
        "fold %d: %d base-class prototypes -> K=%d clusters of sizes %s, inertia %.2f",
        fold,
        len(result["member"]),
        cfg.k,
        sizes.tolist(),
        result["inertia"],
    )
