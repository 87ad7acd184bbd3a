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

# train list choices (config `dataset.train_list`): the list files each one reads, in order
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


def split_ids(root: Path, train_list: str) -> dict[str, list[str]]:
    """{'train': ids, 'val': ids}: the chosen train list(s) merged in order without duplicates,
    minus every VOC2012 val image (val is where novel classes are tested)."""
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found")
    lists = root / "ImageSets" / "Segmentation"
    val = read_id_list(lists / "val.txt")
    held_out = set(val)
    train = dict.fromkeys(
        i for name in TRAIN_LISTS[train_list] for i in read_id_list(lists / f"{name}.txt")
    )
    return {"train": [i for i in train if i not in held_out], "val": val}
