#!/usr/bin/env bash
# Every side-by-side comparison, one table: where multiconn stands against each peer.
#
#   benches/compare/all.sh                  # the full runs, ~15 min
#   QUICK=1 benches/compare/all.sh          # short rounds, under 3 minutes
#
# Runs, one after another (each alternates its own rounds between the servers it
# compares, so a slow spell of the machine touches both):
#   run.sh               echo vs tokio current_thread: CPU and user CPU per round trip,
#                        syscalls per message, KiB per idle connection
#   ../http_vs_nginx.sh  HTTP vs nginx (1 worker): requests per server-CPU-second
#   file_vs_nginx.sh     files vs nginx (sendfile on): CPU per GB, GB/s, 1 KiB requests
#   chat_vs_redis.sh     chat fan-out vs Redis PUBLISH: deliveries per server-CPU-second
#   ../http_vs_nginx.sh  TLS=1: HTTPS keep-alive vs nginx with the same certificate
#   generators.sh        the load generator vs wrk: CPU per request
#   flat_memory.sh       the load generator's RSS over a long run (120 s here; an hour
#                        when run on its own)
# Each writes its rows to a shared TABLE_OUT file; a script that is missing (or cannot
# write rows) gets a "not run" row. Each script's own output goes to LOG_DIR (default: a
# temporary directory, kept and named at the end). Prints the table with the command,
# commit and machine. Environment: QUICK, LOG_DIR, CARGO_TARGET_DIR.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
QUICK=${QUICK:-0}
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/multiconn-all.XXXXXX")}
mkdir -p "$LOG_DIR"
TABLE=$LOG_DIR/table.tsv
: >"$TABLE"
export TABLE_OUT=$TABLE

# Each comparison: name, script, the environment of every run, that of a quick run, the
# figures it gives.
COMPARISONS=(
    "echo|$HERE/run.sh||DURATION=2 ROUNDS=2 STRACE_SECS=1 IDLE=2000 IDLE_SECS=1 CALLGRIND=0|echo vs tokio"
    "http|$ROOT/benches/http_vs_nginx.sh||DURATION=3s ROUNDS=2 WARMUP=1s|HTTP vs nginx"
    "https|$ROOT/benches/http_vs_nginx.sh|TLS=1|DURATION=3s ROUNDS=2 WARMUP=1s|HTTPS vs nginx"
    "file|$HERE/file_vs_nginx.sh||QUICK=1|files vs nginx sendfile"
    "chat|$HERE/chat_vs_redis.sh||QUICK=1|chat fan-out vs Redis PUBLISH (100 and 1,000 members)"
    "generator|$HERE/generators.sh||QUICK=1 DURATION=2 ROUNDS=1|load generator vs wrk"
    "memory|$HERE/flat_memory.sh|DURATION=120 SAMPLE=5|DURATION=10 SAMPLE=1|load generator memory over a run"
)

(cd "$ROOT" && cargo build --release --quiet --bin multiconn-server --bin multiconn-client \
    --examples) || { echo "error: the release build failed" >&2; exit 1; }

started=$(date +%s)
for comparison in "${COMPARISONS[@]}"; do
    IFS='|' read -r name script always_env quick_env what <<<"$comparison"
    log=$LOG_DIR/$name.log
    if [ ! -f "$script" ]; then
        printf '%s\t-\t-\t-\t-\tnot run: script missing (%s)\n' "$what" "${script#"$ROOT"/}" >>"$TABLE"
        continue
    fi
    if ! grep -q TABLE_OUT "$script"; then
        printf '%s\t-\t-\t-\t-\tnot run: %s writes no table rows\n' "$what" "${script#"$ROOT"/}" >>"$TABLE"
        continue
    fi
    echo "== $what: ${script#"$ROOT"/} (log: $log)" >&2
    rows_before=$(wc -l <"$TABLE")
    env_args=()
    read -r -a env_args <<<"$always_env"
    if [ "$QUICK" = 1 ]; then
        read -r -a quick_args <<<"$quick_env"
        env_args+=("${quick_args[@]}")
    fi
    if ! env "${env_args[@]}" bash "$script" >"$log" 2>&1; then
        printf '%s\t-\t-\t-\t-\tFAILED: see %s\n' "$what" "$log" >>"$TABLE"
        tail -3 "$log" >&2
        continue
    fi
    [ "$(wc -l <"$TABLE")" -gt "$rows_before" ] ||
        printf '%s\t-\t-\t-\t-\tno rows: see %s\n' "$what" "$log" >>"$TABLE"
done
elapsed=$(($(date +%s) - started))

command="benches/compare/all.sh"
[ "$QUICK" = 1 ] && command="QUICK=1 $command"
echo
echo "\$ $command        # commit $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%F), $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), ${elapsed}s"
awk -F'\t' '
    BEGIN { printf "%-66s %10s %10s %7s  %-10s %s\n", "figure", "multiconn", "peer", "ratio", "target", "verdict" }
    { printf "%-66s %10s %10s %7s  %-10s %s\n", $1, $2, $3, $4, $5, $6 }' "$TABLE"
echo
echo "logs of each comparison: $LOG_DIR"
