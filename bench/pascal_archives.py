"""Backs docs/running.md, "What a full run costs": PASCAL's archives for the rehearsal.

PASCAL-5i as the official VOC2012 and SBD archives at full size, for bench/rehearsal.py pascal.

    python bench/pascal_archives.py ROOT [--threads 2]
"""

from __future__ import annotations

import argparse
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import scipy.io
import scipy.ndimage
import scipy.sparse
from PIL import Image

from latentfss.datasets import pascal
from latentfss.datasets.images import write_mask

HEIGHT, WIDTH = 375, 500


def official_lists() -> dict[str, list[str]]:
    """Lists of the official sizes, overlapping as VOC2012 and SBD do: 12,031 images in all,
    train_noval sharing 1,134 with VOC2012 train (the duplicates PFENet's merge removed)."""
    t = [f"2007_{i:06d}" for i in range(1_464)]  # VOC2012 train
    v = [f"2008_{i:06d}" for i in range(1_449)]  # VOC2012 val
    s = [f"2010_{i:06d}" for i in range(9_118)]  # in SBD only
    return {
        "VOC2012 train": t,
        "VOC2012 val": v,
        "SBD train": t[:1_134] + v[:700] + s[:6_664],
        "SBD val": t[1_134:1_200] + v[700:1_037] + s[6_664:],
        "SBD train_noval": t[:1_134] + s[:4_489],
    }


def write_lists(root: Path, lists: dict[str, list[str]]) -> None:
    folders = {"VOC2012": pascal.VOC / "ImageSets/Segmentation", "SBD": pascal.SBD}
    for name, ids in lists.items():  # "SBD train_noval" -> SBD's train_noval.txt
        dataset, split = name.split()
        (root / folders[dataset]).mkdir(parents=True, exist_ok=True)
        (root / folders[dataset] / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def objects(rng: np.random.Generator) -> np.ndarray:
    """A class map of 1-3 rectangles of random classes, (HEIGHT, WIDTH) uint8."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 60)
        h, w = rng.integers(40, HEIGHT - y), rng.integers(40, WIDTH - x)
        mask[y : y + h, x : x + w] = rng.integers(1, 21)
    return mask


def edges(mask: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another value."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    return edge


def make_one(task: tuple[Path, str, int, bool, bool]) -> None:
    """One JPEG (a smooth random field plus noise, about VOC's file sizes) and its masks."""
    root, image_id, seed, voc, sbd = task
    rng = np.random.default_rng(seed)
    field = rng.random((HEIGHT // 25, WIDTH // 25, 3)) * 255
    smooth = np.asarray(Image.fromarray(field.astype(np.uint8)).resize((WIDTH, HEIGHT)), float)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(pascal.image_path(root, image_id), quality=90)
    segmentation = objects(rng)
    if voc:  # VOC's look: 255 on a band about 5 pixels wide along every edge
        band = scipy.ndimage.binary_dilation(edges(segmentation), iterations=2)
        write_mask(pascal.voc_mask_path(root, image_id), np.where(band, 255, segmentation))
    if sbd:
        save_sbd_mat(pascal.sbd_mat_path(root, image_id), segmentation)


def save_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """A cls/*.mat as SBD ships it: struct GTcls with a 20x1 cell of sparse boundary maps, the
    class map Segmentation (H, W) uint8 and CategoriesPresent; compressed."""
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(20):
        boundaries[c, 0] = scipy.sparse.csc_matrix(edges(segmentation == c + 1))
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    gt = {"Boundaries": boundaries, "Segmentation": segmentation, "CategoriesPresent": present}
    scipy.io.savemat(path, {"GTcls": gt}, do_compression=True)


def make_archives(root: Path, threads: int) -> dict[str, int]:
    """The lists, 12,031 JPEGs, VOC2012's 2,913 masks and SBD's 11,355 .mat files."""
    lists = official_lists()
    write_lists(root, lists)
    for folder in (pascal.VOC / "JPEGImages", pascal.VOC / "SegmentationClass", pascal.SBD / "cls"):
        (root / folder).mkdir(parents=True)
    voc = set(lists["VOC2012 train"] + lists["VOC2012 val"])
    sbd = set(lists["SBD train"] + lists["SBD val"])
    ids = sorted(voc | sbd)
    with Pool(threads) as pool:
        tasks = [(root, i, seed, i in voc, i in sbd) for seed, i in enumerate(ids)]
        pool.map(make_one, tasks, chunksize=64)
    return {"images": len(ids), "voc_masks": len(voc), "sbd_mats": len(sbd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(make_archives(args.root, args.threads))


if __name__ == "__main__":
    main()
