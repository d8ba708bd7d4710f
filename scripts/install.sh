#!/usr/bin/env bash
# Installs shoal for one user: the `shoal` binary into PREFIX/bin and the ONNX Runtime library
# it loads into PREFIX/lib/shoal/, where an installed shoal looks first after ORT_DYLIB_PATH
# and its config (model/src/runtime/ort_lib.rs), so a binary copied out of target/ runs on ONNX
# Runtime instead of falling back to the slower built-in tract backend. Then checks that the
# installed binary, started from elsewhere with ORT_DYLIB_PATH unset, loads that library.
#
#   scripts/install.sh [--prefix DIR] [--bin FILE] [--ort FILE] [--no-build]
#
#   --prefix DIR  where to install; default $PREFIX when set (Termux: $PREFIX/bin is on PATH),
#                 else ~/.local
#   --bin FILE    the binary; default target/release/shoal, built first with
#                 `cargo build --release --locked --bin shoal` unless --no-build
#   --ort FILE    the libonnxruntime.so to install; default $ORT_DYLIB_PATH, else the one
#                 scripts/setup.sh puts in .ort/; none is copied when DIR/lib already has one
#                 (Termux's `pkg install onnxruntime` puts it in $PREFIX/lib)
#
# A binary of another architecture (e.g. the aarch64 build of scripts/cross-aarch64.sh, with
# --ort .cross/ort/1.32.0/libonnxruntime.so.1.32.0) is installed but not checked: that stages
# a folder to copy to a phone as a whole.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-$HOME/.local}
bin=""
ort=""
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --ort) ort=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$bin" ]; then
  bin=target/release/shoal
  if [ "$build" = 1 ]; then
    cargo build --release --locked -p shoal-node --bin shoal
  fi
fi
[ -x "$bin" ] || { echo "install: no binary at $bin" >&2; exit 1; }

has_lib() { compgen -G "$1/libonnxruntime.so*" >/dev/null; }
if [ -z "$ort" ] && ! has_lib "$prefix/lib" && ! has_lib "$prefix/lib/shoal"; then
  ort=${ORT_DYLIB_PATH:-}
  if [ -z "$ort" ]; then
    ort=$(compgen -G ".ort/onnxruntime/capi/libonnxruntime.so.*" | sort | tail -n1 || true)
  fi
  [ -n "$ort" ] && [ -f "$ort" ] || {
    echo "install: no ONNX Runtime library to install: run scripts/setup.sh, pass --ort FILE," >&2
    echo "         or install it system-wide (pip install onnxruntime; on Termux pkg install onnxruntime)" >&2
    exit 1
  }
fi

mkdir -p "$prefix/bin"
install -m 755 "$bin" "$prefix/bin/shoal.tmp"
mv "$prefix/bin/shoal.tmp" "$prefix/bin/shoal"
echo "install: $prefix/bin/shoal"
if [ -n "$ort" ]; then
  mkdir -p "$prefix/lib/shoal"
  name=$(basename "$(readlink -f "$ort")")
  install -m 644 "$(readlink -f "$ort")" "$prefix/lib/shoal/$name"
  echo "install: $prefix/lib/shoal/$name"
fi

# The check: a scratch model, one token, from another folder, with no hint where the library is.
if ! "$prefix/bin/shoal" --version >/dev/null 2>&1; then
  echo "install: $prefix/bin/shoal does not run on this machine (another architecture?): not checked"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  env -u ORT_DYLIB_PATH "$prefix/bin/shoal" model synth --layers 1 --out m >/dev/null
  env -u ORT_DYLIB_PATH "$prefix/bin/shoal" --log shoal_model=info generate --model m \
    --prompt-ids 1,2 --max-tokens 1 >out.txt 2>&1
) || { cat "$tmp/out.txt" >&2 2>/dev/null; echo "install: the installed shoal failed to generate" >&2; exit 1; }
loaded=$(grep -o 'ONNX Runtime loaded.*' "$tmp/out.txt" | head -n1 || true)
if [ -z "$loaded" ]; then
  cat "$tmp/out.txt" >&2
  echo "install: the installed shoal did not load ONNX Runtime (it would run on tract)" >&2
  exit 1
fi
echo "install: ok, $loaded"
