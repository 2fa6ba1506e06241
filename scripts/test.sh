#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: installs what is missing, then typecheck, lint
# and every test file. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh --deps-only
npm test -- "$@"
