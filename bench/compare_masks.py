"""Backs docs/data.md, "Real data": our PASCAL masks against SegmentationClassAug.

    python bench/compare_masks.py results/pascal/dataset /data/VOC2012/SegmentationClassAug

Prints a Markdown table; with --out, also writes it and the counts as JSON there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentfss.datasets.images import read_mask
from latentfss.datasets.index import read_index

IGNORE = 255
FIELDS = ("images", "differ", "pixels", "px_differ", "px_label_differ")


def compare(index_dir: Path, aug_dir: Path) -> dict[str, dict[str, int]]:
    """Per mask source ('VOC2012', 'SBD'): images, differing images, pixels, differing pixels,
    and differing pixels where neither mask is 255 (a label changed, not a boundary band)."""
    index = read_index(index_dir)
    counts = {}
    for _, row in index.images.iterrows():
        ours = read_mask(row["mask"], index.num_classes)
        theirs = read_mask(aug_dir / f"{row['name']}.png", index.num_classes)
        if ours.shape != theirs.shape:
            raise SystemExit(f"{row['name']}: masks of different sizes")
        converted = Path(row["mask"]).is_relative_to(index_dir.resolve())  # under masks/
        c = counts.setdefault("SBD" if converted else "VOC2012", dict.fromkeys(FIELDS, 0))
        differ = ours != theirs
        c["images"] += 1
        c["differ"] += int(differ.any())
        c["pixels"] += ours.size
        c["px_differ"] += int(differ.sum())
        c["px_label_differ"] += int((differ & (ours != IGNORE) & (theirs != IGNORE)).sum())
    return counts


def table(counts: dict[str, dict[str, int]]) -> str:
    lines = [
        "| masks from | images | images that differ | pixels that differ | of which labels |",
        "|---|---:|---:|---:|---:|",
    ]
    for source, c in counts.items():
        lines.append(
            f"| {source} | {c['images']:,} | {c['differ']:,} | "
            f"{c['px_differ'] / c['pixels']:.3%} | {c['px_label_differ'] / c['pixels']:.3%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="a prepared index (results/pascal/dataset)")
    parser.add_argument("aug", type=Path, help="a SegmentationClassAug folder")
    parser.add_argument("--out", type=Path, help="folder for compare_masks.{md,json}")
    args = parser.parse_args()
    counts = compare(args.index, args.aug)
    print(table(counts), end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare_masks.md").write_text(table(counts))
        (args.out / "compare_masks.json").write_text(json.dumps(counts, indent=2) + "\n")


if __name__ == "__main__":
    main()
