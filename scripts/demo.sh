#!/usr/bin/env bash
# The main job: open napari with the Explain dock, the demo CT phantom and the demo 3D CNN loaded (installs what
# it needs first). Without a display (ssh, CI) or with --headless: explain the phantom and write aligned NIfTI
# heatmaps + a PNG to out/demo instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--headless" ] || { [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; }; then
    [ "${1:-}" = "--headless" ] && shift
    exec .venv/bin/napari-attribution demo --headless -o out/demo --overwrite "$@"
fi
exec .venv/bin/napari-attribution demo "$@"
