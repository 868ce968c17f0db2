#!/usr/bin/env bash
# Lint every Dockerfile with dockerfilelint (from the npm registry, installed into the test
# environment's cache, keyed by version). Run by .ci/run. Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/env/versions.sh
version=1.8.0
dir="$CAIRN_TESTENV_CACHE/dockerfilelint-$version"
if [ ! -x "$dir/node_modules/.bin/dockerfilelint" ]; then
  command -v npm >/dev/null || { echo "images/lint.sh: npm is missing" >&2; exit 1; }
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-audit --no-fund --silent "dockerfilelint@$version" >/dev/null)
fi
for f in images/*/Dockerfile; do
  "$dir/node_modules/.bin/dockerfilelint" "$f"
done
