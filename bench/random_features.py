"""Backs docs/method.md, "The offline annotation": why random weights are calibrated.

Why random weights get BatchNorm calibration: how much of a random encoder's layer3 features
is position rather than content, before and after `calibrate_batchnorm`.

    python bench/random_features.py [--results results/synthetic] [--images 256]

Writes bench/results/random_features.json and .md. Needs a prepared synthetic dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from record import arguments, save

from latentfss.datasets.index import read_index
from latentfss.encoder import EncoderConfig, build_encoder, calibrate_batchnorm
from latentfss.features import AnnotationConfig, normalised_batches
from latentfss.runtime import pick_device, seed_everything

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def statistics(encoder, paths: list[str], cfg: AnnotationConfig, device) -> dict:
    """Share of the feature variance explained by position (per-position means over images)
    and the mean cosine of the features to their global mean direction."""
    f = torch.cat([encoder(x).float().cpu() for x in normalised_batches(paths, cfg, device, 2)])
    f = f.numpy()  # (N, C, h, w)
    centred = f - f.mean(axis=(0, 2, 3), keepdims=True)
    positional = (centred.mean(axis=0) ** 2).mean() / (centred**2).mean()
    direction = f.mean(axis=(0, 2, 3))
    cos = np.einsum("nchw,c->nhw", f, direction) / (
        np.linalg.norm(f, axis=1) * np.linalg.norm(direction) + 1e-12
    )
    return {
        "positional_variance": round(float(positional), 3),
        "cosine_to_mean": round(float(cos.mean()), 3),
    }


def main() -> None:
    parser = arguments(__doc__, results=True)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = AnnotationConfig(config["annotation"]["input_size"], 32)
    paths = read_index(args.results / "dataset").split("train")["image"].tolist()[: args.images]
    device = pick_device()
    seed_everything(config["seed"])
    encoder = build_encoder(EncoderConfig(config["encoder"]["arch"], "none")).to(device).eval()
    before = statistics(encoder, paths, cfg, device)
    calibrate_batchnorm(encoder, normalised_batches(paths, cfg, device, 2))
    after = statistics(encoder, paths, cfg, device)
    result = {
        "arch": config["encoder"]["arch"],
        "input_size": cfg.input_size,
        "images": len(paths),
        "random_init": before,
        "calibrated": after,
    }
    save(result, markdown, args.out, "random_features")


def markdown(result: dict) -> list[str]:
    before, after = result["random_init"], result["calibrated"]
    return [
        "## Random weights and BatchNorm calibration (`bench/random_features.py`)",
        "",
        f"{result['arch']} layer3 features of {result['images']} synthetic train images at "
        f"input {result['input_size']}, same seeded random weights before and after "
        "calibrating BatchNorm on those images.",
        "",
        "| encoder | variance explained by position | mean cosine to the mean feature |",
        "|---|---:|---:|",
        f"| random init | {before['positional_variance']} | {before['cosine_to_mean']} |",
        f"| random init + calibrated BN | {after['positional_variance']} | "
        f"{after['cosine_to_mean']} |",
        "",
    ]


if __name__ == "__main__":
    main()
