"""The Zarr artifacts: compression, chunk-aligned writes, checksums, provenance attrs."""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from latentfss import code_version
from latentfss.errors import InputError
from latentfss.fs import DAMAGED

# numcodecs' Blosc with Zstd (bit-shuffle suits float16 and small-integer arrays alike), then a
# CRC-32C of each compressed chunk, so that a flipped bit is caught, not decoded into wrong data
COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec())
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


def open_group(path: str | Path, stage: str) -> Stored:
    """Open an artifact for reading; a missing one names the stage that makes it, a damaged
    chunk the array it is in (`Stored`)."""
    if not (Path(path) / "zarr.json").is_file():
        raise InputError(f"{path}: missing or incomplete; run `latentfss {stage}` first")
    try:
        return Stored(zarr.open_group(str(path), mode="r"), Path(path))
    except (ValueError, OSError) as e:  # zarr.json itself is damaged
        raise InputError(f"{path}: damaged ({type(e).__name__}); {DAMAGED}") from None


class Stored:
    """A Zarr group open for reading, whose arrays (`Checked`) read as zarr's do."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self.group, self.path = group, path

    def __getitem__(self, name: str) -> Checked:
        return Checked(self.group[name], self.path)

    def __getattr__(self, name: str):
        return getattr(self.group, name)


class Checked:
    """A Zarr array whose damaged chunks (a checksum that does not match, a chunk that does not
    decompress) stop in one line naming the store and the array, not in a codec's traceback."""

    def __init__(self, array: zarr.Array, store: Path, indexer=None) -> None:
        self.array, self.store = array, store
        self.indexer = array if indexer is None else indexer  # array, or array.oindex

    @property
    def oindex(self) -> Checked:
        return Checked(self.array, self.store, self.array.oindex)

    def __getitem__(self, key) -> np.ndarray:
        try:
            return self.indexer[key]
        except (RuntimeError, ValueError) as e:
            if "checksum" in str(e):
                why = "a checksum does not match"
            elif "decompress" in str(e):
                why = "a chunk does not decompress"
            else:
                raise
            # the read's other chunk tasks are left pending; asyncio would log each at exit
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            raise InputError(
                f"{self.store}: array {self.array.basename} is damaged ({why}); {DAMAGED}"
            ) from None

    def __len__(self) -> int:
        return len(self.array)

    def __getattr__(self, name: str):
        return getattr(self.array, name)


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], dtype, chunks=None, fill_value=0
) -> zarr.Array:
    """An empty array, chunked along the first axis by default (whole rows per chunk)."""
    chunks = chunks or (min(shape[0], 4096) or 1, *shape[1:])
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=COMPRESSORS,
        fill_value=fill_value,
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
