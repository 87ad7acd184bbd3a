# Config validation and the helpers every rule file uses.
import json
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
