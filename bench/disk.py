"""Backs docs/method.md, "The offline annotation": each preset's scratch disk.

Scratch disk of each preset: the artifacts' sizes before compression, from the datasets'
counts and the presets' shapes (an upper bound: every store is Blosc/Zstd-compressed, and
features.zarr, the one that matters, compresses by about 6%, bench/annotation.py).

    python bench/disk.py

Nothing is deleted during a run, so the peak is the total at the end (plus a train_state.pt,
about 0.1 GB, per running training job). Counts: PASCAL voc_sbd 5,953 train images (PFENet's
list; trainaug: 10,582), at most 500 x 500, of which 4,489 (9,118) have SBD masks converted
when built from the official archives; COCO 2014 train 82,783 images, at most 640 x 640,
123,287 masks converted; ResNet-50 layer3: 1,024 channels, input 473 -> 60 x 60. Pseudo masks:
every fold holds at most every train image, padded to the largest; the region bank at most K
regions per image; prototypes: one per (image, class present), taken as 3 per image.

Writes bench/results/disk.json and disk.md (assembled into docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

from record import save

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
CHANNELS, GRID = 1024, 60
PRESETS = {  # train images, largest image side, K, masks converted by prepare
    "pascal (voc_sbd)": (5_953, 500, 5, 4_489),  # from the official archives: SBD's .mat
    "pascal (trainaug)": (10_582, 500, 5, 9_118),  # masks of images outside VOC2012 train
    "coco": (82_783, 640, 15, 123_287),
}
PARAMETERS = 8.5e6  # the ResNet-50 encoder to layer3 (model.pt without the mining head)
RUNS = 8  # 4 folds x 2 shots


def sizes(images: int, side: int, k: int, converted: int) -> dict[str, float]:
    """GB of each artifact, uncompressed."""
    return {
        "features.zarr": images * CHANNELS * GRID * GRID * 2 / GB,  # float16
        "prototypes.zarr": (3 * images + images) * CHANNELS * 4 / GB,  # fg + bg, float32
        "pseudo masks (4 folds)": 4 * images * side * side / GB,  # uint8, padded
        "region banks (8 runs)": RUNS * images * (k * CHANNELS * 4 + CHANNELS * 4) / GB,
        "models (8)": RUNS * PARAMETERS * 4 / GB,
        "converted masks (PNG, ~10 kB)": converted * 10e3 / GB,
    }


def main() -> None:
    rows = {name: sizes(*counts) for name, counts in PRESETS.items()}
    save({"gb": rows}, markdown, REPO / "bench/results", "disk")


def markdown(results: dict) -> list[str]:
    rows = results["gb"]
    names = list(next(iter(rows.values())))
    lines = [
        "Scratch disk per preset (GB, uncompressed upper bounds; `bench/disk.py` gives the "
        "counts and shapes it assumes):",
        "",
        "| artifact | " + " | ".join(rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r[name]:,.1f}" for r in rows.values()) + " |")
    for keep in (True, False):
        total = [
            sum(v for n, v in r.items() if keep or n != "features.zarr") for r in rows.values()
        ]
        label = "total, keep_features: " + ("true" if keep else "false")
        lines.append(f"| **{label}** | " + " | ".join(f"**{t:,.0f}**" for t in total) + " |")
    return lines


if __name__ == "__main__":
    main()
