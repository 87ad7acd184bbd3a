"""Rule train: one fold and shot's training (latentfss.trainer), from the command line."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from latentfss.config import ModelConfig, ProtocolConfig, TrainConfig, from_arguments, from_params
from latentfss.errors import InputError
from latentfss.runtime import add_device_argument
from latentfss.trainer import TrainJob, train

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--encoder-init", required=True, type=Path, help="encoder_init.pt")
    parser.add_argument("--pseudo-masks", required=True, type=Path, help="fold's pseudo_masks.zarr")
    parser.add_argument("--remain", type=Path, help="Remain's pseudo_masks.zarr, mined too")
    parser.add_argument("--fold", required=True, type=int, choices=range(4))
    parser.add_argument("--shot", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="model.pt to write")
    parser.add_argument("--log-csv", required=True, type=Path, help="train.csv to write")
    parser.add_argument("--params", default="", help="config section `train` as JSON")
    parser.add_argument("--model-params", default="", help="config section `model` as JSON")
    parser.add_argument("--protocol", default="", help="config section `protocol` as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    cfg = from_params(TrainConfig, args.params, "train")
    model_cfg = from_params(ModelConfig, args.model_params, "model")
    protocol = from_params(ProtocolConfig, args.protocol, "protocol")
    if args.shot < 1:
        raise InputError(f"--shot must be at least 1, got {args.shot}")
    job = from_arguments(TrainJob, args)
    train(job, cfg, model_cfg, protocol)
    log.info(
        "fold %d, %d-shot: trained %d iterations -> %s", job.fold, job.shot, cfg.iterations, job.out
    )
