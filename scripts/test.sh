#!/usr/bin/env bash
# Runs every test of the workspace after installing what they need (scripts/setup.sh).
# Multi-process tests run the `shoal` binary named by SHOAL_BIN, built here in the same (dev)
# profile as the tests so nothing is compiled twice. Network-namespace tests run only as root
# and print a visible SKIP line otherwise.
#
# Order: every crate's tests two at a time, then the timing-sensitive binaries of tests/
# (scripts/timing-tests.sh) one test at a time, so no two impaired beds or timed swarms share
# the cores. Every test binary of tests/ is in exactly one of the two runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL_TEST_DEPS=1 scripts/setup.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/onnxruntime/capi/libonnxruntime.so.1.32.0}"
cargo build --locked -p shoal-node --bin shoal
export SHOAL_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/shoal"
# shellcheck source=scripts/timing-tests.sh
source scripts/timing-tests.sh

untimed=()
for f in tests/tests/*.rs; do
  name=$(basename "$f" .rs)
  [[ " ${TIMING_TESTS[*]} " == *" $name "* ]] || untimed+=(--test "$name")
done
timed=()
for name in "${TIMING_TESTS[@]}"; do
  [ -f "tests/tests/$name.rs" ] || { echo "test: scripts/timing-tests.sh names $name, which tests/tests/ lacks" >&2; exit 1; }
  timed+=(--test "$name")
done

# Each run goes on after a failure (and so do the binaries within it): one red run shows
# every failing test, and the script fails at the end.
failed=0
cargo test --workspace --exclude shoal-tests --locked --no-fail-fast -- --test-threads 2 || failed=1
cargo test -p shoal-tests --locked --no-fail-fast --lib "${untimed[@]}" -- --test-threads 2 || failed=1
cargo test -p shoal-tests --locked --no-fail-fast "${timed[@]}" -- --test-threads 1 || failed=1
exit $failed
