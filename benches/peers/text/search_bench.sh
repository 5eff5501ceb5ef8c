#!/usr/bin/env bash
# Text SEARCH (issue 13): tidalDB vs raw tantivy on the same corpus and queries, in one run.
#
#   benches/peers/text/search_bench.sh                 # DOCS=1000000 EVENTS=5000000
#   DOCS=64000 EVENTS=0 benches/peers/text/search_bench.sh
#
# 0. Corpus: make_corpus.py (Debian package descriptions, ~64k documents; needs
#    `apt-get update -o Acquire::Languages=en` once) gives the base CSV; `text_bench.py
#    prep` grows it to DOCS documents (copy r >= 1 pairs each title with the body of a
#    seeded permutation, so copies are not identical documents) and writes COPY text-format
#    TSV chunks of at most CHUNK_MB MiB, plus QUERIES queries of 1-3 words drawn from the
#    vocabulary (common / medium / rare document-frequency bands, seeded).
# 1. Indexing. Raw tantivy (`text_bench.py tantivy`, PyPI tantivy 0.27 = the crate version
#    tidal-index uses): one writer, one indexing thread, 32 MiB arena, add_document for
#    every document + the final commit, timed (documents built before the clock). Then
#    tidalDB: a fresh `tidal serve`,
#      CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, title TEXT, body TEXT)
#        WITH (kind = 'item', text_fields = 'title,body')
#    and every chunk through `psql -c '\copy items (id, creator_id, title, body) from ...'`
#    one after the other: wall time until the last COPY returned, then until the first
#    `SELECT count(*) FROM search('items', '<word>')` returned (that waits for the final
#    index commit): docs/s "COPY returned" and "searchable". Server CPU seconds over both
#    (utime + stime of the server process, /proc/PID/stat) and its peak RSS (VmHWM).
# 2. SEARCH top-10 latency. Raw tantivy in process: one warm-up pass over the query set,
#    then RUNS round-robin passes of searcher.search(q, 10), with count=True (the binding's
#    default: every match counted, no pruning) and count=False (top-10 only, pruned like
#    tidal's SEARCH ... LIMIT 10). tidalDB over the
#    wire, one connection (libpq simple protocol through psycopg's pgconn.exec_): one
#    warm-up pass (top-10 ids kept and compared with tantivy's up to ties, match counts from
#    SELECT count(*) FROM search(...)), then RUNS round-robin passes of
#      SEARCH items QUERY '<q>' LIMIT 10
#    p50/p99, server CPU per SEARCH, and SELECT 1 p50/p99 on the same connection (plus, for
#    reference, a point read of one item and a search() table-function top-10).
# 3. Fused search (skipped when EVENTS=0): signals view/like/skip and
#      CREATE PROFILE trending ON items (SCORE velocity('view', '1h')
#          + 2 * velocity('like', '24h') - decay('skip'))
#    EVENTS events over the 48 h before AT (text_bench.py events: 75/20/5 %, zipf(1.0)
#    popularity over a seeded permutation of the items) COPYed into signals, then
#    FUSED_RUNS passes (after a warm-up pass) of
#      SEARCH items QUERY '<q>' USING PROFILE trending LIMIT 20 AT '<AT>'
#    and of the same with FUSION linear (0.3, 0.7); EXPLAIN ANALYZE of the RRF statement for
#    the most common single-word query of the set. Then the top-10 measurement of step 2
#    again (signals loaded: is plain SEARCH affected?).
#
# Environment (defaults in brackets):
#   DOCS [1000000] EVENTS [5000000] QUERIES [60] SEED [13]
#   AT ['2026-12-06 12:00:00']   the fused searches' instant; events end there
#   RUNS [10]                     round-robin passes for top-10 latency (both systems)
#   FUSED_RUNS [5]                round-robin passes per fused variant
#   CHUNK_MB [200]                COPY chunk size (tidal serve refuses > 256 MiB per COPY)
#   BASE_CSV [$WORK/debian.csv]   make_corpus.py output to reuse (made if missing)
#   PORT [5440] (next free port if busy)  BUILD [1] (0: use the binary already built)
#   QUIET_CORES [0.3] QUIET_WAIT [900]  before each measurement, wait up to QUIET_WAIT s
#                                       until fewer than QUIET_CORES cores are busy
#   WORK [mktemp -d under /tmp]   corpus, data dir, logs, results; removed unless KEEP=1
#                                 (a kept WORK's corpus and events are reused if the
#                                 parameters match; PREP_ONLY=1 stops after making them)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tidal-target}
DOCS=${DOCS:-1000000}
EVENTS=${EVENTS:-5000000}
QUERIES=${QUERIES:-60}
SEED=${SEED:-13}
AT=${AT:-"2026-12-06 12:00:00"}
RUNS=${RUNS:-10}
FUSED_RUNS=${FUSED_RUNS:-5}
CHUNK_MB=${CHUNK_MB:-200}
PORT=${PORT:-5440}
BUILD=${BUILD:-1}
QUIET_CORES=${QUIET_CORES:-0.3}
QUIET_WAIT=${QUIET_WAIT:-900}
KEEP=${KEEP:-0}
PYTHON=${PYTHON:-python3}
TICK=$(getconf CLK_TCK)
TB="$HERE/text_bench.py"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
free_port() {
    local p=$1
    while port_busy "$p"; do p=$((p + 1)); done
    echo "$p"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

WORK=${WORK:-$(mktemp -d /tmp/search-bench.XXXXXX)}
mkdir -p "$WORK/bin" "$WORK/corpus"
RES="$WORK/results"
mkdir -p "$RES"
BASE_CSV=${BASE_CSV:-$WORK/debian.csv}

SERVER_PID=""
stop_tidal() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_tidal
    if [[ "$KEEP" != 1 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

. "$HERE/../quiet.sh"
server_ticks() { sed 's/^.*) //' "/proc/$SERVER_PID/stat" | awk '{ print $12 + $13 }'; }
vm_hwm_mb() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status"; }
jget() { "$PYTHON" -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(d.get(sys.argv[2]))" "$@"; }

log "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem/ { print $2 " GiB RAM" }'); $(uname -r)"
log "DOCS=$DOCS EVENTS=$EVENTS QUERIES=$QUERIES SEED=$SEED RUNS=$RUNS FUSED_RUNS=$FUSED_RUNS AT='$AT' WORK=$WORK"

# ---- 0. corpus -------------------------------------------------------------------------
if [[ ! -s "$BASE_CSV" ]]; then
    log "make_corpus.py -> $BASE_CSV"
    "$PYTHON" "$HERE/make_corpus.py" --out "$BASE_CSV" >&2
fi
# Reused when WORK already holds them for the same parameters.
stamp="$DOCS $SEED $QUERIES $CHUNK_MB $(sha256sum "$BASE_CSV" | cut -c1-16)"
if [[ "$(cat "$WORK/corpus/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    rm -f "$WORK/corpus"/items_*.tsv
    "$PYTHON" "$TB" prep --csv "$BASE_CSV" --docs "$DOCS" --out-dir "$WORK/corpus" \
        --seed "$SEED" --queries "$QUERIES" --chunk-mb "$CHUNK_MB" >"$RES/prep.json"
    echo "$stamp" >"$WORK/corpus/.stamp"
fi
estamp="$DOCS $EVENTS $SEED $AT"
if ((EVENTS > 0)) && [[ "$(cat "$WORK/events/.stamp" 2>/dev/null)" != "$estamp" ]]; then
    rm -rf "$WORK/events"
    "$PYTHON" "$TB" events --docs "$DOCS" --events "$EVENTS" --at "$AT" --seed "$SEED" \
        --out-dir "$WORK/events" >"$RES/events.json"
    echo "$estamp" >"$WORK/events/.stamp"
fi
log "corpus: $(du -sh "$WORK/corpus" | cut -f1) in $(ls "$WORK/corpus"/items_*.tsv | wc -l) chunk(s)"
if [[ "${PREP_ONLY:-0}" == 1 ]]; then KEEP=1; exit 0; fi

if [[ "$BUILD" == 1 ]]; then
    log "building tidal-server (release)"
    (cd "$ROOT" && cargo build --release -q -p tidal-server --bin tidal)
fi
cp "$CARGO_TARGET_DIR/release/tidal" "$WORK/bin/"
TIDAL="$WORK/bin/tidal"
log "tidal built from $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo " + uncommitted changes under crates/")"


# ---- 1+2. raw tantivy ------------------------------------------------------------------
wait_quiet
log "raw tantivy: index $DOCS docs, then top-10 latency"
"$PYTHON" "$TB" tantivy --dir "$WORK/corpus" --runs "$RUNS" --tmp "$WORK" >"$RES/tantivy.json"

# ---- 1. tidal load ---------------------------------------------------------------------
PORT=$(free_port "$PORT")
URL="postgresql://tidal@127.0.0.1:$PORT/tidal"
rm -rf "$WORK/tidal" "$WORK/tidal.log"
mkdir -p "$WORK/tidal"
"$TIDAL" serve --data-dir "$WORK/tidal" --listen "127.0.0.1:$PORT" >>"$WORK/tidal.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
    psql "$URL" -Atqc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
psql "$URL" -v ON_ERROR_STOP=1 -qc "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, title TEXT, body TEXT) WITH (kind = 'item', text_fields = 'title,body')"
FIRST_WORD=$(head -1 "$WORK/corpus/queries.txt" | cut -d' ' -f1)
wait_quiet
log "tidal: COPY $DOCS docs in $(ls "$WORK/corpus"/items_*.tsv | wc -l) chunk(s)"
c0=$(server_ticks)
t0=$(now)
for f in "$WORK/corpus"/items_*.tsv; do
    psql "$URL" -v ON_ERROR_STOP=1 -qc "\\copy items (id, creator_id, title, body) from '$f'" >/dev/null
done
copy_s=$(since "$t0")
c1=$(server_ticks)
psql "$URL" -Atc "SELECT count(*) FROM search('items', '$FIRST_WORD')" >"$RES/first_count.txt"
searchable_s=$(since "$t0")
c2=$(server_ticks)
hwm=$(vm_hwm_mb)
n_items=$(psql "$URL" -Atc "SELECT count(*) FROM items")
[[ "$n_items" == "$DOCS" ]] || log "WARNING: items has $n_items rows, expected $DOCS"
awk -v d="$DOCS" -v c="$copy_s" -v s="$searchable_s" -v c0="$c0" -v c1="$c1" -v c2="$c2" \
    -v t="$TICK" -v h="$hwm" 'BEGIN { printf "{\"docs\": %d, \"copy_s\": %.3f, \"searchable_s\": %.3f, \"copy_docs_per_s\": %.1f, \"searchable_docs_per_s\": %.1f, \"server_cpu_copy_s\": %.2f, \"server_cpu_total_s\": %.2f, \"vm_hwm_mb\": %d}\n", d, c, s, d / c, d / s, (c1 - c0) / t, (c2 - c0) / t, h }' \
    >"$RES/tidal_load.json"
log "tidal load: $(cat "$RES/tidal_load.json"); data dir $(du -sh "$WORK/tidal" | cut -f1)"

# ---- 2. tidal top-10 -------------------------------------------------------------------
sleep 2
wait_quiet
"$PYTHON" "$TB" wire --url "$URL" --queries "$WORK/corpus/queries.txt" --runs "$RUNS" \
    --pid "$SERVER_PID" --label top10 --template "SEARCH items QUERY {q} LIMIT 10" \
    --ref-sql "SELECT id, creator_id, title, body FROM items WHERE id = 415" \
    --ref-sql "SELECT id, relevance FROM search('items', 'mupad') ORDER BY relevance DESC LIMIT 10" \
    --count-template "SELECT count(*) FROM search('items', {q})" >"$RES/tidal_top10.json"
"$PYTHON" "$TB" compare "$RES/tantivy.json" "$RES/tidal_top10.json" >"$RES/compare.json"

# ---- 3. fused ---------------------------------------------------------------------------
if ((EVENTS > 0)); then
    psql "$URL" -v ON_ERROR_STOP=1 -q \
        -c "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '6 hours' WINDOWS ('1h', '24h')" \
        -c "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('24h')" \
        -c "CREATE SIGNAL skip ON items DECAY EXPONENTIAL HALF_LIFE '6 hours' WINDOWS ('24h')" \
        -c "CREATE PROFILE trending ON items (SCORE velocity('view', '1h') + 2 * velocity('like', '24h') - decay('skip'))"
    wait_quiet
    log "tidal: COPY $EVENTS events"
    t0=$(now)
    for f in "$WORK/events"/events_*.tsv; do
        psql "$URL" -v ON_ERROR_STOP=1 -qc "\\copy signals (signal, entity_id, user_id, weight, ts) from '$f'" >/dev/null
    done
    log "tidal: events loaded in $(since "$t0") s"
    sleep 2
    for variant in rrf linear; do
        fusion=""
        [[ "$variant" == linear ]] && fusion=" FUSION linear (0.3, 0.7)"
        wait_quiet
        "$PYTHON" "$TB" wire --url "$URL" --queries "$WORK/corpus/queries.txt" --runs "$FUSED_RUNS" \
            --pid "$SERVER_PID" --label "fused_$variant" \
            --template "SEARCH items QUERY {q} USING PROFILE trending${fusion} LIMIT 20 AT '$AT'" \
            >"$RES/tidal_fused_$variant.json"
    done
    # EXPLAIN ANALYZE for the single-word query with the most matches.
    COMMON=$("$PYTHON" -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); r=[x for x in d['results'] if ' ' not in x['query']]; print(max(r, key=lambda x: x['count'])['query'])" "$RES/tantivy.json")
    psql "$URL" -XAtc "EXPLAIN ANALYZE SEARCH items QUERY '$COMMON' USING PROFILE trending LIMIT 20 AT '$AT'" >"$RES/explain_rrf.txt" 2>&1 || true
    psql "$URL" -XAtc "EXPLAIN ANALYZE SEARCH items QUERY '$COMMON' LIMIT 10" >"$RES/explain_top10.txt" 2>&1 || true
    wait_quiet
    "$PYTHON" "$TB" wire --url "$URL" --queries "$WORK/corpus/queries.txt" --runs "$RUNS" \
        --pid "$SERVER_PID" --label top10_after_events --template "SEARCH items QUERY {q} LIMIT 10" \
        >"$RES/tidal_top10_after.json"
fi
log "server peak RSS at the end: $(vm_hwm_mb) MB"
stop_tidal

# ---- summary ----------------------------------------------------------------------------
"$PYTHON" - "$RES" "$DOCS" "$EVENTS" <<'EOF'
import json, os, sys
res, docs, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def j(name):
    p = os.path.join(res, name)
    if not os.path.exists(p):
        return None
    return json.loads(open(p).read().strip().splitlines()[-1])
t, load, top, cmp_ = j("tantivy.json"), j("tidal_load.json"), j("tidal_top10.json"), j("compare.json")
def verdict(ok):
    return "MET" if ok else "MISSED"
print(f"\n## {docs} documents\n")
print("| indexing | docs/s | wall s | CPU s | peak RSS MB |")
print("|---|---|---|---|---|")
print(f"| raw tantivy (1 writer thread, 32 MiB, incl. commit) | {t['docs_per_s']:,.0f} | {t['index_s']:.2f} | {t['index_cpu_s']:.1f} (process) | - |")
print(f"| tidal, COPY returned | {load['copy_docs_per_s']:,.0f} | {load['copy_s']:.2f} | {load['server_cpu_copy_s']:.1f} (server) | - |")
print(f"| tidal, searchable (first search() returned) | {load['searchable_docs_per_s']:,.0f} | {load['searchable_s']:.2f} | {load['server_cpu_total_s']:.1f} (server) | {load['vm_hwm_mb']} |")
r = load['searchable_docs_per_s'] / t['docs_per_s']
print(f"\ntarget tidal searchable docs/s >= 0.8 x raw tantivy: {r:.2f} x -> {verdict(r >= 0.8)}")
r2 = load['copy_docs_per_s'] / t['docs_per_s']
print(f"  (COPY returned: {r2:.2f} x)")
print("\n| top-10 | runs | p50 us | p99 us | mean us | server CPU per op us |")
print("|---|---|---|---|---|---|")
print(f"| raw tantivy searcher.search(q, 10), in process | {t['runs']} | {t['p50_us']} | {t['p99_us']} | {t['mean_us']} | - |")
print(f"| tidal SEARCH ... LIMIT 10, 1 client, simple protocol | {top['runs']} | {top['p50_us']} | {top['p99_us']} | {top['mean_us']} | {top['server_cpu_us_per_op']} |")
print(f"| raw tantivy searcher.search(q, 10, count=False), in process | {t['runs']} | {t['nocount_p50_us']} | {t['nocount_p99_us']} | {t['nocount_mean_us']} | - |")
print(f"| tidal SELECT 1, same client | {max(1000, top['runs'])} | {top['select1_p50_us']} | {top['select1_p99_us']} | - | - |")
for k, v in top.get('reference', {}).items():
    print(f"| tidal `{k}`, same client | 1000 | {v['p50_us']} | {v['p99_us']} | - | - |")
after = j("tidal_top10_after.json")
if after:
    print(f"| tidal SEARCH ... LIMIT 10 after the events were loaded | {after['runs']} | {after['p50_us']} | {after['p99_us']} | {after['mean_us']} | {after['server_cpu_us_per_op']} |")
bound = 1.1 * (t['p50_us'] + top['select1_p50_us'])
print(f"\ntarget tidal p50 <= 1.1 x (raw p50 + SELECT 1 p50) = {bound:.1f} us: {top['p50_us']} us "
      f"({top['p50_us'] / (t['p50_us'] + top['select1_p50_us']):.2f} x the sum) -> {verdict(top['p50_us'] <= bound)}")
bound2 = 1.1 * (t['nocount_p50_us'] + top['select1_p50_us'])
print(f"  against raw count=False (same work: top-10 only): bound {bound2:.1f} us -> "
      f"{top['p50_us'] / (t['nocount_p50_us'] + top['select1_p50_us']):.2f} x the sum -> {verdict(top['p50_us'] <= bound2)}")
print(f"top-10 ids: {cmp_['identical']} queries identical, {cmp_['identical_up_to_ties']} identical up to ties, "
      f"{cmp_['different']} different; match-count differences: {len(cmp_['count_differences'])}")
counts = sorted(r['count'] for r in t['results'])
print(f"matches per query (raw tantivy): min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}")
for v in ("rrf", "linear"):
    f = j(f"tidal_fused_{v}.json")
    if f:
        print(f"fused {v}: {f['runs']} runs, p50 {f['p50_us'] / 1000:.2f} ms, p99 {f['p99_us'] / 1000:.2f} ms, "
              f"mean {f['mean_us'] / 1000:.2f} ms, server CPU per op {f['server_cpu_us_per_op'] / 1000:.2f} ms "
              f"-> target p50 <= 30 ms {verdict(f['p50_us'] <= 30000)}")
print("\nper query (matches, raw p50 us count=True, raw p50 us count=False, tidal top-10 p50 us"
      + (", RRF p50 ms, linear p50 ms" if j("tidal_fused_rrf.json") else "") + "):")
fr, fl = j("tidal_fused_rrf.json"), j("tidal_fused_linear.json")
for i, r in enumerate(t['results']):
    line = f"  {r['query']!r:36} {r['count']:>8} {r['p50_us']:>9} {r['nocount_p50_us']:>9} {top['results'][i]['p50_us']:>9}"
    if fr and fl:
        line += f" {fr['results'][i]['p50_us'] / 1000:>8.2f} {fl['results'][i]['p50_us'] / 1000:>8.2f}"
    print(line)
EOF
for f in "$RES"/explain_*.txt; do
    [[ -f "$f" ]] || continue
    echo
    echo "$(basename "$f"):"
    cat "$f"
done
log "done; results in $RES"
