#!/usr/bin/env bash
# Create .venv and install napari-attribution with everything its tests need (the napari GUI included).
# Idempotent and quick when nothing changed: a stamp of pyproject.toml + constraints + this script is kept in
# .venv, and Debian packages are installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# The napari viewer needs an X server and OpenGL: Xvfb + Mesa + the X/xcb libraries Qt 6 loads (Debian names).
GUI_DEBS="xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 \
libfontconfig1"
if command -v dpkg-query >/dev/null 2>&1; then
    missing=""
    for deb in $GUI_DEBS; do
        dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing="$missing $deb"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = 0 ]; then
            as_root=""
        elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root="sudo"
        else
            as_root="none"
        fi
        if [ "$as_root" = none ]; then
            echo "setup: the GUI tests need these Debian packages (install them as root):$missing" >&2
        else
            echo "setup: installing Debian packages for the napari GUI:$missing" >&2
            $as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends $missing >/dev/null
        fi
    fi
fi

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
# [test] includes napari[pyqt6] 0.9, pytest-qt and pytest-xvfb (the GUI tests run in a real viewer under Xvfb)
.venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[test,io,monai,napari,batch]" \
    2>&1 | grep -v "^WARNING: Location" || true
# nnU-Net result folders need dynamic-network-architectures (the [nnunet] extra). --no-deps: its declared
# dependencies pull timm -> torchvision, which can replace the CPU torch with a multi-GB CUDA build; its UNets import
# only torch and numpy
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c scripts/constraints.txt \
    dynamic-network-architectures==0.4.4 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import napari_attribution, torch, captum, monai, nibabel, pydicom, pytest, napari, pytestqt, qtpy, distributed, yaml, scipy, nilearn, importlinter"
echo "$want" > "$stamp"
