# Functions shared by benches/compare/run.sh and benches/compare/scaling.sh: building,
# starting servers on a free port (pinned to core 0 when there are two cores), running the
# thread-per-connection generator (pinned to core 1), reading a process's CPU time and RSS
# from /proc, counting its syscalls with strace, and holding idle connections open.
# Sourced, not run. Every child it starts is killed by `cleanup` (trapped on exit).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RELEASE_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
SERVER_BIN=$RELEASE_DIR/multiconn-server
TOKIO_BIN=$RELEASE_DIR/examples/echo_tokio
GENERATOR_BIN=$RELEASE_DIR/examples/echo_threads_client
IDLE_BIN=$RELEASE_DIR/examples/idle_conns
CLK_TCK=$(getconf CLK_TCK)
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/multiconn-bench.XXXXXX")

# Children to kill on exit.
CHILD_PIDS=()

if [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_GENERATOR=(taskset -c 1)
    PINNING="server on core 0, generator on core 1"
else
    PIN_SERVER=()
    PIN_GENERATOR=()
    PINNING="one core: no pinning"
fi

die() {
    echo "error: $*" >&2
    exit 1
}

cleanup() {
    local pid
    for pid in "${CHILD_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${CHILD_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK_DIR"
}

# Builds the server and the three examples in release mode.
build_all() {
    (cd "$ROOT" && cargo build --release --quiet --bin multiconn-server \
        --example echo_tokio --example echo_threads_client --example idle_conns)
}

ensure_strace() {
    command -v strace >/dev/null && return
    echo "strace not found: installing it with apt-get" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq strace >/dev/null \
        || die "cannot install strace"
}

# A TCP port nothing listens on, below the ephemeral range so clients cannot take it.
free_port() {
    local port
    for port in $(shuf -i 20000-29999 -n 100); do
        if [ -z "$(ss -Htln "sport = :$port")" ]; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# start_server KIND PORT: starts `multiconn` or `tokio` on 127.0.0.1:PORT; sets SERVER_PID.
start_server() {
    local kind=$1 port=$2
    case $kind in
    multiconn)
        # 10,000 idle plus the active connections: above the default cap of 10,000.
        "${PIN_SERVER[@]}" "$SERVER_BIN" -q --max-connections 15000 127.0.0.1 "$port" &
        ;;
    tokio) "${PIN_SERVER[@]}" "$TOKIO_BIN" 127.0.0.1 "$port" & ;;
    *) die "unknown server $kind" ;;
    esac
    SERVER_PID=$!
    CHILD_PIDS+=("$SERVER_PID")
    wait_listening "$SERVER_PID" "$port" || die "$kind server is not listening on port $port"
}

# wait_listening PID PORT: waits (up to 20 s) until process PID listens on PORT; fails if
# it exits first (or someone else took the port).
wait_listening() {
    local tries
    for tries in $(seq 400); do
        ss -Htlnp "sport = :$2" | grep -q "pid=$1," && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# cpu_ticks PID: "utime stime" in clock ticks, all threads (fields 14 and 15 of stat;
# counted after the ") " that ends the command name).
cpu_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'
}

# rss_kib PID: resident set size in KiB.
rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

open_fds() {
    ls "/proc/$1/fd" | wc -l
}

# run_generator PORT SECS PIPELINE: sets GEN_ROUND_TRIPS and GEN_RATE.
run_generator() {
    local port=$1 secs=$2 pipeline=$3 line
    line=$("${PIN_GENERATOR[@]}" "$GENERATOR_BIN" 127.0.0.1 "$port" "$CONNS" "$secs" "$SIZE" "$pipeline")
    GEN_ROUND_TRIPS=$(echo "$line" | sed -n 's/.*round_trips=\([0-9]*\).*/\1/p')
    GEN_RATE=$(echo "$line" | sed -n 's/.*req_per_sec=\([0-9.]*\).*/\1/p')
    [ -n "$GEN_ROUND_TRIPS" ] && [ "$GEN_ROUND_TRIPS" -gt 0 ] || die "generator said: $line"
}

# measured_round PID PORT SECS PIPELINE: runs the generator and sets ROUND_TRIPS, RATE,
# UTICKS and STICKS (the server's CPU ticks during the run).
measured_round() {
    local pid=$1 port=$2 secs=$3 pipeline=$4 before after
    before=$(cpu_ticks "$pid")
    run_generator "$port" "$secs" "$pipeline"
    after=$(cpu_ticks "$pid")
    ROUND_TRIPS=$GEN_ROUND_TRIPS
    RATE=$GEN_RATE
    UTICKS=$(( ${after% *} - ${before% *} ))
    STICKS=$(( ${after#* } - ${before#* } ))
}

# per_trip TICKS ROUND_TRIPS: CPU microseconds per round trip.
per_trip() {
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }'
}

# ratio A B: A/B with three decimals.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.3f", a / b }'
}

# verdict VALUE OP LIMIT: "ok" or "MISSED" (OP is <= or >=).
verdict() {
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        ok = (op == "<=") ? (v <= l) : (v >= l)
        print ok ? "ok" : "MISSED"
    }'
}

# wait_for_fds PID COUNT: waits (up to 10 s) until the process has at most COUNT open fds,
# i.e. it has closed the connections a generator just left.
wait_for_fds() {
    local tries
    for tries in $(seq 200); do
        [ "$(open_fds "$1")" -le "$2" ] && return
        sleep 0.05
    done
}

# strace_round KIND PID PORT SECS PIPELINE: counts the server's syscalls while the generator
# runs (strace -c -f attached to every thread, detached once the server has closed the
# generator's connections, so setup and teardown are counted whole). Sets STRACE_TRIPS,
# SYSCALLS_PER_MSG (everything), STEADY_PER_MSG (without connection setup and teardown:
# per connection one accept4, setsockopt, close, the read that sees EOF and up to two
# epoll_ctl), READS, WRITES, EPOLL_WAITS, EPOLL_CTLS and MSGS_PER_RW (messages per read or
# write syscall, the EOF reads left out).
strace_round() {
    local kind=$1 pid=$2 port=$3 secs=$4 pipeline=$5
    local out=$WORK_DIR/strace.$kind.$pipeline fds
    fds=$(open_fds "$pid")
    strace -c -f -p "$pid" -o "$out" 2>/dev/null &
    local strace_pid=$!
    CHILD_PIDS+=("$strace_pid")
    # Attached once every thread of the server names a tracer.
    local tries task attached
    for tries in $(seq 200); do
        attached=1
        for task in /proc/"$pid"/task/*; do
            grep -q '^TracerPid:[[:space:]]*0$' "$task/status" && attached=0
        done
        [ "$attached" -eq 1 ] && break
        sleep 0.05
    done
    [ "$attached" -eq 1 ] || die "strace did not attach to $kind"
    run_generator "$port" "$secs" "$pipeline"
    wait_for_fds "$pid" "$fds"
    kill -INT "$strace_pid"
    wait "$strace_pid" 2>/dev/null || true
    STRACE_TRIPS=$GEN_ROUND_TRIPS
    # strace -c lines: % time, seconds, usecs/call, calls, [errors], syscall.
    read -r TOTAL_CALLS READS WRITES EPOLL_WAITS EPOLL_CTLS SETUP_CALLS < <(awk '
        $1 ~ /^[0-9.]+$/ && NF >= 5 {
            name = $NF; calls = $4
            if (name == "total") total = calls
            else if (name ~ /^(read|recvfrom|recvmsg|readv)$/) reads += calls
            else if (name ~ /^(write|sendto|sendmsg|writev)$/) writes += calls
            else if (name ~ /^epoll_(p?wait|pwait2)$/) waits += calls
            else if (name == "epoll_ctl") ctls += calls
            else if (name ~ /^(accept4?|setsockopt|getsockopt|getsockname|getpeername|fcntl|ioctl|close|shutdown)$/) setup += calls
        }
        END { print total + 0, reads + 0, writes + 0, waits + 0, ctls + 0, setup + 0 }' "$out")
    local setup_ctls=$(( EPOLL_CTLS < 2 * CONNS ? EPOLL_CTLS : 2 * CONNS ))
    local eof_reads=$(( READS < CONNS ? READS : CONNS ))
    SYSCALLS_PER_MSG=$(ratio "$TOTAL_CALLS" "$STRACE_TRIPS")
    STEADY_PER_MSG=$(ratio $(( TOTAL_CALLS - SETUP_CALLS - setup_ctls - eof_reads )) "$STRACE_TRIPS")
    MSGS_PER_RW=$(ratio "$STRACE_TRIPS" $(( READS - eof_reads + WRITES )))
}

# Whether perf can count syscall tracepoints and sample cpu-clock here (often not in
# containers); the perf figures are a cross-check and are skipped without it.
perf_usable() {
    command -v perf >/dev/null || return 1
    perf stat -x, -e raw_syscalls:sys_enter -o "$WORK_DIR/perf.check" -- true 2>/dev/null || return 1
    perf record -q -F 999 -e cpu-clock -o "$WORK_DIR/perf.check.data" -- true 2>/dev/null || return 1
}

# perf_syscalls_round PID PORT SECS PIPELINE: like strace_round, but counted by perf's
# syscall tracepoints, which do not slow the server down as ptrace does (so the epoll_wait
# batching is the real one). Sets PERF_TRIPS, PERF_SYSCALLS_PER_MSG, PERF_EPOLL_WAITS.
perf_syscalls_round() {
    local pid=$1 port=$2 secs=$3 pipeline=$4
    local out=$WORK_DIR/perf.stat
    perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait -p "$pid" -o "$out" &
    local perf_pid=$!
    CHILD_PIDS+=("$perf_pid")
    sleep 0.5 # perf gives no sign of having attached; the server is idle meanwhile
    local fds
    fds=$(open_fds "$pid")
    run_generator "$port" "$secs" "$pipeline"
    wait_for_fds "$pid" "$fds"
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    PERF_TRIPS=$GEN_ROUND_TRIPS
    local total waits
    total=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$out")
    waits=$(awk -F, '$3 == "syscalls:sys_enter_epoll_wait" { print $1 }' "$out")
    PERF_SYSCALLS_PER_MSG=$(ratio "$total" "$PERF_TRIPS")
    PERF_EPOLL_WAITS=$waits
}

# sampled_round PID PORT SECS PIPELINE: measured_round with perf sampling the server's
# cpu-clock at 4999 Hz; sets USER_SHARE, the fraction of samples taken in user mode (a far
# finer split of user and system time than /proc's 10 ms ticks), and RETURN_SHARE, the
# fraction on the first user instruction after a syscall: kernel exit time that a VM's
# deferred timer interrupt charges to user mode (see user_split.py; empty without
# python3).
sampled_round() {
    local pid=$1 port=$2 secs=$3 pipeline=$4
    local data=$WORK_DIR/perf.data
    perf record -q -F 4999 -e cpu-clock -p "$pid" -o "$data" 2>/dev/null &
    local perf_pid=$!
    CHILD_PIDS+=("$perf_pid")
    sleep 0.3
    measured_round "$pid" "$port" "$secs" "$pipeline"
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    # Kernel addresses on x86-64 and arm64 start with ffff.
    USER_SHARE=$(perf script -i "$data" -F ip 2>/dev/null |
        awk '{ if ($1 ~ /^ffff/) k++; else u++ } END { if (u + k == 0) print 0; else printf "%.5f", u / (u + k) }')
    RETURN_SHARE=""
    if command -v python3 >/dev/null; then
        RETURN_SHARE=$(perf script -i "$data" -F ip --show-mmap-events 2>/dev/null |
            python3 "$ROOT/benches/compare/user_split.py" | cut -d' ' -f2)
    fi
}

# open_idle PID PORT COUNT: opens COUNT idle connections (an idle_conns process) to the
# server PID listening on PORT and waits until the server holds them all. The holder's
# stdin is a fifo kept open here, so it stays until killed. Sets IDLE_HOLDER_PID.
open_idle() {
    local pid=$1 port=$2 count=$3 base fifo out tries fd
    base=$(open_fds "$pid")
    fifo=$WORK_DIR/idle.$port.in
    out=$WORK_DIR/idle.$port.out
    mkfifo "$fifo"
    exec {fd}<>"$fifo"
    "$IDLE_BIN" 127.0.0.1 "$port" "$count" <"$fifo" >"$out" &
    IDLE_HOLDER_PID=$!
    CHILD_PIDS+=("$IDLE_HOLDER_PID")
    for tries in $(seq 1200); do
        grep -q "^ready $count\$" "$out" && break
        kill -0 "$IDLE_HOLDER_PID" 2>/dev/null || die "idle_conns failed to open $count connections"
        sleep 0.05
    done
    grep -q "^ready $count\$" "$out" || die "idle_conns did not report ready"
    # Connected is not yet accepted: wait until the server owns a socket for each.
    for tries in $(seq 600); do
        [ "$(open_fds "$pid")" -ge $(( base + count )) ] && return
        sleep 0.05
    done
    die "the server accepted only $(( $(open_fds "$pid") - base )) of $count idle connections"
}

# close_idle HOLDER_PID
close_idle() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# callgrind_round KIND SECS: user-space instructions per round trip of a server run under
# valgrind's callgrind (counters zeroed after a warm-up, dumped after SECS of the
# generator). Deterministic where CPU time is not, but the server is ~50 times slower
# under valgrind, so it sees every connection ready at each wake-up (both servers alike).
# Sets CALLGRIND_IR_PER_TRIP.
callgrind_round() {
    local kind=$1 secs=$2 port out bin=() tries instructions
    port=$(free_port)
    out=$WORK_DIR/callgrind.$kind
    case $kind in
    multiconn) bin=("$SERVER_BIN" -q --max-connections 15000) ;;
    tokio) bin=("$TOKIO_BIN") ;;
    esac
    "${PIN_SERVER[@]}" valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
        "${bin[@]}" 127.0.0.1 "$port" 2>"$out.log" &
    local pid=$!
    CHILD_PIDS+=("$pid")
    wait_listening "$pid" "$port" || die "$kind server under valgrind is not listening"
    run_generator "$port" 1 1 # warm-up
    callgrind_control -z "$pid" >/dev/null 2>&1
    run_generator "$port" "$secs" 1
    callgrind_control -d "$pid" >/dev/null 2>&1
    for tries in $(seq 200); do
        [ -s "$out.$pid.1" ] && grep -q '^totals:' "$out.$pid.1" && break
        sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$out.$pid.1")
    CALLGRIND_IR_PER_TRIP=$(awk -v i="$instructions" -v n="$GEN_ROUND_TRIPS" 'BEGIN { printf "%.0f", i / n }')
}

# table_row FIGURE MULTICONN PEER RATIO TARGET VERDICT: appends one machine-readable row
# (tab-separated) to $TABLE_OUT when it is set, for benches/compare/all.sh's table.
table_row() {
    [ -n "${TABLE_OUT:-}" ] || return 0
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TABLE_OUT"
}

# cpu_ns PID: CPU time of every thread of PID in nanoseconds (/proc/PID/task/*/schedstat,
# the scheduler's own accounting: exact where the 10 ms ticks of /proc/PID/stat are not).
cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'
}
