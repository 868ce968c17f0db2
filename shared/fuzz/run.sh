#!/usr/bin/env bash
# Fuzz the repository-format decoders of cairn-core (and the manifest codec of cairn-kube).
#   run.sh build          install cargo-fuzz if missing, build every target (nightly, ASan)
#   run.sh run SECONDS    run every target for SECONDS each, one after another; one line each
#   run.sh list           list the targets
# Extra libFuzzer flags can be given in FUZZ_FLAGS (e.g. FUZZ_FLAGS="-rss_limit_mb=4096").
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED_DIR="$(dirname "$FUZZ_DIR")"
export CARGO_TARGET_DIR="$FUZZ_DIR/target"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

# cargo-fuzz 0.13 looks for fuzz/ at the workspace root unless told where it is (--fuzz-dir).
cd "$SHARED_DIR"

targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ_DIR/Cargo.toml" | grep -v '^cairn-fuzz$'
}

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
}

seeds() {
    if [ ! -d "$FUZZ_DIR/seeds" ] && command -v python3 >/dev/null 2>&1; then
        python3 "$FUZZ_DIR/gen_seeds.py" "$FUZZ_DIR/seeds"
    fi
}

cmd="${1:-}"
case "$cmd" in
build)
    ensure_cargo_fuzz
    cargo "+$TOOLCHAIN" fuzz build --fuzz-dir "$FUZZ_DIR"
    ;;
list)
    targets
    ;;
run)
    secs="${2:?usage: run.sh run SECONDS}"
    ensure_cargo_fuzz
    seeds
    cargo "+$TOOLCHAIN" fuzz build --fuzz-dir "$FUZZ_DIR"
    mkdir -p "$FUZZ_DIR/logs"
    failed=0
    for t in $(targets); do
        corpus="$FUZZ_DIR/corpus/$t"
        mkdir -p "$corpus"
        dirs=("$corpus")
        [ -d "$FUZZ_DIR/seeds/$t" ] && dirs+=("$FUZZ_DIR/seeds/$t")
        dict=()
        [ -f "$FUZZ_DIR/dicts/$t.dict" ] && dict=("-dict=$FUZZ_DIR/dicts/$t.dict")
        log="$FUZZ_DIR/logs/$t.log"
        rc=0
        # shellcheck disable=SC2086
        cargo "+$TOOLCHAIN" fuzz run --fuzz-dir "$FUZZ_DIR" "$t" "${dirs[@]}" -- \
            -max_total_time="$secs" -timeout=30 -print_final_stats=1 "${dict[@]}" \
            ${FUZZ_FLAGS:-} >"$log" 2>&1 || rc=$?
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
        [ -n "$runs" ] || runs="$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')"
        if [ "$rc" -eq 0 ]; then
            printf '%-18s ok     runs=%s\n' "$t" "${runs:-?}"
        else
            failed=1
            artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
            why="$(grep -m1 -A1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" | tr '\n' ' ' || true)"
            printf '%-18s CRASH  runs=%s rc=%s artifact=%s  %s\n' \
                "$t" "${runs:-?}" "$rc" "${artifact:-none}" "$why"
        fi
    done
    exit "$failed"
    ;;
*)
    sed -n '2,6p' "$FUZZ_DIR/run.sh" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
