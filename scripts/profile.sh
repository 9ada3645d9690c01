#!/usr/bin/env bash
# Instructions per forwarded frame: the daemon under callgrind, driven by the benchmark's own
# frontend (one round of scripts/bench.sh), so the per-frame instruction counts quoted in notes
# and commits can be reproduced, and two builds compared.
#
#   scripts/profile.sh [SIZE]   frame size in bytes (default 64)
#
# Settings (environment):
#   DAEMON=path     profile this binary instead of `cargo build --release`
#   DAEMON_B=path   also profile this build (e.g. the one before a change), the same way, right
#                   after; prints both figures and ours/B
#   MODE=event|poll event-driven (default) or busy-poll (--poll-us POLL_US, as bench.sh)
#   RESULTS=dir     default results/profile-<timestamp>
# Prints, per build, the program's total instructions, the frames delivered (calls of
# RxQueue::put, one per frame received), their ratio, and the functions with the most
# instructions. callgrind.out.* and the benchmark's logs stay in RESULTS. About a minute per
# build; installs valgrind when missing.
#
# Why event-driven by default: under callgrind the daemon is some 50 times slower than the
# frontend, so every wakeup finds full rings and every batch is a full one; the count per frame
# then repeats to within 1% from run to run. A busy-poll daemon also counts its spinning between
# batches, which depends on how fast the frontend refills: the same build measured ±5% apart.
#
# Instructions are not time: on these machines the data path is bound by cache misses on lines
# the frontend's core owns. For where the cycles go, attach perf to the daemon while
# scripts/bench.sh runs: perf record -e cpu-clock -g -p "$(pgrep -x daemon)" -- sleep 5
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${1:-64}
[[ $SIZE =~ ^[0-9]+$ ]] || {
    echo "usage: $0 [SIZE]  (see the top of $0)" >&2
    exit 2
}
case ${MODE:-event} in
    event) VARIANT=ours-event ;;
    poll) VARIANT=ours-poll ;;
    *)
        echo "MODE must be event or poll" >&2
        exit 2
        ;;
esac
RESULTS=${RESULTS:-$ROOT/results/profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)

if ! command -v valgrind >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi
if [[ -z ${DAEMON:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    DAEMON=$ROOT/target/release/vhost-user-sriov-net
fi

# profile NAME BINARY: prints "instructions ... per frame: N" and leaves N in $per_frame.
profile() {
    local name=$1 dir=$RESULTS/$1
    mkdir -p "$dir"
    cp "$2" "$dir/daemon"
    # bench.sh runs its DAEMON for the daemon and for `ctl` queries alike; %p keeps their
    # outputs apart, and the daemon's is the largest.
    cat >"$dir/under-callgrind" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out.%p" "$dir/daemon" "\$@"
EOF
    chmod +x "$dir/under-callgrind"
    echo "$name: profiling ${SIZE} B frames, ${MODE:-event}, under callgrind (about a minute)..."
    if ! ROUNDS=1 SECONDS_PER_ROUND=6 WARMUP=1 SIZES=$SIZE VARIANTS=$VARIANT LAT_SECONDS=0 \
        DAEMON=$dir/under-callgrind RESULTS=$dir/bench \
        "$ROOT/scripts/bench.sh" >"$dir/bench.log" 2>&1; then
        tail -20 "$dir/bench.log" >&2
        echo "the benchmark run failed; log $dir/bench.log" >&2
        exit 1
    fi
    local out total frames
    out=$(du -b "$dir"/callgrind.out.* | sort -n | tail -1 | cut -f2)
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    # One RxQueue::put per frame received; where the compiler inlined it, one put_frame instead.
    calls() {
        callgrind_annotate --tree=calling "$out" 2>/dev/null |
            sed -n "s/.*=> .*RxQueue::$1 (\([0-9,]*\)x).*/\1/p" | tr -d , | awk '{ n += $1 } END { print n + 0 }'
    }
    frames=$(calls put)
    [[ $frames -gt 0 ]] || frames=$(calls put_frame)
    if [[ -z $total || $frames -eq 0 ]]; then
        echo "could not count instructions or frames in $out" >&2
        exit 1
    fi
    per_frame=$((total / frames))
    echo "$name: instructions: $total  frames delivered: $frames  instructions per frame: $per_frame"
    echo "$name: top functions (self):"
    callgrind_annotate "$out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,17p' | cut -c1-150
    echo "$name: callgrind output: $out"
}

profile ours "$DAEMON"
ours=$per_frame
if [[ -n ${DAEMON_B:-} ]]; then
    profile B "$DAEMON_B"
    b=$per_frame
    echo "instructions per frame: ours $ours, B $b, ours/B $(awk -v a="$ours" -v b="$b" 'BEGIN { printf "%.3f", a / b }')"
fi
