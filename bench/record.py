"""What every benchmark records: the machine it ran on, and its results files."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    import torch  # imported here: bench/annotation.py keeps its parent process small

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                if line.startswith("model name")), platform.processor())  # fmt: skip
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": gpu is not None, "gpu": gpu}  # fmt: skip


def describe(m: dict) -> str:
    device = m["gpu"] or "no GPU"
    return f"{m['cpu']}, {m['cores']} cores, {device}; Python {m['python']}, torch {m['torch']}"


def save(results: dict, text: str, out: Path, name: str) -> None:
    """bench/results/{name}.json (raw) and {name}.md (assembled into BENCHMARKS.md)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)
