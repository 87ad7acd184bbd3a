"""Foreground rectification with a region bank (section 3.4, Eq. 8-9).

The bank holds, for every train image, an image embedding (average-pooled layer3, L2-normalised,
in a faiss inner-product index) and one region prototype per pseudo-mask label present (its
sub-cluster regions 1..K). Given a support, the top-N train images by embedding cosine are
found; in each, the region most similar to the support prototype p_s; then
    p_s <- (1 - beta) p_s + beta sum_i mu_i p_r_i,   mu_i = cos(p_r_i, p_s) / sum_j cos(p_r_j, p_s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from latentfss import store
from latentfss.errors import InputError
from latentfss.fs import DAMAGED, atomic_dir

log = logging.getLogger(__name__)


def inner_product_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index (cosine, as the rows are unit vectors), on the CPU."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def on_device(index: faiss.Index, device: torch.device) -> faiss.Index:
    """The index on the job's GPU when the job runs on one and faiss sees GPUs (faiss-gpu),
    else as it is."""
    if device.type != "cuda" or faiss.get_num_gpus() == 0:
        return index
    return faiss.index_cpu_to_gpus_list(index, gpus=[device.index or 0])


@dataclass
class RegionBank:
    """Regions sorted by image: those of train image i are rows offsets[i]:offsets[i + 1]; and
    the rectification's N (`top_n`) and beta."""

    index: faiss.Index
    regions: torch.Tensor  # (R, C) region prototypes
    offsets: torch.Tensor  # (N + 1,) int64, on the regions' device
    top_n: int = 4
    beta: float = 0.2

    def nearest_images(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C) unit embeddings -> (B, top_n) train-image rows, most similar first."""
        query = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
        return torch.from_numpy(self.index.search(query, self.top_n)[1]).to(self.offsets.device)

    def relevant(
        self, prototypes: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The regions Eq. 8 mixes, for a batch, with one search: support fg prototypes (B, C)
        and unit image embeddings (B, C) -> the top-N images (B, N), in each the row of the
        region most similar to the prototype (B, N; -1 where the image has no region) and
        its weight mu (Eq. 9; B, N, 0 where none; all 0 where no image has a region)."""
        images = self.nearest_images(embeddings)  # (B, N)
        first, count = self.offsets[images], self.offsets[images + 1] - self.offsets[images]
        widest = max(int(count.max()), 1)
        slot = torch.arange(widest, device=images.device)
        present = slot < count[..., None]  # (B, N, S): slot s holds region first + s
        rows = torch.where(present, first[..., None] + slot, 0)
        cos = F.cosine_similarity(
            self.regions[rows].to(prototypes), prototypes[:, None, None], dim=-1
        )
        best, pick = cos.masked_fill(~present, -torch.inf).max(dim=-1)  # (B, N)
        weight = torch.where(count > 0, best, 0.0)
        total = weight.sum(dim=1, keepdim=True)
        mu = torch.where(total != 0, weight / total, 0.0)  # Eq. 9
        return images, torch.where(count > 0, rows.gather(2, pick[..., None])[..., 0], -1), mu

    def rectify(self, prototypes: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Eq. 8-9 for a batch: support fg prototypes (B, C) and unit image embeddings (B, C)
        -> (B, C). An image without regions offers none; a support whose N images have none is
        left as it is."""
        _, rows, mu = self.relevant(prototypes, embeddings)
        picked = self.regions[rows.clamp(min=0)].to(prototypes)  # (B, N, C)
        relevant = (mu[..., None] * picked).sum(dim=1)
        rectified = (1 - self.beta) * prototypes + self.beta * relevant  # Eq. 8
        return torch.where((rows >= 0).any(dim=1, keepdim=True), rectified, prototypes)


def save_bank(path: Path, embeddings: np.ndarray, regions: dict[str, np.ndarray], **attrs) -> None:
    """The bank directory `load_bank` reads: images.faiss (an inner-product index of the image
    embeddings, row i = train image i) and regions.zarr (`regions`' arrays: prototypes (R, C),
    image (R,) sorted, label, pixels; image_id (N,); `attrs`: what it was built for)."""
    with atomic_dir(path) as tmp:
        # Python's write, not faiss's: a full disk is then an OSError atomic_dir names
        index = faiss.serialize_index(inner_product_index(embeddings))
        (tmp / "images.faiss").write_bytes(index.tobytes())
        group = store.create_group(tmp / "regions.zarr", **attrs)
        for name, values in regions.items():
            store.write_array(group, name, values)


def load_bank(
    path, top_n: int, beta: float, device: torch.device, built_for: dict | None = None
) -> RegionBank:
    """A bank written by `latentfss build-bank` (images.faiss and regions.zarr), its regions
    on `device`. `built_for`: the attrs it must have been built with (the model's identity,
    the resize mode), else one line says to build it again."""
    path = Path(path)
    group = store.open_group(path / "regions.zarr", "build-bank")
    differ = [key for key, value in (built_for or {}).items() if group.attrs.get(key) != value]
    if differ:
        raise InputError(
            f"{path}: built for another {', '.join(differ)}; run `latentfss build-bank` again"
        )
    try:
        index = faiss.read_index(str(path / "images.faiss"))
    except RuntimeError:  # faiss names neither the file nor the fault
        raise InputError(
            f"{path / 'images.faiss'}: damaged or not a faiss index; {DAMAGED}"
        ) from None
    index = on_device(index, device)
    where = "the GPU" if device.type == "cuda" and faiss.get_num_gpus() else "the CPU"
    log.info("region bank %s: %d images, faiss index on %s", path, index.ntotal, where)
    image = group["image"][:]  # sorted: regions were written image by image
    offsets = np.concatenate([[0], np.cumsum(np.bincount(image, minlength=index.ntotal))])
    regions = torch.from_numpy(group["prototypes"][:]).to(device)
    return RegionBank(index, regions, torch.from_numpy(offsets).to(device), top_n, beta)
