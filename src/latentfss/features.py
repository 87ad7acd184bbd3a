"""The offline annotation's features (section 3.3.1): every train image embedded by the initial
encoder, kept in features.zarr or, with `annotation.keep_features: false`, computed again by each
stage that reads them.

Features are computed in fp32 (TF32 off on CUDA; no autocast), in batches of the train split in
its order, and rounded to float16, so that computing them again gives the same bits as the
stored ones and CPU and GPU annotations agree as closely as fp32 kernels do.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from latentfss import store
from latentfss.config import AnnotationConfig, from_params
from latentfss.datasets.images import resized_batches
from latentfss.encoder import STRIDE, Encoder, Normalise, feature_size, load_encoder
from latentfss.errors import InputError
from latentfss.fs import read_torch
from latentfss.runtime import add_device_argument, pick_device

BLOCK = 64  # rows per read from features.zarr


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls without TF32, and deterministic cuDNN algorithms, on CUDA
    (a no-op on the CPU)."""
    backends = (
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "deterministic"),
    )
    saved = [getattr(module, name) for module, name in backends]
    for (module, name), value in zip(backends, (False, False, True), strict=True):
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in zip(backends, saved, strict=True):
            setattr(module, name, value)


def normalised_batches(
    paths: Sequence[str], cfg: AnnotationConfig, device: torch.device, threads: int
) -> Iterator[torch.Tensor]:
    """(B, 3, S, S) ImageNet-normalised float images on `device`, resized to cfg.input_size."""
    normalise = Normalise(device)
    for batch in resized_batches(paths, cfg.input_size, cfg.batch_size, threads):
        images = normalise(normalise.unit(torch.from_numpy(batch)))
        yield images.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def embed(
    encoder: Encoder,
    paths: Sequence[str],
    cfg: AnnotationConfig,
    device: torch.device,
    threads: int,
) -> Iterator[torch.Tensor]:
    """(B, C, h, w) float16 features of each batch of cfg.batch_size images on `device`,
    computed in fp32 (rounded to nearest even, as NumPy rounds, by torch: 4x faster)."""
    with exact_fp32():
        for images in normalised_batches(paths, cfg, device, threads):
            yield encoder(images).half().contiguous()  # NCHW, as features.zarr holds them


def annotation_encoder(path: Path, device: torch.device) -> Encoder:
    """The initial encoder (encoder_init.pt), laid out as extract-features runs it."""
    return load_encoder(path).to(device).eval().to(memory_format=torch.channels_last)


class Features:
    """The features of the train split's images, row i = the split's image i: read from
    features.zarr, or computed again from encoder_init.pt in extract-features' own batches
    (the same images together, so the same bits on the same device). `device`: where the stage
    that reads them computes; `threads`: the host's decoding workers."""

    def __init__(
        self,
        image_ids: np.ndarray,
        attrs: dict,
        stored=None,
        paths=(),
        encoder: Encoder | None = None,
        device=None,
        threads: int = 1,
    ) -> None:
        self.image_ids, self.attrs, self.stored = image_ids, attrs, stored
        self.paths, self.encoder, self.device, self.threads = list(paths), encoder, device, threads
        self.cfg = AnnotationConfig(**attrs["annotation"])

    @classmethod
    def read(cls, path: Path, device=None, threads: int = 1) -> Features:
        group = store.open_group(path, "extract-features")
        attrs = group.attrs.asdict()
        return cls(group["image_id"][:], attrs, group["feats"], device=device, threads=threads)

    @classmethod
    def compute(
        cls, train, encoder_init: Path, cfg: AnnotationConfig, device: torch.device, threads: int
    ) -> Features:
        """train: the index's train split (image_id -> image path), in extract-features' order."""
        saved = read_torch(encoder_init, "run `latentfss extract-features` first")
        encoder = annotation_encoder(encoder_init, device)
        attrs = feature_attrs(saved["encoder"], cfg, device)
        return cls(
            train.index.to_numpy(np.int64),
            attrs,
            paths=train["image"].tolist(),
            encoder=encoder,
            device=device,
            threads=threads,
        )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        side = feature_size(self.cfg.input_size)
        channels = self.stored.shape[1] if self.stored is not None else self.encoder.channels
        return len(self.image_ids), channels, side, side

    def block_count(self, rows: np.ndarray) -> int:
        if self.stored is not None:
            return -(-len(rows) // BLOCK)
        return len(np.unique(np.asarray(rows) // self.cfg.batch_size))

    def blocks(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(rows, float16 features (len(rows), C, h, w)) blocks over the given rows, in order:
        on the CPU as read, on the encoder's device as computed."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be ascending and distinct")
        if self.stored is not None:
            for s in range(0, len(rows), BLOCK):
                block = rows[s : s + BLOCK]
                # slices of consecutive rows: zarr reads a slice's chunks concurrently, an
                # index array's 4x slower
                runs = np.split(block, np.flatnonzero(np.diff(block) > 1) + 1)
                feats = [self.stored[run[0] : run[-1] + 1] for run in runs]
                yield block, torch.from_numpy(np.concatenate(feats))
            return
        size = self.cfg.batch_size  # rows ascending: extract-features' batches, in order
        if not len(rows):
            return
        groups = np.split(rows, np.flatnonzero(np.diff(rows // size)) + 1)  # one per batch held
        batches = [int(group[0]) // size for group in groups]
        paths = [path for b in batches for path in self.paths[b * size : (b + 1) * size]]
        computed = embed(self.encoder, paths, self.cfg, self.device, self.threads)
        for batch, wanted, feats in zip(batches, groups, computed, strict=True):
            yield wanted, feats[torch.from_numpy(wanted - batch * size).to(feats.device)]


def feature_attrs(encoder: dict, cfg: AnnotationConfig, device: torch.device) -> dict:
    """What features.zarr records about how its features were made."""
    return {
        "encoder": encoder,
        "annotation": dataclasses.asdict(cfg),
        "layer": "layer3",
        "input_size": cfg.input_size,
        "stride": STRIDE,
        "device": str(device),
        "precision": "fp32 (no TF32), stored as float16",
    }


def add_arguments(parser) -> None:
    """Where a stage gets the features from: features.zarr, or encoder_init.pt to compute them."""
    parser.add_argument("--features", type=Path, help="features.zarr")
    parser.add_argument(
        "--encoder-init",
        type=Path,
        help="encoder_init.pt: without --features, the features are computed "
        "again with it (annotation.keep_features: false)",
    )
    parser.add_argument(
        "--annotation", default="", help="config section `annotation` as JSON (without --features)"
    )
    add_device_argument(parser)


def from_arguments(args, train) -> Features:
    """The features named by `add_arguments`' flags; train: the index's train split."""
    if args.features is not None:
        return Features.read(args.features, pick_device(args.device), args.threads)
    if args.encoder_init is None:
        raise InputError("give --features (features.zarr) or --encoder-init (encoder_init.pt)")
    cfg = from_params(AnnotationConfig, args.annotation, "annotation")
    return Features.compute(train, args.encoder_init, cfg, pick_device(args.device), args.threads)
