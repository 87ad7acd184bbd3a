"""Test episodes of one fold and shot with rectified prototypes (4.1, Eq. 7-9), callable from
Python: `evaluate(EvaluateJob(...), EvaluateConfig(), ProtocolConfig())`.

For every seed: an episode list (written first, so any run can be replayed with --episodes),
then predictions from the images as `evaluate.resize` presents them to the network, upsampled
to each query label's own resolution and scored there by class-wise mIoU and FB-IoU over the
fold's novel classes. The mean over seeds is the result.

The lists of a job share their images, so each distinct image is encoded once for all of them
(`evaluate_lists`); the per-class IoU is what encoding every episode anew gives
(`episode_by_episode`, which also times the paper's Table 7 speed).
"""

from __future__ import annotations

import dataclasses
import itertools
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
from torch.utils.data import DataLoader

from latentfss import layout
from latentfss.config import EvaluateConfig, ProtocolConfig
from latentfss.datasets.evaluation import (
    QUERY_KEYS,
    TestEpisodes,
    TestImages,
    at_label,
    pack,
    unpack,
)
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise, encode_each
from latentfss.episodes import EpisodeSampler, binary_mask, novel_classes, sample_test_episodes
from latentfss.errors import InputError
from latentfss.fs import atomic_file, identity
from latentfss.machine import machine
from latentfss.metrics import IoUMeter, iou_counts
from latentfss.model import MatchingNet, Shots, load_model
from latentfss.progress import progress
from latentfss.region_bank import RegionBank, load_bank
from latentfss.runtime import pick_device, set_threads

log = logging.getLogger(__name__)

SPEED_EPISODES = 21  # timed one at a time for Table 7's speed (the first is the warm-up)
# episodes rectified together: their regions (256, N, K, C) take 63 MB at N 4, K 15, C 1024
RECTIFIED_AT_ONCE = 256


@dataclass(frozen=True)
class EvaluateJob:
    """What one evaluation reads and writes (one fold and shot), and where it runs."""

    index: Path  # the prepared dataset index folder
    model: Path  # model.pt
    fold: int
    shot: int
    out: Path  # the eval folder: episode lists, metrics.json, per_class.csv, scores.csv
    bank: Path | None = None  # the region bank (evaluate.fg_rectify)
    episodes: Path | None = None  # replay this episode list instead of drawing the seeds'
    threads: int = 1
    device: str = "auto"


@torch.inference_mode()
def predict_episode(
    model: MatchingNet, episode: dict, normalise: Normalise, bank: RegionBank | None
) -> np.ndarray:
    """One episode (a `TestEpisodes` item) through `MatchingNet.forward`, nothing cached: the
    binary prediction (H, W, bool) at the query's original `size`."""
    query, *supports = (
        normalise(normalise.unit(image[None])) for image in [episode["query"], *episode["supports"]]
    )
    logits = model(query, supports, [m[None] for m in episode["support_masks"]], bank).logits
    size = tuple(episode["query"].shape[-2:])
    return foreground(at_label(logits, size, episode["covered"], episode["size"]))[0].cpu().numpy()


def foreground(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) background and foreground logits -> (B, H, W) their argmax, ties to the
    background (a comparison: an argmax across the strided class axis is 400x slower on the
    CPU)."""
    return logits[:, 1] > logits[:, 0]


def episode_by_episode(
    model: MatchingNet, episodes: pd.DataFrame, index, cfg: EvaluateConfig, bank, device
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(prediction, label, class_id) of every episode of a list, in order, each encoded anew:
    the protocol as the references run it, and the paper's Table 7 measure of model speed."""
    data = TestEpisodes(episodes, index.images, index.num_classes, cfg.resize, cfg.input_size)
    loader = DataLoader(data, batch_size=None, num_workers=cfg.workers)
    normalise = Normalise(device)
    for episode in loader:
        pred = predict_episode(model, episode, normalise, bank)
        yield pred, episode["label"].numpy(), episode["class_id"]


def encoded(
    model: MatchingNet, image_ids, index, cfg: EvaluateConfig, normalise: Normalise, what: str
) -> Iterator[tuple[dict, torch.Tensor]]:
    """(`TestImages` item, its float32 features (C, h, w)) of each image, loaded in workers
    (none for no images: forking them would copy the page tables of the features kept)."""
    if not len(image_ids):
        return
    data = TestImages(image_ids, index.images, index.num_classes, cfg.resize, cfg.input_size)
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=pack)
    for batch in map(unpack, progress(loader, len(loader), f"evaluate {what}")):
        feats = encode_each(model.encoder, [item["image"] for item in batch], normalise)
        yield from zip(batch, feats, strict=True)


@torch.inference_mode()
def evaluate_lists(
    model: MatchingNet,
    lists: dict[str, pd.DataFrame],
    index,
    cfg: EvaluateConfig,
    bank: RegionBank | None,
    device: torch.device,
    novel,
) -> tuple[dict[str, IoUMeter], pd.DataFrame, dict]:
    """Every episode of every list, each distinct image encoded once.

    1. Support images: each (image, class) shot's prototypes and embedding (`MatchingNet.shots`);
       the features of those that are queries too are kept, up to `cache_mb`.
    2. Every episode's prototypes from its shots, rectified RECTIFIED_AT_ONCE at a time.
    3. Query images (kept, else encoded now): all the episodes of each are matched together.
    -> an IoUMeter per list; each episode's score (list, episode, class_id and its foreground
    intersection and union: what summarize resamples); what was done (episodes, distinct and
    encoded images, seconds).
    """
    start = time.perf_counter()
    episodes = pd.concat(lists.values(), ignore_index=True)
    names = np.repeat(list(lists), [len(e) for e in lists.values()])
    supports = np.array([str(s).split() for s in episodes["supports"]], dtype=np.int64)
    classes = episodes["class_id"].to_numpy()
    stride = index.num_classes + 1  # a shot (image, class) as one key
    keys, shot_of = np.unique(supports * stride + classes[:, None], return_inverse=True)
    shot_of = shot_of.reshape(supports.shape)  # (E, K) rows of the shot table
    by_query = episodes.groupby("query").indices
    normalise, channels = Normalise(device), model.encoder.channels
    table_rows = []  # the shot table's rows in order: the support images come sorted, as `keys`
    kept, kept_bytes, budget = [], 0, cfg.cache_mb * 2**20
    for item, feats in encoded(model, np.unique(supports), index, cfg, normalise, "supports"):
        first, last = np.searchsorted(keys, item["image_id"] * stride + np.array([0, stride]))
        masks = [binary_mask(item["mask"].numpy(), key % stride) for key in keys[first:last]]
        table_rows.append(model.shots(feats[None], torch.from_numpy(np.stack(masks))))
        size = 4 * feats.numel() + item["label"].nbytes
        if item["image_id"] in by_query and kept_bytes + size <= budget:
            query = {k: item[k] for k in QUERY_KEYS}
            query["label"] = query["label"].clone()  # out of shared memory: no fd held open
            kept.append((query, feats))
            kept_bytes += size
    table = Shots(*(torch.cat(column) for column in zip(*table_rows, strict=True)))
    fg, bg = (torch.empty(len(episodes), channels, device=device) for _ in range(2))
    for rows in np.array_split(np.arange(len(episodes)), -(-len(episodes) // RECTIFIED_AT_ONCE)):
        shots = Shots(*(column[shot_of[rows]] for column in table))
        fg[rows], bg[rows] = model.prototypes(shots, bank)
    rest = sorted(set(by_query) - {item["image_id"] for item, _ in kept})
    counts = torch.empty(len(episodes), 2, 2, dtype=torch.int64, device=device)
    targets = torch.tensor(classes, device=device)[:, None, None]  # each episode's class
    for item, feats in itertools.chain(
        kept, encoded(model, rest, index, cfg, normalise, "queries")
    ):
        rows = by_query[item["image_id"]]
        logits = model.match(feats[None], fg[rows], bg[rows])  # the features broadcast
        logits = at_label(logits, item["input_size"], item["covered"], item["label"].shape)
        label = item["label"].to(device)[None]
        counts[rows] = iou_counts(foreground(logits), label, targets[rows])
    counts = counts.cpu().numpy()  # one copy from the device, at the end
    meters = {name: IoUMeter(novel) for name in lists}
    for name, meter in meters.items():
        mine = names == name
        meter.add(counts[mine], classes[mine])
    work = {
        "episodes": len(episodes),
        "seconds": time.perf_counter() - start,
        "distinct_images": len(set(by_query) | set(supports.ravel().tolist())),
        "encoded_images": len(np.unique(supports)) + len(rest),
    }
    scores = pd.DataFrame(
        {
            "list": names,
            "episode": episodes["episode"],
            "class_id": classes,
            "inter": counts[:, 1, 0],  # the foreground's
            "union": counts[:, 1, 1],
        }
    )
    return meters, scores, work


def read_episodes(path: Path, index, novel, shot: int) -> pd.DataFrame:
    """An episode list to replay, checked against this index, fold and shot (a list written
    for another dataset or fold is refused in one line)."""
    try:
        episodes = pd.read_csv(path, usecols=["episode", "query", "class_id", "supports"])
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not an episode list ({str(e).splitlines()[0]})") from None
    supports = [str(s).split() for s in episodes["supports"]]
    images = {int(i) for s in supports for i in s} | set(episodes["query"].tolist())
    if not images <= set(index.images.index) or not set(episodes["class_id"]) <= set(novel):
        raise InputError(f"{path}: images or classes that this dataset's fold does not have")
    if any(len(s) != shot for s in supports):
        raise InputError(f"{path}: episodes that are not {shot}-shot")
    return episodes


def model_speed(
    model: MatchingNet, episodes: pd.DataFrame, index, cfg: EvaluateConfig, bank, device
) -> float | None:
    """The paper's Table 7 measure: episodes/s one episode at a time with nothing cached (the
    first episode is the warm-up); None with fewer than two episodes."""
    done = [
        time.perf_counter() for _ in episode_by_episode(model, episodes, index, cfg, bank, device)
    ]
    return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else None


def _mean_of_seen(values: list[float]) -> float | None:
    """Mean over the runs in which a class was drawn; None (JSON null) if it never was."""
    seen = [v for v in values if not np.isnan(v)]
    return float(np.mean(seen)) if seen else None


def evaluate(job: EvaluateJob, cfg: EvaluateConfig, protocol: ProtocolConfig) -> dict:
    """Every list's episodes scored; writes the lists, metrics.json, per_class.csv and
    scores.csv into job.out -> the metrics."""
    set_threads(job.threads, cfg.workers)
    faiss.omp_set_num_threads(job.threads)  # the bank's searches
    device = pick_device(job.device)
    index = read_index(job.index)
    novel = novel_classes(job.fold, index.num_classes, protocol.class_split)
    model, checkpoint = load_model(job.model)
    model = model.to(device).to(memory_format=torch.channels_last)
    if cfg.fg_rectify and job.bank is None:
        raise InputError("evaluate.fg_rectify needs --bank (run `latentfss build-bank`)")
    built_for = {"model_identity": identity(job.model), "resize": cfg.resize}
    if cfg.resize != "none":
        built_for["input_size"] = cfg.input_size
    bank = load_bank(job.bank, cfg.top_n, cfg.beta, device, built_for) if cfg.fg_rectify else None
    runs = {}
    if job.episodes is not None:
        runs[job.episodes.stem] = read_episodes(job.episodes, index, novel, job.shot)
    else:
        val = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
        try:
            sampler = EpisodeSampler.from_pixels(val, novel, protocol.min_support_pixels, job.shot)
        except ValueError as e:
            raise InputError(f"evaluate fold {job.fold}: {e}") from None
        for seed in cfg.seeds:
            episodes = sample_test_episodes(sampler, cfg.episodes, seed)
            job.out.mkdir(parents=True, exist_ok=True)
            with atomic_file(job.out / layout.EPISODES.format(seed=seed)) as tmp:
                episodes.to_csv(tmp, index=False)
            runs[f"seed{seed}"] = episodes
    meters, scores, work = evaluate_lists(model, runs, index, cfg, bank, device, novel)
    per_run = {name: {"miou": m.miou(), "fbiou": m.fbiou()} for name, m in meters.items()}
    for name, result in per_run.items():
        log.info("%s: mIoU %.2f, FB-IoU %.2f", name, 100 * result["miou"], 100 * result["fbiou"])
    log.info(
        "%d episodes, %d distinct images (%d encoded): %.1f episodes/s",
        work["episodes"],
        work["distinct_images"],
        work["encoded_images"],
        work["episodes"] / work["seconds"],
    )
    first = next(iter(runs.values())).head(SPEED_EPISODES)
    mious = [r["miou"] for r in per_run.values()]
    fbious = [r["fbiou"] for r in per_run.values()]
    metrics = {
        "fold": job.fold,
        "shot": job.shot,
        "miou": float(np.mean(mious)),
        "miou_std": float(np.std(mious)),
        "fbiou": float(np.mean(fbious)),
        "per_class": {
            str(c): _mean_of_seen([m.per_class()[c] for m in meters.values()]) for c in novel
        },
        "runs": per_run,
        "episodes_per_s": work["episodes"] / work["seconds"],
        "work": work,
        "model_episodes_per_s": model_speed(model, first, index, cfg, bank, device),
        "device": str(device),
        "machine": {"train": checkpoint["machine"], "evaluate": machine()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "evaluate": dataclasses.asdict(cfg),
        "model": str(job.model),
        "model_config": checkpoint["config"]["model"],
        "train_seed": checkpoint["seed"],
        "mining": checkpoint["config"]["mining"],
    }
    job.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(
        {
            "class_id": list(novel),
            "class_name": [index.meta["class_names"][c - 1] for c in novel],
            "iou": [metrics["per_class"][str(c)] for c in novel],
        }
    )
    with atomic_file(job.out / layout.PER_CLASS) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(job.out / layout.SCORES) as tmp:
        scores.to_csv(tmp, index=False)
    with atomic_file(job.out / layout.METRICS) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "fold %d, %d-shot: mIoU %.2f (+-%.2f over %d runs), FB-IoU %.2f",
        job.fold,
        job.shot,
        100 * metrics["miou"],
        100 * metrics["miou_std"],
        len(runs),
        100 * metrics["fbiou"],
    )
    return metrics
