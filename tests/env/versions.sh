# Versions of the real components the integration suite runs. Sourced by the other scripts.
# Bump a version here and the next `up` builds it into a fresh cache directory.
ETCD_VERSION=v3.6.16
K8S_VERSION=v1.34.4
VERSITYGW_VERSION=v1.8.0
# Terraform side (#8): OpenTofu (MPL-2.0; Terraform itself is BUSL) and tflint.
TOFU_VERSION=v1.12.6
TFLINT_VERSION=v0.64.0
CAIRN_TESTENV_CACHE=${CAIRN_TESTENV_CACHE:-$HOME/.cache/cairn-testenv}
