"""Embed every train image with the initial encoder into features.zarr (rule extract_features).

The encoder is the one training starts from (saved beside as encoder_init.pt), so the features
and everything built on them (prototypes, clusters, pseudo masks) are fold-independent, as in
the paper's offline annotation. With `encoder.weights: none` the random weights are seeded and
their BatchNorm statistics calibrated on train images (encoder.calibrate_batchnorm).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentfss import code_version, store
from latentfss.config import from_params
from latentfss.datasets.images import resized_batches
from latentfss.datasets.index import read_index
from latentfss.encoder import (
    STRIDE,
    Encoder,
    EncoderConfig,
    Normalise,
    build_encoder,
    calibrate_batchnorm,
    feature_size,
)
from latentfss.fs import atomic_dir, atomic_file
from latentfss.progress import progress
from latentfss.runtime import autocast, pick_device, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotationConfig:
    """How the offline annotation embeds images (config section `annotation`)."""

    input_size: int = 256  # images are resized to this square (paper: 473)
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.batch_size < 1:
            raise ValueError("need input_size >= 32 and batch_size >= 1")


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--out", required=True, type=Path, help="features.zarr to write")
    parser.add_argument("--encoder", default="", help="config section `encoder` as JSON")
    parser.add_argument("--params", default="", help="config section `annotation` as JSON")
    parser.add_argument("--encoder-out", required=True, type=Path,
                        help="where to save the initial weights (encoder_init.pt)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seeds random initial weights")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")


def normalised_batches(paths: Sequence[str], cfg: AnnotationConfig, device: torch.device,
                       threads: int) -> Iterator[torch.Tensor]:  # fmt: skip
    """(B, 3, S, S) ImageNet-normalised float images on `device`, resized to cfg.input_size."""
    normalise = Normalise(device)
    for batch in resized_batches(paths, cfg.input_size, cfg.batch_size, threads):
        images = normalise(normalise.unit(torch.from_numpy(batch)))
        yield images.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def embed(encoder: Encoder, paths: Sequence[str], cfg: AnnotationConfig, device: torch.device,
          threads: int) -> Iterator[np.ndarray]:  # fmt: skip
    """(B, C, h, w) float16 features of each batch of images."""
    for images in normalised_batches(paths, cfg, device, threads):
        with autocast(device):
            feats = encoder(images)
        yield feats.float().cpu().numpy().astype(np.float16)


def initial_encoder(cfg: EncoderConfig, calibration: Sequence[str], annotation: AnnotationConfig,
                    device: torch.device, seed: int, threads: int) -> Encoder:  # fmt: skip
    """The weights training starts from: loaded, or seeded random with calibrated BatchNorm."""
    seed_everything(seed)
    encoder = build_encoder(cfg).to(device).eval().to(memory_format=torch.channels_last)
    if cfg.weights == "none":
        seen = calibrate_batchnorm(encoder, normalised_batches(calibration, annotation, device,
                                                               threads))  # fmt: skip
        log.info("random weights (seed %d): BatchNorm calibrated on %d train images", seed, seen)
    return encoder


def run(args: argparse.Namespace) -> None:
    encoder_cfg = from_params(EncoderConfig, args.encoder, "encoder")
    cfg = from_params(AnnotationConfig, args.params, "annotation")
    torch.set_num_threads(args.threads)
    device = pick_device()
    train = read_index(args.index).split("train")
    paths = train["image"].tolist()
    encoder = initial_encoder(encoder_cfg, paths[: encoder_cfg.calibration_images], cfg, device,
                              args.seed, args.threads)  # fmt: skip
    with atomic_file(args.encoder_out) as tmp:
        torch.save({"state_dict": encoder.state_dict(), "encoder": dataclasses.asdict(encoder_cfg),
                    "seed": args.seed, "code_version": code_version()}, tmp)  # fmt: skip
    side = feature_size(cfg.input_size)
    with atomic_dir(args.out) as tmp:
        group = store.create_group(
            tmp, encoder=dataclasses.asdict(encoder_cfg), annotation=dataclasses.asdict(cfg),
            layer="layer3", input_size=cfg.input_size, stride=STRIDE, device=str(device),
        )  # fmt: skip
        shape = (len(train), encoder.channels, side, side)
        feats = store.create_array(group, "feats", shape, "float16", chunks=(1, *shape[1:]))
        store.write_array(group, "image_id", train.index.to_numpy(np.int64))
        done = 0
        batches = embed(encoder, paths, cfg, device, args.threads)
        for block in progress(batches, -(-len(train) // cfg.batch_size), "extract-features"):
            feats[done : done + len(block)] = block
            done += len(block)
    log.info(
        "embedded %d train images on %s: feats %s float16 -> %s", done, device, shape, args.out
    )
