#!/usr/bin/env bash
# The crate rules of ARCHITECTURE.md, checked against what cargo actually links: a crate
# that must not talk to Kubernetes (or parse flags, or export telemetry) does not link the
# crates that would let it. Run by .ci/run; exits non-zero naming the offending edge.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
forbid() {  # package, regex of crate names it must not link
  local pkg=$1 re=$2 found
  found=$(cargo tree --locked -p "$pkg" -e normal --prefix none 2>/dev/null \
    | awk '{print $1}' | sort -u | grep -E "^($re)$" || true)
  if [ -n "$found" ]; then
    echo "check-deps: $pkg links $(echo "$found" | tr '\n' ' ')(forbidden by ARCHITECTURE.md)" >&2
    fail=1
  else
    echo "check-deps: $pkg links none of: $re"
  fi
}
forbid cairn-core 'kube|kube-client|k8s-openapi|clap|opentelemetry|opentelemetry_sdk|opentelemetry-otlp|tracing-subscriber|cairn-job|cairn-kube'
forbid cairn-job 'kube|kube-client|k8s-openapi|cairn-kube'
forbid cairn-kube 'cairn-job|opentelemetry-otlp'
forbid cairn-etcd-snapshot 'kube|kube-client|k8s-openapi|cairn-kube'
forbid cairn-maintain 'kube|kube-client|k8s-openapi|cairn-kube'
exit $fail
