"""The prepared index (results/{dataset}/dataset/): later stages read it, never the raw tree.

images.csv   one row per image; its row number is the `image_id` every artifact refers to.
             columns: name (file stem), split (train | val), image, mask, height, width;
             image and mask relative to this folder where they move with the project (a
             relative dataset.root, masks converted into masks/), absolute otherwise
pixels.csv   long table of labelled pixels: image_id, class_id (0 = background), pixels
meta.json    dataset name, root (where it was, for provenance: not read back), train list,
             num_classes, class_names, counts, code version
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from latentfss.errors import InputError

IMAGE_COLUMNS = ("name", "split", "image", "mask", "height", "width")
PIXEL_COLUMNS = ("image_id", "class_id", "pixels")


@dataclass(frozen=True)
class DatasetIndex:
    images: pd.DataFrame
    pixels: pd.DataFrame
    meta: dict

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def split(self, name: str) -> pd.DataFrame:
        """The rows of one split; the frame's index holds their image_ids."""
        return self.images[self.images["split"] == name]


def portable(paths: pd.Series, index_dir: Path, movable: bool) -> pd.Series:
    """Absolute `paths` as images.csv keeps them: relative to `index_dir` (where the index
    will live) if they move with it (`movable`, or inside it), else as they are."""
    index_dir = index_dir.absolute()
    return paths.map(
        lambda p: (
            os.path.relpath(p, index_dir) if movable or Path(p).is_relative_to(index_dir) else p
        )
    )


def write_index(out_dir: Path, images: pd.DataFrame, pixels: pd.DataFrame, meta: dict) -> None:
    images.loc[:, list(IMAGE_COLUMNS)].to_csv(out_dir / "images.csv", index=False)
    pixels.loc[:, list(PIXEL_COLUMNS)].to_csv(out_dir / "pixels.csv", index=False)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_index(index_dir: str | Path) -> DatasetIndex:
    index_dir = Path(index_dir)
    try:
        meta = json.loads((index_dir / "meta.json").read_text())
        images = pd.read_csv(index_dir / "images.csv", dtype={"name": str})
        pixels = pd.read_csv(index_dir / "pixels.csv")
    except FileNotFoundError as e:
        raise InputError(f"{e.filename}: missing; run `latentfss prepare` first") from None
    for column in ("image", "mask"):
        images[column] = [os.path.normpath(index_dir / p) for p in images[column]]
    return DatasetIndex(images, pixels, meta)
