#!/usr/bin/env bash
# Installs what kiln's local provider, its lint and its tests need on Debian
# (root or sudo), then checks the result: every host tool kiln runs must be
# on PATH and answer --version. Azurite (the local Azure Table Storage the
# table client's tests run against) comes from npm, not apt. apt's exit code is not enough: on a machine
# with backports, installing one package can make apt remove another (the
# qemu-utils 10.0 backport Breaks bookworm's qemu-system-common 7.2, so
# `apt-get install qemu-system-x86` removes qemu-utils and with it
# qemu-img). A tool that an install removed is reinstalled; a tool that is
# still missing stops the script with the tool and its Debian package named.
#
#   scripts/setup-debian.sh           install what is missing, repair, check
#   scripts/setup-debian.sh --check   only check; exit 1 naming what is missing
#   scripts/setup-debian.sh --with-cargo-deny   also cargo-deny (CI's
#                                     supply-chain check; a first install
#                                     builds it, several minutes)
set -euo pipefail

# The cargo-deny that deny.toml is written for (`cargo deny --offline` and
# the version 2 config need 0.16 or newer).
cargo_deny_version=0.20.2
with_cargo_deny=0
if [ "${1:-}" = "--with-cargo-deny" ]; then
  with_cargo_deny=1
  shift
fi

# tool:Debian package:argument that makes it answer and exit 0.
# qemu-system-x86_64 boots images (`kiln vm run`, the demo's marker check,
# boot tests); shellcheck lints customizers in `kiln validate`; chromium and
# chromedriver run the dashboard's browser test (headless, through WebDriver).
tools=(
  mkfs.ext4:e2fsprogs:-V
  debugfs:e2fsprogs:-V
  qemu-img:qemu-utils:--version
  mmdebstrap:mmdebstrap:--version
  busybox:busybox-static:true
  qemu-system-x86_64:qemu-system-x86:--version
  shellcheck:shellcheck:--version
  chromium:chromium:--version
  chromedriver:chromium-driver:--version
)
# Packages that kiln itself does not run: certificates for downloads, and
# bubblewrap for the local_build benchmark's bare-tools baseline.
extra_packages=(ca-certificates bubblewrap python3-venv)
# tool:npm package:argument, installed with `npm install -g`.
# azurite-table is the Table Storage emulator the store's tests start.
npm_tools=(
  azurite-table:azurite@3:--version
)
# schemathesis (PyPI) tests the HTTP API against its OpenAPI document.
# Debian's python3 is externally managed: it goes in a venv of its own.
venv=/opt/kiln-tools/venv
schemathesis_spec='schemathesis>=4.3,<5'
schemathesis_ok() {
  "$venv/bin/schemathesis" --version 2>/dev/null | grep -q '^schemathesis, version 4\.'
}
# spdx-tools (PyPI) validates the SPDX SBOMs kiln writes (tests/sbom.rs).
# Its CLI has no --version (that option names an SPDX version): ask the
# venv for the package's version and that the CLI starts.
spdx_tools_spec='spdx-tools>=0.8,<0.9'
spdx_tools_ok() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("spdx-tools"))' 2>/dev/null | grep -q '^0\.8\.' &&
    "$venv/bin/pyspdxtools" --help 2>/dev/null | grep -q 'validating SPDX documents'
}

# Prints "tool:package" for every tool that is missing or does not run.
missing_tools() {
  local entry tool rest package arg
  for entry in "${tools[@]}"; do
    tool=${entry%%:*} rest=${entry#*:}
    package=${rest%%:*} arg=${rest#*:}
    # sbin folders are not on every user's PATH but hold mkfs.ext4 and debugfs.
    PATH="$PATH:/usr/sbin:/sbin" "$tool" "$arg" >/dev/null 2>&1 || echo "$tool:$package"
  done
}

# The same for npm_tools.
missing_npm_tools() {
  local entry tool rest package arg
  for entry in "${npm_tools[@]}"; do
    tool=${entry%%:*} rest=${entry#*:}
    package=${rest%%:*} arg=${rest#*:}
    "$tool" "$arg" >/dev/null 2>&1 || echo "$tool:$package"
  done
}

# Arguments: missing "tool:Debian package" entries; npm_missing holds the npm ones.
npm_missing=()
pypi_missing=()
report_and_exit() {
  local entry
  echo "kiln setup: these tools are missing or do not run:" >&2
  for entry in "$@"; do
    echo "  ${entry%%:*} (Debian package ${entry#*:})" >&2
  done
  for entry in "${npm_missing[@]}"; do
    echo "  ${entry%%:*} (npm package ${entry#*:}: npm install -g ${entry#*:})" >&2
  done
  for entry in "${pypi_missing[@]}"; do
    echo "  $entry (in a venv: run scripts/setup-debian.sh)" >&2
  done
  exit 1
}

if [ "${1:-}" = "--check" ]; then
  mapfile -t missing < <(missing_tools)
  mapfile -t npm_missing < <(missing_npm_tools)
  schemathesis_ok || pypi_missing+=("$venv/bin/schemathesis (PyPI package $schemathesis_spec)")
  spdx_tools_ok || pypi_missing+=("$venv/bin/pyspdxtools (PyPI package $spdx_tools_spec)")
  ((${#missing[@]} + ${#npm_missing[@]} + ${#pypi_missing[@]} == 0)) || report_and_exit "${missing[@]}"
  echo "kiln setup: all $((${#tools[@]} + ${#npm_tools[@]} + 2)) tools present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  # Through env: sudo's env_reset would drop a plain assignment.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

packages=("${extra_packages[@]}")
for entry in "${tools[@]}"; do rest=${entry#*:}; packages+=("${rest%%:*}"); done
wanted=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || wanted+=("$p")
done
if ((${#wanted[@]})); then
  # Deduplicate (e2fsprogs has two tools).
  mapfile -t wanted < <(printf '%s\n' "${wanted[@]}" | sort -u)
  echo "kiln setup: installing ${wanted[*]}"
  $sudo apt-get update -q
  apt_install "${wanted[@]}"
fi

mapfile -t missing < <(missing_tools)
if ((${#missing[@]})); then
  # Repair: reinstall the packages of the tools that are gone. After a
  # Breaks-removal this takes the archive's version, which fits the rest.
  repair=()
  for entry in "${missing[@]}"; do repair+=("${entry#*:}"); done
  mapfile -t repair < <(printf '%s\n' "${repair[@]}" | sort -u)
  echo "kiln setup: ${repair[*]} missing or broken after install (removed by apt to resolve a conflict?); reinstalling"
  $sudo apt-get update -q
  # --reinstall also mends a package that is installed but whose tool does not run.
  apt_install --reinstall "${repair[@]}" || true
  mapfile -t missing < <(missing_tools)
  ((${#missing[@]} == 0)) || report_and_exit "${missing[@]}"
fi

mapfile -t npm_missing < <(missing_npm_tools)
if ((${#npm_missing[@]})); then
  # Node from NodeSource ships npm inside its nodejs package, and Debian's
  # npm package conflicts with it: install node and npm from apt only when
  # there is no npm at all.
  if ! command -v npm >/dev/null 2>&1; then
    echo "kiln setup: installing nodejs npm (for ${npm_missing[*]%%:*})"
    $sudo apt-get update -q
    apt_install nodejs npm
  fi
  npm_packages=()
  for entry in "${npm_missing[@]}"; do npm_packages+=("${entry#*:}"); done
  echo "kiln setup: installing ${npm_packages[*]} from npm"
  $sudo npm install -g --no-audit --no-fund "${npm_packages[@]}"
  mapfile -t npm_missing < <(missing_npm_tools)
  ((${#npm_missing[@]} == 0)) || report_and_exit
fi

if ! schemathesis_ok; then
  echo "kiln setup: installing $schemathesis_spec in $venv"
  # Debian's own python3 (python3-venv above), not whichever is first on PATH.
  $sudo /usr/bin/python3 -m venv "$venv"
  $sudo "$venv/bin/pip" install --quiet --disable-pip-version-check "$schemathesis_spec"
  if ! schemathesis_ok; then
    echo "kiln setup: $venv/bin/schemathesis does not answer --version with 4.x after pip install" >&2
    exit 1
  fi
fi

if ! spdx_tools_ok; then
  echo "kiln setup: installing $spdx_tools_spec in $venv"
  [ -x "$venv/bin/pip" ] || $sudo /usr/bin/python3 -m venv "$venv"
  $sudo "$venv/bin/pip" install --quiet --disable-pip-version-check "$spdx_tools_spec"
  if ! spdx_tools_ok; then
    echo "kiln setup: $venv/bin/pyspdxtools is not spdx-tools 0.8.x or does not start after pip install" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "kiln setup: cargo not found; install a Rust toolchain (rustup, Rust 1.88 or newer) first" >&2
  exit 1
fi
if ((with_cargo_deny)); then
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "kiln setup: installing cargo-deny $cargo_deny_version (builds from source)"
    cargo install cargo-deny --locked --version "$cargo_deny_version"
  fi
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "kiln setup: cargo deny does not run after its install (is ~/.cargo/bin on PATH?)" >&2
    exit 1
  fi
  echo "kiln setup: $(cargo deny --version)"
fi
echo "kiln setup: all $((${#tools[@]} + ${#npm_tools[@]} + 2)) tools present ($(qemu-img --version | head -n 1); $(chromium --version 2>/dev/null); azurite-table $(azurite-table --version); $("$venv/bin/schemathesis" --version); spdx-tools $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("spdx-tools"))'))"
