"""The record of where a job ran: what the order of its float sums depends on."""

from __future__ import annotations

import platform
import re
from pathlib import Path

# The CPU features that decide which kernels torch and oneDNN run, and so the order in which
# they sum floats: /proc/cpuinfo's flag -> its name
VECTOR_EXTENSIONS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
}


CPUINFO = Path("/proc/cpuinfo")


def machine() -> dict:
    """What a float sum's order depends on, for the record of a run: the CPU model and its
    vector extensions (None where the system does not say: not Linux), torch, oneDNN and the
    kernels ATen picked, the torch threads, the GPU."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        lines = []
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    import torch  # not at import time: summarize reads records without it

    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", torch.__config__.show())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "vector_extensions": [name for flag, name in VECTOR_EXTENSIONS.items() if flag in flags]
        if flags
        else None,
        "torch": str(torch.__version__),
        "onednn": onednn.group(1) if onednn else None,
        "aten_cpu": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def describe_machine(m: dict) -> str:
    """One line: `Intel(R) Xeon(R) Processor (AVX2, AVX-512, AVX-512 BF16, AMX); torch 2.14.1,
    oneDNN 3.12.0, ATen AVX512; 2 torch threads`."""
    known = m["vector_extensions"]
    extensions = "vector extensions unknown" if known is None else ", ".join(known) or "no AVX2"
    gpu = f"; {m['gpu']}" if m.get("gpu") else ""
    threads = "thread" if m["torch_threads"] == 1 else "threads"
    return (
        f"{m['cpu']} ({extensions}){gpu}; torch {m['torch']}, oneDNN {m['onednn']}, ATen "
        f"{m['aten_cpu']}; {m['torch_threads']} torch {threads}"
    )
