#!/usr/bin/env bash
# Builds the test world's components from their Go modules into a cache outside the checkout,
# keyed by version. A component whose cache directory is complete is not rebuilt.
# Usage: build.sh [etcd|kube|s3|all]   (default all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
mkdir -p "$CAIRN_TESTENV_CACHE"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf '[build %s] %s\n' "$(date +%T)" "$*" >&2; }

# A throwaway wrapper module: the components' own go.mod files carry replace directives, so
# `go install pkg@version` refuses them.
wrapper() { local dir=$1; rm -rf "$dir"; mkdir -p "$dir"; (cd "$dir" && go mod init cairn.test/wrapper >/dev/null 2>&1); }

build_etcd() {
  local out="$CAIRN_TESTENV_CACHE/etcd-$ETCD_VERSION"
  [ -x "$out/etcd" ] && [ -x "$out/etcdctl" ] && [ -x "$out/etcdutl" ] && return 0
  log "building etcd $ETCD_VERSION"; local t0=$SECONDS
  local w; w=$(mktemp -d); wrapper "$w"
  (cd "$w" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdutl/v3@$ETCD_VERSION" >/dev/null 2>&1 \
    && mkdir -p "$out.tmp" \
    && go build -trimpath -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3 \
    && go build -trimpath -o "$out.tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3 \
    && go build -trimpath -o "$out.tmp/etcdutl" go.etcd.io/etcd/etcdutl/v3)
  rm -rf "$out" "$w"; mv "$out.tmp" "$out"
  log "etcd built in $((SECONDS - t0)) s"
}

# The control plane and the node: every binary in KUBE_BINARIES, built into one directory. A
# binary that is missing is built alone (the Go build cache makes the rest cheap), so adding
# one to the list does not rebuild the others.
KUBE_BINARIES=(kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy)
build_kube() {
  local out="$CAIRN_TESTENV_CACHE/kubernetes-$K8S_VERSION"
  local missing=() b
  for b in "${KUBE_BINARIES[@]}"; do [ -x "$out/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]} $K8S_VERSION"; local t0=$SECONDS
  local w; w=$(mktemp -d); wrapper "$w"
  local staging=v0.${K8S_VERSION#v1.}
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging;
  # point every one of them at its published v0.N.P instead. The list differs per release, so it
  # is read from the tag's own go.mod.
  local gomod; gomod=$(cd "$w" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local mods; mods=$(awk '$2=="v0.0.0" && $1 ~ /^k8s.io\// {print $1}' "$gomod" | sort -u)
  (cd "$w" && for m in $mods; do go mod edit -replace "$m=$m@$staging"; done \
    && go mod edit -require "k8s.io/kubernetes@$K8S_VERSION" \
    && go mod tidy >/dev/null 2>&1 || true)
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  mkdir -p "$out"
  (cd "$w" && go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 \
    && for b in "${missing[@]}"; do
         go build -trimpath -ldflags "$ld" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b" && mv "$out/$b.tmp" "$out/$b" || exit 1
       done)
  rm -rf "$w"
  log "kubernetes built in $((SECONDS - t0)) s"
}

build_s3() {
  local out="$CAIRN_TESTENV_CACHE/versitygw-$VERSITYGW_VERSION"
  [ -x "$out/versitygw" ] && return 0
  log "building versitygw $VERSITYGW_VERSION"; local t0=$SECONDS
  local w; w=$(mktemp -d); wrapper "$w"
  mkdir -p "$out.tmp"
  (cd "$w" && go get "github.com/versity/versitygw@$VERSITYGW_VERSION" >/dev/null 2>&1 \
    && go build -trimpath -o "$out.tmp/versitygw" github.com/versity/versitygw/cmd/versitygw)
  rm -rf "$out" "$w"; mv "$out.tmp" "$out"
  log "versitygw built in $((SECONDS - t0)) s"
}

# A Go program whose go.mod has replace directives cannot be `go get`-built from outside:
# the wrapper module copies them.
build_go_tool() {  # name module version package
  local name=$1 module=$2 version=$3 pkg=$4
  local out="$CAIRN_TESTENV_CACHE/$name-$version"
  [ -x "$out/$name" ] && return 0
  log "building $name $version"; local t0=$SECONDS
  local w; w=$(mktemp -d); wrapper "$w"
  local gomod; gomod=$(cd "$w" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  (cd "$w" && { grep -E '^(replace )?[^ ]+ v[^ ]+ => ' "$gomod" || true; } | sed -E 's/^replace //' \
     | while read -r old oldv _ new newv; do go mod edit -replace "$old@$oldv=$new@$newv"; done)
  mkdir -p "$out.tmp"
  (cd "$w" && go get "$module@$version" >/dev/null 2>&1 \
    && go build -trimpath -ldflags "-s -w" -o "$out.tmp/$name" "$pkg")
  rm -rf "$out" "$w"; mv "$out.tmp" "$out"
  log "$name built in $((SECONDS - t0)) s"
}

# The real CSI chain above our test driver: the external-provisioner, the snapshot-controller
# and the csi-snapshotter sidecar, each from its own Go module.
build_csi() {
  build_go_tool csi-provisioner github.com/kubernetes-csi/external-provisioner/v6 "$CSI_PROVISIONER_VERSION" \
    github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
  build_go_tool snapshot-controller github.com/kubernetes-csi/external-snapshotter/v8 "$CSI_SNAPSHOTTER_VERSION" \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
  build_go_tool csi-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 "$CSI_SNAPSHOTTER_VERSION" \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
}

# Telemetry receivers (#20): Prometheus with promtool, Jaeger (an OpenTelemetry collector
# distribution: OTLP gRPC and HTTP in, traces queryable over HTTP), and Helm.
build_telemetry() {
  build_go_tool prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
    github.com/prometheus/prometheus/cmd/prometheus
  build_go_tool promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
    github.com/prometheus/prometheus/cmd/promtool
  build_go_tool jaeger github.com/jaegertracing/jaeger "$JAEGER_VERSION" \
    github.com/jaegertracing/jaeger/cmd/jaeger
}
build_helm() {
  build_go_tool helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
}

# Our test node's programs (test code, not product): built when their sources change.
build_node() {
  local out; out=$(node_bin_dir)
  [ -x "$out/csi-hostpath" ] && [ -x "$out/pause" ] && return 0
  log "building tests/node (csi-hostpath, pause)"; local t0=$SECONDS
  "$here/../node/build.sh" "$out.tmp"
  rm -rf "$out"; mv "$out.tmp" "$out"
  log "tests/node built in $((SECONDS - t0)) s"
}

case "${1:-all}" in
  tofu) build_go_tool tofu github.com/opentofu/opentofu "$TOFU_VERSION" github.com/opentofu/opentofu/cmd/tofu ;;
  tflint) build_go_tool tflint github.com/terraform-linters/tflint "$TFLINT_VERSION" github.com/terraform-linters/tflint ;;
  etcd) build_etcd ;;
  kube) build_kube ;;
  s3) build_s3 ;;
  csi) build_csi ;;
  node) build_node ;;
  telemetry) build_telemetry ;;
  helm) build_helm ;;
  all) build_etcd; build_s3; build_kube; build_csi; build_node; build_telemetry; build_helm ;;
  *) echo "usage: build.sh [etcd|kube|s3|csi|node|telemetry|helm|tofu|tflint|all]" >&2; exit 2 ;;
esac
