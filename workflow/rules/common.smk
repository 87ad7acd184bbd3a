# Config validation and the helpers every rule file uses.
import json
import os
import shlex
import sys
from pathlib import Path

from latentfss.config import validate
from latentfss.errors import InputError
from latentfss import layout
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
# COCO has 14x PASCAL's train images and 4x its episodes, and bench/projection.py projects its
# pool_prototypes and write_pseudo_masks at 2.9 and 3.8 h, its 5-shot evaluate at 3.8 h on a
# GPU node (upper bounds). SLURM kills a job at its runtime, and only train resumes.
LONGER = 4 if DATASET == "coco" else 1
PRETRAIN = config["encoder"]["weights"] == "pretrain"
# the shipped encoder's hash, a parameter of the jobs that read it: other shipped weights (a
# later version of latentfss) re-run what they feed
SHIPPED = layout.SYNTHETIC_SHA256 if config["encoder"]["weights"] == "synthetic" else ""
PRETRAINED = f"{RESULTS}/pretrain_encoder/weights.pt"
# GPU-type jobs (train, build_bank, evaluate) declare the cores they use: one torch thread, and
# on a GPU machine their data-loader processes, which then do the CPU's work. Without a GPU the
# torch thread does it and the loaders mostly wait: each job declares one core, so that two
# share 2 cores, 27% less time than one job with both at a time (bench/side_by_side.py). The
# slurm profile sets its own (set-threads); a stage gives torch what its loaders leave.
GPUS = len(visible_gpus())


def gpu_job_threads(loaders):
    return 1 + (loaders if GPUS else 0)


def device(wildcards, resources):
    """--device of a job that may use a GPU: $LATENTFSS_DEVICE when set, else the profile's
    `device` resource (cuda where the profile found GPUs), else auto."""
    return os.environ.get("LATENTFSS_DEVICE") or resources.get("device", "auto")


wildcard_constraints:
    fold="[0-3]",
    shot="[1-9][0-9]*",
    fg="[01]",
    bg="[01]",
    mine="[01]",
    remain="[01]",
    tseed="[0-9]+",


def section(name, keep=None, drop=()):
    """A config section (or the keys a stage reads) as JSON for its --params: editing those
    keys re-runs exactly the jobs that read them."""
    values = {
        k: v
        for k, v in config[name].items()
        if (keep is None or k in keep) and k not in drop
    }
    return json.dumps(values, sort_keys=True)


def encoder_params(wildcards, input):
    """extract_features' encoder section, `weights: pretrain` given as the pre-trained file."""
    weights = input.weights if PRETRAIN else config["encoder"]["weights"]
    return json.dumps({**config["encoder"], "weights": weights}, sort_keys=True)


def features_output():
    """extract_features' features.zarr, only with annotation.keep_features."""
    return {"features": directory(f"{RESULTS}/features.zarr")} if KEEP_FEATURES else {}


def feature_inputs(wildcards):
    """What pool_prototypes and write_pseudo_masks read the features from: features.zarr, or
    encoder_init.pt to compute them again (keep_features false; and mining.unlabeled images).
    """
    inputs = {
        "index": rules.prepare.output.index,
        "encoder_init": rules.extract_features.output.encoder_init,
    }
    return (
        {**inputs, "features": f"{RESULTS}/features.zarr"} if KEEP_FEATURES else inputs
    )


# pool_prototypes and write_pseudo_masks encode images, and hold a GPU, when the features are
# not kept; write_pseudo_masks also for mining.unlabeled images
ENCODES = {
    "pool": not KEEP_FEATURES,
    "masks": not KEEP_FEATURES or bool(config["mining"]["unlabeled"]),
}


# Tables 3 and 5 (ablations) and training seeds: a run is named by its switches fg
# (evaluate.fg_rectify), bg (model.bg_rectify), mine (model.mine) and remain (mining.remain:
# Remain joins the mining stream; it means nothing without mining, so it is off there) as 0/1,
# and its training seed tseed (one of train_seeds). bg, mine, remain and tseed change training,
# fg only inference, so runs that differ in fg share a model. The main run is the row of the
# config's own switches with the first training seed: its artifacts keep the plain
# fold{f}/shot{k} paths; every other run (another row, another training seed) is a variant,
# under variants/.
def switches(fg, bg, mine, remain):
    return (int(fg), int(bg), int(mine), int(remain and mine))


TRAIN_SEEDS = config["train_seeds"]
MAIN = dict(
    zip(
        ("fg", "bg", "mine", "remain", "tseed"),
        (
            *switches(
                config["evaluate"]["fg_rectify"],
                config["model"]["bg_rectify"],
                config["model"]["mine"],
                config["mining"]["remain"],
            ),
            TRAIN_SEEDS[0],
        ),
    )
)
VARIANT_RUN = "bg{bg}_mine{mine}_remain{remain}_train{tseed}"
VARIANT_MODEL = f"{RESULTS}/variants/{VARIANT_RUN}/fold{{fold}}/shot{{shot}}"
VARIANT_EVAL = (
    f"{RESULTS}/variants/fg{{fg}}_{VARIANT_RUN}/fold{{fold}}/shot{{shot}}/eval"
)
ROWS = {tuple(MAIN.values())[:4]} | {
    switches(
        a["fg_rectify"],
        a["bg_rectify"],
        a["mine"],
        a.get("remain", config["mining"]["remain"]),
    )
    for a in config["ablations"]
}
VARIANTS = sorted(
    {(*row, tseed) for row in ROWS for tseed in TRAIN_SEEDS} - {tuple(MAIN.values())}
)

# (bg, mine, remain, tseed) of the models the variants train, and of those whose bank they use
MAIN_MODEL = tuple(MAIN.values())[1:]
VARIANT_MODELS = sorted({run[1:] for run in VARIANTS} - {MAIN_MODEL})
VARIANT_BANKS = sorted({run[1:] for run in VARIANTS if run[0]} & set(VARIANT_MODELS))
# Remain's pseudo masks are made only when a run mines them
REMAIN = any(row[3] for row in ROWS)


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


def switch(wildcards, name):
    """A switch (0/1) or the training seed from a variant job's wildcards, else the main
    run's."""
    return int(wildcards.get(name, MAIN[name]))


def model_params(wildcards):
    values = {
        **config["model"],
        "bg_rectify": bool(switch(wildcards, "bg")),
        "mine": bool(switch(wildcards, "mine")),
    }
    return json.dumps(values, sort_keys=True)


def evaluate_params(wildcards):
    values = {**config["evaluate"], "fg_rectify": bool(switch(wildcards, "fg"))}
    return json.dumps(values, sort_keys=True)


def train_inputs(wildcards):
    """The fold's annotation and, when the run mines Remain, its pseudo masks."""
    inputs = {
        "index": rules.prepare.output.index,
        "encoder_init": rules.extract_features.output.encoder_init,
        "pseudo_masks": f"{RESULTS}/fold{wildcards.fold}/pseudo_masks.zarr",
    }
    if switch(wildcards, "remain"):
        inputs["remain"] = f"{RESULTS}/fold{wildcards.fold}/remain/pseudo_masks.zarr"
    return inputs


def run_dir(wildcards):
    """Where the model (and bank) of the job's bg, mine, remain and tseed live."""
    values = {
        name: switch(wildcards, name) for name in ("bg", "mine", "remain", "tseed")
    }
    if tuple(values.values()) == MAIN_MODEL:
        return f"{RESULTS}/fold{wildcards.fold}/shot{wildcards.shot}"
    return VARIANT_MODEL.format(**values, fold=wildcards.fold, shot=wildcards.shot)


def evaluate_inputs(wildcards):
    """The model of the job's switches and, when fg is on, its region bank."""
    run = run_dir(wildcards)
    inputs = {"index": rules.prepare.output.index, "model": f"{run}/model.pt"}
    return {**inputs, "bank": f"{run}/bank"} if switch(wildcards, "fg") else inputs


def optional_flag(name):
    """A params function: `--name PATH` when the job has input `name`, else nothing."""
    return lambda wildcards, input: (
        f"--{name} {shlex.quote(input[name])}" if name in input.keys() else ""
    )


# Every job of the DAG, for rule all and the benchmark table (deleting any artifact re-runs
# its job and everything downstream, because rule all asks for each of them).
def jobs():
    """(rule, the wildcards of each of its jobs) for every job but all and inspect_benchmarks."""
    folds, shots = config["folds"], config["shots"]
    once, per_fold = [{}], [{"fold": f} for f in folds]
    runs = [{"fold": f, "shot": k} for f in folds for k in shots]
    steps = [(rules.make_synthetic, once)] if DATASET == "synthetic" else []
    steps += [(rules.pretrain_encoder, once)] if PRETRAIN else []
    steps += [(rules.prepare, once), (rules.extract_features, once)]
    steps += [(rules.pool_prototypes, once)]
    steps += [(rules.cluster, per_fold), (rules.write_pseudo_masks, per_fold)]
    steps += [(rules.write_pseudo_masks_remain, per_fold)] if REMAIN else []
    steps += [
        (rules.inspect_pseudo_masks, per_fold),
        (rules.inspect_prototypes, per_fold),
    ]
    steps += [(rules.train, runs), (rules.evaluate, runs)]
    steps += [(rules.build_bank, runs)] if MAIN["fg"] else []
    for step, models in (
        (rules.train_variant, VARIANT_MODELS),
        (rules.build_bank_variant, VARIANT_BANKS),
    ):
        steps.append(
            (
                step,
                [
                    dict(zip(("bg", "mine", "remain", "tseed"), model), **r)
                    for model in models
                    for r in runs
                ],
            )
        )
    variants = [
        dict(zip(("fg", "bg", "mine", "remain", "tseed"), run), **r)
        for run in VARIANTS
        for r in runs
    ]
    steps.append((rules.evaluate_variant, variants))
    steps += [(rules.summarize, once), (rules.inspect_training, once)]
    return steps


def artifacts():
    """Every output of every job."""
    return [
        pattern.format(**wildcards)
        for step, wildcard_sets in jobs()
        for pattern in step.output
        for wildcards in wildcard_sets
    ]


def benchmark_files(wildcards):
    return [step.benchmark.format(**w) for step, sets in jobs() for w in sets]


def outputs(name, *steps):
    """Output `name` of every job of `steps` (input functions: every rule exists by then)."""
    return [
        getattr(step.output, name).format(**w)
        for step, sets in jobs()
        if step in steps
        for w in sets
    ]
