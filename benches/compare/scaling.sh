#!/usr/bin/env bash
# Does the loop's cost grow with idle connections? (issue 7's bench)
#
#   benches/compare/scaling.sh                          # defaults: ROUNDS=3 DURATION=10
#   DURATION=3 ROUNDS=1 benches/compare/scaling.sh
#   KIND=tokio benches/compare/scaling.sh               # the same for the tokio baseline
#
# Starts one server per entry of IDLE_COUNTS (default "0 1000 10000"), all pinned to core 0
# when there are two cores, opens that many idle connections to each (examples/idle_conns)
# and prints each server's RSS per idle connection. Then runs ROUNDS rounds of DURATION
# seconds, each round going once through every server (alternating, so drift in the
# machine's load hits all alike), with CONNS (50) active connections of the thread-per-
# connection generator (examples/echo_threads_client, on core 1) sending SIZE (64) byte
# messages, one in flight each; prints round trips/s per idle count and its ratio to the
# first entry. All children are killed on exit. Environment: DURATION ROUNDS IDLE_COUNTS
# CONNS SIZE KIND (multiconn or tokio), CARGO_TARGET_DIR.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
IDLE_COUNTS=${IDLE_COUNTS:-0 1000 10000}
CONNS=${CONNS:-50}
SIZE=${SIZE:-64}
KIND=${KIND:-multiconn}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r -a COUNTS <<<"$IDLE_COUNTS"
echo "== $KIND: $CONNS active connections while ${IDLE_COUNTS// /, } idle ones are open"
echo "   $(date -u +%FT%TZ), $(nproc) cores, $PINNING, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), DURATION=$DURATION ROUNDS=$ROUNDS SIZE=$SIZE"
build_all

declare -A PID PORT RSS_KIB PER_CONN RATE_SUM
for idle in "${COUNTS[@]}"; do
    PORT[$idle]=$(free_port)
    start_server "$KIND" "${PORT[$idle]}"
    PID[$idle]=$SERVER_PID
    before=$(rss_kib "$SERVER_PID")
    if [ "$idle" -gt 0 ]; then
        open_idle "$SERVER_PID" "${PORT[$idle]}" "$idle"
    fi
    RSS_KIB[$idle]=$(rss_kib "$SERVER_PID")
    PER_CONN[$idle]=$(awk -v a="${RSS_KIB[$idle]}" -v b="$before" -v n="$idle" \
        'BEGIN { if (n == 0) print "-"; else printf "%.2f", (a - b) / n }')
    RATE_SUM[$idle]=0
    run_generator "${PORT[$idle]}" 1 1 # warm-up
done

for round in $(seq "$ROUNDS"); do
    line="round $round:"
    for idle in "${COUNTS[@]}"; do
        run_generator "${PORT[$idle]}" "$DURATION" 1
        RATE_SUM[$idle]=$(awk -v a="${RATE_SUM[$idle]}" -v b="$GEN_RATE" 'BEGIN { print a + b }')
        line+=$(printf "  %s idle %.0f/s" "$idle" "$GEN_RATE")
    done
    echo "$line"
done

echo
printf "%10s %16s %12s %12s %22s\n" "idle" "round trips/s" "ratio" "RSS KiB" "KiB per idle conn"
base=${RATE_SUM[${COUNTS[0]}]}
for idle in "${COUNTS[@]}"; do
    printf "%10s %16.0f %12s %12s %22s\n" "$idle" "$(ratio "${RATE_SUM[$idle]}" "$ROUNDS")" \
        "$(ratio "${RATE_SUM[$idle]}" "$base")" "${RSS_KIB[$idle]}" "${PER_CONN[$idle]}"
done
