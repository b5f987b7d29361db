#!/usr/bin/env bash
# multiconn-client against a thread-per-connection generator (issues 4 and 8): which drives
# the same server faster, and at what CPU cost per round trip?
#
#   benches/compare/generators.sh                       # defaults: ROUNDS=3 DURATION=10
#   DURATION=3 ROUNDS=1 benches/compare/generators.sh
#
# Starts one release multiconn-server (echo) pinned to core 0, then runs ROUNDS alternating
# rounds of DURATION seconds on core 1: `multiconn-client HOST PORT CONNS --duration D
# --warmup 0 --size SIZE` and `examples/echo_threads_client` (one blocking thread per
# connection, like rust_echo_bench) with the same CONNS (50) and SIZE (64). For each it
# prints round trips/s and the generator's own CPU (user+sys, from /proc of the finished
# child: cutime/cstime of this shell once the generator has been waited for), per
# round trip and in total, and the ratios. All children are killed on exit.
# Environment: DURATION ROUNDS CONNS SIZE, CARGO_TARGET_DIR.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
SIZE=${SIZE:-64}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

CLIENT_BIN=$RELEASE_DIR/multiconn-client
(cd "$ROOT" && cargo build --release --quiet --bin multiconn-server --bin multiconn-client \
    --example echo_threads_client)

# children_cpu_ticks: user+sys ticks of all waited-for children of this shell so far.
children_cpu_ticks() {
    awk '{ print $16 + $17 }' "/proc/$$/stat"
}

# generator_round KIND PORT: runs one generator to completion; sets TRIPS and GEN_TICKS.
generator_round() {
    local kind=$1 port=$2 before after out
    before=$(children_cpu_ticks)
    case $kind in
    multiconn-client)
        out=$("${PIN_GENERATOR[@]}" "$CLIENT_BIN" 127.0.0.1 "$port" "$CONNS" \
            --duration "${DURATION}s" --warmup 0 --size "$SIZE" --json)
        TRIPS=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"]["completed"])')
        ;;
    threads)
        run_generator "$port" "$DURATION" 1
        TRIPS=$GEN_ROUND_TRIPS
        ;;
    esac
    after=$(children_cpu_ticks)
    GEN_TICKS=$((after - before))
}

echo "== generators against one multiconn-server (echo): $CONNS connections, $SIZE-byte messages"
echo "   $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $PINNING"
echo "   commit $(git -C "$ROOT" rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)"
port=$(free_port)
start_server multiconn "$port"
declare -A SUM_TRIPS SUM_TICKS
for kind in multiconn-client threads; do SUM_TRIPS[$kind]=0; SUM_TICKS[$kind]=0; done
for round in $(seq "$ROUNDS"); do
    for kind in multiconn-client threads; do
        generator_round "$kind" "$port"
        SUM_TRIPS[$kind]=$((SUM_TRIPS[$kind] + TRIPS))
        SUM_TICKS[$kind]=$((SUM_TICKS[$kind] + GEN_TICKS))
        printf 'round %d %-17s %9.0f round trips/s  generator CPU %5.2f s (%5.2f us per round trip)\n' \
            "$round" "$kind" "$(awk -v t="$TRIPS" -v d="$DURATION" 'BEGIN { print t / d }')" \
            "$(awk -v t="$GEN_TICKS" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')" \
            "$(per_trip "$GEN_TICKS" "$TRIPS")"
    done
done
stop_server
m_rate=$(awk -v t="${SUM_TRIPS[multiconn-client]}" -v d="$((DURATION * ROUNDS))" 'BEGIN { print t / d }')
t_rate=$(awk -v t="${SUM_TRIPS[threads]}" -v d="$((DURATION * ROUNDS))" 'BEGIN { print t / d }')
m_us=$(per_trip "${SUM_TICKS[multiconn-client]}" "${SUM_TRIPS[multiconn-client]}")
t_us=$(per_trip "${SUM_TICKS[threads]}" "${SUM_TRIPS[threads]}")
echo
echo "== summary (all rounds)"
printf '%-17s %9.0f round trips/s  %5.2f us CPU per round trip  %6.2f CPU s\n' \
    multiconn-client "$m_rate" "$m_us" "$(awk -v t="${SUM_TICKS[multiconn-client]}" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')"
printf '%-17s %9.0f round trips/s  %5.2f us CPU per round trip  %6.2f CPU s\n' \
    threads "$t_rate" "$t_us" "$(awk -v t="${SUM_TICKS[threads]}" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')"
echo "throughput ratio multiconn-client/threads: $(ratio "$m_rate" "$t_rate") (target >= 1)"
echo "CPU per round trip ratio:                  $(ratio "$m_us" "$t_us") (target <= 0.5)"
echo "CPU seconds ratio:                         $(ratio "${SUM_TICKS[multiconn-client]}" "${SUM_TICKS[threads]}") (target <= 0.5)"
