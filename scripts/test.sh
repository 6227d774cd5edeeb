#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first): ruff, mypy, import-linter, then pytest with the
# docstring examples. Extra arguments go to pytest.
# The GUI tests (tests/_widget, marker "gui") open real napari viewers; pytest-xvfb starts a virtual X server
# for each test process, so they also run where there is no display (CI, ssh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Qt must not pick a platform plugin that cannot draw (offscreen has no OpenGL for vispy): use Xvfb's X server
unset QT_QPA_PLATFORM
# the project's own guards first (a minute): lint, strict types on the package, the import contract (pyproject.toml)
.venv/bin/ruff check src tests scripts benchmarks docs
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
# the suite and the docstring examples of the package
exec .venv/bin/python -m pytest -n 2 --doctest-modules tests src/napari_attribution "$@"
