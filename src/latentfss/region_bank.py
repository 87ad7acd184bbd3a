"""Foreground rectification with a region bank (section 3.4, Eq. 8-9).

The bank holds, for every train image, an image embedding (average-pooled layer3, L2-normalised,
in a faiss inner-product index) and one region prototype per pseudo-mask label present (its
sub-cluster regions 1..K). Given a support, the top-N train images by embedding cosine are
found; in each, the region most similar to the support prototype p_s; then
    p_s <- (1 - beta) p_s + beta sum_i mu_i p_r_i,   mu_i = cos(p_r_i, p_s) / sum_j cos(p_r_j, p_s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from latentfss import store


def image_embedding(feats: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) layer3 features -> (B, C) L2-normalised average pools."""
    return F.normalize(feats.float().mean(dim=(2, 3)), dim=1)


def inner_product_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index (cosine, as the rows are unit vectors); on the GPU when
    faiss sees one."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


@dataclass
class RegionBank:
    """Regions sorted by image: those of train image i are rows offsets[i]:offsets[i + 1]."""

    index: faiss.Index
    regions: torch.Tensor  # (R, C) region prototypes
    offsets: np.ndarray  # (N + 1,) int64

    def nearest_images(self, embeddings: torch.Tensor, top_n: int) -> np.ndarray:
        """(B, C) unit embeddings -> (B, top_n) train-image rows, most similar first."""
        query = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
        return self.index.search(query, top_n)[1]

    def rectify(self, prototypes: torch.Tensor, embeddings: torch.Tensor, top_n: int,
                beta: float) -> torch.Tensor:  # fmt: skip
        """Eq. 8-9 for a batch: prototypes (B, C) support fg, embeddings (B, C) -> (B, C)."""
        out = prototypes.clone()
        for b, images in enumerate(self.nearest_images(embeddings, top_n)):
            best = []
            for image in images:
                rows = self.regions[self.offsets[image] : self.offsets[image + 1]]
                if len(rows):
                    cos = F.cosine_similarity(rows.to(prototypes), prototypes[b][None], dim=1)
                    best.append((rows[cos.argmax()].to(prototypes), cos.max()))
            if not best:
                continue
            regions = torch.stack([r for r, _ in best])
            cos = torch.stack([c for _, c in best])
            mu = cos / cos.sum()  # Eq. 9
            out[b] = (1 - beta) * prototypes[b] + beta * (mu[:, None] * regions).sum(dim=0)
        return out


def load_bank(path) -> RegionBank:
    """A bank written by `latentfss build-bank`: images.faiss and regions.zarr."""
    path = Path(path)
    group = store.open_group(path / "regions.zarr", "build-bank")
    index = faiss.read_index(str(path / "images.faiss"))
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    image = group["image"][:]  # sorted: regions were written image by image
    offsets = np.concatenate([[0], np.cumsum(np.bincount(image, minlength=index.ntotal))])
    return RegionBank(index, torch.from_numpy(group["prototypes"][:]), offsets)
