"""Backs docs/running.md, "What a full run costs": each preset on GPUs, projected.

Each preset's full run projected onto GPUs from what was measured on the CPU: the rehearsals'
per-stage seconds, memory and disk (`bench/rehearsal.py`: every data-dependent cost at full
count, with a stand-in encoder), the real encoder's FLOPs (torch's FlopCounterMode on the meta
device), the training loaders' seconds per sample (timed here on the COCO sample's 640 x 480
images) and the scratch disk's upper bound (`bench/disk.py`).

    python bench/projection.py [--runs .bench-rehearsal] [--gpu-tflops 100]

The run: 4 folds, 1- and 5-shot, the presets' 6,000 iterations and 5 test seeds of 1,000
(PASCAL) or 4,000 (COCO) episodes. A job takes its CPU side as rehearsed plus its encoder FLOPs
over --gpu-tflops; a training step takes the longer of its GPU work and its loaders'. Wall
clock: with one GPU, every job in turn; with 8 GPUs (the default profile on one box, or the
slurm profile with 8 GPUs free), the critical path, the jobs of each DAG level side by side.
ASSUMED says what each factor rests on.

Writes bench/results/projection.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import train as train_bench
import yaml
from limits import count_flops
from record import artifact, save
from rehearsal import PER_IMAGE
from snakemake.utils import update_config

from latentfss import layout
from latentfss.config import EncoderConfig, ModelConfig, defaults
from latentfss.datasets.index import read_index
from latentfss.datasets.training import EpisodeSamples, PseudoSamples
from latentfss.encoder import build_encoder
from latentfss.episodes import EpisodeSampler, base_classes
from latentfss.model import MatchingNet

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench/results"
SHOTS, FOLDS, GPUS = (1, 5), 4, 8
SIDES = {"pascal": (375, 500), "coco": (480, 640)}  # the test images, at original resolution
CUDA_CONTEXT_MB = 1000  # host memory a process's CUDA context adds, about (not measured here)
REHEARSED_EPISODES = 100  # bench/rehearsal.py pascal: one test seed of 100 episodes
ASSUMED = {
    "GPU rate": "the encoder's bf16 throughput on one H100/H200 assumed to be --gpu-tflops, "
    "about 10% of the 989 TFLOP/s dense peak (an assumption, not a measurement); "
    "bench/gpu_check.py measures it (train: s/step, features: images/s) where a GPU is lent",
    "CPU side": "each job's non-encoder work as rehearsed on 2 cores, the stand-in encoder's "
    "own compute included; the 6-10 cores a GPU job gets (profiles/slurm set-threads) are not "
    "counted on, so an upper bound for the stages that use them",
    "checkpointing": "micro_batches > 1 runs the encoder's forward twice per training step",
    "loaders": "a step's samples spread evenly over its 2 x train.workers loader processes, "
    "each at the single-core rate timed here on COCO's 640 x 480 images (PASCAL's are smaller)",
    "folds and shots": "fold 0's rehearsal stands for every fold; evaluation's CPU side per "
    "episode grows with the images it reads (1 + shot)",
    "COCO's later stages": "train, build_bank and evaluate were rehearsed on PASCAL only: their "
    "CPU side is scaled by COCO's fold train set (bank) or episodes (evaluate) and by the "
    "pixel ratio 640 x 480 / 500 x 375; its pixel-bound stages take the larger of the "
    "1/4-side full count and the COCO-side sample times the count ratio",
    "asks": "a rule's mem_mb and runtime from a dry run of the preset; SLURM kills a job past "
    "either: train resumes on its retry (SIGTERM 5 minutes before), every other rule starts over",
    "SLURM": "8 GPU jobs granted at once; queue waits, which no rehearsal can know, come on top "
    "of every level of the critical path",
}


def preset_config(preset: str) -> dict:
    config = defaults()
    update_config(config, yaml.safe_load((REPO / f"workflow/presets/{preset}.yaml").read_text()))
    return config


def rule_resources(preset: str) -> dict[str, dict[str, int]]:
    """What each rule asks the scheduler for (mem_mb, runtime in minutes), from a dry run of
    the preset's DAG: the limits SLURM kills a job at."""
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(REPO / "config.yaml", work)
        dataset = f"dataset={{name: {preset}, root: {work}}}"
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n"]
        command += ["--directory", work]
        command += ["--configfile", str(REPO / f"workflow/presets/{preset}.yaml")]
        dry = subprocess.run([*command, "--config", dataset], capture_output=True, text=True)
    found = re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+resources: (.*)$", dry.stdout, re.M)
    asks = {}
    for rule, resources in found:
        values = dict(r.split("=", 1) for r in resources.split(", "))
        if "mem_mb" in values:  # not the target rule `all`
            asks[rule] = {"mem_mb": int(values["mem_mb"]), "runtime": int(values["runtime"])}
    return asks


def encoder_flops(arch: str, height: int, width: int) -> float:
    """One image's forward through the encoder, counted on the meta device (nothing computed)."""
    with torch.device("meta"), torch.no_grad():
        encoder = build_encoder(EncoderConfig(arch=arch, weights="none"))
        return count_flops(lambda: encoder(torch.empty(1, 3, height, width)))


def step_flops(config: dict, shot: int) -> float:
    """One training step's encoder and mining head, forward and backward (bench/train.py's
    count, on the meta device), plus the checkpointed micro-batches' second forward."""
    arch, t = config["encoder"]["arch"], config["train"]
    with torch.device("meta"):
        encoder = build_encoder(EncoderConfig(arch=arch, weights="none"))
        net = MatchingNet(encoder, ModelConfig(**config["model"]), config["cluster"]["k"] + 1)
        flops = float(train_bench.step_flops(net, t, shot))
    if t["micro_batches"] > 1:
        images = t["batch_episodes"] * (1 + shot) + t["batch_pseudo"]
        flops += images * encoder_flops(arch, t["crop"], t["crop"])
    return flops


def loader_seconds(sample: Path, config: dict, samples: int) -> dict[str, float]:
    """Seconds per training sample on one core (read, label, rescale, crop, flip): an episode
    of each shot (1 + shot images) and a pseudo-labelled image, on the COCO sample's images."""
    results = sample / "results/coco"
    index = read_index(results / layout.INDEX)
    pixels = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    t, min_pixels = config["train"], config["protocol"]["min_support_pixels"]
    crop, scale = t["crop"], tuple(t["scale"])
    data = {
        "pseudo": PseudoSamples(
            [artifact(results, layout.PSEUDO_MASKS, fold=0)], index.images, crop, scale, 0
        )
    }
    for shot in SHOTS:
        sampler = EpisodeSampler.from_pixels(pixels, base_classes(0, 80), min_pixels, shot)
        data[shot] = EpisodeSamples(index.images, sampler, 80, crop, scale, 0)
    seconds = {}
    for name, dataset in data.items():
        dataset[0]  # opens its stores
        start = time.perf_counter()
        for k in range(1, samples + 1):
            dataset[k]
        seconds[name] = (time.perf_counter() - start) / samples
    return seconds


def jobs(preset: str, rate: float, flops: dict, loaders: dict) -> list[dict]:
    """Every job of the preset's run: rule, DAG level, count, GPU or not, seconds, GFLOP, peak
    RSS and disk (MB, per job)."""
    config = preset_config(preset)
    t, e = config["train"], config["evaluate"]
    pascal = json.loads((RESULTS / "rehearsal_pascal.json").read_text())["runs"][-1]
    rehearsal = json.loads((RESULTS / f"rehearsal_{preset}.json").read_text())
    full = rehearsal["runs"][-1]
    images, fold_set = full["images"], full["work"]["fold_train_set"]
    stages = dict(full["stages"])
    if preset == "coco":  # the pixel-bound costs, at COCO's sides
        sample = rehearsal["sample"]
        ratio = images / sample["images"]
        for rule in PER_IMAGE:
            scaled = {k: sample["stages"][rule][k] * ratio for k in ("seconds", "disk_mb")}
            stages[rule] = stages[rule] | {k: max(v, stages[rule][k]) for k, v in scaled.items()}
    pixels = np.prod(SIDES[preset]) / np.prod(SIDES["pascal"])
    image = encoder_flops(config["encoder"]["arch"], *SIDES[preset])
    at_input = encoder_flops(config["encoder"]["arch"], *(2 * [config["annotation"]["input_size"]]))
    encodes = not config["annotation"]["keep_features"]

    asks = rule_resources(preset)

    def job(rule, level, count, gpu, cpu_seconds, flop, measured) -> dict:
        ask = asks[rule.split()[0]]
        return {
            "rule": rule,
            "level": level,
            "count": count,
            "gpu": gpu,
            "seconds": cpu_seconds + flop / rate,
            "gflop": flop / 1e9,
            "peak_rss_mb": measured["peak_rss_mb"],
            "disk_mb": measured["disk_mb"],
            "asks_mem_mb": ask["mem_mb"],
            "asks_minutes": ask["runtime"],
        }

    shared = [  # rule, DAG level, jobs, on a GPU, encoder FLOPs
        ("prepare", 0, 1, False, 0),
        ("extract_features", 1, 1, True, (not encodes) * images * at_input),
        ("pool_prototypes", 2, 1, encodes, encodes * images * at_input),
        ("cluster", 3, FOLDS, False, 0),
        # every extract-features batch holding a train-set image is encoded whole: about all
        ("write_pseudo_masks", 4, FOLDS, encodes, encodes * images * at_input),
    ]
    rows = [
        job(r, level, n, gpu, stages[r]["seconds"], f, stages[r]) for r, level, n, gpu, f in shared
    ]
    later = pascal["stages"]
    bank_seconds = later["build_bank"]["seconds"] * fold_set / pascal["work"]["fold_train_set"]
    episodes = e["episodes"] * len(e["seeds"])
    per_episode = later["evaluate"]["seconds"] / REHEARSED_EPISODES * pixels
    for shot in SHOTS:
        samples = t["batch_episodes"] * loaders[shot] + t["batch_pseudo"] * loaders["pseudo"]
        loader, gpu_step = samples / (2 * t["workers"]), flops[shot] / rate
        waiting = t["iterations"] * max(loader - gpu_step, 0)  # the GPU waits for the loaders
        train = job(
            f"train {shot}-shot",
            5,
            FOLDS,
            True,
            later["train"]["seconds"] + waiting,
            t["iterations"] * flops[shot],
            later["train"],
        )
        rows += [
            train | {"loader_s_per_step": loader, "gpu_s_per_step": gpu_step},
            job(
                f"build_bank {shot}-shot",
                6,
                FOLDS,
                True,
                bank_seconds * pixels,
                fold_set * image,
                later["build_bank"],
            ),
            job(
                f"evaluate {shot}-shot",
                7,
                FOLDS,
                True,
                per_episode * episodes * (1 + shot) / 2,
                episodes * (1 + shot) * image,
                later["evaluate"],
            ),
        ]
    return rows


def summary(rows: list[dict], models_gb: float) -> dict[str, float]:
    """Hours with one GPU (every job in turn) and with 8 (the critical path), GPU-hours, disk
    (the models' as bench/disk.py counts them: the stand-in's model.pt is a few kB)."""
    levels = [max(r["seconds"] for r in rows if r["level"] == level) for level in range(5)]
    per_model = max(
        sum(r["seconds"] for r in rows if r["rule"].endswith(f" {shot}-shot")) for shot in SHOTS
    )
    eight = sum(levels) + per_model
    return {
        "one_gpu_hours": sum(r["count"] * r["seconds"] for r in rows) / 3600,
        "gpu_busy_hours": sum(r["count"] * r["seconds"] for r in rows if r["gpu"]) / 3600,
        "eight_gpu_hours": eight / 3600,
        "eight_gpus_held_hours": GPUS * eight / 3600,
        "disk_gb": sum(r["count"] * r["disk_mb"] for r in rows) / 1024 + models_gb,
        "peak_rss_gb": max(r["peak_rss_mb"] for r in rows) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / ".bench-rehearsal")
    parser.add_argument("--gpu-tflops", type=float, default=100.0)
    parser.add_argument("--samples", type=int, default=24, help="loader samples timed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rate = args.gpu_tflops * 1e12
    sample = json.loads((RESULTS / "rehearsal_coco.json").read_text())["sample"]
    bound = json.loads((RESULTS / "disk.json").read_text())["gb"]
    results = {"gpu_tflops": args.gpu_tflops, "assumed": ASSUMED}
    loaders = loader_seconds(  # both presets train on 473 crops, with the same rescale
        args.runs / f"coco-1-{sample['input_size']}", preset_config("coco"), args.samples
    )
    results["loader_s_per_sample"] = loaders
    for preset in ("pascal", "coco"):
        config = preset_config(preset)
        flops = {shot: step_flops(config, shot) for shot in SHOTS}
        rows = jobs(preset, rate, flops, loaders)
        name, keep = ("pascal (voc_sbd)", True) if preset == "pascal" else ("coco", False)
        upper = sum(gb for a, gb in bound[name].items() if keep or a != "features.zarr")
        results[preset] = {
            "jobs": rows,
            "summary": summary(rows, bound[name]["models (8)"]) | {"disk_upper_bound_gb": upper},
        }
    save(results, report, RESULTS, "projection")


def short_of_ask(job: dict) -> list[str]:
    """What a job would be killed for under SLURM: its projected time over its runtime, or its
    peak RSS (plus a CUDA context's host memory on a GPU job) over its mem_mb."""
    memory = job["peak_rss_mb"] + CUDA_CONTEXT_MB * job["gpu"]
    return [
        what
        for what, over in (
            ("time", job["seconds"] > 60 * job["asks_minutes"]),
            ("memory", memory > job["asks_mem_mb"]),
        )
        if over
    ]


def report(r: dict) -> list[str]:
    lines = [
        "## Each preset's full run on GPUs, projected (`bench/projection.py`)",
        "",
        "4 folds, 1- and 5-shot, 6,000 iterations, 5 test seeds of 1,000 (PASCAL) or 4,000 "
        f"(COCO) episodes; the encoder at {r['gpu_tflops']:g} TFLOP/s. Per job: the CPU side "
        "as rehearsed plus the encoder's FLOPs over that rate (hours, per job; peak RSS of the "
        "host process; disk written by all the rule's jobs).",
    ]
    for preset in ("pascal", "coco"):
        p = r[preset]
        lines += [
            "",
            f"**{preset.upper()}**",
            "",
            "| job | jobs | GPU | hours each | asks h | TFLOP each | peak RSS GB | asks GB | "
            "disk GB | short of its ask |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {j['rule']} | {j['count']} | {'yes' if j['gpu'] else 'no'} | "
            f"{j['seconds'] / 3600:.2f} | {j['asks_minutes'] / 60:g} | {j['gflop'] / 1e3:,.0f} | "
            f"{j['peak_rss_mb'] / 1024:.1f} | {j['asks_mem_mb'] / 1000:g} | "
            f"{j['count'] * j['disk_mb'] / 1024:,.1f} | {', '.join(short_of_ask(j)) or '-'} |"
            for j in p["jobs"]
        ]
        s = p["summary"]
        steps = "; ".join(
            f"{j['rule']}: GPU {j['gpu_s_per_step']:.3f} s a step, "
            f"loaders {j['loader_s_per_step']:.3f} s"
            for j in p["jobs"]
            if "gpu_s_per_step" in j
        )
        lines += [
            "",
            f"One GPU, every job in turn: **{s['one_gpu_hours']:.1f} h**. Eight GPUs (default "
            f"profile on one box; slurm with 8 GPUs granted at once, plus its queue waits): "
            f"**{s['eight_gpu_hours']:.1f} h** wall, {s['eight_gpus_held_hours']:.0f} GPU-hours "
            f"held ({s['gpu_busy_hours']:.1f} busy). Disk: {s['disk_gb']:.0f} GB written as "
            f"measured ({s['disk_upper_bound_gb']:.0f} GB uncompressed bound, `bench/disk.py`); "
            f"host memory at most {s['peak_rss_gb']:.1f} GB a job. Training steps: {steps}.",
        ]
    lines += ["", "What each factor rests on:", ""]
    lines += [f"- {factor}: {why}." for factor, why in r["assumed"].items()]
    return lines


if __name__ == "__main__":
    main()
