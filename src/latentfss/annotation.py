"""The offline annotation (section 3.3.1) from Python: the initial encoder and the features of
every train image (rule extract_features), their Eq. 2 prototypes (pool_prototypes) and a
fold's Eq. 3 pseudo masks (write_pseudo_masks). Each streams over the features in blocks, so
memory does not grow with the dataset, and writes its store whole or not at all.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfss import code_version, store
from latentfss.config import AnnotationConfig, EncoderConfig
from latentfss.datasets.images import image_files, read_mask
from latentfss.datasets.index import DatasetIndex
from latentfss.encoder import Encoder, build_encoder, calibrate_batchnorm
from latentfss.episodes import IGNORE
from latentfss.errors import InputError
from latentfss.features import (
    Features,
    annotation_encoder,
    embed,
    feature_attrs,
    normalised_batches,
)
from latentfss.fs import atomic_dir, save_torch
from latentfss.progress import progress
from latentfss.prototypes import nearest_representative, present_labels, region_prototypes
from latentfss.runtime import seed_everything

log = logging.getLogger(__name__)
SUBSETS = ("train_set", "remain")  # write_pseudo_masks' images: the mining stream, or Remain


def initial_encoder(
    cfg: EncoderConfig,
    calibration: Sequence[str],
    annotation: AnnotationConfig,
    device: torch.device,
    seed: int,
    threads: int,
) -> Encoder:
    """The weights training starts from: loaded, or seeded random with calibrated BatchNorm."""
    seed_everything(seed)
    encoder = build_encoder(cfg).to(device).eval().to(memory_format=torch.channels_last)
    if cfg.weights == "none":
        seen = calibrate_batchnorm(
            encoder, normalised_batches(calibration, annotation, device, threads)
        )
        log.info("random weights (seed %d): BatchNorm calibrated on %d train images", seed, seen)
    return encoder


def extract_features(
    index: DatasetIndex,
    encoder_cfg: EncoderConfig,
    cfg: AnnotationConfig,
    encoder_out: Path,
    out: Path | None,
    device: torch.device,
    seed: int = 0,
    threads: int = 1,
) -> None:
    """The initial encoder into `encoder_out` (encoder_init.pt) and, given `out`, every train
    image embedded by it into features.zarr (float16)."""
    train = index.split("train")
    paths = train["image"].tolist()
    encoder = initial_encoder(
        encoder_cfg, paths[: encoder_cfg.calibration_images], cfg, device, seed, threads
    )
    weights = {k: v.cpu() for k, v in encoder.state_dict().items()}
    save_torch(
        {
            "state_dict": weights,
            "encoder": dataclasses.asdict(encoder_cfg),
            "seed": seed,
            "code_version": code_version(),
        },
        encoder_out,
    )
    if out is None:
        log.info("initial encoder -> %s (no features.zarr asked for)", encoder_out)
        return
    features = Features(
        train.index.to_numpy(np.int64),
        feature_attrs(dataclasses.asdict(encoder_cfg), cfg, device),
        paths=paths,
        encoder=encoder,
        device=device,
        threads=threads,
    )
    with atomic_dir(out) as tmp:
        group = store.create_group(tmp, **features.attrs)
        feats = store.create_array(
            group, "feats", features.shape, "float16", chunks=(1, *features.shape[1:])
        )
        store.write_array(group, "image_id", features.image_ids)
        blocks = features.blocks(np.arange(len(train)))
        for rows, block in progress(blocks, -(-len(train) // cfg.batch_size), "extract-features"):
            feats[rows[0] : rows[-1] + 1] = block
    log.info(
        "embedded %d train images on %s: feats %s float16 -> %s",
        len(train),
        device,
        features.shape,
        out,
    )


def pool_prototypes(index: DatasetIndex, features: Features, out: Path) -> None:
    """Eq. 2 prototypes of every train image into prototypes.zarr: one fg prototype per (image,
    class present) and one background prototype per image, each with its mass on the feature
    grid (fg_weight, bg_weight) so that prototypes can later be merged exactly (a fold's
    background also takes in the novel classes, which training images hide)."""
    image_ids = features.image_ids
    n, channels, h, w = features.shape
    # one fg row per (train image, class > 0) with pixels: known from the index in advance
    pixels = index.pixels[index.pixels["image_id"].isin(image_ids) & (index.pixels["class_id"] > 0)]
    with atomic_dir(out) as tmp:
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
    log.info("pooled %d fg and %d bg prototypes (C=%d) -> %s", len(pixels), n, channels, out)


def unlabeled_images(folders: Sequence[Path]) -> list[Path]:
    paths = []
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: mining.unlabeled folder not found")
        paths += image_files(folder)
    return paths


def write_pseudo_masks(
    index: DatasetIndex,
    features: Features,
    clusters_path: Path,
    out: Path,
    images: str = "train_set",
    unlabeled: Sequence[Path] = (),
    encoder_init: Path | None = None,
    device: torch.device | None = None,
    threads: int = 1,
) -> None:
    """Eq. 3 pseudo masks of one fold into pseudo_masks.zarr. `images` (SUBSETS): the fold's
    train set (clusters.zarr's `train_set`), the mining stream, plus every image of the
    `unlabeled` folders (paper Table 5, embedded by `encoder_init` on `device`), or `remain`,
    the other train images. Every pixel is labelled with its nearest representative by cosine
    on the feature grid; the cosine maps are upsampled to the image's own size before the
    argmax. Labels: 0 = background, 1..K the sub-clusters; 255 pads each image up to the
    largest size."""
    clusters = store.open_group(clusters_path, "cluster")
    reps = torch.from_numpy(clusters["centroids"][:])
    feature_ids = features.image_ids
    in_set = np.isin(feature_ids, clusters["train_set"][:])
    rows = np.flatnonzero(in_set if images == "train_set" else ~in_set)  # of features.zarr
    image_ids = feature_ids[rows]
    extra = unlabeled_images(unlabeled)
    if extra and encoder_init is None:
        raise InputError("--unlabeled images need --encoder-init (encoder_init.pt) to embed them")
    sizes = [tuple(s) for s in index.images.loc[image_ids, ["height", "width"]].to_numpy()]
    for path in extra:
        try:
            width, height = Image.open(path).size
        except OSError:
            raise InputError(f"{path}: not a readable image") from None
        sizes.append((height, width))
    height_max, width_max = np.max(sizes, axis=0) if sizes else (1, 1)  # Remain may be empty
    with atomic_dir(out) as tmp:
        group = store.create_group(
            tmp,
            fold=clusters.attrs["fold"],
            K=len(reps) - 1,
            images=images,
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
            device = features.device or device
            encoder = features.encoder or annotation_encoder(encoder_init, device)
            blocks = itertools.chain(
                blocks, embed(encoder, list(map(str, extra)), features.cfg, device, threads)
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
        images,
        len(extra),
        out,
    )
