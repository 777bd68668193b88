#!/usr/bin/env bash
# Set up everything (scripts/setup.sh --test) and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "[test] ruff check (rule set in pyproject.toml)"
.venv/bin/ruff check .
echo "[test] lint-imports (the layers and acyclic contracts in .importlinter)"
.venv/bin/lint-imports
# One worker per core (pytest-xdist); --dist loadfile keeps each file's tests, and its module
# fixtures (a built wheel, a started sshd or PostgreSQL), in one worker.
exec .venv/bin/python -m pytest -n "${EDGEPRUNE_TEST_WORKERS:-auto}" --dist loadfile "$@"
