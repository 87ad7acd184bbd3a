"""Training samples: episodes of base classes with ground-truth masks, and images with pseudo masks.

Sample k of either stream is built from its own random generator seeded by (seed, stream, k), so
the batches do not depend on the number of loader workers, and a resumed run continues the same
stream from the sample where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import Dataset

from latentfss.augment import scale_crop_flip
from latentfss.datasets.images import read_image, read_mask
from latentfss.episodes import binary_mask, training_mask
from latentfss.errors import InputError

EPISODES, PSEUDO = 0, 1  # stream ids in the generators' seeds


class EpisodeSamples(Dataset):
    """Sample k: a base class c, a query and `shots` other support images holding c, with the
    episode's binary labels (c = 1, every other class 0, 255 ignored; novel classes are already
    background, as in every training image)."""

    def __init__(self, images: pd.DataFrame, class_lists: dict[int, np.ndarray],
                 novel: tuple[int, ...], num_classes: int, shots: int, crop: int,
                 scale: tuple[float, float], seed: int) -> None:  # fmt: skip
        self.lists = {c: ids for c, ids in class_lists.items() if len(ids) > shots}
        if not self.lists:
            raise InputError(f"no base class has {shots + 1} training images to make an episode")
        self.classes = sorted(self.lists)
        self.paths = images[["image", "mask"]]
        self.novel, self.num_classes, self.shots = novel, num_classes, shots
        self.crop, self.scale, self.seed = crop, scale, seed

    def __len__(self) -> int:
        return 2**62  # an endless stream, indexed by sample number

    def _load(self, image_id: int, class_id: int, rng: np.random.Generator) -> tuple:
        image_path, mask_path = self.paths.loc[image_id]
        mask = training_mask(read_mask(mask_path, self.num_classes), self.novel)
        image, labels = scale_crop_flip(read_image(image_path), binary_mask(mask, class_id), rng,
                                        self.crop, self.scale)  # fmt: skip
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, EPISODES, k])
        class_id = self.classes[rng.integers(len(self.classes))]
        query, *supports = rng.choice(self.lists[class_id], self.shots + 1, replace=False)
        query_image, query_mask = self._load(query, class_id, rng)
        shots = [self._load(s, class_id, rng) for s in supports]
        return {"query": query_image, "query_mask": query_mask,
                "supports": torch.stack([s[0] for s in shots]),
                "support_masks": torch.stack([s[1] for s in shots])}  # fmt: skip


class PseudoSamples(Dataset):
    """Sample k: a random row of pseudo_masks.zarr (a train image, or an unlabelled one) and its
    pseudo mask, jointly rescaled, cropped and flipped."""

    def __init__(self, pseudo_masks: Path, images: pd.DataFrame, crop: int,
                 scale: tuple[float, float], seed: int) -> None:  # fmt: skip
        self.store_path = str(pseudo_masks)
        group = zarr.open_group(self.store_path, mode="r")
        image_ids, extra = group["image_id"][:], group.attrs["unlabeled"]
        labelled = images.loc[image_ids[image_ids >= 0], "image"].tolist()
        self.paths = labelled + list(extra)
        self.sizes = np.stack([group["height"][:], group["width"][:]], axis=1)
        self.crop, self.scale, self.seed = crop, scale, seed
        self.masks = None  # opened in each loader worker

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if self.masks is None:
            self.masks = zarr.open_group(self.store_path, mode="r")["masks"]
        rng = np.random.default_rng([self.seed, PSEUDO, k])
        row = int(rng.integers(len(self.paths)))
        height, width = self.sizes[row]
        mask = self.masks[row, :height, :width]
        image, labels = scale_crop_flip(read_image(self.paths[row]), mask, rng, self.crop,
                                        self.scale)  # fmt: skip
        return {"image": torch.from_numpy(image).permute(2, 0, 1),
                "mask": torch.from_numpy(labels)}  # fmt: skip
