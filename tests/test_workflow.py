"""The Snakemake workflow: lint, format, dry runs of the default and the presets, a real tiny
run, caching, and config errors as one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, tool_env
from latentfss.machine import machine
from test_pascal import make_official
from test_readers import make_coco

TINY_CONFIG = yaml.safe_load((REPO / ".test/config.yaml").read_text())  # the tiny run


def snakemake(workdir: Path, *args: str, config: dict | None = None, presets=()) -> tuple[int, str]:
    """Run the repository's Snakefile in `workdir`: (exit code, stdout + stderr)."""
    files = [str(REPO / p) for p in presets]
    if config is not None:
        (workdir / "test.yaml").write_text(yaml.safe_dump(config))
        files.append(str(workdir / "test.yaml"))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    if files:
        cmd += ["--configfile", *files]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=tool_env())
    return done.returncode, done.stdout + done.stderr


def jobs(out: str) -> set[str]:
    """The rules a (dry) run lists as jobs."""
    return set(re.findall(r"^rule (\w+):", out, re.MULTILINE)) - {"all"}


def test_lint_and_format_are_clean():
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    fmt = subprocess.run(
        ["snakefmt", "--check", "Snakefile", "workflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert fmt.returncode == 0, fmt.stderr


def test_python_code_is_ruff_clean():
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run(
            ["ruff", *args, "src", "tests", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=tool_env(),
        )
        assert done.returncode == 0, done.stdout


def test_default_dry_run(tmp_path):
    code, out = snakemake(tmp_path, "-n", presets=["config.yaml"])
    assert code == 0, out
    assert "make_synthetic" in out and "prepare" in out


@pytest.mark.slow
def test_tiny_run_then_nothing_to_do_then_exact_reruns(tmp_path):
    code, out = snakemake(tmp_path, config=TINY_CONFIG)
    assert code == 0, out
    results = tmp_path / "results/synthetic"
    assert (results / "dataset/images.csv").read_text().count("\n") == 1 + 48 + 64
    for path in (
        "features.zarr",
        "encoder_init.pt",
        "prototypes.zarr",
        "fold0/clusters.zarr",
        "fold1/pseudo_masks.zarr",
        "benchmarks/prepare.tsv",
        "fold0/shot5/model.pt",
        "fold1/shot1/train.csv",
        "fold1/pseudo_masks.png",
        "fold1/shot5/bank",
        "fold0/shot1/eval/episodes_seed0.csv",
        "summary.csv",
        "summary.md",
        "variants/bg0_mine0_remain0_train0/fold1/shot5/model.pt",
        "variants/fg0_bg0_mine0_remain0_train0/fold0/shot1/eval/metrics.json",
        "fold1/remain/pseudo_masks.zarr",
        "variants/bg1_mine1_remain1_train0/fold0/shot1/bank",
        "variants/fg1_bg1_mine1_remain1_train0/fold1/shot5/eval/metrics.json",
    ):
        assert (results / path).exists(), path
    assert not (results / "fold2").exists()  # only the configured folds
    assert not (results / "variants/bg0_mine0_remain0_train0/fold0/shot1/bank").exists()  # fg off
    summary = (results / "summary.md").read_text()
    assert "5-shot mean" in summary and "## Ablations" in summary
    assert "| baseline |" in summary and "]" in summary.split("## Ablations")[1]  # intervals
    assert "| Trainset + Remain | 5 |" in summary  # Table 5
    assert (results / "training.png").stat().st_size > 0
    benchmarks = pd.read_csv(results / "benchmarks.csv")
    jobs_timed = set(benchmarks["job"])
    assert {
        "prepare",
        "train_fold1_shot5",
        "train_bg0_mine0_remain0_train0_fold0_shot1",
        "evaluate_fg0_bg0_mine0_remain0_train0_fold1_shot5",
        "write_pseudo_masks_fold0_remain",
        "total (sequential)",
    } <= jobs_timed
    # the machine and each job's cores are recorded, so that two runs that differ can be told
    # apart (the profile's benchmark-extended gives the threads)
    host = machine()
    assert (benchmarks["cpu"] == host["cpu"]).all() and (benchmarks["torch"] == host["torch"]).all()
    assert benchmarks.set_index("job").loc["train_fold1_shot5", "threads"] >= 1
    training = re.search(r"^- training: (.*)$", summary.split("## Machine")[1], re.M)[1]
    assert training.startswith(host["cpu"]) and "; 1 torch thread (" in training  # train: 1 core
    assert "results table results/synthetic/summary.md" in out  # the closing message
    report = tmp_path / "report.html"
    code, out = snakemake(tmp_path, "--report", str(report), config=TINY_CONFIG)
    assert code == 0 and report.stat().st_size > 0, out
    assert (tmp_path / "logs/write_pseudo_masks/synthetic_fold1.log").is_file()

    code, out = snakemake(tmp_path, "-n", config=TINY_CONFIG)
    assert code == 0 and "Nothing to be done" in out, out

    # editing a section re-runs exactly the jobs that read it (and the tables that list them)
    tables = {"summarize", "inspect_benchmarks"}
    after = {"build_bank", "build_bank_variant", "evaluate", "evaluate_variant", *tables}
    trained = {"train", "train_variant", "inspect_training", *after}
    for section, edit, expected in [
        ("evaluate", {"episodes": 7}, {"evaluate", "evaluate_variant", *tables}),
        ("train", {"iterations": 3}, trained),
        (
            "cluster",
            {"k": 2},
            {
                "cluster",
                "write_pseudo_masks",
                "write_pseudo_masks_remain",
                "inspect_pseudo_masks",
                "inspect_prototypes",
                *trained,
            },
        ),
    ]:
        edited = {**TINY_CONFIG, section: {**TINY_CONFIG.get(section, {}), **edit}}
        code, out = snakemake(tmp_path, "-n", config=edited)
        assert code == 0 and jobs(out) == expected, (section, jobs(out))
    edited = {**TINY_CONFIG, "synthetic": {**TINY_CONFIG["synthetic"], "num_val": 9}}
    code, out = snakemake(tmp_path, "-n", config=edited)
    assert code == 0 and {"make_synthetic", "prepare"} <= jobs(out), out

    # deleting one artifact re-runs only what depends on it
    shutil.rmtree(results / "fold1/shot5/bank")
    code, out = snakemake(tmp_path, "-n", config=TINY_CONFIG)
    assert code == 0 and jobs(out) == {"build_bank", "evaluate", *tables}, jobs(out)
    assert out.count("rule build_bank:") == 1 and "fold1/shot5/bank" in out

    # a project folder moved elsewhere (as `cp -a`, the original removed) evaluates again to
    # the same scores: nothing under results/ holds an absolute path that is read back
    scores = {m: json.loads(m.read_text())["miou"] for m in results.glob("**/eval/metrics.json")}
    moved = shutil.copytree(tmp_path, tmp_path.with_name(tmp_path.name + "-moved"), symlinks=True)
    shutil.rmtree(tmp_path)
    code, out = snakemake(moved, "--forcerun", "evaluate", "evaluate_variant", config=TINY_CONFIG)
    assert code == 0, out
    for metrics, miou in scores.items():
        again = moved / metrics.relative_to(tmp_path)
        assert json.loads(again.read_text())["miou"] == miou, again


def test_rule_all_reaches_every_rule(tmp_path):
    """`jobs()` (common.smk) lists rule all's targets by hand; a rule missing from it would never
    be built by default, nor timed. The tiny config (a Table 3 and a Table 5 row included) must
    schedule a job of every rule the workflow defines."""
    code, out = snakemake(tmp_path, "--list-rules", config=TINY_CONFIG)
    assert code == 0, out
    defined = set(re.findall(r"^(\w+)$", out, re.MULTILINE))
    assert len(defined) == 20, defined
    code, out = snakemake(tmp_path, "-n", config=TINY_CONFIG)
    assert code == 0, out
    # pretrain_encoder runs with encoder.weights: pretrain only (test_the_pretrain_rule_...)
    assert jobs(out) | {"all", "pretrain_encoder"} == defined, defined - jobs(out)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_artifacts_with_or_without_features_zarr(tmp_path, on_cpu):
    """Two runs from scratch in two folders, the second with annotation.keep_features false:
    identical pseudo masks, training logs and episode lists, equal metrics (CPU); the second
    never wrote features.zarr."""
    import zarr

    config = {**TINY_CONFIG, "folds": [0], "shots": [1], "ablations": []}
    annotation = {**config["annotation"], "keep_features": False}
    runs = {tmp_path / "a": config, tmp_path / "b": {**config, "annotation": annotation}}
    for run, run_config in runs.items():
        run.mkdir()
        code, out = snakemake(run, config=run_config)
        assert code == 0, out
    a, b = (run / "results/synthetic" for run in runs)
    assert (a / "features.zarr").is_dir() and not (b / "features.zarr").exists()
    masks = [
        zarr.open_group(str(r / "fold0/pseudo_masks.zarr"), mode="r")["masks"][:] for r in (a, b)
    ]
    assert np.array_equal(*masks)
    for name in (
        "fold0/shot1/train.csv",
        "fold0/shot1/eval/episodes_seed0.csv",
        "dataset/pixels.csv",
    ):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    metrics = [json.loads((r / "fold0/shot1/eval/metrics.json").read_text()) for r in (a, b)]
    assert [m["miou"] for m in metrics] == [metrics[0]["miou"]] * 2
    assert metrics[0]["per_class"] == metrics[1]["per_class"]


@pytest.mark.parametrize(
    "config,message",
    [
        ({"dataset": {"nme": "pascal"}}, "ERROR: config: unknown key 'dataset.nme'"),
        ({"synthetic": {"num_train": "many"}}, "ERROR: config: synthetic.num_train: 'many' is"),
        ({"folds": [0, 4]}, "ERROR: config: folds.1: 4 is not one of [0, 1, 2, 3]"),
        (
            {"dataset": {"name": "pascal", "root": "/no/VOC2012"}},
            "ERROR: dataset.root: /no/VOC2012 is not a directory",
        ),
        (
            {"dataset": {"name": "pascal", "root": "/", "train_list": "/no/list.txt"}},
            "ERROR: dataset.train_list: /no/list.txt is neither a built list (voc, voc_sbd, "
            "trainaug) nor a file",
        ),
    ],
)
def test_config_errors_stop_snakemake_with_one_line(tmp_path, config, message):
    code, out = snakemake(tmp_path, "-n", config=config)
    assert code == 2
    assert out.strip().splitlines()[-1].startswith(message), out
    assert "Traceback" not in out


def test_nested_numbers_and_booleans_from_the_command_line(tmp_path):
    code, out = snakemake(
        tmp_path,
        "-n",
        "-p",
        "--config",
        "train={iterations: 5}",
        "evaluate={beta: 0.5, fg_rectify: false}",
        "train_seeds=[1]",
        presets=["config.yaml"],
    )
    assert code == 0, out
    assert '"iterations": 5,' in out and '"beta": 0.5,' in out and '"fg_rectify": false' in out
    assert '"batch_episodes": 4,' in out  # the rest of the section stays config.yaml's


def test_pascal_preset_dry_run_on_a_voc_root(tiny_root, tmp_path):
    root = shutil.copytree(tiny_root, tmp_path / "VOC2012")
    lists = root / "ImageSets/Segmentation"
    (lists / "sbd_train.txt").write_text("train_00001\ntrain_00002\n")
    code, out = snakemake(
        tmp_path,
        "-n",
        config={"dataset": {"root": str(root)}},
        presets=["workflow/presets/pascal.yaml"],
    )
    assert code == 0, out
    assert "prepare" in out and "make_synthetic" not in out


def test_pascal_preset_dry_run_on_the_official_archives_with_a_list_file(tmp_path):
    """The list file is prepare's input: editing it would index again."""
    root = make_official(tmp_path / "pascal")
    pfenet = tmp_path / "voc_sbd_merge_noduplicate.txt"
    pfenet.write_text("a\nb\n")
    code, out = snakemake(
        tmp_path,
        "-n",
        "-p",
        config={"dataset": {"root": str(root), "train_list": str(pfenet)}},
        presets=["workflow/presets/pascal.yaml"],
    )
    assert code == 0, out
    prepare = out[out.index("rule prepare:") :].split("\n\n")[0]
    assert f"input: {pfenet}" in prepare and "make_synthetic" not in out


def test_train_seeds_train_each_model_once_per_seed_the_first_at_the_plain_paths(tmp_path):
    config = {"folds": [0], "shots": [1], "train_seeds": [0, 3]}
    code, out = snakemake(tmp_path, "-n", "-p", presets=["config.yaml"], config=config)
    assert code == 0, out
    commands = re.findall(r"^Shell command: latentfss train .*$", out, re.MULTILINE)
    assert len(commands) == 2
    plain, variant = sorted(commands, key=lambda c: "variants" in c)
    assert "--out results/synthetic/fold0/shot1/model.pt" in plain and "--seed 0 " in plain
    assert "variants/bg1_mine1_remain0_train3/fold0/shot1/model.pt" in variant
    assert "--seed 3 " in variant
    assert "variants/fg1_bg1_mine1_remain0_train3/fold0/shot1/eval/scores.csv" in out


def test_table3_preset_runs_eight_rows_three_training_seeds_and_trains_only_new_models(tmp_path):
    code, out = snakemake(
        tmp_path, "-n", "--quiet", "rules", presets=["config.yaml", "workflow/presets/table3.yaml"]
    )
    assert code == 0, out
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.MULTILINE))
    assert counts["train"] == "4" and counts["evaluate"] == "4"  # 4 folds, 1-shot, seed 0
    # 4 models ((bg, mine) = 00, 10, 01, 11) per fold and training seed (0, 1, 2), less the main
    assert counts["train_variant"] == str(4 * 4 * 3 - 4)
    assert counts["build_bank_variant"] == str(4 * 4 * 3 - 4)  # each model has an FG row
    assert counts["evaluate_variant"] == str(8 * 4 * 3 - 4)  # 8 rows


def test_table5_preset_trains_the_none_and_remain_rows(tmp_path):
    code, out = snakemake(
        tmp_path, "-n", "--quiet", "rules", presets=["config.yaml", "workflow/presets/table5.yaml"]
    )
    assert code == 0, out
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.MULTILINE))
    assert counts["write_pseudo_masks_remain"] == "4"  # Remain is pseudo-labelled per fold
    # (bg, mine, remain) = 100, 111 and the main 110 per fold and training seed, less the main
    assert counts["train_variant"] == str(3 * 4 * 3 - 4)
    assert counts["build_bank_variant"] == str(2 * 4 * 3 - 4)  # FG on: 111 and the main 110
    assert counts["evaluate_variant"] == str(3 * 4 * 3 - 4)


@pytest.mark.parametrize("visible", ["0,1", ""])
def test_default_profile_gives_each_gpu_job_a_gpu_and_requires_cuda(tmp_path, visible):
    """With GPUs (here: CUDA_VISIBLE_DEVICES) as many GPU jobs run at a time as there are GPUs,
    each told `--device cuda` (one line if torch cannot use it); their loaders are declared
    threads. Without, no limit and `--device auto`. LATENTFSS_DEVICE beats the profile."""
    import yte

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", visible)
        mp.delenv("LATENTFSS_DEVICE", raising=False)
        with open(REPO / "workflow/profiles/default/config.yaml") as f:
            profile = yte.process_yaml(f, require_use_yte=True)
        assert profile.get("resources") == ({"gpu": 2} if visible else None)
        assert profile.get("default-resources") == ({"device": "cuda"} if visible else None)
        assert profile["rerun-incomplete"] is True
        code, out = snakemake(tmp_path, "-n", "-p", "--cores", "8", presets=["config.yaml"])
        assert code == 0 and "profiles/default" in out, out
        train = re.search(r"^rule train:.*?^Shell command: [^\n]*", out, re.M | re.S)[0]
        assert f"--device {'cuda' if visible else 'auto'}" in train
        threads = re.search(r"threads: (\d+)", train)  # Snakemake prints none for 1
        assert (threads[1] if threads else "1") == ("3" if visible else "1")
        mp.setenv("LATENTFSS_DEVICE", "cpu")
        code, out = snakemake(tmp_path, "-n", "-p", presets=["config.yaml"])
        assert code == 0 and "--device cuda" not in out and "--device cpu" in out


@pytest.mark.parametrize("weights", [None, "pretrain", "none"])
def test_the_encoder_is_pretrained_by_its_rule_only_for_weights_pretrain(tmp_path, weights):
    config = {"encoder": {"weights": weights}} if weights else {}  # None: the default
    code, out = snakemake(tmp_path, "-n", "-p", config=config, presets=["config.yaml"])
    assert code == 0, out
    assert ("pretrain_encoder" in jobs(out)) == (weights == "pretrain")
    job = re.search(r"^rule extract_features:.*?^Shell command: [^\n]*", out, re.M | re.S)[0]
    passed = {
        None: '"weights": "synthetic"',  # the shipped encoder: an input, never re-made
        "pretrain": "pretrain_encoder/weights.pt",
        "none": '"weights": "none"',
    }[weights]
    assert passed in job, job


@pytest.mark.slow
def test_the_pretrain_rule_makes_the_weights_extract_features_starts_from(tmp_path):
    import torch

    config = {**TINY_CONFIG, "encoder": {**TINY_CONFIG["encoder"], "weights": "pretrain"}}
    code, out = snakemake(tmp_path, "results/synthetic/encoder_init.pt", config=config)
    assert code == 0, out
    results = tmp_path / "results/synthetic"
    made = torch.load(results / "pretrain_encoder/weights.pt", weights_only=True)["state_dict"]
    init = torch.load(results / "encoder_init.pt", weights_only=True)["state_dict"]
    assert torch.equal(init["layer3.1.conv2.weight"], made["layer3.1.conv2.weight"].float())


def test_without_kept_features_no_features_zarr_and_its_readers_encode(tmp_path):
    config = {"annotation": {"keep_features": False}}
    code, out = snakemake(tmp_path, "-n", "-p", config=config, presets=["config.yaml"])
    assert code == 0, out
    assert "features.zarr" not in out
    for rule in ("pool_prototypes", "write_pseudo_masks"):
        job = re.search(rf"^rule {rule}:.*?^Shell command: [^\n]*", out, re.M | re.S)[0]
        assert "gpu=1" in job and "--encoder-init" in job and "--features" not in job, job


def test_slurm_profile_dry_run_sends_gpu_jobs_to_the_gpu_partition(tmp_path):
    profile = str(REPO / "workflow/profiles/slurm")
    code, out = snakemake(
        tmp_path, "-n", "--workflow-profile", profile, "--cores", "16", presets=["config.yaml"]
    )
    assert code == 0, out
    resources = dict(re.findall(r"^rule (\w+):.*?resources: ([^\n]*)", out, re.M | re.S))
    for rule in ("extract_features", "train", "build_bank", "evaluate"):
        assert "slurm_partition=gpu" in resources[rule] and "gpu=1" in resources[rule], rule
    for rule in ("prepare", "cluster", "summarize"):
        assert "slurm_partition=cpu" in resources[rule] and "gpu=" not in resources[rule], rule
    for rule in ("pool_prototypes", "write_pseudo_masks"):  # they encode without features.zarr
        assert "slurm_partition=gpu" in resources[rule] and "gpu=0" in resources[rule], rule
    assert "runtime=720" in resources["train"]
    assert re.search(r"rule train:.*?threads: 10", out, re.S)


def test_every_rule_declares_what_a_scheduler_needs():
    rules = "".join(p.read_text() for p in sorted((REPO / "workflow/rules").glob("*.smk")))
    blocks = re.split(r"\n(?= *rule | *use rule )", rules)[1:]
    assert len(blocks) == 19
    for block in blocks:
        if block.lstrip().startswith("use rule"):
            continue  # inherits the directives it does not override
        for directive in ("log:", "benchmark:", "conda:", "threads:", "mem_mb=", "runtime="):
            assert directive in block, (block.split(":")[0], directive)


def test_conda_envs_install_latentfss_and_one_faiss(tmp_path):
    for kind, faiss in (("cpu", "faiss-cpu"), ("gpu", "faiss-gpu")):
        env = yaml.safe_load((REPO / f"envs/latentfss-{kind}.yaml").read_text())
        names = {dep.split("=")[0] for dep in env["dependencies"]}
        assert faiss in names and not {"faiss-cpu", "faiss-gpu"} - {faiss} & names
        assert (REPO / f"envs/latentfss-{kind}.post-deploy.sh").is_file()
    script = REPO / "envs/latentfss-gpu.post-deploy.sh"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "python $*" > "$CALLED"\n')
    (fake / "python").chmod(0o755)
    env = {**tool_env(), "PATH": f"{fake}:/usr/bin:/bin", "CALLED": str(tmp_path / "called")}
    done = subprocess.run(["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "called").read_text().split() == [
        "python",
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--editable",
        ".",
    ]
    done = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "from the latentfss checkout" in done.stderr


def test_coco_preset_dry_run_on_a_coco_root(tmp_path):
    make_coco(tmp_path / "coco")
    code, out = snakemake(
        tmp_path,
        "-n",
        config={"dataset": {"root": str(tmp_path / "coco")}},
        presets=["workflow/presets/coco.yaml"],
    )
    assert code == 0, out
    assert "prepare" in out and "make_synthetic" not in out
