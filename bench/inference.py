"""Inference benchmark: episodes/s of `latentfss evaluate` 1-shot and 5-shot, with and without
foreground rectification, batched against one episode at a time, and against the shape of the
authors' baseline loop (one episode at a time, fp32, autograd on, query and each support
encoded by its own forward pass), and with torch.compile, on the models and banks of an existing
run (fold 0); and build-bank and evaluate as the workflow runs them. Every figure is set against
its floor (bench/limits.py).

    python bench/inference.py [--results results/synthetic] [--episodes 200] [--repeats 3]

Every variant scores the same episode list, so their mIoU must agree (up to bf16 on CUDA);
the table shows it. Writes bench/results/inference.json and inference.md (assembled into
BENCHMARKS.md by bench/report.py). On a CUDA machine the same run measures the GPU path.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from pathlib import Path

import limits
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
import zarr
from record import describe, machine, run_stage, save, scratch
from torch.utils.data import DataLoader

from latentfss.datasets.evaluation import TestEpisodes, collate
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise
from latentfss.episodes import EpisodeSampler, novel_classes, sample_test_episodes
from latentfss.metrics import IoUMeter
from latentfss.model import cosine_logits, load_model
from latentfss.region_bank import image_embedding, load_bank
from latentfss.runtime import pick_device
from latentfss.stages.evaluate import EvaluateConfig, at_label, evaluate_episodes

REPO = Path(__file__).resolve().parents[1]


def baseline_predict(model, episode, normalise, bank, cfg) -> np.ndarray:
    """One episode as the authors' baseline code runs it: autograd on (torch.no_grad only),
    fp32, NCHW, the query and every support through the encoder in separate calls."""
    with torch.no_grad():
        query = model.encoder(normalise(normalise.unit(episode["query"][None])))
        support_feats = [model.encoder(normalise(normalise.unit(s[None])))[0]
                         for s in episode["supports"]]  # fmt: skip
        fg, bg = model.shot_prototypes(support_feats, episode["support_masks"])
        if bank is not None:
            embedding = torch.cat([image_embedding(f[None]) for f in support_feats]).mean(0)
            fg = bank.rectify(fg[None], F.normalize(embedding, dim=0)[None], cfg.top_n,
                              cfg.beta)[0]  # fmt: skip
        prototypes = torch.stack([model.background(bg[None])[0], fg])[None]
        logits = cosine_logits(query, prototypes, model.cfg.sigma)
        return at_label(logits, episode["query"].shape[-2:], episode["covered"],
                        episode["size"]).argmax(0).cpu().numpy()  # fmt: skip


def baseline_episodes(model, episodes, index, cfg, bank, device, novel) -> tuple[IoUMeter, float]:
    data = TestEpisodes(episodes, index.images, index.num_classes, cfg.resize, cfg.input_size)
    loader = DataLoader(data, batch_size=1, num_workers=cfg.workers, collate_fn=collate)
    meter, normalise = IoUMeter(novel), Normalise(device)
    start = time.perf_counter()
    for (episode,) in loader:
        pred = baseline_predict(model, episode, normalise, bank, cfg)
        meter.update(pred, episode["label"].numpy(), episode["class_id"])
    return meter, len(episodes) / (time.perf_counter() - start)


VARIANTS = {  # name: (batch size or None for the baseline loop, fg_rectify, torch.compile)
    "batched, rectified": (16, True, False),
    "batched, not rectified": (16, False, False),
    "one at a time, rectified": (1, True, False),
    "baseline loop, rectified": (None, True, False),
    "batched, rectified, torch.compile": (16, True, True),
}


class EncoderFlops:
    """FLOPs of one image's encoder pass at the size the network sees it (counted once per
    size); the matching, the rectification and the upsampling are left out (by hand, about a
    MFLOP at the default, against 1.7 GFLOP per image through the encoder)."""

    def __init__(self, model, resize: str, size: int, device) -> None:
        self.encoder, self.resize, self.size, self.device, self.cache = (
            model.encoder, resize, size, device, {})  # fmt: skip

    def __call__(self, height: int, width: int) -> int:
        if self.resize != "none":
            height, width = self.size, self.size
        if (height, width) not in self.cache:
            image = torch.zeros(1, 3, height, width, device=self.device)
            with torch.inference_mode():
                self.cache[height, width] = limits.count_flops(lambda: self.encoder(image))
        return self.cache[height, width]

    def of_images(self, index, image_ids) -> int:
        sizes = index.images.loc[list(image_ids), ["height", "width"]].to_numpy()
        return sum(self(int(h), int(w)) for h, w in sizes)

    def of_episodes(self, index, episodes) -> int:
        """The query and supports of every episode."""
        images = [int(i) for _, e in episodes.iterrows()
                  for i in [e["query"], *str(e["supports"]).split()]]  # fmt: skip
        return self.of_images(index, images)


def measure_variants(results: Path, shot: int, episodes: int, repeats: int, config: dict,
                     device) -> list[dict]:  # fmt: skip
    run = results / f"fold0/shot{shot}"
    model, _ = load_model(run / "model.pt")
    model = model.to(device)
    bank = load_bank(run / "bank")
    index = read_index(results / "dataset")
    novel = novel_classes(0, index.num_classes, config["protocol"]["class_split"])
    val = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
    sampler = EpisodeSampler.from_pixels(val, novel, config["protocol"]["min_support_pixels"],
                                         shot)  # fmt: skip
    episode_list = sample_test_episodes(sampler, episodes, seed=0)
    base = EvaluateConfig(**{**config["evaluate"], "seeds": tuple(config["evaluate"]["seeds"])})
    flops = EncoderFlops(model, base.resize, base.input_size, device)
    flops = flops.of_episodes(index, episode_list)
    rows = []
    for name, (batch_size, rectify, compiled) in VARIANTS.items():
        cfg = dataclasses.replace(base, batch_size=batch_size or 1, fg_rectify=rectify)
        loop = baseline_episodes if batch_size is None else evaluate_episodes
        layout = torch.contiguous_format if batch_size is None else torch.channels_last
        variant = copy.deepcopy(model).to(memory_format=layout)
        first_run, use_bank = None, bank if rectify else None
        if compiled:
            variant.encoder = torch.compile(variant.encoder)
            start = time.perf_counter()  # compiles for the full and the last, smaller batch
            loop(variant, episode_list, index, cfg, use_bank, device, novel)
            first_run = round(time.perf_counter() - start, 2)
        speeds = []
        for _ in range(repeats):
            meter, speed = loop(variant, episode_list, index, cfg, use_bank, device, novel)
            speeds.append(speed)
        speed = float(np.median(speeds))
        rows.append({"shot": shot, "variant": name, "episodes": episodes, "repeats": repeats,
                     "episodes_per_s": round(speed, 2), "miou": round(100 * meter.miou(), 2),
                     "compile_and_first_run_seconds": first_run,
                     "seconds": round(episodes / speed, 3),
                     "work": {"flops": flops}})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def measure_stages(results: Path, shot: int, config: dict, threads: int, tmp: Path) -> list[dict]:
    """build-bank and evaluate (every seed) of fold 0 as the workflow runs them, each in its
    own process, against the encoder FLOPs they cannot avoid."""
    run, e = results / f"fold0/shot{shot}", config["evaluate"]
    model, _ = load_model(run / "model.pt")
    index = read_index(results / "dataset")
    flops = EncoderFlops(model, e["resize"], e["input_size"], torch.device("cpu"))
    train_set = zarr.open_group(str(results / "fold0/pseudo_masks.zarr"), mode="r")["image_id"]
    train_images = train_set.shape[0]
    keys = ("resize", "input_size", "batch_size", "workers")
    bank = run_stage("build-bank", index=results / "dataset", model=run / "model.pt",
                     pseudo_masks=results / "fold0/pseudo_masks.zarr", out=tmp / "bank",
                     params=json.dumps({k: e[k] for k in keys}), threads=threads)  # fmt: skip
    evaluate = run_stage("evaluate", index=results / "dataset", model=run / "model.pt",
                         bank=run / "bank", fold=0, shot=shot, out=tmp / "eval",
                         params=json.dumps(e), protocol=json.dumps(config["protocol"]),
                         threads=threads)  # fmt: skip
    episodes = e["episodes"] * len(e["seeds"])
    lists = [pd.read_csv(tmp / f"eval/episodes_seed{seed}.csv") for seed in e["seeds"]]
    work = {"build-bank": flops.of_images(index, train_set[:]),
            "evaluate": sum(flops.of_episodes(index, episodes) for episodes in lists)}  # fmt: skip
    rows = []
    for name, timed, items in (("build-bank", bank, train_images), ("evaluate", evaluate,
                                                                      episodes)):  # fmt: skip
        rows.append({"stage": name, "shot": shot, "items": items, **timed,
                     "per_s": round(items / timed["seconds"], 1),
                     "work": {"flops": work[name]},
                     "startup": limits.startup_seconds(name)})  # fmt: skip
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
    rows, stages = [], []
    with scratch() as tmp:
        rates = limits.measure(device, tmp)
        for shot in (1, 5):
            stages += measure_stages(args.results, shot, config, args.threads,
                                     Path(tmp) / str(shot))  # fmt: skip
            rows += measure_variants(args.results, shot, args.episodes, args.repeats, config,
                                     device)  # fmt: skip
        rates = limits.measure(device, tmp, before=rates)
    limits.add_floors(rows + stages, rates)
    results = {"machine": machine(), "threads": args.threads, "device": str(device),
               "limits": rates, "evaluate": config["evaluate"], "runs": rows,
               "stages": stages}  # fmt: skip
    save(results, markdown(results), args.out, "inference")


def markdown(r: dict) -> str:
    e = r["evaluate"]
    lines = [
        "## Inference (`bench/inference.py`)", "",
        f"Machine: {describe(r['machine'])}; {r['threads']} threads, device {r['device']}. "
        f"Default synthetic config: ResNet-18 (the trained fold-0 models), resize "
        f"{e['resize']}{'' if e['resize'] == 'none' else ' to ' + str(e['input_size'])}, "
        f"top-N {e['top_n']}, beta {e['beta']}.", "",
        f"Limits measured in the same run (`bench/limits.py`): {limits.describe(r['limits'])}. "
        "The floor: the encoder's FLOPs (FlopCounterMode) over the matrix-multiply rate; for "
        "an episode, the query and its supports.", "",
        "The stages as the workflow runs them (fold 0, each its own process; evaluate: "
        f"{e['episodes']} episodes x {len(e['seeds'])} seeds, rectified):", "",
        f"| stage | shot | images or episodes | seconds | per s | peak RSS MB | {limits.HEADER} |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for s in r["stages"]:
        lines.append(f"| {s['stage']} | {s['shot']} | {s['items']} | {s['seconds']} | "
                     f"{s['per_s']} | {s['peak_rss_mb']} | {limits.cells(s)} |")  # fmt: skip
    lines += [
        "", f"Evaluation's variants, in one process on the same {r['runs'][0]['episodes']} "
        f"episodes (seed 0), each run {r['runs'][0]['repeats']} times: the median episodes/s is "
        "shown. Episodes/s include loading and resizing the images (data-loader workers: "
        f"{e['workers']}) and scoring. The baseline loop is the shape of the authors' code: one "
        "episode at a time, fp32, autograd on (no_grad, not inference_mode), query and each "
        "support through the encoder in separate calls. torch.compile compiles the encoder "
        "(default mode); its compilation and first run are timed apart.", "",
        "| shot | variant | episodes/s | vs baseline loop | mIoU (%) | % of limit |",
        "|---:|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for shot in (1, 5):
        runs = [run for run in r["runs"] if run["shot"] == shot]
        baseline = next(run for run in runs if run["variant"].startswith("baseline"))
        for run in runs:
            ratio = run["episodes_per_s"] / baseline["episodes_per_s"]
            lines.append(f"| {shot} | {run['variant']} | {run['episodes_per_s']} | "
                         f"{ratio:.2f}x | {run['miou']} | {run['of_limit_pct']} |")  # fmt: skip
    compiled = [run for run in r["runs"] if run["compile_and_first_run_seconds"]]
    timings = (f"{run['compile_and_first_run_seconds']} s ({run['shot']}-shot)"
               for run in compiled)  # fmt: skip
    lines += ["", f"torch.compile's compilation and first run: {', '.join(timings)}."]
    if r["device"] == "cpu":
        lines += ["", "Not measured yet: the PASCAL preset (ResNet-50, input 473) on a GPU; no "
                  "GPU was lent to the task that built this.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
