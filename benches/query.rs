//! Query latency through the SQL layer (`Database::sql`): top-50 ranking queries over
//! 1 M items and 10 M zipfian signal events, and the per-row cost of a signal UDF.
//!
//! `cargo bench -p tidal-benches --bench query` (loads the data once, ~40 s, then runs
//! the queries for ~5 minutes and prints tables). Optional sections: `-- queries parts`
//! (default: both). Results and the DuckDB comparison: `docs/benchmarks.md`.
//!
//! Environment:
//! * `TIDAL_QUERY_RUNS` — measured runs per query (default 100, at least 50 recommended;
//!   3 warm-up runs are not counted).
//! * `TIDAL_QUERY_EXPORT=<dir>` — also write the generated data as Parquet
//!   (`items.parquet`, `events.parquet`), `meta.json` (the instant the events end at)
//!   and `reference.csv` (tidalDB's top 50 of Q1/Q2 read at that instant) for
//!   `benches/peers/duckdb_query.py`.
//! * `TIDAL_BENCH_DIR` — where the temporary database lives (default: the system temp
//!   dir).

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidal::datafusion::arrow::array::{
    ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use tidal::datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit,
};
use tidal::datafusion::arrow::util::pretty::pretty_format_batches;
use tidal::datafusion::parquet::arrow::ArrowWriter;
use tidal::{Config, Database, EntityId, EntityKind, Timestamp, Value};
use tidal_benches::{Zipf, percentile};

const ITEMS: u64 = 1_000_000;
const EVENTS: usize = 10_000_000;
/// Share of events that are `like`; the rest are `view`.
const LIKE_SHARE: f64 = 0.2;
const SPAN_DAYS: i64 = 30;
const DAY_US: i64 = 86_400_000_000;
const ITEM_TXN_ROWS: usize = 50_000;
const EVENT_TXN_EVENTS: usize = 100_000;
const WARMUP: usize = 3;

const Q1: &str = "SELECT id, decay('like', id) AS s FROM items ORDER BY s DESC LIMIT 50";
const Q2: &str = "SELECT id, decay('like', id) + 0.1 * decay('view', id) \
                  - window_count('view', id, '24h') * 0.01 AS s \
                  FROM items ORDER BY s DESC LIMIT 50";
const UDF_SUM: &str = "SELECT sum(decay('like', id)) FROM items";

fn tmpdir() -> tempfile::TempDir {
    match std::env::var("TIDAL_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("tempdir"),
        Err(_) => tempfile::tempdir().expect("tempdir"),
    }
}

/// Popularity rank → item id: a fixed bijection of 0..ITEMS (7919 is coprime with
/// 10^6), so popular items are spread over the id space rather than clustered at 0.
fn item_of_rank(rank: u64) -> u64 {
    (rank * 7_919 + 12_345) % ITEMS
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Int64, false),
        Field::new("signal", DataType::Utf8, false),
        Field::new("weight", DataType::Float64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]))
}

fn items_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("creator_id", DataType::Int64, false),
    ]))
}

fn parquet_writer(dir: &Path, name: &str, schema: SchemaRef) -> ArrowWriter<File> {
    let f = File::create(dir.join(name)).expect("create parquet file");
    ArrowWriter::try_new(f, schema, None).expect("parquet writer")
}

struct Loaded {
    _dir: tempfile::TempDir,
    db: Database,
    /// The events span (end − 30 days, end]; the newest event is at `end`.
    end: Timestamp,
}

/// Builds the database: `items` with 1 M rows, signals `like` and `view`, 10 M events.
fn load(rt: &tokio::runtime::Runtime, export: Option<&Path>) -> Loaded {
    let dir = tmpdir();
    let db = Database::open_with(Config::new(dir.path())).expect("open");
    for ddl in [
        "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT) WITH (kind = 'item')",
        "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '14 days' \
         WINDOWS ('24h', '7d', 'all')",
        "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '7 days' \
         WINDOWS ('1h', '24h', '7d')",
    ] {
        rt.block_on(db.sql(ddl)).expect("ddl");
    }
    let mut rng = StdRng::seed_from_u64(42);

    // Items, in batched transactions.
    let t = Instant::now();
    let mut items_pq = export.map(|d| parquet_writer(d, "items.parquet", items_schema()));
    let mut id = 0u64;
    while id < ITEMS {
        let n = ITEM_TXN_ROWS.min((ITEMS - id) as usize);
        let ids: Vec<i64> = (id..id + n as u64).map(|i| i as i64).collect();
        let creators: Vec<i64> = (0..n).map(|_| rng.random_range(0..50_000)).collect();
        let mut txn = db.engine().begin();
        for (&i, &c) in ids.iter().zip(&creators) {
            txn.insert(EntityKind::Item, vec![Value::Int(i), Value::Int(c)])
                .expect("insert");
        }
        txn.commit().expect("commit items");
        if let Some(w) = items_pq.as_mut() {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(creators)),
            ];
            let b = RecordBatch::try_new(items_schema(), cols).expect("batch");
            w.write(&b).expect("write items.parquet");
        }
        id += n as u64;
    }
    if let Some(w) = items_pq {
        w.close().expect("close items.parquet");
    }
    let items_s = t.elapsed().as_secs_f64();

    // Events: in time order over the last 30 days, one every ~259 ms (distinct
    // timestamps, so nothing is deduplicated away), zipf(1.0) over item popularity.
    let t = Instant::now();
    let end = db.now();
    let step = SPAN_DAYS * DAY_US / EVENTS as i64;
    let first = end.0 - step * (EVENTS as i64 - 1);
    let zipf = Zipf::new(ITEMS as usize, 1.0);
    let mut events_pq = export.map(|d| parquet_writer(d, "events.parquet", events_schema()));
    let mut accepted = 0usize;
    let mut i = 0usize;
    while i < EVENTS {
        let n = EVENT_TXN_EVENTS.min(EVENTS - i);
        let mut ent = Vec::with_capacity(n);
        let mut sig = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut txn = db.engine().begin();
        for k in 0..n {
            let e = item_of_rank(zipf.sample(&mut rng));
            let s = if rng.random_bool(LIKE_SHARE) {
                "like"
            } else {
                "view"
            };
            let at = first + (i + k) as i64 * step;
            txn.signal(s, EntityId(e), None, 1.0, Some(Timestamp(at)))
                .expect("event");
            ent.push(e as i64);
            sig.push(s);
            ts.push(at);
        }
        accepted += txn.commit().expect("commit events").events_accepted;
        if let Some(w) = events_pq.as_mut() {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ent)),
                Arc::new(StringArray::from(sig)),
                Arc::new(Float64Array::from(vec![1.0; n])),
                Arc::new(TimestampMicrosecondArray::from(ts)),
            ];
            let b = RecordBatch::try_new(events_schema(), cols).expect("batch");
            w.write(&b).expect("write events.parquet");
        }
        i += n;
    }
    if let Some(w) = events_pq {
        w.close().expect("close events.parquet");
    }
    assert_eq!(accepted, EVENTS, "events were deduplicated away");
    let events_s = t.elapsed().as_secs_f64();
    // Checkpoint now so no background checkpoint runs while we measure.
    let t = Instant::now();
    db.checkpoint().expect("checkpoint");
    println!(
        "load: {ITEMS} items in {items_s:.1} s ({:.0} rows/s), {EVENTS} events in {events_s:.1} s \
         ({:.2} M events/s, incl. generation{}), checkpoint {:.1} s",
        ITEMS as f64 / items_s,
        EVENTS as f64 / events_s / 1e6,
        if export.is_some() {
            " and Parquet export"
        } else {
            ""
        },
        t.elapsed().as_secs_f64()
    );
    let (files, bytes) = dir_stats(&dir.path().join("store"));
    println!(
        "entity store after load: {files} files, {:.1} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    Loaded { _dir: dir, db, end }
}

/// Files and bytes under `dir`, recursively.
fn dir_stats(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    runs: usize,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    Stats {
        runs: ms.len(),
        p50: percentile(&ms, 50.0),
        p99: percentile(&ms, 99.0),
        min: ms.first().copied().unwrap_or(f64::NAN),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

/// Runs `sql` `WARMUP + runs` times; returns the timings (ms) of the measured runs and
/// the last result.
fn time_sql(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    sql: &str,
    runs: usize,
) -> (Stats, Vec<RecordBatch>) {
    let mut last = Vec::new();
    for _ in 0..WARMUP {
        last = rt.block_on(db.sql(sql)).expect("query");
    }
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        last = rt.block_on(db.sql(sql)).expect("query");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (stats(ms), last)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// (id, score) pairs of a two-column `id, s` result.
fn id_scores(batches: &[RecordBatch]) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let s = b.column(1).as_primitive::<Float64Type>();
        for r in 0..b.num_rows() {
            out.push((ids.value(r), s.value(r)));
        }
    }
    out
}

fn print_row(name: &str, s: &Stats, extra: &str) {
    println!(
        "| {name:<44} | {:>4} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} | {extra}",
        s.runs, s.p50, s.p99, s.min, s.max
    );
}

fn print_header() {
    println!(
        "| {:<44} | {:>4} | {:>9} | {:>9} | {:>9} | {:>9} | notes",
        "query", "runs", "p50 ms", "p99 ms", "min ms", "max ms"
    );
    println!(
        "|{:-<46}|{:-<6}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|------",
        "", "", "", "", "", ""
    );
}

/// Writes `meta.json` and `reference.csv` (tidalDB's top 50 of Q1 and Q2 read at the
/// export instant) next to the Parquet files.
fn export_reference(rt: &tokio::runtime::Runtime, l: &Loaded, dir: &Path) {
    let at = format!("TIMESTAMP '{}'", l.end);
    let q1 =
        format!("SELECT id, decay('like', id, {at}) AS s FROM items ORDER BY s DESC, id LIMIT 50");
    let q2 = format!(
        "SELECT id, decay('like', id, {at}) + 0.1 * decay('view', id, {at}) \
         - window_count('view', id, '24h', {at}) * 0.01 AS s \
         FROM items ORDER BY s DESC, id LIMIT 50"
    );
    let sum = format!("SELECT sum(decay('like', id, {at})) FROM items");
    let mut csv = String::from("query,rank,id,score\n");
    for (name, q) in [("q1", &q1), ("q2", &q2)] {
        let res = rt.block_on(l.db.sql(q)).expect("reference query");
        for (rank, (id, s)) in id_scores(&res).into_iter().enumerate() {
            writeln!(csv, "{name},{},{id},{s:.17e}", rank + 1).expect("fmt");
        }
    }
    let res = rt.block_on(l.db.sql(&sum)).expect("reference sum");
    let total = res[0].column(0).as_primitive::<Float64Type>().value(0);
    writeln!(csv, "sum,1,-1,{total:.17e}").expect("fmt");
    std::fs::write(dir.join("reference.csv"), csv).expect("write reference.csv");
    let meta = format!(
        "{{\"now_us\": {}, \"now\": \"{}\", \"items\": {ITEMS}, \"events\": {EVENTS}, \
         \"like_half_life_us\": {}, \"view_half_life_us\": {}, \"runs\": {}}}\n",
        l.end.0,
        l.end,
        14 * DAY_US,
        7 * DAY_US,
        runs()
    );
    std::fs::write(dir.join("meta.json"), meta).expect("write meta.json");
    println!(
        "exported Parquet, meta.json and reference.csv to {}",
        dir.display()
    );
}

fn runs() -> usize {
    std::env::var("TIDAL_QUERY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn queries(rt: &tokio::runtime::Runtime, l: &Loaded, runs: usize) {
    println!();
    println!("Through Database::sql, {ITEMS} items, {EVENTS} events (20 % like, 80 % view):");
    print_header();
    let (s1, r1) = time_sql(rt, &l.db, Q1, runs);
    let top = id_scores(&r1);
    print_row(
        "Q1 decay('like') top 50",
        &s1,
        &format!(
            "{} rows; target p50 <= 20 ms: {}; top id {} s={:.1}",
            rows(&r1),
            if s1.p50 <= 20.0 { "met" } else { "MISSED" },
            top.first().map_or(-1, |t| t.0),
            top.first().map_or(f64::NAN, |t| t.1)
        ),
    );
    let (s2, r2) = time_sql(rt, &l.db, Q2, runs);
    print_row(
        "Q2 like + 0.1 view - 0.01 view_24h, top 50",
        &s2,
        &format!("{} rows", rows(&r2)),
    );
    let (s3, _) = time_sql(rt, &l.db, UDF_SUM, runs);
    print_row(
        "sum(decay('like', id)) over all items",
        &s3,
        &format!(
            "{:.1} ns/row (p50 / {ITEMS} rows, scan included)",
            s3.p50 * 1e6 / ITEMS as f64
        ),
    );
}

/// Where Q1's time goes: the scan alone, the ledger gather alone, and DataFusion's
/// per-operator metrics.
fn parts(rt: &tokio::runtime::Runtime, l: &Loaded, runs: usize) {
    println!();
    println!("Parts of Q1:");
    print_header();
    let (scan, _) = time_sql(rt, &l.db, "SELECT max(id) FROM items", runs);
    print_row(
        "scan only: SELECT max(id) FROM items",
        &scan,
        &format!("{:.1} ns/row", scan.p50 * 1e6 / ITEMS as f64),
    );
    let (topk, _) = time_sql(
        rt,
        &l.db,
        "SELECT id, creator_id FROM items ORDER BY creator_id DESC LIMIT 50",
        runs,
    );
    print_row("scan + top-k: ORDER BY creator_id LIMIT 50", &topk, "");
    // The store iteration the scan is built on, without Arrow, channels or DataFusion.
    let mut ms = Vec::with_capacity(runs);
    for r in 0..WARMUP + runs {
        let view = l.db.engine().read();
        let t = Instant::now();
        let mut n = 0u64;
        for row in view.store().scan(EntityKind::Item) {
            std::hint::black_box(row.expect("row"));
            n += 1;
        }
        if r >= WARMUP {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        assert_eq!(n, ITEMS);
    }
    let iter = stats(ms);
    print_row(
        "StoreSnapshot::scan, decoded rows (no SQL)",
        &iter,
        &format!("{:.1} ns/row", iter.p50 * 1e6 / ITEMS as f64),
    );
    // The ledger gather without SQL: one decay_batch over all ids.
    let ids: Vec<EntityId> = (0..ITEMS).map(EntityId).collect();
    let mut out = Vec::with_capacity(ids.len());
    let mut ms = Vec::with_capacity(runs);
    for r in 0..WARMUP + runs {
        let view = l.db.engine().read();
        let t = Instant::now();
        view.decay_batch("like", &ids, l.db.now(), &mut out)
            .expect("decay_batch");
        if r >= WARMUP {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let gather = stats(ms);
    print_row(
        "ReadView::decay_batch over 1M ids (no SQL)",
        &gather,
        &format!("{:.1} ns/row", gather.p50 * 1e6 / ITEMS as f64),
    );
    let plan = rt
        .block_on(l.db.sql(&format!("EXPLAIN ANALYZE {Q1}")))
        .expect("explain analyze");
    match pretty_format_batches(&plan) {
        Ok(t) => println!("\nEXPLAIN ANALYZE Q1:\n{t}"),
        Err(e) => println!("EXPLAIN ANALYZE Q1: cannot format: {e}"),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not. Only run the (slow)
    // report when invoked as a benchmark.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let only: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let run = |name: &str| only.is_empty() || only.contains(&name);
    let runs = runs();
    let export: Option<PathBuf> = std::env::var_os("TIDAL_QUERY_EXPORT").map(PathBuf::from);
    if let Some(d) = &export {
        std::fs::create_dir_all(d).expect("create export dir");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "query bench: {} cores, {runs} measured runs per query after {WARMUP} warm-up runs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let loaded = load(&rt, export.as_deref());
    if let Some(d) = &export {
        export_reference(&rt, &loaded, d);
    }
    if run("queries") {
        queries(&rt, &loaded, runs);
    }
    if run("parts") {
        parts(&rt, &loaded, runs);
    }
    let t = Instant::now();
    drop(loaded);
    println!(
        "\nclosed the database in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
