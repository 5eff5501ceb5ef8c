#!/usr/bin/env bash
# tidalDB (`tidal serve`) vs PostgreSQL 15 over the wire, same client (`loadgen`), same
# machine, same disk. Each system runs alone: start it on a fresh data directory, create
# the schema and preload 1 M items, run every workload, stop it; then the other.
#
#   benches/peers/wire_bench.sh
#
# Environment (defaults in brackets):
#   RUN_SECONDS [20]     measured seconds of insert/point/range (after 2 s warm-up)
#   CLIENTS [32]         connections of insert and of the concurrent point/range runs
#   ITEMS [1000000]      rows preloaded into items
#   COPY_ROWS [1000000]  rows per COPY;  COPY_STREAMS [4] parallel COPYs
#   BATCH [100]          rows per INSERT of the extra multi-row insert run
#   TIDAL_PORT [5433]    PG_PORT [5434]  (the next free port is taken if busy)
#   PG_BIN [/usr/lib/postgresql/15/bin]
#   WORK [mktemp -d under /tmp]  data dirs, logs, results; removed unless KEEP=1
#   SYSTEMS ["tidal postgres"]
#   PG_OPTS [""]         extra `-c name=value` settings for PostgreSQL
#
# PostgreSQL runs as the `postgres` OS user (initdb refuses root) with trust auth on
# loopback, fsync=on, synchronous_commit=on, shared_buffers=1GB, max_connections=200;
# everything else is initdb's default. Next to each figure the script records the CPU
# seconds the server (tidal: the process; PostgreSQL: postmaster and all backends) and
# the load generator used, and the CPU anything else on the machine used meanwhile
# (other_cpu_s: a non-zero value means the figure was taken on a busy machine), from /proc.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tidal-target}
RUN_SECONDS=${RUN_SECONDS:-20}
CLIENTS=${CLIENTS:-32}
ITEMS=${ITEMS:-1000000}
COPY_ROWS=${COPY_ROWS:-1000000}
COPY_STREAMS=${COPY_STREAMS:-4}
BATCH=${BATCH:-100}
TIDAL_PORT=${TIDAL_PORT:-5433}
PG_PORT=${PG_PORT:-5434}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OPTS=${PG_OPTS:-}
SYSTEMS=${SYSTEMS:-"tidal postgres"}
KEEP=${KEEP:-0}
TICK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
free_port() {
    local p=$1
    while port_busy "$p"; do p=$((p + 1)); done
    echo "$p"
}

WORK=${WORK:-$(mktemp -d /tmp/wire-bench.XXXXXX)}
mkdir -p "$WORK/bin"
chmod 755 "$WORK"
RESULTS="$WORK/results.txt"
: >"$RESULTS"

log "building tidal-server and loadgen (release)"
(cd "$ROOT" && cargo build --release -q -p tidal-server --bin tidal \
    && cargo build --release -q -p tidal-benches --bin loadgen)
# Private copies: a concurrent build in the shared target dir cannot swap them mid-run.
cp "$CARGO_TARGET_DIR/release/tidal" "$CARGO_TARGET_DIR/release/loadgen" "$WORK/bin/"
TIDAL="$WORK/bin/tidal"
LOADGEN="$WORK/bin/loadgen"
log "tidal built from $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo ' + uncommitted changes under crates/')"

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

wait_ready() { # url
    for _ in $(seq 1 600); do
        if psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "server at $1 did not come up"
    return 1
}

# CPU ticks (user + system, own + reaped children) of SERVER_PID and its live children.
server_ticks() {
    local total=0 p f
    for p in "$SERVER_PID" $(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null); do
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        # After "pid (comm) ": field 1 is state; utime stime cutime cstime are 12..15.
        total=$((total + $(awk '{ print $12 + $13 + $14 + $15 }' <<<"$f")))
    done
    echo "$total"
}

# Busy ticks of the whole machine (user nice system irq softirq steal).
. "$(dirname "$0")/quiet.sh"

# loadgen SYSTEM DIALECT URL WORKLOAD [args…]: runs it, echoes its output, keeps its
# RESULT line with the server's and the load generator's CPU seconds added.
loadgen() {
    local system=$1 dialect=$2 url=$3 workload=$4
    shift 4
    log "$system: $workload $*"
    local out before after mbefore mafter rc=0
    before=$(server_ticks)
    mbefore=$(machine_ticks)
    out=$(/usr/bin/time -f 'TIME wall=%e user=%U sys=%S' "$LOADGEN" --url "$url" \
        --dialect "$dialect" --workload "$workload" --items "$ITEMS" \
        --seconds "$RUN_SECONDS" "$@" 2>&1) || rc=$?
    sleep 0.5 # let PostgreSQL reap the exiting backends, so their CPU is counted
    after=$(server_ticks)
    mafter=$(machine_ticks)
    if [[ $rc != 0 ]]; then
        echo "$out" >&2
        log "$system: $workload failed"
        echo "system=$system workload=$workload failed=1 $*" >>"$RESULTS"
        return 0
    fi
    echo "$out" | grep -v '^RESULT\|^TIME' >&2
    local lg srv other
    lg=$(echo "$out" | awk '/^TIME/ { split($3, u, "="); split($4, s, "="); print u[2] + s[2] }')
    srv=$(awk -v a="$before" -v b="$after" -v t="$TICK" 'BEGIN { printf "%.2f", (b - a) / t }')
    # Everything else that ran meanwhile (other users' builds, kernel threads).
    other=$(awk -v a="$mbefore" -v b="$mafter" -v t="$TICK" -v s="$srv" -v l="$lg" \
        'BEGIN { o = (b - a) / t - s - l; printf "%.2f", (o < 0 ? 0 : o) }')
    log "$system: $workload used ${srv} s server CPU, ${lg} s load-generator CPU, ${other} s other CPU"
    echo "$out" | grep '^RESULT' \
        | sed "s/^RESULT /system=$system /; s/\$/ server_cpu_s=$srv loadgen_cpu_s=$lg other_cpu_s=$other/" \
            >>"$RESULTS"
}

run_workloads() { # system dialect url
    local s=$1 d=$2 u=$3
    loadgen "$s" "$d" "$u" setup
    if [[ "$d" == postgres ]]; then psql "$u" -qc 'CHECKPOINT'; fi
    loadgen "$s" "$d" "$u" insert --clients "$CLIENTS"
    loadgen "$s" "$d" "$u" insert --clients 1
    loadgen "$s" "$d" "$u" insert --clients "$CLIENTS" --batch "$BATCH"
    loadgen "$s" "$d" "$u" copy --copy-rows "$COPY_ROWS" --copy-streams "$COPY_STREAMS"
    # Reads run on a settled system: PostgreSQL's autovacuum of the freshly loaded events
    # table and its checkpoint would otherwise compete with them. (tidal has no SQL
    # command for this; its background work is whatever it does by itself.)
    if [[ "$d" == postgres ]]; then psql "$u" -qc 'VACUUM ANALYZE events' -c 'CHECKPOINT'; fi
    sleep 3
    loadgen "$s" "$d" "$u" point --clients 1
    loadgen "$s" "$d" "$u" point --clients "$CLIENTS"
    loadgen "$s" "$d" "$u" range --clients 1
    loadgen "$s" "$d" "$u" range --clients "$CLIENTS"
}

log "machine: $(nproc) cores; $(uptime)"
for system in $SYSTEMS; do
    case "$system" in
    tidal)
        TIDAL_PORT=$(free_port "$TIDAL_PORT")
        url="postgresql://tidal@127.0.0.1:$TIDAL_PORT/tidal"
        log "starting tidal serve on :$TIDAL_PORT, data in $WORK/tidal"
        "$TIDAL" serve --data-dir "$WORK/tidal" --listen "127.0.0.1:$TIDAL_PORT" \
            >"$WORK/tidal.log" 2>&1 &
        TIDAL_PID=$!
        SERVER_PID=$TIDAL_PID
        wait_ready "$url"
        run_workloads tidal tidal "$url"
        du -sh "$WORK/tidal" >&2
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
                -c fsync=on -c synchronous_commit=on -c shared_buffers=1GB \
                -c max_connections=200 $PG_OPTS" start >/dev/null
        PG_STARTED=1
        SERVER_PID=$(head -1 "$PG_DATA/postmaster.pid")
        wait_ready "$url"
        psql "$url" -Atc "SELECT version()" >&2
        psql "$url" -Atc "SELECT name || '=' || setting || coalesce(unit, '') FROM pg_settings \
            WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections', \
            'wal_level', 'full_page_writes', 'max_wal_size', 'checkpoint_timeout', \
            'commit_delay', 'wal_sync_method', 'wal_buffers', 'work_mem')" | tr '\n' ' ' >&2
        echo >&2
        run_workloads postgres postgres "$url"
        du -sh "$PG_DATA" >&2
        stop_pg
        ;;
    *) log "unknown system $system" ;;
    esac
done
log "done; $(uptime)"

# ---- comparison table -------------------------------------------------------------
# get SYSTEM "k=v k=v" KEY → KEY of the result line of SYSTEM matching every k=v, or "-".
get() {
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
# per MATCH KEY DIV: KEY / DIV of each system, scaled to µs
cpu_us() { # system match per-key
    local cpu n
    cpu=$(get "$1" "$2" server_cpu_s)
    n=$(get "$1" "$2" "$3")
    awk -v c="$cpu" -v n="$n" 'BEGIN { if (c == "-" || n == "-" || n + 0 == 0) print "-"; else printf "%.1f", c * 1e6 / n }'
}
ratio() { # a b → a/b
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f×", a / b }'
}
row() { # label match key
    local t p
    t=$(get tidal "$2" "$3")
    p=$(get postgres "$2" "$3")
    printf '| %s | %s | %s | %s |\n' "$1" "$t" "$p" "$(ratio "$t" "$p")"
}
cpu_row() { # label match per-key
    local t p
    t=$(cpu_us tidal "$2" "$3")
    p=$(cpu_us postgres "$2" "$3")
    printf '| %s | %s | %s | %s |\n' "$1" "$t" "$p" "$(ratio "$t" "$p")"
}

ins="workload=insert clients=$CLIENTS batch=1"
echo
echo "| workload | tidalDB | PostgreSQL 15 | tidal / PG |"
echo "|---|---|---|---|"
row "preload $ITEMS items (COPY, rows/s)" "workload=setup" rows_per_s
row "INSERT 1 row, $CLIENTS clients (stmt/s)" "$ins" ops_per_s
row "… p50 (ms)" "$ins" p50_ms
row "… p99 (ms)" "$ins" p99_ms
cpu_row "… server CPU per statement (µs)" "$ins" total_ops
row "INSERT 1 row, 1 client (stmt/s)" "workload=insert clients=1 batch=1" ops_per_s
row "… p50 (ms)" "workload=insert clients=1 batch=1" p50_ms
row "… p99 (ms)" "workload=insert clients=1 batch=1" p99_ms
row "INSERT $BATCH rows, $CLIENTS clients (rows/s)" "workload=insert batch=$BATCH" rows_per_s
row "… p50 (ms)" "workload=insert batch=$BATCH" p50_ms
row "COPY signals, $COPY_STREAMS × $COPY_ROWS rows (rows/s)" "workload=copy" rows_per_s
cpu_row "… server CPU per row (µs)" "workload=copy" rows
for w in point range; do
    for c in 1 "$CLIENTS"; do
        row "$w, $c client(s) (qps)" "workload=$w clients=$c" ops_per_s
        row "… p50 (ms)" "workload=$w clients=$c" p50_ms
        row "… p99 (ms)" "workload=$w clients=$c" p99_ms
        cpu_row "… server CPU per query (µs)" "workload=$w clients=$c" total_ops
    done
done
echo
verdict() { awk -v r="${1%×}" -v t="$2" 'BEGIN { if (r == "-") print "n/a"; else print (r + 0 >= t ? "met" : "MISSED") }'; }
r=$(ratio "$(get tidal "$ins" ops_per_s)" "$(get postgres "$ins" ops_per_s)")
echo "target: durable single-row INSERT at $CLIENTS clients >= 5x PostgreSQL: $r -> $(verdict "$r" 5)"
r=$(ratio "$(get tidal workload=copy rows_per_s)" "$(get postgres workload=copy rows_per_s)")
echo "target: COPY signals >= 2x PostgreSQL COPY into the indexed table: $r -> $(verdict "$r" 2)"
for sys in $SYSTEMS; do
    awk -v s="$sys" '{ delete f; for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        if (f["system"] == s) o += f["other_cpu_s"] }
        END { printf "CPU used by other processes while %s was measured: %.1f s in total\n", s, o }' "$RESULTS"
done
if grep -q 'failed=1' "$RESULTS"; then
    echo "some workloads FAILED:"
    grep 'failed=1' "$RESULTS"
fi
echo
echo "raw results:"
cat "$RESULTS"
