#!/usr/bin/env bash
# Installs what kiln's local provider and tests need on Debian (root or sudo).
set -euo pipefail

packages=(bubblewrap busybox-static mmdebstrap e2fsprogs qemu-utils qemu-system-x86 ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "kiln setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "kiln setup: cargo not found; install a Rust toolchain (rustup, Rust 1.88 or newer) first" >&2
  exit 1
fi
