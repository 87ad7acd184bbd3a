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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from latentfss import code_version, store
from latentfss.config import AnnotationConfig, EncoderConfig
from latentfss.datasets.images import image_files, read_mask
from latentfss.datasets.index import DatasetIndex
from latentfss.encoder import Encoder, build_encoder, calibrate_batchnorm
from latentfss.episodes import IGNORE
from latentfss.errors import InputError
from latentfss.features import (
    BLOCK,
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
            feats[rows[0] : rows[-1] + 1] = block.cpu().numpy()
    log.info(
        "embedded %d train images on %s: feats %s float16 -> %s",
        len(train),
        device,
        features.shape,
        out,
    )


class MaskFiles(Dataset):
    """Item i: the class-index mask of `paths[i]` as a (H, W) uint8 array, decoded in a
    DataLoader worker. Arrays, in lists of BLOCK: a tensor would reach the main process through
    shared memory, one socket connection each, which took longer than decoding the mask."""

    def __init__(self, paths: Sequence[str], num_classes: int) -> None:
        self.paths, self.num_classes = list(paths), num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_mask(self.paths[i], self.num_classes)


def pool_prototypes(index: DatasetIndex, features: Features, out: Path) -> None:
    """Eq. 2 prototypes of every train image into prototypes.zarr: one fg prototype per (image,
    class present) and one background prototype per image, each with its mass on the feature
    grid (fg_weight, bg_weight) so that prototypes can later be merged exactly (a fold's
    background also takes in the novel classes, which training images hide).

    The masks are decoded in `features.threads` DataLoader workers while the features' device
    pools, one image at a time (a handful of kernels: batching images would hold all their
    full-resolution label indicators at once)."""
    image_ids = features.image_ids
    n, channels, h, w = features.shape
    device = features.device or torch.device("cpu")
    # one fg row per (train image, class > 0) with pixels: known from the index in advance
    pixels = index.pixels[index.pixels["image_id"].isin(image_ids) & (index.pixels["class_id"] > 0)]
    masks = DataLoader(
        MaskFiles(index.images.loc[image_ids, "mask"].tolist(), index.num_classes),
        batch_size=BLOCK,
        num_workers=features.threads,
        collate_fn=list,
    )
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
        masks = itertools.chain.from_iterable(masks)
        blocks = features.blocks(np.arange(n))
        for block_rows, block in progress(
            blocks, features.block_count(np.arange(n)), "pool-prototypes"
        ):
            pooled = []  # per image: labels (background first), pixels, prototypes, mass
            for image_feats in block.to(device):
                mask = torch.tensor(next(masks), device=device)
                labels, counts = present_labels(mask, with_background=True)
                protos = region_prototypes(image_feats.float(), mask, labels)
                pooled.append((labels, counts, *protos))
            labels, counts, protos, mass = (torch.cat(x).cpu() for x in zip(*pooled, strict=True))
            per_image = torch.tensor([len(p[0]) for p in pooled])
            image = torch.repeat_interleave(torch.from_numpy(block_rows), per_image)
            bg, fg = labels == 0, labels > 0
            rows["bg"].append(protos[bg].numpy())
            rows["bg_weight"].append(mass[bg].numpy())
            for name, values in zip(
                ("fg", "fg_image", "fg_class", "fg_pixels", "fg_weight"),
                (protos, image, labels, counts, mass),
                strict=True,
            ):
                rows[name].append(values[fg].numpy())
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
) -> None:
    """Eq. 3 pseudo masks of one fold into pseudo_masks.zarr. `images` (SUBSETS): the fold's
    train set (clusters.zarr's `train_set`), the mining stream, plus every image of the
    `unlabeled` folders (paper Table 5, embedded by `encoder_init`), or `remain`, the other
    train images. Every pixel is labelled with its nearest representative by cosine on the
    feature grid; the cosine maps are upsampled to the image's own size before the argmax.
    Labels: 0 = background, 1..K the sub-clusters; 255 pads each image up to the largest size.

    The features' device labels a block's images of one size together; a host thread writes
    each block's masks while the device labels the next."""
    device = features.device or torch.device("cpu")
    clusters = store.open_group(clusters_path, "cluster")
    reps = torch.from_numpy(clusters["centroids"][:]).to(device)
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
    sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)
    height_max, width_max = sizes.max(axis=0) if len(sizes) else (1, 1)  # Remain may be empty
    with atomic_dir(out) as tmp, ThreadPoolExecutor(1) as writer:
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
        store.write_array(group, "height", sizes[:, 0])
        store.write_array(group, "width", sizes[:, 1])
        store.write_array(group, "image_id", np.concatenate([image_ids, np.full(len(extra), -1)]))
        blocks = (block for _, block in features.blocks(rows))
        count = features.block_count(rows)
        if extra:
            encoder = features.encoder or annotation_encoder(encoder_init, device)
            embedded = embed(encoder, list(map(str, extra)), features.cfg, device, features.threads)
            blocks = itertools.chain(blocks, embedded)
            count += -(-len(extra) // features.cfg.batch_size)
        row, written = 0, None
        for block in progress(blocks, count, "write-pseudo-masks"):
            padded = torch.full((len(block), *shape[1:]), IGNORE, dtype=torch.uint8)
            block, block_sizes = block.to(device), sizes[row : row + len(block)]
            for height, width in np.unique(block_sizes, axis=0):  # one batch per image size
                same = np.flatnonzero((block_sizes == (height, width)).all(axis=1))
                labels = nearest_representative(block[same].float(), reps, (height, width))
                padded[same, :height, :width] = labels.to(torch.uint8).cpu()
            if written is not None:
                written.result()
            # whole chunks, encoded and written while the device labels the next block
            written = writer.submit(masks.__setitem__, slice(row, row + len(block)), padded.numpy())
            row += len(block)
        if written is not None:
            written.result()
    log.info(
        "fold %s: pseudo masks of %d train images (%s) + %d unlabelled images -> %s",
        clusters.attrs["fold"],
        len(image_ids),
        images,
        len(extra),
        out,
    )
