"""Writes that are all-or-nothing: a killed job never leaves a half-written output behind."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latentfss.errors import InputError

# write errors the user can act on: a full disk or quota, a file-size limit (ulimit -f), a
# read-only or forbidden folder
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES}
DAMAGED = "delete it and re-run (snakemake re-makes it)"


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a write error the user can act on into one line naming the output."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        raise InputError(f"{path}: cannot write ({e.strerror}); nothing was written") from None


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `path`; it replaces `path` only if the block succeeds.

    On failure the temporary directory is removed and any previous `path` is left untouched.
    """
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        old = None
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.{os.getpid()}.old")
                os.rename(path, old)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not path.exists():
                os.rename(old, path)  # the previous output comes back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it is renamed onto `path` if the block succeeds."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def save_torch(obj, path: str | Path) -> None:
    """torch.save, serialised in memory first and written by Python (flushed to the disk: a
    quota or a network filesystem may report a full disk only then): torch's own writer
    reports a full disk as an unrelated RuntimeError ("unexpected pos ...")."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def read_torch(path: str | Path, missing: str, map_location="cpu") -> dict:
    """A dict saved with torch.save (tensors only: weights_only), or one line naming the file:
    `missing` says what to do when it does not exist."""
    import torch  # not at import time: the data stages do without torch

    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: not found; {missing}") from None
    except Exception as e:
        raise InputError(
            f"{path}: damaged or not a PyTorch file ({type(e).__name__}); {DAMAGED}"
        ) from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: expected a dict of tensors, got {type(saved).__name__}")
    return saved


def identity(path: str | Path) -> str:
    """Which version of a file or folder this is: a digest of the size and modification time
    of each file in it, so a re-made output is another version even with the same bytes."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
