#!/usr/bin/env bash
# Sets up kiln on this machine, starts the factory (`kiln local`), builds the
# example pipelines and ends as the seed lab does: it boots the published
# seed-lab version and reads /etc/aib-build-info back from the running VM.
# The factory then keeps running; Ctrl-C stops it.
#   --once                build, check the marker, stop the factory, exit 0
#   KILN_DEMO_SEED_LAB=0  skips the Debian-based seed lab (needs the Debian mirror)
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
case "${1:-}" in
  --once) once=1 ;;
  "") ;;
  *) echo "usage: $0 [--once]" >&2; exit 2 ;;
esac

./scripts/setup-debian.sh

cargo build --release --locked
kiln="${CARGO_TARGET_DIR:-target}/release/kiln"
export KILN_DATA_DIR="${KILN_DATA_DIR:-.kiln}"
port="${KILN_HTTP_PORT:-7071}"
api="http://127.0.0.1:$port"

$kiln validate pipelines/*.json

# Base images, named like the marketplace images the pipelines use.
bases=$($kiln base list --json)
if ! grep -q '"kiln:busybox:tiny"' <<<"$bases"; then
  $kiln base import kiln:busybox:tiny --version 1.0.0 --busybox
fi
seed_lab="${KILN_DEMO_SEED_LAB:-1}"
seed_urn="Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2"
if [ "$seed_lab" = 1 ] && ! grep -q "\"$seed_urn\"" <<<"$bases"; then
  # Debian bookworm stands in for Ubuntu 22.04 and carries what templates
  # rely on in the marketplace image: sudo (AIB's build user needs it), a
  # kernel and initramfs (the image boots), systemd as init.
  $kiln base import "$seed_urn" --version 22.04.202611010 --debian bookworm \
    --include ca-certificates,sudo,linux-image-cloud-amd64,initramfs-tools,systemd-sysv
fi

mkdir -p "$KILN_DATA_DIR"
$kiln local --port "$port" > "$KILN_DATA_DIR/kiln-local.log" 2>&1 &
factory=$!
# Stops the factory gracefully, then for good after 30 s; returns its status.
stop() {
  local status=0
  kill -TERM "$factory" 2>/dev/null || return 0
  for _ in $(seq 1 300); do
    kill -0 "$factory" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$factory" 2>/dev/null || true
  wait "$factory" || status=$?
  return "$status"
}
trap 'stop || true' EXIT
trap 'exit 130' INT TERM
# Up means: this factory answers its API (another process on the port, or a
# factory that exited, is not up).
up=0
for _ in $(seq 1 100); do
  kill -0 "$factory" 2>/dev/null || break
  if $kiln builds --api "$api" >/dev/null 2>&1 && kill -0 "$factory" 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
if [ "$up" != 1 ]; then
  echo "kiln local did not come up:" >&2
  cat "$KILN_DATA_DIR/kiln-local.log" >&2
  exit 1
fi
echo "kiln local is up on $api (log: $KILN_DATA_DIR/kiln-local.log)"

# `kiln build --wait` prints the build id, then progress on stderr; a
# failed build shows the end of its log.
build() {
  local id
  if ! id=$($kiln build "$1" --wait --reason "$2" --api "$api"); then
    [ -z "$id" ] || $kiln logs "$id" --api "$api" | tail -n 40 >&2
    return 1
  fi
  echo "$id"
}

id=$(build tiny "demo")
$kiln show "$id" --api "$api"
if [ "$seed_lab" = 1 ]; then
  start=$(date +%s)
  lab=$(build ubuntu-2204-baseline "demo: seed lab")
  echo "seed lab built in $(( $(date +%s) - start )) s (Azure VM Image Builder: 20-40 minutes)"
  $kiln show "$lab" --api "$api"
  version_id=$($kiln show "$lab" --json --api "$api" | sed -n 's/^ *"artifact_id": "\(.*\/versions\/[^"]*\)".*/\1/p' | head -n 1)
  if [ -z "$version_id" ]; then
    echo "the seed lab build published no gallery version" >&2
    exit 1
  fi
  # The tutorial's last step: create a VM from the image, log in, verify the marker.
  start=$(date +%s)
  # shellcheck disable=SC2016 # the check runs in the guest, which expands it
  out=$($kiln vm run "$version_id" --check 'cat /etc/aib-build-info; for t in curl jq unzip; do command -v "$t"; done')
  echo "$out"
  echo "booted $version_id and read the marker in $(( $(date +%s) - start )) s"
  if ! grep -q '^Baseline build completed on ' <<<"$out"; then
    echo "the booted seed-lab image lacks the marker in /etc/aib-build-info" >&2
    exit 1
  fi
  for t in curl jq unzip; do
    grep -q "/$t\$" <<<"$out" || { echo "the booted seed-lab image lacks $t" >&2; exit 1; }
  done
  # Its evidence: the SBOM lists the tools with their versions, the diff
  # from its base shows what the build added, the provenance verifies.
  sbom=$($kiln sbom "$version_id")
  for t in curl jq unzip; do
    line=$(grep -P "^$t\t" <<<"$sbom") || { echo "the seed lab's SBOM lacks $t" >&2; exit 1; }
    echo "sbom: $line"
  done
  echo "added over the base:"
  $kiln diff "$version_id" | grep '^+ ' || { echo "the seed lab's diff from its base adds nothing" >&2; exit 1; }
  $kiln verify "$version_id"
  # Built again from the template kept with it, on the same base version:
  # the same packages. Not the same disk, and it says so: the tutorial's
  # step writes $(date) into /etc/aib-build-info.
  rebuild=$($kiln verify "$version_id" --rebuild 2>&1) || true
  grep -E '^(rebuild|reproduces|does NOT)' <<<"$rebuild" || true
  grep -q '^rebuild: packages: the same' <<<"$rebuild" || {
    echo "the seed lab's rebuild did not give the same packages:" >&2
    echo "$rebuild" >&2
    exit 1
  }
fi
$kiln gallery list
if [ "$once" = 1 ]; then
  echo "demo done (--once): stopping the factory"
  trap - EXIT
  if ! stop; then
    echo "kiln local did not stop cleanly:" >&2
    tail -n 20 "$KILN_DATA_DIR/kiln-local.log" >&2
    exit 1
  fi
  exit 0
fi
echo "The factory keeps running (timers, queues, API on $api). Ctrl-C to stop."
wait "$factory"
