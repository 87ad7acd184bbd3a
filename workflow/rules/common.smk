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


def ablation_metrics():
    return [
        f"{ABLATION_EVAL}/metrics.json".format(
            fg=fg, bg=bg, mine=mine, fold=fold, shot=shot
        )
        for fg, bg, mine in ABLATIONS
        for fold in config["folds"]
        for shot in config["shots"]
    ]
