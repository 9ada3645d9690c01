#!/usr/bin/env bash
# Long hostile-frontend soak: tests/hostile.rs in release mode with SECONDS (default 600) of
# hostile traffic on VF0 while PF <-> VF1 exchange traffic. Prints the seed, the figures (chains
# sent well-formed and malformed, vhost-user messages, frames verified, fds/threads/RSS before
# and after) and every finding; exits non-zero on any finding.
#
#   scripts/soak.sh [SECONDS]
#
# SOAK_SEED=N replays a run (the seed is printed); SOAK_FLOOD=N sets how many SET_VRING_ENABLE
# the early-enable flood sends (default 2 million from 120 s on). CARGO_TARGET_DIR is honoured.
# The full output is kept in a temporary file whose name is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: $0 [SECONDS]   (hostile phase length, default 600)" >&2
    exit 2
fi

cargo test --release --quiet --test hostile --no-run
log=$(mktemp /tmp/sriov-net-soak.XXXXXX.out)
echo "soak: ${secs} s hostile phase, release build; full output in $log"
set +e
SOAK_SECS=$secs RUST_BACKTRACE=0 cargo test --release --quiet --test hostile -- --nocapture 2>&1 |
    tee "$log" | grep --line-buffered -E '^soak:|^  - |^      |^hostile soak|^daemon log|^test result'
rc=${PIPESTATUS[0]}
set -e
if ((rc == 0)); then
    echo "soak: PASS"
else
    echo "soak: FAIL (exit $rc)"
fi
exit "$rc"
