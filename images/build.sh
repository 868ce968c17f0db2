#!/usr/bin/env bash
# Build cairn's static (musl) release binaries and, where a Docker daemon with BuildKit is
# available, the images (one Dockerfile per job, distroless static, non-root).
#
#   images/build.sh binaries        build, check each binary is static, print sizes
#   images/build.sh oci [TAG]       also every image as an archive, offline (images/oci.py: no
#                                   Docker, no registry), in target/images/ (default tag: dev)
#   images/build.sh images [TAG]    also `docker build` every image (default tag: dev)
#
# Both image builds start from the same base directory (oci.py base) and the same stripped
# binaries, so they yield the same files.
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

# The build context of one image: the base root filesystem, the stripped binary and, for
# cairn-restore, etcdutl.
context() {  # job dir
  local j=$1 ctx=$2
  python3 images/oci.py base "$ctx/base"
  cp "target/$TARGET/release/$j.stripped" "$ctx/$j"
  if [ "$j" = cairn-restore ]; then
    local etcdutl="$CAIRN_TESTENV_CACHE/etcd-$ETCD_VERSION/etcdutl"
    [ -x "$etcdutl" ] || tests/env/build.sh etcd >&2
    strip -o "$ctx/etcdutl" "$etcdutl"   # a Go binary built with symbols: 25.8 MB → 17.9
  fi
}

build_oci() {
  local tag=${1:-dev} out=target/images
  mkdir -p "$out"
  printf '%-24s %12s  %s\n' image bytes archive
  for j in "${JOBS[@]}"; do
    local ctx extra=()
    ctx=$(mktemp -d)
    context "$j" "$ctx"
    [ "$j" = cairn-restore ] && extra=(--add "$ctx/etcdutl=/usr/local/bin/etcdutl")
    python3 images/oci.py archive --tag "$j:$tag" --base "$ctx/base" \
      --add "$ctx/$j=/usr/local/bin/$j" "${extra[@]}" --entrypoint "/usr/local/bin/$j" \
      --out "$out/$j.tar" | awk -F'\t' '{printf "%-24s %12s  %s\n", $1, $2, $3}'
    rm -rf "$ctx"
  done
}

build_images() {
  local tag=${1:-dev}
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || {
    log "no Docker daemon here: binaries built, images skipped"; return 0; }
  for j in "${JOBS[@]}"; do
    local ctx
    ctx=$(mktemp -d)
    context "$j" "$ctx"
    DOCKER_BUILDKIT=1 docker build -q -f "images/$j/Dockerfile" -t "$j:$tag" "$ctx"
    rm -rf "$ctx"
  done
}

case "${1:-binaries}" in
  binaries) build_binaries ;;
  oci) build_binaries; build_oci "${2:-dev}" ;;
  images) build_binaries; build_images "${2:-dev}" ;;
  *) echo "usage: $0 binaries|oci|images [TAG]" >&2; exit 2 ;;
esac
