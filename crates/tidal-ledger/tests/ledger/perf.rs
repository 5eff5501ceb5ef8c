//! A rough apply-throughput check (criterion benches live elsewhere); run in release:
//! `cargo test -p tidal-ledger --release --test ledger -- --ignored --nocapture apply_ns`.

use std::time::Instant;

use tidal_core::{DecaySpec, EntityKind, SignalDef, SignalId, Window};
use tidal_ledger::Ledger;

use crate::memory::zipf_events;

#[test]
#[ignore = "timing: run in release"]
fn apply_ns_per_event() {
    let events = zipf_events();
    let shifted: Vec<_> = events
        .iter()
        .map(|e| {
            let mut e = *e;
            e.ts.0 += 7 * 86_400_000_000;
            e
        })
        .collect();
    let small: Vec<_> = events
        .iter()
        .map(|e| {
            let mut e = *e;
            e.entity.0 %= 1_000;
            e
        })
        .collect();
    let variants: [(&str, &[&str]); 4] = [
        ("hot only ('all')", &["all"]),
        ("1h (minute tier)", &["1h"]),
        ("24h,7d (hour tier)", &["24h", "7d"]),
        ("1h,24h,7d", &["1h", "24h", "7d"]),
    ];
    for (name, ws) in variants {
        let windows = ws.iter().map(|w| Window::parse(w).unwrap());
        let mut d = SignalDef::new(
            "v",
            EntityKind::Item,
            DecaySpec::exponential("7 days").unwrap(),
            windows,
        )
        .unwrap();
        d.id = SignalId(1);
        let time = |l: &mut Ledger, evs: &[tidal_core::SignalEvent]| {
            let t = Instant::now();
            l.apply_all(evs);
            t.elapsed().as_nanos() as f64 / evs.len() as f64
        };
        let mut l = Ledger::new();
        l.define(&d);
        let fresh = time(&mut l, &events);
        // A second week on the populated ledger: no first-event allocations.
        let populated = time(&mut l, &shifted);
        // 1,000 entities: everything stays in cache, so this is the compute cost.
        let mut l = Ledger::new();
        l.define(&d);
        let cached = time(&mut l, &small);
        println!(
            "{name}: {fresh:.1} ns/event fresh, {populated:.1} on a populated ledger, {cached:.1} in cache"
        );
    }
}
