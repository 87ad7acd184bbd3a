# Config validation and the helpers every rule file uses.
import json
import shlex
import sys
from pathlib import Path

from latentfss.config import validate
from latentfss.errors import InputError

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
except InputError as e:
    sys.stderr.write(f"ERROR: {e}\n")
    sys.exit(2)

DATASET = config["dataset"]["name"]
RESULTS = f"results/{DATASET}"
CPU_ENV = "../../envs/latentfss-cpu.yaml"
GPU_ENV = "../../envs/latentfss-gpu.yaml"
# train, build_bank and evaluate: torch's CPU threads (data-loader workers come on top). One,
# so that on a CPU-only machine two such jobs share 2 cores: 27% less time than one
# job with 2 threads at a time (bench/side_by_side.py). The slurm profile gives GPU jobs
# more (set-threads).
GPU_JOB_THREADS = 1


wildcard_constraints:
    fold="[0-3]",
    shot="[1-9][0-9]*",
    fg="[01]",
    bg="[01]",
    mine="[01]",


def section(name, keep=None, drop=()):
    """A config section (or the keys a stage reads) as JSON for its --params: editing those
    keys re-runs exactly the jobs that read them."""
    values = {
        k: v
        for k, v in config[name].items()
        if (keep is None or k in keep) and k not in drop
    }
    return json.dumps(values, sort_keys=True)


def features_output():
    """features.zarr, deleted once its consumers are done when annotation.temporary_features."""
    store = directory(f"{RESULTS}/features.zarr")
    return temp(store) if config["annotation"]["temporary_features"] else store


# Table 3 (ablations): a run is named by its switches fg (evaluate.fg_rectify), bg
# (model.bg_rectify) and mine (model.mine) as 0/1. bg and mine change training, fg only
# inference, so runs that differ in fg share a model; the main run is the row of the config's
# own switches, and its artifacts keep the plain fold{f}/shot{k} paths.
MAIN = {
    "fg": int(config["evaluate"]["fg_rectify"]),
    "bg": int(config["model"]["bg_rectify"]),
    "mine": int(config["model"]["mine"]),
}
ABLATION_MODEL = f"{RESULTS}/ablations/bg{{bg}}_mine{{mine}}/fold{{fold}}/shot{{shot}}"
ABLATION_EVAL = (
    f"{RESULTS}/ablations/fg{{fg}}_bg{{bg}}_mine{{mine}}/fold{{fold}}/shot{{shot}}/eval"
)
ABLATIONS = sorted(
    {
        (int(a["fg_rectify"]), int(a["bg_rectify"]), int(a["mine"]))
        for a in config["ablations"]
    }
    - {tuple(MAIN.values())}
)

# (bg, mine) of the models the ablations train, and of those whose region bank they use
ABLATION_MODELS = sorted(
    {(bg, mine) for _, bg, mine in ABLATIONS} - {(MAIN["bg"], MAIN["mine"])}
)
ABLATION_BANKS = sorted(
    {(bg, mine) for fg, bg, mine in ABLATIONS if fg} & set(ABLATION_MODELS)
)


def switch(wildcards, name):
    """A switch (0/1) from an ablation job's wildcards, else the main run's."""
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


def evaluate_inputs(wildcards):
    """The model with the job's bg and mine and, when fg is on, its region bank."""
    bg, mine = switch(wildcards, "bg"), switch(wildcards, "mine")
    run = f"{RESULTS}/fold{wildcards.fold}/shot{wildcards.shot}"
    if (bg, mine) != (MAIN["bg"], MAIN["mine"]):
        run = ABLATION_MODEL.format(
            bg=bg, mine=mine, fold=wildcards.fold, shot=wildcards.shot
        )
    inputs = {"images": rules.prepare.output.images, "model": f"{run}/model.pt"}
    return {**inputs, "bank": f"{run}/bank"} if switch(wildcards, "fg") else inputs


# Every job of the DAG, for rule all and the benchmark table (deleting any artifact re-runs
# its job and everything downstream, because rule all asks for each of them).
def jobs():
    """(rule, the wildcards of each of its jobs) for every job but all and inspect_benchmarks."""
    folds, shots = config["folds"], config["shots"]
    once, per_fold = [{}], [{"fold": f} for f in folds]
    runs = [{"fold": f, "shot": k} for f in folds for k in shots]
    steps = [(rules.make_synthetic, once)] if DATASET == "synthetic" else []
    steps += [(rules.prepare, once), (rules.extract_features, once)]
    steps += [(rules.pool_prototypes, once)]
    steps += [(rules.cluster, per_fold), (rules.write_pseudo_masks, per_fold)]
    steps += [
        (rules.inspect_pseudo_masks, per_fold),
        (rules.inspect_prototypes, per_fold),
    ]
    steps += [(rules.train, runs), (rules.evaluate, runs)]
    steps += [(rules.build_bank, runs)] if MAIN["fg"] else []
    for step, pairs in (
        (rules.train_ablation, ABLATION_MODELS),
        (rules.build_bank_ablation, ABLATION_BANKS),
    ):
        steps.append(
            (step, [{"bg": b, "mine": m, **r} for b, m in pairs for r in runs])
        )
    variants = [
        {"fg": f, "bg": b, "mine": m, **r} for f, b, m in ABLATIONS for r in runs
    ]
    steps.append((rules.evaluate_ablation, variants))
    steps += [(rules.summarize, once), (rules.inspect_training, once)]
    return steps


def artifacts():
    """Every output of every job (features.zarr only when it is kept)."""
    files = [
        pattern.format(**wildcards)
        for step, wildcard_sets in jobs()
        for pattern in step.output
        for wildcards in wildcard_sets
    ]
    if config["annotation"]["temporary_features"]:
        files.remove(f"{RESULTS}/features.zarr")
    return files


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
