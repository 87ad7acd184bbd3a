"""FSS protocol: the class folds of PASCAL-5i / COCO-20i, per-class image lists, episode labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NUM_FOLDS = 4
IGNORE = 255  # VOC's "void" label: boundaries and unlabelled pixels, never scored or learned
CLASS_SPLITS = ("consecutive", "interleaved")


@dataclass(frozen=True)
class ProtocolConfig:
    """How classes split into folds and which images qualify as supports (section `protocol`)."""

    class_split: str = "consecutive"
    min_support_pixels: int = 200

    def __post_init__(self) -> None:
        if self.class_split not in CLASS_SPLITS:
            raise ValueError(f"class_split must be one of {', '.join(CLASS_SPLITS)}")


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
    """For each class, the sorted image indices in which it covers at least `min_pixels` pixels.

    `pixels` is the prepared index's long table (columns image_id, class_id, pixels). Following
    PFENet, an image holds a class for episodes only when the class covers >= 2x32x32 pixels
    on real data (small objects make supports that carry no signal).
    """
    kept = pixels[pixels["pixels"] >= min_pixels]
    return {c: np.sort(kept.loc[kept["class_id"] == c, "image_id"].to_numpy()) for c in classes}


def training_mask(mask: np.ndarray, novel: tuple[int, ...] | list[int]) -> np.ndarray:
    """A training image's label map with the fold's novel classes turned into background (0).

    Novel objects stay in the pixels of training images but no label may reveal them: this is
    the "latent class" the mining branch discovers. IGNORE (255) stays ignored.
    """
    out = mask.copy()
    out[np.isin(mask, novel)] = 0
    return out


def binary_mask(mask: np.ndarray, class_id: int) -> np.ndarray:
    """An episode's label: 1 where `class_id`, 0 elsewhere, IGNORE where the mask ignores."""
    out = (mask == class_id).astype(np.uint8)
    out[mask == IGNORE] = IGNORE
    return out


def sample_test_episodes(class_lists: dict[int, np.ndarray], shots: int, count: int,
                         seed: int) -> pd.DataFrame:  # fmt: skip
    """`count` test episodes, following PFENet's protocol: a query image holding a novel class
    (with at least min_support_pixels of it, as in `class_lists`), the class drawn among those
    it holds, and `shots` distinct support images of the class other than the query.

    -> columns episode, query, class_id, supports (image_ids separated by spaces).
    """
    usable = {c: ids for c, ids in class_lists.items() if len(ids) > shots}
    if not usable:
        raise ValueError(f"no novel class has {shots + 1} images to make an episode")
    holders: dict[int, list[int]] = {}
    for class_id, ids in sorted(usable.items()):
        for image in ids.tolist():
            holders.setdefault(image, []).append(class_id)
    queries = np.array(sorted(holders))
    rng = np.random.default_rng([seed, shots])
    rows = []
    for episode in range(count):
        query = int(queries[rng.integers(len(queries))])
        class_id = holders[query][rng.integers(len(holders[query]))]
        others = usable[class_id][usable[class_id] != query]
        supports = rng.choice(others, shots, replace=False)
        rows.append((episode, query, class_id, " ".join(map(str, supports.tolist()))))
    return pd.DataFrame(rows, columns=["episode", "query", "class_id", "supports"])
