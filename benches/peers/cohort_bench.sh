#!/usr/bin/env bash
# Cohorts (issue 16) over the wire, on `tidal serve` (release build):
#
#   benches/peers/cohort_bench.sh
#
# The data set of retrieve_bench.sh (1 M items, 10 M view/like/skip events by users
# 1..1 M ending at AT) plus `loadgen --cohorts`: a users table of those 1 M users with
# region (50 values, zipf) and age_group (8 values), loaded before the events. Three
# fresh loads of the same events:
#   none     the users table, no COHORTS                       (ingest baseline)
#   all      COHORTS (region, age_group, (region, age_group))  (ingest cost; queries;
#                                                                memory per pair)
#   singles  COHORTS (region, age_group)                       (the estimated pair)
# Queries (RUNS each, one client, simple protocol), over 1 M items:
#   global   RETRIEVE items USING PROFILE trending LIMIT 50 AT …
#   region   … WITHIN COHORT region = 'r00' (the largest region) and 'r20'
#   pair     … WITHIN COHORT region = 'r00' AND age_group = 'a3' (exact composite on
#            `all`, the independence estimate on `singles`)
# and the peers' question — the 50 most viewed items of the last 24 h in region r00 —
# on tidal (profile views24), Redis (ZINCRBY per event per cohort key, ZUNIONSTORE over
# hour keys) and DuckDB (raw events joined to users), see cohort_peers.py.
# Server CPU is reported beside every figure (client and server share two cores).
#
# Environment (defaults in brackets):
#   ITEMS [1000000] EVENTS [10000000] CREATORS [50000] SPAN_HOURS [48] SEED [1]
#   RUNS [100] TIDAL_PORT [5433] REDIS_PORT [6390] QUIET_CORES [0.3] QUIET_WAIT [900]
#   PHASES ["none all peers singles"]  which of the loads (and the peers) to run
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
TIDAL_PORT=${TIDAL_PORT:-5433}
REDIS_PORT=${REDIS_PORT:-6390}
QUIET_CORES=${QUIET_CORES:-0.3}
QUIET_WAIT=${QUIET_WAIT:-900}
KEEP=${KEEP:-0}
PHASES=${PHASES:-"none all peers singles"}
TICK=$(getconf CLK_TCK)
has() { [[ " $PHASES " == *" $1 "* ]]; }
. "$PEERS/measure.sh"

WORK=${WORK:-$(mktemp -d /tmp/cohort-bench.XXXXXX)}
mkdir -p "$WORK/bin" "$WORK/data"
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
REDIS_PID=""
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
    if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null || true; fi
    if [[ "$KEEP" != 1 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$TIDAL_PID/status"; }
q() { psql "$URL" -Atqc "$1"; }

log "machine: $(nproc) cores; $(free -g | awk '/^Mem/ { print $2 " GiB RAM" }'); $(uname -r)"

load() { # variant
    stop_tidal
    rm -rf "$WORK/tidal"
    start_tidal
    local export=()
    if [[ $1 == all ]]; then export=(--export-dir "$WORK/data"); fi
    measure "tidal_$1" "$URL" tidal --workload rank-setup --cohorts --cohort-signals "$1" \
        --events "$EVENTS" --creators "$CREATORS" --span-hours "$SPAN_HOURS" --seed "$SEED" \
        --at "$AT" --preload-chunk 100000 --copy-streams 2 "${export[@]}"
    echo "system=tidal_$1 workload=rss rss_kib=$(rss_kib)" >>"$RESULTS"
}

queries() { # variant
    local v=$1
    q "CREATE PROFILE views24 ON items (SCORE window_count('view', '24h'))"
    local global="RETRIEVE items USING PROFILE trending LIMIT 50 AT '$AT'"
    local pair="RETRIEVE items USING PROFILE trending WITHIN COHORT region = 'r00' AND age_group = 'a3' LIMIT 50 AT '$AT'"
    psql "$URL" -c "EXPLAIN $pair" >"$WORK/explain_pair_$v.txt" 2>&1 || true
    for round in 1 2; do
        measure "tidal_$v" "$URL" tidal --workload query --label "global_r$round" --protocol simple \
            --clients 1 --runs "$RUNS" --expect-rows 50 --sql "$global"
        if [[ $v == all ]]; then
            for r in r00 r20; do
                measure "tidal_$v" "$URL" tidal --workload query --label "region_${r}_r$round" \
                    --protocol simple --clients 1 --runs "$RUNS" --expect-rows 50 \
                    --sql "RETRIEVE items USING PROFILE trending WITHIN COHORT region = '$r' LIMIT 50 AT '$AT'"
            done
        fi
        measure "tidal_$v" "$URL" tidal --workload query --label "pair_r$round" --protocol simple \
            --clients 1 --runs "$RUNS" --expect-rows 50 --sql "$pair"
    done
}

if has none; then load none; fi
if has all; then
    load all
    log "cohorts: $(q "SELECT signal || ' ' || dimension || ': ' || distinct_values || ' values, ' || active_pairs || ' pairs, ' || bytes || ' B' FROM cohorts ORDER BY signal, dimension" | tr '\n' ';')"
    echo "system=tidal_all workload=cohort_memory $(q "SELECT 'pairs=' || sum(active_pairs) || ' bytes=' || sum(bytes) || ' bytes_per_pair=' || round(sum(bytes) / sum(active_pairs), 1) FROM cohorts")" >>"$RESULTS"
    queries all
    PEER_Q="RETRIEVE items USING PROFILE views24 WITHIN COHORT region = 'r00' LIMIT 50 AT '$AT'"
    measure tidal_all "$URL" tidal --workload query --label peer_question --protocol simple \
        --clients 1 --runs "$RUNS" --expect-rows 50 --result-csv "$WORK/tidal_peer.csv" --sql "$PEER_Q"
    # After a restart the state is rebuilt from the checkpoint with exact capacities.
    stop_tidal
    start_tidal
    echo "system=tidal_all workload=cohort_memory_after_restart $(q "SELECT 'pairs=' || sum(active_pairs) || ' bytes=' || sum(bytes) || ' bytes_per_pair=' || round(sum(bytes) / sum(active_pairs), 1) FROM cohorts") rss_kib=$(rss_kib)" >>"$RESULTS"
    stop_tidal
fi
if has peers; then
    log "Redis and DuckDB on the same question"
    redis-server --port "$REDIS_PORT" --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    sleep 1
    python3 "$PEERS/cohort_peers.py" "$WORK/data" --region r00 --runs "$RUNS" \
        --redis-port "$REDIS_PORT" --compare "tidal=$WORK/tidal_peer.csv" 2>&1 | tee -a "$WORK/peers.txt" >&2
    grep '^RESULT' "$WORK/peers.txt" | sed 's/^RESULT //' >>"$RESULTS"
    kill "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
fi
if has singles; then
    load singles
    queries singles
fi
cat "$WORK"/explain_pair_*.txt >&2
log "results:"
cat "$RESULTS"
