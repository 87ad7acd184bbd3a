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
from torch.utils.data import Dataset

from latentfss import store
from latentfss.augment import scale_crop_flip
from latentfss.datasets.images import read_image, read_mask
from latentfss.episodes import EpisodeSampler, binary_mask

EPISODES, PSEUDO = 0, 1  # stream ids in the generators' seeds


class EpisodeSamples(Dataset):
    """Sample k: an episode of the fold's base classes drawn by `sampler` (a query and `shots`
    supports of one class), with its binary labels (the class = 1, every other pixel 0, 255
    ignored), each image jointly rescaled, cropped and flipped with its label."""

    def __init__(
        self,
        images: pd.DataFrame,
        sampler: EpisodeSampler,
        num_classes: int,
        crop: int,
        scale: tuple[float, float],
        seed: int,
    ) -> None:
        self.paths, self.sampler, self.num_classes = images[["image", "mask"]], sampler, num_classes
        self.crop, self.scale, self.seed = crop, scale, seed

    def __len__(self) -> int:
        return 2**62  # an endless stream, indexed by sample number

    def _load(self, image_id: int, class_id: int, rng: np.random.Generator) -> tuple:
        image_path, mask_path = self.paths.loc[image_id]
        labels = binary_mask(read_mask(mask_path, self.num_classes), class_id)
        image, labels = scale_crop_flip(read_image(image_path), labels, rng, self.crop, self.scale)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, EPISODES, k])
        query, class_id, supports = self.sampler.draw(rng)
        query_image, query_mask = self._load(query, class_id, rng)
        shots = [self._load(s, class_id, rng) for s in supports]
        return {
            "query": query_image,
            "query_mask": query_mask,
            "supports": torch.stack([s[0] for s in shots]),
            "support_masks": torch.stack([s[1] for s in shots]),
        }


class PseudoSamples(Dataset):
    """Sample k: a random row of the mining stream with its pseudo mask, jointly rescaled,
    cropped and flipped. The stream is the rows of the given pseudo_masks.zarr stores: the
    fold's train set (and any `mining.unlabeled` images), plus Remain with `mining.remain`."""

    def __init__(
        self,
        stores: list[Path],
        images: pd.DataFrame,
        crop: int,
        scale: tuple[float, float],
        seed: int,
    ) -> None:
        self.store_paths, self.paths, self.rows, sizes = [str(p) for p in stores], [], [], []
        for number, path in enumerate(self.store_paths):
            group = store.open_group(path, "write-pseudo-masks")
            image_ids, extra = group["image_id"][:], group.attrs["unlabeled"]
            self.paths += images.loc[image_ids[image_ids >= 0], "image"].tolist() + list(extra)
            self.rows += [(number, row) for row in range(len(image_ids))]
            sizes.append(np.stack([group["height"][:], group["width"][:]], axis=1))
        self.sizes = np.concatenate(sizes)
        self.crop, self.scale, self.seed = crop, scale, seed
        self.masks = None  # opened in each loader worker

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if self.masks is None:
            self.masks = [
                store.open_group(p, "write-pseudo-masks")["masks"] for p in self.store_paths
            ]
        rng = np.random.default_rng([self.seed, PSEUDO, k])
        i = int(rng.integers(len(self.paths)))
        (number, row), (height, width) = self.rows[i], self.sizes[i]
        mask = self.masks[number][row, :height, :width]
        image, labels = scale_crop_flip(read_image(self.paths[i]), mask, rng, self.crop, self.scale)
        return {"image": torch.from_numpy(image).permute(2, 0, 1), "mask": torch.from_numpy(labels)}
