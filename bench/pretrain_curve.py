"""Backs docs/data.md, "The encoder's pre-training": the curve its steps were chosen from.

What the encoder's pre-training reaches after each number of steps (each a whole schedule:
warm-up and cosine decay over that many steps), per corpus size: its seconds, final training
loss, held-out accuracy per factor, and the Eq. 2 prototypes' leave-one-out 1-NN accuracy on
the val objects, 20-way and 5-way among a fold's novel classes (bench/synthetic_properties.py),
beside the calibrated random encoder (0 steps). The shipped encoder's steps are where these
stop rising.

    python bench/pretrain_curve.py [--steps 300 1000 3000 6000] [--images 2000]

Writes bench/results/pretrain_curve.json and .md after every row; rows already there (the same
CPU, recipe and threads, else it stops) are kept and not run again: a later call extends the
curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from record import arguments, describe, machine, run_stage, save, scratch
from synthetic_properties import factors, object_prototypes, prototype_neighbours, val_features

from latentfss.datasets.index import read_index
from latentfss.encoder import load_encoder

REPO = Path(__file__).resolve().parents[1]


def measure(config: dict, tmp: Path, weights: str, name: str, threads: int) -> dict:
    """The prototypes' 1-NN accuracy with the encoder the pipeline makes of `weights`."""
    encoder = {**config["encoder"], "weights": weights}
    run_stage(  # the initial encoder as the pipeline makes it (calibrated if random)
        "extract-features",
        index=tmp / "dataset",
        encoder_out=tmp / f"init_{name}.pt",
        encoder=json.dumps(encoder),
        params=json.dumps({"input_size": config["annotation"]["input_size"]}),
        seed=config["seed"],
        threads=threads,
    )
    index = read_index(tmp / "dataset")
    feats = val_features(load_encoder(tmp / f"init_{name}.pt"), index.split("val"))
    objects = object_prototypes(index, feats, config["protocol"]["min_support_pixels"])
    return prototype_neighbours(objects, factors(index))


def recipe(pretrain: dict) -> dict:
    """The pretrain section but for what the curve varies."""
    return {k: v for k, v in pretrain.items() if k not in ("steps", "images")}


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1000, 3000, 6000])
    parser.add_argument("--images", type=int, nargs="+", help="corpus sizes (config's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    results = {"threads": args.threads, "pretrain": recipe(config["pretrain"]), "rows": []}
    earlier = args.out / "pretrain_curve.json"
    if earlier.is_file():  # the curve so far: extended when measured alike, else kept as it is
        kept = json.loads(earlier.read_text())
        alike = (kept["machine"]["cpu"], kept["threads"], recipe(kept["pretrain"]))
        if alike != (machine()["cpu"], args.threads, results["pretrain"]):
            parser.error(
                f"{earlier} was measured on another CPU, threads or recipe; --out elsewhere"
            )
        results["rows"] = kept["rows"]
    done = {(row["images"], row["steps"]) for row in results["rows"]}
    with scratch() as tmp:
        tmp = Path(tmp)
        run_stage("make-synthetic", out=tmp / "voc", params=json.dumps(config["synthetic"]))
        dataset = json.dumps({"root": str(tmp / "voc")})
        run_stage("prepare", out=tmp / "dataset", params=dataset, threads=args.threads)
        runs = [(0, 0)] + [
            (images, steps)
            for images in args.images or [config["pretrain"]["images"]]
            for steps in args.steps
        ]
        for images, steps in (run for run in runs if run not in done):
            row = {"images": images, "steps": steps, "seconds": 0.0, "heldout_accuracy": {}}
            weights = "none"
            if steps:
                weights = str(tmp / f"pretrained_{images}_{steps}.pt")
                timing = run_stage(
                    "pretrain-encoder",
                    out=weights,
                    params=json.dumps({**config["pretrain"], "steps": steps, "images": images}),
                    synthetic=json.dumps(config["synthetic"]),
                    encoder=json.dumps({"arch": config["encoder"]["arch"]}),
                    seed=config["seed"],
                    threads=args.threads,
                )
                saved = torch.load(weights, weights_only=True)
                row.update(
                    seconds=timing["seconds"],
                    final_loss=saved["losses"][-1]["loss"],
                    heldout_accuracy=saved["heldout_accuracy"],
                )
            row["neighbours"] = measure(config, tmp, weights, f"{images}_{steps}", args.threads)
            results["rows"].append(row)
            save(results, markdown, args.out, "pretrain_curve")


def markdown(r: dict) -> list[str]:
    heldout = r["pretrain"]["heldout"]
    lines = [
        "## The encoder's pre-training curve (`bench/pretrain_curve.py`)",
        "",
        f"Machine: {describe(r['machine'])}; {r['threads']} torch thread(s). "
        "`latentfss pretrain-encoder` at config.yaml's settings but for its steps and corpus "
        "images (0 steps: the calibrated random encoder): its seconds (process start and the "
        "corpus rendering included), the training loss of its last steps, its held-out "
        f"accuracy (a crop of each of {heldout} held-out images, every value of the factor "
        "right), and the leave-one-out 1-NN accuracy of Eq. 2 prototypes of the val objects "
        "(`bench/synthetic_properties.py`).",
        "",
        "| corpus images | steps | seconds | final loss | held-out colour | held-out pattern "
        "| proto 20-way | same colour | same pattern | proto 5-way novel |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        n, acc = row["neighbours"], row["heldout_accuracy"]
        held = [f"{acc[k]:.1%}" if k in acc else "-" for k in ("colour", "pattern")]
        loss = f"{row['final_loss']:.3f}" if "final_loss" in row else "-"
        lines.append(
            f"| {row['images'] or '-'} | {row['steps']} | {row['seconds']:.0f} | {loss} "
            f"| {held[0]} | {held[1]} | {n['prototype_20way']:.1%} "
            f"| {n['prototype_same_factor0']:.0%} | {n['prototype_same_factor1']:.0%} "
            f"| {n['prototype_5way_novel']:.1%} |"
        )
    return lines


if __name__ == "__main__":
    main()
