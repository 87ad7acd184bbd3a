"""mIoU and FB-IoU accumulated over episodes, as PFENet computes them (section 4.1)."""

from __future__ import annotations

import numpy as np

from latentfss.episodes import IGNORE


class IoUMeter:
    """Class-wise mIoU: intersection and union of each novel class summed over all of its
    episodes, IoU per class, mean over the fold's classes. FB-IoU: background and foreground
    intersection and union summed over all episodes, IoU of each, mean of the two. IGNORE
    pixels count for nothing."""

    def __init__(self, class_ids: tuple[int, ...] | list[int]) -> None:
        self.class_ids = tuple(class_ids)
        self.inter = dict.fromkeys(self.class_ids, 0)
        self.union = dict.fromkeys(self.class_ids, 0)
        self.fb_inter, self.fb_union = np.zeros(2, np.int64), np.zeros(2, np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray, class_id: int) -> tuple[int, int]:
        """pred (H, W) in {0, 1}; label (H, W) in {0, 1, IGNORE}: one episode's query.
        -> its foreground (intersection, union), what the class's IoU sums."""
        valid = label != IGNORE
        for value in (0, 1):
            p, t = (pred == value) & valid, (label == value) & valid
            inter, union = int((p & t).sum()), int((p | t).sum())
            self.fb_inter[value] += inter
            self.fb_union[value] += union
            if value == 1:
                self.inter[class_id] += inter
                self.union[class_id] += union
        return inter, union

    def per_class(self) -> dict[int, float]:
        return {
            c: self.inter[c] / self.union[c] if self.union[c] else float("nan")
            for c in self.class_ids
        }

    def miou(self) -> float:
        return float(np.nanmean(list(self.per_class().values())))

    def fbiou(self) -> float:
        return float(np.mean(self.fb_inter / np.maximum(self.fb_union, 1)))
