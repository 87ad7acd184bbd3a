"""bench/coco_archives.py, bench/rehearsal.py and bench/projection.py: the generated COCO that
the rehearsal runs on, what it counts and times, and the pieces of the GPU projection that are
not read from measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import coco_archives  # noqa: E402
import rehearsal  # noqa: E402
import train as train_bench  # noqa: E402
from limits import count_flops  # noqa: E402
from projection import encoder_flops, rule_resources, short_of_ask  # noqa: E402

from latentfss.cli import main  # noqa: E402
from latentfss.datasets.index import read_index  # noqa: E402
from latentfss.encoder import Encoder  # noqa: E402
from latentfss.model import MatchingNet, ModelConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASK_KEYS = {"mem_mb": "mem_mb", "minutes": "runtime"}  # projection.json's asks_* <- a dry run's


def test_generated_coco_is_prepared_with_its_counts_and_crowds(tmp_path):
    pytest.importorskip("pycocotools")
    counts = {"train2014": 60, "val2014": 20}
    facts = coco_archives.make_coco(tmp_path / "coco", counts, scale=0.1, threads=1)
    assert {split: f["images"] for split, f in facts.items()} == counts
    data = json.loads((tmp_path / "coco/annotations/instances_train2014.json").read_text())
    assert len({a["category_id"] for a in data["annotations"]}) > 10
    assert facts["train2014"]["crowds"] == sum(a["iscrowd"] for a in data["annotations"])
    params = json.dumps({"name": "coco", "root": str(tmp_path / "coco")})
    assert main(["prepare", "--out", str(tmp_path / "index"), "--params", params]) == 0
    index = read_index(tmp_path / "index")
    assert index.images["split"].value_counts().to_dict() == {"train": 60, "val": 20}
    labelled = index.pixels[index.pixels["class_id"] > 0]["image_id"].nunique()
    empty = sum(
        1 for i in data["images"] if i["id"] not in {a["image_id"] for a in data["annotations"]}
    )
    assert labelled >= 80 - empty - 5  # a few objects hide under larger ones drawn later


def test_subset_keeps_the_first_images_and_their_annotations(tmp_path):
    coco_archives.make_coco(tmp_path / "full", {"train2014": 12, "val2014": 8}, 0.1, 1)
    coco_archives.subset(tmp_path / "full", tmp_path / "half", 0.5)
    data = json.loads((tmp_path / "half/annotations/instances_train2014.json").read_text())
    assert [i["id"] for i in data["images"]] == list(range(1, 7))
    assert {a["image_id"] for a in data["annotations"]} <= set(range(1, 7))
    assert (tmp_path / "half/train2014").resolve() == (tmp_path / "full/train2014").resolve()


def test_meta_device_flops_equal_a_real_forward():
    """The projection counts the encoder's FLOPs without computing; the count must be the one a
    real forward gives."""
    torch.manual_seed(0)
    encoder = Encoder("resnet18").eval()
    with torch.no_grad():
        real = count_flops(lambda: encoder(torch.randn(1, 3, 40, 56)))
    assert encoder_flops("resnet18", 40, 56) == real


def test_a_training_steps_flops_on_meta_equal_a_real_steps():
    """bench/train.py's step count, shared with the projection, gives one figure on both."""
    train = {"batch_episodes": 1, "batch_pseudo": 2, "crop": 32}

    def net() -> MatchingNet:
        return MatchingNet(Encoder("resnet18"), ModelConfig(head_channels=16), 4)

    real = train_bench.step_flops(net(), train, shot=1)
    with torch.device("meta"):
        assert train_bench.step_flops(net(), train, shot=1) == real > 0


def test_a_job_past_its_ask_is_flagged():
    job = {"seconds": 3 * 3600, "asks_minutes": 120, "peak_mb": 3500, "asks_mem_mb": 4000}
    assert short_of_ask(job | {"gpu": False}) == ["time"]
    assert short_of_ask(job | {"gpu": True}) == ["time", "memory"]  # a CUDA context's host memory
    assert short_of_ask(job | {"gpu": False, "seconds": 60}) == []


def test_rule_resources_are_read_from_a_dry_run():
    asks = rule_resources("coco")
    assert asks["prepare"]["mem_mb"] == 16000  # workflow/rules/data.smk: COCO's JSON
    assert {"train", "build_bank", "evaluate", "cluster"} <= asks.keys()
    assert all(np.isfinite(a["runtime"]) and a["runtime"] > 0 for a in asks.values())


STAGE = """
import sys
import torch
assert "torch._dynamo" in sys.modules  # the counter's set-up imported it, not the stage's first op
conv = torch.nn.Conv2d(3, 4, 3)
with torch.inference_mode():
    conv(torch.ones(2, 3, 8, 8))  # conv2d, decomposed to the convolution FlopCounterMode counts
    torch.nn.functional.interpolate(torch.ones(1, 1, 8, 8), (64, 64), mode="bilinear")
product = torch.ones(5, 6) @ torch.ones(6, 7)
product.view(35)  # moves nothing
"""


def test_the_rehearsal_counts_a_stages_device_work(tmp_path):
    """bench/standin/ in a process run as `latentfss STAGE`: every torch operation of its main
    process counted (FLOPs by FlopCounterMode's formulas, bytes read and written), written to
    STAGE.json at exit."""
    (tmp_path / "latentfss").write_text(STAGE)
    env = os.environ | {
        "PYTHONPATH": str(REPO / "bench/standin"),
        "LATENTFSS_DEVICE_WORK": str(tmp_path / "work"),
    }
    subprocess.run([sys.executable, str(tmp_path / "latentfss"), "evaluate"], env=env, check=True)
    work = json.loads((tmp_path / "work/evaluate.json").read_text())
    assert work["flops"] == 2 * (2 * 4 * 3 * 3 * 3 * 6 * 6) + 2 * (5 * 6 * 7)
    least = 4 * (2 * 3 * 8 * 8 + 2 * 4 * 6 * 6 + 8 * 8 + 64 * 64 + 5 * 7)  # inputs, outputs
    # the upsampling as its own kernel: a Python decomposition's index arithmetic moved 20x
    assert work["ops"] >= 7 and least <= work["bytes"] < 2 * least
    assert 0 < work["seconds"] <= work["inside_s"] and work["dispatch_s"] >= 0
    assert work["own_s"] > 0  # its set-up and calibration, on neither side


def test_host_floors_time_a_runs_own_inputs_and_outputs(annotated):
    """The annotation's host floors on the tiny annotated run (features.zarr kept): each stage
    starts, reads its masks and features and writes its store again in measurable time."""
    floors = rehearsal.host_floors(annotated, rehearsal.ANNOTATION)
    assert floors.keys() == {"pool_prototypes", "write_pseudo_masks"}
    assert all(seconds > 0 for seconds in floors.values())


@pytest.mark.parametrize("preset", ["pascal", "coco"])
def test_every_projected_job_fits_what_its_rule_asks(preset):
    """bench/results/projection.json's jobs (times and peak memory projected from the
    rehearsals) against the rules' runtime and mem_mb as the workflow declares them now: a job
    past either is killed under SLURM, and all but train start over (COCO's pool_prototypes and
    write_pseudo_masks at 2.9 and 3.8 h against the 2 h they asked for found this)."""
    projected = json.loads((REPO / "bench/results/projection.json").read_text())[preset]["jobs"]
    asks = rule_resources(preset)
    short = {
        job["rule"]: short_of_ask(
            job | {f"asks_{k}": asks[job["rule"].split()[0]][v] for k, v in ASK_KEYS.items()}
        )
        for job in projected
    }
    assert {rule: why for rule, why in short.items() if why} == {}
