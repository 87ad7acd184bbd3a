"""Eq. 2 prototypes of every train image into prototypes.zarr (rule pool_prototypes).

One fg prototype per (image, class present) and one background prototype per image, each with
its mass on the feature grid (fg_weight, bg_weight) so that prototypes can later be merged
exactly (a fold's background also takes in the novel classes, which training images hide).
Streams over the features (features.zarr, or computed again without it) in blocks: memory does
not grow with the dataset.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from latentfss import features as annotation_features
from latentfss import store
from latentfss.datasets.images import read_mask
from latentfss.datasets.index import read_index
from latentfss.fs import atomic_dir
from latentfss.progress import progress
from latentfss.prototypes import present_labels, region_prototypes
from latentfss.runtime import set_threads

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    annotation_features.add_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="prototypes.zarr to write")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")


def run(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    index = read_index(args.index)
    features = annotation_features.from_arguments(args, index.split("train"))
    image_ids = features.image_ids
    n, channels, h, w = features.shape
    # one fg row per (train image, class > 0) with pixels: known from the index in advance
    pixels = index.pixels[index.pixels["image_id"].isin(image_ids) & (index.pixels["class_id"] > 0)]
    with atomic_dir(args.out) as tmp:
        group = store.create_group(tmp, features=features.attrs, grid=[h, w])
        m = len(pixels)
        layout = {
            "fg": ((m, channels), "float32"),
            "fg_image": ((m,), "int64"),
            "fg_class": ((m,), "int64"),
            "fg_pixels": ((m,), "int64"),
            "fg_weight": ((m,), "float32"),
            "bg": ((n, channels), "float32"),
            "bg_weight": ((n,), "float32"),
        }
        rows = {
            name: store.RowWriter(store.create_array(group, name, shape, dtype))
            for name, (shape, dtype) in layout.items()
        }
        store.write_array(group, "image_id", image_ids)
        masks = index.images["mask"]
        blocks = features.blocks(np.arange(n))
        for block_rows, block in progress(
            blocks, features.block_count(np.arange(n)), "pool-prototypes"
        ):
            block = torch.from_numpy(block.astype(np.float32))
            for row, image_feats in zip(block_rows, block, strict=True):  # (C, h, w)
                mask = read_mask(masks[image_ids[row]], index.num_classes)
                labels = present_labels(mask)
                protos, mass, counts = region_prototypes(image_feats, mask, labels)  # (P, C), ...
                is_bg = labels == 0
                rows["bg"].append(
                    protos[is_bg] if is_bg.any() else np.zeros((1, channels), "float32")
                )
                rows["bg_weight"].append(mass[is_bg] if is_bg.any() else np.zeros(1, "float32"))
                fg = ~is_bg
                rows["fg"].append(protos[fg])
                rows["fg_image"].append(np.full(fg.sum(), row, dtype=np.int64))
                rows["fg_class"].append(labels[fg].astype(np.int64))
                rows["fg_pixels"].append(counts[fg].astype(np.int64))
                rows["fg_weight"].append(mass[fg])
        for writer in rows.values():
            writer.close()
    log.info("pooled %d fg and %d bg prototypes (C=%d) -> %s", len(pixels), n, channels, args.out)
