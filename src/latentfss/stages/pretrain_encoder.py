"""Pre-train the encoder on a generated corpus labelled by its factors (rule pretrain_encoder).

Fold-independent and deterministic in its seed: the corpus comes from the synthetic
generator's own streams (`pretrain`, `pretrain-heldout`), never the benchmark's train or val
images. Writes the whole ResNet but its classifier, in torchvision's layout with its conv
kernels in fp16 (`pretraining.storable`), its held-out accuracy and what fp16 does to its
layer3 features; extract-features loads it as `encoder.weights` (conv1..layer3, as every weight
source). The shipped `synthetic` weights are such a file (docs/data.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from latentfss import code_version
from latentfss.config import EncoderConfig, PretrainConfig, SyntheticConfig, from_params
from latentfss.datasets import synthetic
from latentfss.encoder import Classifier, Normalise
from latentfss.fs import save_torch
from latentfss.machine import machine
from latentfss.pretraining import (
    crops,
    heldout_accuracy,
    layer3_agreement,
    learning_rate,
    render,
    storable,
    train_step,
)
from latentfss.progress import progress
from latentfss.runtime import add_device_argument, pick_device, seed_everything, set_threads

log = logging.getLogger(__name__)
STORAGE_CHECK = 32  # held-out images whose layer3 features check the fp16 storage


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    parser.add_argument("--params", default="", help="config section `pretrain` as JSON")
    parser.add_argument("--synthetic", default="", help="config section `synthetic` as JSON")
    parser.add_argument("--encoder", default="", help="config section `encoder` as JSON (arch)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batches")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    cfg = from_params(PretrainConfig, args.params, "pretrain")
    world = from_params(SyntheticConfig, args.synthetic, "synthetic")
    arch = from_params(EncoderConfig, args.encoder, "encoder").arch
    set_threads(args.threads)
    device = pick_device(args.device)
    corpus = render(world, "pretrain", cfg.images, args.threads)
    heldout = render(world, "pretrain-heldout", cfg.heldout, args.threads)
    log.info("rendered %d corpus and %d held-out images", len(corpus), len(heldout))
    seed_everything(args.seed)
    outputs = sum(len(values) for values in synthetic.FACTORS.values())
    model = Classifier(arch, outputs).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    normalise, generator = Normalise(device), torch.Generator().manual_seed(args.seed)
    rows, window = [], []
    bar = progress(range(cfg.steps), cfg.steps, "pretrain-encoder")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        images, labels = crops(corpus, cfg, generator)
        window.append(train_step(model, images, labels, optimizer, normalise))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rows.append({"step": step + 1, "loss": round(sum(window) / len(window), 5)})
            bar.set_postfix(loss=rows[-1]["loss"], refresh=False)
            window = []
    exact = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    stored = storable(exact)
    model.load_state_dict({**exact, **stored})  # scored as it is saved (the classifier kept)
    accuracy = heldout_accuracy(model, heldout, cfg, normalise, args.seed)
    checked = [image for image, _ in heldout[:STORAGE_CHECK]]
    agreement = layer3_agreement(arch, exact, stored, checked)
    save_torch(
        {
            "state_dict": stored,
            "arch": arch,
            "factors": {name: list(values) for name, values in synthetic.FACTORS.items()},
            "heldout_accuracy": accuracy,
            "storage": {"conv": "float16", "images": len(checked), **agreement},
            "losses": rows,
            "config": {
                "pretrain": dataclasses.asdict(cfg),
                "synthetic": dataclasses.asdict(world),
            },
            "seed": args.seed,
            "machine": machine(),
            "code_version": code_version(),
        },
        args.out,
    )
    log.info(
        "pre-trained %s for %d steps on %d images -> %s; held-out accuracy (a crop of each of "
        "%d images, every value of the factor right): %s; fp16 storage: layer3 relative error "
        "%.1e, least cosine %.5f",
        arch,
        cfg.steps,
        cfg.images,
        args.out,
        len(heldout),
        ", ".join(f"{name} {value:.1%}" for name, value in accuracy.items()),
        agreement["relative_error"],
        agreement["min_cosine"],
    )
