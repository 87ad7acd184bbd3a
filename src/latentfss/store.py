"""The Zarr artifacts (DESIGN section 4): compression, chunk-aligned writes, provenance attrs."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from latentfss import code_version
from latentfss.errors import InputError

# numcodecs' Blosc with Zstd; bit-shuffle suits float16 and small-integer arrays alike
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
# Snakemake marks a finished directory() output with this file; it is not part of the store
warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp is not recognized")


def create_group(path: str | Path, **attrs) -> zarr.Group:
    """A new Zarr v3 group whose attrs record what made it (code version, time, given attrs)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(
        {
            **attrs,
            "code_version": code_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    return group


def open_group(path: str | Path, stage: str) -> zarr.Group:
    """Open an artifact for reading; a missing one names the stage that makes it."""
    if not (Path(path) / "zarr.json").is_file():
        raise InputError(f"{path}: missing or incomplete; run `latentfss {stage}` first")
    return zarr.open_group(str(path), mode="r")


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], dtype, chunks=None, fill_value=0
) -> zarr.Array:
    """An empty array, chunked along the first axis by default (whole rows per chunk)."""
    chunks = chunks or (min(shape[0], 4096) or 1, *shape[1:])
    return group.create_array(
        name, shape=shape, dtype=dtype, chunks=chunks, compressors=COMPRESSOR, fill_value=fill_value
    )


def write_array(group: zarr.Group, name: str, data: np.ndarray) -> zarr.Array:
    array = create_array(group, name, data.shape, data.dtype)
    array[...] = data
    return array


class RowWriter:
    """Appends rows to a pre-sized array, writing whole chunks only (row writes are slow)."""

    def __init__(self, array: zarr.Array) -> None:
        self.array, self.rows, self.buffer, self.buffered = array, 0, [], 0

    def append(self, rows: np.ndarray) -> None:
        self.buffer.append(rows)
        self.buffered += len(rows)
        if self.buffered >= self.array.chunks[0]:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)
        if self.rows != self.array.shape[0]:
            raise RuntimeError(
                f"{self.array.name}: wrote {self.rows} of {self.array.shape[0]} rows"
            )

    def _flush(self, final: bool) -> None:
        if not self.buffer:
            return
        block = np.concatenate(self.buffer)
        step = self.array.chunks[0]
        cut = len(block) if final else len(block) // step * step
        self.array[self.rows : self.rows + cut] = block[:cut]
        self.rows += cut
        self.buffer, self.buffered = [block[cut:]], len(block) - cut
