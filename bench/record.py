"""Backs docs/benchmarks.md: the plumbing every benchmark shares."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import latentfss.machine
from latentfss.layout import artifact  # noqa: F401 (the scripts' helper, from here)

REPO = Path(__file__).resolve().parents[1]


def arguments(doc: str, *, results: bool = False, threads: bool = False) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as the help, `--out` (the folder of its results
    files) and, when asked, `--results` (a finished run) and `--threads` (default: all cores)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    if results:
        parser.add_argument("--results", type=Path, default=REPO / "results/synthetic")
    if threads:
        parser.add_argument("--threads", type=int, default=os.cpu_count())
    return parser


def machine() -> dict:
    """The pipeline's record of the machine with the cores and Python."""
    return dict(latentfss.machine.machine(), cores=os.cpu_count(), python=platform.python_version())


def describe(m: dict) -> str:
    """One line; results files from before the vector extensions were recorded lack them."""
    extensions = f" ({', '.join(m['vector_extensions'])})" if m.get("vector_extensions") else ""
    onednn = f", oneDNN {m['onednn']}" if m.get("onednn") else ""
    return (
        f"{m['cpu']}{extensions}, {m['cores']} cores, {m['gpu'] or 'no GPU'}; "
        f"Python {m['python']}, torch {m['torch']}{onednn}"
    )


def scratch() -> tempfile.TemporaryDirectory:
    """A scratch folder in the checkout; git ignores .bench-*, so a left-over is never committed."""
    return tempfile.TemporaryDirectory(dir=REPO, prefix=".bench-")


def table(rows: list[dict], columns: dict[str, str]) -> list[str]:
    """A Markdown table: `columns` maps each header to the format of a row's cell, e.g.
    {"seconds": "{seconds:.1f}"} (a header of several columns, "a | b", formats to as many)."""
    width = sum(header.count("|") + 1 for header in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * width]
    return lines + ["| " + " | ".join(f.format(**r) for f in columns.values()) + " |" for r in rows]


def save(results: dict, render: Callable[[dict], list[str]], out: Path, name: str) -> None:
    """{name}.json: the results, their machine and the function that renders them (`python
    bench/report.py --render`), and {name}.md: its lines, assembled into docs/benchmarks.md."""
    results = {"machine": machine(), **results}
    script = Path(sys.modules[render.__module__].__file__).stem
    results["rendered_by"] = f"{script}.{render.__name__}"
    text = "\n".join(render(results)) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)


# A stage process's peak RSS (ru_maxrss) counts its parent's at the time it was spawned (Linux
# carries it over exec), so stages are spawned from this small shim, which reports on its child.
_SHIM = """import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))"""


def run_stage(stage: str, **flags) -> dict:
    """Run `latentfss STAGE --flag value ...` in its own process: wall seconds (process start
    included) and the process's peak RSS. A failure stops with the stage's last words."""
    argv = [str(a) for key, value in flags.items() for a in (f"--{key.replace('_', '-')}", value)]
    command = [sys.executable, "-m", "latentfss.cli", "--log-level", "WARNING", stage, *argv]
    done = subprocess.run([sys.executable, "-c", _SHIM, *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"stage failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    seconds, maxrss_kb = done.stdout.split()
    return {"seconds": round(float(seconds), 2), "peak_rss_mb": round(int(maxrss_kb) / 1024)}
