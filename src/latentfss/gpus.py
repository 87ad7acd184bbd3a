"""Which GPUs this host has, found without importing torch (the default profile asks at every
`snakemake` call), and which one a job takes when there are several."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
_held: list = []  # the lock files of the GPUs this process holds, open for its lifetime


def visible_gpus(dev: Path = Path("/dev")) -> list[str]:
    """The GPUs a CUDA program here would see, by name: CUDA_VISIBLE_DEVICES when it is set (as
    CUDA reads it: up to the first negative entry), else the /dev/nvidiaN device nodes (there in
    containers without nvidia-smi), else the lines of `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = []
        for name in (part.strip() for part in visible.split(",")):
            if not name or name.startswith("-"):
                break
            names.append(name)
        return names
    nodes = [re.fullmatch(r"nvidia(\d+)", p.name) for p in dev.glob("nvidia*")]
    if numbers := sorted(int(m[1]) for m in nodes if m):
        return [str(n) for n in numbers]
    if smi := shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return re.findall(r"^GPU (\d+):", listed, re.MULTILINE)
    return []


def claim_gpu(names: list[str], lock_dir: str | Path | None = None) -> int:
    """The index of the first of the GPUs `names` that no other process on this host has
    claimed, held (an flock) until this process ends: side-by-side jobs take one GPU each."""
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    for i, name in enumerate(names):
        handle = open(lock_dir / f"latentfss-gpu-{name}.lock", "a")  # noqa: SIM115 (held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return i
    shared = os.getpid() % len(names)
    log.warning(
        "all %d GPUs are held by other latentfss jobs: sharing GPU %s", len(names), names[shared]
    )
    return shared


def release_gpus() -> None:
    """Give back every GPU this process claimed (tests; a process's end does it anyway)."""
    while _held:
        _held.pop().close()
