#!/usr/bin/env bash
# Set up .venv with autopart (editable) and its test extras.
# TORCH_SPEC picks the torch build: the default is the CPU wheel this project is developed on;
# on a GPU machine use e.g. TORCH_SPEC="torch>=2.11".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
