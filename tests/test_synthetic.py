"""The synthetic benchmark: VOC layout, determinism, and the class structure the method needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY, cli, params
from latentfss.config import SyntheticConfig
from latentfss.datasets import synthetic
from latentfss.datasets.images import read_mask
from latentfss.datasets.index import read_index
from latentfss.episodes import IGNORE, base_classes, novel_classes
from latentfss.stages.make_synthetic import generate


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "synthetic.json"
    }


def test_voc_layout(tiny_root):
    lists = tiny_root / "ImageSets/Segmentation"
    train = (lists / "train.txt").read_text().split()
    val = (lists / "val.txt").read_text().split()
    assert (len(train), len(val)) == (TINY.num_train, TINY.num_val)
    assert not set(train) & set(val)
    for image_id in train + val:
        image = Image.open(tiny_root / "JPEGImages" / f"{image_id}.jpg")
        mask = Image.open(tiny_root / "SegmentationClassAug" / f"{image_id}.png")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert mask.format == "PNG" and mask.mode == "P"  # single channel, VOC palette
        assert image.size == mask.size
        assert all(TINY.min_size <= s <= TINY.max_size for s in image.size)
        labels = np.asarray(mask)
        assert set(np.unique(labels)) <= set(range(21)) | {IGNORE}
    provenance = json.loads((tiny_root / "synthetic.json").read_text())
    assert provenance["class_names"] == list(synthetic.CLASS_NAMES)


def test_ignore_band_surrounds_every_object(tiny_root):
    """255 sits exactly where a label changes within the band radius, as VOC's boundaries."""
    for path in sorted((tiny_root / "SegmentationClassAug").glob("*.png"))[:8]:
        labels = read_mask(path, 20)
        band = labels == IGNORE
        assert band.any()
        # every pixel next to a band pixel is either band or a real label: no label touches
        # another label directly (horizontal neighbours)
        left, right = labels[:, :-1], labels[:, 1:]
        touching = (left != right) & (left != IGNORE) & (right != IGNORE)
        assert not touching.any()


def test_same_seed_gives_byte_identical_files(tmp_path):
    small = SyntheticConfig(num_train=6, num_val=3, min_size=40, max_size=56)
    generate(small, tmp_path / "a")
    generate(small, tmp_path / "b")
    generate(SyntheticConfig(**{**small.__dict__, "seed": 1}), tmp_path / "c")
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_images_are_independent_of_generation_order():
    first = synthetic.render_image(TINY, synthetic.image_rng(0, "train", 5))
    synthetic.render_image(TINY, synthetic.image_rng(0, "train", 4))
    again = synthetic.render_image(TINY, synthetic.image_rng(0, "train", 5))
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))


def test_classes_form_a_colour_by_pattern_grid():
    factors = [synthetic.class_factors(c) for c in range(1, 21)]
    assert len(set(factors)) == 20  # a bijection onto 4 colours x 5 patterns
    assert tuple(f"{c}-{p}" for c, p in factors) == synthetic.CLASS_NAMES
    for fold in range(4):
        base = {synthetic.class_factors(c) for c in base_classes(fold, 20)}
        novel = [synthetic.class_factors(c) for c in novel_classes(fold, 20)]
        assert sorted(p for _, p in novel) == sorted(synthetic.PATTERNS)
        assert sorted(np.unique([c for c, _ in novel], return_counts=True)[1]) == [2, 3]
        for colour, pattern in novel:
            assert (colour, pattern) not in base
            assert sum(p == pattern for _, p in base) == 3  # its pattern is seen in training
            assert sum(c == colour for c, _ in base) >= 2  # and so is its colour


def test_every_pattern_gives_half_its_area_to_each_tone():
    """So that an object's colour statistics do not tell its pattern."""
    y, x = np.mgrid[-48:48, -48:48].astype(np.float32)
    for pattern in synthetic.PATTERNS:
        light = synthetic._pattern(pattern, np.random.default_rng(0), x, y)
        assert set(np.unique(light)) == {0, 1} and abs(light.mean() - 0.5) < 0.06, pattern


def test_training_images_hold_unlabelled_novel_objects(tiny_root):
    """Latent classes exist: for every fold, training images also show novel-class objects."""
    masks = sorted((tiny_root / "SegmentationClassAug").glob("train_*.png"))
    present = [set(np.unique(read_mask(p, 20))) for p in masks]
    for fold in range(4):
        novel, base = set(novel_classes(fold, 20)), set(base_classes(fold, 20))
        mixed = sum(bool(p & novel) and bool(p & base) for p in present)
        assert mixed >= 0.15 * len(masks), (fold, mixed)


def test_prepare_names_the_classes_a_root_was_generated_with(tiny_root, tmp_path):
    """A root written by another version of the generator keeps its own class names (and so
    its own factors) in the index."""
    root = tmp_path / "voc"
    shutil.copytree(tiny_root, root)
    provenance = json.loads((root / "synthetic.json").read_text())
    provenance["class_names"] = [f"old-{i}" for i in range(20)]
    (root / "synthetic.json").write_text(json.dumps(provenance))
    assert cli("prepare", "--out", tmp_path / "index", "--params", params(root=str(root)))[0] == 0
    assert read_index(tmp_path / "index").meta["class_names"] == provenance["class_names"]
