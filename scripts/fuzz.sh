#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through libfuzzer-sys; targets in fuzz/, see fuzz/README.md).
#
#   scripts/fuzz.sh smoke            every target for FUZZ_SMOKE_SECONDS (default 15) each; fails
#                                    on a crash (CI runs this from scripts/test.sh)
#   scripts/fuzz.sh long [SECONDS]   every target for SECONDS (default 600) each, one after the
#                                    other, stopping a target early at FUZZ_RUNS executions if
#                                    set; prints executions, exec/s, coverage, corpus and crashes
#   scripts/fuzz.sh run TARGET [SECONDS] [libFuzzer flags...]   one target
#   scripts/fuzz.sh build            only build the targets
#   scripts/fuzz.sh seeds            rewrite fuzz/corpus/<target>/ from fuzz/src/seeds.rs
#
# Environment: FUZZ_TARGETS (space-separated subset), FUZZ_WORK (working corpora, artifacts and
# logs; default $CARGO_TARGET_DIR/fuzz-work), CARGO_TARGET_DIR (default target/), FUZZ_FORK=N
# (libFuzzer's -fork=N: N worker processes; FUZZ_RUNS then counts all of theirs).
#
# FUZZ_FORK is for `vhost_user`: an execution sets up a connection (the framework's handler and
# vring worker threads, the pump, memfds) and waits on those hand-offs for about half of its
# wall time (0.85 ms of CPU in 1.9 ms), so parallel workers overlap the waits: -fork=6 ran 3.6
# times as many executions per second as one process, with two other fuzzers on both CPUs.
#
# Why libFuzzer and why no cargo-fuzz here: the machine has only a stable toolchain, and
# libFuzzer's instrumentation (SanitizerCoverage, -Zsanitizer=address) needs -Z flags, which
# stable rustc accepts with RUSTC_BOOTSTRAP=1; libfuzzer-sys builds libFuzzer itself from
# crates.io with the system C++ compiler. afl.rs would also need AFL++'s own LLVM plugins built
# against a matching LLVM, which stable Rust does not ship. cargo-fuzz only wraps `cargo build`
# with the flags below (copied from cargo-fuzz 0.13 `build -O -a`); invoking cargo directly
# spares CI the 2-3 minute `cargo install cargo-fuzz`. The layout stays cargo-fuzz's, so
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>` works too where cargo-fuzz is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ALL_TARGETS="ring tx offload shim vhost_user control"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
FUZZ_TARGET_DIR=$TARGET_DIR/fuzz
BIN_DIR=$FUZZ_TARGET_DIR/$TRIPLE/release
WORK=${FUZZ_WORK:-$TARGET_DIR/fuzz-work}

# cargo-fuzz 0.13's flags for `cargo fuzz build -O -a` (address sanitizer, debug assertions),
# except for codegen units: 16 instead of 1 builds markedly faster on two cores.
RUSTFLAGS_FUZZ="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Zsanitizer=address \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions \
-Ccodegen-units=${FUZZ_CODEGEN_UNITS:-16}"

# Crates from crates.io are optimized less than ours (which get -O3): most of the build time is
# theirs, and little of the time per execution.
DEPS_OPT_LEVEL=${FUZZ_DEPS_OPT_LEVEL:-1}

# Longest input per target: past the 8 KiB region boundaries of the guest memories (ring, tx: two
# images), GSO frames of several segments (offload). Short inputs keep executions fast.
max_len() {
    case $1 in
        ring) echo 16384 ;;
        tx) echo 20000 ;;
        offload) echo 16384 ;;
        shim | vhost_user) echo 16384 ;;
        control) echo 4096 ;;
        *) echo 4096 ;;
    esac
}

log() { printf '%s\n' "$*" >&2; }

ensure_tools() {
    local need=()
    command -v c++ >/dev/null 2>&1 || need+=(g++)
    if ((${#need[@]})); then
        log "fuzz: installing ${need[*]}"
        if ! { apt-get install -y -q "${need[@]}" >/dev/null 2>&1; }; then
            apt-get update -q >/dev/null
            apt-get install -y -q "${need[@]}" >/dev/null
        fi
    fi
    local sysroot
    sysroot=$(rustc --print sysroot)
    if ! compgen -G "$sysroot/lib/rustlib/$TRIPLE/lib/librustc-*_rt.asan.a" >/dev/null; then
        log "fuzz: the toolchain at $sysroot has no AddressSanitizer runtime for $TRIPLE"
        exit 1
    fi
}

# cargo_fuzz SUBCOMMAND [args...]: cargo with the instrumentation, for the target only (build
# scripts and proc macros are built without it).
cargo_fuzz() {
    local sub=$1
    shift
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="$RUSTFLAGS_FUZZ" ASAN_OPTIONS=detect_odr_violation=0 \
        cargo "$sub" --manifest-path fuzz/Cargo.toml --target "$TRIPLE" --release \
        --config 'profile.release.debug="line-tables-only"' \
        --config "profile.release.package.\"*\".opt-level=$DEPS_OPT_LEVEL" \
        --config 'profile.release.package.vhost-user-sriov-net-backend.opt-level=3' \
        --config 'profile.release.package.vhost-user-sriov-net.opt-level=3' \
        --target-dir "$FUZZ_TARGET_DIR" "$@"
}

build() {
    ensure_tools
    local t0=$SECONDS bins=()
    for t in $TARGETS; do bins+=(--bin "$t"); done
    log "fuzz: building ${TARGETS// /, } (libFuzzer, ASan, debug assertions)"
    cargo_fuzz build --locked "${bins[@]}"
    log "fuzz: built in $((SECONDS - t0)) s"
}

# run_target TARGET SECONDS [extra libFuzzer flags...]: fuzzes one target, its log in
# $WORK/logs/TARGET.log. Returns libFuzzer's status (non-zero on a crash, leak or timeout).
run_target() {
    local t=$1 secs=$2
    shift 2
    local corpus=$WORK/corpus/$t artifacts=$WORK/artifacts/$t/ logf=$WORK/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$WORK/logs"
    local args=(
        -max_total_time="$secs"
        -max_len="$(max_len "$t")"
        -timeout=10
        -rss_limit_mb=4096
        -print_final_stats=1
        -artifact_prefix="$artifacts"
    )
    [[ -n ${FUZZ_FORK:-} ]] && args+=(-fork="$FUZZ_FORK")
    local dict=$t
    [[ $t == shim ]] && dict=vhost_user
    [[ -f fuzz/dict/$dict.dict ]] && args+=(-dict="fuzz/dict/$dict.dict")
    local start=$SECONDS status=0
    # New inputs go to the working corpus; the committed seeds are only read.
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} \
        "$BIN_DIR/$t" "${args[@]}" "$@" "$corpus" "fuzz/corpus/$t" >"$logf" 2>&1 || status=$?
    echo "$((SECONDS - start))" >"$WORK/logs/$t.wall"
    return "$status"
}

# summary TARGET: one table row from the target's log.
summary() {
    local t=$1 logf=$WORK/logs/$1.log
    local execs eps cov ft corp crashes wall last
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$logf" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
    crashes=$(find "$WORK/artifacts/$t" -type f | wc -l)
    wall=$(cat "$WORK/logs/$t.wall" 2>/dev/null || echo "?")
    # Fork mode prints no final stats: its status lines ("#N: cov: ... corp: N ...") count the
    # executions of every worker.
    if [[ -z $execs ]]; then
        execs=$(sed -n 's/^#\([0-9]*\): cov: .*/\1/p' <<<"$last")
        [[ -z $corp ]] && corp=$(sed -n 's/.* corp: \([0-9]*\) .*/\1/p' <<<"$last")
        if [[ -n $execs && $wall =~ ^[0-9]+$ && $wall -gt 0 ]]; then
            eps=$((execs / wall))
        fi
    fi
    printf '| %-10s | %12s | %8s | %6s | %8s | %15s | %7s | %6s |\n' \
        "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "${wall}s"
}

header() {
    printf '| %-10s | %12s | %8s | %6s | %8s | %15s | %7s | %6s |\n' \
        target executions exec/s edges features "corpus (n/size)" crashes wall
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------ -------------- ---------- -------- \
        ---------- ----------------- --------- --------
}

# fuzz_all SECONDS [libFuzzer flags...]: every target in turn, then the table. Fails if any
# target crashed.
fuzz_all() {
    local secs=$1 failed=()
    shift
    # Findings of earlier runs would count again.
    for t in $TARGETS; do rm -rf "$WORK/artifacts/$t"; done
    for t in $TARGETS; do
        log "fuzz: $t for up to ${secs} s"
        if ! run_target "$t" "$secs" "$@"; then
            failed+=("$t")
            log "fuzz: $t FAILED; the end of its log ($WORK/logs/$t.log):"
            grep -vE '^#[0-9]+' "$WORK/logs/$t.log" | tail -40 >&2
            find "$WORK/artifacts/$t" -type f -printf '  artifact: %p\n' >&2
        fi
    done
    header
    for t in $TARGETS; do summary "$t"; done
    if ((${#failed[@]})); then
        log "fuzz: crashes in: ${failed[*]}"
        return 1
    fi
}

cmd=${1:-smoke}
shift || true
case $cmd in
    build) build ;;
    smoke)
        t0=$SECONDS
        cargo fmt --manifest-path fuzz/Cargo.toml -- --check
        build
        fuzz_all "${FUZZ_SMOKE_SECONDS:-15}"
        log "fuzz: smoke done in $((SECONDS - t0)) s"
        ;;
    long)
        secs=${1:-600}
        build
        extra=()
        [[ -n ${FUZZ_RUNS:-} ]] && extra+=(-runs="$FUZZ_RUNS")
        fuzz_all "$secs" "${extra[@]}"
        ;;
    run)
        t=${1:?usage: scripts/fuzz.sh run TARGET [SECONDS] [libFuzzer flags...]}
        secs=${2:-60}
        shift 2 || shift $#
        TARGETS=$t
        build
        status=0
        run_target "$t" "$secs" "$@" || status=$?
        header
        summary "$t"
        exit "$status"
        ;;
    seeds)
        ensure_tools
        cargo_fuzz test --locked --lib -- --ignored write_seeds
        ;;
    *)
        sed -n '2,12p' "$0" >&2
        exit 2
        ;;
esac
