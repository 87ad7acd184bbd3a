"""The Snakemake workflow: lint, format, dry runs of the default and the presets, a real tiny
run, caching, and config errors as one line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tool_env
from test_readers import make_coco

TINY_CONFIG = {
    "folds": [0, 1],
    "shots": [1, 5],  # 5-shot episodes need 6 images of a class: hence 48 + 64 images
    "synthetic": {"num_train": 48, "num_val": 64, "min_size": 48, "max_size": 64},
    "protocol": {"min_support_pixels": 30},
    "encoder": {"calibration_images": 8},
    "annotation": {"input_size": 64},
    "cluster": {"k": 3, "nredo": 2},
    "train": {"iterations": 2, "batch_episodes": 2, "batch_pseudo": 2, "crop": 48, "workers": 0},
    "evaluate": {"episodes": 4, "seeds": [0], "input_size": 64, "batch_size": 4, "workers": 0},
    "ablations": [{"fg_rectify": False, "bg_rectify": False, "mine": False}],
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, presets=()) -> tuple[int, str]:
    """Run the repository's Snakefile in `workdir`: (exit code, stdout + stderr)."""
    files = [str(REPO / p) for p in presets]
    if config is not None:
        (workdir / "test.yaml").write_text(yaml.safe_dump(config))
        files.append(str(workdir / "test.yaml"))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", *args]  # fmt: skip
    if files:
        cmd += ["--configfile", *files]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=tool_env())
    return done.returncode, done.stdout + done.stderr


def jobs(out: str) -> set[str]:
    """The rules a (dry) run lists as jobs."""
    return set(re.findall(r"^rule (\w+):", out, re.MULTILINE)) - {"all"}


def test_lint_and_format_are_clean():
    done = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                          capture_output=True, text=True, env=tool_env())  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    fmt = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO,
                         capture_output=True, text=True, env=tool_env())  # fmt: skip
    assert fmt.returncode == 0, fmt.stderr


def test_python_code_is_ruff_clean():
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run(["ruff", *args, "src", "tests", "bench"], cwd=REPO,
                              capture_output=True, text=True, env=tool_env())  # fmt: skip
        assert done.returncode == 0, done.stdout


def test_default_dry_run(tmp_path):
    code, out = snakemake(tmp_path, "-n", presets=["config.yaml"])
    assert code == 0, out
    assert "make_synthetic" in out and "prepare" in out


def test_tiny_run_then_nothing_to_do_then_exact_reruns(tmp_path):
    code, out = snakemake(tmp_path, config=TINY_CONFIG)
    assert code == 0, out
    results = tmp_path / "results/synthetic"
    assert (results / "dataset/images.csv").read_text().count("\n") == 1 + 48 + 64
    for path in ("features.zarr", "encoder_init.pt", "prototypes.zarr", "fold0/clusters.zarr",
                 "fold1/pseudo_masks.zarr", "benchmarks/prepare.tsv", "fold0/shot5/model.pt",
                 "fold1/shot1/train.csv", "fold1/pseudo_masks.png", "fold1/shot5/bank",
                 "fold0/shot1/eval/episodes_seed0.csv", "summary.csv", "summary.md",
                 "ablations/bg0_mine0/fold1/shot5/model.pt",
                 "ablations/fg0_bg0_mine0/fold0/shot1/eval/metrics.json"):  # fmt: skip
        assert (results / path).exists(), path
    assert not (results / "fold2").exists()  # only the configured folds
    assert not (results / "ablations/bg0_mine0/fold0/shot1/bank").exists()  # fg off: no bank
    summary = (results / "summary.md").read_text()
    assert "5-shot mean" in summary and "## Ablations" in summary
    assert (tmp_path / "logs/write_pseudo_masks/synthetic_fold1.log").is_file()

    code, out = snakemake(tmp_path, "-n", config=TINY_CONFIG)
    assert code == 0 and "Nothing to be done" in out, out

    # editing a section re-runs exactly the jobs that read it
    after = ["build_bank", "evaluate", "evaluate_ablation", "summarize"]
    for section, edit, expected in [
        ("evaluate", {"episodes": 7}, {"evaluate", "evaluate_ablation", "summarize"}),
        ("train", {"iterations": 3}, {"train", "train_ablation", *after}),
        ("cluster", {"k": 2}, {"cluster", "write_pseudo_masks", "inspect_pseudo_masks",
                              "inspect_prototypes", "train", "train_ablation", *after}),
    ]:  # fmt: skip
        edited = {**TINY_CONFIG, section: {**TINY_CONFIG.get(section, {}), **edit}}
        code, out = snakemake(tmp_path, "-n", config=edited)
        assert code == 0 and jobs(out) == expected, (section, jobs(out))
    edited = {**TINY_CONFIG, "synthetic": {**TINY_CONFIG["synthetic"], "num_val": 9}}
    code, out = snakemake(tmp_path, "-n", config=edited)
    assert code == 0 and {"make_synthetic", "prepare"} <= jobs(out), out


def test_temporary_features_are_deleted_once_used(tmp_path):
    config = {**TINY_CONFIG, "folds": [2], "shots": [1], "ablations": [],
              "annotation": {"input_size": 64, "temporary_features": True}}  # fmt: skip
    code, out = snakemake(tmp_path, config=config)
    assert code == 0, out
    results = tmp_path / "results/synthetic"
    assert (results / "fold2/pseudo_masks.zarr").is_dir() and (results / "prototypes.zarr").is_dir()
    assert not (results / "features.zarr").exists()


@pytest.mark.parametrize(
    "config,message",
    [
        ({"dataset": {"nme": "pascal"}}, "ERROR: config: unknown key 'dataset.nme'"),
        ({"synthetic": {"num_train": "many"}}, "ERROR: config: synthetic.num_train: 'many' is"),
        ({"folds": [0, 4]}, "ERROR: config: folds.1: 4 is not one of [0, 1, 2, 3]"),
        ({"dataset": {"name": "pascal", "root": "/no/VOC2012"}},
         "ERROR: dataset.root: /no/VOC2012 is not a directory"),
    ],
)  # fmt: skip
def test_config_errors_stop_snakemake_with_one_line(tmp_path, config, message):
    code, out = snakemake(tmp_path, "-n", config=config)
    assert code == 2
    assert out.strip().splitlines()[-1].startswith(message), out
    assert "Traceback" not in out


def test_pascal_preset_dry_run_on_a_voc_root(tiny_root, tmp_path):
    root = shutil.copytree(tiny_root, tmp_path / "VOC2012")
    lists = root / "ImageSets/Segmentation"
    (lists / "sbd_train.txt").write_text("train_00001\ntrain_00002\n")
    code, out = snakemake(tmp_path, "-n", config={"dataset": {"root": str(root)}},
                          presets=["workflow/presets/pascal.yaml"])  # fmt: skip
    assert code == 0, out
    assert "prepare" in out and "make_synthetic" not in out


def test_table3_preset_adds_one_run_per_row_and_trains_only_new_models(tmp_path):
    code, out = snakemake(tmp_path, "-n", "--quiet", "rules",
                          presets=["config.yaml", "workflow/presets/table3.yaml"])  # fmt: skip
    assert code == 0, out
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.MULTILINE))
    assert counts["train"] == "4" and counts["evaluate"] == "4"  # 4 folds, 1-shot
    assert counts["train_ablation"] == "12"  # (bg, mine) = 00, 10, 01 per fold
    assert counts["evaluate_ablation"] == "20"  # 5 rows per fold
    assert counts["build_bank_ablation"] == "8"  # rows with FG on a new model: 100, 110


def test_coco_preset_dry_run_on_a_coco_root(tmp_path):
    make_coco(tmp_path / "coco")
    code, out = snakemake(tmp_path, "-n", config={"dataset": {"root": str(tmp_path / "coco")}},
                          presets=["workflow/presets/coco.yaml"])  # fmt: skip
    assert code == 0, out
    assert "prepare" in out and "make_synthetic" not in out
