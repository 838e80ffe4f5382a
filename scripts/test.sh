#!/usr/bin/env bash
# The whole test suite: unit, property, app-level and local-provider tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
cargo test --locked --lib --bins --tests
