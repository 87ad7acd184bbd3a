"""The region bank of one fold and shot (rule build_bank; section 3.4): with the trained EMA
model, an image embedding of every image of the fold's train set in a faiss inner-product index,
and a prototype of every pseudo-mask region (labels 1..K) of each. The network sees each train
image as evaluation sees a support (`evaluate.resize`), its pseudo mask likewise."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from latentfss import store
from latentfss.config import EvaluateConfig, from_params
from latentfss.datasets.evaluation import collate, network_input
from latentfss.datasets.images import read_image
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise, encode_each
from latentfss.fs import identity
from latentfss.model import load_model
from latentfss.progress import progress
from latentfss.prototypes import image_embedding, present_labels, region_prototypes
from latentfss.region_bank import save_bank
from latentfss.runtime import add_device_argument, pick_device, set_threads

log = logging.getLogger(__name__)


class TrainImages(Dataset):
    """Row i of pseudo_masks.zarr: its image and pseudo mask as the network sees them."""

    def __init__(self, paths: list[str], pseudo_masks: Path, cfg: EvaluateConfig) -> None:
        self.paths, self.store_path, self.cfg = paths, str(pseudo_masks), cfg
        group = store.open_group(self.store_path, "write-pseudo-masks")
        self.sizes = np.stack([group["height"][:], group["width"][:]], axis=1)
        self.masks = None  # opened in each loader worker

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray]:
        if self.masks is None:
            self.masks = store.open_group(self.store_path, "write-pseudo-masks")["masks"]
        height, width = self.sizes[i]
        mask = self.masks[i, :height, :width]
        image, mask, _ = network_input(
            read_image(self.paths[i]), mask, self.cfg.resize, self.cfg.input_size
        )
        return image, mask.numpy()


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--pseudo-masks", required=True, type=Path, help="fold's pseudo_masks.zarr")
    parser.add_argument("--out", required=True, type=Path, help="bank directory to write")
    parser.add_argument("--params", default="", help="evaluate.resize/input_size/... as JSON")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


@torch.inference_mode()
def run(args: argparse.Namespace) -> None:
    cfg = from_params(EvaluateConfig, args.params, "evaluate")  # resize, input_size, ...
    set_threads(args.threads, cfg.workers)
    faiss.omp_set_num_threads(args.threads)
    device = pick_device(args.device)
    index = read_index(args.index)
    model, _ = load_model(args.model)
    encoder, normalise = model.encoder.to(device).eval(), Normalise(device)
    pseudo = store.open_group(args.pseudo_masks, "write-pseudo-masks")
    image_ids = pseudo["image_id"][:]
    image_ids = image_ids[image_ids >= 0]  # the fold's train set (unlabelled ones: not banked)
    data = TrainImages(index.images.loc[image_ids, "image"].tolist(), args.pseudo_masks, cfg)
    loader = DataLoader(
        data, batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=collate
    )
    # Every row is written in place. Per-image arrays kept in lists until the end sit in the
    # heap between the large feature maps, whose sizes vary at resize: none, and fragment it:
    # peak RSS 7.8 GB at PASCAL's 5,265 train images, 1.4 GB this way (bench/rehearsal.py).
    # An image has at most K regions; pages of `capacity` never written are never resident.
    capacity = len(data) * pseudo.attrs["K"]
    embeddings = np.empty((len(data), encoder.channels), np.float32)
    regions = {
        "prototypes": np.empty((capacity, encoder.channels), np.float32),
        **{name: np.empty(capacity, np.int64) for name in ("image", "label", "pixels")},
    }
    row = count = 0
    for batch in progress(loader, len(loader), "build-bank"):
        feats = encode_each(encoder, [image for image, _ in batch], normalise)
        for image_feats, (_, mask) in zip(feats, batch, strict=True):
            labels = present_labels(mask)
            labels = labels[labels > 0]  # the sub-cluster regions, not the background
            prototypes, _, pixels = region_prototypes(image_feats.cpu(), mask, labels)
            embeddings[row] = image_embedding(image_feats[None])[0].cpu().numpy()
            end = count + len(labels)
            for name, values in zip(regions, (prototypes, row, labels, pixels), strict=True):
                regions[name][count:end] = values
            row, count = row + 1, end
    regions = {name: values[:count] for name, values in regions.items()}
    regions["image_id"] = image_ids
    save_bank(
        args.out,
        embeddings,
        regions,
        resize=cfg.resize,
        input_size=cfg.input_size,
        model=str(args.model),
        model_identity=identity(args.model),
    )
    log.info("bank: %d images, %d regions -> %s", len(embeddings), count, args.out)
