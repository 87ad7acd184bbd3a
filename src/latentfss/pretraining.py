"""The encoder's pre-training on the synthetic world, its ImageNet (rule pretrain_encoder).

A whole ResNet (encoder.Classifier) learns image-level labels of the generating factors only,
which colours and which patterns the image shows (synthetic.FACTORS), never the 20 class ids,
from a corpus of its own seed streams: never a train or val image of the benchmark. As with
ImageNet weights, the whole ResNet is kept but its classifier (`storable`), and the
segmentation encoder reads conv1..layer3. Unlike ImageNet, where PASCAL's novel classes are
among the labels, here the novel classes' factors are, but not their class ids.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from latentfss import code_version
from latentfss.config import PretrainConfig, SyntheticConfig
from latentfss.datasets import synthetic
from latentfss.encoder import DROPPED, Classifier, Encoder, Normalise, encode_each
from latentfss.episodes import IGNORE
from latentfss.fs import save_torch
from latentfss.machine import machine
from latentfss.progress import progress
from latentfss.runtime import pick_device, seed_everything, set_threads

log = logging.getLogger(__name__)


class _Renders(Dataset):
    def __init__(self, cfg: SyntheticConfig, stream: str, count: int) -> None:
        self.cfg, self.stream, self.count = cfg, stream, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic.render_image(self.cfg, synthetic.image_rng(self.cfg.seed, self.stream, i))


def render(
    cfg: SyntheticConfig, stream: str, count: int, workers: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images 0..count-1 of a stream as (H, W, 3) uint8 images and (H, W) label maps, in order,
    rendered by `workers` processes (the same images for any number). Each is copied out of
    the worker's shared memory, which would otherwise hold a file descriptor per array: 10,000
    images passed a limit of 20,000 open files."""
    loader = DataLoader(
        _Renders(cfg, stream, count), batch_size=None, num_workers=workers, collate_fn=None
    )
    return [(image.numpy().copy(), mask.numpy().copy()) for image, mask in loader]


def factor_labels(masks: Sequence[np.ndarray], min_pixels: Sequence[int]) -> torch.Tensor:
    """(B, 9) multi-hot factor values shown by each label map: those of every class that covers
    at least its map's min_pixels (synthetic.factor_table)."""
    table = synthetic.factor_table()
    counts = np.stack([np.bincount(m.ravel(), minlength=256)[: len(table)] for m in masks])
    shown = counts[:, 1:] >= np.asarray(min_pixels)[:, None]
    return torch.from_numpy(np.minimum(shown.astype(np.float32) @ table[1:], 1))


def crops(
    corpus: Sequence[tuple[np.ndarray, np.ndarray]],
    cfg: PretrainConfig,
    generator: torch.Generator,
    picks: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch: (B, 3, crop, crop) float images in [0, 1] and (B, 9) factor labels. Each crop
    is a square of a corpus image (`picks`, else batch_size drawn at random), a side of
    crop / scale, centred on a random object pixel (a share `object_crops` of them, as
    ImageNet's photos centre their object) or anywhere, rescaled to `crop` and flipped at
    random; its labels are what it shows."""
    if picks is None:
        picks = torch.randint(len(corpus), (cfg.batch_size,), generator=generator).tolist()
    draws = torch.rand(len(picks), 5, generator=generator).tolist()
    images, masks, sides = [], [], []
    low, high = cfg.scale
    for pick, (s, y, x, flip, centre) in zip(picks, draws, strict=True):
        image, mask = corpus[pick]
        side = min(round(cfg.crop / (low + s * (high - low))), *mask.shape)
        top, left = int(y * (mask.shape[0] - side + 1)), int(x * (mask.shape[1] - side + 1))
        centred = centre < cfg.object_crops  # on an object pixel, if the view has one
        objects = np.flatnonzero((mask > 0) & (mask != IGNORE)) if centred else ()
        if len(objects):
            cy, cx = divmod(int(objects[int(y * len(objects))]), mask.shape[1])
            top = min(max(cy - side // 2, 0), mask.shape[0] - side)
            left = min(max(cx - side // 2, 0), mask.shape[1] - side)
        view = torch.from_numpy(image[top : top + side, left : left + side].copy())
        view = F.interpolate(
            view.permute(2, 0, 1)[None].float() / 255, size=(cfg.crop, cfg.crop), mode="bilinear"
        )[0]
        images.append(view.flip(2) if flip < 0.5 else view)
        masks.append(mask[top : top + side, left : left + side])
        sides.append(side)
    min_pixels = [max(1, round(cfg.min_share * side * side)) for side in sides]
    return torch.stack(images), factor_labels(masks, min_pixels)


def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over the first tenth of the steps, then a cosine decay to 0."""
    warm = max(1, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def train_step(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    normalise: Normalise,
) -> float:
    """One SGD step of the multi-label loss (binary cross-entropy per factor value)."""
    logits = model(normalise(images.to(normalise.device)))
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(normalise.device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.inference_mode()
def heldout_accuracy(
    model: Classifier,
    images: Sequence[tuple[np.ndarray, np.ndarray]],
    cfg: PretrainConfig,
    normalise: Normalise,
    seed: int,
) -> dict[str, float]:
    """Per factor, the share of held-out crops (one per image, drawn as in training) whose
    values of that factor are all predicted right (a value is predicted where its logit is
    positive)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    right = []
    for start in range(0, len(images), cfg.batch_size):
        picks = range(start, min(start + cfg.batch_size, len(images)))
        views, labels = crops(images, cfg, generator, picks)
        predicted = model(normalise(views.to(normalise.device))).cpu() > 0
        right.append(predicted == (labels > 0))
    right = torch.cat(right)
    accuracy, start = {}, 0
    for name, values in synthetic.FACTORS.items():
        accuracy[name] = round(
            float(right[:, start : start + len(values)].all(1).float().mean()), 4
        )
        start += len(values)
    return accuracy


def storable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as it is saved (and shipped): the whole ResNet without its classifier,
    its conv kernels in fp16 (half the bytes: ResNet-18's 11.2M weights in 22 MB), BatchNorm
    in fp32."""
    return {
        k: (v.half() if v.dim() == 4 else v).cpu()
        for k, v in state.items()
        if not k.startswith("fc.")
    }


@torch.inference_mode()
def layer3_agreement(
    arch: str,
    exact: dict[str, torch.Tensor],
    stored: dict[str, torch.Tensor],
    images: Sequence[np.ndarray],
) -> dict[str, float]:
    """What the storage precision does to the features the pipeline reads: layer3 of the
    `stored` weights against the `exact` (fp32) ones on (H, W, 3) uint8 `images`, each at its
    own size; the relative L2 error over all features and the least cosine of a pixel's pair of
    feature vectors."""
    normalise = Normalise(torch.device("cpu"))
    feats = []
    for state in (exact, stored):
        encoder = Encoder(arch).eval()
        encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith(DROPPED)})
        tensors = [torch.from_numpy(image.transpose(2, 0, 1).copy()) for image in images]
        feats.append(encode_each(encoder, tensors, normalise))
    error = sum(float((a - b).square().sum()) for a, b in zip(*feats, strict=True))
    norm = sum(float(a.square().sum()) for a in feats[0])
    cosine = min(float(F.cosine_similarity(a, b, dim=0).min()) for a, b in zip(*feats, strict=True))
    return {"relative_error": round(math.sqrt(error / norm), 6), "min_cosine": round(cosine, 6)}


STORAGE_CHECK = 32  # held-out images whose layer3 features check the fp16 storage


def pretrain(
    out: Path,
    cfg: PretrainConfig,
    world: SyntheticConfig,
    arch: str,
    seed: int = 0,
    threads: int = 1,
    device: str = "auto",
) -> None:
    """The encoder pre-trained on a corpus of `world`'s generator (its own streams), written to
    `out` with its held-out accuracy and what fp16 storage does to its layer3 features."""
    set_threads(threads)
    device = pick_device(device)
    corpus = render(world, "pretrain", cfg.images, threads)
    heldout = render(world, "pretrain-heldout", cfg.heldout, threads)
    log.info("rendered %d corpus and %d held-out images", len(corpus), len(heldout))
    seed_everything(seed)
    outputs = sum(len(values) for values in synthetic.FACTORS.values())
    model = Classifier(arch, outputs).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    normalise, generator = Normalise(device), torch.Generator().manual_seed(seed)
    rows, window = [], []
    bar = progress(range(cfg.steps), cfg.steps, "pretrain-encoder")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        images, labels = crops(corpus, cfg, generator)
        window.append(train_step(model, images, labels, optimizer, normalise))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rows.append({"step": step + 1, "loss": round(sum(window) / len(window), 5)})
            bar.set_postfix(loss=rows[-1]["loss"], refresh=False)
            window = []
    exact = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    stored = storable(exact)
    model.load_state_dict({**exact, **stored})  # scored as it is saved (the classifier kept)
    accuracy = heldout_accuracy(model, heldout, cfg, normalise, seed)
    checked = [image for image, _ in heldout[:STORAGE_CHECK]]
    agreement = layer3_agreement(arch, exact, stored, checked)
    save_torch(
        {
            "state_dict": stored,
            "arch": arch,
            "factors": {name: list(values) for name, values in synthetic.FACTORS.items()},
            "heldout_accuracy": accuracy,
            "storage": {"conv": "float16", "images": len(checked), **agreement},
            "losses": rows,
            "config": {
                "pretrain": dataclasses.asdict(cfg),
                "synthetic": dataclasses.asdict(world),
            },
            "seed": seed,
            "machine": machine(),
            "code_version": code_version(),
        },
        out,
    )
    log.info(
        "pre-trained %s for %d steps on %d images -> %s; held-out accuracy (a crop of each of "
        "%d images, every value of the factor right): %s; fp16 storage: layer3 relative error "
        "%.1e, least cosine %.5f",
        arch,
        cfg.steps,
        cfg.images,
        out,
        len(heldout),
        ", ".join(f"{name} {value:.1%}" for name, value in accuracy.items()),
        agreement["relative_error"],
        agreement["min_cosine"],
    )
