"""bench/gpu_check.py keeps working: its CPU run (tiny shapes, the device side in bf16) passes
every part, and a part out of time is stopped while the others go on."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, tool_env


def gpu_check(out, *argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", out]
    return subprocess.run(
        [*command, *argv], cwd=REPO, capture_output=True, text=True, timeout=900, env=tool_env()
    )


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu(tmp_path):
    done = gpu_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = results["parts"]
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(
        ("tests", "pipeline", "train", "evaluate", "annotation"), "ok"
    )
    assert "skipped" in parts["tests"]["summary"]  # no CUDA here: the gpu tests are skipped
    pipeline = parts["pipeline"]
    for side in ("device", "cpu"):
        assert pipeline[side]["losses_finite"] and 0 <= pipeline[side]["miou"] <= 100
    assert pipeline["pseudo_mask_agreement_pct"] == 100  # the annotation is fp32 on both sides
    assert math.isclose(
        pipeline["miou_difference"],
        pipeline["device"]["miou"] - pipeline["cpu"]["miou"],
        abs_tol=0.01,
    )
    train = [(row["shot"], row["micro_batches"]) for row in parts["train"]["rows"]]
    assert train == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(row["peak_mb"] > 0 and row["seconds"] > 0 for row in parts["train"]["rows"])
    variants = [(row["shot"], row["variant"]) for row in parts["evaluate"]["rows"]]
    assert variants == [(s, v) for s in (1, 2) for v in ("encode once", "episode by episode")]
    assert all(row["episodes_per_s"] > 0 for row in parts["evaluate"]["rows"])
    assert parts["evaluate"]["faiss_on_gpu"] is False
    stages = parts["annotation"]["stages"]
    assert list(stages) == ["extract-features", "pool-prototypes", "write-pseudo-masks"]
    assert all(stage["images_per_s_after_startup"] > 0 for stage in stages.values())
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| pipeline | ok |" in text and "encode once" in text


def test_a_part_out_of_time_is_stopped_and_the_next_runs(tmp_path):
    done = gpu_check(tmp_path, "--only", "train", "annotation", "--budget", "0.5")
    assert done.returncode != 0 and "train, annotation did not pass" in done.stderr
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert [part["status"] for part in parts.values()] == ["out of time after 0.5 s"] * 2
