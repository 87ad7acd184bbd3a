"""Faults as users meet them: a write that fails (a full disk, a quota, a file-size limit) at any
writer, a damaged artifact at any read, and a signal in the middle of training. Each ends in
one line naming the file, or in a state a re-run resumes from; nothing half-written is left and
earlier outputs stay."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec

from conftest import PROTOCOL, artifact, cli, params, tool_env, train_argv
from latentfss import layout, store

TRAIN = params(iterations=2, batch_episodes=2, batch_pseudo=2, crop=48, workers=0)


def limited(max_bytes: int, *argv) -> subprocess.CompletedProcess:
    """`latentfss argv...` in a process whose files cannot grow past `max_bytes` (ulimit -f):
    every write beyond fails as on a full disk, in Python's writers and in C++ ones alike (and
    in torch's shared memory: no data-loader workers here)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run(
        ["latentfss", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**tool_env(), "LATENTFSS_DEVICE": "cpu"},
        preexec_fn=limit,
    )


def write_cases(annotated: Path, evaluated: Path, out: Path) -> dict[str, tuple]:
    """Each writer kind: (the output that fails first, the command, the file-size limit)."""
    index, pseudo = annotated / "dataset", artifact(annotated, layout.PSEUDO_MASKS, fold=0)
    model = evaluated / "model.pt"
    return {
        "torch": (
            out / "model.pt",
            train_argv(annotated, out, TRAIN, "--protocol", PROTOCOL),
            2**20,
        ),
        "zarr": (
            artifact(out, layout.PROTOTYPES),
            (
                "pool-prototypes",
                "--index",
                index,
                "--features",
                artifact(annotated, layout.FEATURES),
            )
            + ("--out", artifact(out, layout.PROTOTYPES)),
            4096,
        ),
        "faiss": (
            out / "bank",
            ("build-bank", "--index", index, "--model", model, "--pseudo-masks", pseudo)
            + ("--out", out / "bank", "--params", params(input_size=64, workers=0)),
            4096,
        ),
        "csv": (
            out / "eval/episodes_seed0.csv",
            ("evaluate", "--index", index, "--model", model, "--fold", 0, "--shot", 1)
            + ("--out", out / "eval", "--protocol", PROTOCOL)
            + (
                "--params",
                params(episodes=12, seeds=[0], input_size=64, fg_rectify=False, workers=0),
            ),
            100,
        ),
        "png": (
            out / "masks.png",
            ("inspect", "pseudo-masks", "--index", index, "--pseudo-masks", pseudo)
            + ("--out", out / "masks.png"),
            1000,
        ),
    }


@pytest.mark.parametrize("kind", ["torch", "zarr", "faiss", "csv", "png"])
def test_a_failed_write_is_one_line_and_keeps_the_earlier_output(
    annotated, evaluated, tmp_path, kind
):
    path, argv, max_bytes = write_cases(annotated, evaluated, tmp_path)[kind]
    earlier = path / "earlier" if path.suffix in ("", ".zarr") else path
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text("an earlier run's output")
    done = limited(max_bytes, *argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("ERROR: ") and "cannot write (File too large); nothing was written" in last
    )
    assert str(path) in last or str(path.parent) in last
    assert earlier.read_text() == "an earlier run's output"
    left = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or ".old" in p.name]
    assert left == []


def small_filesystem(path: Path, size: str):
    """A tmpfs of `size` at `path`, where this process may mount one (root, not in a sandbox
    that forbids it), else None."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return path if done.returncode == 0 else None


def test_a_full_disk_during_training_is_one_line(annotated, evaluated, tmp_path):
    disk = small_filesystem(tmp_path / "disk", "1m") if os.geteuid() == 0 else None
    if disk is None:
        pytest.skip("cannot mount a small filesystem here (the file-size tests stand in)")
    try:
        path, argv, _ = write_cases(annotated, evaluated, disk)["torch"]
        done = limited(resource.RLIM_INFINITY, *argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last == f"ERROR: {path}: cannot write (No space left on device); nothing was written"
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def damage(array_dir: Path, how: str) -> Path:
    """Damage the first chunk of a Zarr v3 array: truncated, replaced by random bytes, or one
    bit flipped."""
    chunk = sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())[0]
    data = bytearray(chunk.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "random bytes":
        data = bytearray(random.Random(0).randbytes(64))
    else:
        data[len(data) // 2] ^= 0x04
    chunk.write_bytes(bytes(data))
    return chunk


STORES = {  # a store (fold 0's), its largest array
    "features": (layout.FEATURES, "feats"),
    "prototypes": (layout.PROTOTYPES, "fg"),
    "pseudo masks": (layout.PSEUDO_MASKS, "masks"),
}


def reading(kind: str, annotated: Path, evaluated: Path, copy: Path, out: Path) -> tuple:
    """A stage that reads the whole of `kind`'s store from `copy`."""
    index = annotated / "dataset"
    if kind == "features":
        return ("pool-prototypes", "--index", index, "--features", copy, "--out", out)
    if kind == "prototypes":
        return ("cluster", "--index", index, "--prototypes", copy, "--fold", 0, "--out", out) + (
            "--params",
            params(k=3, nredo=1),
            "--protocol",
            PROTOCOL,
        )
    model = evaluated / "model.pt"
    return ("build-bank", "--index", index, "--model", model, "--pseudo-masks", copy) + (
        "--out",
        out,
        "--params",
        params(input_size=64),
    )


@pytest.mark.parametrize("how", ["truncated", "random bytes", "a flipped bit"])
@pytest.mark.parametrize("kind", list(STORES))
def test_a_damaged_chunk_is_one_line_naming_its_store(
    annotated, evaluated, tmp_path, capsys, on_cpu, kind, how
):
    pattern, array = STORES[kind]
    store = artifact(annotated, pattern, fold=0)
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    damage(copy / array, how)
    code, err = cli(*reading(kind, annotated, evaluated, copy, tmp_path / "out"), capsys=capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (
        f"ERROR: {copy}: array {array} is damaged (a checksum does not match); "
        "delete it and re-run (snakemake re-makes it)"
    )
    assert not (tmp_path / "out").exists()


def test_a_store_from_before_the_checksums_reads_and_its_damage_is_one_line(tmp_path):
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    old = group.create_array(
        "masks", shape=(2, 8, 8), dtype="uint8", chunks=(1, 8, 8), compressors=BloscCodec()
    )
    old[...] = np.arange(128, dtype=np.uint8).reshape(2, 8, 8)
    read = store.open_group(tmp_path / "old.zarr", "write-pseudo-masks")["masks"]
    np.testing.assert_array_equal(read[:], old[:])
    damage(tmp_path / "old.zarr/masks", "random bytes")  # without a checksum, what Blosc sees
    with pytest.raises(store.InputError, match=r"old.zarr: array masks is damaged \(a chunk"):
        read[:]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("what", ["model.pt", "bank/images.faiss"])
def test_a_truncated_model_or_bank_is_one_line(
    annotated, evaluated, tmp_path, capsys, on_cpu, what
):
    copy = tmp_path / "run"
    shutil.copytree(evaluated, copy, ignore=shutil.ignore_patterns("eval", "replay"))
    truncate(copy / what)
    code, err = cli(
        "evaluate",
        "--index",
        annotated / "dataset",
        "--model",
        copy / "model.pt",
        "--bank",
        copy / "bank",
        "--fold",
        0,
        "--shot",
        1,
        "--out",
        tmp_path / "eval",
        "--protocol",
        PROTOCOL,
        "--params",
        params(episodes=4, seeds=[0], input_size=64, workers=0),
        capsys=capsys,
    )
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    kind = "a PyTorch file" if what == "model.pt" else "a faiss index"
    assert last.startswith(f"ERROR: {copy / what}: damaged or not {kind}")
    assert last.endswith("delete it and re-run (snakemake re-makes it)")


@pytest.mark.slow
def test_a_signal_mid_run_saves_the_state_and_the_rerun_ends_as_an_unstopped_run(
    annotated, tmp_path
):
    """SIGTERM (SLURM's, ahead of a time limit) mid-run: the state at that step is saved and
    the job exits 143; the re-run resumes there and ends with the same weights and train.csv,
    bit for bit, as a run never stopped."""
    train = params(iterations=60, batch_episodes=2, batch_pseudo=2, crop=48, workers=0)
    train = train[:-1] + ', "checkpoint_every": 5, "log_every": 5}'

    def command(out: Path) -> list[str]:
        args = train_argv(annotated, out, train, "--protocol", PROTOCOL, "--device", "cpu")
        return ["latentfss", *map(str, args)]

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    subprocess.run(command(whole), check=True, capture_output=True, env=tool_env(), timeout=300)
    job = subprocess.Popen(command(stopped), stderr=subprocess.PIPE, text=True, env=tool_env())
    deadline = time.monotonic() + 120
    while not (stopped / "train_state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    err = job.communicate(timeout=120)[1]
    assert job.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ERROR: stopped by SIGTERM at step ") and "run the job again" in last
    step = torch.load(stopped / "train_state.pt")["step"]
    assert 5 <= step < 60 and not (stopped / "model.pt").exists()
    subprocess.run(command(stopped), check=True, capture_output=True, env=tool_env(), timeout=300)
    a, b = (torch.load(run / "model.pt")["state_dict"] for run in (whole, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "train.csv").read_text() == (stopped / "train.csv").read_text()
    assert not (stopped / "train_state.pt").exists()
