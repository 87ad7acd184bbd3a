"""Rule pretrain_encoder: the encoder pre-trained on a generated corpus labelled by its factors
(latentfss.pretraining.pretrain), from the command line.

Fold-independent and deterministic in its seed: the corpus comes from the synthetic
generator's own streams (`pretrain`, `pretrain-heldout`), never the benchmark's train or val
images. Writes the whole ResNet but its classifier, in torchvision's layout with its conv
kernels in fp16 (`pretraining.storable`), its held-out accuracy and what fp16 does to its
layer3 features; extract-features loads it as `encoder.weights` (conv1..layer3, as every weight
source). The shipped `synthetic` weights are such a file (docs/data.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss.config import EncoderConfig, PretrainConfig, SyntheticConfig, from_params
from latentfss.pretraining import pretrain
from latentfss.runtime import add_device_argument


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    parser.add_argument("--params", default="", help="config section `pretrain` as JSON")
    parser.add_argument("--synthetic", default="", help="config section `synthetic` as JSON")
    parser.add_argument("--encoder", default="", help="config section `encoder` as JSON (arch)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batches")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    pretrain(
        args.out,
        from_params(PretrainConfig, args.params, "pretrain"),
        from_params(SyntheticConfig, args.synthetic, "synthetic"),
        from_params(EncoderConfig, args.encoder, "encoder").arch,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
