"""PASCAL-5i from the official VOC2012 and SBD archives: masks, list arithmetic, counts, errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import cli, params
from latentfss.datasets import pascal, voc
from latentfss.datasets.images import read_mask, write_mask
from latentfss.datasets.index import read_index
from latentfss.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from compare_masks import compare  # noqa: E402
from pascal_archives import official_lists, save_sbd_mat  # noqa: E402
from pascal_archives import write_lists as write_list_files  # noqa: E402

VOC, SBD = pascal.VOC, pascal.SBD
SIZE = (12, 16)  # (height, width) of every test image


def write_ids(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_lists(root: Path, lists: dict[str, list[str]]) -> None:
    """The official list files (keys as in pascal.COUNTS) and the folders `split` expects."""
    write_list_files(root, lists)
    for folder in (VOC / "JPEGImages", VOC / "SegmentationClass", SBD / "cls"):
        (root / folder).mkdir(parents=True, exist_ok=True)


# VOC2012's masks label their object 1 with a 255 band around it; SBD's label the same image's
# object 2 and have no band, so every test can tell whose mask an image got.
def voc_mask() -> np.ndarray:
    mask = np.zeros(SIZE, np.uint8)
    mask[2:9, 3:12] = 255
    mask[3:8, 4:11] = 1
    return mask


def sbd_mask(k: int) -> np.ndarray:
    mask = np.zeros(SIZE, np.uint8)
    mask[1 : 4 + k, 2:10] = 2  # k: a per-image size, to tell converted masks apart
    return mask


SMALL = {
    "VOC2012 train": ["a", "b", "c"],
    "VOC2012 val": ["v", "w"],
    "SBD train": ["b", "s1", "v"],
    "SBD val": ["s2", "w"],
    "SBD train_noval": ["b", "s1"],
}
SMALL_COUNTS = {
    **{name: len(ids) for name, ids in SMALL.items()},
    "trainaug": 5,  # a b c s1 s2
    "voc_sbd": 4,  # a b c s1
}


def make_official(root: Path, lists: dict[str, list[str]] = SMALL) -> Path:
    """Both archives, extracted under `root`, with tiny images: VOC's masks for VOC2012 train
    and val, a .mat for every SBD image (including those VOC2012 also labels)."""
    write_lists(root, lists)
    voc_ids = lists["VOC2012 train"] + lists["VOC2012 val"]
    sbd_ids = lists["SBD train"] + lists["SBD val"]
    for k, image_id in enumerate(dict.fromkeys(voc_ids + sbd_ids)):
        pixels = np.full((*SIZE, 3), 40 * (k % 6), np.uint8)
        Image.fromarray(pixels).save(root / VOC / "JPEGImages" / f"{image_id}.jpg")
        if image_id in voc_ids:
            write_mask(root / VOC / "SegmentationClass" / f"{image_id}.png", voc_mask())
        if image_id in sbd_ids:
            save_sbd_mat(root / SBD / "cls" / f"{image_id}.mat", sbd_mask(k % 5))
    return root


@pytest.fixture
def small_counts(monkeypatch):
    monkeypatch.setattr(pascal, "COUNTS", SMALL_COUNTS)


def files_of(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def prepare(root: Path, out: Path, capsys, train_list: str = "trainaug", threads: int = 1):
    dataset = params(name="pascal", root=str(root), train_list=train_list)
    argv = ["prepare", "--out", out, "--params", dataset, "--threads", str(threads)]
    return cli(*argv, capsys=capsys)


def test_voc_masks_where_voc_has_them_else_sbd_converted_into_the_index(
    tmp_path, small_counts, capsys
):
    root = make_official(tmp_path / "pascal")
    before = files_of(root)
    out = tmp_path / "dataset"
    code, err = prepare(root, out, capsys, threads=2)
    assert code == 0, err
    assert files_of(root) == before  # nothing written into the user's folders

    index = read_index(out)
    assert index.meta["layout"] == "official VOC2012 + SBD"
    assert index.meta["converted_masks"] == 2
    images = index.images.set_index("name")
    assert images.index[images["split"] == "train"].tolist() == ["a", "b", "c", "s1", "s2"]
    assert images.index[images["split"] == "val"].tolist() == ["v", "w"]
    for name, row in images.iterrows():
        assert Path(row["image"]) == root.resolve() / VOC / "JPEGImages" / f"{name}.jpg"
        mask = read_mask(row["mask"], 20)
        if name in ("s1", "s2"):  # SBD only: its class map, as a PNG under the index
            assert Path(row["mask"]).parent == out.resolve() / "masks" / "sbd"
            mat = scipy.io.loadmat(root / SBD / "cls" / f"{name}.mat")
            np.testing.assert_array_equal(mask, mat["GTcls"]["Segmentation"][0, 0])
        else:  # VOC's own, 255 band included; b, v and w have an SBD mask too
            assert Path(row["mask"]) == root.resolve() / VOC / "SegmentationClass" / f"{name}.png"
            np.testing.assert_array_equal(mask, voc_mask())
        i = index.images.index[index.images["name"] == name][0]
        counted = index.pixels[index.pixels["image_id"] == i].set_index("class_id")["pixels"]
        expected = np.bincount(mask.ravel(), minlength=256)[:21]
        assert counted.to_dict() == {c: n for c, n in enumerate(expected) if n}


def test_train_lists_from_the_official_lists(tmp_path, small_counts):
    root = make_official(tmp_path / "pascal")
    assert pascal.split(root, "voc").train == ["a", "b", "c"]
    assert pascal.split(root, "trainaug").train == ["a", "b", "c", "s1", "s2"]
    assert pascal.split(root, "voc_sbd").train == ["a", "b", "c", "s1"]
    assert pascal.split(root, "voc").val == ["v", "w"]
    assert pascal.split(root, "voc").voc_masked == {"a", "b", "c", "v", "w"}

    # a user's list, in PFENet's "image mask" format: its val ids dropped, its order kept
    pfenet = tmp_path / "voc_sbd_merge_noduplicate.txt"
    pfenet.write_text(
        "".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in ("s2", "v", "a", "b"))
    )
    assert pascal.split(root, str(pfenet)).train == ["s2", "a", "b"]


def test_a_listed_image_without_any_mask_is_named(tmp_path, small_counts):
    root = make_official(tmp_path / "pascal")
    mine = tmp_path / "mine.txt"
    write_ids(mine, ["a", "2012_004444", "b"])
    with pytest.raises(InputError, match=rf"^{mine}: 2012_004444 is in none of VOC2012"):
        pascal.split(root, str(mine))


def test_official_counts_give_trainaug_10582_and_pfenets_5953(tmp_path):
    lists = official_lists()
    write_lists(tmp_path, lists)
    assert {name: len(ids) for name, ids in lists.items()} == {
        name: pascal.COUNTS[name] for name in lists
    }
    trainaug = pascal.split(tmp_path, "trainaug")
    assert len(trainaug.train) == 10_582 and len(trainaug.val) == 1_449
    assert not set(trainaug.train) & set(lists["VOC2012 val"])
    assert len(set(trainaug.train)) == 10_582
    assert len(pascal.split(tmp_path, "voc_sbd").train) == 5_953
    assert len(pascal.split(tmp_path, "voc").train) == 1_464


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            lambda lists: lists["SBD val"].pop(),
            "{root}/benchmark_RELEASE/dataset/val.txt: 2,856 ids, expected 2,857 (SBD val)",
        ),
        (  # the first mismatch is named: VOC2012 train is checked before SBD val
            lambda lists: (lists["SBD val"].pop(), lists["VOC2012 train"].pop()),
            "{root}/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt: 1,463 ids, expected "
            "1,464 (VOC2012 train)",
        ),
        (  # the right sizes, but an SBD val image swapped for an SBD train one
            lambda lists: lists["SBD val"].__setitem__(-1, lists["SBD train"][-1]),
            "trainaug: the official lists give 10,581 train ids, expected 10,582",
        ),
    ],
)
def test_the_first_count_that_differs_is_named(tmp_path, damage, message):
    lists = official_lists()
    damage(lists)
    write_lists(tmp_path, lists)
    with pytest.raises(InputError) as error:
        pascal.split(tmp_path, "voc_sbd")
    assert str(error.value).startswith(message.format(root=tmp_path))


def remove(path: Path) -> None:
    if path.is_dir():
        for p in path.iterdir():
            p.unlink()
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize(
    "damage,train_list,message",
    [
        (
            lambda root: remove(root / SBD / "cls"),
            "trainaug",
            "{root}/benchmark_RELEASE/dataset/cls: missing folder (extract the official SBD "
            "archive into {root};",
        ),
        (
            lambda root: remove(root / VOC / "SegmentationClass"),
            "voc",
            "{root}/VOCdevkit/VOC2012/SegmentationClass: missing folder (extract the official "
            "VOC2012 archive",
        ),
        (
            lambda root: remove(root / SBD / "cls/s2.mat"),
            "trainaug",
            "{root}/benchmark_RELEASE/dataset/cls/s2.mat: no such file",
        ),
        (
            lambda root: (root / SBD / "cls/s1.mat").write_bytes(
                (root / SBD / "cls/s1.mat").read_bytes()[:300]
            ),
            "trainaug",
            "{root}/benchmark_RELEASE/dataset/cls/s1.mat: cannot read the .mat file (",
        ),
        (
            lambda root: scipy.io.savemat(root / SBD / "cls/s1.mat", {"GTinst": sbd_mask(0)}),
            "trainaug",
            "{root}/benchmark_RELEASE/dataset/cls/s1.mat: no GTcls.Segmentation (not an SBD",
        ),
        (
            lambda root: save_sbd_mat(root / SBD / "cls/s2.mat", np.full((5, 5), 2, np.uint8)),
            "trainaug",
            "{root}/benchmark_RELEASE/dataset/cls/s2.mat: mask is 5x5 but its image s2.jpg is "
            "16x12",
        ),
        (
            lambda root: remove(root / SBD / "train_noval.txt"),
            "voc_sbd",
            "{root}/benchmark_RELEASE/dataset/train_noval.txt: list file not found",
        ),
        (
            lambda root: remove(root / VOC / "JPEGImages/s1.jpg"),
            "trainaug",
            "{root}/VOCdevkit/VOC2012/JPEGImages/s1.jpg: no such file",
        ),
    ],
)
def test_a_partial_download_stops_prepare_with_one_line_naming_the_file(
    tmp_path, small_counts, capsys, damage, train_list, message
):
    root = make_official(tmp_path.resolve() / "pascal")
    damage(root)
    out = tmp_path / "dataset"
    code, err = prepare(root, out, capsys, train_list=train_list)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("ERROR: " + message.format(root=root)), err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".dataset*"))


def test_a_segmentation_class_aug_root_keeps_its_own_masks(tmp_path, tiny_root, capsys):
    """A root holding SegmentationClassAug/ (the third-party zip, the synthetic benchmark) is
    read as before, with a user's list file as the train list."""
    mine = tmp_path / "mine.txt"
    write_ids(mine, ["train_00003", "val_00000", "train_00001"])
    out = tmp_path / "dataset"
    code, err = prepare(tiny_root, out, capsys, train_list=str(mine))
    assert code == 0, err
    index = read_index(out)
    assert index.meta["layout"] == "SegmentationClassAug" and index.meta["converted_masks"] == 0
    assert index.split("train")["name"].tolist() == ["train_00003", "train_00001"]
    assert all("/SegmentationClassAug/" in m for m in index.images["mask"])


def test_compare_masks_counts_what_differs_from_a_segmentation_class_aug_folder(
    tmp_path, small_counts, capsys
):
    root = make_official(tmp_path / "pascal")
    out = tmp_path / "dataset"
    assert prepare(root, out, capsys)[0] == 0
    aug = tmp_path / "SegmentationClassAug"
    aug.mkdir()
    for _, row in read_index(out).images.iterrows():
        write_mask(aug / f"{row['name']}.png", read_mask(row["mask"], 20))
    same = compare(out, aug)
    assert same["VOC2012"]["images"] == 5 and same["SBD"]["images"] == 2
    assert all(c["differ"] == c["px_differ"] == 0 for c in same.values())

    band = voc_mask()
    band[band == 255] = 0  # b as the zip would have it without VOC's boundary band
    write_mask(aug / "b.png", band)
    relabelled = read_mask(aug / "s1.png", 20).copy()
    relabelled[1, 2:5] = 7  # three pixels of another class
    write_mask(aug / "s1.png", relabelled)
    counts = compare(out, aug)
    pixels = SIZE[0] * SIZE[1]
    assert counts["VOC2012"] == {
        "images": 5,
        "differ": 1,
        "pixels": 5 * pixels,
        "px_differ": int((voc_mask() == 255).sum()),
        "px_label_differ": 0,
    }
    assert counts["SBD"] == {
        "images": 2,
        "differ": 1,
        "pixels": 2 * pixels,
        "px_differ": 3,
        "px_label_differ": 3,
    }


def test_the_same_data_as_official_archives_or_as_segmentation_class_aug_index_the_same(
    tmp_path, tiny_root, monkeypatch, capsys
):
    """The tiny synthetic dataset laid out both ways: VOC2012's masks for half of train and all
    of val, the other half of train only in SBD as .mat files (some of VOC2012 train too)."""
    train = voc.read_id_list(tiny_root / "ImageSets/Segmentation/train.txt")
    val = voc.read_id_list(tiny_root / "ImageSets/Segmentation/val.txt")
    half = len(train) // 2
    lists = {
        "VOC2012 train": train[:half],
        "VOC2012 val": val,
        "SBD train": train[half - 2 :],
        "SBD val": val[:3],
    }
    monkeypatch.setattr(
        pascal,
        "COUNTS",
        {**{name: len(ids) for name, ids in lists.items()}, "trainaug": len(train)},
    )
    root = tmp_path / "pascal"
    write_lists(root, lists)
    for name in train + val:
        shutil.copy(voc.image_path(tiny_root, name), pascal.image_path(root, name))
        mask = read_mask(voc.mask_path(tiny_root, name), 20)
        if name in lists["VOC2012 train"] + val:
            write_mask(pascal.voc_mask_path(root, name), mask)
        if name in lists["SBD train"] + lists["SBD val"]:
            scipy.io.savemat(pascal.sbd_mat_path(root, name), {"GTcls": {"Segmentation": mask}})

    official, aug = tmp_path / "official", tmp_path / "aug"
    assert prepare(root, official, capsys)[0] == 0
    train_list = tmp_path / "trainaug.txt"
    write_ids(train_list, train)
    assert prepare(tiny_root, aug, capsys, train_list=str(train_list))[0] == 0
    ours, theirs = read_index(official), read_index(aug)
    assert ours.meta["converted_masks"] == len(train) - half
    assert ours.pixels.equals(theirs.pixels)
    columns = ["name", "split", "height", "width"]
    assert ours.images[columns].equals(theirs.images[columns])
