#!/usr/bin/env bash
# Measures how flaky the timing-sensitive tests are: runs each binary of
# scripts/timing-tests.sh (or the ones named) N times in a row, one test at a time as
# scripts/test.sh does, while a competing busy loop keeps one core loaded like the rest of a
# CI run would, and prints a table of test x failures. Logs of failing runs are kept.
#
#   scripts/ci-soak.sh N [--no-load] [--plant SPEC] [binary ...]
#
# --plant SPEC sets SHOAL_BED_PLANT (e.g. rate=0.7, rtt=1.3, loss=+3): the network-namespace
# bed then imposes figures other than the ones its tests judge against, and the table shows
# which tests catch that planted error (a failure is then what should happen).
# Exits non-zero when any test failed (without --plant). Needs what scripts/test.sh needs;
# the network-namespace tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
runs=$1
shift
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || usage
load=1
plant=""
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-load) load=0 ;;
    --plant) plant=${2:?--plant needs a spec}; shift ;;
    -h|--help) usage ;;
    *) bins+=("$1") ;;
  esac
  shift
done
# shellcheck source=scripts/timing-tests.sh
source scripts/timing-tests.sh
[ ${#bins[@]} -gt 0 ] || bins=("${TIMING_TESTS[@]}")
for b in "${bins[@]}"; do
  [ -f "tests/tests/$b.rs" ] || { echo "ci-soak: no test binary $b in tests/tests/" >&2; exit 2; }
done

SHOAL_TEST_DEPS=1 scripts/setup.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/onnxruntime/capi/libonnxruntime.so.1.32.0}"
cargo build --locked -p shoal-node --bin shoal
export SHOAL_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/shoal"
targets=()
for b in "${bins[@]}"; do targets+=(--test "$b"); done
cargo test -p shoal-tests --locked --no-run "${targets[@]}"
[ -z "$plant" ] || export SHOAL_BED_PLANT="$plant"

logs=$(mktemp -d /tmp/shoal-ci-soak.XXXXXX)
busy=""
cleanup() { [ -z "$busy" ] || kill "$busy" 2>/dev/null || true; }
trap cleanup EXIT
if [ "$load" = 1 ]; then
  # One core busy for the whole soak (a plain shell loop at normal priority).
  bash -c 'while :; do :; done' &
  busy=$!
fi

declare -A runs_of fails_of secs_of
order=()
start_all=$(date +%s)
for ((r = 1; r <= runs; r++)); do
  for b in "${bins[@]}"; do
    log="$logs/$b.$r.log"
    t0=$(date +%s)
    rc=0
    cargo test -p shoal-tests --locked --test "$b" -- --test-threads 1 >"$log" 2>&1 || rc=$?
    dt=$(( $(date +%s) - t0 ))
    # One row per test of the binary: `test NAME ... ok|FAILED`.
    mapfile -t results < <(grep -E '^test [^ ]+ \.\.\. (ok|FAILED)$' "$log" | sed -E 's/^test ([^ ]+) \.\.\. (ok|FAILED)$/\1 \2/')
    if [ ${#results[@]} -eq 0 ]; then results=("(binary) $([ $rc = 0 ] && echo ok || echo FAILED)"); fi
    for line in "${results[@]}"; do
      key="$b::${line% *}"
      [ -n "${runs_of[$key]+x}" ] || { order+=("$key"); runs_of[$key]=0; fails_of[$key]=0; secs_of[$key]=0; }
      runs_of[$key]=$(( runs_of[$key] + 1 ))
      secs_of[$key]=$(( secs_of[$key] + dt ))
      [ "${line##* }" = ok ] || fails_of[$key]=$(( fails_of[$key] + 1 ))
    done
    if [ $rc = 0 ]; then rm -f "$log"; else echo "ci-soak: run $r of $b failed (rc $rc), log kept: $log"; fi
  done
  echo "ci-soak: round $r of $runs done ($(( $(date +%s) - start_all )) s)"
done

echo
echo "ci-soak: $runs runs per binary, competing load: $([ "$load" = 1 ] && echo 'one busy core' || echo none)${plant:+, planted error: $plant}"
printf '%-70s %5s %9s %12s\n' "test" "runs" "failures" "s/run (bin)"
total_fail=0
for key in "${order[@]}"; do
  printf '%-70s %5d %9d %12d\n' "$key" "${runs_of[$key]}" "${fails_of[$key]}" $(( secs_of[$key] / runs_of[$key] ))
  total_fail=$(( total_fail + fails_of[$key] ))
done
echo "ci-soak: wall time $(( $(date +%s) - start_all )) s; logs of failed runs in $logs"
if [ -n "$plant" ]; then exit 0; fi
[ "$total_fail" = 0 ]
