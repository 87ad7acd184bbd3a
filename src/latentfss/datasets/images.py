"""Reading and writing images and class-index masks, with one-line errors naming the file."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from latentfss.episodes import IGNORE
from latentfss.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(folder: Path) -> list[Path]:
    """The .jpg, .jpeg and .png files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened): label 255 is cream, 0 black."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode fully: a truncated file fails here, not three stages later
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot decode image ({e})") from None
    return image


def read_image(path: str | Path, upright: bool = False) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8: its stored pixels, or with `upright` as displayed (its
    EXIF orientation applied, as phones tag their photos)."""
    image = read_upright(path) if upright else _open(Path(path))
    return np.asarray(image.convert("RGB"))


def read_upright(path: str | Path) -> Image.Image:
    """An image as displayed: rotated and flipped by its EXIF orientation tag, if it has one."""
    return ImageOps.exif_transpose(_open(Path(path)))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, decoding it fully so that corrupt files are caught."""
    width, height = _open(Path(path)).size
    return height, width


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """A class-index mask as (H, W) uint8 with values in 0..num_classes or 255 (ignore).

    Accepts single-channel PNGs ('P' palette as VOC's SegmentationClassAug, or 'L'); an RGB
    colour-coded mask is refused, as its colours are not class indices.
    """
    image = _open(Path(path))
    if image.mode not in ("P", "L"):
        raise InputError(
            f"{path}: mask has mode {image.mode}, expected a single-channel class-index PNG "
            "(palette 'P' or greyscale 'L'), not a colour rendering"
        )
    return check_labels(np.asarray(image), num_classes, path)


def check_labels(mask: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """`mask` itself if every value is in 0..num_classes or 255, else an InputError naming
    `path` (where the mask comes from) and the largest bad label."""
    bad = (mask > num_classes) & (mask != IGNORE)
    if bad.any():
        raise InputError(
            f"{path}: label {int(mask[bad].max())} is out of range "
            f"(expected 0..{num_classes} or {IGNORE})"
        )
    return mask


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Save an (H, W) uint8 label map as a VOC-palette PNG."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(voc_palette())
    image.save(path, optimize=False)


def read_resized(path: str | Path, size: int) -> np.ndarray:
    """An RGB image resized (bilinear) to (size, size), as (3, size, size) uint8."""
    image = _open(Path(path)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def resized_batches(
    paths: Sequence[str | Path], size: int, batch_size: int, threads: int
) -> Iterator[np.ndarray]:
    """(B, 3, size, size) uint8 batches; `threads` decode the next two batches meanwhile."""
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        pending = deque()
        for start in starts:
            pending.append(
                [pool.submit(read_resized, p, size) for p in paths[start : start + batch_size]]
            )
            if len(pending) > 2:
                yield np.stack([f.result() for f in pending.popleft()])
        while pending:
            yield np.stack([f.result() for f in pending.popleft()])
