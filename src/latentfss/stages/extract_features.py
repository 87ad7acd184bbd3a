"""Rule extract_features: the initial encoder (encoder_init.pt) and, with
`annotation.keep_features`, every train image embedded by it into features.zarr
(latentfss.annotation.extract_features), from the command line.

The encoder is the one training starts from, so the features and everything built on them
(prototypes, clusters, pseudo masks) are fold-independent, as in the paper's offline annotation.
With `encoder.weights: none` the random weights are seeded and their BatchNorm statistics
calibrated on train images (encoder.calibrate_batchnorm). Without keep_features the stages that
read features compute them again (latentfss.features), and no features.zarr is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss.annotation import extract_features
from latentfss.config import AnnotationConfig, EncoderConfig, from_params
from latentfss.datasets.index import read_index
from latentfss.runtime import add_device_argument, pick_device, set_threads


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


def run(args: argparse.Namespace) -> None:
    encoder = from_params(EncoderConfig, args.encoder, "encoder")
    cfg = from_params(AnnotationConfig, args.params, "annotation")
    set_threads(args.threads)
    device = pick_device(args.device)  # a device that is not there stops the job here
    index = read_index(args.index)
    extract_features(
        index, encoder, cfg, args.encoder_out, args.out, device, args.seed, args.threads
    )
