"""The names of the files inside directory artifacts, spelled once: the stages that write them
and the workflow's rules that declare them both read them from here (no torch import: the
Snakefile loads this module at every call)."""

from __future__ import annotations

# evaluate's --out directory (fold{f}/shot{k}/eval/)
METRICS = "metrics.json"
PER_CLASS = "per_class.csv"
EPISODES = "episodes_seed{seed}.csv"  # one list per evaluate.seeds entry
SCORES = "scores.csv"  # each episode's foreground intersection and union, every list
