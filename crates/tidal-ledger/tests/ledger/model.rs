//! Property test: the ledger against a plain list of events per (signal, entity).
//!
//! The model implements the documented rules on its own: the bucket rule for windows,
//! retention counted back from the newest event, and — for reads before the newest
//! event — the piece rule (an event belongs to its bucket in the finest tier whose
//! retention reaches back to it) with the documented error bounds.

use proptest::prelude::*;
use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{
    DecaySpec, EntityId, EntityKind, SignalDef, SignalEvent, SignalId, Timestamp, Window,
};
use tidal_ledger::{DECAY_SUBTRACT_HALF_LIVES_MAX, Ledger};

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// 2026-11-25 00:00:00 UTC.
const T0: i64 = 1_795_564_800_000_000;

const WINDOWS: [&str; 11] = [
    "1m", "5m", "1h", "2h", "150m", "3h", "1d", "7d", "8d", "10d", "all",
];

/// Bucket width of a finite window, implemented from the rule's text.
fn width(w: Window) -> Option<i64> {
    let Window::Minutes(m) = w else { return None };
    let us = i64::from(m) * MIN;
    let mut g = if m <= 120 {
        MIN
    } else if m <= 7 * 24 * 60 {
        HOUR
    } else {
        DAY
    };
    while us % g != 0 {
        g = if g == DAY { HOUR } else { MIN };
    }
    Some(g)
}

/// (width, buckets kept) per tier the signal needs.
fn tiers(def: &SignalDef) -> Vec<(i64, i64)> {
    let mut t: Vec<(i64, i64)> = Vec::new();
    for &w in &def.windows {
        if let (Some(g), Some(us)) = (width(w), w.micros()) {
            match t.iter_mut().find(|x| x.0 == g) {
                Some(x) => x.1 = x.1.max(2 * us / g),
                None => t.push((g, 2 * us / g)),
            }
        }
    }
    t
}

fn fdiv(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

struct Pair<'a> {
    def: &'a SignalDef,
    events: Vec<(i64, f64)>,
}

impl Pair<'_> {
    fn last(&self) -> i64 {
        self.events.iter().map(|e| e.0).max().unwrap()
    }

    fn h(&self) -> Option<f64> {
        self.def.decay.half_life_us().map(|h| h as f64)
    }

    /// 2^(−dt/h), 1 for no decay.
    fn f(&self, dt: i64) -> f64 {
        match self.h() {
            Some(h) => 2f64.powf(-(dt as f64) / h),
            None => 1.0,
        }
    }

    fn exact_decay(&self, at: i64) -> f64 {
        self.events
            .iter()
            .filter(|e| e.0 <= at)
            .map(|&(ts, w)| w * self.f(at - ts))
            .sum()
    }

    /// Σ|wᵢ|·f(at − tsᵢ) over every event (later ones grow): the scale of the terms.
    fn magnitude(&self, at: i64) -> f64 {
        self.events
            .iter()
            .map(|&(ts, w)| w.abs() * self.f(at - ts))
            .sum()
    }

    fn abs_sum(&self) -> f64 {
        self.events.iter().map(|e| e.1.abs()).sum()
    }

    fn retained(&self, (g, keep): (i64, i64), ts: i64) -> bool {
        fdiv(ts, g) > fdiv(self.last(), g) - keep
    }

    /// The bucket rule: buckets (a − n, a] of the window's tier, retained ones only.
    fn buckets(&self, w: Window, at: i64, back: i64) -> f64 {
        let g = width(w).unwrap();
        let tier = *tiers(self.def).iter().find(|t| t.0 == g).unwrap();
        let n = w.micros().unwrap() / g;
        let a = fdiv(at, g) - back * n;
        self.events
            .iter()
            .filter(|&&(ts, _)| self.retained(tier, ts) && fdiv(ts, g) > a - n && fdiv(ts, g) <= a)
            .map(|e| e.1)
            .sum()
    }

    /// The width of the tier an event is read from (the finest that retains it).
    fn piece_width(&self, ts: i64) -> Option<i64> {
        tiers(self.def)
            .into_iter()
            .filter(|&t| self.retained(t, ts))
            .map(|t| t.0)
            .min()
    }

    /// Whether an event later than `at` cannot be removed (it shares `at`'s piece or no
    /// tier retains it).
    fn kept(&self, ts: i64, at: i64) -> bool {
        match self.piece_width(ts) {
            None => true,
            Some(g) => fdiv(ts, g) == fdiv(at, g),
        }
    }

    /// Σ wᵢ over tsᵢ ≤ at, plus the later events the piece rule cannot remove.
    fn sum_before_under_rule(&self, at: i64) -> f64 {
        self.events
            .iter()
            .filter(|&&(ts, _)| ts <= at || self.kept(ts, at))
            .map(|e| e.1)
            .sum()
    }

    /// The documented bound on |decay − exact| for an exponential signal, at < last.
    fn decay_bound(&self, at: i64) -> f64 {
        let h = self.h().unwrap();
        let c = |g: i64| 2f64.powf(g as f64 / (2.0 * h)) - 1.0;
        let gap = self.last() - at;
        let subtract =
            gap <= DECAY_SUBTRACT_HALF_LIVES_MAX * self.def.decay.half_life_us().unwrap();
        let mut bound = 0.0;
        for &(ts, w) in &self.events {
            let g = self.piece_width(ts);
            let grow = 2f64.powf((ts - at) as f64 / h); // f(at − ts), > 1 after at
            bound += w.abs()
                * if subtract {
                    match (ts > at, g) {
                        (false, _) => 0.0,
                        (true, None) => grow,
                        (true, Some(g)) if fdiv(ts, g) == fdiv(at, g) => grow,
                        (true, Some(g)) => grow * c(g),
                    }
                } else {
                    match (ts > at, g) {
                        (false, None) => grow,
                        (false, Some(g)) => grow * c(g),
                        (true, Some(g)) if fdiv(ts, g) == fdiv(at, g) => c(g) + 1.0,
                        (true, _) => 0.0,
                    }
                };
        }
        bound
    }
}

fn near(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol
}

#[derive(Debug, Clone)]
struct Case {
    sigs: Vec<(Option<i64>, Vec<&'static str>)>,
    entities: usize,
    events: Vec<(usize, usize, i64, f64)>,
    queries: Vec<(usize, usize, u8, usize, usize, i64)>,
}

fn signal_strategy() -> impl Strategy<Value = (Option<i64>, Vec<&'static str>)> {
    let decay = prop_oneof![
        Just(None),
        Just(Some(30 * MIN)),
        Just(Some(HOUR)),
        Just(Some(6 * HOUR)),
        Just(Some(DAY)),
        Just(Some(7 * DAY)),
    ];
    (
        decay,
        proptest::sample::subsequence(WINDOWS.to_vec(), 1..=3),
    )
}

fn ts_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 0..3 * HOUR,
        3 => 0..3 * DAY,
        2 => 0..20 * DAY,
        2 => (0..300i64).prop_map(|m| m * MIN),
        1 => (0..200i64).prop_map(|h| h * HOUR),
        1 => (0..25i64).prop_map(|d| d * DAY),
        1 => -60 * DAY..0,
    ]
}

fn weight_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![3 => Just(1.0), 1 => Just(2.5), 1 => Just(-1.0), 2 => -3.0..5.0f64]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (prop::collection::vec(signal_strategy(), 2..=3), 1..=3usize).prop_flat_map(
        |(sigs, entities)| {
            let ns = sigs.len();
            let events = prop::collection::vec(
                (0..ns, 0..entities, ts_strategy(), weight_strategy()),
                1..70,
            );
            // (signal, entity, how `at` is chosen, event pick, window pick, small offset)
            let queries = prop::collection::vec(
                (
                    0..ns,
                    0..entities,
                    0u8..12,
                    0..1000usize,
                    0..3usize,
                    -2i64..3,
                ),
                1..50,
            );
            (Just(sigs), Just(entities), events, queries).prop_map(
                |(sigs, entities, events, queries)| Case {
                    sigs,
                    entities,
                    events,
                    queries,
                },
            )
        },
    )
}

fn defs(case: &Case) -> Vec<SignalDef> {
    case.sigs
        .iter()
        .enumerate()
        .map(|(k, (hl, ws))| {
            let decay = match hl {
                Some(us) => DecaySpec::exponential_micros(*us).unwrap(),
                None => DecaySpec::None,
            };
            let windows = ws.iter().map(|w| Window::parse(w).unwrap());
            let kind = if k == 2 {
                EntityKind::User
            } else {
                EntityKind::Item
            };
            let mut d = SignalDef::new(&format!("s{k}"), kind, decay, windows).unwrap();
            d.id = SignalId(10 + k as u32);
            d
        })
        .collect()
}

fn entity(k: usize) -> EntityId {
    EntityId(1_000 + 7 * k as u64)
}

/// The instant a query reads at, picked to hit edges: the newest event, event times,
/// window far edges (`at − W` exactly on an event), bucket boundaries, and before.
fn pick_at(pair: &Pair<'_>, how: u8, ev: usize, win: Option<Window>, off: i64) -> i64 {
    let ts = pair.events[ev % pair.events.len()].0;
    let last = pair.last();
    let w = win.and_then(Window::micros).unwrap_or(HOUR);
    let g = win.and_then(width).unwrap_or(MIN);
    match how {
        0 => last + off,
        1 => last + 37 * MIN,
        2 => last + 3 * DAY + off,
        3 => ts + off,
        4 => ts + w + off,
        5 => ts + 2 * w + off,
        6 => fdiv(ts, g) * g + off,
        7 => (fdiv(ts, g) + 1) * g + off,
        8 => fdiv(ts + w, g) * g + off,
        9 => last - 5 * MIN + off,
        10 => last - 2 * DAY + off * HOUR,
        _ => ts - HOUR + off,
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let defs = defs(case);
    let mut ledger = Ledger::new();
    for d in &defs {
        ledger.define(d);
    }
    let mut per_pair: Vec<Vec<Vec<(i64, f64)>>> = vec![vec![Vec::new(); case.entities]; defs.len()];
    for &(s, e, off, w) in &case.events {
        let ts = T0 + off;
        ledger.apply(&SignalEvent {
            signal: defs[s].id,
            entity: entity(e),
            user: None,
            weight: w,
            ts: Timestamp(ts),
        });
        per_pair[s][e].push((ts, w));
    }

    // A decoded copy must answer every query identically.
    let mut enc = Encoder::new();
    ledger.encode(&mut enc);
    let copy = Ledger::decode(&mut Decoder::new(&enc.buf))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;

    for &(s, e, how, ev, wi, off) in &case.queries {
        let def = &defs[s];
        let id = entity(e);
        let events = per_pair[s][e].clone();
        if events.is_empty() {
            prop_assert_eq!(ledger.decay(def.id, id, Timestamp(T0)), 0.0);
            prop_assert_eq!(ledger.total(def.id, id), 0.0);
            prop_assert_eq!(ledger.last(def.id, id), None);
            for &w in &def.windows {
                prop_assert_eq!(ledger.window_count(def.id, id, w, Timestamp(T0)), 0.0);
            }
            continue;
        }
        let pair = Pair { def, events };
        let window = def.windows[wi % def.windows.len()];
        let at = pick_at(&pair, how, ev, Some(window), off);
        let last = pair.last();

        // total and last: exact (same summation order as the model).
        prop_assert_eq!(
            ledger.total(def.id, id),
            pair.events.iter().map(|e| e.1).sum::<f64>()
        );
        prop_assert_eq!(ledger.last(def.id, id), Some(Timestamp(last)));

        // decay
        let got = ledger.decay(def.id, id, Timestamp(at));
        let exact = pair.exact_decay(at);
        let slack = 1e-9 * pair.magnitude(at) + 1e-12;
        if at >= last {
            prop_assert!(
                near(got, exact, slack),
                "decay at ≥ last: got {got}, exact {exact}, at {at}"
            );
        } else if pair.h().is_none() {
            let want = pair.sum_before_under_rule(at);
            prop_assert!(
                near(got, want, slack),
                "decay none: got {got}, rule {want}, exact {exact}"
            );
        } else {
            let bound = pair.decay_bound(at);
            prop_assert!(
                near(got, exact, bound + slack),
                "decay before last: got {got}, exact {exact}, bound {bound}, at {at}, last {last}"
            );
        }
        prop_assert_eq!(
            copy.decay(def.id, id, Timestamp(at)).to_bits(),
            got.to_bits()
        );

        // every declared window at this instant
        for &w in &def.windows {
            let got = ledger.window_count(def.id, id, w, Timestamp(at));
            let tol = 1e-9 * pair.abs_sum() + 1e-12;
            prop_assert_eq!(
                copy.window_count(def.id, id, w, Timestamp(at)).to_bits(),
                got.to_bits()
            );
            let Some(hours) = w.hours() else {
                let want = if at >= last {
                    pair.events.iter().map(|e| e.1).sum()
                } else {
                    pair.sum_before_under_rule(at)
                };
                prop_assert!(near(got, want, tol), "all: got {got}, rule {want}");
                prop_assert_eq!(ledger.velocity(def.id, id, w, Timestamp(at)), 0.0);
                continue;
            };
            let want = pair.buckets(w, at, 0);
            prop_assert!(
                near(got, want, tol),
                "window {w} at {at}: got {got}, rule {want}"
            );
            let vel = ledger.velocity(def.id, id, w, Timestamp(at));
            prop_assert!(near(vel * hours, want, tol), "velocity {w}: {vel}");
            let acc = ledger.acceleration(def.id, id, w, Timestamp(at));
            let want_acc = (want - pair.buckets(w, at, 1)) / hours;
            prop_assert!(
                near(acc, want_acc, tol / hours),
                "acceleration {w} at {at}: got {acc}, rule {want_acc}"
            );
            prop_assert_eq!(
                copy.acceleration(def.id, id, w, Timestamp(at)).to_bits(),
                acc.to_bits()
            );

            // The rule itself against SQL.md's exact window: at or after the newest event,
            // only events within one bucket of the far edge may differ.
            if at >= last {
                let g = width(w).unwrap();
                let edge = at - w.micros().unwrap();
                let exact: f64 = pair
                    .events
                    .iter()
                    .filter(|e| e.0 > edge && e.0 <= at)
                    .map(|e| e.1)
                    .sum();
                let fuzzy: f64 = pair
                    .events
                    .iter()
                    .filter(|e| (e.0 - edge).abs() < g)
                    .map(|e| e.1.abs())
                    .sum();
                prop_assert!(
                    near(want, exact, fuzzy + tol),
                    "rule vs exact window {w}: {want} vs {exact}"
                );
            }
        }
    }

    // Batch reads gather exactly what the scalar reads return.
    for def in &defs {
        let ids: Vec<EntityId> = (0..case.entities)
            .map(entity)
            .chain([EntityId(999_999)])
            .collect();
        let at = Timestamp(T0 + 5 * HOUR);
        let mut out = Vec::new();
        ledger.decay_batch(def.id, &ids, at, &mut out);
        let want: Vec<f64> = ids.iter().map(|&e| ledger.decay(def.id, e, at)).collect();
        prop_assert_eq!(&out, &want);
        for &w in &def.windows {
            ledger.window_count_batch(def.id, &ids, w, at, &mut out);
            let want: Vec<f64> = ids
                .iter()
                .map(|&e| ledger.window_count(def.id, e, w, at))
                .collect();
            prop_assert_eq!(&out, &want);
            ledger.velocity_batch(def.id, &ids, w, at, &mut out);
            let want: Vec<f64> = ids
                .iter()
                .map(|&e| ledger.velocity(def.id, e, w, at))
                .collect();
            prop_assert_eq!(&out, &want);
            ledger.acceleration_batch(def.id, &ids, w, at, &mut out);
            let want: Vec<f64> = ids
                .iter()
                .map(|&e| ledger.acceleration(def.id, e, w, at))
                .collect();
            prop_assert_eq!(&out, &want);
        }
        ledger.total_batch(def.id, &ids, &mut out);
        let want: Vec<f64> = ids.iter().map(|&e| ledger.total(def.id, e)).collect();
        prop_assert_eq!(&out, &want);
        let mut lasts = Vec::new();
        ledger.last_batch(def.id, &ids, &mut lasts);
        let want: Vec<Option<Timestamp>> = ids.iter().map(|&e| ledger.last(def.id, e)).collect();
        prop_assert_eq!(&lasts, &want);
        // Reads by ordinal gather exactly what the id reads return.
        let kind = ledger.signal_kind(def.id).unwrap();
        let mut ords = Vec::new();
        ledger.ordinals_of(kind, &ids, &mut ords);
        let mut by_id = Vec::new();
        ledger.decay_batch(def.id, &ids, at, &mut by_id);
        ledger.decay_ords(def.id, &ords, at, &mut out);
        prop_assert_eq!(&out, &by_id);
        for &w in &def.windows {
            ledger.window_count_batch(def.id, &ids, w, at, &mut by_id);
            ledger.window_count_ords(def.id, &ords, w, at, &mut out);
            prop_assert_eq!(&out, &by_id);
            ledger.velocity_batch(def.id, &ids, w, at, &mut by_id);
            ledger.velocity_ords(def.id, &ords, w, at, &mut out);
            prop_assert_eq!(&out, &by_id);
            ledger.acceleration_batch(def.id, &ids, w, at, &mut by_id);
            ledger.acceleration_ords(def.id, &ords, w, at, &mut out);
            prop_assert_eq!(&out, &by_id);
        }
        ledger.total_batch(def.id, &ids, &mut by_id);
        ledger.total_ords(def.id, &ords, &mut out);
        prop_assert_eq!(&out, &by_id);
        let mut lasts_by_ord = Vec::new();
        ledger.last_ords(def.id, &ords, &mut lasts_by_ord);
        prop_assert_eq!(&lasts_by_ord, &lasts);
        // Dense per-ordinal decay agrees with the per-entity read.
        ledger.decay_dense(def.id, at, &mut out);
        let kind = ledger.signal_kind(def.id).unwrap();
        prop_assert_eq!(out.len(), ledger.entities(kind).len());
        for (ord, &e) in ledger.entities(kind).iter().enumerate() {
            prop_assert_eq!(out[ord], ledger.decay(def.id, e, at));
        }
    }
    Ok(())
}

proptest! {
    // 512 cases by default; PROPTEST_CASES overrides for longer runs.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_matches_the_event_list_model(case in case_strategy()) {
        check(&case)?;
    }
}
