"""The region bank of one fold and shot (rule build_bank; section 3.4): with the trained EMA
model, an image embedding of every train image in a faiss inner-product index, and a prototype
of every pseudo-mask region (labels 1..K) of every train image."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from latentfss import store
from latentfss.config import from_params
from latentfss.datasets.index import read_index
from latentfss.fs import atomic_dir
from latentfss.model import load_model
from latentfss.progress import progress
from latentfss.prototypes import area_weights, masked_average, present_labels
from latentfss.region_bank import image_embedding
from latentfss.runtime import autocast, pick_device
from latentfss.stages.extract_features import AnnotationConfig, normalised_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankConfig:
    """The keys of section `evaluate` the bank uses: it embeds images as evaluation does."""

    input_size: int = 128
    batch_size: int = 16


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--pseudo-masks", required=True, type=Path, help="fold's pseudo_masks.zarr")
    parser.add_argument("--out", required=True, type=Path, help="bank directory to write")
    parser.add_argument("--params", default="", help="evaluate.input_size/batch_size as JSON")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")


@torch.inference_mode()
def run(args: argparse.Namespace) -> None:
    cfg = from_params(BankConfig, args.params, "evaluate")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    device = pick_device()
    index = read_index(args.index)
    model, _ = load_model(args.model)
    encoder = model.encoder.to(device).eval()
    pseudo = store.open_group(args.pseudo_masks, "write-pseudo-masks")
    image_ids = pseudo["image_id"][:]
    image_ids = image_ids[image_ids >= 0]  # the train images (unlabelled ones are not in the bank)
    heights, widths = pseudo["height"][:], pseudo["width"][:]
    paths = index.images.loc[image_ids, "image"].tolist()
    embeddings, regions, region_image, region_label, region_pixels = [], [], [], [], []
    row = 0
    batches = normalised_batches(paths, AnnotationConfig(cfg.input_size, cfg.batch_size), device,
                                 args.threads)  # fmt: skip
    for images in progress(batches, -(-len(paths) // cfg.batch_size), "build-bank"):
        with autocast(device):
            feats = encoder(images).float()
        embeddings.append(image_embedding(feats).cpu().numpy())
        for image_feats in feats.cpu():
            mask = pseudo["masks"][row, : heights[row], : widths[row]]
            labels = present_labels(mask)
            labels = labels[labels > 0]  # the sub-cluster regions, not the background
            weights = area_weights(mask, labels, tuple(image_feats.shape[1:]))
            regions.append(masked_average(image_feats, weights).numpy())
            region_image += [row] * len(labels)
            region_label += labels.tolist()
            region_pixels += np.bincount(mask.ravel(), minlength=256)[labels].tolist()
            row += 1
    embeddings = np.concatenate(embeddings)
    with atomic_dir(args.out) as tmp:
        faiss.write_index(_cpu_index(embeddings), str(tmp / "images.faiss"))
        group = store.create_group(tmp / "regions.zarr", input_size=cfg.input_size,
                                   model=str(args.model))  # fmt: skip
        store.write_array(group, "prototypes", np.concatenate(regions).astype(np.float32))
        store.write_array(group, "image", np.array(region_image, dtype=np.int64))
        store.write_array(group, "label", np.array(region_label, dtype=np.int64))
        store.write_array(group, "pixels", np.array(region_pixels, dtype=np.int64))
        store.write_array(group, "image_id", image_ids)
    log.info("bank: %d images, %d regions -> %s", len(embeddings), len(region_image), args.out)


def _cpu_index(embeddings: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index
