"""What the network sees at test time (`evaluate.resize`): test images, and test episodes.

The query's label stays at its original resolution: predictions are scored there, as in the
paper ("evaluated on their original resolution") and both references.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from latentfss.config import RESIZE_MODES
from latentfss.datasets.images import read_image, read_mask
from latentfss.episodes import IGNORE, binary_mask
from latentfss.prototypes import upsample

QUERY_KEYS = ("image_id", "covered", "input_size", "label")


def at_label(
    logits: torch.Tensor,
    input_size: tuple[int, int],
    covered: tuple[int, int],
    label_size: tuple[int, int],
) -> torch.Tensor:
    """A query's grid logits (B, P, h, w) -> (B, P, H, W) at its label's resolution: upsampled
    so that the part of the (h_in, w_in) input the image covers spans (H, W), padding cut off."""
    (height, width), (covered_h, covered_w) = label_size, covered
    size = (round(input_size[0] * height / covered_h), round(input_size[1] * width / covered_w))
    return upsample(logits, size)[..., :height, :width]


def _resize(
    image: np.ndarray, mask: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    if image.shape[:2] == (height, width):
        return image, mask
    image = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    mask = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image), np.asarray(mask)


def pfenet_size(height: int, width: int, size: int) -> tuple[int, int]:
    """PFENet's test_Resize: an image whose long side exceeds `size` is scaled to it, keeping
    its aspect ratio, each side then floored to a multiple of 8; a smaller one keeps its size."""
    long = max(height, width)
    if long <= size:
        return height, width
    scaled = (size if side == long else int(side * size / long) for side in (height, width))
    return tuple(max(8, side // 8 * 8) for side in scaled)


def network_input(
    image: np.ndarray, mask: np.ndarray, mode: str, size: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(H, W, 3) uint8 image and (H, W) mask -> the network's (3, h, w) uint8 image, its (h, w)
    mask and (h', w'), the top-left part of (h, w) that the image covers (the rest is padding).

    none:   as they are (the authors' test loader: batch 1, no resize);
    square: (size, size), the aspect ratio lost;
    pfenet: `pfenet_size`, zero-padded to (size, size), the mask's padding IGNORE (PFENet's
            test: padded support pixels count for neither foreground nor background).
    Images are resized bilinearly, masks by nearest neighbour.
    """
    if mode == "none":
        covered = image.shape[:2]
    elif mode == "square":
        image, mask = _resize(image, mask, size, size)
        covered = (size, size)
    elif mode == "pfenet":
        covered = pfenet_size(*image.shape[:2], size)
        small_image, small_mask = _resize(image, mask, *covered)
        image = np.zeros((size, size, 3), np.uint8)
        mask = np.full((size, size), IGNORE, np.uint8)
        image[: covered[0], : covered[1]] = small_image
        mask[: covered[0], : covered[1]] = small_mask
    else:
        raise ValueError(f"unknown resize mode {mode!r} ({' | '.join(RESIZE_MODES)})")
    image = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    return image, torch.from_numpy(np.array(mask)), tuple(covered)


class TestImages(Dataset):
    """Image i of a list as the network sees it (`network_input`): its (3, h, w) uint8 image
    and (h, w) class-index mask (supports' binary masks come from it), the part `covered`, and
    its `label`, the class-index mask at the original size (queries' labels come from it).
    A query needs only QUERY_KEYS."""

    def __init__(
        self, image_ids: list[int], images: pd.DataFrame, num_classes: int, resize: str, size: int
    ) -> None:
        self.image_ids, self.paths = list(image_ids), images[["image", "mask"]]
        self.num_classes, self.resize, self.size = num_classes, resize, size

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict:
        image_path, mask_path = self.paths.loc[self.image_ids[i]]
        label = read_mask(mask_path, self.num_classes)
        image, mask, covered = network_input(read_image(image_path), label, self.resize, self.size)
        return {
            "image_id": self.image_ids[i],
            "image": image,
            "mask": mask,  # tensors, as the image, for `pack`: a batch's images cross faster
            # through shared memory than through the pipe (small masks do not: MaskFiles)
            "covered": covered,
            "input_size": tuple(image.shape[1:]),
            "label": mask if self.resize == "none" else torch.tensor(label),
        }


class TestEpisodes(Dataset):
    """Episode i: the query and supports as the network sees them (`network_input`), the
    supports' binary masks likewise, and the query's binary label at its original `size`."""

    def __init__(
        self, episodes: pd.DataFrame, images: pd.DataFrame, num_classes: int, resize: str, size: int
    ) -> None:
        self.episodes, self.paths = episodes.reset_index(drop=True), images[["image", "mask"]]
        self.num_classes, self.resize, self.size = num_classes, resize, size

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(self, image_id: int, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.paths.loc[image_id]
        return read_image(image_path), binary_mask(read_mask(mask_path, self.num_classes), class_id)

    def __getitem__(self, i: int) -> dict:
        row = self.episodes.loc[i]
        class_id = int(row["class_id"])
        image, label = self._load(int(row["query"]), class_id)
        query, _, covered = network_input(image, label, self.resize, self.size)
        shots = [
            network_input(*self._load(int(s), class_id), self.resize, self.size)
            for s in str(row["supports"]).split()
        ]
        return {
            "query": query,
            "covered": covered,
            "size": label.shape,
            "label": torch.from_numpy(label),
            "supports": [s[0] for s in shots],
            "support_masks": [s[1] for s in shots],
            "class_id": class_id,
        }


class Slot(NamedTuple):
    """Where a packed tensor lies in its batch's `data`."""

    start: int
    shape: tuple[int, ...]


class Packed(NamedTuple):
    """A batch of items whose images may differ in size: their tensors (uint8 all) one after
    another in `data`, and the items with a `Slot` in place of each."""

    data: torch.Tensor
    items: list


def pack(items: list) -> Packed:
    """Dataset items (dicts or tuples), in a loader worker -> a `Packed` batch: it crosses to
    the main process as one shared-memory file, where each tensor would be one, fetched from
    the busy worker over a socket of its own. A tensor an item holds twice is packed once."""
    parts, slots = [], {}

    def slot(value):
        if not torch.is_tensor(value):
            return value
        if id(value) not in slots:
            slots[id(value)] = Slot(sum(map(len, parts)), tuple(value.shape))
            parts.append(value.reshape(-1))
        return slots[id(value)]

    items = [_map(slot, item) for item in items]
    return Packed(torch.cat(parts), items)


def unpack(batch: Packed) -> list:
    """A `Packed` batch -> its items, each tensor a view of `data` (so a view kept past the
    batch keeps all of it: clone what you keep)."""

    def tensor(value):
        if not isinstance(value, Slot):
            return value
        return batch.data[value.start : value.start + math.prod(value.shape)].view(value.shape)

    return [_map(tensor, item) for item in batch.items]


def _map(f, item):
    """f on each value of a dict or tuple item."""
    return {k: f(v) for k, v in item.items()} if isinstance(item, dict) else tuple(map(f, item))
