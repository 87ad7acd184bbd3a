"""Test episodes as tensors: query and supports resized to the input size, the query's label at
its original resolution (predictions are scored there, as in the paper)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from latentfss.datasets.images import read_image, read_mask
from latentfss.episodes import binary_mask


def resized(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3), (H, W) -> (3, S, S) uint8 image (bilinear) and (S, S) mask (nearest)."""
    image = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    mask = Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.from_numpy(np.array(mask))


class TestEpisodes(Dataset):
    def __init__(self, episodes: pd.DataFrame, images: pd.DataFrame, num_classes: int,
                 size: int) -> None:  # fmt: skip
        self.episodes, self.paths = episodes.reset_index(drop=True), images[["image", "mask"]]
        self.num_classes, self.size = num_classes, size

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(self, image_id: int, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.paths.loc[image_id]
        return read_image(image_path), binary_mask(read_mask(mask_path, self.num_classes), class_id)

    def __getitem__(self, i: int) -> dict:
        row = self.episodes.loc[i]
        image, label = self._load(row["query"], row["class_id"])
        query, _ = resized(image, label, self.size)
        shots = [resized(*self._load(int(s), row["class_id"]), self.size)
                 for s in str(row["supports"]).split()]  # fmt: skip
        return {"query": query, "label": torch.from_numpy(label),
                "supports": torch.stack([s[0] for s in shots]),
                "support_masks": torch.stack([s[1] for s in shots]),
                "class_id": int(row["class_id"])}  # fmt: skip


def collate(samples: list[dict]) -> dict:
    """Stack the fixed-size tensors; labels keep their own sizes (a list)."""
    return {"query": torch.stack([s["query"] for s in samples]),
            "supports": torch.stack([s["supports"] for s in samples]),
            "support_masks": torch.stack([s["support_masks"] for s in samples]),
            "labels": [s["label"] for s in samples],
            "class_ids": [s["class_id"] for s in samples]}  # fmt: skip
