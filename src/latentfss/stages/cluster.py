"""Rule cluster: one fold's train set and K+1 representatives (latentfss.clustering), from the
command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss.clustering import cluster_fold
from latentfss.config import ClusterConfig, ProtocolConfig, from_params


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--prototypes", required=True, type=Path, help="prototypes.zarr")
    parser.add_argument("--fold", required=True, type=int, choices=range(4))
    parser.add_argument("--out", required=True, type=Path, help="clusters.zarr to write")
    parser.add_argument("--params", default="", help="config section `cluster` as JSON")
    parser.add_argument("--protocol", default="", help="config section `protocol` as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="faiss threads")


def run(args: argparse.Namespace) -> None:
    cluster_fold(
        args.index,
        args.prototypes,
        args.fold,
        args.out,
        from_params(ClusterConfig, args.params, "cluster"),
        from_params(ProtocolConfig, args.protocol, "protocol"),
        seed=args.seed,
        threads=args.threads,
    )
