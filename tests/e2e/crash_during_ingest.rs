//! A child process ingests in concurrent batches (each batch = an entity row plus its
//! events, one atomic write) and is killed with SIGKILL at random moments. After every
//! restart, each acknowledged batch must be fully present and no batch half-applied.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tidal::{
    ColumnDef, ColumnType, Config, Database, DecaySpec, EntityKind, SignalDef, TableDef, Timestamp,
    Value, Window,
};

use crate::child;

const WRITER_THREADS: u64 = 4;
const CYCLE_VAR: &str = "TIDAL_E2E_CYCLE";

fn config(dir: &Path, background_checkpoints: bool) -> Config {
    let mut c = Config::new(dir);
    // Small segments and frequent checkpoints so kills also land in rotation,
    // checkpoint writing and segment retirement.
    c.wal_segment_bytes = 64 << 10;
    c.checkpoint_wal_bytes = background_checkpoints.then_some(256 << 10);
    c
}

fn entity(cycle: u64, thread: u64, batch: u64) -> u64 {
    cycle * 100_000_000 + thread * 1_000_000 + batch
}

/// Events per batch, a deterministic function of the entity so the verifier knows it.
fn batch_len(entity: u64) -> u64 {
    1 + (entity.wrapping_mul(2_654_435_761) >> 7) % 48
}

fn base_ts() -> Timestamp {
    Timestamp::parse("2026-01-01 00:00:00").expect("valid")
}

fn ensure_schema(db: &Database) {
    let schema = db.schema();
    if schema.signal("hit").is_err() {
        db.create_signal(
            SignalDef::new("hit", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap(),
        )
        .unwrap();
    }
    if schema.signal("view").is_err() {
        let windows = [Window::parse("1h").unwrap(), Window::parse("24h").unwrap()];
        let decay = DecaySpec::exponential("1 day").unwrap();
        db.create_signal(SignalDef::new("view", EntityKind::Item, decay, windows).unwrap())
            .unwrap();
    }
    if schema.table(EntityKind::Item).is_err() {
        let cols = vec![
            ColumnDef::new("id", ColumnType::BigInt),
            ColumnDef::new("n", ColumnType::BigInt),
        ];
        db.create_table(TableDef::new(EntityKind::Item, cols, vec![]).unwrap())
            .unwrap();
    }
}

/// Child entry point: ingest until killed.
#[test]
#[ignore = "child process entry point for crash_during_ingest::survives_sigkill"]
fn ingest_child() {
    if child::role().as_deref() != Some("ingest") {
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
                    let e = entity(cycle, t, b);
                    let n = batch_len(e);
                    let mut txn = db.engine().begin();
                    txn.upsert(
                        EntityKind::Item,
                        vec![Value::Int(e as i64), Value::Int(n as i64)],
                    )
                    .unwrap();
                    for i in 0..n {
                        let ts = Some(Timestamp(base_ts().0 + i as i64));
                        txn.signal("hit", tidal::EntityId(e), None, 1.0, ts)
                            .unwrap();
                        txn.signal(
                            "view",
                            tidal::EntityId(e),
                            Some(tidal::EntityId(t)),
                            1.0,
                            ts,
                        )
                        .unwrap();
                    }
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
fn survives_sigkill() {
    let cycles: u64 = std::env::var("TIDAL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7d_a1);
    // Every batch acknowledged in any cycle: entity -> n.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut total_acks = 0usize;
    for cycle in 0..cycles {
        let mut proc = child::spawn(
            "crash_during_ingest::ingest_child",
            "ingest",
            dir.path(),
            &[(CYCLE_VAR, cycle.to_string())],
        );
        let stdout = proc.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test <name> ... " without a newline before the
                // first ACK; a line cut by the kill has no trailing fields and is ignored.
                let Some(pos) = line.find("ACK ") else {
                    continue;
                };
                let mut parts = line[pos..].split_whitespace();
                if parts.next() == Some("ACK") {
                    let e = parts.next().and_then(|v| v.parse::<u64>().ok());
                    let n = parts.next().and_then(|v| v.parse::<u64>().ok());
                    if let (Some(e), Some(n)) = (e, n) {
                        acks.push((e, n));
                    }
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(40..250)));
        child::kill9(&mut proc);
        let acks = reader.join().unwrap();
        total_acks += acks.len();
        for (e, n) in acks {
            assert_eq!(n, batch_len(e));
            acked.insert(e, n);
        }
        verify(dir.path(), cycle, &acked);
    }
    eprintln!(
        "crash test: {cycles} SIGKILL cycles, {total_acks} acknowledged batches, {:?}",
        started.elapsed()
    );
    assert!(total_acks > 0, "the child never acknowledged a write");
}

fn verify(dir: &Path, cycle: u64, acked: &BTreeMap<u64, u64>) {
    let db = Database::open_with(config(dir, false)).unwrap();
    let at = Timestamp(base_ts().0 + 1_000_000);
    for (&e, &n) in acked {
        assert_eq!(
            db.signal_total("hit", e).unwrap(),
            n as f64,
            "acked batch {e} lost events (cycle {cycle})"
        );
        assert_eq!(
            db.signal_total("view", e).unwrap(),
            n as f64,
            "acked batch {e} lost views"
        );
        let row = db.get(EntityKind::Item, e).unwrap();
        assert_eq!(
            row,
            Some(vec![Value::Int(e as i64), Value::Int(n as i64)]),
            "acked row {e}"
        );
    }
    // No half-applied batch: for every batch this cycle could have started, either all
    // of it (row + all events) is there or none of it.
    for t in 0..WRITER_THREADS {
        let last = acked
            .range(entity(cycle, t, 0)..entity(cycle, t + 1, 0))
            .next_back()
            .map_or(0, |(e, _)| e - entity(cycle, t, 0));
        for b in 0..=last + 8 {
            let e = entity(cycle, t, b);
            let n = batch_len(e) as f64;
            let hits = db.signal_total("hit", e).unwrap();
            let views = db.signal_total("view", e).unwrap();
            let row = db.get(EntityKind::Item, e).unwrap();
            let whole = hits == n && views == n && row.is_some();
            let none = hits == 0.0 && views == 0.0 && row.is_none();
            assert!(
                whole || none,
                "batch {e} half-applied: hits {hits}, views {views}, row {row:?} of {n}"
            );
        }
    }
    // Window reads see exactly the events of acked batches too.
    if let Some((&e, &n)) = acked.iter().next_back() {
        assert_eq!(
            db.window_count("view", e, "1h", Some(at)).unwrap(),
            n as f64
        );
    }
    verify_history(&db, cycle, acked);
    db.shutdown().unwrap();
}

/// The event history (Parquet files + replayed tail) holds every applied event exactly
/// once: per entity, its event count equals the ledger's total, for every row present.
fn verify_history(db: &Database, cycle: u64, acked: &BTreeMap<u64, u64>) {
    use tidal::datafusion::arrow::array::{AsArray, RecordBatch};
    use tidal::datafusion::arrow::datatypes::Int64Type;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = |q: &str| -> Vec<RecordBatch> { rt.block_on(db.sql(q)).unwrap() };
    let mut history: BTreeMap<(u64, String), f64> = BTreeMap::new();
    for b in run("SELECT entity_id, signal, count(*) FROM signals GROUP BY entity_id, signal") {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let sigs = b.column(1).as_string::<i32>();
        let counts = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let key = (ids.value(i) as u64, sigs.value(i).to_string());
            assert!(history.insert(key, counts.value(i) as f64).is_none());
        }
    }
    let mut rows = 0;
    for b in run("SELECT id FROM items") {
        for &e in b.column(0).as_primitive::<Int64Type>().values() {
            let e = e as u64;
            rows += 1;
            for sig in ["hit", "view"] {
                let got = history.get(&(e, sig.to_string())).copied().unwrap_or(0.0);
                assert_eq!(
                    got,
                    db.signal_total(sig, e).unwrap(),
                    "history of {sig} for {e} differs from the ledger (cycle {cycle})"
                );
            }
        }
    }
    assert_eq!(
        history.len(),
        rows * 2,
        "history has events of entities without rows"
    );
    for e in acked.keys() {
        assert!(
            history.contains_key(&(*e, "hit".to_string())),
            "acked {e} missing"
        );
    }
}
