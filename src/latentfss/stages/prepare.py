"""Rule prepare: index a dataset (latentfss.datasets.prepare), from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss.config import DatasetConfig, from_params
from latentfss.datasets.prepare import prepare


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="index directory to write")
    parser.add_argument("--params", default="", help="config section `dataset` as JSON")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")


def run(args: argparse.Namespace) -> None:
    prepare(from_params(DatasetConfig, args.params, "dataset"), args.out, args.threads)
