//! Ledger micro-benchmarks: per-event update cost and vectorized reads.
//!
//! `cargo bench -p tidal-benches --bench ledger`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tidal_benches::Zipf;
use tidal_core::{
    DecaySpec, EntityId, EntityKind, SignalDef, SignalEvent, SignalId, Timestamp, Window,
};
use tidal_ledger::Ledger;

const ENTITIES: usize = 100_000;
const EVENTS: usize = 100_000;
const HOUR_US: i64 = 3_600_000_000;

fn def(id: u32, windows: &[&str]) -> SignalDef {
    let mut d = SignalDef::new(
        &format!("s{id}"),
        EntityKind::Item,
        DecaySpec::exponential("7 days").expect("valid"),
        windows.iter().map(|w| Window::parse(w).expect("valid")),
    )
    .expect("valid");
    d.id = SignalId(id);
    d
}

fn events(signal: u32, n: usize, seed: u64) -> Vec<SignalEvent> {
    let zipf = Zipf::new(ENTITIES, 1.0);
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Timestamp::parse("2026-11-01").expect("valid").0;
    (0..n)
        .map(|i| SignalEvent {
            signal: SignalId(signal),
            entity: EntityId(zipf.sample(&mut rng)),
            user: None,
            weight: 1.0,
            // Mostly in order, one event per ~6 ms of simulated time.
            ts: Timestamp(t0 + i as i64 * 6_000),
        })
        .collect()
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_apply");
    g.throughput(Throughput::Elements(EVENTS as u64));
    for (name, windows) in [
        ("hot_only", vec!["all"]),
        ("hot+3_windows", vec!["1h", "24h", "7d"]),
    ] {
        let evs = events(1, EVENTS, 7);
        // Warm the ledger so entities already have ordinals (steady state).
        let mut base = Ledger::new();
        base.define(&def(1, &windows));
        for e in &evs {
            base.apply(e);
        }
        let later: Vec<SignalEvent> = evs
            .iter()
            .map(|e| SignalEvent {
                ts: Timestamp(e.ts.0 + 24 * HOUR_US),
                ..*e
            })
            .collect();
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || base.clone(),
                |l| {
                    for e in &later {
                        l.apply(e);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn bench_read(c: &mut Criterion) {
    let mut l = Ledger::new();
    l.define(&def(1, &["1h", "24h", "7d"]));
    let evs = events(1, 1_000_000, 9);
    for e in &evs {
        l.apply(e);
    }
    let ids: Vec<EntityId> = (0..ENTITIES as u64).map(EntityId).collect();
    let at = Timestamp(evs.last().expect("events").ts.0 + HOUR_US);
    let mut out = Vec::with_capacity(ids.len());
    let mut g = c.benchmark_group("ledger_read");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("decay_batch_100k", |b| {
        b.iter(|| {
            out.clear();
            l.decay_batch(SignalId(1), &ids, at, &mut out);
            black_box(&out);
        })
    });
    g.bench_function("window_count_24h_100k", |b| {
        let w = Window::parse("24h").expect("valid");
        b.iter(|| {
            let mut s = 0.0;
            for &id in &ids {
                s += l.window_count(SignalId(1), id, w, at);
            }
            black_box(s)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_apply, bench_read
}
criterion_main!(benches);
