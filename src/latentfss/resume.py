"""Resuming a training run: the state a stopped run goes on from (train_state.pt, used only by
a run of the same origin), and the signals that ask it to stop after its step and save it
(SLURM's SIGTERM ahead of a time limit and at a preemption, Ctrl-C, SIGUSR1)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentfss import code_version
from latentfss.config import ModelConfig, ProtocolConfig, TrainConfig
from latentfss.errors import InputError
from latentfss.fs import identity, read_torch, save_torch

if TYPE_CHECKING:
    from latentfss.ema import ModelEMA
    from latentfss.model import MatchingNet
    from latentfss.trainer import LossLog, TrainJob

log = logging.getLogger(__name__)

# what asks training to stop after its step and save its state: SLURM's SIGTERM ahead of a time
# limit (the slurm profile's --signal) and at a preemption, Ctrl-C, and SIGUSR1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """While open, STOP_SIGNALS are noted (the list of those received), not obeyed; a second
    Ctrl-C interrupts at once."""
    received: list[int] = []

    def note(signum: int, frame) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, note) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker: int) -> None:
    """Loader workers leave the signals to the training process (SLURM signals them all)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@dataclass
class ResumeState:
    """train_state.pt: where a killed run goes on from, and what it was started from (`origin`:
    the config sections, fold, shot and seed, the identity of each input, the code version).
    A state is used only by a run of the same origin."""

    path: Path
    origin: dict

    @classmethod
    def of(
        cls, job: TrainJob, cfg: TrainConfig, model_cfg: ModelConfig, protocol: ProtocolConfig
    ) -> ResumeState:
        inputs = {
            "index": job.index,
            "encoder_init": job.encoder_init,
            "pseudo_masks": job.pseudo_masks,
            "remain": job.remain,
        }
        origin = {
            "train": dataclasses.asdict(cfg),
            "model": dataclasses.asdict(model_cfg),
            "protocol": dataclasses.asdict(protocol),
            "fold": job.fold,
            "shot": job.shot,
            "seed": job.seed,
            "inputs": {k: path and identity(path) for k, path in inputs.items()},
            "code_version": code_version(),
        }
        return cls(job.out.with_name("train_state.pt"), origin)

    def save(
        self, model: MatchingNet, ema: ModelEMA, optimizer, step: int, losses: LossLog
    ) -> None:
        state = {
            "origin": self.origin,
            "model": model.state_dict(),
            "step": step,
            "log": losses.rows,
            "window": losses.window.cpu(),  # a stop between two rows keeps its steps' losses
            "ema": ema.model.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        save_torch(state, self.path)

    def restore(
        self, model: MatchingNet, ema: ModelEMA, optimizer, losses: LossLog, device: torch.device
    ) -> int:
        """The step to go on from: the saved one, with the model, EMA, optimizer and the loss
        log loaded, if a state of this origin is there; else 0, saying why in one line."""
        if not self.path.is_file():
            return 0
        try:
            state = read_torch(self.path, "", map_location=device)
            why = self._mismatch(state, model)
            if why is None:
                # every part read before any is loaded: a state that lacks one loads nothing
                parts = [state[k] for k in ("model", "ema", "optimizer", "log", "window")]
                model_state, ema_state, optimizer_state, rows, window = parts
                model.load_state_dict(model_state)
                ema.model.load_state_dict(ema_state)
                optimizer.load_state_dict(optimizer_state)
                losses.rows[:] = rows
                losses.window.copy_(window)
                log.info("resuming from step %d (%s)", state["step"], self.path)
                return state["step"]
        except (InputError, KeyError, AttributeError, TypeError) as e:
            why = f"it cannot be read ({e})"
        log.warning("%s: not resumed, %s; training from step 0", self.path, why)
        return 0

    def _mismatch(self, state: dict, model: MatchingNet) -> str | None:
        """Why a saved state may not be used by this run, or None."""
        differ = [key for key in self.origin if state["origin"].get(key) != self.origin[key]]
        if differ:
            return f"it was started from another {', '.join(differ)}"
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state["model"].items()} != shapes:
            return "it holds another network"
        return None
