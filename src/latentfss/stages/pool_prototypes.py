"""Rule pool_prototypes: Eq. 2 prototypes of every train image into prototypes.zarr
(latentfss.annotation.pool_prototypes), from the command line; the features from features.zarr,
or computed again without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss import features
from latentfss.annotation import pool_prototypes
from latentfss.datasets.index import read_index
from latentfss.runtime import set_threads


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    features.add_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="prototypes.zarr to write")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")


def run(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    index = read_index(args.index)
    pool_prototypes(index, features.from_arguments(args, index.split("train")), args.out)
