#!/usr/bin/env bash
# The README's test command: set up, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check deepedge tests
.venv/bin/ruff format --check deepedge tests
.venv/bin/mypy deepedge
.venv/bin/mypy --python-version 3.10 deepedge   # the package also runs on JetPack 6's Python 3.10
.venv/bin/python -m pytest --durations=40 "$@"   # the slowest 40: where CI time goes
