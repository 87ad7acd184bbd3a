"""Representative sub-clusters (section 3.3.1): spherical K-Means on base-class prototypes plus
the mean background prototype."""

from __future__ import annotations

import faiss
import numpy as np

from latentfss.config import ClusterConfig


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
