//! One signal's state: dense hot columns indexed by entity ordinal, plus the sparse warm
//! tier, and every read the ledger answers for one (entity, signal) pair.

use tidal_core::{DecaySpec, SignalDef, Window};

use crate::memory::{alloc_bytes, grow_to, vec_bytes};
use crate::warm::{self, Layout, Side, Warm, bound};

/// `last_ts` of an ordinal that has no event for the signal.
pub const NO_EVENT_TS: i64 = i64::MIN;
/// Event times and `at` are clamped to ±2^61 µs (about ±73,000 years around 1970) so
/// that no time arithmetic, differences included, can overflow.
pub const TIMESTAMP_MICROS_MAX: i64 = 1 << 61;
/// See [`TIMESTAMP_MICROS_MAX`].
pub const TIMESTAMP_MICROS_MIN: i64 = -(1 << 61);
/// `decay` at an `at` before the newest event removes later events from the hot score
/// while `at` is at most this many half-lives before the newest event. Further back, the
/// factor `2^(gap/half_life)` that brings the score back to `at` would amplify rounding
/// and bucket errors beyond use (2^24 ≈ 1.7e7), so the score is summed from the warm
/// buckets at or before `at` instead.
pub const DECAY_SUBTRACT_HALF_LIVES_MAX: i64 = 24;

#[inline]
pub(crate) fn clamp_ts(t: i64) -> i64 {
    t.clamp(TIMESTAMP_MICROS_MIN, TIMESTAMP_MICROS_MAX)
}

#[derive(Debug, Clone)]
pub(crate) struct SignalState {
    pub def: SignalDef,
    pub layout: Layout,
    /// Decayed score as of `last_ts` (for `DECAY NONE`, the plain sum: equal to `total`).
    pub score: Vec<f64>,
    /// Newest event time, which is also the time the score is expressed at.
    pub last_ts: Vec<i64>,
    pub total: Vec<f64>,
    /// One slot per ordinal when the signal has finite windows; empty otherwise.
    pub warm: Vec<Option<Warm>>,
    /// Ordinals with at least one event.
    pub active: usize,
}

impl SignalState {
    pub fn new(def: SignalDef) -> SignalState {
        let layout = Layout::new(&def.windows);
        SignalState {
            def,
            layout,
            score: Vec::new(),
            last_ts: Vec::new(),
            total: Vec::new(),
            warm: Vec::new(),
            active: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.last_ts.len()
    }

    /// Whether ordinal `i` has an event for this signal.
    #[inline]
    pub fn is_active(&self, i: usize) -> bool {
        self.last_ts.get(i).is_some_and(|&t| t != NO_EVENT_TS)
    }

    /// Extends the columns to `len` ordinals (with ~25% spare on reallocation).
    pub fn grow_columns(&mut self, len: usize) {
        grow_to(&mut self.score, len, 0.0);
        grow_to(&mut self.last_ts, len, NO_EVENT_TS);
        grow_to(&mut self.total, len, 0.0);
        if !self.layout.is_empty() {
            grow_to(&mut self.warm, len, None);
        }
    }

    /// Records an event of weight `w` at `ts` for ordinal `ord`. The hot update is a
    /// single `exp`; the warm update touches one bucket per tier.
    #[inline]
    pub fn apply(&mut self, ord: u32, ts: i64, w: f64) {
        let i = ord as usize;
        if i >= self.last_ts.len() {
            self.grow_columns(i + 1);
        }
        let ts = clamp_ts(ts);
        let old_last = self.last_ts[i];
        if old_last == NO_EVENT_TS {
            self.active += 1;
            self.score[i] = w;
            self.last_ts[i] = ts;
        } else if ts >= old_last {
            self.score[i] = self.score[i] * self.def.decay.factor(ts - old_last) + w;
            self.last_ts[i] = ts;
        } else {
            self.score[i] += w * self.def.decay.factor(old_last - ts);
        }
        self.total[i] += w;
        if !self.layout.is_empty() {
            let last = self.last_ts[i];
            warm::apply(&self.layout, &mut self.warm[i], ts, w, old_last, last);
        }
    }

    fn warm_of(&self, i: usize) -> Option<&Warm> {
        self.warm.get(i).and_then(Option::as_ref)
    }

    /// `decay(at)` for active ordinal `i`.
    pub fn decay(&self, i: usize, at: i64) -> f64 {
        let at = clamp_ts(at);
        let last = self.last_ts[i];
        let score = self.score[i];
        if at >= last {
            return score * self.def.decay.factor(at - last);
        }
        let decay = self.def.decay;
        match decay {
            DecaySpec::None => score - self.later_sum(i, at, |_| 1.0),
            DecaySpec::Exponential { half_life_us, .. } => {
                if last - at <= DECAY_SUBTRACT_HALF_LIVES_MAX.saturating_mul(half_life_us) {
                    let later = self.later_sum(i, at, |mid| decay.factor(last - mid));
                    (score - later) * decay.factor(at - last)
                } else {
                    self.earlier_sum(i, at, |mid| decay.factor(at - mid))
                }
            }
        }
    }

    /// Σ over the warm pieces that start after `at` of `sum · weight(piece midpoint)`.
    fn later_sum(&self, i: usize, at: i64, weight: impl Fn(i64) -> f64) -> f64 {
        let Some(w) = self.warm_of(i) else { return 0.0 };
        let mut s = 0.0;
        warm::visit_pieces(
            &self.layout,
            w,
            self.last_ts[i],
            Side::After(at),
            |lo, hi, sum| {
                s += sum * weight(lo + (hi - lo) / 2);
            },
        );
        s
    }

    /// Σ over the warm pieces that start at or before `at` of `sum · weight(midpoint)`.
    fn earlier_sum(&self, i: usize, at: i64, weight: impl Fn(i64) -> f64) -> f64 {
        let Some(w) = self.warm_of(i) else { return 0.0 };
        let mut s = 0.0;
        warm::visit_pieces(
            &self.layout,
            w,
            self.last_ts[i],
            Side::UpTo(at),
            |lo, hi, sum| {
                s += sum * weight(lo + (hi - lo) / 2);
            },
        );
        s
    }

    /// `window_count(window, at)` for active ordinal `i`.
    pub fn window_count(&self, i: usize, window: Window, at: i64) -> f64 {
        let at = clamp_ts(at);
        match window {
            Window::All => {
                if at >= self.last_ts[i] {
                    self.total[i]
                } else {
                    self.total[i] - self.later_sum(i, at, |_| 1.0)
                }
            }
            Window::Minutes(_) => {
                let Some((code, n)) = self.layout.route(window) else {
                    return 0.0;
                };
                let a = self.layout.tiers()[code].index(at);
                self.bucket_sum(i, code, a - n, a)
            }
        }
    }

    /// `(count over (at − W, at] − count over (at − 2W, at − W]) / hours` for ordinal `i`.
    pub fn acceleration(&self, i: usize, window: Window, at: i64) -> f64 {
        let (Some((code, n)), Some(hours)) = (self.layout.route(window), window.hours()) else {
            return 0.0;
        };
        let a = self.layout.tiers()[code].index(clamp_ts(at));
        (self.bucket_sum(i, code, a - n, a) - self.bucket_sum(i, code, a - 2 * n, a - n)) / hours
    }

    /// Sum of tier `code`'s buckets with index in `(lo, hi]`.
    fn bucket_sum(&self, i: usize, code: usize, lo: i64, hi: i64) -> f64 {
        let tier = self.layout.tiers()[code];
        let last = self.last_ts[i];
        // Every event is in a bucket at or below the newest one's: a range that starts
        // after it is empty. Decided from the dense column, without touching the warm
        // tier (most entities are quiet in short windows).
        if tier.index(last) <= lo {
            return 0.0;
        }
        let Some(w) = self.warm_of(i) else { return 0.0 };
        // Buckets below the retention floor may linger until trimmed: never read them.
        let lo = lo.max(tier.floor_index(last) - 1);
        let base = tier.base(last);
        w.sum(code, bound(base, lo + 1), bound(base, hi + 1))
    }

    /// Renumbers ordinals after the kind's ordinal map dropped some: `remap[old]` is the
    /// new ordinal (`u32::MAX` when dropped, which only happens to inactive ordinals).
    pub fn remap(&mut self, remap: &[u32]) {
        let mut len = 0;
        for old in 0..self.len() {
            let new = remap.get(old).copied().unwrap_or(u32::MAX);
            if new == u32::MAX {
                debug_assert!(!self.is_active(old));
                continue;
            }
            let new = new as usize;
            debug_assert!(new <= old);
            self.score[new] = self.score[old];
            self.last_ts[new] = self.last_ts[old];
            self.total[new] = self.total[old];
            if !self.warm.is_empty() {
                let w = self.warm[old].take();
                self.warm[new] = w;
            }
            len = new + 1;
        }
        self.score.truncate(len);
        self.last_ts.truncate(len);
        self.total.truncate(len);
        self.warm.truncate(len);
        self.score.shrink_to_fit();
        self.last_ts.shrink_to_fit();
        self.total.shrink_to_fit();
        self.warm.shrink_to_fit();
    }

    /// Drops warm buckets no read at `at ≥ horizon` uses; frees emptied pairs.
    pub fn expire(&mut self, horizon: i64) {
        let horizon = clamp_ts(horizon);
        for (slot, &last) in self.warm.iter_mut().zip(&self.last_ts) {
            if let Some(w) = slot
                && !warm::expire(&self.layout, w, last, horizon)
            {
                *slot = None;
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        let warm: usize = self.warm.iter().flatten().map(Warm::heap_bytes).sum();
        std::mem::size_of::<SignalState>()
            + alloc_bytes(self.def.name.len())
            + vec_bytes(&self.def.windows)
            + alloc_bytes(std::mem::size_of_val(self.layout.tiers()))
            + vec_bytes(&self.score)
            + vec_bytes(&self.last_ts)
            + vec_bytes(&self.total)
            + vec_bytes(&self.warm)
            + warm
    }
}
