//! Memory per active (entity, signal) pair under a zipfian workload.

use tidal_core::{
    DecaySpec, EntityId, EntityKind, SignalDef, SignalEvent, SignalId, Timestamp, Window,
};
use tidal_ledger::Ledger;

pub const ENTITIES: usize = 100_000;
pub const EVENTS: usize = 1_000_000;
const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_795_564_800_000_000;

/// SplitMix64: a tiny deterministic generator for workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s = 1) over `n` ranks via the inverse CDF.
pub struct Zipf(Vec<f64>);

impl Zipf {
    pub fn new(n: usize) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += 1.0 / r as f64;
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

/// `view`-like signal: exponential 7 days, windows 1h, 24h, 7d.
pub fn view_signal() -> SignalDef {
    let windows = ["1h", "24h", "7d"]
        .iter()
        .map(|w| Window::parse(w).unwrap());
    let mut d = SignalDef::new(
        "view",
        EntityKind::Item,
        DecaySpec::exponential("7 days").unwrap(),
        windows,
    )
    .unwrap();
    d.id = SignalId(1);
    d
}

/// `EVENTS` zipfian events over `ENTITIES` (scattered ids), in time order over 7 days.
pub fn zipf_events() -> Vec<SignalEvent> {
    let zipf = Zipf::new(ENTITIES);
    let mut rng = Rng(42);
    (0..EVENTS)
        .map(|k| {
            let rank = zipf.sample(&mut rng) as u64;
            SignalEvent {
                signal: SignalId(1),
                entity: EntityId(rank.wrapping_mul(0x9E37_79B9) % 1_000_000_007),
                user: None,
                weight: 1.0,
                ts: Timestamp(T0 + (k as i64) * (7 * DAY / EVENTS as i64)),
            }
        })
        .collect()
}

#[test]
fn bytes_per_active_pair_under_zipf() {
    let events = zipf_events();
    let mut l = Ledger::new();
    l.define(&view_signal());
    l.apply_all(&events);
    let pairs = l.active_pairs();
    let bytes = l.memory_bytes();
    let per_pair = bytes as f64 / pairs as f64;

    // The same events without windows: ordinals and hot columns only.
    let mut hot = view_signal();
    hot.windows = vec![Window::All];
    let mut h = Ledger::new();
    h.define(&hot);
    h.apply_all(&events);
    let hot_per_pair = h.memory_bytes() as f64 / pairs as f64;
    println!(
        "zipf(1.0): {EVENTS} events over 7 days, {pairs} active pairs, {bytes} bytes: \
         {per_pair:.1} bytes/pair ({hot_per_pair:.1} ordinals + hot columns, {:.1} warm tier)",
        per_pair - hot_per_pair
    );
    assert!(pairs > ENTITIES / 2, "{pairs}");
    // Target ≤ 256; the assertion is generous so that allocator-model tweaks do not flake.
    assert!(per_pair < 400.0, "{per_pair:.1} bytes per pair");
}
