//! Embedded durable ingest: `Database::signals` with batches of 1,000 events, each batch
//! fdatasynced before the call returns; and the cost per event of a signal that moves
//! per-user state (`MARKS liked PREFERENCE 0.1 AFFINITY 0.15`, items with a creator and
//! a 384-d embedding) against a plain signal on the same items; and the same for a
//! signal with `COHORTS (region, age_group, (region, age_group))`.
//!
//! `cargo bench -p tidal-benches --bench ingest`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
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

/// Items of the personal-ingest data set, their embedding size and users.
const PERSONAL_ITEMS: u64 = 100_000;
const PERSONAL_DIMS: usize = 384;
const PERSONAL_USERS: u64 = 5_000;

fn open_personal() -> (tempfile::TempDir, Arc<Database>) {
    use tidal::{ColumnDef, ColumnType, TableDef, Value};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open_with(Config::new(dir.path())).expect("open");
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("creator_id", ColumnType::BigInt),
        ColumnDef::new("embedding", ColumnType::Vector(PERSONAL_DIMS as u32)),
    ];
    db.create_table(TableDef::new(EntityKind::Item, cols, Vec::new()).expect("table"))
        .expect("create table");
    let w = [Window::parse("24h").expect("valid")];
    let decay = DecaySpec::exponential("7 days").expect("valid");
    db.create_signal(SignalDef::new("plain", EntityKind::Item, decay, w).expect("valid"))
        .expect("create");
    let personal = SignalDef::new("personal", EntityKind::Item, decay, w)
        .expect("valid")
        .with_marks(tidal::Mark::Liked)
        .with_preference(0.1)
        .expect("rate")
        .with_affinity(0.15)
        .expect("delta");
    db.create_signal(personal).expect("create");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for chunk in 0..PERSONAL_ITEMS / 10_000 {
        let mut txn = db.engine().begin();
        for id in chunk * 10_000..(chunk + 1) * 10_000 {
            let v: Vec<f32> = (0..PERSONAL_DIMS)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            txn.insert(
                EntityKind::Item,
                vec![
                    Value::Int(id as i64),
                    Value::Int((id % 20_000) as i64),
                    Value::Vector(v),
                ],
            )
            .expect("row");
        }
        txn.commit().expect("commit");
    }
    (dir, Arc::new(db))
}

fn personal_batch(db: &Database, signal: &'static str, seq: &mut u64) -> Vec<Event<'static>> {
    let now = db.now().0;
    (0..BATCH)
        .map(|_| {
            *seq += 1;
            let r = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            Event {
                signal,
                entity: r % PERSONAL_ITEMS,
                user: Some((r >> 32) % PERSONAL_USERS),
                weight: 1.0,
                ts: Some(Timestamp(now - (*seq % 1_000_000) as i64)),
            }
        })
        .collect()
}

fn bench_personal(c: &mut Criterion) {
    let mut g = c.benchmark_group("personal_ingest");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(10));
    let (_dir, db) = open_personal();
    for signal in ["plain", "personal"] {
        let mut seq = if signal == "plain" { 0 } else { 1 << 40 };
        g.bench_function(format!("{signal}_batch_1000"), |b| {
            b.iter_batched(
                || personal_batch(&db, signal, &mut seq),
                |events| db.signals(&events).expect("ingest"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Users of the cohort-ingest data set: 50 regions (zipf) × 8 age groups.
const COHORT_USERS: u64 = 100_000;
const COHORT_ITEMS: u64 = 100_000;

/// Two identical signals on items (7-day decay, windows 1h/24h), one with
/// `COHORTS (region, age_group, (region, age_group))`, and a users table filled first.
fn open_cohorts() -> (tempfile::TempDir, Arc<Database>) {
    use tidal::{ColumnDef, ColumnType, TableDef, Value};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open_with(Config::new(dir.path())).expect("open");
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("region", ColumnType::Text),
        ColumnDef::new("age_group", ColumnType::Text),
    ];
    db.create_table(TableDef::new(EntityKind::User, cols, Vec::new()).expect("table"))
        .expect("create table");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for chunk in 0..COHORT_USERS / 10_000 {
        let mut txn = db.engine().begin();
        for id in chunk * 10_000..(chunk + 1) * 10_000 {
            // Zipf-like regions: r = floor(50^u) - 1 for uniform u.
            let r = (50f64.powf(rng.random::<f64>()) as u64)
                .saturating_sub(1)
                .min(49);
            txn.insert(
                EntityKind::User,
                vec![
                    Value::Int(id as i64),
                    Value::Text(format!("r{r:02}")),
                    Value::Text(format!("a{}", rng.random_range(0..8))),
                ],
            )
            .expect("row");
        }
        txn.commit().expect("commit");
    }
    let w = ["1h", "24h"].map(|w| Window::parse(w).expect("valid"));
    let decay = DecaySpec::exponential("7 days").expect("valid");
    db.create_signal(SignalDef::new("plain", EntityKind::Item, decay, w).expect("valid"))
        .expect("create");
    let dims = [
        vec!["region"],
        vec!["age_group"],
        vec!["region", "age_group"],
    ]
    .map(|c| tidal::CohortDim::new(c.into_iter().map(String::from).collect()));
    let cohorts = SignalDef::new("cohorts", EntityKind::Item, decay, w)
        .expect("valid")
        .with_cohorts(dims.to_vec())
        .expect("cohorts");
    db.create_signal(cohorts).expect("create");
    (dir, Arc::new(db))
}

fn cohort_batch(db: &Database, signal: &'static str, seq: &mut u64) -> Vec<Event<'static>> {
    let now = db.now().0;
    (0..BATCH)
        .map(|_| {
            *seq += 1;
            let r = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            // Popular items get most events: id = floor(N^u) - 1.
            let u = (r >> 11) as f64 / (1u64 << 53) as f64;
            Event {
                signal,
                entity: (COHORT_ITEMS as f64).powf(u) as u64 - 1,
                user: Some((r >> 40) % COHORT_USERS),
                weight: 1.0,
                ts: Some(Timestamp(now - (*seq % 1_000_000) as i64)),
            }
        })
        .collect()
}

/// The cost per event of 2 cohort dimensions + 1 composite against the same signal
/// without cohorts (issue 16's target: ≤ 2×).
fn bench_cohorts(c: &mut Criterion) {
    let mut g = c.benchmark_group("cohort_ingest");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(10));
    let (_dir, db) = open_cohorts();
    for signal in ["plain", "cohorts"] {
        let mut seq = if signal == "plain" { 0 } else { 1 << 40 };
        g.bench_function(format!("{signal}_batch_1000"), |b| {
            b.iter_batched(
                || cohort_batch(&db, signal, &mut seq),
                |events| db.signals(&events).expect("ingest"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_ingest, bench_personal, bench_cohorts
}
criterion_main!(benches);
