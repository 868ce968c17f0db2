# Versions of the real components the integration suite runs. Sourced by the other scripts.
# Bump a version here and the next `up` builds it into a fresh cache directory.
ETCD_VERSION=v3.6.16
K8S_VERSION=v1.34.4
VERSITYGW_VERSION=v1.8.0
# The real node's CSI chain (#11): sidecars above our test driver (tests/node).
CSI_PROVISIONER_VERSION=v6.4.0
CSI_SNAPSHOTTER_VERSION=v8.7.0
# Terraform side (#8): OpenTofu (MPL-2.0; Terraform itself is BUSL) and tflint.
TOFU_VERSION=v1.12.6
TFLINT_VERSION=v0.64.0
# Operating cairn (#20): Prometheus (its OTLP receiver, promtool), an OpenTelemetry
# collector build that receives traces (Jaeger v2 is one), Helm.
PROMETHEUS_VERSION=v0.316.0
JAEGER_VERSION=v1.76.0
HELM_VERSION=v3.22.0
CAIRN_TESTENV_CACHE=${CAIRN_TESTENV_CACHE:-$HOME/.cache/cairn-testenv}
# The test node's own programs (tests/node: the hostpath CSI driver, pause) are keyed by a
# hash of their sources instead of a version.
node_bin_dir() {
  local src; src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../node" && pwd)
  local h; h=$(cd "$src" && find go.mod go.sum build.sh cmd -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
  echo "$CAIRN_TESTENV_CACHE/node-$h"
}
