//! A load generator for any PostgreSQL-wire server: tidalDB's `tidal serve` or
//! PostgreSQL itself, so the two can be measured with the same client.
//!
//! ```sh
//! cargo run --release -p tidal-benches --bin loadgen -- \
//!     --url postgresql://tidal@127.0.0.1:5433/tidal --dialect tidal --workload setup
//! cargo run --release -p tidal-benches --bin loadgen -- \
//!     --url postgresql://tidal@127.0.0.1:5433/tidal --clients 32 --seconds 20 --workload insert
//! ```
//!
//! Workloads (`--workload`):
//!
//! * `setup` — creates the schema (dropping an existing one) and preloads `--items` rows
//!   into `items` with COPY. tidal: `CREATE SIGNAL like …`, `CREATE TABLE items … WITH
//!   (kind = 'item')`; postgres: `events(signal, entity_id, user_id, weight, ts)` with
//!   indexes on `(entity_id, ts)` and `(signal, ts)`, and `items(id bigint primary key,
//!   …)`, then `VACUUM ANALYZE`.
//! * `insert` — `--clients` connections, each running one prepared single-row INSERT of a
//!   signal event after another (`--batch N`: N rows per INSERT); every statement is
//!   durable when it returns (tidal always; postgres with `synchronous_commit = on`).
//!   Statements/s and latency p50/p99.
//! * `copy` — `--copy-streams` connections in parallel, each sending `--copies` COPYs of
//!   `--copy-rows` signal events in CSV. The CSV is generated before the clock starts.
//!   Rows/s over the wall time of all streams. COPY goes over the simple-query protocol
//!   (as psql sends it; `--copy-protocol extended` uses tokio-postgres's `copy_in`,
//!   which `tidal serve` does not accept yet).
//!
//!   insert/point/range use a minimal extended-protocol client by default (`--client
//!   raw`: one Bind/Execute/Sync write and one read per statement, binary values, the
//!   statement prepared once per connection with the parameter types the server
//!   describes). The load generator shares the machine with the server, and this client
//!   spends about a quarter less CPU per statement than tokio-postgres (`--client
//!   driver`), which is left to the server under test.
//! * `point` — `SELECT … FROM items WHERE id = $1` on random ids; qps and p50/p99.
//! * `range` — `SELECT … FROM items WHERE id BETWEEN $1 AND $1 + 100`; qps and p50/p99.
//! * `rank-setup` — the ranking data set of `benches/peers/retrieve_bench.sh`: `--items`
//!   items (`creator_id` zipf(1.0) over `--creators` creators, `created_at`, `category`)
//!   and `--events` events `view`/`like`/`skip` (75/20/5 %, zipf(1.0) over items, in time
//!   order over the `--span-hours` ending at `--at`), generated from `--seed` (the same
//!   data for every dialect) and loaded with COPY. tidal: the signals and the profile
//!   `trending` (`rank::PROFILE_SQL`); postgres: `items` and `events` tables, indexes built
//!   after the load, `VACUUM ANALYZE`. `--export-dir` also writes the data as CSV (and
//!   `meta.json`) for the DuckDB peer. `--personal` (tidal) declares `view … MARKS seen`
//!   and `like … MARKS liked AFFINITY 0.15`, for `benches/peers/personal_bench.sh`.
//! * `query` — one statement (`--sql` or `--sql-file`) `--runs` times from `--clients`
//!   connections after `--warmup-runs` unmeasured runs per connection, over the simple
//!   or extended protocol (`--protocol`); p50/p99/mean latency and qps. `--result-csv`
//!   writes the rows of one more run (simple protocol, text values) for cross-checks;
//!   `--before-each` runs an unmeasured statement before every run (e.g. a write that
//!   invalidates tidal's scan cache).
//!
//! Every run ends with one machine-readable line, `RESULT key=value …`, which
//! `benches/peers/wire_bench.sh` collects into its comparison table.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidal_benches::{Zipf, percentile};
use tidal_core::Timestamp;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dialect {
    /// tidalDB: events go to the `signals` pseudo-table.
    Tidal,
    /// PostgreSQL: events go to an ordinary indexed table `events`.
    Postgres,
}

/// How statements (and COPY) are sent: `simple` (one Query message, as psql sends it)
/// or `extended` (Parse/Bind/Execute; prepared once per connection for `query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Simple,
    Extended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    Raw,
    Driver,
}

/// One closed-loop connection with its prepared statement.
enum LoopConn {
    Raw(raw::RawConn, raw::RawStatement),
    Driver(Client, Statement),
}

impl LoopConn {
    async fn connect(args: &Args, sql: &str) -> Result<LoopConn> {
        Ok(match args.client {
            ClientKind::Raw => {
                let mut c = raw::RawConn::connect(&args.url).await?;
                let stmt = c.prepare("loop", sql).await?;
                LoopConn::Raw(c, stmt)
            }
            ClientKind::Driver => {
                let c = connect(&args.url).await?;
                let stmt = c
                    .prepare(sql)
                    .await
                    .with_context(|| format!("preparing {sql}"))?;
                LoopConn::Driver(c, stmt)
            }
        })
    }

    /// Runs the statement once; returns (rows returned, rows the command tag reports).
    async fn run(&mut self, values: &[raw::Value]) -> Result<(u64, u64)> {
        match self {
            LoopConn::Raw(c, stmt) => c.execute(stmt, values).await,
            LoopConn::Driver(c, stmt) => {
                let now = |us: i64| UNIX_EPOCH + Duration::from_micros(us as u64);
                let owned: Vec<Box<dyn ToSql + Sync + Send>> = values
                    .iter()
                    .map(|v| -> Box<dyn ToSql + Sync + Send> {
                        match *v {
                            raw::Value::Text(t) => Box::new(t),
                            raw::Value::Int(i) => Box::new(i),
                            raw::Value::Float(f) => Box::new(f),
                            raw::Value::Micros(us) => Box::new(now(us)),
                        }
                    })
                    .collect();
                let params: Vec<&(dyn ToSql + Sync)> = owned
                    .iter()
                    .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                if stmt.columns().is_empty() {
                    let n = c.execute(stmt, &params).await?;
                    Ok((0, n))
                } else {
                    let rows = c.query(stmt, &params).await?;
                    Ok((rows.len() as u64, rows.len() as u64))
                }
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            LoopConn::Raw(c, _) => c.is_closed(),
            LoopConn::Driver(c, _) => c.is_closed(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Setup,
    Insert,
    Copy,
    Point,
    Range,
    RankSetup,
    Query,
}

/// The lower-case name clap uses (`tidal`, `insert`, …).
fn value_name(v: &impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&value_name(self))
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&value_name(self))
    }
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for PostgreSQL-wire servers (tidalDB and PostgreSQL)")]
struct Args {
    /// Connection URL (libpq style).
    #[arg(long, default_value = "postgresql://tidal@127.0.0.1:5433/tidal")]
    url: String,
    /// Which schema and statements to use.
    #[arg(long, value_enum, default_value_t = Dialect::Tidal)]
    dialect: Dialect,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Concurrent connections for insert/point/range.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Measured duration of insert/point/range.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Unmeasured warm-up before the measured interval.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Rows per INSERT statement in the insert workload (`VALUES (…), (…), …`).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Rows in `items` (setup preloads ids 1..=items; the other workloads draw from them).
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// Rows per COPY in the copy workload.
    #[arg(long, default_value_t = 1_000_000)]
    copy_rows: u64,
    /// Parallel COPY streams in the copy workload.
    #[arg(long, default_value_t = 4)]
    copy_streams: usize,
    /// COPYs per stream in the copy workload.
    #[arg(long, default_value_t = 1)]
    copies: usize,
    /// How COPY is sent: `simple` (a Query message, as psql sends it) or `extended`
    /// (Parse/Bind/Execute, as tokio-postgres's `copy_in` sends it).
    #[arg(long, value_enum, default_value_t = Protocol::Simple)]
    copy_protocol: Protocol,
    /// Rows per COPY when setup preloads `items`. Small by default: tidal's COPY into an
    /// entity table costs time quadratic in the rows of one COPY (see docs/benchmarks.md).
    #[arg(long, default_value_t = 10_000)]
    preload_chunk: u64,
    /// Width of the range query (`BETWEEN $1 AND $1 + width`).
    #[arg(long, default_value_t = 100)]
    range_width: i64,
    /// Tokio worker threads of the load generator (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Client of insert/point/range: `raw` (a minimal extended-protocol client: one
    /// Bind/Execute/Sync write and one read per statement, binary values) or `driver`
    /// (tokio-postgres, which costs the shared cores about 3× the client CPU).
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    client: ClientKind,
    /// Seed of the random ids (and of the rank-setup data).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// rank-setup: signal events to generate.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// rank-setup: distinct creators (creator_id is zipf(1.0) over them).
    #[arg(long, default_value_t = 50_000)]
    creators: u64,
    /// rank-setup: the events span this many hours ending at `--at`.
    #[arg(long, default_value_t = 48.0)]
    span_hours: f64,
    /// rank-setup: the instant the events end at (UTC, `YYYY-MM-DD HH:MM:SS[.ffffff]`);
    /// default: the last microsecond of the previous full UTC hour, so tidal's bucketed
    /// 1 h and 24 h windows end exactly at it.
    #[arg(long)]
    at: Option<String>,
    /// rank-setup: half-life of the `skip` signal's decay, in hours.
    #[arg(long, default_value_t = 6.0)]
    skip_half_life_hours: f64,
    /// rank-setup (tidal): declare per-user state on the signals — `view … MARKS seen`,
    /// `like … MARKS liked AFFINITY 0.15` — so the events fill marks and affinities.
    #[arg(long)]
    personal: bool,
    /// rank-setup: a users table for every user of the events (region: one of 50,
    /// zipf(1.0); age_group: one of 8, uniform), loaded before the events; on tidal the
    /// three signals declare `COHORTS (region, age_group, (region, age_group))` unless
    /// `--cohort-signals none`. The events are the same with or without it.
    #[arg(long)]
    cohorts: bool,
    /// rank-setup with --cohorts (tidal): `all` declares COHORTS (region, age_group,
    /// (region, age_group)) on the signals, `singles` COHORTS (region, age_group) (a pair
    /// is then estimated), `none` loads the users table alone (the ingest baseline).
    #[arg(long, default_value = "all")]
    cohort_signals: String,
    /// rank-setup: events per COPY (spread over `--copy-streams` connections).
    #[arg(long, default_value_t = 500_000)]
    event_chunk: u64,
    /// rank-setup: also write items.csv, events.csv and meta.json here.
    #[arg(long)]
    export_dir: Option<PathBuf>,
    /// query: the statement to run.
    #[arg(long)]
    sql: Option<String>,
    /// query: read the statement from this file.
    #[arg(long)]
    sql_file: Option<PathBuf>,
    /// query: measured runs in total (shared by the clients).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// query: unmeasured runs per connection before the measured ones.
    #[arg(long, default_value_t = 3)]
    warmup_runs: usize,
    /// query: protocol of the statement.
    #[arg(long, value_enum, default_value_t = Protocol::Simple)]
    protocol: Protocol,
    /// query: fail unless every run returns this many rows.
    #[arg(long)]
    expect_rows: Option<usize>,
    /// query: write the rows of one extra run here (CSV with a header, text values).
    #[arg(long)]
    result_csv: Option<PathBuf>,
    /// query: a label for the RESULT line.
    #[arg(long, default_value = "query")]
    label: String,
    /// query: an unmeasured statement each connection runs before every run (warm-up
    /// runs included), e.g. a write that invalidates a cache.
    #[arg(long)]
    before_each: Option<String>,
}

impl Args {
    fn events_table(&self) -> &'static str {
        match self.dialect {
            Dialect::Tidal => "signals",
            Dialect::Postgres => "events",
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().context("tokio runtime")?;
    rt.block_on(run(Arc::new(args)))
}

async fn run(args: Arc<Args>) -> Result<()> {
    match args.workload {
        Workload::Setup => setup(&args).await,
        Workload::Insert | Workload::Point | Workload::Range => closed_loop(args).await,
        Workload::Copy => copy(&args).await,
        Workload::RankSetup => rank::setup(&args).await,
        Workload::Query => query(args).await,
    }
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection error: {e}");
        }
    });
    Ok(client)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC, which both systems read as a TIMESTAMP.
fn ts_text(us: i64) -> String {
    Timestamp(us).to_string()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn setup(args: &Args) -> Result<()> {
    let c = connect(&args.url).await?;
    let ddl = match args.dialect {
        Dialect::Tidal => {
            "DROP TABLE IF EXISTS items;
             DROP SIGNAL IF EXISTS like;
             CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '14 days'
                 WINDOWS ('24h', '7d', 'all');
             CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, title TEXT,
                 created_at TIMESTAMP) WITH (kind = 'item');"
        }
        Dialect::Postgres => {
            "DROP TABLE IF EXISTS events, items;
             CREATE TABLE events (signal text NOT NULL, entity_id bigint NOT NULL,
                 user_id bigint, weight float8 NOT NULL DEFAULT 1, ts timestamp NOT NULL);
             CREATE INDEX events_entity_ts ON events (entity_id, ts);
             CREATE INDEX events_signal_ts ON events (signal, ts);
             CREATE TABLE items (id bigint PRIMARY KEY, creator_id bigint, title text,
                 created_at timestamp);"
        }
    };
    c.batch_execute(ddl).await.context("creating the schema")?;
    println!("schema created ({})", args.dialect);

    // Preload items in chunks, one COPY per chunk.
    let mut copier = Copier::connect(args).await?;
    let t0 = Instant::now();
    let base = now_us() - 30 * 86_400_000_000;
    let chunk = args.preload_chunk.max(1);
    let mut loaded = 0u64;
    let mut lo = 1u64;
    while lo <= args.items {
        let hi = (lo + chunk - 1).min(args.items);
        let mut csv = String::with_capacity(((hi - lo + 1) * 48) as usize);
        for id in lo..=hi {
            let created = ts_text(base + (id as i64) * 1_000);
            let _ = writeln!(csv, "{id},{},item {id},{created}", id % 10_000);
        }
        let n = copier
            .copy_in(
                "COPY items (id, creator_id, title, created_at) FROM STDIN (FORMAT csv)",
                Bytes::from(csv),
            )
            .await
            .with_context(|| format!("COPY items {lo}..={hi}"))?;
        ensure!(n == hi - lo + 1, "COPY items reported {n} rows");
        loaded += n;
        lo = hi + 1;
    }
    let load_s = t0.elapsed().as_secs_f64();
    if args.dialect == Dialect::Postgres {
        // One statement each: VACUUM cannot run in the implicit transaction of a
        // multi-statement query.
        for t in ["items", "events"] {
            c.batch_execute(&format!("VACUUM ANALYZE {t}"))
                .await
                .context("VACUUM ANALYZE")?;
        }
    }
    let total_s = t0.elapsed().as_secs_f64();
    println!(
        "preloaded {loaded} items in {load_s:.2} s ({:.0} rows/s); with ANALYZE {total_s:.2} s",
        loaded as f64 / load_s
    );
    println!(
        "RESULT dialect={} workload=setup rows={loaded} seconds={load_s:.3} rows_per_s={:.0}",
        args.dialect,
        loaded as f64 / load_s
    );
    Ok(())
}

/// One connection that COPYs, over either protocol.
enum Copier {
    Simple(raw::RawConn),
    Extended(Client),
}

impl Copier {
    async fn connect(args: &Args) -> Result<Copier> {
        Ok(match args.copy_protocol {
            Protocol::Simple => Copier::Simple(raw::RawConn::connect(&args.url).await?),
            Protocol::Extended => Copier::Extended(connect(&args.url).await?),
        })
    }

    /// Sends `data` as one COPY FROM STDIN in 1 MiB CopyData messages; returns the
    /// row count the server reported.
    async fn copy_in(&mut self, stmt: &str, data: Bytes) -> Result<u64> {
        match self {
            Copier::Simple(c) => c.copy_in(stmt, &data).await,
            Copier::Extended(c) => {
                let sink = c.copy_in::<_, Bytes>(stmt).await?;
                futures::pin_mut!(sink);
                let mut at = 0;
                while at < data.len() {
                    let end = (at + COPY_MESSAGE_BYTES).min(data.len());
                    sink.send(data.slice(at..end)).await?;
                    at = end;
                }
                Ok(sink.finish().await?)
            }
        }
    }
}

const COPY_MESSAGE_BYTES: usize = 1 << 20;

async fn copy(args: &Args) -> Result<()> {
    ensure!(
        args.copy_streams >= 1 && args.copies >= 1,
        "nothing to copy"
    );
    let stmt = format!(
        "COPY {} (signal, entity_id, user_id, weight, ts) FROM STDIN (FORMAT csv)",
        args.events_table()
    );
    // Generate every COPY's CSV up front. Timestamps rise with the row number (events
    // arrive in time order) and end now; user ids are unique, so tidal's dedup drops
    // nothing.
    let total = args.copy_rows * (args.copy_streams * args.copies) as u64;
    let t_gen = Instant::now();
    let end = now_us();
    let mut payloads: Vec<Vec<Bytes>> = Vec::new();
    let mut bytes = 0usize;
    let mut rng = StdRng::seed_from_u64(args.seed);
    for s in 0..args.copy_streams {
        let mut mine = Vec::new();
        for k in 0..args.copies {
            let mut csv = String::with_capacity((args.copy_rows * 56) as usize);
            for i in 0..args.copy_rows {
                // Global row number, streams interleaved.
                let g = (k as u64 * args.copy_rows + i) * args.copy_streams as u64 + s as u64;
                let ts = end - (total - g) as i64;
                let entity = rng.random_range(1..=args.items.max(1));
                let user = 1_000_000_000 + g;
                let _ = writeln!(csv, "like,{entity},{user},1,{}", ts_text(ts));
            }
            bytes += csv.len();
            mine.push(Bytes::from(csv));
        }
        payloads.push(mine);
    }
    println!(
        "generated {total} rows ({:.1} MiB CSV) in {:.2} s",
        bytes as f64 / (1 << 20) as f64,
        t_gen.elapsed().as_secs_f64()
    );

    let mut clients = Vec::new();
    for _ in 0..args.copy_streams {
        clients.push(Copier::connect(args).await?);
    }
    let stmt = Arc::new(stmt);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (mut c, mine) in clients.into_iter().zip(payloads) {
        let stmt = stmt.clone();
        tasks.push(tokio::spawn(async move {
            let mut rows = 0u64;
            let mut times = Vec::new();
            for data in mine {
                let t = Instant::now();
                rows += c.copy_in(&stmt, data).await?;
                times.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok((rows, times))
        }));
    }
    let mut rows = 0u64;
    let mut per_copy = Vec::new();
    for t in tasks {
        let (r, times) = t.await.context("COPY task")??;
        rows += r;
        per_copy.extend(times);
    }
    let secs = t0.elapsed().as_secs_f64();
    ensure!(rows == total, "COPY reported {rows} rows of {total}");
    per_copy.sort_by(f64::total_cmp);
    println!(
        "{rows} rows in {secs:.2} s: {:.0} rows/s ({} streams × {} COPY × {} rows; \
         one COPY took {:.2}–{:.2} s)",
        rows as f64 / secs,
        args.copy_streams,
        args.copies,
        args.copy_rows,
        per_copy.first().copied().unwrap_or(f64::NAN),
        per_copy.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "RESULT dialect={} workload=copy streams={} rows={rows} seconds={secs:.3} rows_per_s={:.0}",
        args.dialect,
        args.copy_streams,
        rows as f64 / secs
    );
    Ok(())
}

/// What one client of a closed-loop workload measured.
#[derive(Debug, Default)]
struct ClientStats {
    /// Latencies of statements that completed inside the measured interval, in µs.
    lat_us: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
    /// Queries that returned an unexpected number of rows.
    wrong_rows: u64,
    /// Statements completed, warm-up included (for CPU per statement).
    total: u64,
}

/// N clients, each with its own connection and prepared statement, issuing one
/// statement after another (no think time) for warm-up + the measured interval.
async fn closed_loop(args: Arc<Args>) -> Result<()> {
    ensure!(args.clients >= 1, "--clients must be at least 1");
    ensure!(
        (1..=10_000).contains(&args.batch),
        "--batch must be in 1..=10000"
    );
    ensure!(args.items > args.range_width as u64, "--items too small");
    let sql = match args.workload {
        Workload::Insert => {
            let tuples: Vec<String> = (0..args.batch)
                .map(|r| {
                    let p = 5 * r;
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    )
                })
                .collect();
            format!(
                "INSERT INTO {} (signal, entity_id, user_id, weight, ts) VALUES {}",
                args.events_table(),
                tuples.join(", ")
            )
        }
        Workload::Point => {
            "SELECT id, creator_id, title, created_at FROM items WHERE id = $1".into()
        }
        Workload::Range => "SELECT id, creator_id, title, created_at FROM items \
                            WHERE id BETWEEN $1 AND $1 + 100"
            .replace("100", &args.range_width.to_string()),
        _ => bail!("not a closed-loop workload"),
    };

    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(LoopConn::connect(&args, &sql).await?);
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let deadline = measure_from + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) + i as u64);
            let mut st = ClientStats::default();
            let mut seq = 0u64;
            let mut values = Vec::with_capacity(5 * args.batch);
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                values.clear();
                let expect = match args.workload {
                    Workload::Insert => {
                        let now = now_us();
                        for _ in 0..args.batch {
                            seq += 1;
                            // Unique user ids: nothing is deduplicated away.
                            let user = ((i as i64) << 40) | seq as i64;
                            let entity = rng.random_range(1..=args.items) as i64;
                            values.extend([
                                raw::Value::Text("like"),
                                raw::Value::Int(entity),
                                raw::Value::Int(user),
                                raw::Value::Float(1.0),
                                raw::Value::Micros(now),
                            ]);
                        }
                        (0, args.batch as u64)
                    }
                    Workload::Point => {
                        values.push(raw::Value::Int(rng.random_range(1..=args.items) as i64));
                        (1, 1)
                    }
                    _ => {
                        let hi = args.items as i64 - args.range_width;
                        values.push(raw::Value::Int(rng.random_range(1..=hi)));
                        let n = args.range_width as u64 + 1;
                        (n, n)
                    }
                };
                let res = c.run(&values).await.map(|got| got == expect);
                let done = Instant::now();
                st.total += 1;
                let measured = t >= measure_from && done <= deadline;
                match res {
                    Ok(ok) => {
                        if measured {
                            st.lat_us.push((done - t).as_secs_f64() * 1e6);
                            if !ok {
                                st.wrong_rows += 1;
                            }
                        }
                    }
                    Err(e) => {
                        st.errors += 1;
                        if st.first_error.is_none() {
                            st.first_error = Some(format!("{e:?}"));
                        }
                        if c.is_closed() {
                            break;
                        }
                    }
                }
            }
            st
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut wrong = 0;
    let mut first_error = None;
    let mut total = 0;
    for t in tasks {
        let st = t.await.context("client task")?;
        total += st.total;
        lat.extend(st.lat_us);
        errors += st.errors;
        wrong += st.wrong_rows;
        if first_error.is_none() {
            first_error = st.first_error;
        }
    }
    if let Some(e) = &first_error {
        eprintln!("{errors} statements failed; first error: {e}");
    }
    ensure!(
        !lat.is_empty(),
        "no statement completed in the measured interval"
    );
    lat.sort_by(f64::total_cmp);
    let ops = lat.len();
    let qps = ops as f64 / args.seconds;
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let mean = lat.iter().sum::<f64>() / ops as f64;
    let max = lat.last().copied().unwrap_or(f64::NAN);
    // Inserted rows per second (insert) or rows returned per query (point/range).
    let rows_per_op = match args.workload {
        Workload::Insert => args.batch as f64,
        Workload::Point => 1.0,
        _ => (args.range_width + 1) as f64,
    };
    println!(
        "{} {}: {} clients, {ops} statements in {:.1} s = {qps:.0}/s ({:.0} rows/s); \
         latency p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms, max {:.3} ms; \
         {errors} errors, {wrong} unexpected row counts",
        args.dialect,
        args.workload,
        args.clients,
        args.seconds,
        qps * rows_per_op,
        p50 / 1e3,
        p99 / 1e3,
        mean / 1e3,
        max / 1e3,
    );
    println!(
        "RESULT dialect={} workload={} clients={} batch={} ops={ops} total_ops={total} seconds={:.3} \
         ops_per_s={qps:.0} rows_per_s={:.0} p50_ms={:.3} p99_ms={:.3} mean_ms={:.3} errors={errors} wrong_rows={wrong} client={}",
        args.dialect,
        args.workload,
        args.clients,
        if args.workload == Workload::Insert {
            args.batch
        } else {
            1
        },
        args.seconds,
        qps * rows_per_op,
        p50 / 1e3,
        p99 / 1e3,
        mean / 1e3,
        value_name(&args.client),
    );
    ensure!(
        errors == 0 && wrong == 0,
        "{errors} errors, {wrong} unexpected row counts"
    );
    Ok(())
}

/// `query`: one statement, `--runs` times from `--clients` connections.
async fn query(args: Arc<Args>) -> Result<()> {
    let sql = match (&args.sql, &args.sql_file) {
        (Some(s), None) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .trim_end_matches(';')
            .to_string(),
        _ => bail!("query needs exactly one of --sql and --sql-file"),
    };
    ensure!(args.clients >= 1, "--clients must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let sql = Arc::new(sql);
    let mut conns = Vec::new();
    for _ in 0..args.clients {
        let c = connect(&args.url).await?;
        let stmt = match args.protocol {
            Protocol::Extended => Some(
                c.prepare(&sql)
                    .await
                    .with_context(|| format!("preparing {sql}"))?,
            ),
            Protocol::Simple => None,
        };
        conns.push((c, stmt));
    }

    async fn before(c: &Client, before: Option<&str>) -> Result<()> {
        if let Some(b) = before {
            c.simple_query(b)
                .await
                .with_context(|| format!("running {b}"))?;
        }
        Ok(())
    }
    async fn once(c: &Client, stmt: Option<&Statement>, sql: &str) -> Result<usize> {
        Ok(match stmt {
            Some(s) => c.query(s, &[]).await?.len(),
            None => c
                .simple_query(sql)
                .await?
                .iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count(),
        })
    }

    // Warm-up, every connection in parallel.
    let t_warm = Instant::now();
    let mut warm = Vec::new();
    for (c, stmt) in &conns {
        let sql = sql.clone();
        let n = args.warmup_runs;
        let b = args.before_each.as_deref();
        warm.push(async move {
            for _ in 0..n {
                before(c, b).await?;
                once(c, stmt.as_ref(), &sql).await?;
            }
            anyhow::Ok(())
        });
    }
    for r in futures::future::join_all(warm).await {
        r.context("warm-up run")?;
    }
    let warm_s = t_warm.elapsed().as_secs_f64();

    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, stmt) in conns {
        let (sql, next, runs) = (sql.clone(), next.clone(), args.runs);
        let b = args.before_each.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rows = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < runs {
                before(&c, b.as_deref()).await?;
                let t = Instant::now();
                rows.push(once(&c, stmt.as_ref(), &sql).await?);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok((c, lat, rows))
        }));
    }
    let mut lat = Vec::new();
    let mut rows = Vec::new();
    let mut first = None;
    for t in tasks {
        let (c, l, r) = t.await.context("client task")??;
        lat.extend(l);
        rows.extend(r);
        first.get_or_insert(c);
    }
    let secs = t0.elapsed().as_secs_f64();
    rows.sort_unstable();
    rows.dedup();
    if let Some(want) = args.expect_rows {
        ensure!(
            rows == [want],
            "expected {want} rows from every run, got row counts {rows:?}"
        );
    }
    if let (Some(path), Some(c)) = (&args.result_csv, &first) {
        let mut out = String::new();
        let mut header = false;
        for m in c.simple_query(&sql).await.context("result run")? {
            if let SimpleQueryMessage::Row(r) = m {
                if !header {
                    let names: Vec<&str> = r.columns().iter().map(|c| c.name()).collect();
                    let _ = writeln!(out, "{}", names.join(","));
                    header = true;
                }
                let vals: Vec<&str> = (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                let _ = writeln!(out, "{}", vals.join(","));
            }
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    let mean = lat.iter().sum::<f64>() / n as f64;
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let (min, max) = (lat[0], lat[n - 1]);
    let qps = n as f64 / secs;
    let rows_text = rows
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("/");
    println!(
        "{} {}: {} clients, {:?} protocol, {n} runs in {secs:.2} s = {qps:.2}/s (after {} \
         warm-up runs per connection, {warm_s:.1} s); latency p50 {p50:.2} ms, p99 {p99:.2} ms, \
         mean {mean:.2} ms, min {min:.2} ms, max {max:.2} ms; {rows_text} rows",
        args.dialect, args.label, args.clients, args.protocol, args.warmup_runs,
    );
    println!(
        "RESULT dialect={} workload=query label={} clients={} protocol={} runs={n} \
         seconds={secs:.3} ops_per_s={qps:.3} p50_ms={p50:.3} p99_ms={p99:.3} mean_ms={mean:.3} \
         min_ms={min:.3} max_ms={max:.3} rows={rows_text}",
        args.dialect,
        args.label,
        args.clients,
        value_name(&args.protocol),
    );
    Ok(())
}

/// The ranking data set (`rank-setup`) shared by tidal, PostgreSQL and DuckDB.
mod rank {
    use super::*;

    /// The profile `rank-setup` creates on tidal; the peers' SQL computes the same score.
    pub const PROFILE_SQL: &str = "CREATE PROFILE trending ON items (\
        SCORE velocity('view', '1h') + 2 * velocity('like', '24h') - decay('skip'), \
        DIVERSITY max_per_creator 2)";

    const HOUR_US: i64 = 3_600_000_000;
    const CATEGORIES: u64 = 20;
    /// Signal mix of the events: view, like, skip.
    const SIGNALS: [(&str, f64); 3] = [("view", 0.75), ("like", 0.20), ("skip", 0.05)];
    /// `--cohorts`: users 1..=USERS, REGIONS regions (zipf) and AGE_GROUPS age groups.
    pub const USERS: u64 = 1_000_000;
    pub const REGIONS: usize = 50;
    pub const AGE_GROUPS: u64 = 8;

    /// The users table of `--cohorts` as CSV chunks: `id,region,age_group`, from its
    /// own random stream so the items and events do not change.
    fn generate_users(args: &Args) -> Vec<Chunk> {
        let mut rng = StdRng::seed_from_u64(args.seed ^ 0xC0_4027);
        let regions = Zipf::new(REGIONS, 1.0);
        let chunk = args.preload_chunk.max(1);
        let mut out = Vec::new();
        let mut id = 1u64;
        while id <= USERS {
            let hi = (id + chunk).min(USERS + 1);
            let mut csv = String::with_capacity(((hi - id) * 16) as usize);
            for u in id..hi {
                let r = regions.sample(&mut rng);
                let a = rng.random_range(0..AGE_GROUPS);
                let _ = writeln!(csv, "{u},r{r:02},a{a}");
            }
            out.push(Chunk {
                rows: hi - id,
                text: Bytes::from(csv),
            });
            id = hi;
        }
        out
    }

    /// The default instant: the last microsecond of the previous full UTC hour.
    pub fn default_at() -> i64 {
        now_us().div_euclid(HOUR_US) * HOUR_US - 1
    }

    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }

    /// One chunk of CSV for COPY: the rows and their text.
    struct Chunk {
        rows: u64,
        text: Bytes,
    }

    /// Generates the data from `seed`: items as CSV chunks of `item_chunk` rows, events
    /// as CSV chunks of `event_chunk` rows. `tz` is appended to every timestamp.
    fn generate(args: &Args, at: i64, tz: &str) -> Result<(Vec<Chunk>, Vec<Chunk>, [u64; 3])> {
        let items = args.items;
        ensure!(
            items >= 1 && args.creators >= 1,
            "--items and --creators must be >= 1"
        );
        // Popularity rank → item id through a fixed bijection of 0..items, so popular
        // items are spread over the id space.
        let mult = (7_919..).find(|m| gcd(*m, items) == 1).unwrap_or(1);
        let mut rng = StdRng::seed_from_u64(args.seed);
        let creators = Zipf::new(args.creators as usize, 1.0);
        let chunk = args.preload_chunk.max(1);
        let mut item_chunks = Vec::new();
        let mut id = 0u64;
        while id < items {
            let hi = (id + chunk).min(items);
            let mut csv = String::with_capacity(((hi - id) * 48) as usize);
            for i in id..hi {
                let creator = creators.sample(&mut rng) + 1;
                let created = at.div_euclid(1_000_000) * 1_000_000
                    - rng.random_range(0..90 * 24 * 3_600) * 1_000_000;
                let cat = rng.random_range(0..CATEGORIES);
                let _ = writeln!(csv, "{i},{creator},{}{tz},c{cat:02}", ts_text(created));
            }
            item_chunks.push(Chunk {
                rows: hi - id,
                text: Bytes::from(csv),
            });
            id = hi;
        }
        let zipf = Zipf::new(items as usize, 1.0);
        let n = args.events;
        let span = (args.span_hours * HOUR_US as f64) as i64;
        ensure!(
            n >= 1 && span >= n as i64,
            "--span-hours too short for --events"
        );
        // Distinct timestamps in (at − span, at], the newest exactly at `at`.
        let step = span / n as i64;
        let first = at - step * (n as i64 - 1);
        let mut per_signal = [0u64; 3];
        let mut event_chunks = Vec::new();
        let chunk = args.event_chunk.max(1);
        let mut k = 0u64;
        while k < n {
            let hi = (k + chunk).min(n);
            let mut csv = String::with_capacity(((hi - k) * 56) as usize);
            for e in k..hi {
                let item = (zipf.sample(&mut rng) * mult + 12_345) % items;
                let u: f64 = rng.random();
                let s = if u < SIGNALS[0].1 {
                    0
                } else if u < SIGNALS[0].1 + SIGNALS[1].1 {
                    1
                } else {
                    2
                };
                per_signal[s] += 1;
                let user = rng.random_range(1..=1_000_000u64);
                let ts = first + e as i64 * step;
                let _ = writeln!(csv, "{},{item},{user},1,{}{tz}", SIGNALS[s].0, ts_text(ts));
            }
            event_chunks.push(Chunk {
                rows: hi - k,
                text: Bytes::from(csv),
            });
            k = hi;
        }
        Ok((item_chunks, event_chunks, per_signal))
    }

    /// COPYs the chunks over `streams` connections (chunk i on stream i mod streams).
    async fn copy_chunks(
        args: &Args,
        stmt: &str,
        chunks: Vec<Chunk>,
        streams: usize,
    ) -> Result<u64> {
        let mut per: Vec<Vec<Chunk>> = (0..streams).map(|_| Vec::new()).collect();
        for (i, c) in chunks.into_iter().enumerate() {
            per[i % streams].push(c);
        }
        let mut tasks = Vec::new();
        for mine in per {
            let mut copier = Copier::connect(args).await?;
            let stmt = stmt.to_string();
            tasks.push(tokio::spawn(async move {
                let mut rows = 0;
                for c in mine {
                    let n = copier.copy_in(&stmt, c.text).await?;
                    ensure!(n == c.rows, "COPY reported {n} rows of {}", c.rows);
                    rows += n;
                }
                anyhow::Ok(rows)
            }));
        }
        let mut rows = 0;
        for t in tasks {
            rows += t.await.context("COPY task")??;
        }
        Ok(rows)
    }

    pub async fn setup(args: &Args) -> Result<()> {
        let at = match &args.at {
            Some(t) => {
                Timestamp::parse(t)
                    .map_err(|e| anyhow::anyhow!("--at: {e}"))?
                    .0
            }
            None => default_at(),
        };
        let hl_us = (args.skip_half_life_hours * HOUR_US as f64) as i64;
        ensure!(hl_us > 0, "--skip-half-life-hours must be positive");
        let c = connect(&args.url).await?;
        let tz = match args.dialect {
            Dialect::Tidal => {
                let (view_opts, like_opts) = if args.personal {
                    ("MARKS seen", "MARKS liked AFFINITY 0.15")
                } else {
                    ("", "")
                };
                let cohorts = match (args.cohorts, args.cohort_signals.as_str()) {
                    (false, _) | (true, "none") => "",
                    (true, "singles") => "COHORTS (region, age_group)",
                    (true, "all") => "COHORTS (region, age_group, (region, age_group))",
                    (true, other) => {
                        anyhow::bail!("--cohort-signals takes all, singles or none, not {other}")
                    }
                };
                let users = if args.cohorts {
                    "DROP TABLE IF EXISTS users;
                     CREATE TABLE users (id BIGINT PRIMARY KEY, region TEXT, age_group TEXT)
                         WITH (kind = 'user');"
                } else {
                    ""
                };
                let ddl = format!(
                    "DROP PROFILE IF EXISTS trending;
                     DROP TABLE IF EXISTS items;
                     DROP SIGNAL IF EXISTS view;
                     DROP SIGNAL IF EXISTS like;
                     DROP SIGNAL IF EXISTS skip;
                     CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT,
                         created_at TIMESTAMP, category TEXT) WITH (kind = 'item');
                     {users}"
                );
                c.batch_execute(&ddl).await.context("creating the schema")?;
                if args.cohorts {
                    // The users' rows first: cohorts file each event by its user's row.
                    let t = Instant::now();
                    let n = copy_chunks(
                        args,
                        "COPY users (id, region, age_group) FROM STDIN (FORMAT csv)",
                        generate_users(args),
                        1,
                    )
                    .await
                    .context("COPY users")?;
                    println!("loaded {n} users in {:.1} s", t.elapsed().as_secs_f64());
                }
                let signals = format!(
                    "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '1 day'
                         WINDOWS ('1h', '24h') {view_opts} {cohorts};
                     CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '7 days'
                         WINDOWS ('24h') {like_opts} {cohorts};
                     CREATE SIGNAL skip ON items DECAY EXPONENTIAL HALF_LIFE '{hl_us} microseconds' {cohorts};"
                );
                c.batch_execute(&signals)
                    .await
                    .context("creating the signals")?;
                ""
            }
            Dialect::Postgres => {
                c.batch_execute(
                    "DROP TABLE IF EXISTS events, items;
                     CREATE TABLE items (id bigint PRIMARY KEY, creator_id bigint NOT NULL,
                         created_at timestamptz NOT NULL, category text NOT NULL);
                     CREATE TABLE events (signal text NOT NULL, entity_id bigint NOT NULL,
                         user_id bigint, weight float8 NOT NULL DEFAULT 1,
                         ts timestamptz NOT NULL);",
                )
                .await
                .context("creating the schema")?;
                "+00"
            }
        };
        println!(
            "schema created ({}); events end at {} UTC",
            args.dialect,
            ts_text(at)
        );

        let t = Instant::now();
        let (items, events, per_signal) = generate(args, at, tz)?;
        let gen_s = t.elapsed().as_secs_f64();
        let csv_bytes: usize = items.iter().chain(&events).map(|c| c.text.len()).sum();
        println!(
            "generated {} items and {} events ({} view, {} like, {} skip; {:.0} MiB CSV) \
             from seed {} in {gen_s:.1} s",
            args.items,
            args.events,
            per_signal[0],
            per_signal[1],
            per_signal[2],
            csv_bytes as f64 / (1 << 20) as f64,
            args.seed
        );
        if let Some(dir) = &args.export_dir {
            export(args, dir, at, hl_us, &items, &events, per_signal)?;
            if args.cohorts {
                use std::io::Write as _;
                let path = dir.join("users.csv");
                let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
                f.write_all(b"id,region,age_group\n")?;
                for c in generate_users(args) {
                    f.write_all(&c.text)?;
                }
                f.flush()?;
                println!("exported users.csv");
            }
        }

        let t = Instant::now();
        let n_items = copy_chunks(
            args,
            "COPY items (id, creator_id, created_at, category) FROM STDIN (FORMAT csv)",
            items,
            1,
        )
        .await
        .context("COPY items")?;
        let items_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let n_events = copy_chunks(
            args,
            &format!(
                "COPY {} (signal, entity_id, user_id, weight, ts) FROM STDIN (FORMAT csv)",
                args.events_table()
            ),
            events,
            args.copy_streams.max(1),
        )
        .await
        .context("COPY events")?;
        let events_s = t.elapsed().as_secs_f64();
        println!(
            "loaded {n_items} items in {items_s:.1} s ({:.0} rows/s), {n_events} events in \
             {events_s:.1} s ({:.0} rows/s, {} streams)",
            n_items as f64 / items_s,
            n_events as f64 / events_s,
            args.copy_streams.max(1)
        );
        let t = Instant::now();
        match args.dialect {
            Dialect::Tidal => {
                c.batch_execute(PROFILE_SQL)
                    .await
                    .context("creating the profile")?;
                println!("{PROFILE_SQL}");
            }
            Dialect::Postgres => {
                for s in [
                    "CREATE INDEX events_signal_ts ON events (signal, ts)",
                    "CREATE INDEX events_entity ON events (entity_id)",
                    "VACUUM ANALYZE items",
                    "VACUUM ANALYZE events",
                ] {
                    let t = Instant::now();
                    c.batch_execute(s).await.with_context(|| s.to_string())?;
                    println!("{s}: {:.1} s", t.elapsed().as_secs_f64());
                }
            }
        }
        let post_s = t.elapsed().as_secs_f64();
        println!(
            "RESULT dialect={} workload=rank-setup items={n_items} events={n_events} \
             gen_s={gen_s:.2} items_s={items_s:.2} events_s={events_s:.2} \
             events_per_s={:.0} post_s={post_s:.2} at_us={at}",
            args.dialect,
            n_events as f64 / events_s
        );
        Ok(())
    }

    fn export(
        args: &Args,
        dir: &std::path::Path,
        at: i64,
        hl_us: i64,
        items: &[Chunk],
        events: &[Chunk],
        per_signal: [u64; 3],
    ) -> Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(dir)?;
        for (name, header, chunks) in [
            ("items.csv", "id,creator_id,created_at,category\n", items),
            ("events.csv", "signal,entity_id,user_id,weight,ts\n", events),
        ] {
            let path = dir.join(name);
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            f.write_all(header.as_bytes())?;
            for c in chunks {
                f.write_all(&c.text)?;
            }
            f.flush()?;
        }
        let meta = format!(
            "{{\"at_us\": {at}, \"at\": \"{}\", \"items\": {}, \"events\": {}, \"creators\": {}, \
             \"span_hours\": {}, \"seed\": {}, \"skip_half_life_us\": {hl_us}, \
             \"view\": {}, \"like\": {}, \"skip\": {}, \"profile\": \"{}\"}}\n",
            ts_text(at),
            args.items,
            args.events,
            args.creators,
            args.span_hours,
            args.seed,
            per_signal[0],
            per_signal[1],
            per_signal[2],
            PROFILE_SQL
        );
        std::fs::write(dir.join("meta.json"), meta)?;
        println!(
            "exported items.csv, events.csv and meta.json to {}",
            dir.display()
        );
        Ok(())
    }
}

/// A minimal frontend of the simple-query protocol, just enough for COPY FROM STDIN:
/// startup (trust, cleartext, MD5 or SCRAM-SHA-256 authentication over plain TCP), one
/// Query, the CopyData stream, CopyDone. tokio-postgres sends COPY only through the
/// extended protocol; psql and most drivers send it as a simple Query, and so does this.
mod raw {
    use anyhow::{Context, Result, bail, ensure};
    use bytes::{Bytes, BytesMut};
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::IsNull;
    use postgres_protocol::authentication::md5_hash;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::backend::{ErrorResponseBody, Message};
    use postgres_protocol::message::frontend::{self, BindError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_postgres::config::Host;

    use super::COPY_MESSAGE_BYTES;

    /// A statement prepared by [`RawConn::prepare`].
    pub struct RawStatement {
        name: String,
        params: Vec<u32>,
    }

    /// A parameter value of the closed-loop workloads.
    #[derive(Debug, Clone, Copy)]
    pub enum Value {
        Text(&'static str),
        Int(i64),
        Float(f64),
        /// Microseconds since the Unix epoch (UTC).
        Micros(i64),
    }

    /// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

    impl Value {
        /// Appends the binary encoding of `self` as type `oid`; false if it does not fit.
        fn encode(&self, oid: u32, buf: &mut BytesMut) -> bool {
            use bytes::BufMut;
            match (*self, oid) {
                // text, varchar, name
                (Value::Text(s), 25 | 1043 | 19) => buf.put_slice(s.as_bytes()),
                (Value::Int(i), 20) => buf.put_i64(i),
                (Value::Int(i), 23) => match i32::try_from(i) {
                    Ok(i) => buf.put_i32(i),
                    Err(_) => return false,
                },
                (Value::Float(f), 701) => buf.put_f64(f),
                (Value::Float(f), 700) => buf.put_f32(f as f32),
                // timestamp, timestamptz
                (Value::Micros(us), 1114 | 1184) => buf.put_i64(us - PG_EPOCH_MICROS),
                _ => return false,
            }
            true
        }
    }

    pub struct RawConn {
        stream: TcpStream,
        rbuf: BytesMut,
        wbuf: BytesMut,
        broken: bool,
    }

    fn error_text(e: &ErrorResponseBody) -> String {
        let mut code = String::new();
        let mut message = String::new();
        let mut fields = e.fields();
        while let Ok(Some(f)) = fields.next() {
            match f.type_() {
                b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                _ => {}
            }
        }
        format!("ERROR {code}: {message}")
    }

    impl RawConn {
        pub async fn connect(url: &str) -> Result<RawConn> {
            let cfg: tokio_postgres::Config = url.parse().context("parsing the URL")?;
            let host = match cfg.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                None => "localhost".to_string(),
                #[allow(unreachable_patterns)]
                Some(_) => bail!("simple-protocol COPY needs a TCP host"),
            };
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            let user = cfg.get_user().context("the URL names no user")?.to_string();
            let db = cfg.get_dbname().unwrap_or(&user).to_string();
            let password = cfg.get_password().map(<[u8]>::to_vec);
            let stream = TcpStream::connect((host.as_str(), port))
                .await
                .with_context(|| format!("connecting to {host}:{port}"))?;
            stream.set_nodelay(true)?;
            let mut c = RawConn {
                stream,
                rbuf: BytesMut::with_capacity(8192),
                wbuf: BytesMut::with_capacity(COPY_MESSAGE_BYTES + 64),
                broken: false,
            };
            frontend::startup_message(
                [
                    ("user", user.as_str()),
                    ("database", db.as_str()),
                    ("client_encoding", "UTF8"),
                ],
                &mut c.wbuf,
            )?;
            c.flush().await?;
            let need_pw = || password.clone().context("the server asks for a password");
            let mut scram = None;
            loop {
                match c.read().await? {
                    Message::AuthenticationOk => {}
                    Message::AuthenticationCleartextPassword => {
                        frontend::password_message(&need_pw()?, &mut c.wbuf)?;
                        c.flush().await?;
                    }
                    Message::AuthenticationMd5Password(b) => {
                        let hash = md5_hash(user.as_bytes(), &need_pw()?, b.salt());
                        frontend::password_message(hash.as_bytes(), &mut c.wbuf)?;
                        c.flush().await?;
                    }
                    Message::AuthenticationSasl(b) => {
                        let mut mechs = b.mechanisms();
                        let mut ok = false;
                        while let Some(m) = mechs.next()? {
                            ok |= m == "SCRAM-SHA-256";
                        }
                        if !ok {
                            bail!("the server offers no SCRAM-SHA-256");
                        }
                        let s = ScramSha256::new(&need_pw()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut c.wbuf)?;
                        c.flush().await?;
                        scram = Some(s);
                    }
                    Message::AuthenticationSaslContinue(b) => {
                        let s = scram.as_mut().context("SASL continue before start")?;
                        s.update(b.data())?;
                        frontend::sasl_response(s.message(), &mut c.wbuf)?;
                        c.flush().await?;
                    }
                    Message::AuthenticationSaslFinal(b) => {
                        scram
                            .as_mut()
                            .context("SASL final before start")?
                            .finish(b.data())?;
                    }
                    Message::ErrorResponse(e) => bail!("startup: {}", error_text(&e)),
                    Message::ReadyForQuery(_) => return Ok(c),
                    _ => {}
                }
            }
        }

        /// True once reading or writing failed: the stream is out of step.
        pub fn is_closed(&self) -> bool {
            self.broken
        }

        async fn read(&mut self) -> Result<Message> {
            loop {
                if let Some(m) =
                    Message::parse(&mut self.rbuf).inspect_err(|_| self.broken = true)?
                {
                    return Ok(m);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) => {
                        self.broken = true;
                        bail!("the server closed the connection")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.broken = true;
                        return Err(e.into());
                    }
                }
            }
        }

        async fn flush(&mut self) -> Result<()> {
            let res = self.stream.write_all(&self.wbuf).await;
            self.wbuf.clear();
            self.broken |= res.is_err();
            Ok(res?)
        }

        /// Prepares `sql` as the named statement `name` (Parse + Describe + Sync) and
        /// returns it with the parameter types the server inferred.
        pub async fn prepare(&mut self, name: &str, sql: &str) -> Result<RawStatement> {
            frontend::parse(name, sql, [], &mut self.wbuf)?;
            frontend::describe(b'S', name, &mut self.wbuf)?;
            frontend::sync(&mut self.wbuf);
            self.flush().await?;
            let mut params = Vec::new();
            let mut error = None;
            loop {
                match self.read().await? {
                    Message::ParameterDescription(p) => params = p.parameters().collect()?,
                    Message::ErrorResponse(e) => error = Some(error_text(&e)),
                    Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            if let Some(e) = error {
                bail!("preparing {sql}: {e}");
            }
            Ok(RawStatement {
                name: name.to_string(),
                params,
            })
        }

        /// Runs a prepared statement once (Bind + Execute + Sync, binary parameters and
        /// results) and returns the DataRows received and the row count of the
        /// CommandComplete tag. Each value is encoded for the parameter type the server
        /// described; a value that does not fit its type is an error.
        pub async fn execute(
            &mut self,
            stmt: &RawStatement,
            values: &[Value],
        ) -> Result<(u64, u64)> {
            ensure!(
                values.len() == stmt.params.len(),
                "{} values for {} parameters",
                values.len(),
                stmt.params.len()
            );
            let mut bad = None;
            let bound = frontend::bind(
                "",
                &stmt.name,
                [1],
                values.iter().zip(&stmt.params),
                |(v, oid), buf| {
                    if !v.encode(*oid, buf) {
                        bad = Some(format!("{v:?} as type OID {oid}"));
                    }
                    Ok(IsNull::No)
                },
                [1],
                &mut self.wbuf,
            );
            if let Some(b) = bad {
                self.wbuf.clear();
                bail!("cannot encode {b}");
            }
            match bound {
                Ok(()) => {}
                Err(BindError::Conversion(e)) => bail!("binding: {e}"),
                Err(BindError::Serialization(e)) => bail!("binding: {e}"),
            }
            frontend::execute("", 0, &mut self.wbuf)?;
            frontend::sync(&mut self.wbuf);
            self.flush().await?;
            let (mut rows, mut tagged, mut error) = (0, 0, None);
            loop {
                match self.read().await? {
                    Message::DataRow(_) => rows += 1,
                    Message::CommandComplete(c) => {
                        tagged = c
                            .tag()?
                            .rsplit(' ')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0)
                    }
                    Message::ErrorResponse(e) => error = Some(error_text(&e)),
                    Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            match error {
                Some(e) => bail!("{e}"),
                None => Ok((rows, tagged)),
            }
        }

        pub async fn copy_in(&mut self, stmt: &str, data: &Bytes) -> Result<u64> {
            frontend::query(stmt, &mut self.wbuf)?;
            self.flush().await?;
            let mut error = None;
            loop {
                match self.read().await? {
                    Message::CopyInResponse(_) => break,
                    Message::ErrorResponse(e) => error = Some(error_text(&e)),
                    Message::ReadyForQuery(_) => {
                        bail!("{}", error.unwrap_or_else(|| "no CopyInResponse".into()))
                    }
                    _ => {}
                }
            }
            for chunk in data.chunks(COPY_MESSAGE_BYTES) {
                frontend::CopyData::new(chunk)?.write(&mut self.wbuf);
                self.flush().await?;
            }
            frontend::copy_done(&mut self.wbuf);
            self.flush().await?;
            let mut rows = None;
            loop {
                match self.read().await? {
                    Message::CommandComplete(c) => {
                        let tag = c.tag()?;
                        rows = tag.strip_prefix("COPY ").and_then(|n| n.parse().ok());
                    }
                    Message::ErrorResponse(e) => error = Some(error_text(&e)),
                    Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            match (error, rows) {
                (Some(e), _) => bail!("{e}"),
                (None, Some(n)) => Ok(n),
                (None, None) => bail!("COPY ended without a row count"),
            }
        }
    }
}
