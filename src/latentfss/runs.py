"""Runs as rows: `runs:` names each row's config overrides, and every stage's work is shared by
the rows whose inputs to it are equal (docs/running.md, "Rows"). No torch import: the
Snakefile loads this module at every call."""

from __future__ import annotations

import json
import os
from typing import Any

from latentfss.errors import InputError

# the sections a row may override; every other key is one setting for the whole run
SECTIONS = ("encoder", "pretrain", "annotation", "cluster", "mining", "model", "train", "evaluate")
# keys of those sections that stay one setting for every row: the episode lists every row is
# scored on (so that rows pair), and whether features.zarr exists (the shape of the DAG)
RUN_WIDE = {"annotation": ("keep_features",), "evaluate": ("episodes", "seeds")}
# what build_bank reads of evaluate
BANK_KEYS = ("resize", "input_size", "batch_size", "workers")
# the stages' work, in the order it flows: a row shares a level's artifacts with the first row
# (in the config's order) whose inputs to it are equal
LEVELS = ("pretrain", "features", "annotation", "model", "bank", "evaluate")


def rows(config: dict) -> dict[str, dict]:
    """Each row's name -> its config: the run's sections with the row's overrides."""
    return {
        name: {**config, **{s: {**config[s], **overrides.get(s, {})} for s in overrides}}
        for name, overrides in config["runs"].items()
    }


def reference(config: dict) -> str:
    """The row every other row is compared with: `reference`, else the first row."""
    return config.get("reference") or next(iter(config["runs"]))


def check(config: dict, results: str) -> None:
    """InputError, one line, for a row that sets a run-wide key, a row named like a folder of
    results/{dataset}/ that is not a row's, or a reference that is not a row."""
    taken = {"dataset", "benchmarks"}
    inside = os.path.relpath(config["dataset"]["root"], results)
    if not inside.startswith(os.pardir):
        taken.add(inside.split(os.sep)[0])  # the synthetic data under results/synthetic/
    seen = set()
    for name, overrides in config["runs"].items():
        if not isinstance(name, str):  # YAML reads on, off, yes, no unquoted as booleans
            raise InputError(f"runs: the row name {name!r} is not a string; quote it")
        if name.lower() in taken | seen:  # one folder each, on case-insensitive disks too
            raise InputError(f"runs.{name}: its folder would be another's ({results}/{name})")
        seen.add(name.lower())
        for section, keys in RUN_WIDE.items():
            for key in set(keys) & set(overrides.get(section, {})):
                raise InputError(
                    f"runs.{name}.{section}.{key}: one setting for every row; set it outside runs"
                )
    if reference(config) not in config["runs"]:
        raise InputError(f"reference: {config['reference']!r} is not a row of runs")


def _keys(c: dict) -> dict[str, Any]:
    """A row's config -> per level, everything its artifacts depend on (None: the row has no
    such work: no pre-training but with `encoder.weights: pretrain`, no bank without FG)."""
    pretrain = c["encoder"]["weights"] == "pretrain"
    keys = {"pretrain": [c["pretrain"], c["synthetic"], c["encoder"]["arch"]] if pretrain else None}
    keys["features"] = [keys["pretrain"], c["encoder"], c["annotation"]]
    keys["annotation"] = [keys["features"], c["cluster"], c["mining"]["unlabeled"]]
    remain = c["mining"]["remain"] and c["model"]["mine"]  # Remain is mined only with mining
    keys["model"] = [keys["annotation"], c["model"], c["train"], remain]
    bank = [keys["model"], {k: c["evaluate"][k] for k in BANK_KEYS}]
    keys["bank"] = bank if c["evaluate"]["fg_rectify"] else None
    keys["evaluate"] = [keys["model"], c["evaluate"]]
    return {level: json.dumps(key, sort_keys=True) if key else None for level, key in keys.items()}


def owners(configs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per level, each row (that has such work) -> the row whose folder holds it: the first row
    with the same key."""
    keys = {name: _keys(c) for name, c in configs.items()}
    shared = {}
    for level in LEVELS:
        first = {}
        for name in configs:
            if keys[name][level] is not None:
                first.setdefault(keys[name][level], name)
        shared[level] = {n: first[k[level]] for n, k in keys.items() if k[level] is not None}
    return shared


def describe(config: dict, shared: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Each row -> its overrides (dotted keys) and, per level, the row whose work it uses."""
    return {
        name: {
            "overrides": {
                f"{section}.{key}": value
                for section, values in overrides.items()
                for key, value in values.items()
            },
            "shares": {level: shared[level].get(name) for level in LEVELS},
        }
        for name, overrides in config["runs"].items()
    }
