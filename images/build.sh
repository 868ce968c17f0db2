#!/usr/bin/env bash
# Build cairn's static (musl) release binaries and, where a Docker daemon with BuildKit is
# available, the images (one Dockerfile per job, distroless static, non-root).
#
#   images/build.sh binaries        build, check each binary is static, print sizes
#   images/build.sh images [TAG]    also `docker build` every image (default tag: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/env/versions.sh
TARGET=x86_64-unknown-linux-musl
JOBS=(cairn cairn-etcd-snapshot cairn-manifest-export cairn-maintain cairn-restore cairn-pvc-ingest)
log() { printf '[images %s] %s\n' "$(date +%T)" "$*" >&2; }

ensure_toolchain() {
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  # aws-lc, zstd and friends compile C: musl needs its own gcc wrapper.
  command -v musl-gcc >/dev/null || {
    log "installing musl-tools"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q musl-tools >/dev/null; else sudo apt-get install -y -q musl-tools >/dev/null; fi
  }
}

build_binaries() {
  ensure_toolchain
  local pkgs=()
  for j in "${JOBS[@]}"; do pkgs+=(-p "$j"); done
  log "cargo build --release --target $TARGET"
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$TARGET" "${pkgs[@]}"
  printf '%-24s %12s %12s  %s\n' binary bytes stripped linkage
  for j in "${JOBS[@]}"; do
    local bin="target/$TARGET/release/$j"
    local kind
    kind=$(file -b "$bin")
    case "$kind" in
      *"statically linked"*|*"static-pie linked"*) ;;
      *) log "FAILED: $bin is not static: $kind"; exit 1 ;;
    esac
    strip -o "$bin.stripped" "$bin"
    printf '%-24s %12s %12s  %s\n' "$j" "$(stat -c %s "$bin")" "$(stat -c %s "$bin.stripped")" static
  done
}

build_images() {
  local tag=${1:-dev}
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || {
    log "no Docker daemon here: binaries built, images skipped"; return 0; }
  local etcdutl="$CAIRN_TESTENV_CACHE/etcd-$ETCD_VERSION/etcdutl"
  [ -x "$etcdutl" ] || tests/env/build.sh etcd >&2
  for j in "${JOBS[@]}"; do
    local ctx
    ctx=$(mktemp -d)
    cp "target/$TARGET/release/$j.stripped" "$ctx/$j"
    [ "$j" = cairn-restore ] && cp "$etcdutl" "$ctx/etcdutl"
    DOCKER_BUILDKIT=1 docker build -q -f "images/$j/Dockerfile" -t "$j:$tag" "$ctx"
    rm -rf "$ctx"
  done
}

case "${1:-binaries}" in
  binaries) build_binaries ;;
  images) build_binaries; build_images "${2:-dev}" ;;
  *) echo "usage: $0 binaries|images [TAG]" >&2; exit 2 ;;
esac
