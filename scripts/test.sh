#!/usr/bin/env bash
# Set up everything (scripts/setup.sh --test) and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "[test] ruff check (rule set in pyproject.toml)"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
