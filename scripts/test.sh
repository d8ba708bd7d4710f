#!/usr/bin/env bash
# Runs every test of the workspace after installing what they need (scripts/setup.sh).
# Multi-process tests run the `shoal` binary named by SHOAL_BIN, built here in the same (dev)
# profile as the tests so nothing is compiled twice. Network-namespace tests run only as root
# and print a visible SKIP line otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL_TEST_DEPS=1 scripts/setup.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/onnxruntime/capi/libonnxruntime.so.1.32.0}"
cargo build --locked -p shoal-node --bin shoal
export SHOAL_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/shoal"
cargo test --workspace --locked -- --test-threads 2
