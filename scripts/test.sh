#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${MIRAGE_VENV:-.venv}
"$venv/bin/python" -m pytest -q "$@"
