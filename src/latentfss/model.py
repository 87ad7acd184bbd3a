"""The network (sections 3.3.2, 3.4): cosine matching against support prototypes (Eq. 4-5), the
global background prototype (Eq. 6-7) and the mining head on layer3 features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from latentfss.config import ModelConfig
from latentfss.ema import warmed_up
from latentfss.encoder import Encoder, encode_batches
from latentfss.episodes import IGNORE
from latentfss.errors import InputError
from latentfss.fs import read_torch
from latentfss.prototypes import image_embedding, masked_average, upsample
from latentfss.runtime import autocast

if TYPE_CHECKING:
    from latentfss.region_bank import RegionBank


def mask_weights(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Foreground and background area weights on the feature grid of binary episode masks.

    masks (N, H, W) with 1 = class, 0 = background, IGNORE elsewhere -> (N, 2, h, w): the
    fraction of each feature cell the class (the background) covers, as in Eq. 2's pooling.
    """
    both = torch.stack([masks == 1, masks == 0], dim=1).float()  # (N, 2, H, W)
    return F.adaptive_avg_pool2d(both, grid)


def cosine_logits(feats: torch.Tensor, prototypes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 5 before the softmax: sigma * cos(F(x,y), p^c).

    feats (B, C, h, w), prototypes (B, P, C) -> logits (B, P, h, w).
    """
    return sigma * torch.einsum(
        "bchw,bpc->bphw", F.normalize(feats, dim=1), F.normalize(prototypes, dim=2)
    )


class Shots(NamedTuple):
    """Support shots: Eq. 2 foreground and background prototypes and the image embedding."""

    fg: torch.Tensor
    bg: torch.Tensor
    embedding: torch.Tensor

    @staticmethod
    def stack(shots: Sequence[Shots]) -> Shots:
        """K shots of B episodes, Shots of (B, C) each -> Shots of (B, K, C)."""
        return Shots(*(torch.stack(column, dim=1) for column in zip(*shots, strict=True)))


class Output(NamedTuple):
    """What `MatchingNet.forward` returns."""

    logits: torch.Tensor  # (B, 2, h, w) on the query's feature grid
    background: torch.Tensor  # (B, C) the episodes' current background prototypes (Eq. 6)
    mining: torch.Tensor | None  # (M, K + 1, h, w) the mining head's logits


class MiningHead(nn.Sequential):
    """Three convolutions on layer3 features predicting the K+1 pseudo classes (section 4.1):
    conv3x3-BN-ReLU, conv3x3-BN-ReLU, conv1x1."""

    def __init__(self, in_channels: int, classes: int, hidden: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, classes, 1),
        )


class MatchingNet(nn.Module):
    """Encoder + non-parametric matching; the mining head exists only when `cfg.mine`.

    `bg_global` (C,) is Eq. 6's moving average of support background prototypes, a buffer
    saved with the model; `bg_seen` counts the batches it has taken in.
    """

    def __init__(self, encoder: Encoder, cfg: ModelConfig, pseudo_classes: int | None) -> None:
        super().__init__()
        self.encoder, self.cfg = encoder, cfg
        self.head = (
            MiningHead(encoder.channels, pseudo_classes, cfg.head_channels)
            if cfg.mine and pseudo_classes
            else None
        )
        self.register_buffer("bg_global", torch.zeros(encoder.channels))
        self.register_buffer("bg_seen", torch.tensor(0))

    def shots(self, feats: torch.Tensor, masks: torch.Tensor) -> Shots:
        """Each shot's Eq. 2 prototypes and image embedding: feats (N or 1, C, h, w), binary
        masks (N, H, W) -> Shots of (N, C)."""
        weights = mask_weights(masks.to(feats.device), tuple(feats.shape[-2:]))
        fg, bg = masked_average(feats, weights).unbind(dim=1)
        return Shots(fg, bg, image_embedding(feats).expand_as(fg))

    def prototypes(
        self, shots: Shots, bank: RegionBank | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K-shot episodes: Shots of (B, K, C) -> fg, bg (B, C), the means over the K shots; fg
        rectified by Eq. 8-9 with a bank, a K-shot support's embedding the mean of its shots'."""
        fg, bg = shots.fg.mean(dim=1), shots.bg.mean(dim=1)
        if bank is not None:
            fg = bank.rectify(fg, F.normalize(shots.embedding.mean(dim=1), dim=1))
        return fg, bg

    def background(self, current: torch.Tensor) -> torch.Tensor:
        """Eq. 7: w * p_global + (1 - w) * p_current (the current one alone before any update
        or without bg_rectify). current (B, C) -> (B, C)."""
        if not self.cfg.bg_rectify or not bool(self.bg_seen):
            return current
        w = self.cfg.bg_fusion
        return w * self.bg_global.to(current.dtype) + (1 - w) * current

    @torch.no_grad()
    def update_background(self, current: torch.Tensor) -> None:
        """Eq. 6: p_global <- m_t p_global + (1 - m_t) p_current, with the batch's mean current
        background prototype; the first update (t = 0) sets p_global to it, and m_t is m warmed
        up as the weights' EMA (ema.warmed_up(m, t)), so that the first batch's weight after n
        updates, prod_{t=1}^{n-1} m_t, fades on a short schedule as m^(n-1) does on the
        paper's 6000 steps."""
        mean = current.detach().float().mean(dim=0)
        t = int(self.bg_seen)
        m = warmed_up(self.cfg.bg_momentum, t) if t else 0.0
        self.bg_global.mul_(m).add_((1 - m) * mean)
        self.bg_seen += 1

    def match(self, query_feats: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
        """Eq. 4-5 logits (B, 2, h, w) of query features (B, C, h, w) against the support
        prototypes (B, C): channel 0 = background (fused by Eq. 7), 1 = the support class."""
        prototypes = torch.stack([self.background(bg), fg], dim=1)  # (B, 2, C)
        return cosine_logits(query_feats, prototypes, self.cfg.sigma)

    def forward(
        self,
        query: torch.Tensor,
        supports: Sequence[torch.Tensor],
        support_masks: Sequence[torch.Tensor],
        bank: RegionBank | None = None,
        mining: torch.Tensor | None = None,
        micro_batches: int = 1,
    ) -> Output:
        """B episodes: normalised query images (B, 3, H, W) and K shots, each normalised images
        (B, 3, H_k, W_k) with binary masks (B, H_k, W_k); optionally M images for the mining
        head. One encoder pass per distinct image size (bf16 autocast on CUDA), in
        `micro_batches` checkpointed parts (`encode_batches`); the head, on all M images at
        once, and the matching, in float32, see the whole batch."""
        images = [query, *supports] + ([mining] if mining is not None else [])
        with autocast(query.device):
            feats = encode_batches(self.encoder, images, micro_batches)
            mined = self.head(feats[-1]) if mining is not None else None
        shot_feats = feats[1 : 1 + len(supports)]
        shots = [self.shots(f.float(), m) for f, m in zip(shot_feats, support_masks, strict=True)]
        fg, bg = self.prototypes(Shots.stack(shots), bank)
        return Output(self.match(feats[0].float(), fg, bg), bg, mined)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of grid logits (B, P, h, w) upsampled to the labels (B, H, W), 255 ignored
    (Eq. 4 for episodes; L_pseudo for the mining branch)."""
    up = upsample(logits.float(), labels.shape[-2:])
    return F.cross_entropy(up, labels.long(), ignore_index=IGNORE)


def load_model(path) -> tuple[MatchingNet, dict]:
    """A trained model (model.pt, without the mining head) and its checkpoint's metadata."""
    checkpoint = read_torch(path, "run `latentfss train` first")
    if "state_dict" not in checkpoint:
        raise InputError(f"{path}: not a latentfss model (no state_dict)")
    cfg = ModelConfig(**checkpoint["config"]["model"])
    model = MatchingNet(Encoder(checkpoint["arch"]), cfg, pseudo_classes=None)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
