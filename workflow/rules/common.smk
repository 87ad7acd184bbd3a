# Config validation and the helpers every rule file uses.
import json
import os
import shlex
import sys
from pathlib import Path

from latentfss.config import validate
from latentfss.errors import InputError
from latentfss import layout, runs
from latentfss.datasets.voc import TRAIN_LISTS
from latentfss.gpus import visible_gpus

try:
    validate(
        config, Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml"
    )
    if (
        config["dataset"]["name"] != "synthetic"
        and not Path(config["dataset"]["root"]).is_dir()
    ):
        raise InputError(
            f"dataset.root: {config['dataset']['root']} is not a directory"
        )
    if (
        config["dataset"]["name"] != "coco"
        and config["dataset"]["train_list"] not in TRAIN_LISTS
        and not Path(config["dataset"]["train_list"]).is_file()
    ):
        raise InputError(
            f"dataset.train_list: {config['dataset']['train_list']} is neither a built list "
            f"({', '.join(TRAIN_LISTS)}) nor a file"
        )
    runs.check(config, f"results/{config['dataset']['name']}")
except InputError as e:
    sys.stderr.write(f"ERROR: {e}\n")
    sys.exit(2)

DATASET = config["dataset"]["name"]
# a train list file of the user's is an input of prepare: editing it re-indexes
TRAIN_LIST_FILE = (
    []
    if DATASET == "coco" or config["dataset"]["train_list"] in TRAIN_LISTS
    else config["dataset"]["train_list"]
)
RESULTS = f"results/{DATASET}"
CPU_ENV = "../../envs/latentfss-cpu.yaml"
GPU_ENV = "../../envs/latentfss-gpu.yaml"
KEEP_FEATURES = config["annotation"]["keep_features"]
# runtime factor of the stages whose work grows with the train images or the test episodes:
# COCO has 14x PASCAL's train images and 4x its episodes. bench/projection.py projects each of
# these jobs at a quarter of an hour or less on a GPU node, from CPU rehearsals, never yet
# measured on a GPU: the asks keep a wide margin, as SLURM kills a job at its runtime and only
# train resumes.
LONGER = 4 if DATASET == "coco" else 1
# GPU-type jobs (train, build_bank, evaluate) declare the cores they use: one torch thread, and
# on a GPU machine their data-loader processes, which then do the CPU's work. Without a GPU the
# torch thread does it and the loaders mostly wait: each job declares one core, so that two
# share 2 cores, 27% less time than one job with both at a time (docs/studies.md, "Two jobs
# on a CPU-only machine"). The slurm profile sets its own (set-threads); a stage gives torch
# what its loaders leave.
GPUS = len(visible_gpus())

# The rows of `runs:` (latentfss.runs): ROWS[row] is a row's config; SHARED[level][row] the
# row whose folder holds that level's work for it (the first row with the same inputs), so a
# rule's jobs are those of the rows in SHARED[level].values(): an evaluation-only row trains
# nothing, a model-only row shares the annotation, an encoder row re-makes everything.
ROWS = runs.rows(config)
SHARED = runs.owners(ROWS)
REFERENCE = runs.reference(config)


def path(pattern, **values):
    """An artifact's path under results/{dataset}/: a latentfss.layout pattern with `values` in
    place of its wildcards (the others stay wildcards)."""
    for name, value in values.items():
        pattern = pattern.replace(f"{{{name}}}", str(value))
    return f"{RESULTS}/{pattern}"


def owners(level):
    """A rule's `row` wildcard: the rows whose folder holds work of `level` (none: a pattern
    that matches nothing)."""
    return "|".join(sorted(set(SHARED[level].values()))) or "(?!)"


def at(level, pattern, **values):
    """An input function: `pattern` in the folder of the row that holds `level`'s work for
    the job's row, with the job's other wildcards."""
    return lambda w: path(pattern, **{**w, "row": SHARED[level][w["row"]], **values})


def gpu_job_threads(loaders):
    return 1 + (loaders if GPUS else 0)


def device(wildcards, resources):
    """--device of a job that may use a GPU: $LATENTFSS_DEVICE when set, else the profile's
    `device` resource (cuda where the profile found GPUs), else auto."""
    return os.environ.get("LATENTFSS_DEVICE") or resources.get("device", "auto")


wildcard_constraints:
    fold="[0-3]",
    shot="[1-9][0-9]*",
    tseed="[0-9]+",
    images="train_set|remain",


def section(name, keep=None, drop=()):
    """A params function: a config section of the job's row (or the keys a stage reads) as
    JSON for its --params: editing those keys re-runs exactly the jobs that read them.
    """

    def params(wildcards):
        values = (
            ROWS[wildcards.row][name] if "row" in wildcards.keys() else config[name]
        )
        chosen = {
            k: v
            for k, v in values.items()
            if (keep is None or k in keep) and k not in drop
        }
        return json.dumps(chosen, sort_keys=True)

    return params


def encoder_params(wildcards, input):
    """extract_features' encoder section, `weights: pretrain` given as the pre-trained file."""
    encoder = ROWS[wildcards.row]["encoder"]
    weights = input.weights if encoder["weights"] == "pretrain" else encoder["weights"]
    return json.dumps({**encoder, "weights": weights}, sort_keys=True)


def shipped(wildcards):
    """The shipped encoder's hash, a parameter of the jobs that read it: other shipped weights
    (a later version of latentfss) re-run what they feed."""
    weights = ROWS[wildcards.row]["encoder"]["weights"]
    return layout.SYNTHETIC_SHA256 if weights == "synthetic" else ""


def pretrained(wildcards):
    """extract_features' pre-trained encoder, with `encoder.weights: pretrain`."""
    if ROWS[wildcards.row]["encoder"]["weights"] != "pretrain":
        return []
    return path(layout.PRETRAINED, row=SHARED["pretrain"][wildcards.row])


def features_output():
    """extract_features' features.zarr, only with annotation.keep_features."""
    return {"features": directory(path(layout.FEATURES))} if KEEP_FEATURES else {}


def feature_inputs(wildcards):
    """What pool_prototypes and write_pseudo_masks read the features from: features.zarr, or
    encoder_init.pt to compute them again (keep_features false; and mining.unlabeled images).
    """
    row = SHARED["features"][wildcards.row]
    inputs = {
        "index": path(layout.INDEX),
        "encoder_init": path(layout.ENCODER_INIT, row=row),
    }
    if KEEP_FEATURES:
        inputs["features"] = path(layout.FEATURES, row=row)
    return inputs


def encodes(wildcards):
    """pool_prototypes and write_pseudo_masks encode images, and hold a GPU, when the features
    are not kept; write_pseudo_masks also for the mining.unlabeled images of the train set's.
    """
    unlabeled = (
        wildcards.get("images") == "train_set"
        and ROWS[wildcards.row]["mining"]["unlabeled"]
    )
    return int(not KEEP_FEATURES or bool(unlabeled))


def eval_outputs(folder):
    """evaluate's files in its --out directory (their names: latentfss.layout)."""
    return {
        "metrics": f"{folder}/{layout.METRICS}",
        "per_class": f"{folder}/{layout.PER_CLASS}",
        "scores": f"{folder}/{layout.SCORES}",
        "episodes": [
            f"{folder}/{layout.EPISODES.format(seed=seed)}"
            for seed in config["evaluate"]["seeds"]
        ],
    }


def mines_remain(row):
    """Whether the row's model also learns from Remain's pseudo masks: mining.remain, which
    means nothing without mining."""
    return ROWS[row]["mining"]["remain"] and ROWS[row]["model"]["mine"]


def train_inputs(wildcards):
    """The fold's annotation and, when the row mines Remain, its pseudo masks."""
    features, annotation = (
        SHARED[level][wildcards.row] for level in ("features", "annotation")
    )
    masks = dict(row=annotation, fold=wildcards.fold)
    inputs = {
        "index": path(layout.INDEX),
        "encoder_init": path(layout.ENCODER_INIT, row=features),
        "pseudo_masks": path(layout.PSEUDO_MASKS, images="train_set", **masks),
    }
    if mines_remain(wildcards.row):
        inputs["remain"] = path(layout.PSEUDO_MASKS, images="remain", **masks)
    return inputs


def evaluate_inputs(wildcards):
    """The row's model and, when FG rectification is on, its region bank."""
    inputs = {
        "index": path(layout.INDEX),
        "model": at("model", layout.MODEL)(wildcards),
    }
    if ROWS[wildcards.row]["evaluate"]["fg_rectify"]:
        inputs["bank"] = at("bank", layout.BANK)(wildcards)
    return inputs


def optional_flag(name):
    """A params function: `--name PATH` when the job has input `name`, else nothing."""
    return lambda wildcards, input: (
        f"--{name} {shlex.quote(input[name])}" if name in input.keys() else ""
    )


def every(pattern, level, **values):
    """`pattern` for every row that holds `level`'s work, training seed, fold and shot."""
    return sorted(
        {
            path(pattern, row=row, tseed=tseed, fold=fold, shot=shot, **values)
            for row in SHARED[level].values()
            for tseed in config["train_seeds"]
            for fold in config["folds"]
            for shot in config["shots"]
        }
    )


# Each row's evaluations (row, metrics.json) for summarize: its input files, and each as
# `ROW=METRICS` on its command line
EVALUATIONS = [
    (
        row,
        os.path.join(
            path(layout.EVAL, row=SHARED["evaluate"][row], tseed=t, fold=f, shot=k),
            layout.METRICS,
        ),
    )
    for row in ROWS
    for t in config["train_seeds"]
    for f in config["folds"]
    for k in config["shots"]
]


# What `all` asks for besides the tables and benchmarks.csv: the annotation figures of every
# fold of every row's annotation, and the training curves
FIGURES = [
    path(pattern, row=row, fold=fold)
    for pattern in (layout.PSEUDO_MASKS_FIGURE, layout.PROTOTYPES_FIGURE)
    for row in sorted(set(SHARED["annotation"].values()))
    for fold in config["folds"]
] + [path(layout.TRAINING_FIGURE)]
