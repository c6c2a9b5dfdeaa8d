#!/usr/bin/env bash
# Set up everything the tests and benchmarks need, on a machine that has only Python 3.10+:
#   torch (CPU or CUDA build), ComfyUI (pinned release) at $COMFYUI_PATH or ~/comfy/ComfyUI,
#   ComfyUI's Python requirements, and this pack's test tools.
# Safe to run again: every step is skipped when already done.
set -euo pipefail

COMFYUI_VERSION="v0.3.64"
COMFYUI_REPO="https://github.com/comfyanonymous/ComfyUI"
COMFYUI_PATH="${COMFYUI_PATH:-$HOME/comfy/ComfyUI}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

say() { echo "[setup] $*"; }

if ! "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  say "installing torch 2.14.1 + torchvision 0.29.1"
  "$PYTHON" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi

if [ ! -f "$COMFYUI_PATH/comfy/model_patcher.py" ]; then
  say "ComfyUI not found at $COMFYUI_PATH; cloning $COMFYUI_VERSION"
  mkdir -p "$(dirname "$COMFYUI_PATH")"
  if ! git clone --quiet --depth 1 --branch "$COMFYUI_VERSION" "$COMFYUI_REPO" "$COMFYUI_PATH"; then
    echo "[setup] !!! Could not clone ComfyUI (no network to GitHub?)." >&2
    echo "[setup] !!! Put a ComfyUI $COMFYUI_VERSION checkout at $COMFYUI_PATH or set COMFYUI_PATH, then run this again." >&2
    exit 1
  fi
fi
say "ComfyUI at $COMFYUI_PATH"

# ComfyUI's requirements, minus what we never need: torch is handled above, torchaudio only
# serves audio models, and the frontend/template/doc packages only serve the browser UI.
requirements=$(grep -vE '^\s*(#|$)' "$COMFYUI_PATH/requirements.txt" \
  | grep -vE '^(torch|torchvision|torchaudio|comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)\b' || true)
missing=$("$PYTHON" - "$requirements" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
import re
for line in sys.argv[1].split():
    name = re.split(r"[<>=~!\[]", line, maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        print(line)
PY
)
if [ -n "$missing" ]; then
  say "installing ComfyUI requirements: $(echo $missing)"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --quiet $missing
fi

if ! "$PYTHON" -c "import diffusers.hooks, peft" 2>/dev/null; then
  say "installing diffusers + peft (for the diffusers adapter's tests)"
  "$PYTHON" -m pip install --quiet "diffusers==0.42.1" peft
fi

if ! "$PYTHON" -c "import pytest, ruff, yaml" 2>/dev/null; then
  say "installing test tools"
  "$PYTHON" -m pip install --quiet "pytest>=8" "ruff>=0.6" pyyaml
fi
say "done"
