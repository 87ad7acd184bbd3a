"""Folds, per-class lists and episode labels (episodes.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentfss.episodes import (
    IGNORE,
    base_classes,
    binary_mask,
    class_image_lists,
    novel_classes,
    training_mask,
)


def test_pascal_folds_are_5i_plus_1_to_5i_plus_5():
    assert [novel_classes(i, 20) for i in range(4)] == [
        (1, 2, 3, 4, 5),
        (6, 7, 8, 9, 10),
        (11, 12, 13, 14, 15),
        (16, 17, 18, 19, 20),
    ]


@pytest.mark.parametrize(
    "num_classes,split", [(20, "consecutive"), (80, "consecutive"), (80, "interleaved")]
)
def test_folds_are_disjoint_and_complete(num_classes, split):
    novel = [set(novel_classes(f, num_classes, split)) for f in range(4)]
    assert all(len(n) == num_classes // 4 for n in novel)
    assert set().union(*novel) == set(range(1, num_classes + 1))
    assert sum(len(n) for n in novel) == num_classes  # pairwise disjoint
    for fold in range(4):
        base = set(base_classes(fold, num_classes, split))
        assert base.isdisjoint(novel[fold])
        assert base | novel[fold] == set(range(1, num_classes + 1))


def test_coco_splits_match_panet_and_pfenet():
    assert novel_classes(1, 80, "consecutive") == tuple(range(21, 41))  # PANet
    assert novel_classes(0, 80, "interleaved") == tuple(range(1, 78, 4))  # PFENet: 1, 5, ..., 77
    assert novel_classes(3, 80, "interleaved") == tuple(range(4, 81, 4))


def test_bad_fold_or_split_is_refused():
    with pytest.raises(ValueError, match="fold"):
        novel_classes(4, 20)
    with pytest.raises(ValueError, match="split"):
        novel_classes(0, 80, "random")


def test_class_lists_keep_images_above_the_pixel_threshold():
    pixels = pd.DataFrame(
        {
            "image_id": [0, 0, 1, 1, 2, 3, 3],
            "class_id": [0, 3, 3, 4, 3, 4, 0],
            "pixels": [900, 100, 99, 50, 500, 49, 10],
        }
    )
    lists = class_image_lists(pixels, classes=(3, 4, 5), min_pixels=100)
    assert lists[3].tolist() == [0, 2]  # image 1 has 99 < 100 pixels of class 3
    assert lists[4].tolist() == []
    assert lists[5].tolist() == []  # a class with no image at all


def test_training_mask_hides_novel_classes_and_keeps_ignore():
    mask = np.array([[0, 1, 6], [7, 255, 2]], dtype=np.uint8)
    before = mask.copy()
    out = training_mask(mask, novel=(6, 7))
    assert out.tolist() == [[0, 1, 0], [0, 255, 2]]
    assert np.array_equal(mask, before)  # the input is not modified


def test_binary_mask_marks_the_episode_class():
    mask = np.array([[0, 3, 3], [5, 255, 3]], dtype=np.uint8)
    assert binary_mask(mask, 3).tolist() == [[0, 1, 1], [0, IGNORE, 1]]
