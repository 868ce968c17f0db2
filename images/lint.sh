#!/usr/bin/env bash
# Lint every Dockerfile with dockerfilelint (from the npm registry, installed into the test
# environment's cache, keyed by version). Run by .ci/run. Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(tests/env/npm-tool dockerfilelint 1.8.0)
for f in images/*/Dockerfile; do
  "$dir/node_modules/.bin/dockerfilelint" "$f"
done
