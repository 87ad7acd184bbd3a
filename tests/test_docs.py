"""The documentation: the README's size, relative links and their anchors, the DAG picture
against today's rules, and every bench script naming the claim it backs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, tool_env

sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
SVG = "{http://www.w3.org/2000/svg}"


def headings(page) -> list[str]:
    return re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)


def anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings(page)}


def test_the_readme_is_at_most_12_kb():
    assert len((REPO / "README.md").read_bytes()) <= 12 * 1024


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.name}: {broken}"


def rulegraph_edges(dot: str) -> set[tuple[str, str]]:
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)\"", dot, flags=re.MULTILINE))
    edges = re.findall(r"^\s*(\d+) -> (\d+)$", dot, flags=re.MULTILINE)
    return {(labels[a], labels[b]) for a, b in edges}


def svg_edges(svg) -> set[tuple[str, str]]:
    groups = ET.parse(svg).getroot().iter(f"{SVG}g")
    nodes, edges = {}, []
    for g in groups:
        title = g.findtext(f"{SVG}title")
        if g.get("class") == "node":
            nodes[title] = g.findtext(f"{SVG}text")
        elif g.get("class") == "edge":
            edges.append(title.split("->"))
    return {(nodes[a], nodes[b]) for a, b in edges}


def test_the_dag_picture_matches_the_rules(tmp_path):
    """docs/dag.svg is `snakemake summarize --rulegraph | dot -Tsvg` of today's Snakefile: the
    same rules joined by the same edges (compared by rule name, not by dot's node numbers)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--configfile", str(REPO / "config.yaml"), "--directory", str(tmp_path)]
    cmd += ["summarize", "--rulegraph"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=tool_env(), check=True)
    today = rulegraph_edges(done.stdout)
    assert ("train", "evaluate") in today  # the parse found the graph
    assert svg_edges(REPO / "docs/dag.svg") == today, (
        "docs/dag.svg is stale: snakemake summarize --rulegraph | dot -Tsvg > docs/dag.svg"
    )


@pytest.mark.parametrize("script", sorted((REPO / "bench").glob("*.py")), ids=lambda p: p.name)
def test_every_bench_script_names_the_claim_it_backs(script):
    """Its docstring's first line names a docs/ page (and, quoted, a section of it), and that
    page cites the script."""
    first = ast.get_docstring(ast.parse(script.read_text())).splitlines()[0]
    named = re.match(r'Backs docs/(\w+\.md)(?:, "([^"]+)")?', first)
    assert named, f"{script.name}: the first docstring line names no docs/ page: {first!r}"
    page = REPO / "docs" / named[1]
    assert f"bench/{script.name}" in page.read_text(), f"{page.name} does not cite {script.name}"
    if named[2]:
        assert named[2] in headings(page), f"{script.name}: {page.name} has no section {named[2]!r}"


RESULTS = sorted((REPO / "bench/results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_every_fragment_is_its_scripts_rendering_of_its_results(path):
    """bench/results/X.md is what the function named in X.json renders of it: a script's
    wording and its fragment cannot drift apart (`python bench/report.py --render`)."""
    assert path.with_suffix(".md").read_text() == report.rendered(path)


def test_the_benchmarks_page_is_the_assembled_fragments():
    page = (REPO / "docs/benchmarks.md").read_text()
    assert page == report.assembled(), "docs/benchmarks.md is stale: python bench/report.py"
