"""bench/limits.py: the floors docs/benchmarks.md measures every stage against."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from limits import add_floors, cells, count_flops  # noqa: E402


def test_flops_of_a_convolution_forward_and_backward_by_hand():
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 10, 10)
    forward = 2 * (2 * 10 * 10) * 16 * (8 * 3 * 3)  # 2 FLOPs per multiply-add, per output
    with torch.no_grad():
        assert count_flops(lambda: conv(x)) == forward
    # backward: the weight's gradient only (x needs none): as many multiply-adds again
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward


def test_floors_leave_start_up_apart():
    rows = [
        {"seconds": 4.0, "work": {"flops": 2e11}, "startup": 2.0},
        {"seconds": 1.0, "work": {"flops": 1e10}},
        {"seconds": 1.0, "work": {"flops": 1e10}, "startup": 0.95},
    ]
    add_floors(rows, {"matmul_flop_per_s": 1e11})
    timed, alone, started = rows
    assert [timed[c] for c in ("floor_seconds", "of_limit_pct")] == [2, 50]
    assert timed["of_limit_after_startup_pct"] == 100  # 2 s of floor in 4 - 2 s
    assert "work" not in alone and "startup_seconds" not in alone and alone["flops"] == 1e10
    assert started["of_limit_after_startup_pct"] is None  # all of it start-up
    assert cells(started) == "0.1 | 10.0 | 0.95 | -"
    assert cells(alone).endswith("| - | -")
