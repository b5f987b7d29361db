#!/usr/bin/env bash
# Load generators against the same server, in alternating rounds of one run:
#   1. echo: multiconn-client against a thread-per-connection generator (like
#      rust_echo_bench), against one multiconn-server (echo);
#   2. HTTP and HTTPS: multiconn-client against wrk (Debian) and oha (when installed:
#      `cargo install oha`; skipped with a line saying so otherwise), against one nginx
#      worker (keep-alive without a request limit, access log off; HTTPS with a
#      self-signed certificate made here with openssl).
# For each: requests (round trips) per second, and the generator's own CPU (user+sys,
# from /proc: cutime/cstime of this shell once the generator has been waited for) per
# request, and the ratios against the targets.
#
#   benches/compare/generators.sh                       # defaults: ROUNDS=3 DURATION=10
#   DURATION=3 ROUNDS=1 benches/compare/generators.sh
#   PARTS="http https" TABLE_OUT=/tmp/table.tsv benches/compare/generators.sh
#
# Servers are pinned to core 0 and generators to core 1. All children are killed on exit.
# Environment: DURATION ROUNDS CONNS SIZE, PARTS (echo http https), TABLE_OUT (append
# rows "figure<TAB>multiconn<TAB>peer<TAB>ratio<TAB>target<TAB>verdict"), CARGO_TARGET_DIR.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
SIZE=${SIZE:-64}
PARTS=${PARTS:-echo http https}
TABLE_OUT=${TABLE_OUT:-}

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

# generator_round KIND PORT: runs one generator to completion; sets COUNT and GEN_TICKS.
generator_round() {
    local kind=$1 port=$2 before after out
    before=$(children_cpu_ticks)
    case $kind in
    multiconn-client)
        out=$("${PIN_GENERATOR[@]}" "$CLIENT_BIN" 127.0.0.1 "$port" "$CONNS" \
            --duration "${DURATION}s" --warmup 0 --size "$SIZE" --json)
        COUNT=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"]["completed"])')
        ;;
    threads)
        run_generator "$port" "$DURATION" 1
        COUNT=$GEN_ROUND_TRIPS
        ;;
    esac
    after=$(children_cpu_ticks)
    GEN_TICKS=$((after - before))
}

# run_rounds UNIT ROUND ARG KIND...: ROUNDS alternating rounds, each running `ROUND KIND
# ARG` for every KIND (which sets COUNT and GEN_TICKS), with a line per run; sums into
# SUM_COUNT and SUM_TICKS by kind.
declare -A SUM_COUNT SUM_TICKS
run_rounds() {
    local unit=$1 round_fn=$2 arg=$3 kind round
    shift 3
    SUM_COUNT=()
    SUM_TICKS=()
    for kind; do SUM_COUNT[$kind]=0; SUM_TICKS[$kind]=0; done
    for round in $(seq "$ROUNDS"); do
        for kind; do
            "$round_fn" "$kind" "$arg"
            SUM_COUNT[$kind]=$((SUM_COUNT[$kind] + COUNT))
            SUM_TICKS[$kind]=$((SUM_TICKS[$kind] + GEN_TICKS))
            printf 'round %d %-17s %9.0f %s/s  generator CPU %5.2f s (%5.2f us per %s)\n' \
                "$round" "$kind" "$(awk -v t="$COUNT" -v d="$DURATION" 'BEGIN { print t / d }')" \
                "${unit}s" "$(awk -v t="$GEN_TICKS" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')" \
                "$(per_trip "$GEN_TICKS" "$COUNT")" "$unit"
        done
    done
}

# table_row FIGURE MULTICONN PEER OP TARGET: prints nothing; appends a row to TABLE_OUT.
table_row() {
    [ -n "$TABLE_OUT" ] || return 0
    local r
    r=$(ratio "$2" "$3")
    printf '%s\t%s\t%s\t%s\t%s %s\t%s\n' "$1" "$2" "$3" "$r" "$4" "$5" "$(verdict "$r" "$4" "$5")" >>"$TABLE_OUT"
}

echo_part() {
    echo "== generators against one multiconn-server (echo): $CONNS connections, $SIZE-byte messages"
    echo "   $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $PINNING"
    echo "   commit $(git -C "$ROOT" rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    local port round kind m_rate t_rate m_us t_us
    port=$(free_port)
    start_server multiconn "$port"
    run_rounds "round trip" generator_round "$port" multiconn-client threads
    stop_server
    m_rate=$(awk -v t="${SUM_COUNT[multiconn-client]}" -v d="$((DURATION * ROUNDS))" 'BEGIN { print t / d }')
    t_rate=$(awk -v t="${SUM_COUNT[threads]}" -v d="$((DURATION * ROUNDS))" 'BEGIN { print t / d }')
    m_us=$(per_trip "${SUM_TICKS[multiconn-client]}" "${SUM_COUNT[multiconn-client]}")
    t_us=$(per_trip "${SUM_TICKS[threads]}" "${SUM_COUNT[threads]}")
    echo
    echo "== summary (all rounds)"
    printf '%-17s %9.0f round trips/s  %5.2f us CPU per round trip  %6.2f CPU s\n' \
        multiconn-client "$m_rate" "$m_us" "$(awk -v t="${SUM_TICKS[multiconn-client]}" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')"
    printf '%-17s %9.0f round trips/s  %5.2f us CPU per round trip  %6.2f CPU s\n' \
        threads "$t_rate" "$t_us" "$(awk -v t="${SUM_TICKS[threads]}" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')"
    echo "throughput ratio multiconn-client/threads: $(ratio "$m_rate" "$t_rate") (target >= 1)"
    echo "CPU per round trip ratio:                  $(ratio "$m_us" "$t_us") (target <= 0.5)"
    echo "CPU seconds ratio:                         $(ratio "${SUM_TICKS[multiconn-client]}" "${SUM_TICKS[threads]}") (target <= 0.5)"
    table_row "echo round trips/s vs threads" "$m_rate" "$t_rate" ">=" 1
    table_row "echo CPU us per round trip vs threads" "$m_us" "$t_us" "<=" 0.5
}

# --- HTTP and HTTPS: multiconn-client, wrk, oha against one nginx worker ---------------

NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
OHA_BIN=$(command -v oha || echo "$HOME/.cargo/bin/oha")

# start_nginx PORT TLS_PORT: one worker on core 0, serving a 21-byte page; sets NGINX_PID.
start_nginx() {
    local dir=$WORK_DIR/nginx
    mkdir -p "$dir"
    # nginx's worker runs as an unprivileged user: it must be able to read the page.
    chmod 755 "$WORK_DIR" "$dir"
    printf '<h1>Hello,World!</h1>' >"$dir/index.html"
    chmod 644 "$dir/index.html"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE 2>/dev/null || die "openssl cannot make a certificate"
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
    uwsgi_temp_path $dir; scgi_temp_path $dir;
    server { listen 127.0.0.1:$1; root $dir; }
    server { listen 127.0.0.1:$2 ssl; root $dir;
             ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem; }
}
CONF
    "${PIN_SERVER[@]}" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
    NGINX_PID=$!
    CHILD_PIDS+=("$NGINX_PID")
    local tries
    for tries in $(seq 400); do
        [ -n "$(ss -Htln "sport = :$1")" ] && [ -n "$(ss -Htln "sport = :$2")" ] && return
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited"
        sleep 0.05
    done
    die "nginx is not listening"
}

# http_round KIND URL: one generator run of DURATION s; sets COUNT and GEN_TICKS.
http_round() {
    local kind=$1 url=$2 before after out
    before=$(children_cpu_ticks)
    case $kind in
    multiconn-client)
        local tls=()
        [[ $url == https:* ]] && tls=(--cacert "$WORK_DIR/nginx/cert.pem")
        out=$("${PIN_GENERATOR[@]}" "$CLIENT_BIN" "$url" "$CONNS" --duration "${DURATION}s" \
            --warmup 0 "${tls[@]}" --json)
        COUNT=$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["requests"]["completed"] if r["errors"]["total"] == 0 else 0)')
        ;;
    wrk)
        out=$("${PIN_GENERATOR[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url")
        COUNT=$(echo "$out" | awk '/requests in/ { print $1 }')
        if echo "$out" | grep -q "Non-2xx\|Socket errors"; then COUNT=0; fi
        ;;
    oha)
        out=$("${PIN_GENERATOR[@]}" "$OHA_BIN" -z "${DURATION}s" -c "$CONNS" --no-tui --insecure \
            --output-format json "$url" 2>/dev/null)
        COUNT=$(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(r["statusCodeDistribution"].values()))')
        ;;
    esac
    after=$(children_cpu_ticks)
    GEN_TICKS=$((after - before))
    [ -n "$COUNT" ] && [ "$COUNT" -gt 0 ] || die "$kind against $url completed nothing (or failed): $out"
}

# http_part SCHEME: multiconn-client, wrk and oha (if installed), alternating rounds.
http_part() {
    local scheme=$1 port=$2 kinds=(multiconn-client wrk) kind url
    [ -x "$OHA_BIN" ] && kinds+=(oha)
    url="$scheme://127.0.0.1:$port/"
    echo
    echo "== $scheme: generators against one nginx worker, $CONNS connections, GET / (21-byte page)"
    [ -x "$OHA_BIN" ] || echo "   oha: not installed (cargo install oha), skipped"
    run_rounds request http_round "$url" "${kinds[@]}"
    echo "-- $scheme summary (all rounds)"
    local -A RATE US
    for kind in "${kinds[@]}"; do
        RATE[$kind]=$(awk -v t="${SUM_COUNT[$kind]}" -v d="$((DURATION * ROUNDS))" 'BEGIN { printf "%.0f", t / d }')
        US[$kind]=$(per_trip "${SUM_TICKS[$kind]}" "${SUM_COUNT[$kind]}")
        printf '%-17s %9.0f requests/s  %5.2f us CPU per request  %6.2f CPU s\n' "$kind" "${RATE[$kind]}" \
            "${US[$kind]}" "$(awk -v t="${SUM_TICKS[$kind]}" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')"
    done
    local m=multiconn-client r
    r=$(ratio "${RATE[$m]}" "${RATE[wrk]}")
    echo "requests/s ratio multiconn-client/wrk:   $r (target >= 1: $(verdict "$r" ">=" 1))"
    table_row "$scheme requests/s vs wrk" "${RATE[$m]}" "${RATE[wrk]}" ">=" 1
    r=$(ratio "${US[$m]}" "${US[wrk]}")
    echo "CPU per request ratio vs wrk:            $r (target <= 0.8: $(verdict "$r" "<=" 0.8))"
    table_row "$scheme CPU us per request vs wrk" "${US[$m]}" "${US[wrk]}" "<=" 0.8
    if [ -x "$OHA_BIN" ]; then
        r=$(ratio "${RATE[$m]}" "${RATE[oha]}")
        echo "requests/s ratio multiconn-client/oha:   $r"
        table_row "$scheme requests/s vs oha" "${RATE[$m]}" "${RATE[oha]}" ">=" 1
        r=$(ratio "${US[$m]}" "${US[oha]}")
        echo "CPU per request ratio vs oha:            $r (target <= 0.5: $(verdict "$r" "<=" 0.5))"
        table_row "$scheme CPU us per request vs oha" "${US[$m]}" "${US[oha]}" "<=" 0.5
    fi
}

echo "== load generators, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $PINNING"
echo "   commit $(git -C "$ROOT" rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for part in $PARTS; do
    case $part in
    echo) echo_part ;;
    http | https)
        if [ -z "${NGINX_PID:-}" ]; then
            command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
            [ -x "$NGINX_BIN" ] || die "nginx is not installed (apt-get install nginx)"
            HTTP_PORT=$(free_port)
            HTTPS_PORT=$(free_port)
            start_nginx "$HTTP_PORT" "$HTTPS_PORT"
        fi
        if [ "$part" = http ]; then http_part http "$HTTP_PORT"; else http_part https "$HTTPS_PORT"; fi
        ;;
    *) die "unknown part $part (echo, http, https)" ;;
    esac
done
