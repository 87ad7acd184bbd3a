"""Backs docs/results.md, "Table 1: the default run": two commits' default runs, bit for bit.

Two finished runs of one config (`snakemake --cores 2` in clones of two commits, e.g. by
bench/default_run.py --run), compared artifact by artifact: the prototypes, each fold's pseudo
masks, each evaluation's model weights (equal, or the largest difference), scores.csv and mIoU
(training seed 0, every row), and row main's means over the folds. A run from before the rows
layout (fold{f}/ at the top of results/synthetic) is read in its own layout.

    python bench/same_bits.py RUN_A RUN_B [--name same_bits]

Writes bench/results/{name}.json and .md.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch
import zarr
from record import arguments, artifact, describe, save, table

from latentfss import layout
from latentfss.episodes import IGNORE

OLD = {  # the layout before rows (commit 5ed1561 and earlier)
    layout.PROTOTYPES: "prototypes.zarr",
    layout.PSEUDO_MASKS: "fold{fold}/pseudo_masks.zarr",
    layout.MODEL: "fold{fold}/shot{shot}/model.pt",
    layout.EVAL: "fold{fold}/shot{shot}/eval",
}


def at(run: Path, pattern: str, **values) -> Path:
    """An artifact of the run, training seed 0 (row main unless `values` say otherwise)."""
    results = run / "results/synthetic"
    if (results / "fold0").is_dir():
        return results / OLD[pattern].format(**values)
    return artifact(results, pattern, **values)


def evaluated(run: Path) -> list[dict]:
    """Each (row, fold, shot) the run evaluated with training seed 0."""
    results = run / "results/synthetic"
    if (results / "fold0").is_dir():
        found = [("main", *e.parts[-3:-1]) for e in results.glob("fold*/shot*/eval")]
    else:
        found = [(e.parts[-5], *e.parts[-3:-1]) for e in results.glob("*/train0/fold*/shot*/eval")]
    keys = sorted({(r != "main", r, int(f[4:]), int(k[4:])) for r, f, k in found})
    return [{"row": r, "fold": f, "shot": k} for _, r, f, k in keys]


def compare(a: Path, b: Path) -> list[dict]:
    rows = []
    for values in evaluated(b):
        masks = [
            zarr.open_group(str(at(r, layout.PSEUDO_MASKS, fold=values["fold"])), mode="r")[
                "masks"
            ][:]
            for r in (a, b)
        ]
        evals = [at(r, layout.EVAL, **values) for r in (a, b)]
        metrics = [json.loads((e / layout.METRICS).read_text()) for e in evals]
        weights = [
            torch.load(r / m["model"])["state_dict"] for r, m in zip((a, b), metrics, strict=True)
        ]
        rows.append(
            {
                **values,
                "masks_equal": bool(np.array_equal(*masks)),
                "labels_differing": int((masks[0] != masks[1]).sum()),
                "labels": int((masks[0] != IGNORE).sum()),
                "weights_max_diff": max(
                    float((weights[0][k].float() - weights[1][k].float()).abs().max())
                    for k in weights[0]
                    if weights[0][k].numel()
                ),
                "scores_equal": (evals[0] / layout.SCORES).read_bytes()
                == (evals[1] / layout.SCORES).read_bytes(),
                "miou_a": round(100 * metrics[0]["miou"], 4),
                "miou_b": round(100 * metrics[1]["miou"], 4),
            }
        )
    return rows


def commit(run: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(run), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("runs", nargs=2, type=Path, help="two run folders (clones that ran)")
    parser.add_argument("--name", default="same_bits")
    args = parser.parse_args()
    a, b = args.runs
    protos = [zarr.open_group(str(at(r, layout.PROTOTYPES)), mode="r")["fg"][:] for r in (a, b)]
    rows = compare(a, b)
    main = [r for r in rows if r["row"] == "main"]
    means = {
        shot: [
            round(float(np.mean([r[k] for r in main if r["shot"] == shot])), 4)
            for k in ("miou_a", "miou_b")
        ]
        for shot in sorted({r["shot"] for r in main})
    }
    results = {
        "commits": [commit(a), commit(b)],
        "prototypes_equal": bool(np.array_equal(*protos)),
        "rows": rows,
        "means": means,
    }
    save(results, markdown, args.out, args.name)


def markdown(r: dict) -> list[str]:
    a, b = r["commits"]
    lines = [
        f"## The runs of {a} and {b}, bit for bit (`bench/same_bits.py`)",
        "",
        f"Machine: {describe(r['machine'])}. Prototypes equal: {r['prototypes_equal']}.",
        "",
    ]
    lines += table(
        [
            {"labels_differing": "-", "labels": "-", **row} for row in r["rows"]
        ],  # older files lack the counts
        {
            "row": "{row}",
            "fold": "{fold}",
            "shot": "{shot}",
            "pseudo masks equal": "{masks_equal}",
            "labels differing": "{labels_differing} of {labels}",
            "weights, largest difference": "{weights_max_diff:.2e}",
            "scores.csv equal": "{scores_equal}",
            f"mIoU {a}": "{miou_a:.4f}",
            f"mIoU {b}": "{miou_b:.4f}",
        },
    )
    means = [
        {"shot": shot, "a": m[0], "b": m[1], "d": m[1] - m[0]} for shot, m in r["means"].items()
    ]
    return lines + [
        "",
        *table(
            means,
            {
                "shot": "{shot}",
                f"mean {a}": "{a:.4f}",
                f"mean {b}": "{b:.4f}",
                "difference": "{d:+.4f}",
            },
        ),
    ]


if __name__ == "__main__":
    main()
