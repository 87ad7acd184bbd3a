"""COCO-20i: the 2014 instances JSON converted once to class-index PNG masks with pycocotools.

    {root}/train2014/*.jpg, {root}/val2014/*.jpg
    {root}/annotations/instances_train2014.json, instances_val2014.json

Categories map to labels 1..80 in ascending COCO category id (the standard order). Where
instances overlap, larger ones are painted first so smaller ones stay visible (ties: lower
annotation id first); crowd regions are painted like other instances. Unannotated pixels are 0.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from latentfss.errors import InputError

SPLITS = {"train": "train2014", "val": "val2014"}


def _pycocotools_mask():
    try:
        from pycocotools import mask
    except ImportError:
        raise InputError("COCO needs pycocotools: pip install 'latentfss[coco]'") from None
    return mask


def load_instances(path: Path) -> dict:
    """Read an instances JSON; a missing or malformed file is an InputError naming it."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: COCO annotation file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno})") from None
    if not all(k in data for k in ("images", "annotations", "categories")):
        raise InputError(
            f"{path}: not a COCO instances file (needs images, annotations, categories)"
        )
    return data


def category_labels(categories: list[dict]) -> dict[int, int]:
    """COCO category id -> label 1..N, by ascending id (COCO's 80 ids run 1..90 with gaps)."""
    return {c["id"]: label for label, c in enumerate(sorted(categories, key=lambda c: c["id"]), 1)}


def instance_mask(image: dict, annotations: list[dict], labels: dict[int, int]) -> np.ndarray:
    """(H, W) uint8 label map of one image from its instance annotations."""
    coco_mask = _pycocotools_mask()
    height, width = image["height"], image["width"]
    out = np.zeros((height, width), dtype=np.uint8)
    for ann in sorted(annotations, key=lambda a: (-a["area"], a["id"])):
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            if not seg:
                continue
            rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
        elif isinstance(seg["counts"], list):  # uncompressed RLE (crowds)
            rle = coco_mask.frPyObjects(seg, height, width)
        else:
            rle = seg
        out[coco_mask.decode(rle) > 0] = labels[ann["category_id"]]
    return out


def annotations_by_image(data: dict) -> dict[int, list[dict]]:
    grouped = defaultdict(list)
    for ann in data["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped
