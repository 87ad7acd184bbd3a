"""The `latentfss` console script: every stage listed, unbuilt stages say so."""

from __future__ import annotations

from conftest import run_latentfss
from latentfss.cli import STAGES

RULE_NAMES = [
    "make_synthetic", "prepare", "extract_features", "pool_prototypes", "cluster",
    "write_pseudo_masks", "train", "build_bank", "evaluate", "summarize", "inspect", "segment",
]  # fmt: skip


def test_help_lists_every_stage_named_as_its_rule():
    done = run_latentfss("--help")
    assert done.returncode == 0
    assert list(STAGES) == [name.replace("_", "-") for name in RULE_NAMES]
    for name in STAGES:
        assert f"    {name} " in done.stdout


def test_stage_help_shows_its_arguments():
    done = run_latentfss("prepare", "--help")
    assert done.returncode == 0 and "--out" in done.stdout and "--params" in done.stdout


def test_every_stage_is_built():
    assert all(module for module, _ in STAGES.values())
