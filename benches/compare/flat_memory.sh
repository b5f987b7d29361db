#!/usr/bin/env bash
# The load generator's memory over a long run (issue 15): multiconn-client keeps every
# measured second as a compressed histogram (for --json intervals, --hdr-log, --report),
# never the samples, and keeps them in an unlinked temporary file rather than in memory
# (src/client/series.rs), so its RSS should stay flat however long it runs. This runs it for
# DURATION (default an hour: 3,600 intervals) against one multiconn-server echo, CONNS
# (50) connections at RATE (2,000) requests/s (an open loop: light enough to run beside
# other work, and every second holds a full histogram), with --json --hdr-log on, and
# samples the generator's VmRSS every SAMPLE seconds.
#
#   benches/compare/flat_memory.sh                        # an hour
#   DURATION=120 SAMPLE=5 benches/compare/flat_memory.sh   # a quick look
#
# Prints the samples, then RSS after the first minute, the peak, the growth per hour
# from a least-squares fit of the samples after the first minute, the intervals the
# report holds, and the verdict against the target (peak under 20 MiB). With TABLE_OUT,
# appends that row for benches/compare/all.sh.
set -euo pipefail

DURATION=${DURATION:-3600}
CONNS=${CONNS:-50}
RATE=${RATE:-2000}
SAMPLE=${SAMPLE:-10}
TARGET_KIB=$((20 * 1024))

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$ROOT" && cargo build --release --quiet --bin multiconn-server --bin multiconn-client)

PORT=$(free_port)
start_server multiconn "$PORT"

"${PIN_GENERATOR[@]}" "$RELEASE_DIR/multiconn-client" 127.0.0.1 "$PORT" "$CONNS" \
    --duration "${DURATION}s" --warmup 0 --rate "$RATE" --json \
    --hdr-log "$WORK_DIR/run.hlog" >"$WORK_DIR/report.json" 2>"$WORK_DIR/client.err" &
CLIENT_PID=$!
CHILD_PIDS+=("$CLIENT_PID")

echo "multiconn-client: $CONNS connections, $RATE req/s, ${DURATION}s; $PINNING"
printf '%8s %10s\n' "t (s)" "RSS (KiB)"
: >"$WORK_DIR/samples"
started=$SECONDS
while kill -0 "$CLIENT_PID" 2>/dev/null; do
    rss=$(rss_kib "$CLIENT_PID" 2>/dev/null) || break
    [ -n "$rss" ] || break
    t=$((SECONDS - started))
    printf '%8d %10d\n' "$t" "$rss"
    echo "$t $rss" >>"$WORK_DIR/samples"
    sleep "$SAMPLE"
done
wait "$CLIENT_PID" || die "the generator failed: $(cat "$WORK_DIR/client.err")"

summary=$(python3 - "$WORK_DIR/samples" "$WORK_DIR/report.json" "$TARGET_KIB" <<'EOF'
import json, sys
samples = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
report = json.load(open(sys.argv[2]))
target = int(sys.argv[3])
late = [(t, r) for t, r in samples if t >= 60]
# A fit needs a few samples past the first minute's start-up, or it measures start-up.
fitted = len(late) >= 3
late = late or samples
first = late[0][1]
peak = max(r for _, r in samples)
n = len(late)
mt = sum(t for t, _ in late) / n
mr = sum(r for _, r in late) / n
var = sum((t - mt) ** 2 for t, _ in late)
slope = sum((t - mt) * (r - mr) for t, r in late) / var if var else 0.0
print(f"requests completed {report['requests']['completed']}, intervals in the report "
      f"{len(report['intervals'])}")
print(f"RSS after the first minute {first} KiB, at the end {samples[-1][1]} KiB, peak {peak} KiB")
growth = f"{slope * 3600:.0f}" if fitted else "n/a"
if fitted:
    print(f"growth after the first minute: {growth} KiB per hour (least squares over {n} samples)")
else:
    print("growth: not fitted (fewer than 3 samples after the first minute; run 2 minutes or more)")
verdict = "ok" if peak < target else "MISSED"
print(f"peak RSS {peak / 1024:.1f} MiB, target < {target / 1024:.0f} MiB: {verdict}")
print(f"ROW\t{peak / 1024:.1f}\t{growth}\t{verdict}")
EOF
)
echo "$summary" | grep -v '^ROW'
IFS=$'\t' read -r _ peak_mib growth verdict <<<"$(echo "$summary" | grep '^ROW')"
table_row "generator: peak RSS MiB, ${DURATION}s run, $CONNS connections (growth $growth KiB/h)" \
    "$peak_mib" "-" "-" "< 20 MiB" "$verdict"
