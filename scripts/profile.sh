#!/usr/bin/env bash
# Instructions per forwarded frame: the daemon under callgrind, driven by the benchmark's own
# frontend (one busy-poll round of scripts/bench.sh), so the per-frame instruction counts quoted in
# notes and commits can be reproduced.
#
#   scripts/profile.sh [SIZE]   frame size in bytes (default 64)
#
# Settings (environment): DAEMON=path (profile this binary instead of `cargo build --release`),
# POLL_US (as bench.sh), RESULTS=dir (default results/profile-<timestamp>).
# Prints the program's total instructions, the frames delivered (calls of RxQueue::put, one per
# frame received), their ratio, and the functions with the most instructions. callgrind.out.* and
# the benchmark's logs stay in RESULTS. Takes about a minute; installs valgrind when missing.
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
cp "$DAEMON" "$RESULTS/daemon"

# bench.sh runs its DAEMON for the daemon and for `ctl` queries alike; %p keeps their outputs
# apart, and the daemon's is the largest.
cat >"$RESULTS/under-callgrind" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$RESULTS/callgrind.out.%p" "$RESULTS/daemon" "\$@"
EOF
chmod +x "$RESULTS/under-callgrind"

echo "profiling ${SIZE} B frames, busy-poll, under callgrind (about a minute)..."
wrapper=$RESULTS/under-callgrind
bench_results=$RESULTS/bench
if ! ROUNDS=1 SECONDS_PER_ROUND=6 WARMUP=1 SIZES=$SIZE VARIANTS=ours-poll LAT_SECONDS=0 \
    DAEMON=$wrapper RESULTS=$bench_results \
    "$ROOT/scripts/bench.sh" >"$RESULTS/bench.log" 2>&1; then
    tail -20 "$RESULTS/bench.log" >&2
    echo "the benchmark run failed; log $RESULTS/bench.log" >&2
    exit 1
fi

OUT=$(du -b "$RESULTS"/callgrind.out.* | sort -n | tail -1 | cut -f2)
total=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
# One RxQueue::put per frame received; where the compiler inlined it, one put_frame instead.
calls() {
    callgrind_annotate --tree=calling "$OUT" 2>/dev/null |
        sed -n "s/.*=> .*RxQueue::$1 (\([0-9,]*\)x).*/\1/p" | tr -d , | awk '{ n += $1 } END { print n + 0 }'
}
frames=$(calls put)
[[ $frames -gt 0 ]] || frames=$(calls put_frame)
if [[ -z $total || $frames -eq 0 ]]; then
    echo "could not count instructions or frames in $OUT" >&2
    exit 1
fi
echo "instructions: $total  frames delivered: $frames  instructions per frame: $((total / frames))"
echo "top functions (self):"
callgrind_annotate "$OUT" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,17p' | cut -c1-150
echo "callgrind output: $OUT"
