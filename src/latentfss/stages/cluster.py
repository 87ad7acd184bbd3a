"""K+1 representatives of one fold into fold{f}/clusters.zarr (rule cluster, section 3.3.1).

The fold's train set is the train images holding a base class with >= min_support_pixels
(both references train on these only); its list is stored as `train_set` for the later stages.
Spherical K-Means runs over the fg prototypes of its base classes (novel classes are never
annotated in training images), and representative 0 = the mean of its per-image background
prototypes, in which novel-class pixels count as background. Remain (the other train images)
has no part in either: its labels are not used.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import faiss
import numpy as np

from latentfss import store
from latentfss.clustering import fold_background, spherical_kmeans
from latentfss.config import ClusterConfig, ProtocolConfig, from_params
from latentfss.datasets.index import read_index
from latentfss.episodes import base_classes, fold_images, novel_classes
from latentfss.errors import InputError
from latentfss.fs import atomic_dir

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--prototypes", required=True, type=Path, help="prototypes.zarr")
    parser.add_argument("--fold", required=True, type=int, choices=range(4))
    parser.add_argument("--out", required=True, type=Path, help="clusters.zarr to write")
    parser.add_argument("--params", default="", help="config section `cluster` as JSON")
    parser.add_argument("--protocol", default="", help="config section `protocol` as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="faiss threads")


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


def run(args: argparse.Namespace) -> None:
    cfg = from_params(ClusterConfig, args.params, "cluster")
    protocol = from_params(ProtocolConfig, args.protocol, "protocol")
    faiss.omp_set_num_threads(args.threads)
    log.info(
        "K-Means on %s",
        f"{faiss.get_num_gpus()} GPU(s)"
        if faiss.get_num_gpus()
        else f"the CPU ({args.threads} faiss threads)",
    )
    index = read_index(args.index)
    base = base_classes(args.fold, index.num_classes, protocol.class_split)
    train = index.split("train").index
    train_set = fold_images(
        index.pixels[index.pixels["image_id"].isin(train)], base, protocol.min_support_pixels
    )
    prototypes = store.open_group(args.prototypes, "pool-prototypes")
    try:
        result = representatives(
            prototypes,
            train_set,
            args.fold,
            index.num_classes,
            protocol.class_split,
            cfg,
            args.seed,
        )
    except ValueError as e:
        raise InputError(f"cluster fold {args.fold}: {e}") from None
    with atomic_dir(args.out) as tmp:
        group = store.create_group(
            tmp,
            fold=args.fold,
            K=cfg.k,
            seed=args.seed,
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
        args.fold,
        len(train_set),
        len(train) - len(train_set),
    )
    log.info(
        "fold %d: %d base-class prototypes -> K=%d clusters of sizes %s, inertia %.2f",
        args.fold,
        len(result["member"]),
        cfg.k,
        sizes.tolist(),
        result["inertia"],
    )
