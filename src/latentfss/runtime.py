"""Where tensors run: the GPU when present, the CPU otherwise, with the same code."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random

import numpy as np
import torch

from latentfss.errors import InputError
from latentfss.gpus import claim_gpu, visible_gpus

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=os.environ.get("LATENTFSS_DEVICE", "auto"),
        help="auto (CUDA when torch sees a GPU, else the CPU) | cuda (stop unless torch sees a "
        "GPU) | cpu; default: $LATENTFSS_DEVICE, else auto",
    )


def set_threads(threads: int, loaders: int = 0) -> None:
    """torch's CPU threads: the job's cores (`--threads`, what its rule declares) less the
    data-loader processes that share them, at least one."""
    torch.set_num_threads(max(1, threads - loaders))


def pick_device(requested: str = "auto") -> torch.device:
    """The device a stage runs on, logged. `cuda` fails in one line where torch sees no GPU (a
    driver older than the wheel's CUDA, say) instead of running on the CPU; with several GPUs
    the job takes one that no other latentfss job on this host holds."""
    if requested not in DEVICES:
        raise InputError(
            f"device {requested!r}: expected one of {', '.join(DEVICES)} "
            "(--device or LATENTFSS_DEVICE)"
        )
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device cuda: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; "
            "check nvidia-smi and that the driver supports that CUDA version"
        )
    if requested == "cpu" or not torch.cuda.is_available():
        bf16 = "; bf16 autocast, $LATENTFSS_CPU_BF16" if os.environ.get(CPU_BF16) == "1" else ""
        log.info("device: cpu (%d torch threads%s)", torch.get_num_threads(), bf16)
        return torch.device("cpu")
    count, names = torch.cuda.device_count(), visible_gpus()
    if len(names) != count:
        names = [str(i) for i in range(count)]
    index = claim_gpu(names) if count > 1 else 0
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    log.info(
        "device: %s of %d (%s; torch %s, CUDA %s; %s)",
        device,
        count,
        torch.cuda.get_device_name(index),
        torch.__version__,
        torch.version.cuda,
        precision(device),
    )
    return device


def precision(device: torch.device) -> str:
    """What "full precision" means on the device: on CUDA cuDNN runs fp32 convolutions in TF32
    unless told not to (torch.backends.cudnn.allow_tf32), and matmuls when allowed."""
    if device.type != "cuda":
        return "fp32"
    tf32 = [
        name
        for name, on in (
            ("convolutions", torch.backends.cudnn.allow_tf32),
            ("matmuls", torch.backends.cuda.matmul.allow_tf32),
        )
        if on
    ]
    return f"fp32 with TF32 {' and '.join(tf32)}" if tf32 else "fp32 (TF32 off)"


CPU_BF16 = "LATENTFSS_CPU_BF16"  # "1": the CPU runs CUDA's bf16 autocast too


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU (bf16 matmuls are slow on most CPUs),
    unless $LATENTFSS_CPU_BF16 is 1: then the CPU runs the CUDA path's precision, which is how
    the tests catch its dtype errors without a GPU."""
    if device.type == "cuda" or os.environ.get(CPU_BF16) == "1":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
