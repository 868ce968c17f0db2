#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (installed by tests/env/install-deps) and
# playwright-core from the npm registry, installed into the test environment's cache keyed by
# version (never into the checkout). Prints the module directory to require().
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v chromium >/dev/null || { echo "tests/ui/setup.sh: chromium is missing (tests/env/install-deps)" >&2; exit 1; }
echo "$(tests/env/npm-tool playwright-core 1.64.1)/node_modules/playwright-core"
