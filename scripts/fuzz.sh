#!/usr/bin/env bash
# Fuzz the parsers ringmux runs on untrusted bytes (fuzz/fuzz_targets/):
# request heads, response heads, chunked framing (both directions), key
# extraction and the Origin / Host check.
#
#   scripts/fuzz.sh                 every target for 10,000,000 runs, growing
#                                   fuzz/corpus/<target>, then minimising it
#   scripts/fuzz.sh --runs N        N runs per target instead
#   scripts/fuzz.sh --ci            every target for 10 s on a copy of the
#                                   committed corpus (≤ 60 s in all); what
#                                   `scripts/test.sh` runs
#   scripts/fuzz.sh --only NAME     one target
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs
# cargo-fuzz from crates.io if it is missing. A crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit non-zero; reproduce
# with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000000
ci=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) ci=1 ;;
        --runs) runs="$2"; shift ;;
        --only) only="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

TARGETS=(request_head response_head chunked key origin)
[ -n "$only" ] && TARGETS=("$only")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (crates.io)"
    cargo +nightly install cargo-fuzz --locked --quiet
fi

# Safe Rust parsers: AddressSanitizer adds little and halves the speed, so
# the long campaign runs without it; the CI run keeps it.
if [ "$ci" = 1 ]; then san=address; else san=none; fi
echo "fuzz.sh: building the targets (sanitizer: $san)"
cargo +nightly fuzz build -O -s "$san" >/dev/null

status=0
for t in "${TARGETS[@]}"; do
    if [ "$ci" = 1 ]; then
        work=$(mktemp -d)
        cp -r "fuzz/corpus/$t/." "$work/"
        echo "fuzz.sh: $t for 10 s on the committed corpus ($(ls "$work" | wc -l) inputs)"
        if ! cargo +nightly fuzz run -O -s "$san" "$t" "$work" -- -max_total_time=10 \
            -print_final_stats=1 > "$work.log" 2>&1; then
            tail -40 "$work.log" >&2
            status=1
        fi
        grep -E "^stat::number_of_executed_units" "$work.log" | sed "s/^/  $t: /" || true
        rm -rf "$work" "$work.log"
    else
        mkdir -p "fuzz/corpus/$t"
        echo "fuzz.sh: $t for $runs runs"
        log=$(mktemp)
        if ! cargo +nightly fuzz run -O -s "$san" "$t" "fuzz/corpus/$t" -- -runs="$runs" \
            -print_final_stats=1 > "$log" 2>&1; then
            tail -40 "$log" >&2
            status=1
        fi
        grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss)" "$log" | sed "s/^/  $t: /" || true
        rm -f "$log"
        echo "fuzz.sh: minimising fuzz/corpus/$t"
        cargo +nightly fuzz cmin -O -s "$san" "$t" "fuzz/corpus/$t" >/dev/null 2>&1 || true
    fi
done
if [ "$status" = 0 ]; then
    echo "fuzz.sh: no crashes"
fi
exit "$status"
