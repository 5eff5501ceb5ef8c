//! Small scenarios: unknown ids, drop, redefine, expire, edge timestamps.

use tidal_core::{
    DecaySpec, EntityId, EntityKind, SignalDef, SignalEvent, SignalId, Timestamp, Window,
};
use tidal_ledger::{Ledger, NO_EVENT_TS};

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const T0: i64 = 1_795_564_800_000_000;

fn def(id: u32, kind: EntityKind, decay: DecaySpec, windows: &[&str]) -> SignalDef {
    let mut d = SignalDef::new(
        &format!("s{id}"),
        kind,
        decay,
        windows.iter().map(|w| Window::parse(w).unwrap()),
    )
    .unwrap();
    d.id = SignalId(id);
    d
}

fn ev(sig: u32, e: u64, ts: i64, w: f64) -> SignalEvent {
    SignalEvent {
        signal: SignalId(sig),
        entity: EntityId(e),
        user: None,
        weight: w,
        ts: Timestamp(ts),
    }
}

fn w(s: &str) -> Window {
    Window::parse(s).unwrap()
}

#[test]
fn unknown_signal_and_entity_read_zero() {
    let mut l = Ledger::new();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        &["1h", "all"],
    ));
    l.apply(&ev(1, 5, T0, 1.0));
    l.apply(&ev(2, 5, T0, 1.0)); // unknown signal: ignored
    l.apply(&ev(1, 6, T0, f64::NAN)); // non-finite: ignored
    assert_eq!(l.active_pairs(), 1);
    assert_eq!(l.entities(EntityKind::Item), &[EntityId(5)]);
    let at = Timestamp(T0);
    for (sig, e) in [(SignalId(2), EntityId(5)), (SignalId(1), EntityId(6))] {
        assert_eq!(l.decay(sig, e, at), 0.0);
        assert_eq!(l.window_count(sig, e, w("1h"), at), 0.0);
        assert_eq!(l.window_count(sig, e, Window::All, at), 0.0);
        assert_eq!(l.velocity(sig, e, w("1h"), at), 0.0);
        assert_eq!(l.acceleration(sig, e, w("1h"), at), 0.0);
        assert_eq!(l.total(sig, e), 0.0);
        assert_eq!(l.last(sig, e), None);
    }
    let mut out = vec![7.0; 3];
    l.decay_batch(SignalId(2), &[EntityId(5), EntityId(6)], at, &mut out);
    assert_eq!(out, vec![0.0, 0.0]);
    assert_eq!(l.decay(SignalId(1), EntityId(5), at), 1.0);
    assert!(l.columns(SignalId(2)).is_none());
    assert!(!l.is_defined(SignalId(2)));
}

#[test]
fn drop_signal_frees_its_memory_and_ordinals() {
    let mut l = Ledger::new();
    let empty = l.memory_bytes();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("7 days").unwrap(),
        &["1h", "24h", "7d"],
    ));
    l.define(&def(2, EntityKind::Item, DecaySpec::None, &["all"]));
    for k in 0..20_000i64 {
        l.apply(&ev(1, (k % 5_000) as u64, T0 + k * 30_000_000, 1.0));
    }
    for k in 0..100u64 {
        l.apply(&ev(2, 1_000_000 + k, T0, 2.0));
    }
    let full = l.memory_bytes();
    assert_eq!(l.active_pairs(), 5_100);
    assert_eq!(l.entities(EntityKind::Item).len(), 5_100);

    let generation = l.generation();
    l.drop_signal(SignalId(1));
    assert!(!l.is_defined(SignalId(1)));
    assert_eq!(l.active_pairs(), 100);
    assert_eq!(
        l.entities(EntityKind::Item).len(),
        100,
        "ordinals of dropped-only entities are freed"
    );
    assert_ne!(l.generation(), generation);
    assert_eq!(l.decay(SignalId(1), EntityId(3), Timestamp(T0 + DAY)), 0.0);
    // The survivor's state followed the renumbering.
    assert_eq!(l.total(SignalId(2), EntityId(1_000_042)), 2.0);
    assert_eq!(l.ordinal(EntityKind::Item, EntityId(1_000_000)), Some(0));
    let after = l.memory_bytes();
    assert!(after < full / 20, "memory after drop {after} vs {full}");

    l.drop_signal(SignalId(2));
    assert_eq!(l.active_pairs(), 0);
    assert!(l.entities(EntityKind::Item).is_empty());
    assert!(
        l.memory_bytes() <= empty + 256,
        "{} vs empty {empty}",
        l.memory_bytes()
    );
}

#[test]
fn redefining_keeps_state_unless_the_shape_changes() {
    let mut l = Ledger::new();
    let d = def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        &["1h"],
    );
    l.define(&d);
    l.apply(&ev(1, 5, T0, 1.0));
    let mut renamed = d.clone();
    renamed.name = "renamed".into();
    l.define(&renamed);
    assert_eq!(l.total(SignalId(1), EntityId(5)), 1.0);
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("2 days").unwrap(),
        &["1h"],
    ));
    assert_eq!(l.total(SignalId(1), EntityId(5)), 0.0);
}

#[test]
fn hot_columns_expose_ordinal_indexed_state() {
    let mut l = Ledger::new();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("1 hour").unwrap(),
        &["1h"],
    ));
    l.define(&def(2, EntityKind::Item, DecaySpec::None, &["all"]));
    l.apply(&ev(2, 9, T0, 1.0)); // entity 9 gets ordinal 0 through signal 2
    l.apply(&ev(1, 4, T0, 2.0));
    l.apply(&ev(1, 4, T0 - HOUR, 4.0));
    let c = l.columns(SignalId(1)).unwrap();
    assert_eq!(c.kind, EntityKind::Item);
    let ord = l.ordinal(EntityKind::Item, EntityId(4)).unwrap() as usize;
    assert_eq!(ord, 1);
    assert_eq!(c.last_ts[0], NO_EVENT_TS);
    assert_eq!(c.score[ord], 4.0);
    assert_eq!(c.score_ts[ord], T0);
    assert_eq!(c.last_ts[ord], T0);
    assert_eq!(c.total[ord], 6.0);
    assert_eq!(l.entities(EntityKind::Item)[ord], EntityId(4));
    let mut dense = Vec::new();
    l.decay_dense(SignalId(1), Timestamp(T0 + HOUR), &mut dense);
    assert_eq!(dense, vec![0.0, 2.0]);
}

#[test]
fn decay_before_the_newest_event_subtracts_later_ones() {
    let mut l = Ledger::new();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        &["1h", "24h"],
    ));
    l.define(&def(
        2,
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        &["all"],
    ));
    for sig in [1, 2] {
        l.apply(&ev(sig, 1, T0, 1.0));
        l.apply(&ev(sig, 1, T0 + 10 * MIN, 1.0));
        l.apply(&ev(sig, 1, T0 + 50 * MIN, 1.0));
    }
    let e = EntityId(1);
    let at = Timestamp(T0 + 5 * MIN);
    let exact = 2f64.powf(-5.0 / 1440.0);
    // Minute buckets take out the two later events, each up to the midpoint error
    // 2^(30 s / 1 day) − 1 ≈ 2.4e-4 of its weight.
    let bound = 2.0 * (2f64.powf(30.0 / 86_400.0) - 1.0) * 2f64.powf(45.0 / 1440.0);
    let got = l.decay(SignalId(1), e, at);
    assert!((got - exact).abs() <= bound, "{got} vs {exact}");
    assert_eq!(l.window_count(SignalId(1), e, Window::All, at), 1.0);
    // Without a warm tier nothing can be taken out: the later events stay in.
    let kept = l.decay(SignalId(2), e, at);
    assert!(kept > 2.9, "{kept}");
    assert_eq!(l.window_count(SignalId(2), e, Window::All, at), 3.0);

    // Once the minute tier has moved on, the events at +10 and +50 min are only in the
    // hour bucket that also holds `at`: they cannot be told apart and stay in.
    l.apply(&ev(1, 1, T0 + 3 * HOUR, 1.0));
    let got = l.decay(SignalId(1), e, at);
    let with_kept = exact + 2f64.powf(5.0 / 1440.0) + 2f64.powf(45.0 / 1440.0);
    assert!((got - with_kept).abs() <= bound, "{got} vs {with_kept}");
    assert_eq!(l.window_count(SignalId(1), e, Window::All, at), 3.0);
}

#[test]
fn expire_frees_quiet_pairs_but_keeps_current_reads() {
    let mut l = Ledger::new();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("7 days").unwrap(),
        &["1h", "24h"],
    ));
    for k in 0..1_000u64 {
        for j in 0..5 {
            l.apply(&ev(1, k, T0 + j * 7 * MIN + k as i64, 1.0));
        }
    }
    l.apply(&ev(1, 0, T0 + 3 * DAY, 1.0));
    let before = l.memory_bytes();
    let now = Timestamp(T0 + 3 * DAY + MIN);
    let reads: Vec<f64> = (0..1_000u64)
        .flat_map(|k| {
            let l = &l;
            ["1h", "24h"]
                .into_iter()
                .map(move |x| l.window_count(SignalId(1), EntityId(k), w(x), now))
        })
        .collect();
    l.expire(now);
    let after = l.memory_bytes();
    // Per-ordinal dense columns stay (score, last_ts, total: 24 bytes; each window's sums
    // and oldest bucket: 16 bytes; plus up to 25 % growth slack): the warm buckets go.
    let dense = 1_000 * (24 + 2 * 16) * 5 / 4;
    assert!(after < before / 2 + dense, "{after} vs {before}");
    let again: Vec<f64> = (0..1_000u64)
        .flat_map(|k| {
            let l = &l;
            ["1h", "24h"]
                .into_iter()
                .map(move |x| l.window_count(SignalId(1), EntityId(k), w(x), now))
        })
        .collect();
    assert_eq!(reads, again);
    assert_eq!(l.active_pairs(), 1_000);
    assert_eq!(l.total(SignalId(1), EntityId(7)), 5.0);
    // A quiet pair that wakes up gets a fresh warm tier.
    l.apply(&ev(1, 7, T0 + 4 * DAY, 2.0));
    assert_eq!(
        l.window_count(SignalId(1), EntityId(7), w("1h"), Timestamp(T0 + 4 * DAY)),
        2.0
    );
}

#[test]
fn extreme_timestamps_do_not_overflow() {
    let mut l = Ledger::new();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("1 second").unwrap(),
        &["1m", "90d", "all"],
    ));
    l.define(&def(
        2,
        EntityKind::Item,
        DecaySpec::None,
        &["2h", "10d", "all"],
    ));
    for sig in [1, 2] {
        for ts in [i64::MIN, i64::MAX, 0, -1, i64::MIN / 2, i64::MAX / 2] {
            l.apply(&ev(sig, 1, ts, 1.0));
        }
    }
    for at in [i64::MIN, i64::MAX, 0, -DAY] {
        for sig in [1, 2] {
            let s = SignalId(sig);
            let e = EntityId(1);
            assert!(l.decay(s, e, Timestamp(at)).is_finite());
            for x in ["1m", "2h", "10d", "90d", "all"] {
                assert!(l.window_count(s, e, w(x), Timestamp(at)).is_finite());
                assert!(l.acceleration(s, e, w(x), Timestamp(at)).is_finite());
            }
        }
    }
    assert_eq!(l.total(SignalId(2), EntityId(1)), 6.0);
    assert_eq!(l.decay(SignalId(2), EntityId(1), Timestamp(i64::MAX)), 6.0);
}

#[test]
fn same_timestamp_and_window_edges() {
    let mut l = Ledger::new();
    l.define(&def(1, EntityKind::Item, DecaySpec::None, &["1h", "7d"]));
    // Events exactly on minute and hour boundaries, and duplicates.
    for _ in 0..3 {
        l.apply(&ev(1, 1, T0, 1.0));
    }
    l.apply(&ev(1, 1, T0 + HOUR, 1.0));
    let e = EntityId(1);
    let at = Timestamp(T0 + HOUR);
    // (at − 1h, at]: the three events at T0 sit exactly on the far edge and are out.
    assert_eq!(l.window_count(SignalId(1), e, w("1h"), at), 1.0);
    assert_eq!(l.acceleration(SignalId(1), e, w("1h"), at), -2.0);
    assert_eq!(
        l.window_count(SignalId(1), e, w("1h"), Timestamp(T0 + HOUR - 1)),
        3.0
    );
    assert_eq!(l.window_count(SignalId(1), e, w("7d"), at), 4.0);
    assert_eq!(l.velocity(SignalId(1), e, w("7d"), at), 4.0 / 168.0);
    assert_eq!(l.decay(SignalId(1), e, Timestamp(T0)), 3.0);
}

/// Regression: an empty window of an entity with events read -0.0 (float `Sum` starts
/// at -0.0), which SQL clients print as "-0".
#[test]
fn empty_window_reads_positive_zero() {
    let mut l = Ledger::new();
    l.define(&def(1, EntityKind::Item, DecaySpec::None, &["1h", "24h"]));
    l.apply(&ev(1, 7, 0, 1.0));
    let at = Timestamp(10 * 24 * 3_600_000_000);
    for window in [w("1h"), w("24h")] {
        let c = l.window_count(SignalId(1), EntityId(7), window, at);
        assert_eq!(c.to_bits(), 0.0f64.to_bits(), "{c:?}");
        let v = l.velocity(SignalId(1), EntityId(7), window, at);
        assert_eq!(v.to_bits(), 0.0f64.to_bits(), "{v:?}");
        let a = l.acceleration(SignalId(1), EntityId(7), window, at);
        assert_eq!(a.to_bits(), 0.0f64.to_bits(), "{a:?}");
    }
}

#[test]
fn bulk_window_reads_ask_for_window_sums_which_read_the_same() {
    let mut l = Ledger::new();
    l.define(&def(
        1,
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        &["1h", "24h"],
    ));
    for k in 0..3_000u64 {
        for j in 0..(k % 7) as i64 {
            l.apply(&ev(
                1,
                k,
                T0 + j * 13 * MIN + k as i64,
                0.5 + j as f64 / 3.0,
            ));
        }
    }
    let ids: Vec<EntityId> = (0..3_000u64).map(EntityId).collect();
    let mut ords = Vec::new();
    l.ordinals_of(EntityKind::Item, &ids, &mut ords);
    let ats = [T0 + 2 * HOUR, T0 + 2 * HOUR + 5 * MIN, T0 + 30 * HOUR];
    let read = |l: &Ledger| -> Vec<Vec<u64>> {
        let mut all = Vec::new();
        for at in ats {
            for x in ["1h", "24h"] {
                let mut out = Vec::new();
                l.velocity_ords(SignalId(1), &ords, w(x), Timestamp(at), &mut out);
                all.push(out.iter().map(|v| v.to_bits()).collect());
            }
        }
        all
    };
    assert!(!l.window_sums_wanted());
    let before = read(&l);
    assert!(l.window_sums_wanted(), "a bulk read asks for the sums");
    l.enable_wanted_window_sums();
    assert!(!l.window_sums_wanted());
    assert_eq!(read(&l), before, "served by the sums, bit for bit");
    // Kept current by later events.
    l.apply(&ev(1, 5, T0 + 2 * HOUR, 2.0));
    let after = read(&l);
    let mut fresh = l.clone();
    fresh.expire(Timestamp(i64::MIN + 1));
    assert_eq!(read(&fresh), after);
}
