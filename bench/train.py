"""Backs docs/method.md, "Training": iterations/s and distance to the floor.

`latentfss train` at the default config, 1-shot and 5-shot, each in its own process on fold 0's
annotation artifacts of an existing run: iterations/s, peak memory and distance to the floor.

    python bench/train.py [--results results/synthetic] [--iterations 40] [--threads 2]

Writes bench/results/train.json and train.md. On a CUDA machine it measures the GPU path.
"""

from __future__ import annotations

import json
from pathlib import Path

import limits
import torch
import zarr
from record import arguments, artifact, describe, run_stage, save, scratch, table

from latentfss import layout
from latentfss.config import ModelConfig, defaults
from latentfss.encoder import load_encoder
from latentfss.model import MatchingNet
from latentfss.runtime import pick_device


def step_flops(model: MatchingNet, train: dict, shot: int) -> int:
    """FLOPs of `model`'s encoder and mining head, forward and backward, on one step's batch
    (section `train`) without the matching and losses' few MFLOP; on meta, none computed."""
    model.train()
    for module in model.encoder.modules():  # frozen BatchNorm, as in training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(False)
    labelled = train["batch_episodes"] * (1 + shot)
    device = next(model.parameters()).device
    side = train["crop"]
    images = torch.randn(labelled + train["batch_pseudo"], 3, side, side, device=device)

    def step() -> None:
        feats = model.encoder(images)
        (feats[:labelled].sum() + model.head(feats[labelled:]).sum()).backward()

    return limits.count_flops(step)


def main() -> None:
    parser = arguments(__doc__, results=True, threads=True)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    config, iterations = defaults(), args.iterations
    init = artifact(args.results, layout.ENCODER_INIT)
    masks = artifact(args.results, layout.PSEUDO_MASKS, fold=0)
    if not masks.is_dir():
        raise SystemExit(
            f"{args.results}: run `snakemake --cores 2` first (needs fold 0's pseudo masks)"
        )
    params = {**config["train"], "iterations": iterations, "checkpoint_every": 10 * iterations}
    inputs = dict(
        index=args.results / layout.INDEX,
        encoder_init=init,
        pseudo_masks=masks,
        fold=0,
        params=json.dumps(params),
        threads=args.threads,
    )
    pseudo_classes = zarr.open_group(str(masks), mode="r").attrs["K"] + 1
    torch.set_num_threads(args.threads)
    startup, runs = limits.startup_seconds("train"), []
    with scratch() as tmp:
        rates = limits.measure(pick_device())
        for shot in (1, 5):
            out = Path(tmp) / f"shot{shot}"
            run = run_stage(
                "train", shot=shot, out=out / "model.pt", log_csv=out / "train.csv", **inputs
            )
            model = MatchingNet(load_encoder(init), ModelConfig(**config["model"]), pseudo_classes)
            flops = iterations * step_flops(model, config["train"], shot)
            runs.append(
                {
                    "shot": shot,
                    "iterations": iterations,
                    **run,
                    "iterations_per_s": round(iterations / run["seconds"], 3),
                    "work": {"flops": flops},
                    "startup": startup,
                }
            )
        rates = limits.measure(pick_device(), before=rates)
        limits.add_floors(runs, rates)
    results = {"threads": args.threads, "limits": rates, "train": config["train"], "runs": runs}
    save(results, markdown, args.out, "train")


def markdown(r: dict) -> list[str]:
    """The figures; what they rest on: this script's docstring and docs/method.md."""
    t = r["train"]
    lines = [
        "## Training (`bench/train.py`)",
        "",
        f"Machine: {describe(r['machine'])}. Fold 0, crop {t['crop']}, "
        f"B = {t['batch_episodes']}, M = {t['batch_pseudo']}. {limits.describe(r['limits'])}.",
        "",
    ]
    return lines + table(
        [{**run, "gflop": run["flops"] / 1e9, "limits": limits.cells(run)} for run in r["runs"]],
        {
            "shot": "{shot}",
            "iterations": "{iterations}",
            "seconds": "{seconds}",
            "iterations/s": "{iterations_per_s}",
            "peak RSS (MB)": "{peak_rss_mb}",
            "GFLOP": "{gflop:.0f}",
            limits.HEADER: "{limits}",
        },
    )


if __name__ == "__main__":
    main()
