#!/usr/bin/env bash
# Builds the test node programs as static binaries into OUT_DIR:
#   csi-hostpath  the hostpath CSI driver (see cmd/csi-hostpath/main.go)
#   pause         the pod sandbox process
# Quiet on success; on failure prints the compiler's output and exits 1.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")"

# Static (no cgo), reproducible and small; -buildvcs=false because the
# module sits inside a repository that need not be readable by git here.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false"
for prog in csi-hostpath pause; do
	if ! log=$(go build -trimpath -ldflags "-s -w" -o "$out/$prog" "./cmd/$prog" 2>&1); then
		echo "build.sh: building $prog failed:" >&2
		echo "$log" >&2
		exit 1
	fi
done
