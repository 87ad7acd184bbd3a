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
from latentfss import layout
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


def at(pattern: str, row: str = "main", **values) -> str:
    """A latentfss.layout pattern in the tiny run's row `row`, training seed 0."""
    return pattern.format(row=row, **{"tseed": 0, "images": "train_set", **values})


@pytest.mark.slow
def test_tiny_run_then_nothing_to_do_then_exact_reruns(tmp_path):
    code, out = snakemake(tmp_path, config=TINY_CONFIG)
    assert code == 0, out
    results = tmp_path / "results/synthetic"
    assert (results / "dataset/images.csv").read_text().count("\n") == 1 + 48 + 64
    for path in (
        at(layout.FEATURES),
        at(layout.ENCODER_INIT),
        at(layout.PROTOTYPES),
        at(layout.CLUSTERS, fold=0),
        at(layout.PSEUDO_MASKS, fold=1),
        at(layout.PSEUDO_MASKS, fold=1, images="remain"),  # the remain row's
        at(layout.PSEUDO_MASKS_FIGURE, fold=1),
        "benchmarks/prepare.tsv",
        at(layout.MODEL, fold=0, shot=5),
        at(layout.TRAIN_LOG, fold=1, shot=1),
        at(layout.BANK, fold=1, shot=5),
        at(layout.EVAL, fold=0, shot=1) + "/episodes_seed0.csv",
        "summary.csv",
        "summary.md",
        at(layout.MODEL, "none", fold=1, shot=5),
        at(layout.EVAL, "none", fold=0, shot=1) + "/metrics.json",
        at(layout.BANK, "remain", fold=0, shot=1),
        at(layout.EVAL, "remain", fold=1, shot=5) + "/metrics.json",
    ):
        assert (results / path).exists(), path
    assert not (results / "main/fold2").exists()  # only the configured folds
    assert not (results / at(layout.BANK, "none", fold=0, shot=1)).exists()  # FG off
    for row in ("none", "remain"):  # they share main's annotation
        assert not (results / row / "features.zarr").exists()
        assert not (results / row / "fold0").exists()
    summary = (results / "summary.md").read_text()
    table = summary.split("\n\n")[2].splitlines()
    assert table[0] == "| Row | shot | fold0 | fold1 | Mean | sd train | sd test | Δ |"
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        [f"| {row}", str(shot)] for shot in (1, 5) for row in ("main", "none", "remain")
    ]
    assert table[2].endswith("| reference |") and "]" in table[3]  # intervals
    assert "| none | evaluate.fg_rectify: false, model.bg_rectify: false" in summary
    assert "| remain | mining.remain: true | features: main, annotation: main |" in summary
    assert (results / "training.png").stat().st_size > 0
    benchmarks = pd.read_csv(results / "benchmarks.csv")
    jobs_timed = set(benchmarks["job"])
    assert {
        "prepare",
        "train_main_train0_fold1_shot5",
        "train_none_train0_fold0_shot1",
        "evaluate_none_train0_fold1_shot5",
        "write_pseudo_masks_main_fold0_remain",
        "total (sequential)",
    } <= jobs_timed
    # the machine and each job's cores are recorded, so that two runs that differ can be told
    # apart (the profile's benchmark-extended gives the threads)
    host = machine()
    assert (benchmarks["cpu"] == host["cpu"]).all() and (benchmarks["torch"] == host["torch"]).all()
    assert benchmarks.set_index("job").loc["train_main_train0_fold1_shot5", "threads"] >= 1
    training = re.search(r"^- training: (.*)$", summary.split("## Machine")[1], re.M)[1]
    assert training.startswith(host["cpu"]) and "; 1 torch thread (" in training  # train: 1 core
    assert "results table results/synthetic/summary.md" in out  # the closing message
    report = tmp_path / "report.html"
    code, out = snakemake(tmp_path, "--report", str(report), config=TINY_CONFIG)
    assert code == 0 and report.stat().st_size > 0, out
    assert (tmp_path / "logs/write_pseudo_masks/synthetic_main_fold1_train_set.log").is_file()

    code, out = snakemake(tmp_path, "-n", config=TINY_CONFIG)
    assert code == 0 and "Nothing to be done" in out, out

    # editing a section re-runs exactly the jobs that read it (and the tables that list them)
    tables = {"summarize", "inspect_benchmarks"}
    trained = {"train", "inspect_training", "build_bank", "evaluate", *tables}
    annotated = {"cluster", "write_pseudo_masks", "inspect_pseudo_masks", "inspect_prototypes"}
    for section, edit, expected in [
        ("evaluate", {"episodes": 7}, {"evaluate", *tables}),
        ("train", {"iterations": 3}, trained),
        ("cluster", {"k": 2}, annotated | trained),
    ]:
        edited = {**TINY_CONFIG, section: {**TINY_CONFIG.get(section, {}), **edit}}
        code, out = snakemake(tmp_path, "-n", config=edited)
        assert code == 0 and jobs(out) == expected, (section, jobs(out))
    edited = {**TINY_CONFIG, "synthetic": {**TINY_CONFIG["synthetic"], "num_val": 9}}
    code, out = snakemake(tmp_path, "-n", config=edited)
    assert code == 0 and {"make_synthetic", "prepare"} <= jobs(out), out

    # a new row shares every stage's work its inputs allow: one that differs in evaluate.beta
    # only evaluates; one that differs in cluster.k annotates and trains, on main's features
    for row, expected, reads in [
        ({"evaluate": {"beta": 0.5}}, {"evaluate", *tables}, at(layout.MODEL, fold=0, shot=1)),
        ({"cluster": {"k": 2}}, annotated | trained, at(layout.PROTOTYPES)),
    ]:
        runs = {**TINY_CONFIG["runs"], "new": row}
        code, out = snakemake(tmp_path, "-n", "-p", config={**TINY_CONFIG, "runs": runs})
        assert code == 0 and jobs(out) == expected, (row, jobs(out))
        assert out.count("rule evaluate:") == 4 and f"results/synthetic/{reads} " in out

    # a deleted artifact is made again when a job that reads it runs (as after a stage's
    # "damaged ...; delete it and re-run"), or when asked for by its path
    bank = f"results/synthetic/{at(layout.BANK, fold=1, shot=5)}"
    shutil.rmtree(tmp_path / bank)
    code, out = snakemake(tmp_path, "-n", "--forcerun", "evaluate", config=TINY_CONFIG)
    assert code == 0 and out.count("rule build_bank:") == 1 and f"{bank}\n" in out, out
    code, out = snakemake(tmp_path, "-n", bank, config=TINY_CONFIG)
    assert code == 0 and jobs(out) == {"build_bank"}, jobs(out)

    # a project folder moved elsewhere (as `cp -a`, the original removed) evaluates again to
    # the same scores: nothing under results/ holds an absolute path that is read back
    scores = {m: json.loads(m.read_text())["miou"] for m in results.glob("**/eval/metrics.json")}
    moved = shutil.copytree(tmp_path, tmp_path.with_name(tmp_path.name + "-moved"), symlinks=True)
    shutil.rmtree(tmp_path)
    code, out = snakemake(moved, "--forcerun", "evaluate", config=TINY_CONFIG)
    assert code == 0, out
    for metrics, miou in scores.items():
        again = moved / metrics.relative_to(tmp_path)
        assert json.loads(again.read_text())["miou"] == miou, again


def test_rule_all_reaches_every_rule(tmp_path):
    """rule all asks for the summary and the figures only; every rule the workflow defines must
    be reached from them with the tiny config (a Table 3 and a Table 5 row included)."""
    code, out = snakemake(tmp_path, "--list-rules", config=TINY_CONFIG)
    assert code == 0, out
    defined = set(re.findall(r"^(\w+)$", out, re.MULTILINE))
    assert len(defined) == 16, defined
    code, out = snakemake(tmp_path, "-n", config=TINY_CONFIG)
    assert code == 0, out
    # pretrain_encoder runs with encoder.weights: pretrain only (test_the_pretrain_rule_...)
    assert jobs(out) | {"all", "pretrain_encoder"} == defined, defined - jobs(out)


def test_rows_share_the_work_their_inputs_allow(tmp_path):
    """Three rows over the default config: main, one that changes evaluate.beta (evaluation
    only), one that changes cluster.k (annotation on main's features, training, evaluation):
    each stage's jobs are those of the rows whose inputs to it differ."""
    runs = {"main": {}, "beta": {"evaluate": {"beta": 0.5}}, "k": {"cluster": {"k": 3}}}
    code, out = snakemake(
        tmp_path, "-n", "--quiet", "rules", config={"runs": runs}, presets=["config.yaml"]
    )
    assert code == 0, out
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", out, re.MULTILINE)}
    folds, models = 4, 4 * 2  # 4 folds x 2 shots x 1 training seed
    assert counts["extract_features"] == counts["pool_prototypes"] == 1
    assert counts["cluster"] == counts["write_pseudo_masks"] == 2 * folds  # main, k
    assert counts["train"] == counts["build_bank"] == 2 * models  # main, k
    assert counts["evaluate"] == 3 * models


@pytest.mark.slow
def test_the_same_seed_gives_the_same_artifacts_with_or_without_features_zarr(tmp_path, on_cpu):
    """Two runs from scratch in two folders, the second with annotation.keep_features false:
    identical pseudo masks, training logs and episode lists, equal metrics (CPU); the second
    never wrote features.zarr."""
    import zarr

    config = {**TINY_CONFIG, "folds": [0], "shots": [1], "runs": {"main": {}}}
    annotation = {**config["annotation"], "keep_features": False}
    runs = {tmp_path / "a": config, tmp_path / "b": {**config, "annotation": annotation}}
    for run, run_config in runs.items():
        run.mkdir()
        code, out = snakemake(run, config=run_config)
        assert code == 0, out
    a, b = (run / "results/synthetic" for run in runs)
    assert (a / at(layout.FEATURES)).is_dir() and not (b / at(layout.FEATURES)).exists()
    masks = [
        zarr.open_group(str(r / at(layout.PSEUDO_MASKS, fold=0)), mode="r")["masks"][:]
        for r in (a, b)
    ]
    assert np.array_equal(*masks)
    for name in (
        at(layout.TRAIN_LOG, fold=0, shot=1),
        at(layout.EVAL, fold=0, shot=1) + "/episodes_seed0.csv",
        "dataset/pixels.csv",
    ):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    eval_dir = at(layout.EVAL, fold=0, shot=1)
    metrics = [json.loads((r / eval_dir / "metrics.json").read_text()) for r in (a, b)]
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
            {"runs": {"a": {"train": {"iterations": "many"}}}},
            "ERROR: config: runs.a.train.iterations: 'many' is not of type integer",
        ),
        (
            {"runs": {"a": {"evaluate": {"seeds": [1]}}}},
            "ERROR: runs.a.evaluate.seeds: one setting for every row; set it outside runs",
        ),
        ({"runs": {"voc": {}}}, "ERROR: runs.voc: its folder would be another's"),
        ({"runs": {"main": {}, True: {}}}, "ERROR: runs: the row name True is not a string"),
        ({"reference": "b"}, "ERROR: reference: 'b' is not a row of runs"),
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
        "runs={main: {}, fast: {train: {iterations: 2}, model: {mine: false}}}",
        presets=["config.yaml"],
    )
    assert code == 0, out
    assert '"iterations": 5,' in out and '"beta": 0.5,' in out and '"fg_rectify": false' in out
    assert '"iterations": 2,' in out and '"mine": false' in out  # a row's, nested deeper
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


def test_every_row_is_trained_once_per_training_seed(tmp_path):
    config = {"folds": [0], "shots": [1], "train_seeds": [0, 3]}
    code, out = snakemake(tmp_path, "-n", "-p", presets=["config.yaml"], config=config)
    assert code == 0, out
    commands = re.findall(r"^Shell command: latentfss train .*$", out, re.MULTILINE)
    assert len(commands) == 2
    for seed, command in zip((0, 3), sorted(commands, key=lambda c: "train3" in c), strict=True):
        model = layout.MODEL.format(row="main", tseed=seed, fold=0, shot=1)
        assert f"--out results/synthetic/{model}" in command and f"--seed {seed} " in command
    assert f"{layout.EVAL.format(row='main', tseed=3, fold=0, shot=1)}/scores.csv" in out


def rule_counts(tmp_path: Path, *presets: str) -> dict[str, int]:
    """How many jobs of each rule a dry run of config.yaml and `presets` lists."""
    files = ["config.yaml", *(f"workflow/presets/{p}.yaml" for p in presets)]
    code, out = snakemake(tmp_path, "-n", "--quiet", "rules", presets=files)
    assert code == 0, out
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", out, re.MULTILINE)}


def test_table3_preset_runs_eight_rows_three_training_seeds_and_trains_only_new_models(tmp_path):
    counts = rule_counts(tmp_path, "table3")
    # 4 models ((bg, mine) = 00, 10, 01, 11) per fold (4) and training seed (3), 1-shot
    assert counts["train"] == 4 * 4 * 3
    assert counts["build_bank"] == 4 * 4 * 3  # each model has a row with FG
    assert counts["evaluate"] == 8 * 4 * 3  # 8 rows
    assert counts["extract_features"] == 1 and counts["cluster"] == 4  # one annotation


def test_table5_preset_trains_the_none_and_remain_rows(tmp_path):
    counts = rule_counts(tmp_path, "table5")
    assert counts["write_pseudo_masks"] == 2 * 4  # the train set's and Remain's, per fold
    assert counts["train"] == counts["evaluate"] == 3 * 4 * 3  # bg, main, remain
    assert counts["build_bank"] == 2 * 4 * 3  # FG on: main and remain


def test_the_table_presets_together_are_one_run(tmp_path):
    """Table 1's encoder rows (each re-makes everything from the features), Table 3's and
    Table 5's: 11 rows, 3 annotations, the rows of Table 3 and 5 that are the same shared."""
    counts = rule_counts(tmp_path, "table1", "table3", "table5")
    assert counts["pretrain_encoder"] == 1 and counts["extract_features"] == 3
    assert counts["cluster"] == 3 * 4
    assert counts["train"] == (4 + 1 + 2) * 4 * 3  # Table 3's 4 models, remain, 2 encoders
    assert counts["evaluate"] == 11 * 4 * 3


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
    results = tmp_path / "results/synthetic"
    code, out = snakemake(tmp_path, f"results/synthetic/{at(layout.ENCODER_INIT)}", config=config)
    assert code == 0, out
    made = torch.load(results / at(layout.PRETRAINED), weights_only=True)["state_dict"]
    init = torch.load(results / at(layout.ENCODER_INIT), weights_only=True)["state_dict"]
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
    blocks = re.split(r"\n(?= *rule )", rules)[1:]
    assert len(blocks) == 15
    for block in blocks:
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
