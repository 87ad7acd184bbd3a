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


def test_floors_pick_their_limit_and_leave_start_up_apart():
    limits = {"matmul_flop_per_s": 1e11, "memory_bytes_per_s": 1e10, "disk_write_bytes_per_s": 1e9}
    rows = [
        {"seconds": 4.0, "work": {"flops": 2e11}, "startup": 2.0},
        {"seconds": 1.0, "work": {"bytes": 1e8}},
        {"seconds": 1.0, "work": {"disk_bytes": 1e8}, "startup": 0.95},
    ]
    add_floors(rows, limits)
    compute, memory, disk = rows
    columns = ("bound", "floor_seconds", "of_limit_pct")
    assert [compute[c] for c in columns] == ["compute", 2, 50]
    assert compute["of_limit_after_startup_pct"] == 100  # 2 s of floor in 4 - 2 s
    assert [memory[c] for c in columns] == ["memory", 0.01, 1]
    assert "work" not in memory and "startup_seconds" not in memory
    assert disk["bound"] == "disk" and disk["of_limit_after_startup_pct"] is None  # all start-up
    assert cells(disk) == "disk | 0.1 | 10.0 | 0.95 | -"
    assert cells(memory).endswith("| - | -")
