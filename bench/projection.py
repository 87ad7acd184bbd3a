"""Backs docs/running.md, "What a full run costs": each preset on GPUs, projected.

Each preset's full run projected onto GPUs from the rehearsals (`bench/rehearsal.py`), the real
encoder's FLOPs (counted on the meta device) and the training loaders' seconds per sample (timed
here); every factor and its assumption: docs/running.md, "What the projection assumes".

    python bench/projection.py [--runs .bench-rehearsal] [--gpu-tflops 100] [--gpu-tbps 1]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import limits
import torch
import train as train_bench
import yaml
from record import artifact, save
from rehearsal import PER_IMAGE, RULES, SETTINGS
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
REHEARSED = SETTINGS["pascal"]["evaluate"]  # as the coco sample: one seed
DISK = {  # train images, largest image side, K, masks converted by prepare
    "pascal (voc_sbd)": (5_953, 500, 5, 4_489),  # from the official archives: SBD's .mat
    "pascal (trainaug)": (10_582, 500, 5, 9_118),  # masks of images outside VOC2012 train
    "coco": (82_783, 640, 15, 123_287),
}
ENCODER_PARAMETERS = 8.5e6  # ResNet-50 to layer3 (model.pt without the mining head)


def disk_bound(images: int, side: int, k: int, converted: int) -> dict[str, float]:
    """GB of each artifact, uncompressed (its shape: docs/running.md, "Scratch disk")."""
    per_feature = 1024 * 4 / 1e9  # a float32 prototype
    return {
        "features.zarr": images * 60 * 60 * per_feature / 2,  # float16
        "prototypes.zarr": (3 * images + images) * per_feature,  # fg + bg
        "pseudo masks (4 folds)": 4 * images * side * side / 1e9,  # uint8, padded
        "region banks (8 runs)": 8 * images * (k + 1) * per_feature,
        "models (8)": 8 * ENCODER_PARAMETERS * 4 / 1e9,
        "converted masks (PNG, ~10 kB)": converted * 10e3 / 1e9,
    }


def preset_config(preset: str) -> dict:
    config = defaults()
    update_config(config, yaml.safe_load((REPO / f"workflow/presets/{preset}.yaml").read_text()))
    return config


def rule_resources(preset: str) -> dict[str, dict[str, int]]:
    """Each rule's mem_mb and runtime (minutes), from a dry run of the preset's DAG."""
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
        return limits.count_flops(lambda: encoder(torch.empty(1, 3, height, width)))


def step_flops(config: dict, shot: int) -> float:
    """A training step's FLOPs (bench/train.py's, on meta) with micro-batches' second forward."""
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
    """Seconds per training sample (an episode of each shot, a pseudo-labelled image) on one
    core, on the COCO sample's images."""
    results = sample / "results/coco"
    index = read_index(results / layout.INDEX)
    pixels = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    t, min_pixels = config["train"], config["protocol"]["min_support_pixels"]
    crop, scale = t["crop"], tuple(t["scale"])
    masks = [artifact(results, layout.PSEUDO_MASKS, fold=0)]
    data = {"pseudo": PseudoSamples(masks, index.images, crop, scale, 0)}
    for shot in SHOTS:
        sampler = EpisodeSampler.from_pixels(pixels, base_classes(0, 80), min_pixels, shot)
        data[shot] = EpisodeSamples(index.images, sampler, 80, crop, scale, 0)

    def per_sample(dataset) -> float:
        dataset[0]  # opens its stores
        return limits.clock(lambda: [dataset[k] for k in range(1, samples + 1)]) / samples

    return {name: per_sample(dataset) for name, dataset in data.items()}


def jobs(preset: str, gpu: dict, loaders: dict, startup: dict) -> list[dict]:
    """Every job of the preset's run, projected (docs/running.md, "What the projection assumes")."""
    config = preset_config(preset)
    t, e = config["train"], config["evaluate"]
    flops = {shot: step_flops(config, shot) for shot in SHOTS}
    rehearsal = json.loads((RESULTS / f"rehearsal_{preset}.json").read_text())
    full = later = rehearsal["runs"][-1]
    images, fold_set = full["images"], full["work"]["fold_train_set"]
    stages = {rule: (s, 1) for rule, s in full["stages"].items()}  # rule -> (rehearsed, times)
    if preset == "coco":  # what scales with pixels, from the sample at COCO's sides
        later, ratio = rehearsal["sample"], images / rehearsal["sample"]["images"]
        for rule in PER_IMAGE:  # memory grows with the pixels or the count: the larger
            peak = max(later["stages"][rule]["peak_mb"], full["stages"][rule]["peak_mb"])
            stages[rule] = (later["stages"][rule] | {"peak_mb": peak}, ratio)
        if full["stages"]["prepare"]["host_s"] > ratio * later["stages"]["prepare"]["host_s"]:
            stages["prepare"] = (full["stages"]["prepare"], 1)  # the JSON's parse, say
    image = encoder_flops(config["encoder"]["arch"], *SIDES[preset])
    at_input = encoder_flops(config["encoder"]["arch"], *(2 * [config["annotation"]["input_size"]]))
    encodes = not config["annotation"]["keep_features"]
    asks = rule_resources(preset)

    def job(rule, level, count, on_gpu, stage, times, encoder_flop, host_share=1.0) -> dict:
        """`stage` done `times` over plus `encoder_flop`; the host's seconds times `host_share`."""
        flop = stage["gflop"] * 1e9 * times + encoder_flop
        device = (
            flop / gpu["flops"]
            + stage["device_gb"] * 1e9 * times / gpu["bytes"]
            + stage["device_ops"] * times * gpu["launch_s"]
        )
        ask = asks[rule.split()[0]]
        start = startup.get(rule.split()[0], 0)  # once a job, whatever its work
        host = start + (max(stage["host_s"], stage.get("host_floor_s", 0)) - start) * times
        return {
            "rule": rule,
            "level": level,
            "count": count,
            "gpu": on_gpu,
            "host_s_rehearsed": host,
            "host_s": host * host_share,
            "device_s": device,
            "seconds": host * host_share + device,
            "gflop": flop / 1e9,
            "peak_mb": stage["peak_mb"],
            "disk_mb": stage["disk_mb"] * times,
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
    rows = [job(r, level, n, g, *stages[r], f) for r, level, n, g, f in shared]
    train, bank, evaluate = (later["stages"][r] for r in ("train", "build_bank", "evaluate"))
    episodes = e["episodes"] * len(e["seeds"])
    workers = REHEARSED["workers"] / e["workers"]  # build_bank's and evaluate's loaders
    for shot in SHOTS:
        samples = t["batch_episodes"] * loaders[shot] + t["batch_pseudo"] * loaders["pseudo"]
        loader, gpu_step = samples / (2 * t["workers"]), flops[shot] / gpu["flops"]
        waiting = t["iterations"] * max(loader - gpu_step, 0)  # the GPU waits for the loaders
        # the rehearsal's few steps stand for none: start-up and the loaders' wait on the host
        steps = {"host_s": train["host_s"] + waiting, "gflop": 0, "device_gb": 0, "device_ops": 0}
        read = episodes / REHEARSED["episodes"] * (1 + shot) / 2  # an episode reads 1 + shot images
        trained = job(
            f"train {shot}-shot", 5, FOLDS, True, train | steps, 1, t["iterations"] * flops[shot]
        )
        rows.append(trained | {"loader_s_per_step": loader, "gpu_s_per_step": gpu_step})
        banked = fold_set / later["work"]["fold_train_set"]
        rows.append(
            job(f"build_bank {shot}-shot", 6, FOLDS, True, bank, banked, fold_set * image, workers)
        )
        encoded = episodes * (1 + shot) * image
        rows.append(job(f"evaluate {shot}-shot", 7, FOLDS, True, evaluate, read, encoded, workers))
    return rows


def summary(rows: list[dict], models_gb: float) -> dict[str, float]:
    """Hours with one GPU (every job in turn) and with 8 (the critical path), GPU-hours, disk
    (the models' as `disk_bound` counts them: the stand-in's model.pt is a few kB)."""
    levels = [max(r["seconds"] for r in rows if r["level"] == level) for level in range(5)]
    per_model = max(
        sum(r["seconds"] for r in rows if r["rule"].endswith(f" {shot}-shot")) for shot in SHOTS
    )
    eight = sum(levels) + per_model
    return {
        "one_gpu_hours": sum(r["count"] * r["seconds"] for r in rows) / 3600,
        "one_gpu_hours_host_as_rehearsed": sum(
            r["count"] * (r["seconds"] - r["host_s"] + r["host_s_rehearsed"]) for r in rows
        )
        / 3600,
        "device_hours": sum(r["count"] * r["device_s"] for r in rows) / 3600,
        "gpu_busy_hours": sum(r["count"] * r["seconds"] for r in rows if r["gpu"]) / 3600,
        "eight_gpu_hours": eight / 3600,
        "eight_gpus_held_hours": GPUS * eight / 3600,
        "disk_gb": sum(r["count"] * r["disk_mb"] for r in rows) / 1024 + models_gb,
        "peak_gb": max(r["peak_mb"] for r in rows) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / ".bench-rehearsal")
    parser.add_argument("--gpu-tflops", type=float, default=100.0)
    parser.add_argument("--gpu-tbps", type=float, default=1.0, help="memory, TB/s")
    parser.add_argument("--launch-us", type=float, default=20.0, help="per torch operation")
    parser.add_argument("--samples", type=int, default=24, help="loader samples timed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gpu = {"flops": args.gpu_tflops * 1e12, "bytes": args.gpu_tbps * 1e12}
    gpu["launch_s"] = args.launch_us * 1e-6
    sample = json.loads((RESULTS / "rehearsal_coco.json").read_text())["sample"]
    bound = {name: disk_bound(*counts) for name, counts in DISK.items()}
    results = {"gpu": vars(args) | {"runs": None}, "disk_gb": bound}
    loaders = loader_seconds(  # both presets train on 473 crops, with the same rescale
        args.runs / f"coco-1-{sample['input_size']}", preset_config("coco"), args.samples
    )
    results["loader_s_per_sample"] = loaders
    startup = {rule: limits.startup_seconds(rule.replace("_", "-")) for rule in RULES}
    results["startup_s"] = startup
    for preset in ("pascal", "coco"):
        rows = jobs(preset, gpu, loaders, startup)
        name, keep = ("pascal (voc_sbd)", True) if preset == "pascal" else ("coco", False)
        upper = sum(gb for a, gb in bound[name].items() if keep or a != "features.zarr")
        results[preset] = {
            "jobs": rows,
            "summary": summary(rows, bound[name]["models (8)"]) | {"disk_upper_bound_gb": upper},
        }
    save(results, report, RESULTS, "projection")


def short_of_ask(job: dict) -> list[str]:
    """What a job would be killed for under SLURM: its projected time over its runtime, or its
    peak memory (plus a CUDA context's host memory on a GPU job) over its mem_mb."""
    late = job["seconds"] > 60 * job["asks_minutes"]
    memory = job["peak_mb"] + CUDA_CONTEXT_MB * job["gpu"]
    return [
        what for what, over in (("time", late), ("memory", memory > job["asks_mem_mb"])) if over
    ]


def report(r: dict) -> list[str]:
    g = r["gpu"]
    lines = [
        "## Each preset's full run on GPUs, projected (`bench/projection.py`)",
        "",
        "4 folds, 1- and 5-shot, 6,000 iterations, 5 test seeds of 1,000 (PASCAL) or 4,000 "
        f"(COCO) episodes; the device at {g['gpu_tflops']:g} TFLOP/s, {g['gpu_tbps']:g} TB/s "
        f"and {g['launch_us']:g} us an operation. Per job (hours each): its host's seconds as "
        "rehearsed (over the worker count where it has loaders), its device's work at those "
        "rates; peak memory (PSS) of its host processes; disk written by all the rule's jobs.",
    ]
    for preset in ("pascal", "coco"):
        p = r[preset]
        lines += [
            "",
            f"**{preset.upper()}**",
            "",
            "| job | jobs | GPU | host h | device h | hours each | asks h | TFLOP each | "
            "peak GB | asks GB | disk GB | short of its ask |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {j['rule']} | {j['count']} | {'yes' if j['gpu'] else 'no'} | "
            f"{j['host_s'] / 3600:.2f} | {j['device_s'] / 3600:.2f} | "
            f"{j['seconds'] / 3600:.2f} | {j['asks_minutes'] / 60:g} | {j['gflop'] / 1e3:,.0f} | "
            f"{j['peak_mb'] / 1024:.1f} | {j['asks_mem_mb'] / 1000:g} | "
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
            f"One GPU, every job in turn: **{s['one_gpu_hours']:.1f} h** "
            f"({s['one_gpu_hours_host_as_rehearsed']:.1f} h with the host as rehearsed; the "
            f"device busy {s['device_hours']:.1f} h). Eight GPUs (default profile on one box; "
            f"slurm with 8 GPUs granted at once, plus its queue waits): "
            f"**{s['eight_gpu_hours']:.1f} h** wall, {s['eight_gpus_held_hours']:.0f} GPU-hours "
            f"held ({s['gpu_busy_hours']:.1f} busy). Disk: {s['disk_gb']:.0f} GB written as "
            f"measured ({s['disk_upper_bound_gb']:.0f} GB uncompressed bound, below); "
            f"host memory at most {s['peak_gb']:.1f} GB a job. Training steps: {steps}.",
        ]
    assumed = "[running.md](running.md#what-the-projection-assumes)"
    rows = r["disk_gb"]
    lines += [
        "",
        f"What each factor rests on: {assumed}.",
        "",
        "Scratch disk per preset (GB, uncompressed upper bounds: every store is compressed, "
        "and nothing is deleted during a run; `disk_bound` gives the shapes they assume):",
        "",
        "| artifact | " + " | ".join(rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]
    for name in next(iter(rows.values())):
        lines.append(f"| {name} | " + " | ".join(f"{d[name]:,.1f}" for d in rows.values()) + " |")
    for keep in (True, False):
        total = [
            sum(v for n, v in d.items() if keep or n != "features.zarr") for d in rows.values()
        ]
        label = "total, keep_features: " + ("true" if keep else "false")
        lines.append(f"| **{label}** | " + " | ".join(f"**{t:,.0f}**" for t in total) + " |")
    return lines


if __name__ == "__main__":
    main()
