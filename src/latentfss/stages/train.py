"""Episodic training with the mining branch for one fold and shot (rule train; Eq. 1, 4-7).

Each iteration: B episodes of base classes (ground-truth labels) and M images with pseudo masks,
one encoder pass over all of them; L = L_gt + lambda L_pseudo; SGD with the learning rate x0.1
at 1/3 and 2/3 of the iterations; Eq. 6 updates the global background; an EMA of the weights
is the model saved. A resumable state is written every `checkpoint_every` steps and a killed
run continues from it to the same final weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import zarr
from torch.utils.data import DataLoader

from latentfss import code_version
from latentfss.augment import strong_photometric
from latentfss.config import from_params
from latentfss.datasets.index import read_index
from latentfss.datasets.training import EpisodeSamples, PseudoSamples
from latentfss.ema import ModelEMA
from latentfss.encoder import Normalise, load_encoder
from latentfss.episodes import EpisodeSampler, ProtocolConfig, base_classes
from latentfss.errors import InputError
from latentfss.fs import atomic_file
from latentfss.model import MatchingNet, ModelConfig, segmentation_loss
from latentfss.progress import progress
from latentfss.runtime import pick_device, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and batches (config section `train`)."""

    iterations: int = 100  # paper: 6000
    batch_episodes: int = 4  # B support-query pairs per iteration (paper: 4)
    batch_pseudo: int = 8  # M extra images with pseudo masks per iteration (paper: 32)
    crop: int = 96  # paper: 473
    scale: tuple[float, float] = (0.75, 1.5)  # random rescale range before the crop
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lambda_pseudo: float = 1.0  # lambda in Eq. 1
    ema_decay: float = 0.99  # paper-length runs: 0.999
    log_every: int = 10
    checkpoint_every: int = 50
    workers: int = 1

    def __post_init__(self) -> None:
        if min(self.iterations, self.batch_episodes, self.crop, self.log_every,
               self.checkpoint_every) < 1 or self.batch_pseudo < 0 or self.workers < 0:  # fmt: skip
            raise ValueError("iterations, batches, crop and intervals must be positive")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be [low, high] with 0 < low <= high")


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--encoder-init", required=True, type=Path, help="encoder_init.pt")
    parser.add_argument("--pseudo-masks", required=True, type=Path, help="fold's pseudo_masks.zarr")
    parser.add_argument("--remain", type=Path, help="Remain's pseudo_masks.zarr, mined too")
    parser.add_argument("--fold", required=True, type=int, choices=range(4))
    parser.add_argument("--shot", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="model.pt to write")
    parser.add_argument("--log-csv", required=True, type=Path, help="train.csv to write")
    parser.add_argument("--params", default="", help="config section `train` as JSON")
    parser.add_argument("--model", default="", help="config section `model` as JSON")
    parser.add_argument("--protocol", default="", help="config section `protocol` as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """x0.1 at 1/3 and 2/3 of the iterations (paper: 1e-3, /10 every 2000 of 6000)."""
    return cfg.lr * 0.1 ** sum(step >= cfg.iterations * f // 3 for f in (1, 2))


def batches(dataset, batch_size: int, start: int, workers: int, pin: bool) -> Iterator[dict]:
    """Endless batches from sample number `start` on (the samples of earlier steps are skipped)."""
    indices = range(start, 2**62)
    return iter(DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                           pin_memory=pin, persistent_workers=workers > 0))  # fmt: skip


def train(args: argparse.Namespace, cfg: TrainConfig, model_cfg: ModelConfig,
          protocol: ProtocolConfig, stop_at: int | None = None) -> None:  # fmt: skip
    """The training loop; `stop_at` ends it early after that step (tests: a killed run)."""
    torch.set_num_threads(args.threads)
    device = pick_device()
    seed_everything(args.seed)
    index = read_index(args.index)
    num_classes, split = index.num_classes, protocol.class_split
    pixels = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    try:
        sampler = EpisodeSampler.from_pixels(pixels, base_classes(args.fold, num_classes, split),
                                             protocol.min_support_pixels, args.shot)  # fmt: skip
    except ValueError as e:
        raise InputError(f"train fold {args.fold}: {e}") from None
    episodes = EpisodeSamples(index.images, sampler, num_classes, cfg.crop, cfg.scale, args.seed)
    stream = [args.pseudo_masks] + ([args.remain] if args.remain else [])
    pseudo = PseudoSamples(stream, index.images, cfg.crop, cfg.scale, args.seed)
    pseudo_classes = zarr.open_group(str(args.pseudo_masks), mode="r").attrs["K"] + 1
    model = MatchingNet(load_encoder(args.encoder_init), model_cfg, pseudo_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    for module in model.encoder.modules():  # frozen BatchNorm: statistics and affine
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(False)
    ema = ModelEMA(model, cfg.ema_decay)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)  # fmt: skip
    state_path = args.out.with_name("train_state.pt")
    start, rows = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start, rows = state["step"], state["log"]
        log.info("resuming from step %d (%s)", start, state_path)
    mine = model.head is not None and cfg.batch_pseudo > 0 and cfg.lambda_pseudo > 0
    pin, workers = device.type == "cuda", cfg.workers
    episode_batches = batches(
        episodes, cfg.batch_episodes, start * cfg.batch_episodes, workers, pin
    )
    pseudo_batches = (batches(pseudo, cfg.batch_pseudo, start * cfg.batch_pseudo, workers, pin)
                      if mine else None)  # fmt: skip
    normalise = Normalise(device)
    window = torch.zeros(3, device=device)  # loss_gt, loss_pseudo sums and steps since the log
    model.train()
    bar = progress(range(start, cfg.iterations), cfg.iterations - start, f"train fold{args.fold}")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        episode, mining = next(episode_batches), None
        if mine:
            extra = next(pseudo_batches)
            generator = torch.Generator(device).manual_seed(args.seed * 1_000_003 + step)
            mining = normalise(strong_photometric(normalise.unit(extra["image"]), generator))
        out = model(normalise(normalise.unit(episode["query"])),
                    normalise(normalise.unit(episode["supports"])).unbind(1),
                    episode["support_masks"].to(device, non_blocking=True).unbind(1),
                    mining=mining)  # fmt: skip
        loss_gt = segmentation_loss(out.logits, episode["query_mask"].to(device))
        loss_pseudo = (segmentation_loss(out.mining, extra["mask"].to(device)) if mine
                       else torch.zeros((), device=device))  # fmt: skip
        loss = loss_gt + cfg.lambda_pseudo * loss_pseudo
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if model_cfg.bg_rectify:
            model.update_background(out.background)
        ema.update(model, step)
        window += torch.stack([loss_gt.detach().float(), loss_pseudo.detach().float(),
                               torch.ones((), device=device)])  # fmt: skip
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            gt, pseudo, steps = window.tolist()  # the window's mean losses, not one batch's
            rows.append({"step": done, "loss_gt": round(gt / steps, 5),
                         "loss_pseudo": round(pseudo / steps, 5),
                         "lr": optimizer.param_groups[0]["lr"]})  # fmt: skip
            window.zero_()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(
                    gt=rows[-1]["loss_gt"], pseudo=rows[-1]["loss_pseudo"], refresh=False
                )
        if done % cfg.checkpoint_every == 0 and done < cfg.iterations:
            state = {"model": model.state_dict(), "ema": ema.model.state_dict(),
                     "optimizer": optimizer.state_dict(), "step": done, "log": rows}  # fmt: skip
            with atomic_file(state_path) as tmp:
                torch.save(state, tmp)
        if stop_at is not None and done == stop_at:
            return
    save_model(args, ema.model, cfg, model_cfg, protocol, rows)
    state_path.unlink(missing_ok=True)


def save_model(args, model: MatchingNet, cfg: TrainConfig, model_cfg: ModelConfig,
               protocol: ProtocolConfig, rows: list[dict]) -> None:  # fmt: skip
    """model.pt: the EMA weights without the mining head (dropped at test time), the global
    background buffer, the resolved config, the step and the code version; and train.csv."""
    weights = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}
    checkpoint = {
        "state_dict": weights, "arch": model.encoder.arch, "fold": args.fold, "shot": args.shot,
        "step": cfg.iterations, "code_version": code_version(), "seed": args.seed,
        "config": {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg),
                   "protocol": dataclasses.asdict(protocol),
                   "mining": {"remain": args.remain is not None}},
    }  # fmt: skip
    with atomic_file(args.out) as tmp:
        torch.save(checkpoint, tmp)
    with atomic_file(args.log_csv) as tmp:
        pd.DataFrame(rows, columns=["step", "loss_gt", "loss_pseudo", "lr"]).to_csv(
            tmp, index=False
        )


def run(args: argparse.Namespace) -> None:
    cfg = from_params(TrainConfig, args.params, "train")
    model_cfg = from_params(ModelConfig, args.model, "model")
    protocol = from_params(ProtocolConfig, args.protocol, "protocol")
    if args.shot < 1:
        raise InputError(f"--shot must be at least 1, got {args.shot}")
    train(args, cfg, model_cfg, protocol)
    log.info("fold %d, %d-shot: trained %d iterations -> %s", args.fold, args.shot,
             cfg.iterations, args.out)  # fmt: skip
