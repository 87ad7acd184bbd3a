"""Test episodes of one fold and shot with rectified prototypes (rule evaluate; 4.1, Eq. 7-9).

For every seed: an episode list (written first, so any run can be replayed with --episodes),
then predictions at the input size, upsampled to each query label's own resolution, scored by
class-wise mIoU and FB-IoU over the fold's novel classes. The mean over seeds is the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from latentfss.config import from_params
from latentfss.datasets.evaluation import TestEpisodes, collate
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise
from latentfss.episodes import (
    ProtocolConfig,
    class_image_lists,
    novel_classes,
    sample_test_episodes,
)
from latentfss.errors import InputError
from latentfss.fs import atomic_file
from latentfss.metrics import IoUMeter
from latentfss.model import MatchingNet, cosine_logits, load_model
from latentfss.progress import progress
from latentfss.region_bank import RegionBank, image_embedding, load_bank
from latentfss.runtime import autocast, pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """The test protocol and inference settings (config section `evaluate`)."""

    episodes: int = 100  # per seed (paper: 1000 PASCAL, 4000 COCO)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    input_size: int = 128  # queries and supports are resized to this square
    batch_size: int = 16  # episodes per forward pass
    fg_rectify: bool = True  # Eq. 8-9 (paper Table 3, "FG")
    top_n: int = 4  # N relevant train images
    beta: float = 0.2  # rectification weight
    workers: int = 1

    def __post_init__(self) -> None:
        if min(self.episodes, self.input_size, self.batch_size, self.top_n) < 1 or not self.seeds:
            raise ValueError("episodes, input_size, batch_size, top_n and seeds must be positive")


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


@torch.inference_mode()
def predict(model: MatchingNet, batch: dict, normalise: Normalise, bank: RegionBank | None,
            cfg: EvaluateConfig) -> list[np.ndarray]:  # fmt: skip
    """Binary predictions of a batch of episodes, each at its query label's resolution."""
    queries, supports = batch["query"], batch["supports"]
    b, k = supports.shape[:2]
    images = torch.cat([normalise(normalise.unit(queries)),
                        normalise(normalise.unit(supports.flatten(0, 1)))])  # fmt: skip
    with autocast(normalise.device):
        feats = model.encoder(images.contiguous(memory_format=torch.channels_last)).float()
    query_feats, support_feats = feats[:b], feats[b:].view(b, k, *feats.shape[1:])
    masks = batch["support_masks"].to(normalise.device)
    fg, bg = model.support_prototypes(support_feats, masks)
    if bank is not None:  # Eq. 8-9; a K-shot support's embedding is the mean of its shots'
        embedding = F.normalize(
            image_embedding(support_feats.flatten(0, 1)).view(b, k, -1).mean(1), dim=1
        )
        fg = bank.rectify(fg, embedding, cfg.top_n, cfg.beta)
    logits = cosine_logits(query_feats, torch.stack([model.background(bg), fg], dim=1),
                           model.cfg.sigma)  # fmt: skip
    return [F.interpolate(logits[i : i + 1], size=label.shape, mode="bilinear",
                          align_corners=False)[0].argmax(0).cpu().numpy()
            for i, label in enumerate(batch["labels"])]  # fmt: skip


def evaluate_episodes(model, episodes: pd.DataFrame, index, cfg: EvaluateConfig, bank,
                      device, novel) -> tuple[IoUMeter, float]:  # fmt: skip
    data = TestEpisodes(episodes, index.images, index.num_classes, cfg.input_size)
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")  # fmt: skip
    meter, normalise = IoUMeter(novel), Normalise(device)
    start = time.perf_counter()
    for batch in progress(loader, len(loader), "evaluate"):
        preds = predict(model, batch, normalise, bank, cfg)
        for pred, label, class_id in zip(preds, batch["labels"], batch["class_ids"], strict=True):
            meter.update(pred, label.numpy(), class_id)
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
    val = index.split("val").index
    lists = class_image_lists(index.pixels[index.pixels["image_id"].isin(val)], novel,
                              protocol.min_support_pixels)  # fmt: skip
    runs = {}
    if args.episodes is not None:
        runs[args.episodes.stem] = pd.read_csv(args.episodes)
    else:
        for seed in cfg.seeds:
            try:
                episodes = sample_test_episodes(lists, args.shot, cfg.episodes, seed)
            except ValueError as e:
                raise InputError(f"evaluate fold {args.fold}: {e}") from None
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
