//! Durability-path figures that criterion cannot express well: fdatasync latency of this
//! machine, ack latency under 64 concurrent writers, ledger bytes per active pair for a
//! zipfian workload over 1 M entities, and WAL replay throughput.
//!
//! `cargo bench -p tidal-benches --bench durability` (prints a report; ~1–2 minutes).
//! Set `TIDAL_BENCH_DIR` to measure on a particular filesystem (default: the system
//! temp dir).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tidal::{Config, Database, DecaySpec, EntityKind, Event, SignalDef, Timestamp, Window};
use tidal_benches::{Zipf, percentile};
use tidal_core::{EntityId, SignalEvent, SignalId, SystemClock};
use tidal_ledger::Ledger;
use tidal_wal::{Applier, CommittedTxn, Op, Wal, WalOptions};

fn tmpdir() -> tempfile::TempDir {
    match std::env::var("TIDAL_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("tempdir"),
        Err(_) => tempfile::tempdir().expect("tempdir"),
    }
}

fn fdatasync_latency_us() -> (f64, f64) {
    let dir = tmpdir();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("probe"))
        .expect("open");
    let buf = vec![7u8; 4096];
    let mut lat = Vec::new();
    for _ in 0..500 {
        f.write_all(&buf).expect("write");
        let t = Instant::now();
        f.sync_data().expect("sync");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 50.0), percentile(&lat, 99.0))
}

fn ack_latency(writers: usize, run: Duration) -> (f64, f64, usize) {
    let dir = tmpdir();
    let db = Arc::new(Database::open_with(Config::new(dir.path())).expect("open"));
    db.create_signal(
        SignalDef::new(
            "view",
            EntityKind::Item,
            DecaySpec::exponential("7 days").expect("valid"),
            [Window::All],
        )
        .expect("valid"),
    )
    .expect("create");
    let deadline = Instant::now() + run;
    let lats: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let db = db.clone();
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        i += 1;
                        let ev = Event {
                            signal: "view",
                            entity: i % 10_000,
                            user: Some(w as u64),
                            weight: 1.0,
                            ts: Some(Timestamp(db.now().0 - i as i64)),
                        };
                        let t = Instant::now();
                        db.signals(&[ev]).expect("ingest");
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let mut all: Vec<f64> = lats.into_iter().flatten().collect();
    all.sort_by(f64::total_cmp);
    (percentile(&all, 50.0), percentile(&all, 99.0), all.len())
}

fn bytes_per_pair() -> (usize, usize, f64) {
    const ENTITIES: usize = 1_000_000;
    const EVENTS: usize = 10_000_000;
    let mut l = Ledger::new();
    let mut d = SignalDef::new(
        "view",
        EntityKind::Item,
        DecaySpec::exponential("7 days").expect("valid"),
        ["1h", "24h", "7d"].map(|w| Window::parse(w).expect("valid")),
    )
    .expect("valid");
    d.id = SignalId(1);
    l.define(&d);
    let zipf = Zipf::new(ENTITIES, 1.0);
    let mut rng = StdRng::seed_from_u64(3);
    let t0 = Timestamp::parse("2026-11-18").expect("valid").0;
    // Seven days of traffic, in time order.
    let step = 7 * 86_400_000_000 / EVENTS as i64;
    for i in 0..EVENTS {
        let e = SignalEvent {
            signal: SignalId(1),
            entity: EntityId(zipf.sample(&mut rng)),
            user: None,
            weight: 1.0,
            ts: Timestamp(t0 + i as i64 * step),
        };
        l.apply(&e);
    }
    let pairs = l.active_pairs();
    let bytes = l.memory_bytes();
    (pairs, bytes, bytes as f64 / pairs as f64)
}

#[derive(Debug, Default)]
struct Count {
    txns: u64,
    events: u64,
}

impl Applier for Count {
    type Error = std::io::Error;
    fn prepare(&mut self, _ops: &[Op]) -> Result<(), Self::Error> {
        Ok(())
    }
    fn apply(&mut self, txn: &CommittedTxn) -> Result<(), Self::Error> {
        self.txns += 1;
        self.events += txn.ops.iter().map(Op::event_count).sum::<usize>() as u64;
        Ok(())
    }
    fn batch_done(&mut self) {}
}

fn wal_replay(target_bytes: u64) -> (u64, f64, u64) {
    let dir = tmpdir();
    let opts = || WalOptions::new(dir.path(), Arc::new(SystemClock));
    let wal = Wal::open(opts(), Count::default()).expect("open");
    let t0 = Timestamp::now_system().0;
    let mut i = 0u64;
    while wal.stats().bytes < target_bytes {
        let events: Vec<SignalEvent> = (0..1_000)
            .map(|_| {
                i += 1;
                SignalEvent {
                    signal: SignalId(1),
                    entity: EntityId(i % 1_000_000),
                    user: Some(EntityId(i % 777)),
                    weight: 1.0,
                    ts: Timestamp(t0 - i as i64),
                }
            })
            .collect();
        wal.commit(vec![Op::Signals(events)]).expect("commit");
    }
    let bytes = wal.stats().bytes;
    wal.close().expect("close");
    let start = Instant::now();
    let wal = Wal::open(opts(), Count::default()).expect("reopen");
    let secs = start.elapsed().as_secs_f64();
    let events = wal.with_applier(|a| a.events).expect("applier");
    wal.close().expect("close");
    (bytes, bytes as f64 / secs / 1e6, events)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not. Only run the (slow)
    // report when invoked as a benchmark. Optional section filter: `-- ack replay memory`.
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
    let (p50, p99) = fdatasync_latency_us();
    println!("fdatasync (4 KiB append): p50 {p50:.0} µs, p99 {p99:.0} µs");
    if run("ack") {
        for writers in [1, 8, 64] {
            let (a50, a99, n) = ack_latency(writers, Duration::from_secs(5));
            println!(
                "ack latency, {writers} writers x 1 event: p50 {a50:.0} µs, p99 {a99:.0} µs \
                 ({n} acks, {:.0}/s); p50 = {:.2}x fdatasync p50",
                n as f64 / 5.0,
                a50 / p50
            );
        }
    }
    if run("replay") {
        let (bytes, mbps, events) = wal_replay(256 << 20);
        println!(
            "WAL replay: {:.0} MiB, {events} events, {mbps:.0} MB/s",
            bytes as f64 / (1 << 20) as f64
        );
    }
    if run("memory") {
        let (pairs, mem, per) = bytes_per_pair();
        println!(
            "ledger memory, zipf(1.0) over 1M entities, 10M events, windows 1h/24h/7d: \
             {pairs} active pairs, {:.1} MiB, {per:.0} bytes/pair",
            mem as f64 / (1 << 20) as f64
        );
    }
}
