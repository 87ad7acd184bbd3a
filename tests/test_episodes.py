"""Folds, per-class lists and episode labels (episodes.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentfss.episodes import (
    IGNORE,
    EpisodeSampler,
    base_classes,
    binary_mask,
    class_image_lists,
    fold_images,
    novel_classes,
    sample_test_episodes,
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


def test_binary_mask_marks_the_episode_class_and_every_other_pixel_background():
    mask = np.array([[0, 3, 3], [5, 255, 3]], dtype=np.uint8)  # 5: say a novel class
    assert binary_mask(mask, 3).tolist() == [[0, 1, 1], [0, IGNORE, 1]]


def long_table(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "class_id", "pixels"])


# A hand-built train split of fold 0 (novel 1-5, base 6-20), min_support_pixels 100:
TRAIN = long_table(
    [
        (0, 0, 900),
        (0, 6, 400),
        (0, 1, 50),  # base class 6 large: in the train set
        (1, 0, 800),
        (1, 1, 500),
        (1, 2, 300),  # novel classes only: Remain
        (2, 0, 700),
        (2, 7, 99),
        (2, 3, 400),  # its base class is small: Remain
        (3, 0, 600),
        (3, 7, 100),
        (3, 6, 20),  # class 7 exactly at the threshold: train set
        (4, 0, 1000),  # background only: Remain
        (5, 6, 300),
    ]
)


def test_a_folds_train_set_is_the_images_with_a_large_base_class():
    assert fold_images(TRAIN, base_classes(0, 20), 100).tolist() == [0, 3, 5]
    assert fold_images(TRAIN, novel_classes(0, 20), 100).tolist() == [1, 2]  # 0: 50 px
    assert fold_images(TRAIN, (9,), 100).tolist() == []


def test_training_episodes_never_touch_remain():
    sampler = EpisodeSampler.from_pixels(TRAIN, base_classes(0, 20), 100, shots=1)
    assert sampler.queries.tolist() == [0, 3, 5]
    # image 3's class 6 is small but present: drawable, as in both references; class 7 has
    # no support besides image 3 itself, so it cannot be
    assert [c.tolist() for c in sampler.choices] == [[6], [6], [6]]
    rng = np.random.default_rng(0)
    for _ in range(200):
        query, class_id, supports = sampler.draw(rng)
        assert {query, *supports} <= {0, 3, 5} and query not in supports


# A hand-built val split of fold 0, min_support_pixels 2048:
VAL = long_table(
    [
        (0, 1, 5000),
        (0, 2, 10),  # a large class 1 and a 10-pixel class 2
        (1, 1, 3000),
        (2, 2, 3000),
        (3, 2, 2500),
        (3, 1, 10),
        (5, 2, 3000),
        (6, 1, 2048),
        (4, 3, 100),  # a small object alone: never a query, never a support
        (7, 9, 9000),  # a base class: not in this fold's test episodes
    ]
)


def test_test_queries_are_uniform_and_their_class_uniform_among_those_present_at_any_size():
    sampler = EpisodeSampler.from_pixels(VAL, novel_classes(0, 20), 2048, shots=1)
    assert sampler.queries.tolist() == [0, 1, 2, 3, 5, 6]
    episodes = pd.concat([sample_test_episodes(sampler, 100, seed) for seed in range(300)])
    queries = episodes["query"].value_counts(normalize=True)
    assert sorted(queries.index) == [0, 1, 2, 3, 5, 6] and (abs(queries - 1 / 6) < 0.01).all()
    of_image_0 = episodes[episodes["query"] == 0]["class_id"]
    assert (of_image_0 == 2).mean() == pytest.approx(0.5, abs=0.02)  # its 10-pixel class 2


def test_every_support_holds_enough_of_its_class_and_is_not_the_query():
    lists = class_image_lists(VAL, novel_classes(0, 20), 2048)
    for shots in (1, 2):
        sampler = EpisodeSampler.from_pixels(VAL, novel_classes(0, 20), 2048, shots)
        episodes = sample_test_episodes(sampler, 500, seed=0)
        for _, e in episodes.iterrows():
            supports = [int(s) for s in e["supports"].split()]
            assert len(set(supports)) == shots and e["query"] not in supports
            assert set(supports) <= set(lists[e["class_id"]].tolist())  # >= 2048 pixels


def test_episode_lists_repeat_for_a_seed_and_need_enough_supports():
    sampler = EpisodeSampler.from_pixels(VAL, novel_classes(0, 20), 2048, shots=2)
    assert sampler.queries.tolist() == [0, 1, 2, 3, 5, 6]  # class 1 (3 images): 2 besides any
    episodes = sample_test_episodes(sampler, 50, seed=0)
    assert episodes.equals(sample_test_episodes(sampler, 50, 0))
    assert not episodes.equals(sample_test_episodes(sampler, 50, 1))
    with pytest.raises(ValueError, match="no class has 4 support images besides a query"):
        EpisodeSampler.from_pixels(VAL, novel_classes(0, 20), 2048, shots=4)
