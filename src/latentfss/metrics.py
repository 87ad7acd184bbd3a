"""mIoU and FB-IoU accumulated over episodes, as PFENet computes them (section 4.1)."""

from __future__ import annotations

import numpy as np
import torch

from latentfss.episodes import IGNORE


def iou_counts(pred: torch.Tensor, label: torch.Tensor, target=1) -> torch.Tensor:
    """Predictions (B, H, W) in {0, 1} against label maps (B or 1, H, W) on their device, whose
    pixels equal to `target` (1 for a binary label, or each episode's class, (B, 1, 1)) are the
    foreground, IGNORE pixels nothing and every other pixel the background -> (B, 2, 2) int64:
    for background (0) and foreground (1), each episode's intersection and union."""
    valid = label != IGNORE
    truth, predicted = label == target, (pred == 1) & valid  # the truth is valid: not IGNORE
    sums = (m.flatten(1).sum(1) for m in (valid, truth, predicted, predicted & truth))
    valid, truth, predicted, both = torch.broadcast_tensors(*sums)
    union = predicted + truth - both
    return torch.stack([valid - union, valid - both, both, union], dim=-1).view(-1, 2, 2)


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

    def update(self, pred, label, class_id: int) -> None:
        """pred (H, W) in {0, 1}; label (H, W) in {0, 1, IGNORE}: one episode's query, arrays
        or tensors."""
        pred, label = (torch.as_tensor(x)[None] for x in (pred, label))
        self.add(iou_counts(pred, label).cpu().numpy(), np.array([class_id]))

    def add(self, counts: np.ndarray, class_ids: np.ndarray) -> None:
        """Episodes' `iou_counts` (N, 2, 2) and their classes (N,)."""
        self.fb_inter += counts[:, :, 0].sum(axis=0)
        self.fb_union += counts[:, :, 1].sum(axis=0)
        for c in np.unique(class_ids).tolist():
            inter, union = counts[class_ids == c, 1].sum(axis=0).tolist()
            self.inter[c] += inter
            self.union[c] += union

    def per_class(self) -> dict[int, float]:
        return {
            c: self.inter[c] / self.union[c] if self.union[c] else float("nan")
            for c in self.class_ids
        }

    def miou(self) -> float:
        return float(np.nanmean(list(self.per_class().values())))

    def fbiou(self) -> float:
        return float(np.mean(self.fb_inter / np.maximum(self.fb_union, 1)))
