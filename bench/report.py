"""Backs docs/benchmarks.md: assembled from the scripts' fragments.

Assemble docs/benchmarks.md from the Markdown fragments the bench/*.py scripts write; with
`--render`, first render every fragment again from its JSON file with the function its script
names in it (`rendered_by`), so that a change to a script's wording needs no re-run.

    python bench/report.py [--render]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench/results"
sys.path.insert(0, str(REPO / "bench"))  # the scripts import record, as when run
HEADER = """# Benchmarks

Every figure below was measured by a script in `bench/` on the machine it names, and is
rebuilt by running that script and then `python bench/report.py`. The raw numbers are in
`bench/results/*.json`; what every script records (the machine, its results files) and its
command line's shared options come from `bench/record.py`.
"""


def rendered(path: Path) -> str:
    """The Markdown fragment of one results file, as its script renders it."""
    results = json.loads(path.read_text())
    script, function = results["rendered_by"].split(".")
    return "\n".join(getattr(importlib.import_module(script), function)(results)) + "\n"


def assembled() -> str:
    """docs/benchmarks.md: the header, every fragment, and what is still to measure, last."""
    fragments = [*sorted(RESULTS.glob("*.md")), REPO / "bench/gpu_checklist.md"]
    return HEADER + "\n" + "\n".join(f.read_text() for f in fragments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--render", action="store_true", help="render every fragment again")
    args = parser.parse_args()
    if args.render:
        for path in sorted(RESULTS.glob("*.json")):
            path.with_suffix(".md").write_text(rendered(path))
    (REPO / "docs/benchmarks.md").write_text(assembled())
    print("docs/benchmarks.md written")


if __name__ == "__main__":
    main()
