#!/usr/bin/env bash
# Sets up kiln on this machine, starts the factory (`kiln local`) and builds
# the example pipelines. The factory keeps running; Ctrl-C stops it.
#   KILN_DEMO_SEED_LAB=0  skips the Debian-based seed lab (needs the Debian mirror)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh

cargo build --release --locked
kiln="${CARGO_TARGET_DIR:-target}/release/kiln"
export KILN_DATA_DIR="${KILN_DATA_DIR:-.kiln}"
api="http://127.0.0.1:${KILN_HTTP_PORT:-7071}"

$kiln validate pipelines/*.json

# Base images, named like the marketplace images the pipelines use.
if ! $kiln base list --json | grep -q '"kiln:busybox:tiny"'; then
  $kiln base import kiln:busybox:tiny --version 1.0.0 --busybox
fi
seed_lab="${KILN_DEMO_SEED_LAB:-1}"
if [ "$seed_lab" = 1 ] && ! $kiln base list --json | grep -q '"Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2"'; then
  # Debian bookworm stands in for Ubuntu 22.04 on the local provider.
  $kiln base import Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2 --version 22.04.202611010 \
    --debian bookworm --include ca-certificates
fi

mkdir -p "$KILN_DATA_DIR"
$kiln local > "$KILN_DATA_DIR/kiln-local.log" 2>&1 &
factory=$!
trap 'kill -TERM $factory 2>/dev/null; wait $factory' INT TERM
for _ in $(seq 1 100); do
  curl -fsS "$api/api/health" >/dev/null 2>&1 && break
  kill -0 $factory 2>/dev/null || { cat "$KILN_DATA_DIR/kiln-local.log"; exit 1; }
  sleep 0.1
done
echo "kiln local is up on $api (log: $KILN_DATA_DIR/kiln-local.log)"

id=$($kiln build tiny --wait --reason "demo")
$kiln show "$id"
if [ "$seed_lab" = 1 ]; then
  start=$(date +%s)
  lab=$($kiln build ubuntu-2204-baseline --wait --reason "demo: seed lab")
  echo "seed lab built in $(( $(date +%s) - start )) s (Azure VM Image Builder: 20-40 minutes)"
  $kiln show "$lab"
  version=$($kiln show "$lab" --json | sed -n 's/^  "version": "\(.*\)",$/\1/p')
  echo "--- /etc/aib-build-info read from the published qcow2:"
  $kiln gallery cat "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/gal_platform/images/ubuntu-2204-baseline/versions/$version" /etc/aib-build-info
fi
$kiln gallery list
echo "The factory keeps running (timers, queues, API on $api). Ctrl-C to stop."
wait $factory
