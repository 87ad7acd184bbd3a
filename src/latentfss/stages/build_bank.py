"""Rule build_bank: the region bank of one fold and shot (latentfss.region_bank.build_bank;
section 3.4), from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss.config import EvaluateConfig, from_arguments, from_params
from latentfss.region_bank import BankJob, build_bank
from latentfss.runtime import add_device_argument


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--pseudo-masks", required=True, type=Path, help="fold's pseudo_masks.zarr")
    parser.add_argument("--out", required=True, type=Path, help="bank directory to write")
    parser.add_argument("--params", default="", help="evaluate.resize/input_size/... as JSON")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    cfg = from_params(EvaluateConfig, args.params, "evaluate")  # resize, input_size, ...
    build_bank(from_arguments(BankJob, args), cfg)
