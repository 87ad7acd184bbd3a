"""PASCAL VOC2012 (+ SBD) in the SegmentationClassAug layout; the synthetic benchmark uses it too.

{root}/JPEGImages/{id}.jpg
{root}/SegmentationClassAug/{id}.png          single-channel class indices, 255 = ignore
{root}/ImageSets/Segmentation/{list}.txt      one id per line (or PFENet's "img mask" pairs)
"""

from __future__ import annotations

from pathlib import Path

from latentfss.errors import InputError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# built train lists (config `dataset.train_list`; any other value is a list file's path): the
# list files each one reads here, in order
TRAIN_LISTS = {
    "voc": ("train",),  # VOC2012 train alone (1,464 on VOC; the synthetic benchmark's list)
    "voc_sbd": ("train", "sbd_train"),  # VOC2012 train + SBD, as PFENet (5,953 with its SBD list)
    "trainaug": ("trainaug",),  # the 10,582-image SegmentationClassAug list
}


def image_path(root: Path, image_id: str) -> Path:
    return root / "JPEGImages" / f"{image_id}.jpg"


def mask_path(root: Path, image_id: str) -> Path:
    return root / "SegmentationClassAug" / f"{image_id}.png"


def read_id_list(path: Path) -> list[str]:
    """Image ids from a list file: VOC's one id per line, or PFENet's 'JPEGImages/x.jpg ...'."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: list file not found") from None
    return [Path(line.split()[0]).stem for line in lines if line.strip()]


def merge(lists: list[list[str]], held_out: list[str]) -> list[str]:
    """The ids of `lists` in order, each once, minus every held-out (val) id."""
    drop = set(held_out)
    return [i for i in dict.fromkeys(i for ids in lists for i in ids) if i not in drop]


def split_ids(root: Path, train_list: str) -> dict[str, list[str]]:
    """{'train': ids, 'val': ids}: the chosen train list(s) (built, or a list file) merged in
    order without duplicates, minus every VOC2012 val image (val is where novel classes are
    tested)."""
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found")
    lists = root / "ImageSets" / "Segmentation"
    val = read_id_list(lists / "val.txt")
    files = [lists / f"{n}.txt" for n in TRAIN_LISTS.get(train_list, ())] or [Path(train_list)]
    return {"train": merge([read_id_list(f) for f in files], val), "val": val}
