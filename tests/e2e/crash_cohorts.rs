//! Cohort state under SIGKILL: a child ingests in concurrent batches — each one atomic
//! write of a user's row (moving the user to another region now and then) and that
//! user's events on a fresh item — and is killed at random moments. After every
//! restart, each acknowledged batch counts in exactly the cohorts its user had when the
//! batch was written (region, and the composite region × tier), no batch is half
//! applied, and the cohort sums equal the global ones.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tidal::{Config, Database, EntityId, EntityKind, Timestamp, Value};

use crate::child;

const WRITER_THREADS: u64 = 3;
const CYCLE_VAR: &str = "TIDAL_E2E_COHORT_CYCLE";
const REGIONS: [&str; 3] = ["US", "DE", "FR"];

fn config(dir: &Path, background_checkpoints: bool) -> Config {
    let mut c = Config::new(dir);
    c.wal_segment_bytes = 64 << 10;
    c.checkpoint_wal_bytes = background_checkpoints.then_some(128 << 10);
    c
}

fn item(cycle: u64, thread: u64, batch: u64) -> u64 {
    cycle * 100_000_000 + thread * 1_000_000 + batch
}

/// Where batch `b` of thread `t` in `cycle` puts its user: the user moves every 5
/// batches, so most batches find the row as the previous batch left it.
fn region(cycle: u64, thread: u64, batch: u64) -> &'static str {
    REGIONS[((batch / 5 + cycle + thread) % 3) as usize]
}

fn tier(batch: u64) -> &'static str {
    if (batch / 3).is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

fn batch_len(item: u64) -> u64 {
    1 + (item.wrapping_mul(2_654_435_761) >> 7) % 20
}

fn sql(db: &Database, q: &str) -> Vec<tidal::datafusion::arrow::array::RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(db.sql(q))
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn ensure_schema(db: &Database) {
    if db.schema().signal("view").is_ok() {
        return;
    }
    for q in [
        "CREATE TABLE IF NOT EXISTS users (id BIGINT PRIMARY KEY, region TEXT, tier TEXT) WITH (kind = 'user')",
        "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('1h', 'all') COHORTS (region, (region, tier))",
    ] {
        sql(db, q);
    }
}

/// Child entry point: ingest until killed.
#[test]
#[ignore = "child process entry point for crash_cohorts::cohorts_survive_sigkill"]
fn cohort_ingest_child() {
    if child::role().as_deref() != Some("cohort_ingest") {
        return;
    }
    let dir = std::env::var(child::DIR_VAR).unwrap();
    let cycle: u64 = std::env::var(CYCLE_VAR).unwrap().parse().unwrap();
    let db = Arc::new(Database::open_with(config(Path::new(&dir), true)).unwrap());
    ensure_schema(&db);
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for b in 0.. {
                    let e = item(cycle, t, b);
                    let n = batch_len(e);
                    // One transaction: the row first, then the events (which see it).
                    // A user 1000 + t without a row and an anonymous event count only
                    // globally.
                    let mut txn = db.engine().begin();
                    let text = |s: &str| Value::Text(s.to_string());
                    txn.upsert(
                        EntityKind::User,
                        vec![
                            Value::Int(t as i64),
                            text(region(cycle, t, b)),
                            text(tier(b)),
                        ],
                    )
                    .unwrap();
                    let base = Timestamp::parse("2026-01-01 00:00:00").unwrap();
                    for i in 0..n {
                        let ts = Some(Timestamp(base.0 + i as i64 * 1_000_000));
                        txn.signal("view", EntityId(e), Some(EntityId(t)), 1.0, ts)
                            .unwrap();
                    }
                    txn.signal(
                        "view",
                        EntityId(e),
                        Some(EntityId(1000 + t)),
                        1.0,
                        Some(base),
                    )
                    .unwrap();
                    txn.signal("view", EntityId(e), None, 1.0, Some(base))
                        .unwrap();
                    txn.commit().unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {e} {n}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn cohorts_survive_sigkill() {
    let cycles: u64 = std::env::var("TIDAL_COHORT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0_407);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for cycle in 0..cycles {
        let mut proc = child::spawn(
            "crash_cohorts::cohort_ingest_child",
            "cohort_ingest",
            dir.path(),
            &[(CYCLE_VAR, cycle.to_string())],
        );
        let stdout = proc.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(pos) = line.find("ACK ") else {
                    continue;
                };
                let mut parts = line[pos..].split_whitespace().skip(1);
                let e = parts.next().and_then(|v| v.parse::<u64>().ok());
                let n = parts.next().and_then(|v| v.parse::<u64>().ok());
                if let (Some(e), Some(n)) = (e, n) {
                    acks.push((e, n));
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        child::kill9(&mut proc);
        for (e, n) in reader.join().unwrap() {
            assert_eq!(n, batch_len(e));
            acked.insert(e, n);
        }
        verify(dir.path(), cycle, &acked);
    }
    eprintln!(
        "cohort crash test: {cycles} SIGKILL cycles, {} acknowledged batches",
        acked.len()
    );
    assert!(
        acked.len() as u64 > cycles,
        "too few acknowledged batches: {}",
        acked.len()
    );
}

/// `(item, dimension, value) → count` of the 'all' window.
fn cohort_counts(db: &Database) -> BTreeMap<(u64, String, String), f64> {
    use tidal::datafusion::arrow::array::AsArray;
    use tidal::datafusion::arrow::datatypes::{Float64Type, Int64Type};
    let mut out = BTreeMap::new();
    for b in sql(
        db,
        "SELECT entity_id, dimension, value, count FROM cohort_windows WHERE signal = 'view' AND window = 'all'",
    ) {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let dims = b.column(1).as_string::<i32>();
        let values = b.column(2).as_string::<i32>();
        let counts = b.column(3).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.insert(
                (
                    ids.value(i) as u64,
                    dims.value(i).to_string(),
                    values.value(i).to_string(),
                ),
                counts.value(i),
            );
        }
    }
    out
}

fn verify(dir: &Path, cycle: u64, acked: &BTreeMap<u64, u64>) {
    let db = Database::open_with(config(dir, false)).unwrap();
    let counts = cohort_counts(&db);
    let expect = |e: u64| -> [((u64, String, String), f64); 2] {
        let (c, t, b) = (e / 100_000_000, (e / 1_000_000) % 100, e % 1_000_000);
        let n = batch_len(e) as f64;
        let r = region(c, t, b).to_string();
        [
            ((e, "region".into(), r.clone()), n),
            ((e, "region,tier".into(), format!("{r},{}", tier(b))), n),
        ]
    };
    for &e in acked.keys() {
        for (k, n) in expect(e) {
            assert_eq!(
                counts.get(&k).copied(),
                Some(n),
                "acked batch {e}: {k:?} (cycle {cycle})"
            );
        }
        // Global: the user's events, the row-less user's and the anonymous one.
        assert_eq!(
            db.signal_total("view", e).unwrap(),
            batch_len(e) as f64 + 2.0
        );
    }
    // Nothing else is in any cohort: every cohort row belongs to a batch that is whole
    // (acknowledged, or applied just before the kill) and sits where its user was.
    let mut per_item: BTreeMap<u64, usize> = BTreeMap::new();
    for ((e, _, _), n) in &counts {
        *per_item.entry(*e).or_default() += 1;
        let whole = expect(*e)
            .iter()
            .any(|(k, want)| counts.get(k) == Some(want) && want == n);
        assert!(
            whole,
            "item {e} counts {n} in a cohort it does not belong to (cycle {cycle})"
        );
        assert_eq!(
            db.signal_total("view", *e).unwrap(),
            batch_len(*e) as f64 + 2.0,
            "item {e} half-applied"
        );
    }
    assert!(
        per_item.values().all(|&k| k == 2),
        "an item missing one dimension"
    );
    db.shutdown().unwrap();
}
