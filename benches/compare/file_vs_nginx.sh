#!/usr/bin/env bash
# Files against nginx with `sendfile on` (one worker): server CPU per GB and throughput,
# in alternating rounds.
#
#   benches/compare/file_vs_nginx.sh                 # defaults: ROUNDS=3, ~1 min
#   QUICK=1 benches/compare/file_vs_nginx.sh         # ROUNDS=2, smaller files
#
# What it does:
# - builds (release) multiconn-server and multiconn-client; makes FILE_MB (200) and
#   STATIC_MB (100) MiB of random bytes and a 1 KiB file in a temporary root, read once
#   so every round serves them from the page cache;
# - starts nginx (one worker, `sendfile on`, `access_log off`) with a generated
#   configuration on a free loopback port, and two multiconn servers on the same root:
#   `--protocol file` and `--protocol http --root`, all pinned to core 0 (clients on
#   core 1); every one is stopped by its pid on exit;
# - ROUNDS alternating rounds of DOWNLOADS (3) downloads each: the file protocol with
#   multiconn-client, nginx and multiconn's HTTP with curl (`-o /dev/null`, the same
#   client for both), the big file; then the STATIC_MB file over HTTP with curl; then
#   wrk (-t1 -c50, WRK_SECS) on the 1 KiB file;
# - the server's CPU from /proc/PID/task/*/schedstat (nanoseconds, all threads; nginx:
#   its worker), per GB sent and per request; wall time per round for GB/s.
# TABLE_OUT=FILE appends the rows benches/compare/all.sh prints. Environment: ROUNDS,
# DOWNLOADS, FILE_MB, STATIC_MB, WRK_SECS, QUICK, CARGO_TARGET_DIR.
set -euo pipefail

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-2} FILE_MB=${FILE_MB:-100} STATIC_MB=${STATIC_MB:-100} WRK_SECS=${WRK_SECS:-2}
fi
ROUNDS=${ROUNDS:-3}
DOWNLOADS=${DOWNLOADS:-3}
FILE_MB=${FILE_MB:-200}
STATIC_MB=${STATIC_MB:-100}
WRK_SECS=${WRK_SECS:-5}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
for tool in curl wrk; do
    command -v "$tool" >/dev/null || die "$tool is needed (apt-get install $tool)"
done
[ -n "$NGINX" ] || die "nginx is needed (apt-get install nginx)"
(cd "$ROOT" && cargo build --release --quiet --bin multiconn-server --bin multiconn-client)
CLIENT_BIN=$RELEASE_DIR/multiconn-client

FILES=$WORK_DIR/files
mkdir -p "$FILES" "$WORK_DIR/nginx"
head -c $((FILE_MB * 1024 * 1024)) /dev/urandom >"$FILES/big.bin"
head -c $((STATIC_MB * 1024 * 1024)) /dev/urandom >"$FILES/static.bin"
head -c 1024 /dev/urandom >"$FILES/small.bin"
cat "$FILES"/* >/dev/null
# nginx's worker runs as an unprivileged user: the root must be readable to it.
chmod 755 "$WORK_DIR" "$FILES"
chmod 644 "$FILES"/*

NGINX_PORT=$(free_port)
cat >"$WORK_DIR/nginx.conf" <<EOF
# One worker, sendfile, no access log: nginx at its leanest for static files.
worker_processes 1;
daemon off;
pid $WORK_DIR/nginx.pid;
error_log $WORK_DIR/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    client_body_temp_path $WORK_DIR/nginx/body;
    proxy_temp_path $WORK_DIR/nginx/proxy;
    fastcgi_temp_path $WORK_DIR/nginx/fastcgi;
    uwsgi_temp_path $WORK_DIR/nginx/uwsgi;
    scgi_temp_path $WORK_DIR/nginx/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $FILES;
    }
}
EOF
"${PIN_SERVER[@]}" "$NGINX" -p "$WORK_DIR/nginx" -e "$WORK_DIR/nginx/error.log" -c "$WORK_DIR/nginx.conf" &
NGINX_PID=$!
CHILD_PIDS+=("$NGINX_PID")
wait_listening "$NGINX_PID" "$NGINX_PORT" || die "nginx is not listening on $NGINX_PORT"
NGINX_WORKER=""
for _ in $(seq 50); do
    NGINX_WORKER=$(awk '{ print $1 }' "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null || true)
    [ -n "$NGINX_WORKER" ] && break
    sleep 0.1
done
[ -n "$NGINX_WORKER" ] || die "no nginx worker found"

FILE_PORT=$(free_port)
"${PIN_SERVER[@]}" "$SERVER_BIN" -q --protocol file --root "$FILES" 127.0.0.1 "$FILE_PORT" &
FILE_PID=$!
CHILD_PIDS+=("$FILE_PID")
wait_listening "$FILE_PID" "$FILE_PORT" || die "the file server is not listening"
HTTP_PORT=$(free_port)
"${PIN_SERVER[@]}" "$SERVER_BIN" -q --protocol http --root "$FILES" 127.0.0.1 "$HTTP_PORT" &
HTTP_PID=$!
CHILD_PIDS+=("$HTTP_PID")
wait_listening "$HTTP_PID" "$HTTP_PORT" || die "the HTTP server is not listening"

for url in "http://127.0.0.1:$NGINX_PORT" "http://127.0.0.1:$HTTP_PORT"; do
    cmp -s <(curl -s "$url/small.bin") "$FILES/small.bin" || die "$url/small.bin is not the file"
done

# download KIND FILE: one download of FILE from KIND's server on core 1.
download() {
    case $1 in
    file) "${PIN_GENERATOR[@]}" "$CLIENT_BIN" 127.0.0.1 "$FILE_PORT" 1 --protocol file --path "$2" >/dev/null ;;
    nginx) "${PIN_GENERATOR[@]}" curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/$2" ;;
    http) "${PIN_GENERATOR[@]}" curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/$2" ;;
    esac
}

server_pid() {
    case $1 in
    file) echo "$FILE_PID" ;;
    nginx) echo "$NGINX_WORKER" ;;
    http) echo "$HTTP_PID" ;;
    esac
}

declare -A NS WALL
# transfer_round KIND FILE MB: DOWNLOADS downloads; adds the server's CPU ns and the wall ns.
transfer_round() {
    local kind=$1 file=$2 mb=$3 pid before after start end
    pid=$(server_pid "$kind")
    before=$(cpu_ns "$pid")
    start=$(date +%s%N)
    for _ in $(seq "$DOWNLOADS"); do
        download "$kind" "$file"
    done
    end=$(date +%s%N)
    after=$(cpu_ns "$pid")
    NS[$kind,$file]=$(( ${NS[$kind,$file]:-0} + after - before ))
    WALL[$kind,$file]=$(( ${WALL[$kind,$file]:-0} + end - start ))
    printf "round %d %-6s %-10s %6.1f ms CPU per GB  %5.2f GB/s\n" "$round" "$kind" "$file" \
        "$(awk -v n=$((after - before)) -v mb="$((mb * DOWNLOADS))" 'BEGIN { print n / 1e6 / (mb * 1.048576e-3) }')" \
        "$(awk -v w=$((end - start)) -v mb="$((mb * DOWNLOADS))" 'BEGIN { print mb * 1.048576e-3 / (w / 1e9) }')"
}

declare -A REQS
# wrk_round KIND: wrk on the 1 KiB file; adds requests and the server's CPU ns.
wrk_round() {
    local kind=$1 port pid before after out requests
    port=$([ "$kind" = nginx ] && echo "$NGINX_PORT" || echo "$HTTP_PORT")
    pid=$(server_pid "$kind")
    before=$(cpu_ns "$pid")
    out=$("${PIN_GENERATOR[@]}" wrk -t1 -c50 -d"${WRK_SECS}s" "http://127.0.0.1:$port/small.bin")
    after=$(cpu_ns "$pid")
    grep -q 'Non-2xx\|Socket errors' <<<"$out" && echo "warning: $kind: $(grep 'Non-2xx\|Socket errors' <<<"$out")" >&2
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    NS[$kind,small]=$(( ${NS[$kind,small]:-0} + after - before ))
    REQS[$kind]=$(( ${REQS[$kind]:-0} + requests ))
    printf "round %d %-6s small.bin  %8.0f requests per server-CPU-second (%d requests)\n" "$round" "$kind" \
        "$(awk -v r="$requests" -v n=$((after - before)) 'BEGIN { print r / (n / 1e9) }')" "$requests"
}

echo "== files against nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //') (sendfile on, 1 worker)"
echo "   $(date -u +%FT%TZ), $(nproc) cores, $PINNING, commit $(git -C "$ROOT" rev-parse --short HEAD)"
echo "   ROUNDS=$ROUNDS DOWNLOADS=$DOWNLOADS FILE_MB=$FILE_MB STATIC_MB=$STATIC_MB WRK_SECS=$WRK_SECS"
download file small.bin && download nginx small.bin && download http small.bin # warm-up
for round in $(seq "$ROUNDS"); do
    # Alternate who goes first, so drift in the machine's speed favours nobody.
    order=(file nginx http)
    [ $((round % 2)) = 0 ] && order=(http nginx file)
    for kind in "${order[@]}"; do
        transfer_round "$kind" big.bin "$FILE_MB"
    done
    for kind in nginx http; do
        transfer_round "$kind" static.bin "$STATIC_MB"
    done
    for kind in nginx http; do
        wrk_round "$kind"
    done
done

# per_gb KIND FILE MB: server CPU ms per GB over all rounds; gbps: GB/s.
per_gb() {
    awk -v n="${NS[$1,$2]}" -v mb="$(($3 * DOWNLOADS * ROUNDS))" 'BEGIN { printf "%.1f", n / 1e6 / (mb * 1.048576e-3) }'
}
gbps() {
    awk -v w="${WALL[$1,$2]}" -v mb="$(($3 * DOWNLOADS * ROUNDS))" 'BEGIN { printf "%.2f", mb * 1.048576e-3 / (w / 1e9) }'
}
per_cpu_s() {
    awk -v r="${REQS[$1]}" -v n="${NS[$1,small]}" 'BEGIN { printf "%.0f", r / (n / 1e9) }'
}

echo
echo "== summary (all rounds)"
row() { printf "%-62s %10s %10s %7s  %-7s %s\n" "$@"; }
row "" multiconn nginx ratio target verdict
emit() {
    row "$@"
    table_row "$@"
}
m=$(per_gb file big.bin "$FILE_MB") n=$(per_gb nginx big.bin "$FILE_MB") r=$(ratio "$m" "$n")
emit "file: server CPU ms per GB (${FILE_MB} MiB; file protocol / curl)" "$m" "$n" "$r" "<= 0.8" "$(verdict "$r" "<=" 0.8)"
m=$(gbps file big.bin "$FILE_MB") n=$(gbps nginx big.bin "$FILE_MB") r=$(ratio "$m" "$n")
emit "file: GB/s (${FILE_MB} MiB; multiconn-client / curl)" "$m" "$n" "$r" ">= 1.0" "$(verdict "$r" ">=" 1.0)"
m=$(per_gb http big.bin "$FILE_MB") n=$(per_gb nginx big.bin "$FILE_MB") r=$(ratio "$m" "$n")
emit "file: server CPU ms per GB (${FILE_MB} MiB; HTTP --root, curl both)" "$m" "$n" "$r" "<= 0.8" "$(verdict "$r" "<=" 0.8)"
m=$(gbps http big.bin "$FILE_MB") n=$(gbps nginx big.bin "$FILE_MB") r=$(ratio "$m" "$n")
emit "file: GB/s (${FILE_MB} MiB; HTTP --root, curl both)" "$m" "$n" "$r" ">= 1.0" "$(verdict "$r" ">=" 1.0)"
m=$(per_gb http static.bin "$STATIC_MB") n=$(per_gb nginx static.bin "$STATIC_MB") r=$(ratio "$m" "$n")
emit "HTTP static ${STATIC_MB} MiB: server CPU ms per GB (curl)" "$m" "$n" "$r" "<= 0.8" "$(verdict "$r" "<=" 0.8)"
m=$(per_cpu_s http) n=$(per_cpu_s nginx) r=$(ratio "$m" "$n")
emit "HTTP static 1 KiB: requests per server-CPU-second (wrk -c50)" "$m" "$n" "$r" "(none)" "-"
