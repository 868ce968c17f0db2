#!/usr/bin/env bash
# Installs what the benchmark compares cairn with, when missing, and builds cairn.
#   restic      Debian package, pinned below (the version Debian ships for this release)
#   GNU time    Debian package `time` (/usr/bin/time -v gives peak RSS)
#   kopia       built from its Go module with a throwaway wrapper module outside the checkout,
#               cached in $CAIRN_TESTENV_CACHE/kopia-<version>/kopia, rebuilt only when absent
#   cairn       the static (musl) release binary the images ship, built in the checkout as
#               images/build.sh builds it (mimalloc as its allocator): users' figures
# Prints `export` lines for the benchmark (RESTIC_BIN, KOPIA_BIN, CAIRN_BIN, TIME_BIN) on stdout;
# everything else goes to stderr.
# Usage: setup.sh [--no-cairn-build] [--no-kopia]
set -euo pipefail
build_cairn=1 want_kopia=1
for a in "$@"; do
  case "$a" in
    --no-cairn-build) build_cairn=0 ;;
    --no-kopia) want_kopia=0 ;;
    *) echo "setup.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

# Pinned peer versions. kopia: the newest v0.x tag on the Go module proxy when this was written
# (v0.23.1, 2026-06-15). restic: Debian bookworm's package; a different installed version is
# reported in the results, not replaced.
KOPIA_VERSION=v0.23.1
RESTIC_DEB_VERSION=0.14.0

CAIRN_TESTENV_CACHE=${CAIRN_TESTENV_CACHE:-$HOME/.cache/cairn-testenv}
here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)

log() { printf '[bench-setup %s] %s\n' "$(date +%T)" "$*" >&2; }

apt_updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ $apt_updated = 0 ]; then apt-get update -qq >&2; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --- restic and GNU time -------------------------------------------------------------------
need=()
command -v restic >/dev/null || need+=("restic")
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  # Prefer the pinned restic version; fall back to whatever the archive has.
  pinned=()
  for p in "${need[@]}"; do
    if [ "$p" = restic ]; then
      [ $apt_updated = 0 ] && { apt-get update -qq >&2; apt_updated=1; }
      v=$(apt-cache madison restic | awk -v want="$RESTIC_DEB_VERSION" '$3 ~ "^"want {print $3; exit}')
      if [ -n "$v" ]; then pinned+=("restic=$v"); else log "restic $RESTIC_DEB_VERSION not in the archive; installing its candidate"; pinned+=(restic); fi
    else
      pinned+=("$p")
    fi
  done
  apt_install "${pinned[@]}"
fi
command -v restic >/dev/null || { log "restic is still missing"; exit 1; }
[ -x /usr/bin/time ] || { log "/usr/bin/time is still missing"; exit 1; }

# --- kopia -----------------------------------------------------------------------------------
kopia_dir="$CAIRN_TESTENV_CACHE/kopia-$KOPIA_VERSION"
kopia_bin="$kopia_dir/kopia"
if [ "$want_kopia" = 1 ] && [ ! -x "$kopia_bin" ]; then
  command -v go >/dev/null || { log "installing golang-go"; apt_install golang-go; }
  log "building kopia $KOPIA_VERSION from its Go module (a few minutes on 2 cores)"
  t0=$(date +%s)
  w=$(mktemp -d /tmp/cairn-bench-kopia-build.XXXXXX)
  mkdir -p "$kopia_dir.tmp"
  # kopia's go.mod may carry replace directives, so `go install kopia@v` can refuse it; a
  # wrapper module that requires it builds it with the published dependency versions.
  (
    cd "$w"
    export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
    go mod init cairn.bench/wrapper >/dev/null 2>&1
    go get "github.com/kopia/kopia@$KOPIA_VERSION" >&2
    go build -trimpath -o "$kopia_dir.tmp/kopia" github.com/kopia/kopia >&2
  )
  rm -rf "$w" "$kopia_dir"
  mv "$kopia_dir.tmp" "$kopia_dir"
  t1=$(date +%s)
  echo "$((t1 - t0))" > "$kopia_dir/build-seconds"
  log "kopia built in $((t1 - t0)) s"
fi

# --- cairn -----------------------------------------------------------------------------------
musl=x86_64-unknown-linux-musl
cairn_bin="$repo_root/target/$musl/release/cairn"
if [ "$build_cairn" = 1 ]; then
  rustup target list --installed | grep -qx "$musl" || rustup target add "$musl" >&2
  command -v musl-gcc >/dev/null || apt_install musl-tools
  log "cargo build --release --target $musl -p cairn (the static binary the images ship)"
  (cd "$repo_root" && CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked --target "$musl" -p cairn >&2)
fi
[ -x "$cairn_bin" ] || { log "no cairn binary at $cairn_bin"; exit 1; }

echo "export RESTIC_BIN=$(command -v restic)"
echo "export KOPIA_BIN=$kopia_bin"
echo "export KOPIA_VERSION=$KOPIA_VERSION"
echo "export CAIRN_BIN=$cairn_bin"
echo "export TIME_BIN=/usr/bin/time"
