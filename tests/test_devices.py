"""Where stages run: the GPUs a host has, one GPU per job, and `--device cuda` that stops in one
line instead of falling back to the CPU."""

from __future__ import annotations

import pytest
import torch

from conftest import cli
from latentfss.gpus import claim_gpu, release_gpus, visible_gpus
from latentfss.runtime import pick_device, precision


@pytest.mark.parametrize(
    "visible,names",
    [
        ("0,1", ["0", "1"]),
        ("2, 3", ["2", "3"]),
        ("1,-1,2", ["1"]),
        ("", []),
        ("-1", []),
        ("GPU-8a1f,GPU-77c0", ["GPU-8a1f", "GPU-77c0"]),
    ],
)
def test_cuda_visible_devices_says_which_gpus_a_job_sees(monkeypatch, tmp_path, visible, names):
    (tmp_path / "nvidia0").touch()  # ignored: the variable decides, as it does for CUDA
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus(dev=tmp_path) == names


def test_gpus_are_found_without_nvidia_smi_and_with_it(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    dev, bin_dir = tmp_path / "dev", tmp_path / "bin"
    dev.mkdir()
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert visible_gpus(dev=dev) == []
    for name in ("nvidia10", "nvidia2", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    assert visible_gpus(dev=dev) == ["2", "10"]  # a container: device nodes, no nvidia-smi
    for name in ("nvidia10", "nvidia2"):
        (dev / name).unlink()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\n"
        "echo 'GPU 1: NVIDIA H100 (UUID: GPU-2)'\n"
    )
    smi.chmod(0o755)
    assert visible_gpus(dev=dev) == ["0", "1"]


def test_side_by_side_jobs_take_one_gpu_each(tmp_path, caplog):
    try:
        assert [claim_gpu(["0", "1"], tmp_path) for _ in range(2)] == [0, 1]
        assert claim_gpu(["0", "1"], tmp_path) in (0, 1)  # a third shares one, and says so
        assert "all 2 GPUs are held by other latentfss jobs" in caplog.text
        release_gpus()
        assert claim_gpu(["0", "1"], tmp_path) == 0  # given back when a job ends
    finally:
        release_gpus()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_device_cuda_without_a_gpu_stops_in_one_line(tmp_path, capsys, monkeypatch):
    stage = ("extract-features", "--index", tmp_path / "none", "--encoder-out", tmp_path / "e.pt")
    code, err = cli(*stage, "--device", "cuda", capsys=capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"ERROR: device cuda: torch {torch.__version__} (CUDA ")
    assert "sees no GPU" in err and not (tmp_path / "e.pt").exists()
    monkeypatch.setenv("LATENTFSS_DEVICE", "gpu")
    code, err = cli(*stage, capsys=capsys)
    assert code == 2 and err.strip() == (
        "ERROR: device 'gpu': expected one of auto, cpu, cuda (--device or LATENTFSS_DEVICE)"
    )


def test_the_cpu_is_named_and_its_precision_is_fp32(caplog):
    caplog.set_level("INFO")
    assert pick_device("cpu") == torch.device("cpu")
    assert "device: cpu (" in caplog.text
    assert precision(torch.device("cpu")) == "fp32"
