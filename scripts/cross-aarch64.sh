#!/usr/bin/env bash
# Owns the aarch64 cross build of shoal: a Debian sid chroot (debootstrap) with rustc, cargo,
# libstd-rust-dev:arm64 and the aarch64 GNU cross toolchain, a static qemu-aarch64 taken from
# sid's qemu-user, and the aarch64 libonnxruntime.so from the onnxruntime PyPI wheel, all cached
# under .cross/ (or $SHOAL_CROSS_DIR); it then builds `shoal` or runs unit tests for
# aarch64-unknown-linux-gnu in that chroot. Idempotent: a second run skips every finished step.
#
#   scripts/cross-aarch64.sh [setup | build [CARGO_ARGS...] | test [CARGO_TEST_ARGS...] |
#                             fetch | run CMD [ARGS...] | shell | info]
#
#   setup   (default) steps 1-3: chroot, its packages, static qemu-aarch64, ONNX Runtime; then a
#           hello-world check (rustc for aarch64, run under qemu-aarch64)
#   build   setup, then `cargo build --locked --profile $SHOAL_CROSS_PROFILE (default release)
#           --target aarch64-unknown-linux-gnu -p shoal-node --bin shoal CARGO_ARGS...`, then
#           writes $SHOAL_CROSS_DIR/bin/shoal-aarch64: a runner that starts that binary on the
#           host under qemu-aarch64 with the chroot's aarch64 libraries and the aarch64 ONNX
#           Runtime (version $SHOAL_AARCH64_ORT, default the first of SHOAL_CROSS_ORT_VERSIONS)
#   test    setup, then `cargo test --locked --profile $SHOAL_CROSS_PROFILE (default test)
#           --target aarch64-unknown-linux-gnu CARGO_TEST_ARGS...` with the tests run under
#           qemu-aarch64, e.g. `test -p shoal-keys -p shoal-protocol -- --test-threads 1`
#   fetch   setup, then `cargo fetch --locked --target aarch64-unknown-linux-gnu` (crates only)
#   run     setup, then run CMD in the chroot (cwd = the workspace, same env as build/test)
#   shell   setup, then an interactive shell in the chroot
#   info    print where everything is; changes nothing
#
# Environment: SHOAL_CROSS_DIR (cache, default <workspace>/.cross), SHOAL_CROSS_PROFILE,
# SHOAL_CROSS_MIRROR (Debian mirror; default: the host's apt mirror), SHOAL_CROSS_ORT_VERSIONS
# (default "1.32.0 1.23.2": the first is required and becomes ORT_DYLIB_PATH in the chroot, the
# others are fetched if PyPI has them), SHOAL_CROSS_TARGET_DIR (default $SHOAL_CROSS_DIR/target).
# Host proxies (http_proxy/https_proxy/no_proxy, apt's Acquire::http(s)::Proxy), the host cargo
# config (${CARGO_HOME:-~/.cargo}/config.toml) and CARGO_{REGISTRIES,REGISTRY,SOURCE,HTTP,NET}_*
# variables are carried into the chroot. Needs root (debootstrap, chroot, mount); the mounts
# live in a private mount namespace (unshare) and are also unmounted on exit.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
WS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CROSS=${SHOAL_CROSS_DIR:-$WS/.cross}
ROOT=$CROSS/sid-root
STAMPS=$CROSS/stamps
CARGO_CACHE=$CROSS/cargo-home
TARGET_DIR=${SHOAL_CROSS_TARGET_DIR:-$CROSS/target}
ORT_DIR=$CROSS/ort
QEMU=$CROSS/bin/qemu-aarch64
read -r -a ORT_VERSIONS <<<"${SHOAL_CROSS_ORT_VERSIONS:-1.32.0 1.23.2}"
ORT_MAIN=${ORT_VERSIONS[0]}
# Paths as seen inside the chroot.
C_CARGO_HOME=/cross/cargo-home
C_TARGET_DIR=/cross/target
C_ORT_DIR=/cross/ort
C_SYSROOT=/usr/aarch64-linux-gnu
PACKAGES=(rustc cargo libstd-rust-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
  libc6-dev-arm64-cross cmake make build-essential clang libclang-dev pkg-config qemu-user
  ca-certificates)

log() { echo "[cross-aarch64] $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '8,33p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# ---- step timing ---------------------------------------------------------------------------
STEP_LINES=()
# step NAME STAMP-CHECK-FUNCTION RUN-FUNCTION: runs RUN unless CHECK says the step is done.
step() {
  local name=$1 check=$2 run=$3 t0
  if "$check"; then
    STEP_LINES+=("$(printf '%-22s skipped (cached)' "$name")")
    log "$name: already done, skipped"
    return 0
  fi
  log "$name: running"
  t0=$(date +%s)
  "$run"
  "$check" || die "$name: finished but its result is missing"
  STEP_LINES+=("$(printf '%-22s done in %ss' "$name" $(($(date +%s) - t0)))")
  log "$name: done in $(($(date +%s) - t0))s"
}
print_steps() {
  local l
  [ ${#STEP_LINES[@]} -gt 0 ] || return 0
  log "steps:"
  for l in "${STEP_LINES[@]}"; do log "  $l"; done
}

# ---- host settings carried into the chroot -------------------------------------------------
# The Debian mirror the host's apt uses (only that one is reachable), unless SHOAL_CROSS_MIRROR.
host_mirror() {
  if [ -n "${SHOAL_CROSS_MIRROR:-}" ]; then echo "$SHOAL_CROSS_MIRROR"; return; fi
  local u
  u=$(
    {
      cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\).*/\2/p'
    } | grep -E '^https?://[^ ]*/debian/?$' | head -n1
  )
  echo "${u:-http://deb.debian.org/debian}" | sed 's,/$,,'
}
apt_proxy() { # $1 = http|https
  local p=""
  p=$(apt-config dump 2>/dev/null | sed -n "s/^Acquire::$1::Proxy \"\(.*\)\";$/\1/p" | head -n1)
  [ -n "$p" ] && [ "$p" != DIRECT ] || p=""
  echo "$p"
}
HTTP_PROXY_VAL=${http_proxy:-${HTTP_PROXY:-$(apt_proxy http)}}
HTTPS_PROXY_VAL=${https_proxy:-${HTTPS_PROXY:-$(apt_proxy https)}}

# Environment for every command run in the chroot (env -i, so nothing else leaks in).
chroot_env() {
  local v
  CHROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    LANG=C.UTF-8 TERM="${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt SSL_CERT_DIR=/etc/ssl/certs
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
    "CARGO_HOME=$C_CARGO_HOME" "CARGO_TARGET_DIR=$C_TARGET_DIR"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=/usr/local/bin/qemu-aarch64 -L $C_SYSROOT"
    "QEMU_LD_PREFIX=$C_SYSROOT"
    "ORT_DYLIB_PATH=$C_ORT_DIR/$ORT_MAIN/libonnxruntime.so.$ORT_MAIN")
  [ -z "$HTTP_PROXY_VAL" ] || CHROOT_ENV+=(http_proxy="$HTTP_PROXY_VAL" HTTP_PROXY="$HTTP_PROXY_VAL")
  [ -z "$HTTPS_PROXY_VAL" ] || CHROOT_ENV+=(https_proxy="$HTTPS_PROXY_VAL" HTTPS_PROXY="$HTTPS_PROXY_VAL")
  while IFS= read -r v; do
    if [ -n "$v" ]; then CHROOT_ENV+=("$v=${!v}"); fi
  done < <(compgen -e | grep -E '^(no_proxy|NO_PROXY|RUST_BACKTRACE|RUST_LOG|RUST_TEST_THREADS|RUST_MIN_STACK|CARGO_(REGISTRIES|REGISTRY|SOURCE|NET|TERM|PROFILE)_.*|CARGO_HTTP_(PROXY|TIMEOUT|MULTIPLEXING|LOW_SPEED_LIMIT|CHECK_REVOKE|DEBUG)|CARGO_BUILD_JOBS|CARGO_INCREMENTAL|SHOAL_[A-Z0-9_]*)$' | grep -v '^SHOAL_CROSS_' || true)
}

# ---- mounts (only ever in the private namespace, see enter_ns) -----------------------------
MOUNTS=()
do_mount() { # do_mount TARGET mount-args...
  local t=$1; shift
  mkdir -p "$t"
  mount "$@" "$t"
  MOUNTS+=("$t")
}
umount_all() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
# Refuses to go on if anything is still mounted under the chroot in this namespace.
no_mounts_under_root() {
  ! awk '{print $5}' /proc/self/mountinfo | grep -q "^$ROOT/"
}
mount_base() { # /proc, /sys, /dev (what apt and the build need)
  do_mount "$ROOT/proc" -t proc proc
  do_mount "$ROOT/sys" -t sysfs -o ro sysfs
  do_mount "$ROOT/dev" --rbind /dev
}
mount_work() { # the workspace at its own path, cargo home, target dir, ONNX Runtime
  mkdir -p "$CARGO_CACHE" "$TARGET_DIR" "$ORT_DIR"
  do_mount "$ROOT$WS" --bind "$WS"
  do_mount "$ROOT$C_CARGO_HOME" --bind "$CARGO_CACHE"
  do_mount "$ROOT$C_TARGET_DIR" --bind "$TARGET_DIR"
  do_mount "$ROOT$C_ORT_DIR" --bind "$ORT_DIR"
  mount -o remount,bind,ro "$ROOT$C_ORT_DIR" 2>/dev/null || true
}
# Files the chroot needs from the host, refreshed on every entry (cheap).
sync_host_files() {
  local f
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  cp -L /etc/hosts "$ROOT/etc/hosts"
  # TLS goes through the host's CAs (there may be an intercepting one): copy the local CAs so
  # the chroot's update-ca-certificates keeps them, and the host bundle as it is.
  mkdir -p "$ROOT/usr/local/share/ca-certificates" "$ROOT/etc/ssl/certs"
  for f in /usr/local/share/ca-certificates/*; do
    if [ -e "$f" ]; then cp -rL "$f" "$ROOT/usr/local/share/ca-certificates/"; fi
  done
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  fi
  # Host cargo configuration (registry mirror, proxy, ...) for the chroot's cargo home.
  local hc=${CARGO_HOME:-$HOME/.cargo}
  mkdir -p "$CARGO_CACHE"
  for f in config.toml config credentials.toml credentials; do
    if [ -f "$hc/$f" ]; then
      cmp -s "$hc/$f" "$CARGO_CACHE/$f" || cp "$hc/$f" "$CARGO_CACHE/$f"
    fi
  done
  if [ -x "$QEMU" ] && ! cmp -s "$QEMU" "$ROOT/usr/local/bin/qemu-aarch64"; then
    install -m 755 "$QEMU" "$ROOT/usr/local/bin/qemu-aarch64"
  fi
}
in_chroot() { # in_chroot DIR CMD...: run CMD in the chroot with cwd DIR
  local dir=$1; shift
  chroot_env
  chroot "$ROOT" /usr/bin/env -i -C "$dir" "${CHROOT_ENV[@]}" "$@"
}

# Re-runs this script in a private mount namespace: mounts made there vanish with it.
enter_ns() {
  if [ "${SHOAL_CROSS_IN_NS:-}" = 1 ]; then return 0; fi
  command -v unshare >/dev/null || die "unshare (util-linux) is needed"
  export SHOAL_CROSS_IN_NS=1
  exec unshare --mount --propagation private -- bash "$0" "$@"
}

# ---- step 1: the sid chroot ----------------------------------------------------------------
chroot_done() { [ -f "$STAMPS/debootstrap.done" ] && [ -x "$ROOT/usr/bin/apt-get" ]; }
chroot_make() {
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v file >/dev/null || need+=(file)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} on the host"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  no_mounts_under_root || die "something is still mounted under $ROOT; unmount it first"
  if [ -e "$ROOT" ]; then
    log "removing the unfinished chroot $ROOT"
    rm -rf --one-file-system "$ROOT"
  fi
  mkdir -p "$CROSS" "$STAMPS"
  local mirror; mirror=$(host_mirror)
  log "debootstrap sid from $mirror${HTTP_PROXY_VAL:+ via proxy $HTTP_PROXY_VAL}"
  # debootstrap itself does not check Valid-Until; apt in the chroot is told not to (below).
  http_proxy=$HTTP_PROXY_VAL https_proxy=$HTTPS_PROXY_VAL \
    debootstrap --variant=minbase --arch=amd64 --components=main sid "$ROOT" "$mirror" \
    >"$CROSS/debootstrap.log" 2>&1 || { tail -n 30 "$CROSS/debootstrap.log" >&2; die "debootstrap failed (log: $CROSS/debootstrap.log)"; }
  echo "deb $mirror sid main" >"$ROOT/etc/apt/sources.list"
  {
    echo 'Acquire::Check-Valid-Until "false";'
    echo 'Acquire::Check-Date "false";'
    echo 'APT::Install-Recommends "false";'
    [ -z "$HTTP_PROXY_VAL" ] || echo "Acquire::http::Proxy \"$HTTP_PROXY_VAL\";"
    [ -z "$HTTPS_PROXY_VAL" ] || echo "Acquire::https::Proxy \"$HTTPS_PROXY_VAL\";"
  } >"$ROOT/etc/apt/apt.conf.d/99shoal-cross"
  # No services start in the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  date -u +%FT%TZ >"$STAMPS/debootstrap.done"
}

# ---- step 2: packages in the chroot --------------------------------------------------------
packages_done() { [ "$(cat "$STAMPS/packages.done" 2>/dev/null)" = "${PACKAGES[*]}" ]; }
packages_install() {
  mount_base
  sync_host_files
  grep -qx arm64 <(in_chroot / dpkg --print-foreign-architectures) || in_chroot / dpkg --add-architecture arm64
  in_chroot / apt-get update -q
  in_chroot / apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  in_chroot / apt-get clean
  umount_all
  echo "${PACKAGES[*]}" >"$STAMPS/packages.done"
}

# ---- step 2b: the static qemu-aarch64, taken out of the chroot -----------------------------
is_static() { file -L "$1" | grep -Eq 'statically linked|static-pie linked'; }
qemu_done() {
  [ -x "$QEMU" ] && is_static "$QEMU" || return 1
  local src; src=$(qemu_source) || return 1
  cmp -s "$src" "$QEMU"
}
qemu_source() { # the static qemu-aarch64 the chroot has
  local c
  for c in "$ROOT/usr/bin/qemu-aarch64-static" "$ROOT/usr/bin/qemu-aarch64" "$ROOT/usr/libexec/qemu-binfmt/aarch64-binfmt-P"; do
    if [ -e "$c" ] && is_static "$c"; then readlink -f "$c"; return 0; fi
  done
  return 1
}
qemu_take() {
  local src
  src=$(qemu_source) || die "no static qemu-aarch64 in the chroot ($(file -L "$ROOT/usr/bin/qemu-aarch64" 2>&1)); try qemu-user-static or qemu-user-binfmt from sid"
  mkdir -p "$(dirname "$QEMU")"
  install -m 755 "$src" "$QEMU"
  install -m 755 "$src" "$ROOT/usr/local/bin/qemu-aarch64"
}

# ---- step 3: ONNX Runtime for aarch64 from the PyPI wheel ----------------------------------
ort_lib() { echo "$ORT_DIR/$1/libonnxruntime.so.$1"; }
ort_done() { # every version fetched, or known to have no aarch64 wheel (the first must exist)
  local v
  [ -f "$(ort_lib "$ORT_MAIN")" ] || return 1
  for v in "${ORT_VERSIONS[@]:1}"; do
    [ -f "$(ort_lib "$v")" ] || [ -f "$ORT_DIR/$v.absent" ] || return 1
  done
}
ort_fetch_one() { # ort_fetch_one VERSION: 0 when fetched
  local v=$1 wd="$ORT_DIR/wheels/$1"
  mkdir -p "$wd"
  if ! ls "$wd"/onnxruntime-"$v"-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
      --python-version 3.11 --implementation cp "onnxruntime==$v" -d "$wd" || return 1
  fi
  local whl; whl=$(ls "$wd"/onnxruntime-"$v"-*.whl | head -n1)
  python3 - "$whl" "$ORT_DIR/$v" "$v" <<'EOF'
import os, sys, zipfile
whl, out, v = sys.argv[1:]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        b = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and b.startswith("libonnxruntime") and ".so" in b:
            with z.open(n) as src, open(os.path.join(out, b), "wb") as dst:
                dst.write(src.read())
lib = os.path.join(out, "libonnxruntime.so." + v)
with open(lib, "rb") as f:
    h = f.read(20)
if h[:4] != b"\x7fELF" or int.from_bytes(h[18:20], "little") != 183:
    sys.exit(f"{lib} is not an aarch64 ELF")
link = os.path.join(out, "libonnxruntime.so")
if not os.path.lexists(link):
    os.symlink("libonnxruntime.so." + v, link)
EOF
  basename "$whl" >"$ORT_DIR/$v/WHEEL"
}
ort_fetch() {
  command -v python3 >/dev/null || die "python3 with pip is needed on the host for the ONNX Runtime wheel"
  local v
  ort_fetch_one "$ORT_MAIN" || die "no aarch64 onnxruntime $ORT_MAIN wheel"
  for v in "${ORT_VERSIONS[@]:1}"; do
    if [ -f "$(ort_lib "$v")" ]; then continue; fi
    if ! ort_fetch_one "$v"; then
      log "note: no aarch64 manylinux wheel of onnxruntime $v on PyPI; skipped"
      date -u +%FT%TZ >"$ORT_DIR/$v.absent"
    fi
  done
}

# ---- step 4: hello world for aarch64 (checks rustc, the cross linker and qemu) -------------
smoke_done() { [ "$(cat "$STAMPS/smoke.done" 2>/dev/null)" = "$(cat "$STAMPS/packages.done" 2>/dev/null) $(sha256sum <"$QEMU" 2>/dev/null)" ]; }
smoke_run() {
  mount_base
  sync_host_files
  local d=/tmp/shoal-cross-smoke out
  mkdir -p "$ROOT$d"
  echo 'fn main() { println!("hello from {} on {}", std::env::consts::ARCH, std::env::consts::OS); }' >"$ROOT$d/hello.rs"
  in_chroot "$d" rustc --edition 2021 -O --target "$TARGET" -C linker=aarch64-linux-gnu-gcc hello.rs -o hello
  out=$(in_chroot "$d" /usr/local/bin/qemu-aarch64 -L "$C_SYSROOT" ./hello)
  log "in the chroot:  $out"
  [ "$out" = "hello from aarch64 on linux" ] || die "unexpected output: $out"
  out=$("$QEMU" -L "$ROOT$C_SYSROOT" "$ROOT$d/hello")
  log "on the host:    $out"
  [ "$out" = "hello from aarch64 on linux" ] || die "unexpected output on the host: $out"
  umount_all
  echo "$(cat "$STAMPS/packages.done") $(sha256sum <"$QEMU")" >"$STAMPS/smoke.done"
}

setup() {
  mkdir -p "$CROSS" "$STAMPS"
  # Keeps a cache inside the workspace out of git status.
  case "$CROSS/" in "$WS"/*) [ -f "$CROSS/.gitignore" ] || echo '*' >"$CROSS/.gitignore" ;; esac
  step "1 chroot (debootstrap)" chroot_done chroot_make
  step "2 packages" packages_done packages_install
  step "2b static qemu-aarch64" qemu_done qemu_take
  step "3 onnxruntime" ort_done ort_fetch
  step "check hello-world" smoke_done smoke_run
}

versions() {
  in_chroot / sh -c 'rustc --version; cargo --version; aarch64-linux-gnu-gcc --version | head -n1' 2>/dev/null | sed 's/^/  /' >&2 || true
  log "  $("$QEMU" --version | head -n1)"
}

info() {
  local v prof=${1:-}
  log "cache dir:      $CROSS ($(du -sh "$CROSS" 2>/dev/null | cut -f1))"
  log "chroot:         $ROOT"
  log "qemu-aarch64:   $QEMU$([ -x "$QEMU" ] && is_static "$QEMU" && echo ' (static)')"
  log "  run on host:  $QEMU -L $ROOT$C_SYSROOT BINARY"
  for v in "${ORT_VERSIONS[@]}"; do
    if [ -f "$(ort_lib "$v")" ]; then
      log "onnxruntime:    $(ort_lib "$v")$([ "$v" = "$ORT_MAIN" ] && echo ' (ORT_DYLIB_PATH in the chroot)')"
    fi
  done
  log "cargo home:     $CARGO_CACHE"
  log "target dir:     $TARGET_DIR/$TARGET/"
  if [ -n "$prof" ]; then log "binary:         $TARGET_DIR/$TARGET/$prof/shoal"; fi
}

profile_dir() { case "$1" in dev | test) echo debug ;; bench) echo release ;; *) echo "$1" ;; esac; }

# timed LABEL CMD...: runs CMD and records how long it took as a step.
timed() {
  local label=$1 t0 rc=0 word="done"
  shift
  t0=$(date +%s)
  "$@" || rc=$?
  [ $rc = 0 ] || word=FAILED
  STEP_LINES+=("$(printf '%-22s %s in %ss' "$label" "$word" $(($(date +%s) - t0)))")
  return $rc
}

finish() { print_steps; STEP_LINES=(); info "$@"; }

# write_runner PROFILE-DIR: the host-side runner for the aarch64 binary (see `build` above).
write_runner() {
  local bin="$TARGET_DIR/$TARGET/$1/shoal" runner="$CROSS/bin/shoal-aarch64"
  mkdir -p "$CROSS/bin"
  cat >"$runner.tmp" <<RUNNER
#!/bin/sh
# Written by scripts/cross-aarch64.sh build: runs the aarch64 shoal on this host under qemu.
v=\${SHOAL_AARCH64_ORT:-$ORT_MAIN}
lib="$ORT_DIR/\$v/libonnxruntime.so.\$v"
[ -f "\$lib" ] || { echo "shoal-aarch64: no aarch64 ONNX Runtime \$v at \$lib" >&2; exit 1; }
ORT_DYLIB_PATH=\$lib exec "$QEMU" -L "$ROOT$C_SYSROOT" "$bin" "\$@"
RUNNER
  chmod 755 "$runner.tmp"
  mv "$runner.tmp" "$runner"
  log "runner:         $runner"
}

main() {
  local cmd=${1:-setup}
  [ $# -eq 0 ] || shift
  case "$cmd" in
    -h | --help | help) usage ;;
    info) info; return 0 ;;
    setup | build | test | fetch | run | shell) ;;
    *) usage ;;
  esac
  [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"
  enter_ns "$cmd" "$@"
  trap 'rc=$?; umount_all; print_steps; exit $rc' EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$CROSS"
  exec 9>"$CROSS/.lock"
  flock -n 9 || { log "another run holds $CROSS/.lock; waiting"; flock 9; }
  setup
  local prof rc=0 pargs=()
  case "$cmd" in
    setup)
      mount_base; sync_host_files
      versions
      umount_all
      finish
      ;;
    build)
      prof=${SHOAL_CROSS_PROFILE:-release}
      mount_base; mount_work; sync_host_files
      timed "4 cargo build ($prof)" \
        in_chroot "$WS" cargo build --locked --profile "$prof" --target "$TARGET" -p shoal-node --bin shoal "$@" || exit $?
      file "$TARGET_DIR/$TARGET/$(profile_dir "$prof")/shoal" | sed 's/^/[cross-aarch64] /' >&2
      write_runner "$(profile_dir "$prof")"
      finish "$(profile_dir "$prof")"
      ;;
    test)
      # cargo's own test profile unless SHOAL_CROSS_PROFILE names one.
      prof=${SHOAL_CROSS_PROFILE:-test}
      [ -z "${SHOAL_CROSS_PROFILE:-}" ] || pargs=(--profile "$prof")
      mount_base; mount_work; sync_host_files
      timed "4 cargo test ($prof)" \
        in_chroot "$WS" cargo test --locked "${pargs[@]}" --target "$TARGET" "$@" || rc=$?
      exit $rc
      ;;
    fetch)
      mount_base; mount_work; sync_host_files
      timed "cargo fetch" in_chroot "$WS" cargo fetch --locked --target "$TARGET" || rc=$?
      exit $rc
      ;;
    run)
      [ $# -gt 0 ] || usage
      mount_base; mount_work; sync_host_files
      in_chroot "$WS" "$@" || rc=$?
      exit $rc
      ;;
    shell)
      mount_base; mount_work; sync_host_files
      in_chroot "$WS" bash -i || rc=$?
      exit $rc
      ;;
  esac
}

main "$@"
