"""Backs docs/data.md, "The encoder's pre-training": what its steps buy.

What the encoder's pre-training buys for its share of the default run: its seconds, held-out
accuracy per factor, and the Eq. 2 prototypes' 1-NN accuracy on the val objects
(bench/synthetic_properties.py) after each number of steps, beside the calibrated random
encoder (0 steps).

    python bench/pretrain_budget.py [--steps 100 200 300]

Writes bench/results/pretrain_budget.json and .md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from record import arguments, describe, run_stage, save, scratch
from synthetic_properties import factors, object_prototypes, prototype_neighbours, val_features

from latentfss.datasets.index import read_index
from latentfss.encoder import load_encoder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    min_pixels = config["protocol"]["min_support_pixels"]
    rows = []
    with scratch() as tmp:
        tmp = Path(tmp)
        run_stage("make-synthetic", out=tmp / "voc", params=json.dumps(config["synthetic"]))
        dataset = json.dumps({"root": str(tmp / "voc")})
        run_stage("prepare", out=tmp / "dataset", params=dataset, threads=args.threads)
        index = read_index(tmp / "dataset")
        for steps in [0, *args.steps]:
            encoder = {**config["encoder"], "weights": "none"}
            row = {"steps": steps, "seconds": 0.0, "heldout_accuracy": {}}
            if steps:
                encoder["weights"] = str(tmp / f"pretrained{steps}.pt")
                timing = run_stage(
                    "pretrain-encoder",
                    out=encoder["weights"],
                    params=json.dumps({**config["pretrain"], "steps": steps}),
                    synthetic=json.dumps(config["synthetic"]),
                    encoder=json.dumps({"arch": config["encoder"]["arch"]}),
                    seed=config["seed"],
                    threads=args.threads,
                )
                saved = torch.load(encoder["weights"], weights_only=True)
                row.update(seconds=timing["seconds"], heldout_accuracy=saved["heldout_accuracy"])
            run_stage(  # the initial encoder as the pipeline makes it (calibrated if random)
                "extract-features",
                index=tmp / "dataset",
                encoder_out=tmp / f"init{steps}.pt",
                encoder=json.dumps(encoder),
                params=json.dumps({"input_size": config["annotation"]["input_size"]}),
                seed=config["seed"],
                threads=args.threads,
            )
            feats = val_features(load_encoder(tmp / f"init{steps}.pt"), index.split("val"))
            objects = object_prototypes(index, feats, min_pixels)
            row["neighbours"] = prototype_neighbours(objects, factors(index))
            rows.append(row)
            print(json.dumps(row))
    results = {
        "threads": args.threads,
        "pretrain": config["pretrain"],
        "rows": rows,
    }
    save(results, markdown, args.out, "pretrain_budget")


def markdown(r: dict) -> list[str]:
    lines = [
        "## What the encoder's pre-training buys (`bench/pretrain_budget.py`)",
        "",
        f"Machine: {describe(r['machine'])}; {r['threads']} torch thread(s). "
        "`latentfss pretrain-encoder` at config.yaml's "
        "settings but for its steps (0: the calibrated random encoder), its seconds (process "
        "start and the corpus rendering included), its held-out accuracy (a crop of each "
        "held-out image, every value of the factor right), and the leave-one-out 1-NN "
        "accuracy of Eq. 2 prototypes of the val objects (`bench/synthetic_properties.py`).",
        "",
        "| steps | seconds | held-out colour | held-out pattern | proto 20-way | same colour "
        "| same pattern | proto 5-way novel |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        n, acc = row["neighbours"], row["heldout_accuracy"]
        held = [f"{acc[k]:.1%}" if k in acc else "-" for k in ("colour", "pattern")]
        lines.append(
            f"| {row['steps']} | {row['seconds']:.0f} | {held[0]} | {held[1]} "
            f"| {n['prototype_20way']:.1%} | {n['prototype_same_factor0']:.0%} "
            f"| {n['prototype_same_factor1']:.0%} | {n['prototype_5way_novel']:.1%} |"
        )
    return lines


if __name__ == "__main__":
    main()
