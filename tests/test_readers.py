"""Readers and the prepared index: VOC-format (synthetic, PASCAL lists) and COCO json -> masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import latentfss
from conftest import TINY, cli, params
from latentfss.datasets import synthetic, voc
from latentfss.datasets.images import read_image, read_mask, write_mask
from latentfss.datasets.index import read_index


@pytest.fixture(scope="module")
def tiny_index(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "dataset"
    assert cli("prepare", "--out", out, "--params", params(root=str(tiny_root)))[0] == 0
    return read_index(out)


def test_prepare_indexes_every_image_with_its_pixel_counts(tiny_root, tiny_index):
    images, pixels = tiny_index.images, tiny_index.pixels
    assert images["split"].value_counts().to_dict() == {
        "train": TINY.num_train,
        "val": TINY.num_val,
    }
    assert tiny_index.meta["class_names"] == list(synthetic.CLASS_NAMES)
    assert tiny_index.num_classes == 20
    for i, row in images.iterrows():
        assert Path(row["image"]) == voc.image_path(tiny_root, row["name"]).resolve()
        mask = read_mask(row["mask"], 20)
        assert (row["height"], row["width"]) == mask.shape
        counted = pixels[pixels["image_id"] == i].set_index("class_id")["pixels"].to_dict()
        expected = {c: n for c, n in enumerate(np.bincount(mask.ravel(), minlength=21)[:21]) if n}
        assert counted == expected


def test_parallel_prepare_gives_the_same_index(tiny_root, tiny_index, tmp_path, capsys):
    out = tmp_path / "dataset"
    code, _ = cli(
        "prepare",
        "--out",
        out,
        "--params",
        params(root=str(tiny_root)),
        "--threads",
        "2",
        capsys=capsys,
    )
    assert code == 0
    again = read_index(out)
    assert again.images.equals(tiny_index.images) and again.pixels.equals(tiny_index.pixels)


def write_list(root: Path, name: str, lines: list[str]) -> None:
    path = root / "ImageSets/Segmentation" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_pascal_train_lists_merge_deduplicate_and_drop_val(tmp_path):
    write_list(tmp_path, "train", ["a", "b", "v1"])
    # SBD list in PFENet's "image mask" format, overlapping VOC train and val
    write_list(
        tmp_path,
        "sbd_train",
        [f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png" for i in ("b", "c", "v2", "d")],
    )
    write_list(tmp_path, "trainaug", ["c", "a", "v2"])
    write_list(tmp_path, "val", ["v1", "v2"])
    assert voc.split_ids(tmp_path, "voc_sbd") == {
        "train": ["a", "b", "c", "d"],
        "val": ["v1", "v2"],
    }
    assert voc.split_ids(tmp_path, "trainaug")["train"] == ["c", "a"]
    assert voc.split_ids(tmp_path, "voc")["train"] == ["a", "b"]


# --- COCO: a tiny instances json with known overlaps, a crowd RLE and an empty image ---

CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
]


def rectangle(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_coco(root: Path) -> None:
    """train: image 1 (40x50) = a large person with a small toothbrush on it; the toothbrush
    has the lower annotation id, so only area ordering keeps it visible. image 2 (20x30) = a
    crowd car as uncompressed RLE over columns 0..4. val: image 7 (32x32) with no annotation."""
    splits = {
        "train2014": (
            [(1, 40, 50), (2, 20, 30)],
            [
                {
                    "id": 10,
                    "image_id": 1,
                    "category_id": 90,
                    "iscrowd": 0,
                    "area": 100.0,
                    "segmentation": rectangle(10, 10, 20, 20),
                },
                {
                    "id": 11,
                    "image_id": 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 750.0,
                    "segmentation": rectangle(5, 5, 35, 30),
                },
                {
                    "id": 12,
                    "image_id": 2,
                    "category_id": 3,
                    "iscrowd": 1,
                    "area": 100.0,
                    "segmentation": {"size": [20, 30], "counts": [0, 100, 500]},
                },
            ],
        ),
        "val2014": ([(7, 32, 32)], []),
    }
    (root / "annotations").mkdir(parents=True)
    for folder, (records, anns) in splits.items():
        (root / folder).mkdir()
        images = []
        for image_id, height, width in records:
            name = f"COCO_{folder}_{image_id:012d}.jpg"
            Image.new("RGB", (width, height), (90, 120, 30)).save(root / folder / name)
            images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        data = {"images": images, "annotations": anns, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_coco(root)
    return root


def test_coco_json_converts_to_class_index_masks(coco_root, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    out = tmp_path / "dataset"
    code, err = cli(
        "prepare", "--out", out, "--params", params(name="coco", root=str(coco_root)), capsys=capsys
    )
    assert code == 0, err
    index = read_index(out)
    assert index.meta["class_names"] == ["person", "car", "toothbrush"]  # ascending category id
    assert index.images["split"].tolist() == ["train", "train", "val"]
    masks = [read_mask(p, 3) for p in index.images["mask"]]
    person, crowd, empty = masks
    assert person.shape == (40, 50) and crowd.shape == (20, 30) and empty.shape == (32, 32)
    assert person[15, 15] == 3  # the small toothbrush stays on top of the large person
    assert person[25, 30] == 1 and person[2, 2] == 0 and person[38, 45] == 0
    assert (crowd[:, :5] == 2).all() and (crowd[:, 5:] == 0).all()  # RLE is column-major
    assert not empty.any()
    counts = index.pixels.groupby(["image_id", "class_id"])["pixels"].sum().to_dict()
    assert counts[(1, 2)] == 100 and counts[(2, 0)] == 32 * 32
    assert all(Path(p).is_file() and Path(p).is_relative_to(out) for p in index.images["mask"])


def test_coco_conversion_is_deterministic(coco_root, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    for name in ("a", "b"):
        cli(
            "prepare",
            "--out",
            tmp_path / name,
            "--params",
            params(name="coco", root=str(coco_root)),
            capsys=capsys,
        )
    pngs = sorted((tmp_path / "a" / "masks").rglob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        assert png.read_bytes() == (tmp_path / "b" / png.relative_to(tmp_path / "a")).read_bytes()


def test_image_and_mask_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 21, (9, 13)).astype(np.uint8)
    labels[0] = 255
    write_mask(tmp_path / "m.png", labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert np.array_equal(read_mask(tmp_path / "m.png", 20), labels)
    rgb = np.random.default_rng(1).integers(0, 256, (9, 13, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "i.png")
    assert np.array_equal(read_image(tmp_path / "i.png"), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")  # greyscale images come out RGB
    assert read_image(tmp_path / "grey.png").shape == (9, 13, 3)


def test_index_splits_keep_global_image_indices(tiny_index):
    val = tiny_index.split("val")
    assert val.index.tolist() == list(range(TINY.num_train, TINY.num_train + TINY.num_val))
    assert tiny_index.meta["code_version"].startswith(latentfss.__version__)
