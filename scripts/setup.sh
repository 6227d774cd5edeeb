#!/usr/bin/env bash
# Create .venv and install napari-attribution with everything its tests need. Idempotent and quick when
# nothing changed (a stamp of pyproject.toml + constraints is kept in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.napari-attribution-installed"
want="$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import napari_attribution" 2>/dev/null; then
    exit 0
fi
echo "setup: installing into .venv (first run takes a few minutes)" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# the CPU build of torch first: left to itself the resolver may pick a multi-GB CUDA build
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt torch 2>&1 \
        | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[test,io,monai]" 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import napari_attribution, torch, captum, monai, nibabel, pydicom, pytest" 
echo "$want" > "$stamp"
