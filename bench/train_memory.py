"""Backs docs/method.md, "Training": memory at the paper's batch, micro-batched.

Memory of one training step at the presets' shapes (ResNet-50/101, crop 473, B = 4 episodes, M =
32 pseudo-labelled images, 1- and 5-shot), with and without `train.micro_batches`.

    python bench/train_memory.py [--archs resnet50 resnet101] [--shots 1 5] [--micro-batches 1 8]

Each measurement is one `train_step` (the stage's own) in its own process on random images and
masks at those shapes: the step's peak memory above what the process held before it (the
activations kept for the backward pass, the features and the head's activations on the whole
batch) and its seconds. On the CPU the peak is the process's RSS (fp32); on CUDA torch's peak
allocation (bf16 autocast). A full step that would not fit the machine is given as a per-image
extrapolation from two small steps (1 episode, 0 and 4 pseudo-labelled images), labelled as
such.

`--cost-only` adds the time that micro-batching costs: a small step (1 episode, 4 pseudo-
labelled images) with micro_batches 1 and 2.

Writes bench/results/train_memory.json and train_memory.md (assembled into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from record import arguments, describe, save

from latentfss.config import ModelConfig
from latentfss.encoder import Encoder, Normalise
from latentfss.model import MatchingNet
from latentfss.runtime import pick_device
from latentfss.trainer import train_step

REPO = Path(__file__).resolve().parents[1]
K_PASCAL = 5  # pseudo classes: K + 1


def rss_mb() -> float:
    """The process's resident memory now (MB)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_step(
    arch: str,
    shot: int,
    episodes: int,
    pseudo: int,
    crop: int,
    micro_batches: int,
    device: torch.device,
    steps: int = 1,
) -> dict:
    """`steps` train_steps on random data: the peak over all (the first step's optimizer
    allocates its momenta, a parameter's size: 0.1 GB for ResNet-101), the last one's seconds
    (the earlier ones warm the kernels up)."""
    torch.manual_seed(0)
    model = MatchingNet(Encoder(arch), ModelConfig(), K_PASCAL + 1).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(False)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9
    )
    normalise = Normalise(device)
    masks = torch.randint(0, 2, (episodes, shot, crop, crop), dtype=torch.uint8)
    episode = {
        "query": torch.randint(0, 255, (episodes, 3, crop, crop), dtype=torch.uint8),
        "supports": torch.randint(0, 255, (episodes, shot, 3, crop, crop), dtype=torch.uint8),
        "support_masks": masks,
        "query_mask": masks[:, 0].clone(),
    }
    mining = None
    if pseudo:
        images = normalise(
            normalise.unit(torch.randint(0, 255, (pseudo, 3, crop, crop), dtype=torch.uint8))
        )
        mining = (images, torch.randint(0, K_PASCAL + 1, (pseudo, crop, crop)))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, episode, mining, optimizer, normalise, 1.0, micro_batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "arch": arch,
        "shot": shot,
        "episodes": episodes,
        "pseudo": pseudo,
        "crop": crop,
        "micro_batches": micro_batches,
        "images": episodes * (1 + shot) + pseudo,
        "before_mb": round(before),
        "peak_mb": round(peak),
        "step_mb": round(peak - before),
        "seconds": round(seconds, 3),
        "device": str(device),
    }


def measured(**config) -> dict:
    """one_step in a fresh process (its own peak)."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=REPO / "bench",
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument("--archs", nargs="+", default=["resnet50", "resnet101"])
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--micro-batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--crop", type=int, default=473)
    parser.add_argument(
        "--full-step-limit-mb",
        type=float,
        help="extrapolate, rather than run, steps expected above this (default: "
        "60%% of the machine's memory on the CPU)",
    )
    parser.add_argument(
        "--cost-only",
        action="store_true",
        help="only the time of micro_batches 2 against 1 on a small step (1 "
        "episode, 4 pseudo-labelled images), added to the results file",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    if args.one:
        print(json.dumps(one_step(**json.loads(args.one), device=device)))
        return
    if args.cost_only:
        path = args.out / "train_memory.json"
        results = json.loads(path.read_text())
        results["cost"] = [
            measured(arch=arch, shot=1, episodes=1, pseudo=4, crop=args.crop, micro_batches=micro)
            for arch in args.archs
            for micro in (1, 2)
        ]
        save(results, report, args.out, "train_memory")
        return
    limit = args.full_step_limit_mb or (
        float("inf")
        if device.type == "cuda"
        else 0.6 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    )
    rows = []
    for arch in args.archs:
        small = [
            measured(arch=arch, shot=1, episodes=1, pseudo=p, crop=args.crop, micro_batches=1)
            for p in (0, 4)
        ]
        per_image = (small[1]["step_mb"] - small[0]["step_mb"]) / 4
        rows += [{**r, "kind": "measured (small)"} for r in small]
        for shot in args.shots:
            images = 4 * (1 + shot) + 32
            estimate = small[0]["step_mb"] + per_image * (images - small[0]["images"])
            for micro in args.micro_batches:
                if micro == 1 and estimate > limit:
                    rows.append(
                        {
                            "arch": arch,
                            "shot": shot,
                            "episodes": 4,
                            "pseudo": 32,
                            "crop": args.crop,
                            "micro_batches": 1,
                            "images": images,
                            "step_mb": round(estimate),
                            "kind": "extrapolated",
                            "device": str(device),
                        }
                    )
                    continue
                row = measured(
                    arch=arch, shot=shot, episodes=4, pseudo=32, crop=args.crop, micro_batches=micro
                )
                rows.append({**row, "kind": "measured"})
                print(rows[-1], flush=True)
    results = {"rows": rows}
    save(results, report, args.out, "train_memory")


def report(results: dict) -> list[str]:
    device = results["rows"][0]["device"] if results["rows"] else "cpu"
    precision = "bf16 autocast" if device.startswith("cuda") else "fp32"
    lines = [
        f"One training step's memory above the process's before it ({precision}; "
        f"{describe(results['machine'])}):",
        "",
        "| encoder | shot | images | micro_batches | step memory (MB) | s/step | how |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['arch']} | {r['shot']} | {r['images']} | {r['micro_batches']} | "
            f"{r['step_mb']:,} | {r.get('seconds', '')} | {r['kind']} |"
        )
    cost = results.get("cost", [])
    for full, micro in zip(cost[::2], cost[1::2], strict=True):
        lines += [
            "",
            f"Time of micro-batching ({full['arch']}, {full['images']} images at "
            f"{full['crop']}): {full['seconds']} s in one part, {micro['seconds']} s in "
            f"{micro['micro_batches']} ({micro['seconds'] / full['seconds']:.2f}x): the "
            "second encoder forward did not show in the time on this machine.",
        ]
    return lines


if __name__ == "__main__":
    main()
