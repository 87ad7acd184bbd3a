"""Inference benchmark: episodes/s of `latentfss evaluate` 1-shot and 5-shot, with and without
foreground rectification, batched against one episode at a time, and against the shape of the
authors' baseline loop (one episode at a time, fp32, autograd on, query and each support
encoded by its own forward pass), on the models and banks of an existing run (fold 0).

    python bench/inference.py [--results results/synthetic] [--episodes 200] [--repeats 3]

Every variant scores the same episode list, so their mIoU must agree (up to bf16 on CUDA);
the table shows it. Writes bench/results/inference.json and inference.md (assembled into
BENCHMARKS.md by bench/report.py). On a CUDA machine the same run measures the GPU path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from record import describe, machine, save
from torch.utils.data import DataLoader

from latentfss.datasets.evaluation import TestEpisodes, collate
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise
from latentfss.episodes import class_image_lists, novel_classes, sample_test_episodes
from latentfss.metrics import IoUMeter
from latentfss.model import cosine_logits, load_model
from latentfss.region_bank import image_embedding, load_bank
from latentfss.runtime import pick_device
from latentfss.stages.evaluate import EvaluateConfig, evaluate_episodes

REPO = Path(__file__).resolve().parents[1]


def baseline_predict(model, batch, normalise, bank, cfg) -> list[np.ndarray]:
    """One episode as the authors' baseline code runs it: autograd on (torch.no_grad only),
    fp32, NCHW, the query and every support through the encoder in separate calls."""
    with torch.no_grad():
        query = model.encoder(normalise(normalise.unit(batch["query"])))
        shots = batch["supports"].shape[1]
        support_feats = torch.stack([model.encoder(normalise(normalise.unit(
            batch["supports"][:, i]))) for i in range(shots)], dim=1)  # fmt: skip
        masks = batch["support_masks"].to(normalise.device)
        fg, bg = model.support_prototypes(support_feats, masks)
        if bank is not None:
            embedding = F.normalize(image_embedding(support_feats.flatten(0, 1)).mean(0,
                                    keepdim=True), dim=1)  # fmt: skip
            fg = bank.rectify(fg, embedding, cfg.top_n, cfg.beta)
        logits = cosine_logits(query, torch.stack([model.background(bg), fg], dim=1),
                               model.cfg.sigma)  # fmt: skip
        label = batch["labels"][0]
        pred = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
        return [pred[0].argmax(0).cpu().numpy()]


def baseline_episodes(model, episodes, index, cfg, bank, device, novel) -> tuple[IoUMeter, float]:
    data = TestEpisodes(episodes, index.images, index.num_classes, cfg.input_size)
    loader = DataLoader(data, batch_size=1, num_workers=cfg.workers, collate_fn=collate)
    meter, normalise = IoUMeter(novel), Normalise(device)
    start = time.perf_counter()
    for batch in loader:
        pred = baseline_predict(model, batch, normalise, bank, cfg)[0]
        meter.update(pred, batch["labels"][0].numpy(), batch["class_ids"][0])
    return meter, len(episodes) / (time.perf_counter() - start)


VARIANTS = {  # name: (batch size or None for the baseline loop, fg_rectify)
    "batched, rectified": (16, True),
    "batched, not rectified": (16, False),
    "one at a time, rectified": (1, True),
    "baseline loop, rectified": (None, True),
}


def measure(results: Path, shot: int, episodes: int, repeats: int, config: dict,
            device) -> list[dict]:  # fmt: skip
    run = results / f"fold0/shot{shot}"
    model, _ = load_model(run / "model.pt")
    model = model.to(device)
    bank = load_bank(run / "bank")
    index = read_index(results / "dataset")
    novel = novel_classes(0, index.num_classes, config["protocol"]["class_split"])
    val = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
    lists = class_image_lists(val, novel, config["protocol"]["min_support_pixels"])
    episode_list = sample_test_episodes(lists, shot, episodes, seed=0)
    base = EvaluateConfig(**{**config["evaluate"], "seeds": tuple(config["evaluate"]["seeds"])})
    rows = []
    for name, (batch_size, rectify) in VARIANTS.items():
        cfg = dataclasses.replace(base, batch_size=batch_size or 1, fg_rectify=rectify)
        loop = baseline_episodes if batch_size is None else evaluate_episodes
        model.to(memory_format=torch.contiguous_format if batch_size is None
                 else torch.channels_last)  # fmt: skip
        speeds = []
        for _ in range(repeats):
            meter, speed = loop(model, episode_list, index, cfg, bank if rectify else None,
                                device, novel)  # fmt: skip
            speeds.append(speed)
        rows.append({"shot": shot, "variant": name, "episodes": episodes, "repeats": repeats,
                     "episodes_per_s": round(float(np.median(speeds)), 2),
                     "miou": round(100 * meter.miou(), 2)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results/synthetic")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="the median speed is reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for shot in (1, 5):
        if not (args.results / f"fold0/shot{shot}/bank").is_dir():
            raise SystemExit(f"{args.results}: run `snakemake --cores 2` first (needs fold 0's "
                             "models and region banks)")  # fmt: skip
    torch.set_num_threads(args.threads)
    device = pick_device()
    rows = []
    for shot in (1, 5):
        rows += measure(args.results, shot, args.episodes, args.repeats, config, device)
    results = {"machine": machine(), "threads": args.threads, "device": str(device),
               "evaluate": config["evaluate"], "runs": rows}  # fmt: skip
    save(results, markdown(results), args.out, "inference")


def markdown(r: dict) -> str:
    e = r["evaluate"]
    lines = [
        "## Inference (`bench/inference.py`)", "",
        f"Machine: {describe(r['machine'])}; {r['threads']} threads, device {r['device']}. "
        f"Default synthetic config: ResNet-18 (the trained fold-0 models), input "
        f"{e['input_size']}, top-N {e['top_n']}, beta {e['beta']}; the same "
        f"{r['runs'][0]['episodes']} episodes (seed 0) for every variant, each run "
        f"{r['runs'][0]['repeats']} times: the median episodes/s is shown. Episodes/s include "
        "loading and resizing the images (data-loader workers: "
        f"{e['workers']}) and scoring. The baseline loop is the shape of the authors' code: one "
        "episode at a time, fp32, autograd on (no_grad, not inference_mode), query and each "
        "support through the encoder in separate calls.", "",
        "| shot | variant | episodes/s | vs baseline loop | mIoU (%) |",
        "|---:|---|---:|---:|---:|",
    ]  # fmt: skip
    for shot in (1, 5):
        runs = [run for run in r["runs"] if run["shot"] == shot]
        baseline = next(run for run in runs if run["variant"].startswith("baseline"))
        for run in runs:
            ratio = run["episodes_per_s"] / baseline["episodes_per_s"]
            lines.append(f"| {shot} | {run['variant']} | {run['episodes_per_s']} | "
                         f"{ratio:.2f}x | {run['miou']} |")  # fmt: skip
    if r["device"] == "cpu":
        lines += ["", "Not measured yet: the PASCAL preset (ResNet-50, input 473) on a GPU; no "
                  "GPU was lent to the task that built this.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
