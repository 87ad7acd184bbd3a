"""The prepared index (results/{dataset}/dataset/): later stages read it, never the raw tree.

images.csv   one row per image; its row number is the `image_id` every artifact refers to.
             columns: name (file stem), split (train | val), image, mask (absolute paths),
             height, width
pixels.csv   long table of labelled pixels: image_id, class_id (0 = background), pixels
meta.json    dataset name, root, train list, num_classes, class_names, counts, code version
"""

from __future__ import annotations

import json
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
    return DatasetIndex(images, pixels, meta)
