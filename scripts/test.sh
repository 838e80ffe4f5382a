#!/usr/bin/env bash
# The whole test suite: unit, property, app-level and local-provider tests.
#   KILN_TEST_BOOT=1 also runs the QEMU boot test (about 1-3 minutes under TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
cargo test --locked --lib --bins --tests
if [ "${KILN_TEST_BOOT:-0}" = 1 ]; then
  cargo test --locked --test local_provider -- --ignored
fi
