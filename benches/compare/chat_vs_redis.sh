#!/usr/bin/env bash
# Chat fan-out against Redis pub/sub (chat issue, point 8): one sender, MEMBERS members,
# SIZE-byte lines; deliveries (lines x members) per server-CPU-second of multiconn's chat
# and of Redis PUBLISH to as many subscribers, and multiconn across two servers through
# Redis (`--redis`), whose CPU per delivery is set against one server's.
#
#   benches/compare/chat_vs_redis.sh                       # ROUNDS=3, 100 and 1000 members
#   ROUNDS=1 DELIVERIES=4000000 LOCKSTEP_DELIVERIES=500000 benches/compare/chat_vs_redis.sh
#   QUICK=1 benches/compare/chat_vs_redis.sh     # ROUNDS=2, 10 M (lock-step 0.3 M) deliveries
#   TABLE_OUT=/tmp/table.tsv benches/compare/chat_vs_redis.sh          # also append rows
#
# What it does:
# - builds (release) multiconn-server and examples/fanout_bench (the generator: members on
#   one mio loop counting whole deliveries, a sender keeping WINDOW lines in flight on
#   average, and the servers' CPU ticks read from /proc around the measured part);
# - starts redis-server (Debian's; no persistence) and the multiconn servers pinned to core
#   0, the generator on core 1 (when there are two cores); for the two-server figure a
#   multiconn pair shares a Redis, the sender and half the members on the first server;
# - two regimes: pipelined (WINDOW lines in flight, 1000: the servers batch, multiconn
#   sharing one chunk of many lines among the members where Redis copies each message
#   into each subscriber's buffer) and lock-step (one line at a time, each delivered to
#   every member before the next is sent: one write per member per line for both);
# - for each regime and member count, ROUNDS alternating rounds of each of the three,
#   each sending DELIVERIES (lock-step: LOCKSTEP_DELIVERIES) / MEMBERS lines, and prints
#   the figures per round and the ratios of sums with the median of the per-round ratios
#   against the targets: multiconn >= 2x Redis's deliveries per CPU-second, and two
#   servers' CPU per delivery (both servers') <= 1.3x one server's (with the relaying
#   Redis's own CPU shown beside it).
# CPU time is read in clock ticks (10 ms): keep rounds at 50 ticks or more.
# Environment: QUICK ROUNDS MEMBERS_LIST DELIVERIES LOCKSTEP_DELIVERIES SIZE WINDOW,
# CARGO_TARGET_DIR, TABLE_OUT (append `figure<TAB>multiconn<TAB>peer<TAB>ratio<TAB>target<TAB>verdict` rows).
set -euo pipefail

if [ "${QUICK:-0}" = 1 ]; then
    # benches/compare/all.sh's quick run: fewer, shorter rounds (multiconn's pipelined rounds nearer 30 ticks: rough).
    ROUNDS=${ROUNDS:-2} DELIVERIES=${DELIVERIES:-10000000}
    LOCKSTEP_DELIVERIES=${LOCKSTEP_DELIVERIES:-300000}
fi
ROUNDS=${ROUNDS:-3}
MEMBERS_LIST=${MEMBERS_LIST:-"100 1000"}
DELIVERIES=${DELIVERIES:-40000000}
LOCKSTEP_DELIVERIES=${LOCKSTEP_DELIVERIES:-3000000}
SIZE=${SIZE:-64}
WINDOW=${WINDOW:-1000}
TABLE_OUT=${TABLE_OUT:-}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

FANOUT_BIN=$RELEASE_DIR/examples/fanout_bench
command -v redis-server >/dev/null || die "redis-server not found (apt-get install -y redis-server)"

echo "== multiconn chat vs Redis pub/sub: one sender, $SIZE-byte lines, members: $MEMBERS_LIST"
echo "   $(date -u +%FT%TZ), $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $PINNING"
echo "   commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), $(redis-server --version | cut -d' ' -f3), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   ROUNDS=$ROUNDS DELIVERIES=$DELIVERIES (lock-step $LOCKSTEP_DELIVERIES) per round, WINDOW=$WINDOW lines in flight"
(cd "$ROOT" && cargo build --release --quiet --bin multiconn-server --example fanout_bench)

# start_redis PORT: sets REDIS_PID.
start_redis() {
    "${PIN_SERVER[@]}" redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK_DIR" --loglevel warning >"$WORK_DIR/redis.$1.log" 2>&1 &
    REDIS_PID=$!
    CHILD_PIDS+=("$REDIS_PID")
    wait_listening "$REDIS_PID" "$1" || die "redis-server is not listening on port $1"
}

# start_chat PORT [ARGS...]: sets CHAT_PID; with --redis, waits until it has subscribed.
start_chat() {
    local port=$1 log=$WORK_DIR/chat.$1.log tries
    shift
    "${PIN_SERVER[@]}" "$SERVER_BIN" --protocol chat --max-connections 5000 "$@" 127.0.0.1 "$port" 2>"$log" &
    CHAT_PID=$!
    CHILD_PIDS+=("$CHAT_PID")
    wait_listening "$CHAT_PID" "$port" || die "multiconn chat is not listening on port $port"
    if [ "$#" -gt 0 ]; then
        for tries in $(seq 200); do
            grep -q "subscribed to" "$log" && return
            sleep 0.05
        done
        die "multiconn on port $port did not subscribe to Redis"
    fi
}

# generate TARGET MEMBERS PIDS ADDRS: runs the generator for the regime's R_DELIVERIES and
# R_WINDOW; sets DELIVERED, SECS, TICKS and USER (CPU and user CPU ticks, one count per pid,
# space separated).
generate() {
    local target=$1 members=$2 pids=$3 addrs=$4 lines line pid_args=()
    lines=$(( R_DELIVERIES / members ))
    for pid in $pids; do pid_args+=(--pid "$pid"); done
    # shellcheck disable=SC2086
    line=$("${PIN_GENERATOR[@]}" "$FANOUT_BIN" "$target" "$members" "$lines" "$SIZE" "$R_WINDOW" "${pid_args[@]}" $addrs)
    DELIVERED=$(echo "$line" | sed -n 's/.*deliveries=\([0-9]*\).*/\1/p')
    SECS=$(echo "$line" | sed -n 's/.*secs=\([0-9.]*\).*/\1/p')
    TICKS=$(echo "$line" | sed -n 's/.*ticks=\([0-9,]*\).*/\1/p' | tr ',' ' ')
    USER=$(echo "$line" | sed -n 's/.*user=\([0-9,]*\).*/\1/p' | tr ',' ' ')
    [ -n "$DELIVERED" ] && [ "$DELIVERED" -gt 0 ] || die "generator said: $line"
}

sum() { local s=0 x; for x in "$@"; do s=$(( s + x )); done; echo "$s"; }

# per_cpu_second DELIVERIES TICKS: deliveries per CPU-second.
per_cpu_second() {
    awk -v d="$1" -v t="$2" -v hz="$CLK_TCK" 'BEGIN { if (t == 0) print "inf"; else printf "%.0f", d * hz / t }'
}

# ns_per_delivery DELIVERIES TICKS
ns_per_delivery() {
    awk -v d="$1" -v t="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t * 1e9 / hz / d }'
}

median() { tr ' ' '\n' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

row() {
    printf '%-64s %12s %12s %8s %8s  %s\n' "$@"
    if [ -n "$TABLE_OUT" ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TABLE_OUT"
    fi
}

REDIS_PORT=$(free_port)
start_redis "$REDIS_PORT"
BASE_REDIS_PID=$REDIS_PID
SOLO_PORT=$(free_port)
start_chat "$SOLO_PORT"
SOLO_PID=$CHAT_PID
RELAY_REDIS_PORT=$(free_port)
start_redis "$RELAY_REDIS_PORT"
RELAY_REDIS_PID=$REDIS_PID
PAIR_A_PORT=$(free_port)
start_chat "$PAIR_A_PORT" --redis "redis://127.0.0.1:$RELAY_REDIS_PORT"
PAIR_A_PID=$CHAT_PID
PAIR_B_PORT=$(free_port)
start_chat "$PAIR_B_PORT" --redis "redis://127.0.0.1:$RELAY_REDIS_PORT"
PAIR_B_PID=$CHAT_PID

SUMMARY=()
for regime in "pipelined $WINDOW $DELIVERIES" "lock-step 1 $LOCKSTEP_DELIVERIES"; do
read -r R_NAME R_WINDOW R_DELIVERIES <<<"$regime"
for members in $MEMBERS_LIST; do
    echo
    echo "-- $R_NAME, $members members, $(( R_DELIVERIES / members )) lines per round"
    solo_d=0 solo_t=0 solo_u=0 redis_d=0 redis_t=0 redis_u=0 pair_d=0 pair_t=0 pair_rt=0
    solo_vs_redis=() pair_vs_solo=()
    for round in $(seq "$ROUNDS"); do
        generate chat "$members" "$SOLO_PID" "127.0.0.1:$SOLO_PORT"
        s_d=$DELIVERED s_t=$TICKS s_u=$USER
        printf 'round %d multiconn        %9d deliveries %7.3f s %5d ticks (user %4d) %10s deliveries/CPU-s\n' \
            "$round" "$s_d" "$SECS" "$s_t" "$s_u" "$(per_cpu_second "$s_d" "$s_t")"
        generate redis "$members" "$BASE_REDIS_PID" "127.0.0.1:$REDIS_PORT"
        r_d=$DELIVERED r_t=$TICKS r_u=$USER
        printf 'round %d redis            %9d deliveries %7.3f s %5d ticks (user %4d) %10s deliveries/CPU-s\n' \
            "$round" "$r_d" "$SECS" "$r_t" "$r_u" "$(per_cpu_second "$r_d" "$r_t")"
        generate chat "$members" "$PAIR_A_PID $PAIR_B_PID $RELAY_REDIS_PID" \
            "127.0.0.1:$PAIR_A_PORT 127.0.0.1:$PAIR_B_PORT"
        read -r a_t b_t rr_t <<<"$TICKS"
        p_d=$DELIVERED p_t=$(( a_t + b_t ))
        read -r a_u b_u _ <<<"$USER"
        printf 'round %d multiconn x2     %9d deliveries %7.3f s %5d ticks (user %4d) %10s deliveries/CPU-s  (servers %d + %d, their redis %d)\n' \
            "$round" "$p_d" "$SECS" "$p_t" $(( a_u + b_u )) "$(per_cpu_second "$p_d" "$p_t")" "$a_t" "$b_t" "$rr_t"
        solo_d=$(( solo_d + s_d )) solo_t=$(( solo_t + s_t )) solo_u=$(( solo_u + s_u ))
        redis_d=$(( redis_d + r_d )) redis_t=$(( redis_t + r_t )) redis_u=$(( redis_u + r_u ))
        pair_d=$(( pair_d + p_d )) pair_t=$(( pair_t + p_t )) pair_rt=$(( pair_rt + rr_t ))
        solo_vs_redis+=("$(ratio "$(per_cpu_second "$s_d" "$s_t")" "$(per_cpu_second "$r_d" "$r_t")")")
        pair_vs_solo+=("$(ratio "$(ns_per_delivery "$p_d" "$p_t")" "$(ns_per_delivery "$s_d" "$s_t")")")
    done
    solo=$(per_cpu_second "$solo_d" "$solo_t")
    redis=$(per_cpu_second "$redis_d" "$redis_t")
    r1=$(ratio "$solo" "$redis")
    m1=$(echo "${solo_vs_redis[*]}" | median)
    solo_ns=$(ns_per_delivery "$solo_d" "$solo_t")
    pair_ns=$(ns_per_delivery "$pair_d" "$pair_t")
    with_redis_ns=$(ns_per_delivery "$pair_d" $(( pair_t + pair_rt )))
    r2=$(ratio "$pair_ns" "$solo_ns")
    m2=$(echo "${pair_vs_solo[*]}" | median)
    r3=$(ratio "$with_redis_ns" "$solo_ns")
    solo_user_ns=$(ns_per_delivery "$solo_d" "$solo_u")
    redis_user_ns=$(ns_per_delivery "$redis_d" "$redis_u")
    SUMMARY+=(
        "$R_NAME, $members members: deliveries/server-CPU-s vs Redis PUBLISH|$solo|$redis|$r1|>= 2|$(verdict "$r1" '>=' 2)"
        "  median of the $ROUNDS round pairs' ratios|||$m1|>= 2|$(verdict "$m1" '>=' 2)"
        "  user CPU ns per delivery (the rest is the kernel's)|$solo_user_ns|$redis_user_ns|$(ratio "$solo_user_ns" "$redis_user_ns")||"
        "$R_NAME, $members members: ns CPU/delivery, 2 servers via Redis vs 1|$pair_ns|$solo_ns|$r2|<= 1.3|$(verdict "$r2" '<=' 1.3)"
        "  median of the $ROUNDS round pairs' ratios|||$m2|<= 1.3|$(verdict "$m2" '<=' 1.3)"
        "  with the relaying Redis's CPU counted too|$with_redis_ns|$solo_ns|$r3||"
    )
done
done

echo
printf '%-64s %12s %12s %8s %8s  %s\n' "" multiconn peer ratio target verdict
for line in "${SUMMARY[@]}"; do
    IFS='|' read -r figure a b r target v <<<"$line"
    row "$figure" "$a" "$b" "$r" "$target" "$v"
done
