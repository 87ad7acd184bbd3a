"""Masked average pooling (Eq. 2) and nearest-representative labelling (Eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentfss.episodes import IGNORE


def area_weights(mask: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(P, h, w) fraction of each feature cell covered by each label in `labels`, on the mask's
    device.

    The mask (H, W) at its original resolution is brought to the feature grid by area
    averaging (adaptive average pooling of each label's indicator), so a cell that an object
    half covers counts half; IGNORE pixels belong to no label.
    """
    indicators = mask[None] == labels[:, None, None]  # (P, H, W) bool
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


def present_labels(
    mask: torch.Tensor, with_background: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels present in a uint8 mask, sorted, IGNORE excluded (and 0 even where absent,
    `with_background`), and their pixel counts."""
    counts = torch.bincount(mask.flatten(), minlength=256)
    present = counts > 0
    present[0] |= with_background
    present[IGNORE] = False
    labels = torch.nonzero(present).flatten()
    return labels, counts[labels]


def region_prototypes(
    feats: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2 for each of `labels` in a class-index mask, on the features' device: feats
    (C, h, w), mask (H, W) -> prototypes (P, C) and each label's mass on the feature grid (P,)."""
    weights = area_weights(mask, labels, tuple(feats.shape[1:]))  # (P, h, w)
    return masked_average(feats[None], weights[None])[0], weights.sum(dim=(1, 2))


def nearest_representative(
    feats: torch.Tensor, reps: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Eq. 3: M(x,y) = argmax_k cos(F(x,y), p_k), computed on the feature grid.

    feats (B, C, h, w), reps (K+1, C) -> (B, H, W) int64 labels. With `size`, the cosine maps
    are upsampled bilinearly to (H, W) before the argmax, so labels follow the image's pixels.
    """
    b, c, h, w = feats.shape
    dots = F.normalize(reps, dim=1) @ feats.reshape(b, c, h * w)  # (B, K+1, hw)
    norms = torch.linalg.vector_norm(feats, dim=1).clamp_min(1e-12)  # F.normalize's epsilon
    cos = (dots / norms.reshape(b, 1, h * w)).reshape(b, -1, h, w)
    cos = cos if size is None else upsample(cos, size)
    # the same values, the label axis innermost: an argmax across a strided axis is 5-10x
    # slower on the CPU than the upsampling itself
    return cos.contiguous(memory_format=torch.channels_last).argmax(dim=1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Feature-grid maps (B, P, h, w) -> (B, P, H, W), bilinear with align_corners=True, as the
    authors' code and PFENet upsample logits. The encoder's cell i is centred on pixel 8i
    (each of its three stride-2 layers centres output j on input 2j), so this is exact for
    sides 8(h - 1) + 1, such as their 473 (h = 60), and within 7 pixels for any other."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
