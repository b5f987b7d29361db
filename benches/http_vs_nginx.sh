#!/usr/bin/env bash
# multiconn's HTTP responder against nginx (one worker), both serving the seed's page on
# loopback, measured with wrk in alternating rounds. Prints requests/s of each, the ratio,
# and each server's CPU seconds per 10k requests (utime+stime from /proc/PID/stat).
#
# Usage: benches/http_vs_nginx.sh   (TABLE_OUT=FILE: append the summary row for compare/all.sh)
#        TLS=1 benches/http_vs_nginx.sh   HTTPS keep-alive instead: both servers with the same
#              self-signed certificate (made here with openssl), wrk over https.
# Environment: DURATION=10s (per wrk run)  ROUNDS=3  CONNECTIONS=50  THREADS=1 (wrk threads)
#              WARMUP=2s (one unmeasured run against each server first; 0 to skip)
#              CPU_QUOTA=N (optional): give each server N% of one core (a cgroup-v1 CFS
#              quota), so that the server, not wrk, is the bottleneck and requests/s
#              compares the servers on the same CPU budget. Needs root and the cgroup
#              cpu controller at /sys/fs/cgroup/cpu.
# Needs wrk and nginx: installed with apt-get when missing and running as root; otherwise
# it says how. On a machine with 2 or more cores the server runs on core 0, wrk on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2s}
CPU_QUOTA=${CPU_QUOTA:-}
TLS=${TLS:-}
BODY='<h1>Hello,World!</h1>'

# --- tools ---------------------------------------------------------------------------
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
NGINX=$(find_nginx)
if ! command -v wrk >/dev/null 2>&1 || [ -z "$NGINX" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing wrk and nginx with apt-get..." >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
        NGINX=$(find_nginx)
    else
        echo "error: this benchmark needs wrk and nginx; install them with:" >&2
        echo "    sudo apt-get install wrk nginx    (Debian/Ubuntu)" >&2
        exit 1
    fi
fi
for tool in wrk curl python3 awk; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is needed" >&2; exit 1; }
done

echo "building the release server..." >&2
cargo build --release --quiet --bin multiconn-server
SERVER_BIN="${CARGO_TARGET_DIR:-target}/release/multiconn-server"

# --- pinning -------------------------------------------------------------------------
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    PIN_SERVER=(taskset -c 0)
    PIN_WRK=(taskset -c 1)
    PINNING="server on core 0, wrk on core 1"
else
    PIN_SERVER=()
    PIN_WRK=()
    PINNING="no pinning (fewer than 2 cores or no taskset)"
fi

# --- processes and cleanup -----------------------------------------------------------
WORK=$(mktemp -d)
OURS_PID=""
NGINX_PID=""
cleanup() {
    for pid in $OURS_PID $NGINX_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $OURS_PID $NGINX_PID; do
        wait "$pid" 2>/dev/null || true
    done
    for group in "${QUOTA_GROUPS[@]}"; do
        rmdir "$group" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
QUOTA_GROUPS=()

# limit_cpu NAME PID...: puts the processes in a cgroup of their own with CPU_QUOTA% of
# one core (each server gets its own budget; their threads and children share it).
limit_cpu() {
    local name=$1 group
    shift
    [ -n "$CPU_QUOTA" ] || return 0
    group=/sys/fs/cgroup/cpu/multiconn-bench-$name-$$
    mkdir "$group" || { echo "error: cannot create $group (root and cgroup v1 cpu needed)" >&2; exit 1; }
    QUOTA_GROUPS+=("$group")
    # A 10 ms period keeps throttling pauses short (they show in the latency).
    echo 10000 >"$group/cpu.cfs_period_us"
    echo $((CPU_QUOTA * 100)) >"$group/cpu.cfs_quota_us"
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*; do
            echo "${task##*/}" >"$group/tasks"
        done
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a GET answers, so no round measures start-up.
wait_ready() {
    local url=$1
    for _ in $(seq 100); do
        curl -s "${CURL_TLS[@]}" -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    echo "error: nothing answers at $url" >&2
    exit 1
}

# --- TLS: one certificate for both servers ------------------------------------------
SCHEME=http
OURS_TLS=()
NGINX_SSL=""
NGINX_TLS_CONF=""
CURL_TLS=()
if [ -n "$TLS" ]; then
    command -v openssl >/dev/null 2>&1 || { echo "error: TLS=1 needs openssl" >&2; exit 1; }
    # RSA 2048, as most sites still serve; both servers sign with it only at handshakes,
    # which wrk does once per connection: what is measured is the record layer.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    SCHEME=https
    OURS_TLS=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
    NGINX_SSL=" ssl"
    NGINX_TLS_CONF="ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"
    CURL_TLS=(--cacert "$WORK/cert.pem")
fi

OURS_PORT=$(free_port)
"${PIN_SERVER[@]}" "$SERVER_BIN" --protocol http "${OURS_TLS[@]}" 127.0.0.1 "$OURS_PORT" -q &
OURS_PID=$!
OURS_URL="$SCHEME://127.0.0.1:$OURS_PORT/"

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
# One worker, no access log: nginx at its leanest for a fixed page.
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    # nginx closes a keep-alive connection after 1000 requests by default; multiconn
    # never does. Raise it so both serve the same long-lived connections.
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT$NGINX_SSL;
        $NGINX_TLS_CONF
        location / {
            default_type text/html;
            return 200 '$BODY';
        }
    }
}
EOF
"${PIN_SERVER[@]}" "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx.conf" &
NGINX_PID=$!
NGINX_URL="$SCHEME://127.0.0.1:$NGINX_PORT/"

wait_ready "$OURS_URL"
wait_ready "$NGINX_URL"
for url in "$OURS_URL" "$NGINX_URL"; do
    got=$(curl -s "${CURL_TLS[@]}" --max-time 5 "$url")
    if [ "$got" != "$BODY" ]; then
        echo "error: $url answered '$got', not the page" >&2
        exit 1
    fi
done

# nginx's master only supervises; the worker serves. Its pid is the master's child.
NGINX_WORKER=""
for _ in $(seq 50); do
    NGINX_WORKER=$(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null | awk '{print $1}')
    [ -n "$NGINX_WORKER" ] && break
    sleep 0.1
done
[ -n "$NGINX_WORKER" ] || { echo "error: no nginx worker found" >&2; exit 1; }
limit_cpu multiconn "$OURS_PID"
limit_cpu nginx "$NGINX_PID" "$NGINX_WORKER"

# --- measuring -----------------------------------------------------------------------
TICKS=$(getconf CLK_TCK)
# utime+stime of a whole process (all its threads), in clock ticks. The command name in
# field 2 may hold spaces, so fields are counted after its closing parenthesis.
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# One wrk run; appends "name requests seconds cpu_seconds rps p99 round" to the results.
RESULTS="$WORK/results"
run() {
    local name=$1 url=$2 pid=$3 round=$4 before after out requests seconds rps p99
    before=$(cpu_ticks "$pid")
    out=$("${PIN_WRK[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
    after=$(cpu_ticks "$pid")
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        echo "warning: $name had errors:" >&2
        grep 'Non-2xx\|Socket errors' <<<"$out" >&2
    fi
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    seconds=$(awk '/requests in/ {v = $4; sub(/,$/, "", v); print v}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    # wrk prints "10.00s" or "1.00m"; convert to seconds.
    seconds=$(awk -v s="$seconds" 'BEGIN { u = substr(s, length(s)); v = s + 0;
        if (u == "m") v *= 60; else if (u == "h") v *= 3600; printf "%.3f", v }')
    local cpu
    cpu=$(awk -v a="$after" -v b="$before" -v t="$TICKS" 'BEGIN { printf "%.2f", (a - b) / t }')
    echo "$name $requests $seconds $cpu $rps $p99 $round" >>"$RESULTS"
    printf '  %-10s %10.0f req/s  p99 %-8s  cpu %5.2fs (%3.0f%% of a core)  %6.4f cpu-s/10k req\n' \
        "$name" "$rps" "$p99" "$cpu" "$(awk -v c="$cpu" -v s="$seconds" 'BEGIN { print c / s * 100 }')" \
        "$(awk -v c="$cpu" -v r="$requests" 'BEGIN { printf "%.4f", c / r * 10000 }')"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION $SCHEME keep-alive, $ROUNDS rounds, $PINNING, $(nproc) cores${CPU_QUOTA:+, each server limited to $CPU_QUOTA% of a core}"
echo "multiconn: $SERVER_BIN (pid $OURS_PID); nginx: $($NGINX -v 2>&1 | sed 's/.*version: //') (worker pid $NGINX_WORKER)"
if [ "$WARMUP" != 0 ]; then
    "${PIN_WRK[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$OURS_URL" >/dev/null
    "${PIN_WRK[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$NGINX_URL" >/dev/null
fi
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    echo "round $round"
    # Alternate who goes first, so drift in the machine's load favours neither.
    if [ $((round % 2)) = 1 ]; then
        run multiconn "$OURS_URL" "$OURS_PID" "$round"
        run nginx "$NGINX_URL" "$NGINX_WORKER" "$round"
    else
        run nginx "$NGINX_URL" "$NGINX_WORKER" "$round"
        run multiconn "$OURS_URL" "$OURS_PID" "$round"
    fi
done

# --- summary -------------------------------------------------------------------------
awk '
    { req[$1] += $2; secs[$1] += $3; cpu[$1] += $4 }
    END {
        print "summary (all rounds)"
        for (name in req) {
            rps[name] = req[name] / secs[name]
            per10k[name] = cpu[name] / req[name] * 10000
            busy[name] = cpu[name] / secs[name] * 100
            printf "  %-10s %10.0f req/s  %6.4f cpu-s/10k req  (%d requests, %.2f cpu-s, %.0f%% of a core)\n",
                name, rps[name], per10k[name], req[name], cpu[name], busy[name]
        }
        printf "  ratio multiconn/nginx: %.2fx requests/s, %.2fx cpu per request\n",
            rps["multiconn"] / rps["nginx"], per10k["multiconn"] / per10k["nginx"]
        printf "  requests per server-CPU-second, multiconn/nginx: %.3fx (ratio of sums)\n",
            per10k["nginx"] / per10k["multiconn"]
    }' quota="$CPU_QUOTA" "$RESULTS"
# Each round on its own: multiconn's requests per CPU-second over nginx's, and their median
# (robust to one round disturbed by other load on the machine).
awk '
    { req[$7, $1] = $2; cpu[$7, $1] = $4; if ($7 > rounds) rounds = $7 }
    END {
        n = 0
        for (r = 1; r <= rounds; r++) {
            if (cpu[r, "multiconn"] > 0 && cpu[r, "nginx"] > 0 && req[r, "nginx"] > 0) {
                ratio[++n] = (req[r, "multiconn"] / cpu[r, "multiconn"]) / (req[r, "nginx"] / cpu[r, "nginx"])
                line = line sprintf(" %.3f", ratio[n])
            }
        }
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (ratio[j] < ratio[i]) { t = ratio[i]; ratio[i] = ratio[j]; ratio[j] = t }
        median = (n % 2) ? ratio[(n + 1) / 2] : (ratio[n / 2] + ratio[n / 2 + 1]) / 2
        printf "  per round (requests per server-CPU-second, multiconn/nginx):%s; median %.3fx\n", line, median
    }' "$RESULTS"
awk '
    { busy[$1] += $4; secs[$1] += $3 }
    END {
        for (name in busy) busy[name] = busy[name] / secs[name] * 100
        # A server well below a full core was not the bottleneck: wrk (or the machine) was,
        # and requests/s then says little; CPU per request still compares the servers.
        if (quota == "" && busy["multiconn"] < 90 && busy["nginx"] < 90)
            print "  note: neither server used a full core: requests/s is bounded by wrk or the machine"
    }' quota="$CPU_QUOTA" "$RESULTS"

# The row benches/compare/all.sh puts in its table: requests per server-CPU-second.
if [ -n "${TABLE_OUT:-}" ]; then
    awk -v quota="$CPU_QUOTA" -v tls="$TLS" '
        { req[$1] += $2; cpu[$1] += $4 }
        END {
            m = req["multiconn"] / cpu["multiconn"]; n = req["nginx"] / cpu["nginx"]
            r = m / n
            target = (tls == "" ? 1.3 : 1.1)
            printf "%s: requests per server-CPU-second (wrk -c%s, one page%s)\t%.0f\t%.0f\t%.3f\t>= %s\t%s\n",
                (tls == "" ? "HTTP" : "HTTPS keep-alive"), conns, (quota == "" ? "" : ", " quota "% quota"),
                m, n, r, target, (r >= target ? "ok" : "MISSED")
        }' conns="$CONNECTIONS" "$RESULTS" >>"$TABLE_OUT"
fi
