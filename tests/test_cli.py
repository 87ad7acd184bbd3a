"""The `latentfss` console script: every stage listed; usage and write errors in one line."""

from __future__ import annotations

import pytest

from conftest import cli, params, run_latentfss, write_metrics
from latentfss.cli import STAGES

RULE_NAMES = [
    "make_synthetic",
    "prepare",
    "pretrain_encoder",
    "extract_features",
    "pool_prototypes",
    "cluster",
    "write_pseudo_masks",
    "train",
    "build_bank",
    "evaluate",
    "summarize",
    "inspect",
    "segment",
]


def test_help_lists_every_stage_named_as_its_rule():
    done = run_latentfss("--help")
    assert done.returncode == 0
    assert list(STAGES) == [name.replace("_", "-") for name in RULE_NAMES]
    for name in STAGES:
        assert f"    {name} " in done.stdout


def test_stage_help_shows_its_arguments():
    done = run_latentfss("prepare", "--help")
    assert done.returncode == 0 and "--out" in done.stdout and "--params" in done.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["cluster", "--index", "x", "--prototypes", "y", "--fold", "7", "--out", "z"],
            "ERROR: latentfss cluster: argument --fold: invalid choice: 7 (choose from 0, 1, 2, 3)",
        ),
        (
            ["evaluate", "--index", "x"],
            "ERROR: latentfss evaluate: the following arguments are "
            "required: --model, --fold, --shot, --out",
        ),
        (["nosuch"], "ERROR: latentfss: argument STAGE: invalid choice: 'nosuch'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(argv, message):
    done = run_latentfss(*argv)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(message), done.stderr


@pytest.mark.parametrize("stage", ["prepare", "summarize"])
def test_a_full_disk_is_one_line_naming_the_output_and_the_old_one_survives(
    stage, tiny_root, tmp_path, monkeypatch, capsys
):
    """prepare writes a directory (atomic_dir), summarize files (atomic_file); the disk fills
    up while the new output is written, over an older output."""
    import errno

    import pandas as pd

    out = tmp_path / "out"
    argv = {
        "prepare": ["prepare", "--out", out, "--params", params(root=str(tiny_root))],
        "summarize": [
            "summarize",
            f"main={write_metrics(tmp_path / 'm.json', 0, 0.5)}",
            "--csv",
            out,
            "--md",
            tmp_path / "s.md",
        ],
    }[stage]
    assert cli(*argv)[0] == 0
    before = sorted(p.name for p in tmp_path.rglob("*"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    code, err = cli(*argv, capsys=capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"ERROR: {out}: cannot write (No space left on device); nothing was written"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temporary left behind


def test_faiss_missing_or_installed_twice_is_one_line(monkeypatch, capsys):
    """faiss comes from one extra, `cpu` or `gpu`: none installed, or both, is one line."""
    import sys
    from importlib.metadata import PackageNotFoundError

    from latentfss import cli as cli_module

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails, as when missing
    for module in ("latentfss.stages.cluster", "latentfss.clustering"):  # imported afresh
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(SystemExit) as stop:
        cli_module.main(["cluster", "--help"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "ERROR: faiss is not installed: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA 12 "
        "machine)\n"
    )

    class Installed:
        version = "1.15.1"

    def distribution(name):
        if name not in ("faiss-cpu", "faiss-gpu"):
            raise PackageNotFoundError(name)
        return Installed()

    monkeypatch.setattr(cli_module, "distribution", distribution)
    code, err = cli("make-synthetic", "--help", capsys=capsys)
    assert code == 2 and err.startswith(
        "ERROR: faiss-cpu 1.15.1 and faiss-gpu 1.15.1 are installed together; they share the "
        "faiss module: pip uninstall -y faiss-cpu faiss-gpu, then pip install -e '.[cpu]'"
    )


def test_the_benchmark_table_gives_each_jobs_threads_and_the_machine(tmp_path):
    import pandas as pd

    from latentfss.machine import machine

    row = {"s": 12.5, "h:m:s": "0:00:12", "max_rss": 300.0}
    pd.DataFrame([{**row, "threads": 2}]).to_csv(tmp_path / "train_fold0.tsv", sep="\t")
    pd.DataFrame([row]).to_csv(tmp_path / "prepare.tsv", sep="\t")  # without benchmark-extended
    files = [tmp_path / "train_fold0.tsv", tmp_path / "prepare.tsv"]
    assert cli("inspect", "benchmarks", *files, "--out", tmp_path / "b.csv")[0] == 0
    table = pd.read_csv(tmp_path / "b.csv").set_index("job")
    assert table.loc["train_fold0", "threads"] == 2 and pd.isna(table.loc["prepare", "threads"])
    assert table.loc["total (sequential)", "seconds"] == 25.0
    here = machine()
    assert (table["cpu"] == here["cpu"]).all() and (table["onednn"] == here["onednn"]).all()
    assert (table["vector_extensions"] == ", ".join(here["vector_extensions"])).all()
