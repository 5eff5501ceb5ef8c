//! The signal ledger: for every (entity, signal) with events, a hot tier (decayed score,
//! total, newest event time) and a warm tier of bucketed sums, answering
//! `decay / window_count / velocity / acceleration / total / last` at any instant.
//!
//! ```
//! use tidal_core::{DecaySpec, EntityId, EntityKind, SignalDef, SignalEvent, SignalId, Timestamp, Window};
//! use tidal_ledger::Ledger;
//!
//! let mut view = SignalDef::new(
//!     "view",
//!     EntityKind::Item,
//!     DecaySpec::exponential("1 hour")?,
//!     [Window::parse("1h")?, Window::parse("24h")?],
//! )?;
//! view.id = SignalId(1);
//! let mut ledger = Ledger::new();
//! ledger.define(&view);
//!
//! let t = Timestamp::parse("2026-11-25 10:00:00")?;
//! for minutes_ago in [90, 30, 0] {
//!     ledger.apply(&SignalEvent {
//!         signal: view.id,
//!         entity: EntityId(42),
//!         user: None,
//!         weight: 1.0,
//!         ts: t.saturating_sub(minutes_ago * 60_000_000),
//!     });
//! }
//! let item = EntityId(42);
//! let decay = ledger.decay(view.id, item, t);
//! assert!((decay - (1.0 + 0.5f64.sqrt() + 0.5f64.powf(1.5))).abs() < 1e-12);
//! assert_eq!(ledger.window_count(view.id, item, Window::parse("1h")?, t), 2.0);
//! assert_eq!(ledger.velocity(view.id, item, Window::parse("24h")?, t), 3.0 / 24.0);
//! assert_eq!(ledger.acceleration(view.id, item, Window::parse("1h")?, t), 1.0);
//! assert_eq!(ledger.total(view.id, item), 3.0);
//! assert_eq!(ledger.last(view.id, item), Some(t));
//! assert_eq!(ledger.decay(view.id, EntityId(7), t), 0.0); // no events: 0
//! # Ok::<(), tidal_core::CoreError>(())
//! ```
//!
//! # Contract (fixed by the engine; SQL.md §4 gives the read semantics)
//!
//! ```text
//! Ledger::new() -> Ledger
//! ledger.define(&SignalDef)                 // register (or re-register after restore) a signal
//! ledger.drop_signal(SignalId)              // forget it and free its memory
//! ledger.apply(&SignalEvent)                // any order, backdated allowed; unknown signal ignored
//! ledger.decay(SignalId, EntityId, at: Timestamp) -> f64
//! ledger.window_count(SignalId, EntityId, Window, at) -> f64
//! ledger.velocity(SignalId, EntityId, Window, at) -> f64       // window_count / hours
//! ledger.acceleration(SignalId, EntityId, Window, at) -> f64
//! ledger.total(SignalId, EntityId) -> f64
//! ledger.last(SignalId, EntityId) -> Option<Timestamp>
//! ledger.decay_batch(SignalId, &[EntityId], at, &mut Vec<f64>)   // and *_batch for the others
//! ledger.encode(&mut Encoder) / Ledger::decode(&mut Decoder) -> Result<Ledger, CoreError>
//! ledger.memory_bytes() -> usize; ledger.active_pairs() -> usize
//! ```
//!
//! Entities with no events read 0 (and `last` = None); an unknown signal id reads 0.
//! Window validation (declared window, no 'all' for velocity) is the caller's job: an
//! undeclared finite window is read from the signal's tier of its bucket width when
//! there is one (within that tier's retention) and reads 0 otherwise; velocity and
//! acceleration of `'all'` read 0.
//! Additions: `apply_all`, the ordinal and column accessors (`ordinal`, `entities`,
//! `columns`, `signal_kind`, `generation`) for vectorized passes over a whole kind,
//! `decay_dense`, and `expire` to free warm buckets of entities that went quiet.
//!
//! # Hot tier
//!
//! Per pair: `score` as of `score_ts` (= the newest event time), `total`, `last_ts`. An
//! event at `ts ≥ score_ts` does `score = score·f(ts − score_ts) + w; score_ts = ts`; a
//! backdated one does `score += w·f(score_ts − ts)`, with `f(dt) = 2^(−dt/half_life)`
//! (`f = 1` for `DECAY NONE`). They are dense `Vec` columns indexed by the entity's
//! ordinal in its kind, assigned at its first event.
//!
//! # Warm tier and the bucket rule
//!
//! Windows are read from bucket sums (see `warm.rs`): bucket width `g` = 1 minute for
//! windows ≤ 2 h, 1 hour ≤ 7 days, 1 day beyond, falling back to the next finer width
//! that divides a window that is not a whole number of those buckets (`'150m'` uses
//! minutes). With `a = floor(at/g)` and `n = W/g`, `window_count(W, at)` is the sum of
//! buckets `(a − n, a]`, and acceleration compares it with buckets `(a − 2n, a − n]`.
//! Each tier keeps the buckets `b > floor(last_ts/g) − 2n_max` for its largest window
//! `n_max`; older buckets are dropped, and events older than that when they arrive are
//! not added.
//!
//! # Precision
//!
//! Against the exact definitions, with `h` the half-life, `f(dt) = 2^(−dt/h)` and
//! `wᵢ, tsᵢ` the events of the pair:
//!
//! * `decay` at `at ≥ last_ts`: exact up to floating-point rounding (~1e-15 relative to
//!   Σ|wᵢ|·f(at − tsᵢ); the property test holds it to 1e-9).
//! * `window_count`, `velocity`, `acceleration`: exactly the bucket rule above. Against
//!   the window `(at − W, at]` that misplaces only events within one bucket of the far
//!   edge and, when `at < last_ts`, events later than `at` in `at`'s own bucket (counted
//!   in). A read so far before `last_ts` that it needs dropped buckets sees only the
//!   retained ones.
//! * `total` and `last`: exact. `'all'` at `at ≥ last_ts`: exact (it is `total`).
//!
//! Before the newest event (`at < last_ts`) the later events must be taken out, and only
//! the warm tier knows when they happened. Every retained event belongs to one *piece*:
//! its bucket in the finest tier that still retains it, cut short where a finer tier
//! takes over. Pieces that start after `at` are removed, each as if its events sat at
//! the piece's midpoint. The piece containing `at` cannot be split and stays in, and
//! events that no tier retains (or all events, for a signal without finite windows)
//! cannot be removed. Hence:
//!
//! * `DECAY NONE` and `'all'`: `|error| ≤ Σ |wᵢ|` over the events after `at` that share
//!   `at`'s piece or lie in no tier.
//! * Exponential decay, `last_ts − at ≤ 24·h` (subtracting from the hot score):
//!   `|error| ≤ Σ_{tsᵢ > at} cᵢ·|wᵢ|·2^((tsᵢ − at)/h)`, with `cᵢ = 1` for an event that
//!   shares `at`'s piece or lies in no tier, else `cᵢ = 2^(g/2h) − 1` for the width `g`
//!   of its tier (≈ 0.35·g/h).
//! * Exponential decay, `last_ts − at > 24·h`: bringing the hot score back by
//!   `2^(gap/h) > 2^24` would amplify rounding and bucket errors beyond use, so the value
//!   is summed from the pieces that start at or before `at`, at their midpoints:
//!   `|error| ≤ Σ_{tsᵢ ≤ at, in a tier} (2^(g/2h) − 1)·|wᵢ|·f(at − tsᵢ)
//!   + Σ_{tsᵢ ≤ at, in no tier} |wᵢ|·f(at − tsᵢ) + Σ_{tsᵢ > at, in at's piece} 2^(g/2h)·|wᵢ|`.
//!
//! # Limits
//!
//! Up to 2^32 − 1 entities per kind; event times and `at` are clamped to ±2^61 µs
//! (±73,000 years); non-finite weights are ignored. Memory: 40 bytes of hot columns per
//! (ordinal, signal) of a kind, ~30–40 bytes per entity for its ordinal, and 12 bytes
//! per warm bucket in one allocation per active pair (see `memory_bytes`); about 210
//! bytes per active pair for a zipfian workload with windows `1h, 24h, 7d`. No I/O, no
//! clock reads, no `unsafe`.

mod checkpoint;
mod ledger;
mod memory;
mod ordinals;
mod signal;
mod warm;
mod window_sums;

pub use ledger::{HotColumns, Ledger};
pub use ordinals::{ENTITIES_PER_KIND_MAX, IdBuildHasher, IdHasher};
pub use signal::{
    DECAY_SUBTRACT_HALF_LIVES_MAX, NO_EVENT_TS, TIMESTAMP_MICROS_MAX, TIMESTAMP_MICROS_MIN,
};
pub use warm::{
    HOUR_BUCKETS_WINDOW_MINUTES_MAX, MINUTE_BUCKETS_WINDOW_MINUTES_MAX, bucket_width_micros,
};
