#!/usr/bin/env bash
# Peer benchmark (issue 11, item 5): builds llama.cpp's llama-bench from the llama-cpp-python
# PyPI sdist (it vendors the llama.cpp tree) and measures llama.cpp's prefill and decode tok/s on
# a GGUF, so shoal's own figures can be compared with llama.cpp's on the same machine, same model
# and same thread count. llama.cpp is a benchmark tool here, never a runtime dependency: its source
# and build live under .cache/peer/ (gitignored), nothing of it is committed.
#
# Usage: scripts/peer-llama-cpp.sh GGUF THREADS [PROMPT_TOKENS] [GEN_TOKENS]
#   PROMPT_TOKENS defaults to 512, GEN_TOKENS to 128. Example:
#     scripts/peer-llama-cpp.sh .cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf 2
# Prints ONE JSON line on stdout:
#   {"peer":"llama.cpp","version":"...","threads":T,"prefill_tok_s":X,"decode_tok_s":Y,
#    "prompt_tokens":P,"gen_tokens":G,"repetitions":R,"prefill_tok_s_stddev":..,
#    "decode_tok_s_stddev":..}
# prefill is llama-bench's pp<P> test (a P-token prompt in one batch), decode its tg<G> test
# (G tokens one at a time after an empty context); each is the mean over R repetitions
# (PEER_REPS, default 5, llama-bench's own default) after llama-bench's warm-up run. The run
# holds the build lock, so it waits for (and keeps out) other heavy builds.
# Everything else (download, build, llama-bench's log) goes to stderr or to
# .cache/peer/peer-llama-cpp.log; on failure the script exits non-zero with a one-line reason.
#
# Build: CPU only, Release, -DGGML_NATIVE=ON, static, no HTTPS/CURL, no server, tests or
# examples, no AMX (it crashes here, see cmake_flags); only the llama-bench target, with -j2
# under flock on $SHOAL_BUILD_LOCK (default /tmp/shoal-cargo.lock) so it never competes with
# another heavy build. 679 s on 2 cores the first time here (other unlocked work was running); cached in .cache/peer/build/<version>/ and skipped while the binary and
# its stamp (the configure flags) are there. cmake is installed via apt if missing
# (scripts/setup.sh already does that).
set -euo pipefail

LCP_VERSION=0.3.36   # llama-cpp-python; vendors ggml-org/llama.cpp@0c1e57098
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo_root/.cache/peer"
log="$cache/peer-llama-cpp.log"
py="${PYTHON:-python3}"
lock="${SHOAL_BUILD_LOCK:-/tmp/shoal-cargo.lock}"
reps="${PEER_REPS:-5}"

die() { echo "peer-llama-cpp: $*" >&2; exit 1; }
say() { echo "peer-llama-cpp: $*" >&2; }

[[ $# -ge 2 && $# -le 4 ]] || die "usage: $0 GGUF THREADS [PROMPT_TOKENS] [GEN_TOKENS]"
gguf="$1"; threads="$2"; prompt_tokens="${3:-512}"; gen_tokens="${4:-128}"
[[ -f "$gguf" ]] || die "no GGUF at $gguf"
gguf="$(cd "$(dirname "$gguf")" && pwd)/$(basename "$gguf")"
for v in threads prompt_tokens gen_tokens reps; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

mkdir -p "$cache"
: >>"$log"

# --- tools ---------------------------------------------------------------------------------
if ! command -v cmake >/dev/null 2>&1; then
    sudo=""; [[ "$(id -u)" = 0 ]] || sudo="sudo"
    say "installing cmake via apt (log: $log)"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends cmake; } >>"$log" 2>&1 || die "apt-get install cmake failed (see $log)"
fi
command -v c++ >/dev/null 2>&1 || die "no C++ compiler (c++) on PATH"
command -v "$py" >/dev/null 2>&1 || die "no $py on PATH"

# --- source: the llama-cpp-python sdist from PyPI -------------------------------------------
sdist="$cache/llama_cpp_python-$LCP_VERSION.tar.gz"
sdist_ok() { [[ -f "$sdist" ]] && [[ "$(sha256sum "$sdist" | cut -d' ' -f1)" == "$LCP_SHA256" ]]; }
if ! sdist_ok; then
    say "downloading llama-cpp-python==$LCP_VERSION sdist from PyPI (log: $log)"
    dl="$(mktemp -d "$cache/dl.XXXXXX")"
    # --no-binary for this package only: the sdist, while pip's metadata step may use wheels
    # for the build backend (with :all: pip builds scikit-build-core's own deps from source).
    if ! "$py" -m pip download --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$LCP_VERSION" -d "$dl" >>"$log" 2>&1; then
        rm -rf "$dl"; die "pip download llama-cpp-python==$LCP_VERSION failed (see $log)"
    fi
    mv -f "$dl/llama_cpp_python-$LCP_VERSION.tar.gz" "$sdist" 2>/dev/null \
        || { rm -rf "$dl"; die "pip download gave no llama_cpp_python-$LCP_VERSION.tar.gz"; }
    rm -rf "$dl"
    sdist_ok || die "sha256 of $sdist is not the pinned $LCP_SHA256"
fi

src="$cache/src/llama_cpp_python-$LCP_VERSION"
llama_src="$src/vendor/llama.cpp"
if [[ ! -f "$src/.unpacked" ]]; then
    say "unpacking $sdist"
    rm -rf "$src"; mkdir -p "$cache/src"
    tar -xzf "$sdist" -C "$cache/src" || die "cannot unpack $sdist"
    [[ -f "$llama_src/CMakeLists.txt" ]] || die "sdist has no vendor/llama.cpp tree"
    touch "$src/.unpacked"
fi
# The llama.cpp commit the sdist vendors, from its changelog (no .git in an sdist).
llama_commit="$("$py" - "$src/CHANGELOG.md" "$LCP_VERSION" <<'EOF' || true
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r"^## \[" + re.escape(sys.argv[2]) + r"\](.*?)(?=^## \[|\Z)", text, re.S | re.M)
c = re.search(r"llama\.cpp@([0-9a-f]{7,40})", m.group(1)) if m else None
print(c.group(1) if c else "unknown")
EOF
)"
version="$llama_commit (llama-cpp-python $LCP_VERSION)"

# --- build llama-bench -----------------------------------------------------------------------
build="$cache/build/$LCP_VERSION"
bench="$build/bin/llama-bench"
cmake_flags=(
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_RPC=OFF
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
    # No AMX: on this Xeon (amx_int8/amx_tile in /proc/cpuinfo) -march=native turns on ggml's AMX
    # buffer type, and llama-bench segfaults in ggml_backend_amx_mul_mat on Gemma-3-270M Q4_K_M.
    # GGML_AMX_* options are ignored with GGML_NATIVE, so the compiler's macro is undefined.
    "-DCMAKE_C_FLAGS=-U__AMX_INT8__" "-DCMAKE_CXX_FLAGS=-U__AMX_INT8__"
)
stamp="$build/.shoal-stamp"
if [[ ! -x "$bench" || ! -f "$stamp" || "$(cat "$stamp")" != "${cmake_flags[*]}" ]]; then
    command -v flock >/dev/null 2>&1 || die "no flock on PATH (needed to serialise the build)"
    say "building llama-bench ($version) into $build, waiting for $lock (log: $log)"
    # Configure and build under the shared lock; the timer starts once the lock is held.
    build_s="$(flock "$lock" bash -c '
        set -e
        t0=$(date +%s.%N)
        rm -f "$4"
        cmake -S "$1" -B "$2" "${@:5}" >>"$3" 2>&1
        cmake --build "$2" --target llama-bench -j2 >>"$3" 2>&1
        awk -v a="$t0" -v b="$(date +%s.%N)" "BEGIN { printf \"%.0f\n\", b - a }"
    ' _ "$llama_src" "$build" "$log" "$stamp" "${cmake_flags[@]}")" \
        || die "llama-bench build failed (see $log)"
    [[ -x "$bench" ]] || die "build finished but $bench is missing (see $log)"
    printf '%s' "${cmake_flags[*]}" >"$stamp"
    say "built llama-bench in ${build_s} s"
fi

# --- run ---------------------------------------------------------------------------------
out="$(mktemp "$cache/bench.XXXXXX.json")"
trap 'rm -f "$out"' EXIT
say "running llama-bench -m $gguf -t $threads -p $prompt_tokens -n $gen_tokens -r $reps (log: $log)"
echo "== $(date -u +%FT%TZ) llama-bench -m $gguf -t $threads -p $prompt_tokens -n $gen_tokens -r $reps" >>"$log"
# The run holds the build lock too, so no heavy build shares the cores with the measurement.
flock "$lock" "$bench" -m "$gguf" -t "$threads" -p "$prompt_tokens" -n "$gen_tokens" -r "$reps" \
    -o json >"$out" 2>>"$log" || die "llama-bench failed on $gguf (see $log)"
cat "$out" >>"$log"

"$py" - "$out" "$version" "$threads" "$prompt_tokens" "$gen_tokens" "$reps" <<'EOF' \
    || die "cannot parse llama-bench's JSON output (see $log)"
import json, sys
path, version, threads, p, g, reps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
rows = json.load(open(path))
def pick(n_prompt, n_gen):
    hits = [r for r in rows if r["n_prompt"] == n_prompt and r["n_gen"] == n_gen
            and r.get("n_depth", 0) == 0]
    if len(hits) != 1:
        raise SystemExit(f"expected one pp{n_prompt}/tg{n_gen} row, got {len(hits)}")
    r = hits[0]
    if r["n_threads"] != threads:
        raise SystemExit(f"llama-bench ran {r['n_threads']} threads, asked {threads}")
    return r
pp, tg = pick(p, 0), pick(0, g)
print(json.dumps({
    "peer": "llama.cpp", "version": version, "threads": threads,
    "prefill_tok_s": round(pp["avg_ts"], 2), "decode_tok_s": round(tg["avg_ts"], 2),
    "prompt_tokens": p, "gen_tokens": g, "repetitions": reps,
    "prefill_tok_s_stddev": round(pp["stddev_ts"], 2),
    "decode_tok_s_stddev": round(tg["stddev_ts"], 2),
}, separators=(",", ":")))
EOF
