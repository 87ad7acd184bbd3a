"""Eq. 3 pseudo masks of one fold into a Zarr store (rule write_pseudo_masks).

`--images train_set` (fold{f}/pseudo_masks_train_set.zarr): the fold's train set
(clusters.zarr's `train_set`), the mining stream, plus every image of the `mining.unlabeled`
folders (paper Table 5). `--images remain` (fold{f}/pseudo_masks_remain.zarr): the other train
images, which join the stream only with `mining.remain`. Every pixel is labelled with its nearest
representative by cosine on the feature grid; the cosine maps are upsampled to the image's own
size before the argmax. Labels: 0 = background, 1..K the sub-clusters; 255 pads each image up
to the largest size. The masks never change afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfss import features as annotation_features
from latentfss import store
from latentfss.datasets.images import image_files
from latentfss.datasets.index import read_index
from latentfss.episodes import IGNORE
from latentfss.errors import InputError
from latentfss.features import annotation_encoder, embed
from latentfss.fs import atomic_dir
from latentfss.progress import progress
from latentfss.prototypes import nearest_representative
from latentfss.runtime import pick_device, set_threads

log = logging.getLogger(__name__)
SUBSETS = ("train_set", "remain")


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    annotation_features.add_arguments(parser)  # --features, or --encoder-init to compute them
    parser.add_argument("--clusters", required=True, type=Path, help="fold's clusters.zarr")
    parser.add_argument("--out", required=True, type=Path, help="pseudo_masks.zarr to write")
    parser.add_argument(
        "--images",
        choices=SUBSETS,
        default="train_set",
        help="the fold's train set (the mining stream) or Remain",
    )
    parser.add_argument(
        "--unlabeled",
        nargs="*",
        default=[],
        type=Path,
        help="folders of extra unlabelled images (mining.unlabeled)",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")


def unlabeled_images(folders: list[Path]) -> list[Path]:
    paths = []
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: mining.unlabeled folder not found")
        paths += image_files(folder)
    return paths


def run(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    index = read_index(args.index)
    features = annotation_features.from_arguments(args, index.split("train"))
    clusters = store.open_group(args.clusters, "cluster")
    reps = torch.from_numpy(clusters["centroids"][:])
    feature_ids = features.image_ids
    in_set = np.isin(feature_ids, clusters["train_set"][:])
    rows = np.flatnonzero(in_set if args.images == "train_set" else ~in_set)  # of features.zarr
    image_ids = feature_ids[rows]
    extra = unlabeled_images(args.unlabeled)
    if extra and args.encoder_init is None:
        raise InputError("--unlabeled images need --encoder-init (encoder_init.pt) to embed them")
    sizes = [tuple(s) for s in index.images.loc[image_ids, ["height", "width"]].to_numpy()]
    for path in extra:
        try:
            width, height = Image.open(path).size
        except OSError:
            raise InputError(f"{path}: not a readable image") from None
        sizes.append((height, width))
    height_max, width_max = np.max(sizes, axis=0) if sizes else (1, 1)  # Remain may be empty
    with atomic_dir(args.out) as tmp:
        group = store.create_group(
            tmp,
            fold=clusters.attrs["fold"],
            K=len(reps) - 1,
            images=args.images,
            unlabeled=[str(p) for p in extra],
        )
        shape = (len(sizes), int(height_max), int(width_max))
        masks = store.create_array(
            group, "masks", shape, "uint8", chunks=(1, *shape[1:]), fill_value=IGNORE
        )
        store.write_array(group, "height", np.array([s[0] for s in sizes], dtype=np.int64))
        store.write_array(group, "width", np.array([s[1] for s in sizes], dtype=np.int64))
        store.write_array(group, "image_id", np.concatenate([image_ids, np.full(len(extra), -1)]))
        blocks = (block for _, block in features.blocks(rows))
        count = features.block_count(rows)
        if extra:
            device = features.device or pick_device(args.device)
            encoder = features.encoder or annotation_encoder(args.encoder_init, device)
            blocks = itertools.chain(
                blocks, embed(encoder, list(map(str, extra)), features.cfg, device, args.threads)
            )
            count += -(-len(extra) // features.cfg.batch_size)
        row = 0
        for block in progress(blocks, count, "write-pseudo-masks"):
            padded = np.full((len(block), *shape[1:]), IGNORE, dtype=np.uint8)
            for i, image_feats in enumerate(torch.from_numpy(np.asarray(block, np.float32))):
                height, width = sizes[row + i]
                labels = nearest_representative(image_feats[None], reps, (height, width))[0]
                padded[i, :height, :width] = labels.numpy()
            masks[row : row + len(block)] = padded  # whole chunks, written concurrently
            row += len(block)
    log.info(
        "fold %s: pseudo masks of %d train images (%s) + %d unlabelled images -> %s",
        clusters.attrs["fold"],
        len(image_ids),
        args.images,
        len(extra),
        args.out,
    )
