"""Backs docs/running.md, "What a full run costs": COCO's archives for the rehearsal.

COCO 2014 in its own format at full count, the pixels scaled down, for bench/rehearsal.py coco:
{ROOT}/train2014/*.jpg, val2014/*.jpg and annotations/instances_{split}.json.

    python bench/coco_archives.py ROOT [--scale 0.25] [--train 82783] [--val 40504]
"""

from __future__ import annotations

import argparse
import json
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLITS = {"train2014": 82_783, "val2014": 40_504}
CATEGORY_IDS = [c for c in range(1, 91) if c not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
SIDES = [(640, 480), (640, 427), (480, 640), (500, 375)]  # COCO's common ones, times the scale
INSTANCES_PER_IMAGE = 7.3  # COCO train2014: 604,907 instances on 82,783 images
CATEGORIES_PER_IMAGE = 2.9  # distinct categories an image holds, on average (geometric counts)
CROWD, GREY, EMPTY = 0.015, 0.01, 0.01  # shares of instances, JPEGs and images
INSTANCE_COUNTS = [  # COCO train2017's instances per category, in CATEGORY_IDS order
    262465, 7113, 43867, 8725, 5135, 6069, 4571, 9973, 10759, 12884, 1865, 1983, 1285, 9838,
    10806, 4768, 5508, 6587, 9509, 8147, 5513, 1294, 5303, 5131, 8720, 11431, 12354, 6496, 6192,
    2682, 6646, 2685, 6347, 9076, 3276, 3747, 5543, 6126, 4812, 24342, 7913, 20650, 5479, 7770,
    6165, 14358, 9458, 5851, 4373, 6399, 7308, 7852, 2918, 5821, 7179, 6353, 38491, 5779, 8652,
    4192, 15714, 4157, 5805, 4970, 2262, 5703, 2855, 6434, 1673, 3334, 225, 5610, 2637, 24715,
    6334, 6613, 1481, 4793, 198, 1954,
]  # fmt: skip
CATEGORY_WEIGHTS = np.array(INSTANCE_COUNTS) / sum(INSTANCE_COUNTS)


def polygon(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(V, 2) vertices on a jittered ellipse inside the image; COCO's objects are mostly small."""
    vertices = rng.integers(8, 41)
    radius = np.array([width, height]) * rng.uniform(0.02, 0.4) * rng.uniform(0.5, 1, 2)
    centre = rng.uniform(radius, np.array([width, height]) - radius)
    angle = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    scale = rng.uniform(0.7, 1.0, (vertices, 1))
    return centre + scale * radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's crowd encoding: run lengths of the column-major mask, starting with zeros."""
    flat = mask.ravel(order="F")
    bounds = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def image_record(task: tuple[Path, str, int, int, float]) -> tuple[dict, list[dict]]:
    """Write one JPEG; its COCO image entry and annotations (ids filled in by the caller), in
    the image's coordinates: the JSON has COCO's size whatever the scale."""
    folder, split, image_id, seed, scale = task
    rng = np.random.default_rng(seed)
    width, height = (round(s * scale) for s in SIDES[rng.integers(len(SIDES))])
    name = f"COCO_{split}_{image_id:012d}.jpg"
    picture = Image.new("RGB", (width, height), tuple(rng.integers(0, 256, 3).tolist()))
    draw = ImageDraw.Draw(picture)
    kinds = 0 if rng.random() < EMPTY else rng.geometric(1 / CATEGORIES_PER_IMAGE)
    chosen = rng.choice(CATEGORY_IDS, size=min(kinds, 20), replace=False, p=CATEGORY_WEIGHTS)
    per_kind = INSTANCES_PER_IMAGE / CATEGORIES_PER_IMAGE
    annotations = []
    for category in (int(c) for c in chosen for _ in range(rng.geometric(1 / per_kind))):
        points = polygon(rng, width, height)
        draw.polygon([tuple(p) for p in points], fill=tuple(rng.integers(0, 256, 3).tolist()))
        x, y = points.min(axis=0)
        w, h = points.max(axis=0) - (x, y)
        crowd = rng.random() < CROWD
        ann = {"image_id": image_id, "category_id": category, "iscrowd": int(crowd)}
        ann["bbox"] = [round(float(v), 2) for v in (x, y, w, h)]
        if crowd:  # its bounding box, as uncompressed RLE
            box = np.zeros((height, width), np.uint8)
            box[int(y) : int(y + h) + 1, int(x) : int(x + w) + 1] = 1
            ann["segmentation"] = {"size": [height, width], "counts": uncompressed_rle(box)}
            ann["area"] = float(box.sum())
        else:
            ann["segmentation"] = [np.round(points, 2).ravel().tolist()]
            px, py = points.T  # the shoelace formula
            ann["area"] = round(float(0.5 * abs(px @ np.roll(py, 1) - py @ np.roll(px, 1))), 2)
        annotations.append(ann)
    if rng.random() < GREY:
        picture = picture.convert("L")
    picture.save(folder / name, quality=90)
    return {"id": image_id, "file_name": name, "height": height, "width": width}, annotations


def instances(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def make_coco(root: Path, counts: dict[str, int], scale: float, threads: int) -> dict:
    """Every split's JPEGs and instances JSON under `root`; returns their `facts`."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    kinds = [{"id": c, "name": f"category {c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    for offset, (split, count) in enumerate(counts.items()):
        folder = root / split
        folder.mkdir(exist_ok=True)
        tasks = [(folder, split, i + 1, 1_000_000 * offset + i, scale) for i in range(count)]
        with Pool(threads) as pool:
            records = pool.map(image_record, tasks, chunksize=256)
        images = [image for image, _ in records]
        annotations = [ann for _, anns in records for ann in anns]
        for ann_id, ann in enumerate(annotations, 1):
            ann["id"] = ann_id
        data = {"images": images, "annotations": annotations, "categories": kinds}
        instances(root, split).write_text(json.dumps(data))
    return facts(root)


def facts(root: Path) -> dict[str, dict]:
    """Per split: images, instances, crowds, share of images with a person, the JSON's size."""
    written = {}
    for split in SPLITS:
        path = instances(root, split)
        data = json.loads(path.read_text())
        images, annotations = len(data["images"]), data["annotations"]
        with_person = {a["image_id"] for a in annotations if a["category_id"] == 1}
        written[split] = {
            "images": images,
            "instances": len(annotations),
            "crowds": sum(a["iscrowd"] for a in annotations),
            "with_person": round(len(with_person) / images, 3),
            "json_mb": round(path.stat().st_size / 2**20, 1),
        }
    return written


def subset(full: Path, root: Path, fraction: float) -> None:
    """A root holding the first `fraction` of each split of `full` (image folders linked)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        data = json.loads(instances(full, split).read_text())
        data["images"] = data["images"][: round(fraction * len(data["images"]))]
        ids = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        instances(root, split).write_text(json.dumps(data))
        if not (root / split).exists():
            (root / split).symlink_to((full / split).resolve(), target_is_directory=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--scale", type=float, default=0.25, help="of COCO's image sides")
    parser.add_argument("--train", type=int, default=SPLITS["train2014"])
    parser.add_argument("--val", type=int, default=SPLITS["val2014"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    counts = {"train2014": args.train, "val2014": args.val}
    print(json.dumps(make_coco(args.root, counts, args.scale, args.threads), indent=2))


if __name__ == "__main__":
    main()
