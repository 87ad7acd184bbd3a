"""Progress bars that suit both a terminal and a Snakemake log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """tqdm on stderr; in a log file (no terminal) it writes a line every 15 seconds at most."""
    interactive = sys.stderr.isatty()
    return tqdm(
        items,
        total=total,
        desc=desc,
        file=sys.stderr,
        mininterval=0.5 if interactive else 15,
        ascii=not interactive,
        dynamic_ncols=interactive,
    )
