#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first). Extra arguments go to pytest.
# The GUI tests (tests/_widget, marker "gui") open real napari viewers; pytest-xvfb starts a virtual X server
# for each test process, so they also run where there is no display (CI, ssh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Qt must not pick a platform plugin that cannot draw (offscreen has no OpenGL for vispy): use Xvfb's X server
unset QT_QPA_PLATFORM
exec .venv/bin/python -m pytest -n 2 "$@"
