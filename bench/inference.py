"""Backs docs/results.md, "Speed against the machine's limits": evaluation's episodes/s.

Encoding each distinct image once, every episode anew and the authors' loop shape on fold 0 of
an existing run, then build-bank and evaluate as the workflow runs them, against their floors.

    python bench/inference.py [--results results/synthetic] [--episodes 1000]

Writes bench/results/inference.json and inference.md. On a CUDA machine it measures the GPU path.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import limits
import numpy as np
import pandas as pd
import torch
import zarr
from record import arguments, artifact, describe, run_stage, save, scratch, table
from torch.utils.data import DataLoader

from latentfss import layout
from latentfss.config import EvaluateConfig, defaults, from_params
from latentfss.datasets.evaluation import TestEpisodes, at_label
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise
from latentfss.episodes import EpisodeSampler, novel_classes, sample_test_episodes
from latentfss.metrics import IoUMeter
from latentfss.model import Shots, load_model
from latentfss.region_bank import load_bank
from latentfss.runs import BANK_KEYS
from latentfss.runtime import pick_device, precision
from latentfss.scoring import episode_by_episode, evaluate_lists


def authors_loop(model, episodes: pd.DataFrame, index, cfg, bank, device):
    """(prediction, label, class_id) of each episode in the shape of the authors' test loop:
    autograd on (no_grad only), fp32, each image through the encoder in its own call."""
    data = TestEpisodes(episodes, index.images, index.num_classes, cfg.resize, cfg.input_size)
    normalise = Normalise(device)
    for episode in DataLoader(data, batch_size=None, num_workers=cfg.workers):
        with torch.no_grad():
            query = model.encoder(normalise(normalise.unit(episode["query"][None])))
            shots = [
                model.shots(model.encoder(normalise(normalise.unit(s[None]))), m[None])
                for s, m in zip(episode["supports"], episode["support_masks"], strict=True)
            ]
            fg, bg = model.prototypes(Shots.stack(shots), bank)
            size = tuple(episode["query"].shape[1:])
            logits = at_label(model.match(query, fg, bg), size, episode["covered"], episode["size"])
        yield logits[0].argmax(0).cpu().numpy(), episode["label"].numpy(), episode["class_id"]


class Floors:
    """The least compute of evaluation: the encoder's FLOPs for each image encoded plus the
    matching's 2 x C multiply-adds per prototype and query feature cell (nothing else)."""

    def __init__(self, model, index, cfg, device) -> None:
        self.model, self.index, self.cfg, self.device = model, index, cfg, device
        self.size_flops = functools.cache(self._count)  # one count per input size

    def _count(self, size: tuple[int, int]) -> int:
        image = torch.zeros(1, 3, *size, device=self.device)
        with torch.inference_mode():
            return limits.count_flops(lambda: self.model.encoder(image))

    def _size(self, image_id) -> tuple[int, int]:
        if self.cfg.resize != "none":
            return self.cfg.input_size, self.cfg.input_size
        height, width = self.index.images.loc[int(image_id), ["height", "width"]]
        return int(height), int(width)

    def encoder(self, image_ids) -> int:
        return sum(self.size_flops(self._size(image_id)) for image_id in image_ids)

    def matching(self, episodes: pd.DataFrame) -> int:
        cells = [-(-h // 8) * -(-w // 8) for h, w in map(self._size, episodes["query"])]
        return 2 * 2 * self.model.encoder.channels * sum(cells)

    def __call__(self, episodes: pd.DataFrame, once: bool) -> int:
        """The episodes' images encoded each once (`once`) or, every episode's, anew."""
        supports = [int(i) for s in episodes["supports"] for i in str(s).split()]
        images = [*map(int, episodes["query"]), *supports]
        return self.encoder(set(images) if once else images) + self.matching(episodes)


def measure_variants(results: Path, shot: int, episodes: int, config: dict, device) -> list[dict]:
    model, _ = load_model(artifact(results, layout.MODEL, fold=0, shot=shot))
    model = model.to(device).to(memory_format=torch.channels_last)
    cfg = from_params(EvaluateConfig, config["evaluate"], "evaluate")
    bank = load_bank(artifact(results, layout.BANK, fold=0, shot=shot), cfg.top_n, cfg.beta, device)
    index = read_index(results / layout.INDEX)
    novel = novel_classes(0, index.num_classes, config["protocol"]["class_split"])
    val = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
    sampler = EpisodeSampler.from_pixels(val, novel, config["protocol"]["min_support_pixels"], shot)
    lists = {f"seed{seed}": sample_test_episodes(sampler, episodes, seed) for seed in cfg.seeds}
    floors, rows = Floors(model, index, cfg, device), []

    def record(variant: str, meters: dict, seconds: float, flops: int, **extra) -> None:
        count = sum(len(lists[name]) for name in meters)
        rows.append(
            {
                "shot": shot,
                "variant": variant,
                "lists": len(meters),
                "episodes": count,
                "episodes_per_s": round(count / seconds, 2),
                "seconds": round(seconds, 2),
                "miou": round(100 * float(np.mean([m.miou() for m in meters.values()])), 2),
                "work": {"flops": flops},
                **extra,
            }
        )
        print(rows[-1], flush=True)

    seed0 = {"seed0": lists["seed0"]}
    for variant, chosen in (("encode once", lists), ("encode once, seed 0 alone", seed0)):
        meters, _, work = evaluate_lists(model, chosen, index, cfg, bank, device, novel)
        flops = floors(pd.concat(chosen.values()), once=True)
        record(variant, meters, work["seconds"], flops, images=work)
    for variant, loop, memory_format in (
        ("episode by episode", episode_by_episode, torch.channels_last),
        ("authors' loop shape", authors_loop, torch.contiguous_format),  # as theirs, NCHW
    ):
        model = model.to(memory_format=memory_format)
        meter, start = IoUMeter(novel), time.perf_counter()
        for pred, label, class_id in loop(model, lists["seed0"], index, cfg, bank, device):
            meter.update(pred, label, class_id)
        seconds = time.perf_counter() - start
        record(variant, {"seed0": meter}, seconds, floors(lists["seed0"], once=False))
    return rows


def measure_stages(results: Path, shot: int, config: dict, threads: int, tmp: Path) -> list[dict]:
    """build-bank and evaluate (every seed) of fold 0 as the workflow runs them, with floors."""
    e, index, task = config["evaluate"], results / layout.INDEX, dict(fold=0, shot=shot)
    model = artifact(results, layout.MODEL, **task)
    masks = artifact(results, layout.PSEUDO_MASKS, fold=0)
    cfg = from_params(EvaluateConfig, e, "evaluate")
    floors = Floors(load_model(model)[0], read_index(index), cfg, torch.device("cpu"))
    common = dict(index=index, model=model, threads=threads)
    params = json.dumps({k: e[k] for k in BANK_KEYS})
    bank = run_stage("build-bank", pseudo_masks=masks, out=tmp / "bank", params=params, **common)
    flags = dict(params=json.dumps(e), protocol=json.dumps(config["protocol"]), **task, **common)
    banked = artifact(results, layout.BANK, **task)
    evaluate = run_stage("evaluate", bank=banked, out=tmp / "eval", **flags)
    train_set = zarr.open_group(str(masks), mode="r")["image_id"][:]
    lists = pd.concat([pd.read_csv(tmp / f"eval/episodes_seed{seed}.csv") for seed in e["seeds"]])
    return [
        {
            "stage": stage,
            "shot": shot,
            "items": items,
            **timed,
            "per_s": round(items / timed["seconds"], 1),
            "work": {"flops": flops},
            "startup": limits.startup_seconds(stage),
        }
        for stage, timed, items, flops in (
            ("build-bank", bank, len(train_set), floors.encoder(train_set)),
            ("evaluate", evaluate, len(lists), floors(lists, once=True)),
        )
    ]


def main() -> None:
    parser = arguments(__doc__, results=True, threads=True)
    parser.add_argument("--episodes", type=int, default=1000, help="per seed (seeds 0-4)")
    args = parser.parse_args()
    config = defaults()  # the default run's config
    if not all(artifact(args.results, layout.BANK, fold=0, shot=s).is_dir() for s in (1, 5)):
        raise SystemExit(
            f"{args.results}: run `snakemake --cores 2` first (needs fold 0's models and banks)"
        )
    torch.set_num_threads(args.threads)
    device, rows, stages = pick_device(), [], []
    with scratch() as tmp:
        rates = limits.measure(device)
        for shot in (1, 5):
            stages += measure_stages(args.results, shot, config, args.threads, Path(tmp, str(shot)))
            rows += measure_variants(args.results, shot, args.episodes, config, device)
        rates = limits.measure(device, before=rates)
    limits.add_floors(rows + stages, rates)
    rate = {(row["shot"], row["variant"]): row["episodes_per_s"] for row in rows}
    speedup = {
        str(s): round(rate[s, "encode once"] / rate[s, "episode by episode"], 2) for s in (1, 5)
    }
    results = {
        "threads": args.threads,
        "device": str(device),
        "fp32": precision(device),
        "limits": rates,
        "evaluate": config["evaluate"],
        "speedup_vs_per_episode": speedup,
        "runs": rows,
        "stages": stages,
    }
    save(results, markdown, args.out, "inference")


def markdown(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/results.md."""
    e = r["evaluate"]
    lines = [
        "## Inference (`bench/inference.py`)",
        "",
        f"Machine: {describe(r['machine'])}. Fold 0, resize {e['resize']}, top-N {e['top_n']}, "
        f"beta {e['beta']}; the authors' loop shape in {r['fp32']}. "
        f"{limits.describe(r['limits'])}.",
        "",
    ]
    anew = {run["shot"]: run for run in r["runs"] if run["variant"] == "episode by episode"}
    runs = []
    for run in r["runs"]:
        # encode-once rows count their images; the others encode every episode's
        encoded = run.get("images", {}).get("encoded_images", run["episodes"] * (run["shot"] + 1))
        vs = run["episodes_per_s"] / anew[run["shot"]]["episodes_per_s"]
        runs.append({**run, "encoded": encoded, "vs": vs})
    lines += table(
        runs,
        {
            "shot": "{shot}",
            "variant": "{variant}",
            "episodes": "{episodes}",
            "images encoded": "{encoded}",
            "seconds": "{seconds}",
            "episodes/s": "{episodes_per_s}",
            "vs episode by episode": "{vs:.1f}x",
            "mIoU (%)": "{miou}",
            "% of limit": "{of_limit_pct}",
        },
    )
    lines += ["", "The stages as the workflow runs them (fold 0, each its own process):", ""]
    lines += table(
        [{**s, "limits": limits.cells(s)} for s in r["stages"]],
        {
            "stage": "{stage}",
            "shot": "{shot}",
            "images or episodes": "{items}",
            "seconds": "{seconds}",
            "per s": "{per_s}",
            "peak RSS MB": "{peak_rss_mb}",
            limits.HEADER: "{limits}",
        },
    )
    return lines


if __name__ == "__main__":
    main()
