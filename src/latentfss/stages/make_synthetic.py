"""Generate the synthetic VOC-format benchmark (rule make_synthetic)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from PIL import Image

from latentfss import code_version
from latentfss.config import SyntheticConfig, from_params
from latentfss.datasets import images, synthetic, voc
from latentfss.errors import InputError
from latentfss.fs import atomic_dir
from latentfss.progress import progress

log = logging.getLogger(__name__)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset root to create")
    parser.add_argument("--seed", type=int, help="generator seed (overrides synthetic.seed)")
    parser.add_argument("--params", default="", help="config section `synthetic` as JSON")


def run(args: argparse.Namespace) -> None:
    cfg = from_params(SyntheticConfig, args.params, "synthetic")
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not (out / synthetic.PROVENANCE).exists():
        raise InputError(f"{out}: exists and is not a synthetic dataset; refusing to overwrite it")
    with atomic_dir(out) as tmp:
        generate(cfg, tmp)
    log.info("wrote %d train + %d val images to %s", cfg.num_train, cfg.num_val, out)


def generate(cfg: SyntheticConfig, root: Path) -> None:
    """Write the VOC2012 layout under `root`; the same config gives byte-identical files."""
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for i, image_id in enumerate(progress(ids, desc=f"synthetic {split}")):
            image, mask = synthetic.render_image(cfg, synthetic.image_rng(cfg.seed, split, i))
            Image.fromarray(image).save(voc.image_path(root, image_id), quality=cfg.jpeg_quality)
            images.write_mask(voc.mask_path(root, image_id), mask)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    provenance = {
        "generator": "latentfss make-synthetic",
        "code_version": code_version(),
        "config": dataclasses.asdict(cfg),
        "class_names": list(synthetic.CLASS_NAMES),
    }
    (root / synthetic.PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
