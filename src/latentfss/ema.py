"""Exponential moving average of the parameters (mean teacher, Tarvainen & Valpola 2017): the
model that is evaluated (paper section 3.3.2, Table 6)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def warmed_up(decay: float, step: int) -> float:
    """The mean teacher's ramp-up, min(decay, (1 + t) / (10 + t)) at step t = 0, 1, ...: an
    average over about the last (10 + t) / 9 steps until that reaches 1 / (1 - decay), so a
    run of any length forgets its first steps (the weights' EMA, Eq. 6's global background)."""
    return min(decay, (1 + step) / (10 + step))


class ModelEMA:
    """ema <- d * ema + (1 - d) * param after each step, d = warmed_up(decay, t) (so early
    steps are not dominated by the initial weights); buffers (BatchNorm statistics, the global
    background prototype) are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay = copy.deepcopy(model).eval(), decay
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = warmed_up(self.decay, step)
        for ema, param in zip(self.model.parameters(), model.parameters(), strict=True):
            ema.lerp_(param.detach(), 1 - d)
        for ema, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema.copy_(buffer)
