"""The names of the files inside directory artifacts, spelled once: the stages that write them
and the workflow's rules that declare them both read them from here (no torch import: the
Snakefile loads this module at every call)."""

from __future__ import annotations

from pathlib import Path

# encoder.weights: synthetic, the synthetic benchmark's ImageNet weights, shipped in the package
# and checked against this hash at every load; the workflow passes the hash as a parameter, so a
# later version that ships other weights re-runs what they feed (docs/data.md, "The encoder's
# pre-training")
SYNTHETIC_WEIGHTS = Path(__file__).parent / "weights" / "synthetic-resnet18.pt"
SYNTHETIC_SHA256 = "9093abefd558386f4b039d81e0dbea2bc9bd04bf8c8f96544a5bfd6f6183f306"

# evaluate's --out directory (fold{f}/shot{k}/eval/)
METRICS = "metrics.json"
PER_CLASS = "per_class.csv"
EPISODES = "episodes_seed{seed}.csv"  # one list per evaluate.seeds entry
SCORES = "scores.csv"  # each episode's foreground intersection and union, every list
