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


def section(name):
    """A config section as JSON for a stage's --params: editing it re-runs that rule's jobs."""
    return json.dumps(config[name], sort_keys=True)
