"""Test episodes of one fold and shot with rectified prototypes (rule evaluate; 4.1, Eq. 7-9).

For every seed: an episode list (written first, so any run can be replayed with --episodes),
then predictions from the images as `evaluate.resize` presents them to the network, upsampled
to each query label's own resolution and scored there by class-wise mIoU and FB-IoU over the
fold's novel classes. The mean over seeds is the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from latentfss.config import from_params
from latentfss.datasets.evaluation import RESIZE_MODES, TestEpisodes, collate
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise, encode_each
from latentfss.episodes import EpisodeSampler, ProtocolConfig, novel_classes, sample_test_episodes
from latentfss.errors import InputError
from latentfss.fs import atomic_file
from latentfss.metrics import IoUMeter
from latentfss.model import MatchingNet, cosine_logits, load_model
from latentfss.progress import progress
from latentfss.prototypes import upsample
from latentfss.region_bank import RegionBank, image_embedding, load_bank
from latentfss.runtime import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """The test protocol and inference settings (config section `evaluate`)."""

    episodes: int = 100  # per seed (paper: 1000 PASCAL, 4000 COCO)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    resize: str = "none"  # what the network sees: none | pfenet | square (network_input)
    input_size: int = 128  # pfenet and square: the side of the network's input
    batch_size: int = 16  # episodes per forward pass
    fg_rectify: bool = True  # Eq. 8-9 (paper Table 3, "FG")
    top_n: int = 4  # N relevant train images
    beta: float = 0.2  # rectification weight
    workers: int = 1

    def __post_init__(self) -> None:
        if min(self.episodes, self.input_size, self.batch_size, self.top_n) < 1 or not self.seeds:
            raise ValueError("episodes, input_size, batch_size, top_n and seeds must be positive")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}")


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--bank", type=Path, help="region bank dir (needed for fg_rectify)")
    parser.add_argument("--fold", required=True, type=int, choices=range(4))
    parser.add_argument("--shot", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="eval directory to write")
    parser.add_argument("--episodes", type=Path, help="replay this episode list instead")
    parser.add_argument("--params", default="", help="config section `evaluate` as JSON")
    parser.add_argument("--protocol", default="", help="config section `protocol` as JSON")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")


def at_label(logits: torch.Tensor, input_size: tuple[int, int], covered: tuple[int, int],
             label_size: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """A query's grid logits (1, P, h, w) -> (P, H, W) at its label's resolution: upsampled so
    that the part of the (h_in, w_in) input the image covers spans (H, W), padding cut off."""
    (height, width), (covered_h, covered_w) = label_size, covered
    size = (round(input_size[0] * height / covered_h), round(input_size[1] * width / covered_w))
    return upsample(logits, size)[0, :, :height, :width]


@torch.inference_mode()
def predict(model: MatchingNet, episodes: list[dict], normalise: Normalise,
            bank: RegionBank | None, cfg: EvaluateConfig) -> list[np.ndarray]:  # fmt: skip
    """Binary predictions (H, W) of a batch of episodes (`TestEpisodes` items), each at its
    query's original `size`. Each image is encoded as if alone, so a batch predicts what one
    episode at a time does."""
    b = len(episodes)
    images = [e["query"] for e in episodes] + [s for e in episodes for s in e["supports"]]
    feats = encode_each(model.encoder, images, normalise)
    shots = iter(feats[b:])
    fg, bg, embeddings = [], [], []
    for episode in episodes:
        support_feats = [next(shots) for _ in episode["supports"]]
        episode_fg, episode_bg = model.shot_prototypes(support_feats, episode["support_masks"])
        fg.append(episode_fg)
        bg.append(episode_bg)
        embeddings.append(torch.cat([image_embedding(f[None]) for f in support_feats]).mean(0))
    fg, bg = torch.stack(fg), torch.stack(bg)  # (B, C)
    if bank is not None:  # Eq. 8-9; a K-shot support's embedding is the mean of its shots'
        fg = bank.rectify(fg, F.normalize(torch.stack(embeddings), dim=1), cfg.top_n, cfg.beta)
    prototypes = torch.stack([model.background(bg), fg], dim=1)  # (B, 2, C), Eq. 7 background
    return [at_label(cosine_logits(feats[i][None], prototypes[i : i + 1], model.cfg.sigma),
                     e["query"].shape[-2:], e["covered"], e["size"]).argmax(0).cpu().numpy()
            for i, e in enumerate(episodes)]  # fmt: skip


def predictions(model: MatchingNet, episodes: pd.DataFrame, index, cfg: EvaluateConfig, bank,
                device: torch.device) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:  # fmt: skip
    """(prediction, label, class_id) of every episode of a list, in order."""
    data = TestEpisodes(episodes, index.images, index.num_classes, cfg.resize, cfg.input_size)
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")  # fmt: skip
    normalise = Normalise(device)
    for batch in progress(loader, len(loader), "evaluate"):
        preds = predict(model, batch, normalise, bank, cfg)
        for pred, episode in zip(preds, batch, strict=True):
            yield pred, episode["label"].numpy(), episode["class_id"]


def evaluate_episodes(model, episodes: pd.DataFrame, index, cfg: EvaluateConfig, bank,
                      device, novel) -> tuple[IoUMeter, float]:  # fmt: skip
    meter = IoUMeter(novel)
    start = time.perf_counter()
    for pred, label, class_id in predictions(model, episodes, index, cfg, bank, device):
        meter.update(pred, label, class_id)
    return meter, len(episodes) / (time.perf_counter() - start)


def _mean_of_seen(values: list[float]) -> float | None:
    """Mean over the runs in which a class was drawn; None (JSON null) if it never was."""
    seen = [v for v in values if not np.isnan(v)]
    return float(np.mean(seen)) if seen else None


def run(args: argparse.Namespace) -> None:
    cfg = from_params(EvaluateConfig, args.params, "evaluate")
    protocol = from_params(ProtocolConfig, args.protocol, "protocol")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)  # the bank's searches
    device = pick_device()
    index = read_index(args.index)
    novel = novel_classes(args.fold, index.num_classes, protocol.class_split)
    model, checkpoint = load_model(args.model)
    model = model.to(device).to(memory_format=torch.channels_last)
    if cfg.fg_rectify and args.bank is None:
        raise InputError("evaluate.fg_rectify needs --bank (run `latentfss build-bank`)")
    bank = load_bank(args.bank) if cfg.fg_rectify else None
    runs = {}
    if args.episodes is not None:
        runs[args.episodes.stem] = pd.read_csv(args.episodes)
    else:
        val = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
        try:
            sampler = EpisodeSampler.from_pixels(val, novel, protocol.min_support_pixels,
                                                 args.shot)  # fmt: skip
        except ValueError as e:
            raise InputError(f"evaluate fold {args.fold}: {e}") from None
        for seed in cfg.seeds:
            episodes = sample_test_episodes(sampler, cfg.episodes, seed)
            args.out.mkdir(parents=True, exist_ok=True)
            with atomic_file(args.out / f"episodes_seed{seed}.csv") as tmp:
                episodes.to_csv(tmp, index=False)
            runs[f"seed{seed}"] = episodes
    per_run, per_class, speeds = {}, [], []
    for name, episodes in runs.items():
        meter, speed = evaluate_episodes(model, episodes, index, cfg, bank, device, novel)
        per_run[name] = {"miou": meter.miou(), "fbiou": meter.fbiou(), "episodes_per_s": speed}
        per_class.append(meter.per_class())
        speeds.append(speed)
        log.info("%s: mIoU %.2f, FB-IoU %.2f, %.1f episodes/s", name, 100 * meter.miou(),
                 100 * meter.fbiou(), speed)  # fmt: skip
    mious = [r["miou"] for r in per_run.values()]
    fbious = [r["fbiou"] for r in per_run.values()]
    metrics = {
        "fold": args.fold, "shot": args.shot, "miou": float(np.mean(mious)),
        "miou_std": float(np.std(mious)), "fbiou": float(np.mean(fbious)),
        "per_class": {str(c): _mean_of_seen([p[c] for p in per_class]) for c in novel},
        "runs": per_run, "episodes_per_s": float(np.mean(speeds)), "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "evaluate": dataclasses.asdict(cfg), "model": str(args.model),
        "model_config": checkpoint["config"]["model"],
        "mining": checkpoint["config"].get("mining", {"remain": False}),  # models before it
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"class_id": list(novel),
                          "class_name": [index.meta["class_names"][c - 1] for c in novel],
                          "iou": [metrics["per_class"][str(c)] for c in novel]})  # fmt: skip
    with atomic_file(args.out / "per_class.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(args.out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("fold %d, %d-shot: mIoU %.2f (+-%.2f over %d runs), FB-IoU %.2f", args.fold,
             args.shot, 100 * metrics["miou"], 100 * metrics["miou_std"], len(runs),
             100 * metrics["fbiou"])  # fmt: skip
