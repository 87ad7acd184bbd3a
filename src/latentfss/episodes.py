"""FSS protocol: the class folds of PASCAL-5i / COCO-20i, per-class image lists, episode labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from latentfss.config import CLASS_SPLITS

NUM_FOLDS = 4
IGNORE = 255  # VOC's "void" label: boundaries and unlabelled pixels, never scored or learned


def novel_classes(fold: int, num_classes: int, split: str = "consecutive") -> tuple[int, ...]:
    """The fold's novel (test) class ids, 1-based.

    consecutive: fold i = num/4*i+1 .. num/4*(i+1) (PASCAL-5i [Shaban et al.]; COCO-20i as in
                 PANet, which the paper follows).
    interleaved: fold i = {4k + i + 1} (the COCO-20i split of PFENet, HSNet and BAM).
    """
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be in 0..{NUM_FOLDS - 1}, got {fold}")
    if num_classes % NUM_FOLDS:
        raise ValueError(f"{num_classes} classes do not split into {NUM_FOLDS} folds")
    per_fold = num_classes // NUM_FOLDS
    if split == "consecutive":
        return tuple(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))
    if split == "interleaved":
        return tuple(NUM_FOLDS * k + fold + 1 for k in range(per_fold))
    raise ValueError(f"unknown class split {split!r} ({' | '.join(CLASS_SPLITS)})")


def base_classes(fold: int, num_classes: int, split: str = "consecutive") -> tuple[int, ...]:
    """The fold's base (training) class ids: every class that is not novel."""
    novel = set(novel_classes(fold, num_classes, split))
    return tuple(c for c in range(1, num_classes + 1) if c not in novel)


def class_image_lists(
    pixels: pd.DataFrame, classes: tuple[int, ...] | list[int], min_pixels: int
) -> dict[int, np.ndarray]:
    """For each class, the sorted image ids in which it covers at least `min_pixels` pixels:
    the images that may serve as its supports.

    `pixels` is the prepared index's long table (columns image_id, class_id, pixels). Both
    references (PFENet's `make_dataset`, the authors' `FewShot`) take a support only where its
    class covers >= 2x32x32 pixels on real data, following Shaban et al.
    """
    kept = pixels[pixels["pixels"] >= min_pixels]
    return {c: np.sort(kept.loc[kept["class_id"] == c, "image_id"].to_numpy()) for c in classes}


def fold_images(
    pixels: pd.DataFrame, classes: tuple[int, ...] | list[int], min_pixels: int
) -> np.ndarray:
    """Sorted ids of the images holding at least one of `classes` with >= `min_pixels` pixels.

    With a fold's base classes over the train split this is the fold's train set, the only
    images that training episodes, the mining stream and the region bank use (PFENet's
    `make_dataset`, the authors' `_filter_ids`); the other train images are the paper's
    "Remain" (Table 5). With the novel classes over the val split, the test queries.
    """
    lists = class_image_lists(pixels, classes, min_pixels).values()
    return np.unique(np.concatenate([np.zeros(0, np.int64), *lists]))


@dataclass(frozen=True)
class EpisodeSampler:
    """1-way K-shot episodes drawn as both references draw them (the authors' `FewShot`,
    PFENet's `SemData`), for training and test alike:

    1. the query uniform over the images holding one of the classes with >= min_pixels;
    2. the class uniform among those classes present in the query, at any size;
    3. `shots` distinct supports uniform among the other images where it covers >= min_pixels.

    A class with fewer than `shots` such other images cannot be drawn for a query (the
    references would loop forever; on PASCAL and COCO every class has hundreds).
    """

    queries: np.ndarray  # (Q,) image ids
    choices: tuple[np.ndarray, ...]  # per query, the classes it may be drawn with
    supports: dict[int, np.ndarray]  # per class, the images it may be supported by
    shots: int

    @classmethod
    def from_pixels(
        cls, pixels: pd.DataFrame, classes: tuple[int, ...] | list[int], min_pixels: int, shots: int
    ) -> EpisodeSampler:
        """`pixels`: the index's long table restricted to one split."""
        supports = class_image_lists(pixels, classes, min_pixels)
        present = pixels[pixels["class_id"].isin(classes)]
        # a class's supports besides the query: its list, less the query where it is listed
        others = present["class_id"].map({c: len(ids) for c, ids in supports.items()}) - (
            present["pixels"] >= min_pixels
        )
        queries = fold_images(pixels, classes, min_pixels)
        drawable = present[(others >= shots) & present["image_id"].isin(queries)]
        by_query = drawable.sort_values(["image_id", "class_id"]).groupby("image_id")
        choices = {image: group.to_numpy() for image, group in by_query["class_id"]}
        if not choices:
            raise ValueError(f"no class has {shots} support images besides a query")
        queries = np.array(sorted(choices))
        return cls(queries, tuple(choices[q] for q in queries.tolist()), supports, shots)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, list[int]]:
        """-> (query, class_id, supports) image ids and class."""
        q = int(rng.integers(len(self.queries)))
        class_id = int(self.choices[q][rng.integers(len(self.choices[q]))])
        others = self.supports[class_id][self.supports[class_id] != self.queries[q]]
        supports = rng.choice(others, self.shots, replace=False)
        return int(self.queries[q]), class_id, supports.tolist()


def binary_mask(mask: np.ndarray, class_id: int) -> np.ndarray:
    """An episode's label: 1 where `class_id`, 0 elsewhere, IGNORE where the mask ignores.

    Every other class is background, the fold's novel classes in training images included,
    as in both references: novel objects stay in the pixels of training images but no label
    reveals them (the latent classes the mining branch discovers).
    """
    out = (mask == class_id).astype(np.uint8)
    out[mask == IGNORE] = IGNORE
    return out


def sample_test_episodes(sampler: EpisodeSampler, count: int, seed: int) -> pd.DataFrame:
    """`count` test episodes of one seed, drawn in order from one generator (the protocol of
    the authors' main.py: 1000 / 4000 per seed, seeds 0-4).

    -> columns episode, query, class_id, supports (image_ids separated by spaces).
    """
    rng = np.random.default_rng([seed, sampler.shots])
    rows = []
    for episode in range(count):
        query, class_id, supports = sampler.draw(rng)
        rows.append((episode, query, class_id, " ".join(map(str, supports))))
    return pd.DataFrame(rows, columns=["episode", "query", "class_id", "supports"])
