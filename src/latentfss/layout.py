"""Where every artifact of a run lives, spelled once: the workflow's rules that declare them,
the stages that write them, bench/ and the tests read the names from here (no torch import:
the Snakefile loads this module at every call)."""

from __future__ import annotations

from pathlib import Path

# encoder.weights: synthetic, the synthetic benchmark's ImageNet weights, shipped in the package
# and checked against this hash at every load; the workflow passes the hash as a parameter, so a
# later version that ships other weights re-runs what they feed (docs/data.md, "The encoder's
# pre-training")
SYNTHETIC_WEIGHTS = Path(__file__).parent / "weights" / "synthetic-resnet18.pt"
SYNTHETIC_SHA256 = "9093abefd558386f4b039d81e0dbea2bc9bd04bf8c8f96544a5bfd6f6183f306"

# inside evaluate's --out directory (EVAL below)
METRICS = "metrics.json"
PER_CLASS = "per_class.csv"
EPISODES = "episodes_seed{seed}.csv"  # one list per evaluate.seeds entry
SCORES = "scores.csv"  # each episode's foreground intersection and union, every list

# results/{dataset}/, a run's folder: the paths below are relative to it. `{row}` is the row of
# `runs:` whose folder holds the artifact: the first row whose inputs to it are equal
# (latentfss.runs); `{images}` is train_set (the fold's train set) or remain (its Remain).
INDEX = "dataset"  # prepare: images.csv, pixels.csv, meta.json
BENCHMARKS = "benchmarks"  # every job's Snakemake benchmark file
PRETRAINED = "{row}/pretrain_encoder/weights.pt"  # encoder.weights: pretrain
ENCODER_INIT = "{row}/encoder_init.pt"
FEATURES = "{row}/features.zarr"  # annotation.keep_features
PROTOTYPES = "{row}/prototypes.zarr"
CLUSTERS = "{row}/fold{fold}/clusters.zarr"
PSEUDO_MASKS = "{row}/fold{fold}/pseudo_masks_{images}.zarr"
PSEUDO_MASKS_FIGURE = "{row}/fold{fold}/pseudo_masks.png"
PROTOTYPES_FIGURE = "{row}/fold{fold}/prototypes.png"
MODEL_DIR = "{row}/train{tseed}/fold{fold}/shot{shot}"  # one per training seed, fold and shot
MODEL = f"{MODEL_DIR}/model.pt"
TRAIN_LOG = f"{MODEL_DIR}/train.csv"
BANK = f"{MODEL_DIR}/bank"
EVAL = f"{MODEL_DIR}/eval"  # evaluate's --out: the files above
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
TRAINING_FIGURE = "training.png"
BENCHMARK_TABLE = "benchmarks.csv"


def artifact(results: Path, pattern: str, **values) -> Path:
    """An artifact under a run's `results` folder from its pattern: of row main and training
    seed 0, the train set's pseudo masks, unless `values` say otherwise (bench, tests)."""
    return results / pattern.format(**{"row": "main", "tseed": 0, "images": "train_set", **values})
