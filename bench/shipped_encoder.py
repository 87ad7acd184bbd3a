"""Backs docs/data.md, "The encoder's pre-training": the recipe makes the shipped encoder again.

`encoder.weights: pretrain` runs the recipe of the shipped `synthetic` encoder (config.yaml's
`pretrain` section and seed) on this machine. This runs it with each number of torch threads
given (another float summation order, as another machine has) and compares the re-made
encoder with the shipped one: whether its weights are the same bits, the cosine of their
layer3 features on the val images, and each property (held-out accuracy per factor, the Eq. 2
prototypes' 1-NN accuracy as in bench/pretrain_curve.py) within TOLERANCE points of the
shipped encoder's.

    python bench/shipped_encoder.py [--remake-threads 2 1]

Writes bench/results/shipped_encoder.json and .md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pretrain_curve import measure
from record import arguments, describe, run_stage, save, scratch
from synthetic_properties import val_features

from latentfss.datasets.index import read_index
from latentfss.encoder import SYNTHETIC, load_encoder

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 3.0  # points: a re-made encoder's properties lie this close to the shipped one's
PROPERTIES = ("heldout_colour", "heldout_pattern", "prototype_20way", "prototype_5way_novel")


def properties(saved: dict, neighbours: dict) -> dict:
    """The compared properties, in percent."""
    accuracy = saved["heldout_accuracy"]
    return {
        "heldout_colour": round(100 * accuracy["colour"], 1),
        "heldout_pattern": round(100 * accuracy["pattern"], 1),
        "prototype_20way": round(100 * neighbours["prototype_20way"], 1),
        "prototype_5way_novel": round(100 * neighbours["prototype_5way_novel"], 1),
    }


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument("--remake-threads", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    shipped = torch.load(SYNTHETIC, weights_only=True)
    rows = []
    with scratch() as tmp:
        tmp = Path(tmp)
        run_stage("make-synthetic", out=tmp / "voc", params=json.dumps(config["synthetic"]))
        dataset = json.dumps({"root": str(tmp / "voc")})
        run_stage("prepare", out=tmp / "dataset", params=dataset, threads=args.threads)
        val = read_index(tmp / "dataset").split("val")
        shipped_row = properties(
            shipped, measure(config, tmp, "synthetic", "shipped", args.threads)
        )
        reference = val_features(load_encoder(tmp / "init_shipped.pt"), val)
        for threads in args.remake_threads:
            weights = tmp / f"remade{threads}.pt"
            timing = run_stage(
                "pretrain-encoder",
                out=weights,
                params=json.dumps(config["pretrain"]),
                synthetic=json.dumps(config["synthetic"]),
                encoder=json.dumps({"arch": config["encoder"]["arch"]}),
                seed=config["seed"],
                threads=threads,
            )
            remade = torch.load(weights, weights_only=True)
            name = f"remade{threads}"
            row = properties(remade, measure(config, tmp, str(weights), name, args.threads))
            feats = val_features(load_encoder(tmp / f"init_{name}.pt"), val)
            cosines = [
                float(F.cosine_similarity(feats[i], reference[i], dim=0).mean()) for i in feats
            ]
            same = all(
                torch.equal(remade["state_dict"][k], v) for k, v in shipped["state_dict"].items()
            )
            rows.append(
                {
                    "threads": threads,
                    "seconds": timing["seconds"],
                    "same_bits": same,
                    "layer3_cosine": round(float(np.mean(cosines)), 4),
                    **row,
                    "within": all(abs(row[p] - shipped_row[p]) <= TOLERANCE for p in PROPERTIES),
                }
            )
            print(json.dumps(rows[-1]))
    results = {
        "tolerance": TOLERANCE,
        "shipped": {**shipped_row, "machine": shipped["machine"], "seed": shipped["seed"]},
        "rows": rows,
    }
    save(results, markdown, args.out, "shipped_encoder")


def markdown(r: dict) -> list[str]:
    s = r["shipped"]
    lines = [
        "## The recipe makes the shipped encoder again (`bench/shipped_encoder.py`)",
        "",
        f"Machine: {describe(r['machine'])}. The shipped encoder was made on: "
        f"{s['machine']['cpu']} ({', '.join(s['machine']['vector_extensions'])}), torch "
        f"{s['machine']['torch']}, {s['machine']['torch_threads']} torch threads. Re-made: "
        "config.yaml's `pretrain` recipe and seed (`encoder.weights: pretrain`) with each number "
        "of torch threads; same bits: every weight equal to the shipped one's; layer3 cosine: "
        "of the two encoders' features at a pixel, averaged over each val image, then over the "
        "images. Held-out accuracy "
        "and the prototypes' 1-NN accuracy as in `bench/pretrain_curve.py`; within: every "
        f"property within {r['tolerance']:.0f} points of the shipped encoder's.",
        "",
        "| encoder | torch threads | seconds | same bits | layer3 cosine | held-out colour "
        "| held-out pattern | proto 20-way | proto 5-way novel | within |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
        f"| shipped | {s['machine']['torch_threads']} | - | - | - | {s['heldout_colour']:.1f} "
        f"| {s['heldout_pattern']:.1f} | {s['prototype_20way']:.1f} "
        f"| {s['prototype_5way_novel']:.1f} | - |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| re-made | {row['threads']} | {row['seconds']:.0f} "
            f"| {'yes' if row['same_bits'] else 'no'} | {row['layer3_cosine']:.3f} "
            f"| {row['heldout_colour']:.1f} | {row['heldout_pattern']:.1f} "
            f"| {row['prototype_20way']:.1f} | {row['prototype_5way_novel']:.1f} "
            f"| {'yes' if row['within'] else 'no'} |"
        )
    return lines


if __name__ == "__main__":
    main()
