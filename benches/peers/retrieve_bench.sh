#!/usr/bin/env bash
# RETRIEVE (issue "Ranking v1") over the wire: tidalDB vs PostgreSQL 15 vs DuckDB on the
# same data, in one run, at one instant.
#
#   benches/peers/retrieve_bench.sh
#
# 1. `loadgen --workload rank-setup` generates 1 M items and 10 M view/like/skip events
#    (seeded, identical for every system) ending at AT, the last microsecond of the
#    previous full UTC hour, and COPYs them into `tidal serve`; it also exports them as
#    CSV for DuckDB. tidal gets the signals and the profile
#      CREATE PROFILE trending ON items (SCORE velocity('view', '1h')
#          + 2 * velocity('like', '24h') - decay('skip'), DIVERSITY max_per_creator 2)
#    then is restarted (the shutdown checkpoints, like PostgreSQL's CHECKPOINT below) and
#    measured with `loadgen --workload query` running
#      RETRIEVE items USING PROFILE trending LIMIT 50 AT '<AT>'
#    (simple and extended protocol, 1 and 2 clients; the first run after the restart; runs
#    that each follow a write to items, which invalidates the scan cache) plus EXPLAIN
#    ANALYZE.
# 2. PostgreSQL 15 (fresh initdb) gets the same data through the same generator into
#    items + events, indexes built after the load, VACUUM ANALYZE, CHECKPOINT, and runs
#    retrieve_postgres.sql (the same score and diversity over the raw events) with the
#    same client; also with jit = off, and restricted to items with events in the window.
# 3. DuckDB (Python package, in memory, SET threads = 2) loads the exported CSV and runs
#    the same SQL adapted (duckdb_retrieve.py), then compares the three top-50 results.
#
# Environment (defaults in brackets):
#   ITEMS [1000000] EVENTS [10000000] CREATORS [50000] SPAN_HOURS [48] SEED [1]
#   SKIP_HL_HOURS [6]      half-life of the skip signal
#   TIDAL_RUNS [100]       measured runs per tidal configuration
#   PG_RUNS [20]           measured runs per PostgreSQL configuration
#   DUCK_RUNS [50]         measured DuckDB runs
#   CLIENTS ["1 2"]        concurrent connections to measure
#   TIDAL_PORT [5433] PG_PORT [5434] (next free port if busy)
#   PG_BIN [/usr/lib/postgresql/15/bin]
#   PG_OPTS ["-c shared_buffers=2GB -c work_mem=256MB"]  PostgreSQL settings
#   PYTHON [~/.cache/tidal-bench-venv/bin/python]  (created with duckdb if missing)
#   SYSTEMS ["tidal postgres duckdb"]
#   QUIET_CORES [0.3] QUIET_WAIT [900]  before each measurement, wait up to QUIET_WAIT s
#                          until fewer than QUIET_CORES cores are busy (other users)
#   WORK [mktemp -d under /tmp]  data dirs, exports, logs, results; removed unless KEEP=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS="$ROOT/benches/peers"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tidal-target}
ITEMS=${ITEMS:-1000000}
EVENTS=${EVENTS:-10000000}
CREATORS=${CREATORS:-50000}
SPAN_HOURS=${SPAN_HOURS:-48}
SEED=${SEED:-1}
SKIP_HL_HOURS=${SKIP_HL_HOURS:-6}
TIDAL_RUNS=${TIDAL_RUNS:-100}
PG_RUNS=${PG_RUNS:-20}
DUCK_RUNS=${DUCK_RUNS:-50}
CLIENTS=${CLIENTS:-"1 2"}
TIDAL_PORT=${TIDAL_PORT:-5433}
PG_PORT=${PG_PORT:-5434}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OPTS=${PG_OPTS:-"-c shared_buffers=2GB -c work_mem=256MB"}
PYTHON=${PYTHON:-$HOME/.cache/tidal-bench-venv/bin/python}
SYSTEMS=${SYSTEMS:-"tidal postgres duckdb"}
QUIET_CORES=${QUIET_CORES:-0.3}
QUIET_WAIT=${QUIET_WAIT:-900}
KEEP=${KEEP:-0}
TICK=$(getconf CLK_TCK)
# log, free_port, wait_ready, server_ticks, measure; machine_ticks, wait_quiet.
. "$PEERS/measure.sh"

WORK=${WORK:-$(mktemp -d /tmp/retrieve-bench.XXXXXX)}
mkdir -p "$WORK/bin" "$WORK/data"
chmod 755 "$WORK"
RESULTS="$WORK/results.txt"
: >"$RESULTS"

# The instant every system reads at: the last microsecond of the previous full UTC hour
# (tidal's 1 h window is read from minute buckets, its 24 h window from hour buckets;
# ending the windows on a bucket boundary makes them exactly (AT - W, AT]).
AT_S=$(($(date -u +%s) / 3600 * 3600 - 1))
AT="$(date -u -d "@$AT_S" '+%Y-%m-%d %H:%M:%S').999999"
AT_EPOCH_S="$AT_S.999999"
SKIP_LAMBDA_S=$(awk -v h="$SKIP_HL_HOURS" 'BEGIN { printf "%.17g", log(2) / (h * 3600) }')
RETRIEVE="RETRIEVE items USING PROFILE trending LIMIT 50 AT '$AT'"
log "instant AT = $AT UTC; skip half-life ${SKIP_HL_HOURS} h"

log "building tidal-server and loadgen (release)"
(cd "$ROOT" && cargo build --release -q -p tidal-server --bin tidal \
    && cargo build --release -q -p tidal-benches --bin loadgen)
# Private copies: a concurrent build in the shared target dir cannot swap them mid-run.
cp "$CARGO_TARGET_DIR/release/tidal" "$CARGO_TARGET_DIR/release/loadgen" "$WORK/bin/"
TIDAL="$WORK/bin/tidal"
LOADGEN="$WORK/bin/loadgen"
log "tidal built from $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo " + uncommitted changes under crates/ ($(git -C "$ROOT" diff --name-only HEAD -- crates | tr '\n' ' ')diff sha256 $(git -C "$ROOT" diff HEAD -- crates | sha256sum | cut -c1-12))")"

TIDAL_PID=""
PG_DATA="$WORK/pg/data"
PG_STARTED=0
SERVER_PID=""
stop_tidal() {
    if [[ -n "$TIDAL_PID" ]] && kill -0 "$TIDAL_PID" 2>/dev/null; then
        kill -TERM "$TIDAL_PID"
        wait "$TIDAL_PID" || true
    fi
    TIDAL_PID=""
}
stop_pg() {
    if [[ "$PG_STARTED" == 1 ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null || true
        PG_STARTED=0
    fi
}
cleanup() {
    stop_tidal
    stop_pg
    if [[ "$KEEP" != 1 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

setup_args=(--workload rank-setup --events "$EVENTS" --creators "$CREATORS"
    --span-hours "$SPAN_HOURS" --seed "$SEED" --skip-half-life-hours "$SKIP_HL_HOURS"
    --at "$AT" --preload-chunk 100000 --copy-streams 2)

log "machine: $(nproc) cores; $(free -g | awk '/^Mem/ { print $2 " GiB RAM" }'); $(uname -r); $(uptime)"

for system in $SYSTEMS; do
    case "$system" in
    tidal)
        TIDAL_PORT=$(free_port "$TIDAL_PORT")
        url="postgresql://tidal@127.0.0.1:$TIDAL_PORT/tidal"
        start_tidal() {
            "$TIDAL" serve --data-dir "$WORK/tidal" --listen "127.0.0.1:$TIDAL_PORT" \
                >>"$WORK/tidal.log" 2>&1 &
            TIDAL_PID=$!
            SERVER_PID=$TIDAL_PID
            wait_ready "$url"
        }
        log "starting tidal serve on :$TIDAL_PORT, data in $WORK/tidal"
        start_tidal
        measure tidal "$url" tidal "${setup_args[@]}" --export-dir "$WORK/data"
        t0=$(date +%s.%N)
        stop_tidal
        t1=$(date +%s.%N)
        start_tidal
        t2=$(date +%s.%N)
        log "tidal: shutdown (checkpoint) $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, restart until ready $(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1f", b - a }') s; data dir $(du -sh "$WORK/tidal" | cut -f1)"
        echo "system=tidal workload=restart shutdown_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') start_s=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.2f", b - a }')" >>"$RESULTS"
        sleep 5
        # The first RETRIEVE after the restart fills the scan cache (the candidate
        # columns of items as Arrow batches, valid until items are next written).
        measure tidal "$url" tidal --workload query --label retrieve_first --protocol simple \
            --clients 1 --runs 1 --warmup-runs 0 --expect-rows 50 --sql "$RETRIEVE"
        for p in simple extended; do
            for c in $CLIENTS; do
                measure tidal "$url" tidal --workload query --label retrieve --protocol "$p" \
                    --clients "$c" --runs "$TIDAL_RUNS" --expect-rows 50 --sql "$RETRIEVE" \
                    --result-csv "$WORK/tidal_result.csv"
            done
        done
        psql "$url" -c "EXPLAIN ANALYZE $RETRIEVE" >"$WORK/tidal_explain.txt" 2>&1 || true
        # Every run after a write to items (a no-op UPDATE of one row, unmeasured): the
        # scan cache is invalid, so the candidates are read from the store again.
        measure tidal "$url" tidal --workload query --label retrieve_after_write --protocol simple \
            --clients 1 --runs 20 --warmup-runs 1 --expect-rows 50 --sql "$RETRIEVE" \
            --before-each "UPDATE items SET category = category WHERE id = 0"
        psql "$url" -c "UPDATE items SET category = category WHERE id = 0" \
            -c "EXPLAIN ANALYZE $RETRIEVE" >"$WORK/tidal_explain_after_write.txt" 2>&1 || true
        log "tidal EXPLAIN ANALYZE (scan cache warm, then after a write to items):"
        cat "$WORK/tidal_explain.txt" "$WORK/tidal_explain_after_write.txt" >&2
        stop_tidal
        ;;
    postgres)
        PG_PORT=$(free_port "$PG_PORT")
        url="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
        mkdir -p "$WORK/pg"
        chown postgres: "$WORK/pg"
        log "initdb + starting PostgreSQL on :$PG_PORT, data in $PG_DATA"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
            --auth-local=trust --auth-host=trust >"$WORK/initdb.log" 2>&1
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/server.log" -w \
            -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/pg \
                -c timezone=UTC $PG_OPTS" start >/dev/null
        PG_STARTED=1
        SERVER_PID=$(head -1 "$PG_DATA/postmaster.pid")
        wait_ready "$url"
        psql "$url" -Atc "SELECT version()" >&2
        psql "$url" -Atc "SELECT name || '=' || setting || coalesce(unit, '') FROM pg_settings \
            WHERE name IN ('shared_buffers', 'work_mem', 'jit', 'max_parallel_workers_per_gather', \
            'effective_cache_size', 'random_page_cost', 'TimeZone')" | tr '\n' ' ' >&2
        echo >&2
        measure postgres "$url" postgres "${setup_args[@]}"
        psql "$url" -qc 'CHECKPOINT'
        psql "$url" -Atc "SELECT 'events ' || pg_size_pretty(pg_total_relation_size('events')) \
            || ', items ' || pg_size_pretty(pg_total_relation_size('items'))" >&2
        sed -e "s/@AT@/$AT/g; s/@AT_EPOCH_S@/$AT_EPOCH_S/g; s/@SKIP_LAMBDA_S@/$SKIP_LAMBDA_S/g" \
            "$PEERS/retrieve_postgres.sql" >"$WORK/pg_retrieve.sql"
        # Variant: only items with view/like events in the 24 h window are candidates
        # (the same top 50 whenever at least 50 items with a positive score survive the
        # diversity rule, which duckdb_retrieve.py checks).
        sed -e 's/LEFT JOIN win ON/JOIN win ON/' "$WORK/pg_retrieve.sql" >"$WORK/pg_retrieve_candidates.sql"
        jit_off="$url?options=-c%20jit%3Doff"
        sleep 3
        for c in $CLIENTS; do
            measure postgres "$url" postgres --workload query --label pg --protocol simple \
                --clients "$c" --runs "$PG_RUNS" --expect-rows 50 --sql-file "$WORK/pg_retrieve.sql" \
                --result-csv "$WORK/pg_result.csv"
        done
        measure postgres "$url" postgres --workload query --label pg --protocol extended \
            --clients 1 --runs "$PG_RUNS" --expect-rows 50 --sql-file "$WORK/pg_retrieve.sql"
        measure postgres "$jit_off" postgres --workload query --label pg_jit_off --protocol simple \
            --clients 1 --runs "$PG_RUNS" --expect-rows 50 --sql-file "$WORK/pg_retrieve.sql"
        measure postgres "$jit_off" postgres --workload query --label pg_candidates_jit_off \
            --protocol simple --clients 1 --runs "$PG_RUNS" --expect-rows 50 \
            --sql-file "$WORK/pg_retrieve_candidates.sql" --result-csv "$WORK/pg_candidates_result.csv"
        { echo "EXPLAIN (ANALYZE, BUFFERS)"; cat "$WORK/pg_retrieve.sql"; } >"$WORK/pg_explain.sql"
        psql "$url" -f "$WORK/pg_explain.sql" >"$WORK/pg_explain.txt" 2>&1 || true
        log "PostgreSQL EXPLAIN (ANALYZE, BUFFERS):"
        cat "$WORK/pg_explain.txt" >&2
        du -sh "$PG_DATA" >&2
        stop_pg
        ;;
    duckdb)
        if ! "$PYTHON" -c 'import duckdb' 2>/dev/null; then
            log "installing duckdb into $(dirname "$(dirname "$PYTHON")")"
            python3 -m venv "$(dirname "$(dirname "$PYTHON")")"
            "$PYTHON" -m pip install -q duckdb
        fi
        [[ -f "$WORK/data/meta.json" ]] || {
            log "duckdb needs the CSV export of the tidal step"
            continue
        }
        wait_quiet
        out=$(/usr/bin/time -f 'TIME wall=%e user=%U sys=%S' "$PYTHON" "$PEERS/duckdb_retrieve.py" \
            "$WORK/data" --runs "$DUCK_RUNS" --threads 2 --out "$WORK/duckdb_result.csv" \
            --compare "tidal=$WORK/tidal_result.csv" "postgres=$WORK/pg_result.csv" \
            "postgres_candidates=$WORK/pg_candidates_result.csv" 2>&1) || log "duckdb failed"
        echo "$out" | grep -v '^RESULT\|^TIME' >&2
        echo "$out" | grep '^RESULT' | sed "s/^RESULT /system=duckdb /" >>"$RESULTS"
        echo "$out" | grep '^TIME' >&2
        ;;
    *) log "unknown system $system" ;;
    esac
done
log "done; $(uptime)"

# ---- summary ------------------------------------------------------------------------
get() { # system "k=v …" key → the key of the last matching result line, or "-"
    awk -v s="$1" -v want="$2" -v k="$3" '
        BEGIN { n = split(want, w, " ") }
        {
            delete f
            for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            if (f["system"] != s) next
            for (i = 1; i <= n; i++) { split(w[i], kv, "="); if (f[kv[1]] != kv[2]) next }
            v = (k in f) ? f[k] : "-"
        }
        END { print (v == "" ? "-" : v) }' "$RESULTS"
}
echo
echo "RETRIEVE top 50, $ITEMS items, $EVENTS events, at $AT UTC"
echo
echo "| system | configuration | runs | p50 ms | p99 ms | mean ms | qps | server CPU per query ms | other CPU s | load1 |"
echo "|---|---|---|---|---|---|---|---|---|---|"
while read -r line; do
    # shellcheck disable=SC2086
    eval "$(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] ~ /^[a-z_0-9]+$/) printf "%s=\"%s\"; ", kv[1], kv[2] } }' <<<"$line")"
    [[ "${workload:-}" == query ]] || continue
    cpu=$(awk -v c="${server_cpu_s:--}" -v r="${runs:-0}" 'BEGIN { if (c == "-" || r == 0) print "-"; else printf "%.0f", c * 1000 / r }')
    echo "| $system | $label, $protocol, $clients client(s) | $runs | $p50_ms | $p99_ms | $mean_ms | ${ops_per_s:--} | $cpu | ${other_cpu_s:--} | ${load1:--} |"
    unset workload label protocol clients runs p50_ms p99_ms mean_ms ops_per_s server_cpu_s other_cpu_s load1 system
done <"$RESULTS"
echo
t50=$(get tidal "label=retrieve protocol=simple clients=1" p50_ms)
t99=$(get tidal "label=retrieve protocol=simple clients=1" p99_ms)
pg50=$(get postgres "label=pg protocol=simple clients=1" p50_ms)
dk50=$(get duckdb "label=duckdb" p50_ms)
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { if (v == "-") print "n/a"; else if (op == "le") print (v + 0 <= t ? "MET" : "MISSED"); else print (v + 0 >= t ? "MET" : "MISSED") }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
echo "target tidal p50 <= 20 ms (1 client, simple): $t50 ms -> $(verdict "$t50" 20 le)"
echo "target tidal p99 <= 50 ms (1 client, simple): $t99 ms -> $(verdict "$t99" 50 le)"
r=$(ratio "$pg50" "$t50")
echo "target tidal >= 20x faster than PostgreSQL (p50): ${r}x -> $(verdict "$r" 20 ge)"
r=$(ratio "$dk50" "$t50")
echo "target tidal >= 3x faster than DuckDB (p50): ${r}x -> $(verdict "$r" 3 ge)"
pgb=$(get postgres "label=pg_candidates_jit_off" p50_ms)
dkb=$(get duckdb "label=duckdb_candidates" p50_ms)
r=$(ratio "$pgb" "$t50")
echo "  against PostgreSQL's fastest variant (candidates, jit off): ${r}x -> $(verdict "$r" 20 ge)"
r=$(ratio "$dkb" "$t50")
echo "  against DuckDB's fastest variant (candidates): ${r}x -> $(verdict "$r" 3 ge)"
ta=$(get tidal "label=retrieve_after_write" p50_ms)
echo "  tidal p50 when every RETRIEVE follows a write to items (scan cache cold): $ta ms"
if grep -q 'failed=1' "$RESULTS"; then
    echo "some steps FAILED:"
    grep 'failed=1' "$RESULTS"
fi
echo
echo "raw results:"
cat "$RESULTS"
