"""Index a dataset once: split lists, paths, sizes and per-class pixel counts.

Every image and mask is decoded and checked here (readable, single-channel, labels in range,
same size as its image), so a bad file stops the pipeline at its first stage with its name.
Masks that are not PNGs yet are converted into the index directory (masks/) on the way: COCO's
from the instances JSON, SBD's from its .mat class maps (PASCAL from the official archives).
Nothing is written into the dataset root.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from latentfss import code_version
from latentfss.config import DatasetConfig
from latentfss.datasets import coco, pascal, synthetic, voc
from latentfss.datasets.images import image_size, read_mask, write_mask
from latentfss.datasets.index import IMAGE_COLUMNS, portable, write_index
from latentfss.errors import InputError
from latentfss.fs import atomic_dir
from latentfss.progress import progress

log = logging.getLogger(__name__)


class Conversion(NamedTuple):
    """A mask made here rather than read: `make()` builds it from `source` (the file named in
    errors) and it is written to `write_to`. Workers get all they need, so they share no state."""

    source: str
    write_to: Path
    make: Callable[[], np.ndarray]


class Item(NamedTuple):
    """One image to index; `mask` is where its mask is, or will be once converted."""

    name: str
    split: str
    image: str
    mask: str
    num_classes: int
    convert: Conversion | None = None


def prepare(cfg: DatasetConfig, out: Path, threads: int = 1) -> None:
    """The index of `cfg`'s dataset at `out` (written whole or not at all); `threads` worker
    processes decode and check the files."""
    root = Path(cfg.root).resolve()
    with atomic_dir(out) as tmp:
        final = out.resolve()
        if cfg.name == "coco":
            layout = "coco"
            tasks, class_names = _coco_tasks(root, final, tmp)
        elif cfg.name == "pascal" and pascal.is_official(root):
            layout = "official VOC2012 + SBD"
            tasks, class_names = _official_tasks(root, cfg.train_list, final, tmp)
        else:
            layout = "SegmentationClassAug"
            tasks, class_names = _voc_tasks(root, cfg)
        converted = sum(t.convert is not None for t in tasks)
        log.info("%s (%s): %d images, %d masks to convert", root, layout, len(tasks), converted)
        images, pixels = _scan(tasks, threads)
        movable = not Path(cfg.root).is_absolute()  # a root inside the project moves with it
        for column in ("image", "mask"):
            images[column] = portable(images[column], final, movable)
        meta = {
            "name": cfg.name,
            "config": dataclasses.asdict(cfg),
            "root": str(root),
            "layout": layout,
            "converted_masks": converted,
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "num_images": images["split"].value_counts().to_dict(),
            "code_version": code_version(),
        }
        write_index(tmp, images, pixels, meta)
    log.info("indexed %s: %s -> %s", cfg.name, meta["num_images"], out)


def _voc_tasks(root: Path, cfg: DatasetConfig) -> tuple[list[Item], tuple[str, ...]]:
    class_names = _synthetic_classes(root) if cfg.name == "synthetic" else voc.VOC_CLASSES
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


def _synthetic_classes(root: Path) -> tuple[str, ...]:
    """The class names a synthetic root was generated with (its synthetic.json), so that a
    root written by another version of the generator keeps its own; else today's."""
    provenance = root / synthetic.PROVENANCE
    if provenance.is_file():
        return tuple(json.loads(provenance.read_text())["class_names"])
    return synthetic.CLASS_NAMES


def _official_tasks(
    root: Path, train_list: str, final: Path, tmp: Path
) -> tuple[list[Item], tuple[str, ...]]:
    """VOC2012's masks where it has them, SBD's converted under `tmp` (listed under `final`)."""
    split = pascal.split(root, train_list)
    (tmp / "masks" / "sbd").mkdir(parents=True)
    tasks = []
    for split_name, names in (("train", split.train), ("val", split.val)):
        for name in names:
            image = str(pascal.image_path(root, name))
            if name in split.voc_masked:
                mask, convert = pascal.voc_mask_path(root, name), None
            else:
                mat = pascal.sbd_mat_path(root, name)
                mask = final / "masks" / "sbd" / f"{name}.png"
                write_to = tmp / "masks" / "sbd" / f"{name}.png"
                convert = Conversion(str(mat), write_to, partial(pascal.read_sbd_mask, mat))
            tasks.append(Item(name, split_name, image, str(mask), len(voc.VOC_CLASSES), convert))
    return tasks, voc.VOC_CLASSES


def _coco_tasks(root: Path, final: Path, tmp: Path) -> tuple[list[Item], tuple[str, ...]]:
    """Masks are written under `tmp` now and listed at their path under `final`."""
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found")
    tasks, class_names = [], None
    for split, folder in coco.SPLITS.items():
        instances = root / "annotations" / f"instances_{folder}.json"
        data = coco.load_instances(instances)
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
                    Conversion(
                        f"{instances} (image {image['id']})",
                        write_to,
                        partial(coco.instance_mask, image, by_image.get(image["id"], []), labels),
                    ),
                )
            )
    return tasks, class_names


def _scan_one(item: Item) -> tuple[int, int, np.ndarray]:
    """Decode and check one image and its mask: (height, width, pixel count per class)."""
    height, width = image_size(item.image)
    if item.convert is None:
        source, mask = item.mask, read_mask(item.mask, item.num_classes)
    else:
        source, mask = item.convert.source, item.convert.make()
    if mask.shape != (height, width):
        raise InputError(
            f"{source}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{Path(item.image).name} is {width}x{height}"
        )
    if item.convert is not None:
        write_mask(item.convert.write_to, mask)
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
