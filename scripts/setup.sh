#!/usr/bin/env bash
# Set up everything the tests and benchmarks need, on a machine that has only Python 3.10+:
#   torch, a ComfyUI release at $COMFYUI_PATH (default ~/comfy/ComfyUI), that release's
#   Python requirements, diffusers + peft, this pack's pinned test tools, the frontend that
#   release pins and Chromium (the browser tier), and the third-party packs the compatibility
#   tests run with (ComfyUI-bleh, FreeU_Advanced, restart sampling).
# COMFYUI_VERSION picks the release laid out when $COMFYUI_PATH has none yet: 0.3.64 (the
# oldest supported, default) or 0.33.0 (the newest tested). A tree that is already there is
# used as it is (its version is printed).
# Safe to run again: every step is skipped when already done.
set -euo pipefail

COMFYUI_VERSION="${COMFYUI_VERSION:-0.3.64}"
COMFYUI_REPO="https://github.com/comfyanonymous/ComfyUI"
COMFYUI_PATH="${COMFYUI_PATH:-$HOME/comfy/ComfyUI}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
REPO_ROOT="$PWD"
# Release archives for machines that cannot reach GitHub (the project's shared folder, beside the repo).
COMFYUI_TREE_TOOL="${COMFYUI_TREE_TOOL:-$REPO_ROOT/../shared/tools/comfyui-tree}"

say() { echo "[setup] $*"; }

if ! "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  say "installing torch 2.14.1 + torchvision 0.29.1"
  "$PYTHON" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
TORCH_PIN=$(mktemp)
trap 'rm -f "$TORCH_PIN"' EXIT
"$PYTHON" -c "import torch, torchvision; print(f'torch=={torch.__version__.split(\"+\")[0]}'); print(f'torchvision=={torchvision.__version__.split(\"+\")[0]}')" >"$TORCH_PIN"

if [ ! -f "$COMFYUI_PATH/comfy/model_patcher.py" ]; then
  say "ComfyUI not found at $COMFYUI_PATH; laying out ComfyUI $COMFYUI_VERSION"
  mkdir -p "$(dirname "$COMFYUI_PATH")"
  if [ -x "$COMFYUI_TREE_TOOL" ] && "$COMFYUI_TREE_TOOL" "$COMFYUI_VERSION" "$COMFYUI_PATH"; then
    :
  elif ! git clone --quiet --depth 1 --branch "v$COMFYUI_VERSION" "$COMFYUI_REPO" "$COMFYUI_PATH"; then
    echo "[setup] !!! Could not get ComfyUI $COMFYUI_VERSION (no release archive, no network to GitHub?)." >&2
    echo "[setup] !!! Put a ComfyUI checkout at $COMFYUI_PATH or set COMFYUI_PATH, then run this again." >&2
    exit 1
  fi
fi
found_version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_PATH/comfyui_version.py" 2>/dev/null || true)
say "ComfyUI ${found_version:-(unknown version)} at $COMFYUI_PATH"

"$PYTHON" -c "import packaging.requirements" 2>/dev/null || "$PYTHON" -m pip install --quiet packaging
# ComfyUI's requirements that are missing or too old, minus what we never need: torch is
# handled above, torchaudio below, and the frontend/template/doc packages only serve the browser UI.
missing=$("$PYTHON" - "$COMFYUI_PATH/requirements.txt" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "comfyui-frontend-package", "comfyui-workflow-templates",
        "comfyui-embedded-docs"}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    requirement = Requirement(line)
    if requirement.name.lower() in SKIP or (requirement.marker and not requirement.marker.evaluate()):
        continue
    try:
        if requirement.specifier.contains(version(requirement.name), prereleases=True):
            continue
    except PackageNotFoundError:
        pass
    print(line)
PY
)
if [ -n "$missing" ]; then
  say "installing ComfyUI requirements: $(echo $missing)"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --quiet -c "$TORCH_PIN" $missing
fi

# ComfyUI 0.33.0 imports torchaudio unconditionally (comfy/sd.py -> the audio VAE). No build
# matches torch 2.14.1; 2.11.1 without its dependencies imports and only serves audio models.
if ! "$PYTHON" -c "import torchaudio" 2>/dev/null; then
  say "installing torchaudio 2.11.1 (no dependencies; ComfyUI imports it, audio models only use it)"
  "$PYTHON" -m pip install --quiet --no-deps "torchaudio==2.11.1"
fi

if ! "$PYTHON" -c "import diffusers.hooks, peft" 2>/dev/null; then
  say "installing diffusers + peft (for the diffusers adapter's tests)"
  "$PYTHON" -m pip install --quiet -c "$TORCH_PIN" "diffusers==0.42.1" "peft==0.21.2"
fi

TEST_TOOLS=("pytest==9.0.3" "ruff==0.17.6" "pyyaml==6.0.3" "playwright==1.65.2")
if ! "$PYTHON" - "${TEST_TOOLS[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  say "installing test tools: ${TEST_TOOLS[*]}"
  "$PYTHON" -m pip install --quiet -c "$TORCH_PIN" "${TEST_TOOLS[@]}"
fi
# The browser tier: the frontend this ComfyUI pins (each tree its own, in its own folder, so
# several trees can share one Python), and Debian's Chromium for Playwright to drive (never a
# browser download of Playwright's own).
FRONTENDS="${HIDIFF_FRONTENDS:-$HOME/comfy/frontends}"
frontend_pin=$(sed -n 's/^comfyui-frontend-package==\([0-9.]*\).*/\1/p' "$COMFYUI_PATH/requirements.txt")
if [ -z "$frontend_pin" ]; then
  say "!!! $COMFYUI_PATH/requirements.txt pins no comfyui-frontend-package; the browser tier will be skipped"
elif [ ! -f "$FRONTENDS/$frontend_pin/comfyui_frontend_package/static/index.html" ]; then
  say "installing comfyui-frontend-package $frontend_pin into $FRONTENDS/$frontend_pin"
  "$PYTHON" -m pip install --quiet --no-deps --target "$FRONTENDS/$frontend_pin" "comfyui-frontend-package==$frontend_pin"
fi
CHROMIUM="${HIDIFF_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    say "!!! no Chromium at $CHROMIUM: install Debian's chromium package (or set HIDIFF_CHROMIUM); the browser tier will be skipped"
  fi
fi

# Third-party packs the compatibility tests run with, at the commits the tests were written
# against, from snapshots of their public repositories ($HIDIFF_MIRROR, where this project's
# `fetch` tool puts them: <owner>+<name>/repo, a bare git directory). They go to
# $HIDIFF_THIRD_PARTY, outside ComfyUI's custom_nodes, so only the tests that ask for them
# load them. Their code is never part of this repository.
HIDIFF_MIRROR="${HIDIFF_MIRROR:-/work/.mirror}"
THIRD_PARTY="${HIDIFF_THIRD_PARTY:-$HOME/comfy/third_party}"
# <repository> <commit> [<folder>]: bleh's newest commit needs a ComfyUI newer than 0.3.64,
# so 0.3.64 runs its last commit of September 2025, as its users would.
THIRD_PARTY_PACKS=(
  "blepping/ComfyUI-bleh b889683c425f0870a6192606438fecb7a5bda8b9"
  "blepping/ComfyUI-bleh 9bb5c7d3dfe6ad825cc6fdac1a62bdcd4ad1d39f ComfyUI-bleh-2025.09"
  "WASasquatch/FreeU_Advanced cf3714d80ced1636d6236ae7ae584be79ca74ced"
  "ssitu/ComfyUI_restart_sampling 5b06f9623f7884d36f7b07af66bc6427f30ebf15"
)
for entry in "${THIRD_PARTY_PACKS[@]}"; do
  read -r repo commit folder <<<"$entry"
  dest="$THIRD_PARTY/${folder:-${repo#*/}}"
  if [ "$(cat "$dest/.hidiff-commit" 2>/dev/null)" = "$commit" ]; then
    continue
  fi
  snapshot="$HIDIFF_MIRROR/${repo/\//+}/repo"
  if git -C "$snapshot" cat-file -e "$commit^{commit}" 2>/dev/null; then
    rm -rf "$dest" && mkdir -p "$dest"
    git -C "$snapshot" archive "$commit" | tar -x -C "$dest"
    echo "$commit" >"$dest/.hidiff-commit"
    say "third-party pack $repo at ${commit:0:7} in $dest"
  else
    say "!!! no snapshot of $repo at ${commit:0:7} under $HIDIFF_MIRROR (fetch github:$repo);"
    say "!!! the tests that run it will be skipped, which fails CI"
  fi
done
say "done"
