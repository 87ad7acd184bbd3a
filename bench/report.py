"""Backs docs/benchmarks.md: assembled from the scripts' fragments.

Assemble docs/benchmarks.md from the Markdown fragments the bench/*.py scripts write.

python bench/report.py
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = """# Benchmarks

Every figure below was measured by a script in `bench/` on the machine it names, and is
rebuilt by running that script and then `python bench/report.py`. The raw numbers are in
`bench/results/*.json`; what every script records (the machine, its results files) and its
command line's shared options come from `bench/record.py`.
"""


def main() -> None:
    fragments = sorted((REPO / "bench/results").glob("*.md"))
    fragments.append(REPO / "bench/gpu_checklist.md")  # what is still to measure, last
    body = "\n".join(f.read_text() for f in fragments)
    (REPO / "docs/benchmarks.md").write_text(f"{HEADER}\n{body}")
    print(f"docs/benchmarks.md: {len(fragments)} section(s)")


if __name__ == "__main__":
    main()
