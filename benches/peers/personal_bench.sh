#!/usr/bin/env bash
# Personalization (issue 15) over the wire, on `tidal serve` (release build):
#
#   benches/peers/personal_bench.sh
#
# 1. `loadgen --workload rank-setup --personal`: the data set of retrieve_bench.sh (1 M
#    items, 10 M view/like/skip events by users 1..1 M ending at AT), with `view … MARKS
#    seen` and `like … MARKS liked AFFINITY 0.15`, so the events fill the users' marks
#    and their affinities as they are loaded. Relationships `follows` and `blocks` FROM
#    users TO creators; the benchmark user USER blocks the BLOCKS creators with the most
#    items (so FILTER not blocks removes real candidates) and has affinities from its
#    own likes plus AFFINITY_LIKES more.
# 2. RETRIEVE over 1 M items, the same profile without and with personalization:
#      base:     RETRIEVE items USING PROFILE trending LIMIT 50 AT …
#      personal: RETRIEVE items FOR USER U USING PROFILE for_you
#                FILTER unseen, not blocks LIMIT 50 AT …
#    where for_you is trending's SCORE + 0.3 * affinity() (same DIVERSITY).
# 3. EDGE_USERS × EDGES_PER_USER `follows` edges (10 M) loaded with COPY through psql:
#    load rate, the server's RSS and the data directory before and after (and after a
#    restart), then `SELECT dst FROM follows WHERE src = …` and RETRIEVE … FILTER follows
#    for one user.
# Server CPU per query is reported beside each latency (client and server share the
# machine's two cores).
#
# Environment (defaults in brackets):
#   ITEMS [1000000] EVENTS [10000000] CREATORS [50000] SPAN_HOURS [48] SEED [1]
#   RUNS [100] EDGE_USERS [100000] EDGES_PER_USER [100] BLOCKS [20] AFFINITY_LIKES [40]
#   TIDAL_PORT [5433] QUIET_CORES [0.3] QUIET_WAIT [900]
#   WORK [mktemp -d under /tmp]  removed unless KEEP=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS="$ROOT/benches/peers"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tidal-target}
ITEMS=${ITEMS:-1000000}
EVENTS=${EVENTS:-10000000}
CREATORS=${CREATORS:-50000}
SPAN_HOURS=${SPAN_HOURS:-48}
SEED=${SEED:-1}
RUNS=${RUNS:-100}
EDGE_USERS=${EDGE_USERS:-100000}
EDGES_PER_USER=${EDGES_PER_USER:-100}
BLOCKS=${BLOCKS:-20}
AFFINITY_LIKES=${AFFINITY_LIKES:-40}
TIDAL_PORT=${TIDAL_PORT:-5433}
QUIET_CORES=${QUIET_CORES:-0.3}
QUIET_WAIT=${QUIET_WAIT:-900}
KEEP=${KEEP:-0}
TICK=$(getconf CLK_TCK)
# log, free_port, wait_ready, server_ticks, measure; machine_ticks, wait_quiet.
. "$PEERS/measure.sh"

WORK=${WORK:-$(mktemp -d /tmp/personal-bench.XXXXXX)}
mkdir -p "$WORK/bin" "$WORK/edges"
RESULTS="$WORK/results.txt"
: >"$RESULTS"

AT_S=$(($(date -u +%s) / 3600 * 3600 - 1))
AT="$(date -u -d "@$AT_S" '+%Y-%m-%d %H:%M:%S').999999"
log "instant AT = $AT UTC"

log "building tidal-server and loadgen (release)"
(cd "$ROOT" && cargo build --release -q -p tidal-server --bin tidal \
    && cargo build --release -q -p tidal-benches --bin loadgen)
cp "$CARGO_TARGET_DIR/release/tidal" "$CARGO_TARGET_DIR/release/loadgen" "$WORK/bin/"
TIDAL="$WORK/bin/tidal"
LOADGEN="$WORK/bin/loadgen"
log "tidal built from $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo ' + uncommitted changes under crates/')"

TIDAL_PORT=$(free_port "$TIDAL_PORT")
URL="postgresql://tidal@127.0.0.1:$TIDAL_PORT/tidal"
TIDAL_PID=""
SERVER_PID=""
start_tidal() {
    "$TIDAL" serve --data-dir "$WORK/tidal" --listen "127.0.0.1:$TIDAL_PORT" \
        >>"$WORK/tidal.log" 2>&1 &
    TIDAL_PID=$!
    SERVER_PID=$TIDAL_PID
    wait_ready "$URL"
}
stop_tidal() {
    if [[ -n "$TIDAL_PID" ]] && kill -0 "$TIDAL_PID" 2>/dev/null; then
        kill -TERM "$TIDAL_PID"
        wait "$TIDAL_PID" || true
    fi
    TIDAL_PID=""
}
cleanup() {
    stop_tidal
    if [[ "$KEEP" != 1 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$TIDAL_PID/status"; }
dir_kib() { du -sk "$WORK/tidal" | cut -f1; }
q() { psql "$URL" -Atqc "$1"; }

log "machine: $(nproc) cores; $(free -g | awk '/^Mem/ { print $2 " GiB RAM" }'); $(uname -r)"
start_tidal
measure tidal "$URL" tidal --workload rank-setup --personal --events "$EVENTS" \
    --creators "$CREATORS" --span-hours "$SPAN_HOURS" --seed "$SEED" --at "$AT" \
    --preload-chunk 100000 --copy-streams 2

# The benchmark user: the one with the most views (the most marks to filter out).
USER_ID=$(q "SELECT user_id FROM signals WHERE signal = 'view' GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1")
log "benchmark user $USER_ID: $(q "SELECT count(*) FROM signals WHERE signal = 'view' AND user_id = $USER_ID") views"
q "CREATE RELATIONSHIP follows FROM users TO creators"
q "CREATE RELATIONSHIP blocks FROM users TO creators"
q "INSERT INTO blocks (src, dst) SELECT $USER_ID, creator_id FROM items GROUP BY creator_id ORDER BY count(*) DESC, creator_id LIMIT $BLOCKS"
# More likes by the user, on items of a few creators, a day before AT: affinities.
DAY_BEFORE_US=$(((AT_S - 86400) * 1000000))
q "INSERT INTO signals (signal, entity_id, user_id, ts) SELECT 'like', id, $USER_ID, to_timestamp_micros($DAY_BEFORE_US + id) FROM items WHERE creator_id BETWEEN 100 AND 110 ORDER BY id LIMIT $AFFINITY_LIKES"
log "user $USER_ID: $(q "SELECT count(*) FROM affinities WHERE user_id = $USER_ID") affinities, $(q "SELECT count(*) FROM blocks WHERE src = $USER_ID") blocks"
q "CREATE PROFILE for_you ON items (SCORE velocity('view', '1h') + 2 * velocity('like', '24h') - decay('skip') + 0.3 * affinity(), DIVERSITY max_per_creator 2)"

BASE="RETRIEVE items USING PROFILE trending LIMIT 50 AT '$AT'"
PERSONAL="RETRIEVE items FOR USER $USER_ID USING PROFILE for_you FILTER unseen, not blocks LIMIT 50 AT '$AT'"
psql "$URL" -c "EXPLAIN ANALYZE $PERSONAL" >"$WORK/explain_personal.txt" 2>&1 || true
for round in 1 2; do
    measure tidal "$URL" tidal --workload query --label "base_r$round" --protocol simple \
        --clients 1 --runs "$RUNS" --expect-rows 50 --sql "$BASE"
    measure tidal "$URL" tidal --workload query --label "personal_r$round" --protocol simple \
        --clients 1 --runs "$RUNS" --expect-rows 50 --sql "$PERSONAL"
done
# The personal page must differ from the plain one only by the user's filters/affinity.
log "personal page: $(psql "$URL" -Atc "$PERSONAL" | awk -F'|' '{ print $2 }' | head -10 | tr '\n' ' ')"

log "generating $EDGE_USERS x $EDGES_PER_USER follows edges"
awk -v users="$EDGE_USERS" -v per="$EDGES_PER_USER" -v creators="$CREATORS" -v dir="$WORK/edges" 'BEGIN {
    srand(1); f = 0; n = 0
    for (u = 1; u <= users; u++) {
        if (n % 1000000 == 0) { f++; out = dir "/" f ".csv"; printf "" > out }
        for (k = 0; k < per; k++) printf "%d,%d\n", u, int(rand() * creators) >> out
        n += per
    }
}'
rss0=$(rss_kib)
dir0=$(dir_kib)
t0=$(date +%s.%N)
c0=$(server_ticks)
for f in "$WORK"/edges/*.csv; do
    psql "$URL" -qc "COPY follows (src, dst) FROM STDIN (FORMAT csv)" <"$f"
done
t1=$(date +%s.%N)
c1=$(server_ticks)
rss1=$(rss_kib)
edges=$(q "SELECT count(*) FROM follows")
sleep 5
dir1=$(dir_kib)
stop_tidal
start_tidal
sleep 2
rss2=$(rss_kib)
dir2=$(dir_kib)
load_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
cpu_s=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" 'BEGIN { printf "%.1f", (b - a) / t }')
log "edges: $edges distinct loaded in $load_s s ($(awk -v n="$edges" -v s="$load_s" 'BEGIN { printf "%.0f", n / s }')/s, server CPU $cpu_s s)"
log "RSS $rss0 -> $rss1 KiB while loading, $rss2 KiB after a restart; data dir $dir0 -> $dir1 KiB ($dir2 after the restart)"
echo "system=tidal workload=edges edges=$edges load_s=$load_s server_cpu_s=$cpu_s rss0_kib=$rss0 rss1_kib=$rss1 rss_restart_kib=$rss2 dir0_kib=$dir0 dir1_kib=$dir1 dir_restart_kib=$dir2 rss_bytes_per_edge=$(awk -v a="$rss0" -v b="$rss1" -v n="$edges" 'BEGIN { printf "%.2f", (b - a) * 1024 / n }') disk_bytes_per_edge=$(awk -v a="$dir0" -v b="$dir2" -v n="$edges" 'BEGIN { printf "%.2f", (b - a) * 1024 / n }')" >>"$RESULTS"

FOLLOWER=$((EDGE_USERS / 2))
measure tidal "$URL" tidal --workload query --label follows_select --protocol simple \
    --clients 1 --runs "$RUNS" --sql "SELECT dst FROM follows WHERE src = $FOLLOWER"
measure tidal "$URL" tidal --workload query --label follows_filter --protocol simple \
    --clients 1 --runs "$RUNS" --sql "RETRIEVE items FOR USER $FOLLOWER USING PROFILE trending FILTER follows LIMIT 50 AT '$AT'"
measure tidal "$URL" tidal --workload query --label base_after_restart --protocol simple \
    --clients 1 --runs "$RUNS" --expect-rows 50 --sql "$BASE"
measure tidal "$URL" tidal --workload query --label personal_after_restart --protocol simple \
    --clients 1 --runs "$RUNS" --expect-rows 50 --sql "$PERSONAL"
cat "$WORK/explain_personal.txt" >&2
log "results:"
cat "$RESULTS"
