//! Embedded durable ingest: `Database::signals` with batches of 1,000 events, each batch
//! fdatasynced before the call returns.
//!
//! `cargo bench -p tidal-benches --bench ingest`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidal::{Config, Database, DecaySpec, EntityKind, Event, SignalDef, Timestamp, Window};

const BATCH: usize = 1_000;

fn open() -> (tempfile::TempDir, Arc<Database>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open_with(Config::new(dir.path())).expect("open");
    let w = ["1h", "24h", "7d"].map(|w| Window::parse(w).expect("valid"));
    db.create_signal(
        SignalDef::new(
            "view",
            EntityKind::Item,
            DecaySpec::exponential("7 days").expect("valid"),
            w,
        )
        .expect("valid"),
    )
    .expect("create");
    (dir, Arc::new(db))
}

fn batch(db: &Database, seq: &mut u64) -> Vec<Event<'static>> {
    let now = db.now().0;
    (0..BATCH)
        .map(|_| {
            *seq += 1;
            // Distinct timestamps: nothing is deduplicated away.
            Event {
                signal: "view",
                entity: *seq % 100_000,
                user: Some(*seq % 5_000),
                weight: 1.0,
                ts: Some(Timestamp(now - (*seq % 1_000_000) as i64)),
            }
        })
        .collect()
}

fn bench_ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_ingest");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(8));
    {
        let (_dir, db) = open();
        let mut seq = 0;
        g.bench_function("1_writer_batch_1000", |b| {
            b.iter_batched(
                || batch(&db, &mut seq),
                |events| db.signals(&events).expect("ingest"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    for writers in [4usize, 16] {
        let (_dir, db) = open();
        g.bench_function(format!("{writers}_writers_batch_1000"), |b| {
            b.iter_custom(|iters| {
                let per = (iters as usize).div_ceil(writers);
                let batches: Vec<Vec<Vec<Event<'static>>>> = (0..writers)
                    .map(|w| {
                        let mut seq = (w as u64) << 40 | (iters << 8);
                        (0..per).map(|_| batch(&db, &mut seq)).collect()
                    })
                    .collect();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for mine in batches {
                        let db = db.clone();
                        s.spawn(move || {
                            for ev in mine {
                                db.signals(&ev).expect("ingest");
                            }
                        });
                    }
                });
                // Normalise to time per batch across writers.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * writers) as f64)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_ingest
}
criterion_main!(benches);
