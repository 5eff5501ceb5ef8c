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

/// The RETRIEVE benchmark's shape in the ledger alone: 1 M items, 10 M events over 48 h
/// (75 % `view` with 1 h and 24 h windows, 20 % `like` with 24 h, 5 % `skip` decay only),
/// zipf(1.0) over a permutation of the ids, and the profile's three reads
/// `velocity(view, 1h)`, `velocity(like, 24h)`, `decay(skip)` for every item — once in id
/// order (what a scan in key order hands the signal functions: ordinals in random order)
/// and once in ordinal order.
fn bench_profile_reads(c: &mut Criterion) {
    const ITEMS: usize = 1_000_000;
    const EVENTS: usize = 10_000_000;
    let mk = |id: u32, name: &str, half_life: &str, windows: &[&str]| {
        let mut d = SignalDef::new(
            name,
            EntityKind::Item,
            DecaySpec::exponential(half_life).expect("valid"),
            windows.iter().map(|w| Window::parse(w).expect("valid")),
        )
        .expect("valid");
        d.id = SignalId(id);
        d
    };
    let mut l = Ledger::new();
    l.define(&mk(1, "view", "1 day", &["1h", "24h"]));
    l.define(&mk(2, "like", "7 days", &["24h"]));
    l.define(&mk(3, "skip", "6 hours", &[]));
    let zipf = Zipf::new(ITEMS, 1.0);
    let mut rng = StdRng::seed_from_u64(1);
    // A fixed permutation of the ids, so popularity is not correlated with the id.
    let perm = |rank: u64| (rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % ITEMS as u64;
    let span = 48 * HOUR_US;
    let t0 = Timestamp::parse("2026-11-24").expect("valid").0;
    let step = span / EVENTS as i64;
    let started = std::time::Instant::now();
    for i in 0..EVENTS {
        let u: f64 = rand::Rng::random(&mut rng);
        let sig = if u < 0.75 {
            1
        } else if u < 0.95 {
            2
        } else {
            3
        };
        l.apply(&SignalEvent {
            signal: SignalId(sig),
            entity: EntityId(perm(zipf.sample(&mut rng))),
            user: None,
            weight: 1.0,
            ts: Timestamp(t0 + i as i64 * step),
        });
    }
    println!(
        "profile_reads_1m setup: {EVENTS} events applied at {:.0} ns/event (incl. generation)",
        started.elapsed().as_nanos() as f64 / EVENTS as f64
    );
    let at = Timestamp(t0 + span);
    let ids: Vec<EntityId> = (0..ITEMS as u64).map(EntityId).collect();
    let mut by_id = Vec::new();
    l.ordinals_of(EntityKind::Item, &ids, &mut by_id);
    // Bulk reads ask for window sums; build them as the engine would before its next
    // batch (the events above were applied without them, as for a signal nobody ranked).
    let mut scratch = Vec::new();
    for (sig, w) in [(1, "1h"), (2, "24h")] {
        let w = Window::parse(w).expect("valid");
        l.velocity_ords(SignalId(sig), &by_id, w, Timestamp(t0 + span), &mut scratch);
    }
    let built = std::time::Instant::now();
    l.enable_wanted_window_sums();
    println!(
        "profile_reads_1m: window sums built in {:.0} ms",
        built.elapsed().as_secs_f64() * 1e3
    );
    let mut by_ord = by_id.clone();
    by_ord.sort_unstable();
    let h1 = Window::parse("1h").expect("valid");
    let h24 = Window::parse("24h").expect("valid");
    let mut g = c.benchmark_group("profile_reads_1m");
    g.throughput(Throughput::Elements(ITEMS as u64));
    for (name, ords) in [("id_order", &by_id), ("ordinal_order", &by_ord)] {
        let mut a = Vec::with_capacity(ITEMS);
        let mut b = Vec::with_capacity(ITEMS);
        let mut s = Vec::with_capacity(ITEMS);
        g.bench_function(format!("three_reads_{name}"), |bch| {
            bch.iter(|| {
                l.velocity_ords(SignalId(1), ords, h1, at, &mut a);
                l.velocity_ords(SignalId(2), ords, h24, at, &mut b);
                l.decay_ords(SignalId(3), ords, at, &mut s);
                black_box((&a, &b, &s));
            })
        });
        for (sig, label) in [(1, "view_1h"), (2, "like_24h")] {
            let w = if sig == 1 { h1 } else { h24 };
            g.bench_function(format!("velocity_{label}_{name}"), |bch| {
                bch.iter(|| {
                    l.velocity_ords(SignalId(sig), ords, w, at, &mut a);
                    black_box(&a);
                })
            });
        }
        g.bench_function(format!("decay_skip_{name}"), |bch| {
            bch.iter(|| {
                l.decay_ords(SignalId(3), ords, at, &mut s);
                black_box(&s);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_apply, bench_read, bench_profile_reads
}
criterion_main!(benches);
