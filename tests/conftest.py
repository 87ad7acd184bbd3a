"""Shared fixtures: a tiny synthetic dataset and a way to run the CLI as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from latentfss import layout
from latentfss.cli import main
from latentfss.config import SyntheticConfig
from latentfss.layout import artifact  # noqa: F401 (the tests' helper, from here)
from latentfss.stages.make_synthetic import generate

REPO = Path(__file__).resolve().parents[1]
TINY = SyntheticConfig(num_train=24, num_val=8, min_size=48, max_size=64)


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@contextlib.contextmanager
def cpu_only():
    """Stages (and Snakemake's jobs) run on the CPU: the tests that compare results exactly.
    CUDA kernels (cuDNN weight gradients, bilinear backward) are not bit-deterministic, so on a
    GPU the same runs agree closely, not bit for bit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTFSS_DEVICE", "cpu")
        yield


@pytest.fixture
def on_cpu():
    with cpu_only():
        yield


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic VOC-format root (24 train, 8 val images of 48-64 px). Do not modify."""
    root = tmp_path_factory.mktemp("data") / "voc"
    generate(TINY, root)
    return root


def cli(*argv: str, capsys=None) -> tuple[int, str]:
    """Run `latentfss argv...` in this process: (exit code, stderr when `capsys` is given)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err if capsys is not None else ""


def params(**section) -> str:
    return json.dumps(section)


ENCODER = params(arch="resnet18", weights="none", calibration_images=8)
ANNOTATION = params(input_size=64, batch_size=5)
PROTOCOL = params(min_support_pixels=30)  # the tiny images are 48-64 px a side


def pooling_steps(out: Path, dataset: str) -> list[tuple]:
    """The `latentfss` argv of prepare -> extract-features -> pool-prototypes into `out`."""
    index, features = out / "dataset", artifact(out, layout.FEATURES)
    return [
        ("prepare", "--out", index, "--params", dataset),
        ("extract-features", "--index", index, "--out", features)
        + (
            "--encoder-out",
            artifact(out, layout.ENCODER_INIT),
            "--encoder",
            ENCODER,
            "--params",
            ANNOTATION,
        ),
        ("pool-prototypes", "--index", index, "--features", features)
        + ("--out", artifact(out, layout.PROTOTYPES)),
    ]


@pytest.fixture(scope="session")
def annotated(tiny_root, tmp_path_factory):
    """prepare -> extract-features -> pool-prototypes -> cluster (folds 0, 1) -> pseudo masks."""
    out = tmp_path_factory.mktemp("annotated")
    steps = pooling_steps(out, params(root=str(tiny_root)))
    for fold in (0, 1):
        steps += [
            (
                "cluster",
                "--index",
                out / "dataset",
                "--prototypes",
                artifact(out, layout.PROTOTYPES),
                "--fold",
                fold,
                "--out",
                artifact(out, layout.CLUSTERS, fold=fold),
                "--params",
                params(k=3, nredo=2),
                "--protocol",
                PROTOCOL,
                "--seed",
                "0",
            ),
            (
                "write-pseudo-masks",
                "--index",
                out / "dataset",
                "--features",
                artifact(out, layout.FEATURES),
                "--clusters",
                artifact(out, layout.CLUSTERS, fold=fold),
                "--out",
                artifact(out, layout.PSEUDO_MASKS, fold=fold),
            ),
        ]
    with cpu_only():
        for step in steps:
            assert cli(*step)[0] == 0, step
    return out


def train_argv(annotated: Path, out: Path, train: str, *extra) -> tuple:
    """`latentfss train` of fold 0, 1-shot, on the `annotated` fixture into `out` (model.pt,
    train.csv), with the config section `train` as JSON."""
    return (
        (
            "train",
            "--index",
            annotated / "dataset",
            "--encoder-init",
            artifact(annotated, layout.ENCODER_INIT),
        )
        + (
            "--pseudo-masks",
            artifact(annotated, layout.PSEUDO_MASKS, fold=0),
            "--fold",
            "0",
            "--shot",
            "1",
        )
        + ("--out", out / "model.pt", "--log-csv", out / "train.csv", "--params", train, *extra)
    )


@pytest.fixture(scope="session")
def evaluated(annotated, tmp_path_factory):
    """train (3 steps) -> build-bank -> evaluate (2 seeds) -> summarize, fold 0, 1-shot."""
    out = tmp_path_factory.mktemp("evaluated")
    model, bank, eval_dir = out / "model.pt", out / "bank", out / "eval"
    steps = [
        train_argv(
            annotated,
            out,
            params(iterations=3, batch_episodes=2, batch_pseudo=2, crop=48, workers=0),
            "--protocol",
            PROTOCOL,
        ),
        (
            "build-bank",
            "--index",
            annotated / "dataset",
            "--model",
            model,
            "--pseudo-masks",
            artifact(annotated, layout.PSEUDO_MASKS, fold=0),
            "--out",
            bank,
            "--params",
            params(input_size=64),
        ),
        (
            "evaluate",
            "--index",
            annotated / "dataset",
            "--model",
            model,
            "--bank",
            bank,
            "--fold",
            "0",
            "--shot",
            "1",
            "--out",
            eval_dir,
            "--protocol",
            PROTOCOL,
            "--params",
            params(episodes=12, seeds=[0, 1], input_size=64, batch_size=5, workers=0),
        ),
        (
            "summarize",
            f"main={eval_dir / 'metrics.json'}",
            "--csv",
            out / "summary.csv",
            "--md",
            out / "summary.md",
        ),
    ]
    with cpu_only():
        for step in steps:
            assert cli(*step)[0] == 0, step
    return out


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin/ first on PATH, where `latentfss` lives."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_latentfss(*argv: str) -> subprocess.CompletedProcess:
    """Run the installed console script in a fresh process, as a user (or Snakemake) would."""
    return subprocess.run(
        ["latentfss", *map(str, argv)], capture_output=True, text=True, timeout=120, env=tool_env()
    )


def write_metrics(
    path: Path, fold: int, miou: float, train_seed: int = 0, machine: dict | None = None
) -> Path:
    """A metrics.json with the keys summarize reads, as evaluate writes them, of two test seeds
    at miou -+ 0.01 (its model's and its own machine: `machine`, else this one's); beside it
    their scores.csv: the same 10 episodes per seed for every run, each at that IoU."""
    from latentfss.machine import machine as this_machine

    path.parent.mkdir(parents=True, exist_ok=True)
    lists = {"seed0": miou - 0.01, "seed1": miou + 0.01}
    record = machine or this_machine()
    metrics = {
        "fold": fold,
        "shot": 1,
        "miou": miou,
        "fbiou": 0.6,
        "runs": {name: {"miou": m, "fbiou": 0.6} for name, m in lists.items()},
        "episodes_per_s": 10.0,
        "model_episodes_per_s": 2.0,
        "parameters": 1000,
        "device": "cpu",
        "machine": {"train": record, "evaluate": record},
        "model": str(path.with_name("model.pt")),
        "train_seed": train_seed,
    }
    path.write_text(json.dumps(metrics))
    pd.DataFrame(
        [
            (name, e, 5 * fold + 1 + e % 5, round(1000 * m), 1000)
            for name, m in lists.items()
            for e in range(10)
        ],
        columns=["list", "episode", "class_id", "inter", "union"],
    ).to_csv(path.with_name("scores.csv"), index=False)
    return path


def summarize_runs(
    tmp_path: Path, runs: dict[str, tuple[float, ...]], capsys, *flags, train_seeds=(0,)
) -> str:
    """`latentfss summarize` over rows given as name -> mIoU of each fold (the same for every
    training seed), with more command-line `flags`: summary.md's text (summary.csv beside it)."""
    evaluations = [
        f"{row}="
        + str(write_metrics(tmp_path / f"{row}_{seed}/{fold}/metrics.json", fold, miou, seed))
        for row, mious in runs.items()
        for seed in train_seeds
        for fold, miou in enumerate(mious)
    ]
    return summarize(tmp_path, evaluations, capsys, *flags)


def summarize(tmp_path: Path, evaluations: list, capsys, *flags) -> str:
    """`latentfss summarize` of `ROW=METRICS` evaluations with more command-line `flags` ->
    summary.md's text (summary.csv beside it: tmp_path / s.csv)."""
    outputs = ("--csv", tmp_path / "s.csv", "--md", tmp_path / "s.md")
    code, err = cli("summarize", *evaluations, *flags, *outputs, capsys=capsys)
    assert code == 0, err
    return (tmp_path / "s.md").read_text()
