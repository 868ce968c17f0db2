#!/usr/bin/env bash
# Format and lint the Terraform/OpenTofu modules with OpenTofu and tflint built from their Go
# modules (tests/env/build.sh, cached by version). Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/env/versions.sh
tests/env/build.sh tofu
tests/env/build.sh tflint
tofu="$CAIRN_TESTENV_CACHE/tofu-$TOFU_VERSION/tofu"
tflint="$CAIRN_TESTENV_CACHE/tflint-$TFLINT_VERSION/tflint"
# No provider installation happens here: an empty CLI configuration, whatever the machine sets.
cli_config=$(mktemp); trap 'rm -f "$cli_config"' EXIT
export TF_CLI_CONFIG_FILE=$cli_config
echo "tofu fmt -check -recursive terraform ($("$tofu" version | head -n 1))"
"$tofu" fmt -check -recursive -diff terraform
echo "tflint --recursive ($("$tflint" --version | head -n 1))"
(cd terraform && "$tflint" --recursive --config "$PWD/.tflint.hcl" --format compact)
