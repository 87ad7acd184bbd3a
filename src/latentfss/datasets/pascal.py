"""PASCAL-5i from the official archives, VOC2012 trainval and SBD, both extracted under one root.

    {root}/VOCdevkit/VOC2012/JPEGImages/{id}.jpg
    {root}/VOCdevkit/VOC2012/SegmentationClass/{id}.png    palette PNGs, 255 on object boundaries
    {root}/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    {root}/benchmark_RELEASE/dataset/cls/{id}.mat           SBD: GTcls.Segmentation, classes 0..20
    {root}/benchmark_RELEASE/dataset/{train,val}.txt
    {root}/benchmark_RELEASE/dataset/train_noval.txt        SBD's list without VOC2012 val images
                                                            (its download page; voc_sbd only)

Images are read from VOC2012's JPEGImages, which holds all of SBD's (they are VOC2011's), as
the references' lists do. An image's mask is VOC2012's own where it has one (VOC2012 train and
val: it carries VOC's 255 boundaries), else SBD's class map, which `prepare` converts to a PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentfss.datasets.images import check_labels
from latentfss.datasets.voc import merge, read_id_list
from latentfss.errors import InputError

VOC = Path("VOCdevkit/VOC2012")
SBD = Path("benchmark_RELEASE/dataset")

# the sizes of the official lists and of the lists built from them, in the order they are
# checked: the first that differs is named (a partial, altered or other-year download)
COUNTS = {
    "VOC2012 train": 1_464,
    "VOC2012 val": 1_449,
    "SBD train": 8_498,
    "SBD val": 2_857,
    "trainaug": 10_582,  # (VOC2012 train | SBD train | SBD val) - VOC2012 val
    "SBD train_noval": 5_623,
    "voc_sbd": 5_953,  # VOC2012 train | SBD train_noval, PFENet's list
}


def is_official(root: Path) -> bool:
    """Whether `root` holds the official archives rather than a SegmentationClassAug tree."""
    return not (root / "SegmentationClassAug").is_dir()


@dataclass(frozen=True)
class Split:
    """The train and val image ids, and which of them have a VOC2012 mask (the rest: SBD's)."""

    train: list[str]
    val: list[str]
    voc_masked: frozenset[str]


def image_path(root: Path, image_id: str) -> Path:
    return root / VOC / "JPEGImages" / f"{image_id}.jpg"


def voc_mask_path(root: Path, image_id: str) -> Path:
    return root / VOC / "SegmentationClass" / f"{image_id}.png"


def sbd_mat_path(root: Path, image_id: str) -> Path:
    return root / SBD / "cls" / f"{image_id}.mat"


def split(root: Path, train_list: str) -> Split:
    """The PASCAL-5i split: val = VOC2012 val; train = the built list `voc` (VOC2012 train),
    `trainaug` or `voc_sbd`, or the ids of a list file, minus every VOC2012 val id."""
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found")
    for folder, archive in (
        (VOC / "JPEGImages", "VOC2012"),
        (VOC / "SegmentationClass", "VOC2012"),
        (VOC / "ImageSets/Segmentation", "VOC2012"),
        (SBD / "cls", "SBD"),
    ):
        if not (root / folder).is_dir():
            raise InputError(
                f"{root / folder}: missing folder (extract the official {archive} archive "
                f"into {root}; or point dataset.root at a SegmentationClassAug tree)"
            )
    voc_train = _official_list(root / VOC / "ImageSets/Segmentation/train.txt", "VOC2012 train")
    voc_val = _official_list(root / VOC / "ImageSets/Segmentation/val.txt", "VOC2012 val")
    sbd_train = _official_list(root / SBD / "train.txt", "SBD train")
    sbd_val = _official_list(root / SBD / "val.txt", "SBD val")
    trainaug = _built(merge([voc_train, sbd_train, sbd_val], voc_val), "trainaug")
    if train_list == "voc":
        train = voc_train
    elif train_list == "trainaug":
        train = trainaug
    elif train_list == "voc_sbd":
        noval = _official_list(root / SBD / "train_noval.txt", "SBD train_noval")
        train = _built(merge([voc_train, noval], voc_val), "voc_sbd")
    else:
        train = _user_list(Path(train_list), voc_val, known=trainaug)
    return Split(train, voc_val, frozenset(voc_train) | frozenset(voc_val))


def _official_list(path: Path, name: str) -> list[str]:
    ids = read_id_list(path)
    if len(ids) != COUNTS[name]:
        raise InputError(
            f"{path}: {len(ids):,} ids, expected {COUNTS[name]:,} ({name}); "
            "a partial or altered download?"
        )
    return ids


def _built(ids: list[str], name: str) -> list[str]:
    if len(ids) != COUNTS[name]:
        raise InputError(
            f"{name}: the official lists give {len(ids):,} train ids, expected "
            f"{COUNTS[name]:,}; a partial or altered download?"
        )
    return ids


def _user_list(path: Path, voc_val: list[str], known: list[str]) -> list[str]:
    """A list file's ids minus VOC2012 val; each must have a mask (be in trainaug)."""
    ids, known = merge([read_id_list(path)], voc_val), set(known)
    missing = next((i for i in ids if i not in known), None)
    if missing is not None:
        raise InputError(
            f"{path}: {missing} is in none of VOC2012's or SBD's train lists, so it has no mask"
        )
    return ids


def read_sbd_mask(path: str | Path, num_classes: int = 20) -> np.ndarray:
    """SBD's class map `GTcls.Segmentation` of a cls/*.mat file as (H, W) uint8, 0..20."""
    from scipy.io import loadmat

    if not Path(path).is_file():  # loadmat's own error for it does not say so
        raise InputError(f"{path}: no such file")
    try:
        contents = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # a damaged file fails in many ways (MatReadError, IndexError, ...)
        raise InputError(f"{path}: cannot read the .mat file ({e})") from None
    try:
        mask = contents["GTcls"].Segmentation
    except (KeyError, AttributeError):
        raise InputError(f"{path}: no GTcls.Segmentation (not an SBD cls/ file)") from None
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "ui":
        raise InputError(f"{path}: GTcls.Segmentation is not a 2-D integer class map")
    return check_labels(mask, num_classes, path).astype(np.uint8)
