"""Rule write_pseudo_masks: Eq. 3 pseudo masks of one fold into a Zarr store
(latentfss.annotation.write_pseudo_masks), from the command line.

`--images train_set` (fold{f}/pseudo_masks_train_set.zarr): the fold's train set, the mining
stream, plus every image of the `mining.unlabeled` folders (paper Table 5). `--images remain`
(fold{f}/pseudo_masks_remain.zarr): the other train images, which join the stream only with
`mining.remain`. The masks never change afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss import features
from latentfss.annotation import SUBSETS, write_pseudo_masks
from latentfss.datasets.index import read_index
from latentfss.runtime import set_threads


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    features.add_arguments(parser)  # --features, or --encoder-init to compute them
    parser.add_argument("--clusters", required=True, type=Path, help="fold's clusters.zarr")
    parser.add_argument("--out", required=True, type=Path, help="pseudo_masks.zarr to write")
    parser.add_argument(
        "--images",
        choices=SUBSETS,
        default="train_set",
        help="the fold's train set (the mining stream) or Remain",
    )
    parser.add_argument(
        "--unlabeled",
        nargs="*",
        default=[],
        type=Path,
        help="folders of extra unlabelled images (mining.unlabeled)",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")


def run(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    index = read_index(args.index)
    write_pseudo_masks(
        index,
        features.from_arguments(args, index.split("train")),
        args.clusters,
        args.out,
        images=args.images,
        unlabeled=args.unlabeled,
        encoder_init=args.encoder_init,
    )
