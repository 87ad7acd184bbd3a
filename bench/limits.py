"""Backs docs/results.md, "Speed against the machine's limits": the floors.

A stage's floor is the least work it must do (FLOPs) over the rate this machine does such
work at, measured here with the benchmark's own threads; a data-bound stage's host floor is its
inputs decoded (`decoding`) and its outputs written (`rewriting`).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import zarr
from torch.utils.flop_counter import FlopCounterMode

from latentfss import store


def clock(step) -> float:
    """Seconds one call of `step` takes."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _best_rate(step, work: float, device: torch.device, repeats: int = 10) -> float:
    """work / (fastest of `repeats` timed calls of step), after one untimed warm-up call."""

    def synchronised() -> None:
        step()
        if device.type == "cuda":  # wait for the kernels, not only their launch
            torch.cuda.synchronize()

    synchronised()
    return work / min(clock(synchronised) for _ in range(repeats))


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """FLOP/s of a large square matrix multiply in the precision the stages compute in (fp32 on
    the CPU, bf16 autocast on CUDA: runtime.autocast)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return _best_rate(lambda: a @ b, 2 * n**3, device), str(dtype).removeprefix("torch.")


def startup_seconds(stage: str, repeats: int = 3) -> float:
    """A stage process's fixed cost: starting Python and importing what the stage imports
    (`latentfss STAGE --help`; the fastest of `repeats`, warm page cache)."""
    command = [sys.executable, "-m", "latentfss.cli", stage, "--help"]
    run = functools.partial(subprocess.run, command, check=True, stdout=subprocess.DEVNULL)
    return round(min(clock(run) for _ in range(repeats)), 2)


def measure(device: torch.device, before: dict | None = None) -> dict:
    """The machine's matrix-multiply rate on `device` (where the encoder runs) at the current
    torch thread count. A shared machine's rate dips while its other tenants work, so
    benchmarks measure it before and after their runs and keep the higher (`before`)."""
    flops, dtype = matmul_rate(device)
    if before is not None:
        flops = max(flops, before["matmul_flop_per_s"])
    return {
        "matmul_flop_per_s": flops,
        "matmul_dtype": dtype,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def decoding(decode, items, threads: int) -> float:
    """A host floor's inputs: seconds to decode every item with `threads` threads."""
    with ThreadPoolExecutor(threads) as pool:
        return clock(lambda: list(pool.map(decode, items)))


def rewriting(source: Path, target: Path, rows: int = 64) -> float:
    """A host floor's outputs: seconds to encode and write a Zarr store's arrays again (same
    shapes, chunks and dtypes) in blocks of at least `rows`, as the stages write them; reading
    them is not timed."""
    group = zarr.open_group(str(source), mode="r")
    arrays = {name: (group[name][:], group[name].chunks) for name in group.array_keys()}
    out = store.create_group(target)

    def write() -> None:
        for name, (values, chunks) in arrays.items():
            array = store.create_array(out, name, values.shape, values.dtype, chunks=chunks)
            step = max(rows, chunks[0])
            for start in range(0, len(values), step):
                array[start : start + step] = values[start : start + step]

    return clock(write)


def count_flops(step) -> int:
    """FLOPs torch executes in step() (convolutions and matrix multiplies: 2 per multiply-add;
    the backward pass too when step runs one)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def describe(limits: dict) -> str:
    return (
        f"{limits['matmul_flop_per_s'] / 1e9:.0f} GFLOP/s ({limits['matmul_dtype']} "
        f"matrix multiply), {limits['threads']} threads on {limits['device']}"
    )


def add_floors(rows: list[dict], limits: dict) -> None:
    """Each row's `seconds` against the floor of its `work` ({"flops": F}); for a stage run as
    its own process, also without its `startup` seconds (left out where start-up is, within
    0.1 s, all of the time)."""
    for row in rows:
        work, seconds, startup = row.pop("work"), row["seconds"], row.pop("startup", None)
        least = work["flops"] / limits["matmul_flop_per_s"]
        row.update(work, floor_seconds=round(least, 4))
        row["of_limit_pct"] = round(100 * least / seconds, 2)
        if startup is not None:
            after = seconds - startup
            row.update(
                startup_seconds=startup,
                of_limit_after_startup_pct=round(100 * least / after, 2) if after > 0.1 else None,
            )


HEADER = "floor s | % of limit | start-up s | % after start-up"


def cells(row: dict) -> str:
    """The HEADER columns of a row that add_floors filled, as Markdown cells."""
    cells = [
        row["floor_seconds"],
        row["of_limit_pct"],
        row.get("startup_seconds"),
        row.get("of_limit_after_startup_pct"),
    ]
    return " | ".join("-" if cell is None else str(cell) for cell in cells)
