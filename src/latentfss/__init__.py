"""latentfss: few-shot segmentation by mining latent classes (Yang et al., ICCV 2021)."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("latentfss")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


@cache
def code_version() -> str:
    """The package version, plus the git commit (and '-dirty') when run from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{described}" if described else __version__
