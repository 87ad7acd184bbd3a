"""Index a dataset once: split lists, paths, sizes and per-class pixel counts (rule prepare).

Every image and mask is decoded and checked here (readable, single-channel, labels in range,
same size as its image), so a bad file stops the pipeline at its first stage with its name.
COCO masks are converted from the instances JSON into the index directory on the way.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from latentfss import code_version
from latentfss.config import from_params
from latentfss.datasets import DatasetConfig, coco, synthetic, voc
from latentfss.datasets.images import image_size, read_mask, write_mask
from latentfss.datasets.index import IMAGE_COLUMNS, write_index
from latentfss.errors import InputError
from latentfss.fs import atomic_dir
from latentfss.progress import progress

log = logging.getLogger(__name__)


class Item(NamedTuple):
    """One image to index. For COCO, `coco` = (where to write the mask now, the image record,
    its annotations, category labels): everything a worker needs, so workers share no state."""

    name: str
    split: str
    image: str
    mask: str
    num_classes: int
    coco: tuple | None = None


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="index directory to write")
    parser.add_argument("--params", default="", help="config section `dataset` as JSON")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")


def run(args: argparse.Namespace) -> None:
    cfg = from_params(DatasetConfig, args.params, "dataset")
    root = Path(cfg.root).resolve()
    with atomic_dir(args.out) as tmp:
        if cfg.name == "coco":
            tasks, class_names = _coco_tasks(root, final=args.out.resolve(), tmp=tmp)
        else:
            tasks, class_names = _voc_tasks(root, cfg)
        images, pixels = _scan(tasks, args.threads)
        meta = {
            "name": cfg.name,
            "config": dataclasses.asdict(cfg),
            "root": str(root),
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "num_images": images["split"].value_counts().to_dict(),
            "code_version": code_version(),
        }
        write_index(tmp, images, pixels, meta)
    log.info("indexed %s: %s -> %s", cfg.name, meta["num_images"], args.out)


def _voc_tasks(root: Path, cfg: DatasetConfig) -> tuple[list[Item], tuple[str, ...]]:
    class_names = synthetic.CLASS_NAMES if cfg.name == "synthetic" else voc.VOC_CLASSES
    ids = voc.split_ids(root, cfg.train_list)
    tasks = [
        Item(
            name,
            split,
            str(voc.image_path(root, name)),
            str(voc.mask_path(root, name)),
            len(class_names),
        )
        for split, names in ids.items()
        for name in names
    ]
    return tasks, class_names


def _coco_tasks(root: Path, final: Path, tmp: Path) -> tuple[list[Item], tuple[str, ...]]:
    """Masks are written under `tmp` now and listed at their path under `final`."""
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found")
    tasks, class_names = [], None
    for split, folder in coco.SPLITS.items():
        data = coco.load_instances(root / "annotations" / f"instances_{folder}.json")
        labels = coco.category_labels(data["categories"])
        names = tuple(c["name"] for c in sorted(data["categories"], key=lambda c: c["id"]))
        if class_names not in (None, names):
            raise InputError(f"{root}/annotations: train and val categories differ")
        class_names = names
        by_image = coco.annotations_by_image(data)
        (tmp / "masks" / folder).mkdir(parents=True)
        for image in sorted(data["images"], key=lambda i: i["id"]):
            stem = Path(image["file_name"]).stem
            write_to = tmp / "masks" / folder / f"{stem}.png"
            tasks.append(
                Item(
                    stem,
                    split,
                    str(root / folder / image["file_name"]),
                    str(final / "masks" / folder / f"{stem}.png"),
                    len(names),
                    (write_to, image, by_image.get(image["id"], []), labels),
                )
            )
    return tasks, class_names


def _scan_one(item: Item) -> tuple[int, int, np.ndarray]:
    """Decode and check one image and its mask: (height, width, pixel count per class)."""
    height, width = image_size(item.image)
    if item.coco is not None:
        write_to, record, annotations, labels = item.coco
        if (record["height"], record["width"]) != (height, width):
            raise InputError(
                f"{item.image}: image is {width}x{height} but its annotation says "
                f"{record['width']}x{record['height']}"
            )
        mask = coco.instance_mask(record, annotations, labels)
        write_mask(write_to, mask)
    else:
        mask = read_mask(item.mask, item.num_classes)
        if mask.shape != (height, width):
            raise InputError(
                f"{item.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{Path(item.image).name} is {width}x{height}"
            )
    return height, width, np.bincount(mask.ravel(), minlength=256)[: item.num_classes + 1]


def _scan(tasks: list[Item], threads: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if threads > 1:
        with Pool(threads) as pool:
            scanned = pool.imap(_scan_one, tasks, chunksize=16)
            results = list(progress(scanned, len(tasks), "prepare"))
    else:
        results = [_scan_one(t) for t in progress(tasks, len(tasks), "prepare")]
    images = pd.DataFrame(
        [
            (t.name, t.split, t.image, t.mask, h, w)
            for t, (h, w, _) in zip(tasks, results, strict=True)
        ],
        columns=list(IMAGE_COLUMNS),
    )
    counts = np.stack([c for _, _, c in results])  # (N, num_classes + 1)
    image, class_id = np.nonzero(counts)
    pixels = pd.DataFrame(
        {"image_id": image, "class_id": class_id, "pixels": counts[image, class_id]}
    )
    return images, pixels
