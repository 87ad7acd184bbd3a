"""Masked average pooling (Eq. 2) and nearest-representative labelling (Eq. 3)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from latentfss.episodes import IGNORE


def area_weights(mask: np.ndarray, labels: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(P, h, w) fraction of each feature cell covered by each label in `labels`.

    The mask (H, W) at its original resolution is brought to the feature grid by area
    averaging (adaptive average pooling of each label's indicator), so a cell that an object
    half covers counts half; IGNORE pixels belong to no label.
    """
    indicators = torch.from_numpy(mask[None] == labels[:, None, None])  # (P, H, W) bool
    return F.adaptive_avg_pool2d(indicators[None].float(), grid)[0]


def masked_average(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with soft masks: p_c = sum_xy w_c(x,y) F(x,y) / sum_xy w_c(x,y), the one place it
    is computed (the offline annotation's prototypes, the support shots' in the network).

    feats (N, C, h, w), weights (N, P, h, w) -> (N, P, C); a label with zero weight gets a zero
    vector.
    """
    sums = torch.einsum("nchw,nphw->npc", feats, weights)
    return sums / weights.sum(dim=(2, 3)).clamp_min(1e-6)[..., None]


def image_embedding(feats: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) layer3 features -> (B, C) L2-normalised average pools: the embedding by
    which rectification (section 3.4) finds a support's relevant train images."""
    return F.normalize(feats.float().mean(dim=(2, 3)), dim=1)


def present_labels(mask: np.ndarray) -> np.ndarray:
    """Sorted labels present in a mask, IGNORE excluded."""
    labels = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return labels[labels != IGNORE]


def region_prototypes(
    feats: torch.Tensor, mask: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2 for each of `labels` in a class-index mask: feats (C, h, w) on the CPU, mask (H, W)
    -> prototypes (P, C), each label's mass on the feature grid (P,) and its pixels (P,)."""
    weights = area_weights(mask, labels, tuple(feats.shape[1:]))  # (P, h, w)
    pixels = np.bincount(mask.ravel(), minlength=256)[labels]
    prototypes = masked_average(feats[None], weights[None])[0]
    return prototypes.numpy(), weights.sum(dim=(1, 2)).numpy(), pixels


def nearest_representative(
    feats: torch.Tensor, reps: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Eq. 3: M(x,y) = argmax_k cos(F(x,y), p_k), computed on the feature grid.

    feats (B, C, h, w), reps (K+1, C) -> (B, H, W) int64 labels. With `size`, the cosine maps
    are upsampled bilinearly to (H, W) before the argmax, so labels follow the image's pixels.
    """
    cos = torch.einsum("bchw,kc->bkhw", F.normalize(feats, dim=1), F.normalize(reps, dim=1))
    return (cos if size is None else upsample(cos, size)).argmax(dim=1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Feature-grid maps (B, P, h, w) -> (B, P, H, W), bilinear with align_corners=True, as the
    authors' code and PFENet upsample logits. The encoder's cell i is centred on pixel 8i
    (each of its three stride-2 layers centres output j on input 2j), so this is exact for
    sides 8(h - 1) + 1, such as their 473 (h = 60), and within 7 pixels for any other."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
