#!/usr/bin/env bash
# The main job: open napari with the Explain dock, a generated head CT angiogram (100x256x256 voxels) and the
# demo vessel segmenter (sliding window) loaded, explaining in the background (installs what it needs first).
# Without a display (ssh, CI) or with --headless: segment and explain the scan and write aligned NIfTI heatmaps,
# the prediction + a PNG to out/demo instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--headless" ] || { [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; }; then
    [ "${1:-}" = "--headless" ] && shift
    exec .venv/bin/napari-attribution demo --headless -o out/demo --overwrite "$@"
fi
exec .venv/bin/napari-attribution demo "$@"
