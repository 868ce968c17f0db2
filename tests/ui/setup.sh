#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (installed by tests/env/install-deps) and
# playwright-core from the npm registry, installed into the test environment's cache keyed by
# version (never into the checkout). Prints the module directory to require().
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/env/versions.sh
version=1.64.1
dir="$CAIRN_TESTENV_CACHE/playwright-core-$version"
if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
  command -v npm >/dev/null || { echo "tests/ui/setup.sh: npm is missing" >&2; exit 1; }
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-audit --no-fund --silent "playwright-core@$version" >/dev/null)
fi
command -v chromium >/dev/null || { echo "tests/ui/setup.sh: chromium is missing (tests/env/install-deps)" >&2; exit 1; }
echo "$dir/node_modules/playwright-core"
