#!/usr/bin/env bash
# kiln's start-up and idle memory (docs/benchmarks.md, "Start-up and idle memory").
#
# 1. Time from exec to the first HTTP 200 on GET /, the Functions host's
#    readiness probe: `kiln serve` on the Azure provider (against the
#    simulator), `kiln serve` on the local provider, and a minimal axum
#    server (examples/minimal_axum.rs), interleaved in one run by
#    examples/startup_probe.rs; then the same with hyperfine timing whole
#    probe runs (its overhead included) when hyperfine is installed.
# 2. The resident memory (VmRSS) of an idle `kiln local` with the shipped
#    pipelines on a fresh data folder.
#
# Usage: scripts/bench-startup.sh [runs]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}

cargo build --release --locked --bin kiln --example minimal_axum --example startup_probe
kiln=$PWD/target/release/kiln
probe=$PWD/target/release/examples/startup_probe
minimal=$PWD/target/release/examples/minimal_axum

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (up to 30 s) until $1 answers 200.
wait_http() {
    local deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "$1 did not answer in 30 s" >&2
            return 1
        fi
        sleep 0.05
    done
}

export KILN_LOG=warn
export KILN_PIPELINES_DIR=$PWD/pipelines KILN_HANDLERS_DIR=$PWD/handlers
export KILN_EVENTS_KEY=bench-only-key
# `kiln serve` refuses to start without API keys (or KILN_API_AUTH=off).
export KILN_API_KEYS=bench-only-api-key

# The simulator, for `kiln serve` on the Azure provider; it prints the settings.
"$kiln" sim --port 0 >"$work/sim.env" 2>"$work/sim.log" &
pids+=($!)
deadline=$((SECONDS + 30))
until grep -q '^export KILN_AZURE_MANAGEMENT_URL=' "$work/sim.env"; do
    if ((SECONDS > deadline)); then
        echo "kiln sim did not start:" >&2
        cat "$work/sim.log" >&2
        exit 1
    fi
    sleep 0.1
done
azure_env=()
while IFS= read -r line; do
    kv=${line#export }
    k=${kv%%=*}
    v=${kv#*=}
    v=${v#\'}
    v=${v%\'}
    azure_env+=("$k=$v")
done < <(grep '^export ' "$work/sim.env")

mkdir -p "$work/serve-azure" "$work/serve-local"
# Each kiln start is interleaved with the yardstick's, so the two of a pair
# share the machine's load. The pairs run apart: the local provider's start
# runs shellcheck three times, and a start right after it is a millisecond
# slower (measured, docs/benchmarks.md), which is not kiln serve's own cost.
# The probe sets each command's environment itself: through `env` the
# figure would hold one more exec (about a millisecond) the yardstick does not.
echo "== exec to first 200 on GET / ($runs runs each, interleaved in pairs)"
"$probe" --runs "$runs" \
    -- @"kiln serve (azure provider, sim)" "${azure_env[@]}" KILN_DATA_DIR="$work/serve-azure" "$kiln" serve \
    -- @"minimal axum" "$minimal"
"$probe" --runs "$runs" \
    -- @"kiln serve (local provider)" KILN_PROVIDER=local KILN_DATA_DIR="$work/serve-local" "$kiln" serve \
    -- @"minimal axum" "$minimal"

if command -v hyperfine >/dev/null; then
    echo "== the same, timed by hyperfine (whole probe runs: + probe exec and kill)"
    # hyperfine -N splits each command as a shell would: every word quoted.
    q() { printf '%q ' "$@"; }
    hyperfine -N --warmup 3 --runs "$runs" \
        -n "kiln serve (azure, sim)" "$(q "$probe" --once -- "${azure_env[@]}" KILN_DATA_DIR="$work/serve-azure" "$kiln" serve)" \
        -n "kiln serve (local)" "$(q "$probe" --once -- KILN_PROVIDER=local KILN_DATA_DIR="$work/serve-local" "$kiln" serve)" \
        -n "minimal axum" "$(q "$probe" --once -- "$minimal")"
else
    echo "(hyperfine is not installed: apt-get install hyperfine for the second table)"
fi

echo "== idle kiln local: resident memory"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KILN_PROVIDER=local KILN_DATA_DIR="$work/local" "$kiln" local --port "$port" 2>"$work/local.log" &
local_pid=$!
pids+=("$local_pid")
wait_http "http://127.0.0.1:$port/api/health"
# Idle: no build active or queued, and the start-up timers have run (the
# resident set no longer grows between two looks a second apart).
deadline=$((SECONDS + 60))
prev=0
while :; do
    active=$(curl -fsS -H "x-kiln-key: $KILN_API_KEYS" "http://127.0.0.1:$port/api/metrics" |
        awk '/^kiln_builds_(active|queued) / { n += $2 } END { print n + 0 }')
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$local_pid/status")
    if [[ $active == 0 && $rss == "$prev" ]]; then
        break
    fi
    if ((SECONDS > deadline)); then
        echo "kiln local did not settle in 60 s (active or queued builds: $active)" >&2
        break
    fi
    prev=$rss
    sleep 1
done
threads=$(awk '/^Threads:/ { print $2 }' "/proc/$local_pid/status")
hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$local_pid/status")
echo "VmRSS $((rss / 1024)) MiB ($rss kB), peak VmHWM $((hwm / 1024)) MiB, $threads threads, $(nproc) cores"
