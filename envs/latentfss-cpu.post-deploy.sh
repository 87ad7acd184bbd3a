#!/usr/bin/env bash
# Snakemake runs this once, inside the new environment, right after creating it, from its
# working directory: the latentfss checkout. It installs latentfss itself (editable, no
# dependencies: the environment file pins them, faiss-gpu or faiss-cpu but never both).
set -euo pipefail
if ! grep -qs '^name = "latentfss"' pyproject.toml; then
    echo "latentfss: run snakemake --sdm conda from the latentfss checkout" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation --editable .
