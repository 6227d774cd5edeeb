#!/usr/bin/env bash
# The main job: explain a synthetic CT phantom with the demo 3D CNN and write aligned NIfTI heatmaps + a PNG
# to out/demo (installs what it needs first). Pass --headless explicitly or not: until the napari widgets
# land, the demo is headless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/napari-attribution demo --headless -o out/demo --overwrite "$@"
