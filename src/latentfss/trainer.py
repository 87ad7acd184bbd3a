"""Episodic training with the mining branch for one fold and shot (Eq. 1, 4-7), callable from
Python: `train(TrainJob(...), TrainConfig(), ModelConfig(), ProtocolConfig())`.

Each iteration: B episodes of base classes (ground-truth labels) and M images with pseudo masks,
one encoder pass over all of them; L = L_gt + lambda L_pseudo; SGD with the learning rate x0.1
at 1/3 and 2/3 of the iterations; Eq. 6 updates the global background; an EMA of the weights
is the model saved. A resumable state is written every `checkpoint_every` steps and a stopped
or killed run continues from it to the same final weights (latentfss.resume).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from latentfss import code_version, store
from latentfss.augment import strong_photometric
from latentfss.config import ModelConfig, ProtocolConfig, TrainConfig
from latentfss.datasets.index import read_index
from latentfss.datasets.training import EpisodeSamples, PseudoSamples
from latentfss.ema import ModelEMA
from latentfss.encoder import Normalise, load_encoder
from latentfss.episodes import EpisodeSampler, base_classes
from latentfss.errors import InputError, Stopped
from latentfss.fs import atomic_file, save_torch
from latentfss.machine import machine
from latentfss.model import MatchingNet, segmentation_loss
from latentfss.progress import progress
from latentfss.resume import ResumeState, ignore_stop_signals, stop_requests
from latentfss.runtime import pick_device, seed_everything, set_threads


@dataclass(frozen=True)
class TrainJob:
    """What one training run reads and writes (one fold and shot), and where it runs."""

    index: Path  # the prepared dataset index folder
    encoder_init: Path  # encoder_init.pt
    pseudo_masks: Path  # the fold's pseudo masks (the train set's)
    fold: int
    shot: int
    out: Path  # model.pt to write (train_state.pt beside it while it runs)
    log_csv: Path  # train.csv to write
    remain: Path | None = None  # Remain's pseudo masks, mined too
    seed: int = 0  # the training seed
    threads: int = 1  # CPU cores the run may use
    device: str = "auto"


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """x0.1 at 1/3 and 2/3 of the iterations (paper: 1e-3, /10 every 2000 of 6000)."""
    return cfg.lr * 0.1 ** sum(step >= cfg.iterations * f // 3 for f in (1, 2))


def batches(dataset, batch_size: int, start: int, workers: int, pin: bool) -> Iterator[dict]:
    """Endless batches from sample number `start` on (the samples of earlier steps are skipped)."""
    indices = range(start, 2**62)
    return iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=indices,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            worker_init_fn=ignore_stop_signals,
        )
    )


def fold_data(
    job: TrainJob, cfg: TrainConfig, protocol: ProtocolConfig
) -> tuple[EpisodeSamples, PseudoSamples]:
    """The fold's base-class episodes and its stream of pseudo-labelled images."""
    index = read_index(job.index)
    num_classes, split = index.num_classes, protocol.class_split
    pixels = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    try:
        sampler = EpisodeSampler.from_pixels(
            pixels,
            base_classes(job.fold, num_classes, split),
            protocol.min_support_pixels,
            job.shot,
        )
    except ValueError as e:
        raise InputError(f"train fold {job.fold}: {e}") from None
    episodes = EpisodeSamples(index.images, sampler, num_classes, cfg.crop, cfg.scale, job.seed)
    stream = [job.pseudo_masks] + ([job.remain] if job.remain else [])
    return episodes, PseudoSamples(stream, index.images, cfg.crop, cfg.scale, job.seed)


def new_model(
    job: TrainJob, cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device
) -> tuple[MatchingNet, ModelEMA, torch.optim.Optimizer]:
    """The network from encoder_init.pt with a mining head of K + 1 classes, BatchNorm frozen
    in the encoder (statistics and affine), its EMA and the SGD optimizer."""
    pseudo_classes = store.open_group(job.pseudo_masks, "write-pseudo-masks").attrs["K"] + 1
    model = MatchingNet(load_encoder(job.encoder_init), model_cfg, pseudo_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = sgd(model, cfg)  # BatchNorm frozen before the EMA copies the model
    return model, ModelEMA(model, cfg.ema_decay), optimizer


def sgd(model: MatchingNet, cfg: TrainConfig) -> torch.optim.SGD:
    """Freeze the encoder's BatchNorm (statistics and affine); SGD over the rest."""
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_step(
    model: MatchingNet,
    episode: dict,
    mining: tuple | None,
    optimizer: torch.optim.Optimizer,
    normalise: Normalise,
    lambda_pseudo: float,
    micro_batches: int = 1,
) -> torch.Tensor:
    """One SGD step of Eq. 1 on B episodes and, when mining, M (augmented) images with their
    pseudo masks; Eq. 6 moves the global background. -> (loss_gt, loss_pseudo), detached.
    `micro_batches` bounds the encoder's activation memory; the step is the same."""
    device = normalise.device
    out = model(
        normalise(normalise.unit(episode["query"])),
        normalise(normalise.unit(episode["supports"])).unbind(1),
        episode["support_masks"].to(device, non_blocking=True).unbind(1),
        mining=None if mining is None else mining[0],
        micro_batches=micro_batches,
    )
    loss_gt = segmentation_loss(out.logits, episode["query_mask"].to(device))
    loss_pseudo = (
        segmentation_loss(out.mining, mining[1].to(device))
        if mining is not None
        else torch.zeros((), device=device)
    )
    optimizer.zero_grad(set_to_none=True)
    (loss_gt + lambda_pseudo * loss_pseudo).backward()
    optimizer.step()
    if model.cfg.bg_rectify:
        model.update_background(out.background)
    return torch.stack([loss_gt.detach().float(), loss_pseudo.detach().float()])


class LossLog:
    """train.csv's rows: the mean losses over each window of `every` steps, and the lr."""

    def __init__(self, every: int, last: int, rows: list[dict], device: torch.device) -> None:
        self.every, self.last, self.rows = every, last, rows
        self.window = torch.zeros(3, device=device)  # loss sums and steps since the last row

    def add(self, step: int, losses: torch.Tensor, lr: float) -> bool:
        """Count step's losses; True when a row was written."""
        self.window += torch.cat([losses, losses.new_ones(1)])
        if step % self.every and step != self.last:
            return False
        gt, pseudo, steps = self.window.tolist()
        self.rows.append(
            {
                "step": step,
                "loss_gt": round(gt / steps, 5),
                "loss_pseudo": round(pseudo / steps, 5),
                "lr": lr,
            }
        )
        self.window.zero_()
        return True


def train(
    job: TrainJob,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    protocol: ProtocolConfig,
    stop_at: int | None = None,
) -> None:
    """The training loop; `stop_at` ends it early after that step (tests: a killed run)."""
    mine = model_cfg.mine and cfg.batch_pseudo > 0 and cfg.lambda_pseudo > 0
    set_threads(job.threads, cfg.workers * (2 if mine else 1))  # the loaders share the cores
    device = pick_device(job.device)
    seed_everything(job.seed)
    episodes, pseudo = fold_data(job, cfg, protocol)
    model, ema, optimizer = new_model(job, cfg, model_cfg, device)
    state, rows = ResumeState.of(job, cfg, model_cfg, protocol), []
    losses = LossLog(cfg.log_every, cfg.iterations, rows, device)
    start = state.restore(model, ema, optimizer, losses, device)
    pin, normalise = device.type == "cuda", Normalise(device)
    episode_batches = batches(
        episodes, cfg.batch_episodes, start * cfg.batch_episodes, cfg.workers, pin
    )
    pseudo_batches = (
        batches(pseudo, cfg.batch_pseudo, start * cfg.batch_pseudo, cfg.workers, pin)
        if mine
        else None
    )
    model.train()
    bar = progress(range(start, cfg.iterations), cfg.iterations - start, f"train fold{job.fold}")
    with stop_requests() as stop:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            episode, mining = next(episode_batches), None
            if mine:
                extra = next(pseudo_batches)
                generator = torch.Generator(device).manual_seed(job.seed * 1_000_003 + step)
                mining = (
                    normalise(strong_photometric(normalise.unit(extra["image"]), generator)),
                    extra["mask"],
                )
            step_losses = train_step(
                model, episode, mining, optimizer, normalise, cfg.lambda_pseudo, cfg.micro_batches
            )
            ema.update(model, step)
            if losses.add(step + 1, step_losses, learning_rate(cfg, step)):
                bar.set_postfix(
                    gt=rows[-1]["loss_gt"], pseudo=rows[-1]["loss_pseudo"], refresh=False
                )
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.iterations:
                state.save(model, ema, optimizer, step + 1, losses)
            if step + 1 == stop_at:
                return
            if stop and step + 1 < cfg.iterations:
                state.save(model, ema, optimizer, step + 1, losses)
                name = signal.Signals(stop[0]).name
                raise Stopped(
                    stop[0],
                    f"{name} at step {step + 1} of {cfg.iterations}: its state is in "
                    f"{state.path}; run the job again to resume from there",
                )
    save_model(job, ema.model, cfg, model_cfg, protocol, rows)
    state.path.unlink(missing_ok=True)


def save_model(
    job: TrainJob,
    model: MatchingNet,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    protocol: ProtocolConfig,
    rows: list[dict],
) -> None:
    """model.pt: the EMA weights without the mining head (dropped at test time), the global
    background buffer, the resolved config, the step, the code version and the machine; and
    train.csv."""
    weights = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}
    checkpoint = {
        "state_dict": weights,
        "arch": model.encoder.arch,
        "fold": job.fold,
        "shot": job.shot,
        "step": cfg.iterations,
        "code_version": code_version(),
        "seed": job.seed,
        "machine": machine(),
        "config": {
            "train": dataclasses.asdict(cfg),
            "model": dataclasses.asdict(model_cfg),
            "protocol": dataclasses.asdict(protocol),
            "mining": {"remain": job.remain is not None},
        },
    }
    save_torch(checkpoint, job.out)
    with atomic_file(job.log_csv) as tmp:
        pd.DataFrame(rows, columns=["step", "loss_gt", "loss_pseudo", "lr"]).to_csv(
            tmp, index=False
        )
