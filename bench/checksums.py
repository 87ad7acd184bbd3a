"""Backs docs/reliability.md, "Faults": what the chunks' CRC-32C costs.

What the CRC-32C of every Zarr chunk costs (store.COMPRESSORS): a finished run's largest
stores (features, pseudo masks, prototypes) written and read whole with and without it, in
turn, in one process; their sizes on disk and the seconds of each, the median of `repeats`.

    python bench/checksums.py results/synthetic [--repeats 5]

Writes bench/results/checksums.json and .md.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import zarr
from record import arguments, describe, save, scratch

from latentfss import store

REPO = Path(__file__).resolve().parents[1]
STORES = {  # store under results/{dataset}: its largest array
    "features.zarr": "feats",
    "fold0/pseudo_masks.zarr": "masks",
    "prototypes.zarr": "fg",
}


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def write_and_read(data, chunks, compressors, path: Path) -> tuple[float, float]:
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array(
        "a", shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=compressors
    )
    for first in range(0, len(data), 256 * chunks[0]):  # chunk-aligned blocks, as the stages
        array[first : first + 256 * chunks[0]] = data[first : first + 256 * chunks[0]]
    written = time.perf_counter() - start
    start = time.perf_counter()
    zarr.open_group(str(path), mode="r")["a"][:]
    return written, time.perf_counter() - start


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("results", type=Path, help="a run's results/{dataset} folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    variants = {"blosc": store.COMPRESSORS[:1], "blosc + crc32c": store.COMPRESSORS}
    rows = []
    with scratch() as folder:
        for name, array_name in STORES.items():
            source = zarr.open_group(str(args.results / name), mode="r")[array_name]
            data, times = source[:], {v: [] for v in variants}
            for _ in range(args.repeats):  # in turn, so that both see the same machine
                for variant, compressors in variants.items():
                    path = Path(folder) / variant
                    times[variant].append(write_and_read(data, source.chunks, compressors, path))
            for variant in variants:
                write_and_read(data, source.chunks, variants[variant], Path(folder) / variant)
                rows.append(
                    {
                        "store": name,
                        "array": array_name,
                        "chunks": int(source.nchunks),
                        "variant": variant,
                        "mb": round(size_mb(Path(folder) / variant), 3),
                        "write_s": round(statistics.median(w for w, _ in times[variant]), 3),
                        "read_s": round(statistics.median(r for _, r in times[variant]), 3),
                    }
                )
    results = {"results": str(args.results), "repeats": args.repeats, "rows": rows}
    save(results, markdown, args.out, "checksums")


def markdown(results: dict) -> list[str]:
    lines = [
        "## The chunks' checksums (`bench/checksums.py`)",
        "",
        f"Machine: {describe(results['machine'])}. Each store's largest array from a default "
        f"run, written and read whole with and without a CRC-32C after Blosc, in turn; the "
        f"median of {results['repeats']}.",
        "",
        "| store | chunks | codecs | MB | write s | read s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['store']} ({r['array']}) | {r['chunks']} | {r['variant']} | {r['mb']} | "
        f"{r['write_s']} | {r['read_s']} |"
        for r in results["rows"]
    ]
    return lines


if __name__ == "__main__":
    main()
