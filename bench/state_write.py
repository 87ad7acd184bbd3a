"""Backs docs/reliability.md, "Faults": writing train's state fits SLURM's early signal.

How long train's state takes to write at the presets' sizes: the time SLURM's early signal
(the slurm profile's --signal=TERM@300) must leave, beside the step in progress.

    python bench/state_write.py [--archs resnet50 resnet101] [--repeats 3]

The state is what a stop or a checkpoint writes (`ResumeState.save`: the weights, their EMA,
SGD's momenta, the loss log), serialised and written with fsync to a scratch folder on the
checkout's disk; the slowest of `repeats`. Writes bench/results/state_write.json and .md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from record import arguments, describe, save, scratch

from latentfss.ema import ModelEMA
from latentfss.encoder import Encoder
from latentfss.model import MatchingNet, ModelConfig
from latentfss.stages.train import LossLog, ResumeState

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"PASCAL": 5, "COCO": 15}  # cluster.k: the mining head has K + 1 classes


def state_seconds(arch: str, k: int, folder: Path, repeats: int) -> dict:
    model = MatchingNet(Encoder(arch), ModelConfig(), pseudo_classes=k + 1)
    ema = ModelEMA(model, 0.999)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-3, momentum=0.9)
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # SGD's momentum buffers exist from the first step on
    losses = LossLog(10, 6000, [{"step": s, "loss_gt": 0.1} for s in range(10, 6000, 10)], "cpu")
    state = ResumeState(folder / f"{arch}_{k}.pt", origin={"arch": arch})
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        state.save(model, ema, optimizer, 3000, losses)
        seconds.append(time.perf_counter() - start)
    return {
        "arch": arch,
        "k": k,
        "mb": round(state.path.stat().st_size / 2**20, 1),
        "seconds_max": round(max(seconds), 2),
        "seconds": [round(s, 2) for s in seconds],
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet50", "resnet101"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with scratch() as folder:
        rows = [
            {"preset": preset, **state_seconds(arch, k, Path(folder), args.repeats)}
            for preset, k in PRESETS.items()
            for arch in args.archs
        ]
    save({"repeats": args.repeats, "rows": rows}, markdown, args.out, "state_write")


def markdown(results: dict) -> list[str]:
    lines = [
        "## Writing train's state (`bench/state_write.py`)",
        "",
        f"Machine: {describe(results['machine'])}. The state a stop or a checkpoint writes "
        "(weights, EMA, SGD momenta, loss log), serialised, written and fsync-ed to the "
        f"checkout's disk; the slowest of {results['repeats']}.",
        "",
        "| preset | encoder | MB | seconds (slowest) |",
        "|---|---|---:|---:|",
    ]
    rows = results["rows"]
    lines += [f"| {r['preset']} | {r['arch']} | {r['mb']} | {r['seconds_max']} |" for r in rows]
    return lines


if __name__ == "__main__":
    main()
