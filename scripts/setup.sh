#!/usr/bin/env bash
# Set up Mirage Env in a virtualenv (default .venv; MIRAGE_VENV=path to choose another).
#
# torch: an existing torch is kept (a CUDA build on a GPU machine stays). If the Python that
# creates the venv already has torch, the venv sees it (--system-site-packages); otherwise the
# CPU build torch==2.13.0 is installed first. Either way a constraints file pins that torch so
# no other package can pull a different (multi-GB CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${MIRAGE_VENV:-.venv}

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" 2>/dev/null; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU build)"
  "${pip[@]}" install --quiet "torch==2.13.0"
fi
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
constraints="$venv/mirage-constraints.txt"
echo "torch==${torch_version}" > "$constraints"
echo "setup: torch ${torch_version} pinned in ${constraints}"

"${pip[@]}" install --quiet --constraint "$constraints" --editable ".[test]"
echo "setup: done; run '$venv/bin/mirage --help'"
