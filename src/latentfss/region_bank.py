"""The region bank, built (`build_bank`) and used for foreground rectification (section 3.4,
Eq. 8-9).

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
from torch.utils.data import DataLoader, Dataset

from latentfss import store
from latentfss.config import EvaluateConfig
from latentfss.datasets.evaluation import network_input, pack, unpack
from latentfss.datasets.images import read_image
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise, encode_each
from latentfss.errors import InputError
from latentfss.fs import DAMAGED, atomic_dir, identity
from latentfss.model import load_model
from latentfss.progress import progress
from latentfss.prototypes import image_embedding, present_labels, region_prototypes
from latentfss.runtime import pick_device, set_threads

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


class TrainImages(Dataset):
    """Row i of pseudo_masks.zarr: its image and pseudo mask as the network sees them."""

    def __init__(self, paths: list[str], pseudo_masks: Path, cfg: EvaluateConfig) -> None:
        self.paths, self.store_path, self.cfg = paths, str(pseudo_masks), cfg
        group = store.open_group(self.store_path, "write-pseudo-masks")
        self.sizes = np.stack([group["height"][:], group["width"][:]], axis=1)
        self.masks = None  # opened in each loader worker

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.masks is None:
            self.masks = store.open_group(self.store_path, "write-pseudo-masks")["masks"]
        height, width = self.sizes[i]
        mask = self.masks[i, :height, :width]
        image, mask, _ = network_input(
            read_image(self.paths[i]), mask, self.cfg.resize, self.cfg.input_size
        )
        return image, mask


@dataclass(frozen=True)
class BankJob:
    """What one bank reads and writes (a fold's train set, one model), and where it runs."""

    index: Path  # the prepared dataset index folder
    model: Path  # model.pt
    pseudo_masks: Path  # the fold's pseudo masks (the train set's)
    out: Path  # the bank folder to write
    threads: int = 1
    device: str = "auto"


@torch.inference_mode()
def build_bank(job: BankJob, cfg: EvaluateConfig) -> None:
    """With the trained EMA model, an image embedding of every image of the fold's train set
    and a prototype of every pseudo-mask region (labels 1..K) of each, the network seeing each
    train image as evaluation sees a support (`cfg.resize`, `cfg.input_size`)."""
    set_threads(job.threads, cfg.workers)
    faiss.omp_set_num_threads(job.threads)
    device = pick_device(job.device)
    index = read_index(job.index)
    model, _ = load_model(job.model)
    encoder, normalise = model.encoder.to(device).eval(), Normalise(device)
    pseudo = store.open_group(job.pseudo_masks, "write-pseudo-masks")
    image_ids = pseudo["image_id"][:]
    image_ids = image_ids[image_ids >= 0]  # the fold's train set (unlabelled ones: not banked)
    data = TrainImages(index.images.loc[image_ids, "image"].tolist(), job.pseudo_masks, cfg)
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=pack)
    # Every row is written in place. Per-image arrays kept in lists until the end sit in the
    # heap between the large feature maps, whose sizes vary at resize: none, and fragment it:
    # peak RSS 7.8 GB at PASCAL's 5,265 train images, 1.4 GB this way (bench/rehearsal.py).
    # An image has at most K regions; pages of `capacity` never written are never resident.
    capacity = len(data) * pseudo.attrs["K"]
    embeddings = np.empty((len(data), encoder.channels), np.float32)
    regions = {
        "prototypes": np.empty((capacity, encoder.channels), np.float32),
        **{name: np.empty(capacity, np.int64) for name in ("image", "label", "pixels")},
    }
    row = count = 0
    for batch in map(unpack, progress(loader, len(loader), "build-bank")):
        feats = encode_each(encoder, [image for image, _ in batch], normalise)
        for image_feats, (_, mask) in zip(feats, batch, strict=True):
            mask = mask.to(device)
            labels, pixels = present_labels(mask)
            kept = labels > 0  # the sub-cluster regions, not the background
            labels, pixels = labels[kept], pixels[kept]
            prototypes, _ = region_prototypes(image_feats, mask, labels)
            embeddings[row] = image_embedding(image_feats[None])[0].cpu().numpy()
            prototypes, labels, pixels = (t.cpu().numpy() for t in (prototypes, labels, pixels))
            end = count + len(labels)
            for name, values in zip(regions, (prototypes, row, labels, pixels), strict=True):
                regions[name][count:end] = values
            row, count = row + 1, end
    regions = {name: values[:count] for name, values in regions.items()}
    regions["image_id"] = image_ids
    save_bank(
        job.out,
        embeddings,
        regions,
        resize=cfg.resize,
        input_size=cfg.input_size,
        model=str(job.model),
        model_identity=identity(job.model),
    )
    log.info("bank: %d images, %d regions -> %s", len(embeddings), count, job.out)
