"""Segment a new class in your own images from K annotated shots (`latentfss segment`).

    latentfss segment --model model.pt --support a.jpg a.png [--support b.jpg b.png ...] \\
        --query photo.jpg|folder --out masks/ [--bank bank/]

A support mask is a single image of the support's size: 0 = background, any other value = the
object. Writes {name}_mask.png (0/255) and {name}_overlay.png for every query image. Images and
masks are read as displayed (their EXIF orientation applied, as phones tag photos), and the
outputs are written so.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from latentfss.config import EvaluateConfig
from latentfss.datasets.evaluation import at_label, network_input
from latentfss.datasets.images import image_files, read_image, read_upright
from latentfss.encoder import Normalise
from latentfss.errors import InputError
from latentfss.fs import atomic_file
from latentfss.model import load_model
from latentfss.region_bank import load_bank
from latentfss.runtime import add_device_argument, pick_device, set_threads

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument(
        "--support",
        required=True,
        nargs=2,
        action="append",
        type=Path,
        metavar=("IMAGE", "MASK"),
        help="a shot (repeatable)",
    )
    parser.add_argument("--query", required=True, type=Path, help="an image or a folder of them")
    parser.add_argument("--out", required=True, type=Path, help="folder for masks and overlays")
    parser.add_argument(
        "--bank", type=Path, help="region bank dir: rectify the prototype (Eq. 8-9)"
    )
    parser.add_argument(
        "--input-size", type=int, help="network input side (default: training crop)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


def read_support_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """0 = background, anything else = the object, as 0/1, as displayed; must match its
    image's displayed size."""
    mask = np.asarray(read_upright(path).convert("L"))
    if mask.shape != size:
        raise InputError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}"
        )
    if not mask.any():
        raise InputError(f"{path}: the support mask is empty (no object pixel)")
    return (mask > 0).astype(np.uint8)


def query_images(path: Path) -> list[Path]:
    if path.is_dir():
        images = image_files(path)
        if not images:
            raise InputError(f"{path}: no .jpg or .png image in this folder")
        return images
    return [path]


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask > 0] = 0.5 * out[mask > 0] + 0.5 * np.array([255, 0, 0])
    return out.astype(np.uint8)


@torch.inference_mode()
def run(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)  # the bank's searches
    device = pick_device(args.device)
    model, checkpoint = load_model(args.model)
    model = model.to(device)
    size = args.input_size or checkpoint["config"]["train"]["crop"]
    normalise, supports, masks = Normalise(device), [], []
    for image_path, mask_path in args.support:
        image = read_image(image_path, upright=True)
        mask = read_support_mask(mask_path, image.shape[:2])
        image, mask, _ = network_input(image, mask, "square", size)
        supports.append(normalise(normalise.unit(image[None])))
        masks.append(mask[None])
    defaults = EvaluateConfig()  # the rectification's N and beta
    bank = load_bank(args.bank, defaults.top_n, defaults.beta, device) if args.bank else None
    args.out.mkdir(parents=True, exist_ok=True)
    for path in query_images(args.query):
        image = read_image(path, upright=True)
        query, _, covered = network_input(
            image, np.zeros(image.shape[:2], np.uint8), "square", size
        )
        logits = model(normalise(normalise.unit(query[None])), supports, masks, bank).logits
        mask = at_label(logits, (size, size), covered, image.shape[:2])[0].argmax(0)
        mask = mask.to(torch.uint8).cpu().numpy()
        for name, picture in (("mask", mask * 255), ("overlay", overlay(image, mask))):
            with atomic_file(args.out / f"{path.stem}_{name}.png") as tmp:
                Image.fromarray(picture).save(tmp, format="png")
        log.info("%s: %.1f%% of the image segmented", path.name, 100 * mask.mean())
