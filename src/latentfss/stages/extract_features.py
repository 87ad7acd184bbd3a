"""The initial encoder (encoder_init.pt) and, with `annotation.keep_features`, every train image
embedded by it into features.zarr (rule extract_features).

The encoder is the one training starts from, so the features and everything built on them
(prototypes, clusters, pseudo masks) are fold-independent, as in the paper's offline annotation.
With `encoder.weights: none` the random weights are seeded and their BatchNorm statistics
calibrated on train images (encoder.calibrate_batchnorm). Without keep_features the stages that
read features compute them again (latentfss.features), and no features.zarr is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from latentfss import code_version, store
from latentfss.config import AnnotationConfig, EncoderConfig, from_params
from latentfss.datasets.index import read_index
from latentfss.encoder import Encoder, build_encoder, calibrate_batchnorm
from latentfss.features import Features, feature_attrs, normalised_batches
from latentfss.fs import atomic_dir, save_torch
from latentfss.progress import progress
from latentfss.runtime import add_device_argument, pick_device, seed_everything, set_threads

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument(
        "--out", type=Path, help="features.zarr to write (without it: only the encoder)"
    )
    parser.add_argument("--encoder", default="", help="config section `encoder` as JSON")
    parser.add_argument("--params", default="", help="config section `annotation` as JSON")
    parser.add_argument(
        "--encoder-out",
        required=True,
        type=Path,
        help="where to save the initial weights (encoder_init.pt)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds random initial weights")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


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


def run(args: argparse.Namespace) -> None:
    encoder_cfg = from_params(EncoderConfig, args.encoder, "encoder")
    cfg = from_params(AnnotationConfig, args.params, "annotation")
    set_threads(args.threads)
    device = pick_device(args.device)
    train = read_index(args.index).split("train")
    paths = train["image"].tolist()
    encoder = initial_encoder(
        encoder_cfg, paths[: encoder_cfg.calibration_images], cfg, device, args.seed, args.threads
    )
    weights = {k: v.cpu() for k, v in encoder.state_dict().items()}
    save_torch(
        {
            "state_dict": weights,
            "encoder": dataclasses.asdict(encoder_cfg),
            "seed": args.seed,
            "code_version": code_version(),
        },
        args.encoder_out,
    )
    if args.out is None:
        log.info("initial encoder -> %s (no --out: no features.zarr)", args.encoder_out)
        return
    features = Features(
        train.index.to_numpy(np.int64),
        feature_attrs(dataclasses.asdict(encoder_cfg), cfg, device),
        paths=paths,
        encoder=encoder,
        device=device,
        threads=args.threads,
    )
    with atomic_dir(args.out) as tmp:
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
        args.out,
    )
