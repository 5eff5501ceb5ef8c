//! One signal's state: dense hot columns indexed by entity ordinal, plus the sparse warm
//! tier, and every read the ledger answers for one (entity, signal) pair.

use tidal_core::{DecaySpec, SignalDef, Window};

use crate::memory::{alloc_bytes, grow_to, vec_bytes};
use crate::warm::{self, Layout, Side, Warm, bound};
use crate::window_sums::{NO_BUCKET, SumCell, SumsRead, WindowSums};

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

/// A window read over at least this many ordinals asks for the signal's window sums.
pub const WINDOW_SUMS_REQUEST_ORDS_MIN: usize = 1_024;

/// A request flag that survives `Clone` (as its current value).
#[derive(Debug, Default)]
pub(crate) struct Wanted(std::sync::atomic::AtomicBool);

impl Wanted {
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn clear(&self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clone for Wanted {
    fn clone(&self) -> Wanted {
        Wanted(std::sync::atomic::AtomicBool::new(self.get()))
    }
}

/// A window read with its entity-independent part worked out once.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WindowRead {
    /// `'all'` at (clamped) `at`.
    All { at: i64 },
    /// Buckets `(a − n, a]` of tier `code`; `sums` says which window sums serve the read
    /// and how (`None`: read every entity from the warm tier).
    Buckets {
        code: usize,
        n: i64,
        a: i64,
        sums: Option<(usize, SumsRead)>,
    },
    /// A window the signal does not declare: reads 0.
    Unserved,
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
    /// One per distinct finite window the warm tier serves (see `window_sums.rs`);
    /// maintained only while `sums_on`.
    pub window_sums: Vec<WindowSums>,
    /// Whether the window sums are kept. They are built on demand: a bulk window read
    /// of a signal without them sets `sums_wanted`, and the next writer (or the reader,
    /// through `Ledger::enable_wanted_window_sums`) builds them, so signals nobody
    /// ranks by do not pay for them at ingest.
    pub sums_on: bool,
    pub sums_wanted: Wanted,
    /// The windows' cells, interleaved: ordinal `i`'s cell for window `k` is at
    /// `i · window_sums.len() + k`, so an event updates all of a pair's windows in
    /// one or two cache lines.
    pub window_cells: Vec<SumCell>,
}

impl SignalState {
    pub fn new(def: SignalDef) -> SignalState {
        let layout = Layout::new(&def.windows);
        let mut window_sums: Vec<WindowSums> = Vec::new();
        for &w in &def.windows {
            if let Some((code, n)) = layout.route(w)
                && !window_sums.iter().any(|s| s.code == code && s.n == n)
            {
                window_sums.push(WindowSums::new(code, n));
            }
        }
        SignalState {
            def,
            layout,
            score: Vec::new(),
            last_ts: Vec::new(),
            total: Vec::new(),
            warm: Vec::new(),
            active: 0,
            window_sums,
            window_cells: Vec::new(),
            sums_on: false,
            sums_wanted: Wanted::default(),
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
        let nw = self.window_sums.len();
        if self.sums_on && nw > 0 {
            grow_to(&mut self.window_cells, len * nw, SumCell::EMPTY);
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
        // Buckets leaving the windows are settled against the state before the event.
        let nw = if self.sums_on {
            self.window_sums.len()
        } else {
            0
        };
        for k in 0..nw {
            let b = self.layout.tiers()[self.window_sums[k].code].index(ts);
            if b > self.window_sums[k].head {
                self.advance_window(k, b);
            }
        }
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
        for k in 0..nw {
            let ws = &self.window_sums[k];
            let (code, tier) = (ws.code, self.layout.tiers()[ws.code]);
            let b = tier.index(ts);
            if b <= ws.head - ws.n {
                continue;
            }
            let newest_before = (old_last != NO_EVENT_TS).then(|| tier.index(old_last));
            if ts < old_last && newest_before != Some(b) {
                // Backdated to an older bucket: recompute the pair (rare).
                self.window_sums[k].add_member(b, ord);
                self.refresh_window(k, i);
                continue;
            }
            // The event's bucket is the pair's newest slot in this tier (in order, or
            // backdated within that bucket), and the window read folds the other
            // in-window slots first, so `prefix + slot` is that read bit for bit.
            let slot = self.newest_slot(i, code);
            let cell = i * self.window_sums.len() + k;
            if newest_before == Some(b) {
                let c = &mut self.window_cells[cell];
                c.sum = c.prefix + slot;
            } else {
                self.window_sums[k].add_member(b, ord);
                let c = &mut self.window_cells[cell];
                c.prefix = c.sum;
                c.sum += slot;
                if c.oldest == NO_BUCKET {
                    c.oldest = b;
                }
            }
        }
    }

    /// The sum in tier `code`'s newest bucket of ordinal `i` (0 without one).
    fn newest_slot(&self, i: usize, code: usize) -> f64 {
        self.warm_of(i)
            .and_then(|w| w.run(code).last())
            .map_or(0.0, warm::Slot::sum)
    }

    /// Moves window sums `k` to head bucket `to`, recomputing the ordinals whose buckets
    /// leave the window.
    fn advance_window(&mut self, k: usize, to: i64) {
        let leaving = self.window_sums[k].advance(to);
        for i in leaving {
            self.refresh_window(k, i as usize);
        }
    }

    /// Turns the window sums on (building them from the warm tier) if they are off.
    pub fn enable_window_sums(&mut self) {
        self.sums_wanted.clear();
        if !self.sums_on && !self.window_sums.is_empty() {
            self.sums_on = true;
            self.rebuild_window_sums();
        }
    }

    /// Ordinal `i`'s cell of window `k`.
    #[inline]
    fn cell(&self, i: usize, k: usize) -> SumCell {
        self.window_cells[i * self.window_sums.len() + k]
    }

    /// Recomputes window sums `k` for ordinal `i` from the warm tier.
    fn refresh_window(&mut self, k: usize, i: usize) {
        let ws = &self.window_sums[k];
        let (code, lo, hi) = (ws.code, ws.head - ws.n, ws.head);
        let (prefix, sum, oldest) = if self.is_active(i) {
            self.window_parts(i, code, lo, hi)
        } else {
            (0.0, 0.0, NO_BUCKET)
        };
        let cell = i * self.window_sums.len() + k;
        if let Some(c) = self.window_cells.get_mut(cell) {
            *c = SumCell {
                sum,
                oldest,
                prefix,
            };
        }
    }

    /// Recomputes every window sum from the warm tier (after decoding or expiring).
    pub fn rebuild_window_sums(&mut self) {
        if !self.sums_on {
            self.window_cells = Vec::new();
            return;
        }
        let len = self.len();
        self.window_cells.clear();
        self.window_cells
            .resize(len * self.window_sums.len(), SumCell::EMPTY);
        for k in 0..self.window_sums.len() {
            let tier = self.layout.tiers()[self.window_sums[k].code];
            let head = self
                .last_ts
                .iter()
                .filter(|&&t| t != NO_EVENT_TS)
                .map(|&t| tier.index(t))
                .max()
                .unwrap_or(i64::MIN);
            let ws = &mut self.window_sums[k];
            ws.reset(head);
            if head == i64::MIN {
                continue;
            }
            let (code, lo) = (ws.code, head - ws.n);
            for i in 0..len {
                if !self.is_active(i) {
                    continue;
                }
                self.refresh_window(k, i);
                let last = self.last_ts[i];
                let Some(w) = self.warm_of(i) else { continue };
                if tier.index(last) <= lo {
                    continue;
                }
                let base = tier.base(last);
                let from = lo.max(tier.floor_index(last) - 1);
                let buckets: Vec<i64> = w
                    .range(code, bound(base, from + 1), bound(base, head + 1))
                    .iter()
                    .map(|s| base + s.offset())
                    .collect();
                for b in buckets {
                    self.window_sums[k].add_member(b, i as u32);
                }
            }
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

    /// Prepares `window_count` / `acceleration` reads of `window` at `at` for many
    /// ordinals: routing a window to its tier costs several 64-bit divisions, which
    /// repeated per entity were most of a batch read's time.
    pub fn window_read(&self, window: Window, at: i64) -> WindowRead {
        let at = clamp_ts(at);
        match window {
            Window::All => WindowRead::All { at },
            Window::Minutes(_) => match self.layout.route(window) {
                Some((code, n)) => {
                    let a = self.layout.tiers()[code].index(at);
                    let sums = self
                        .window_sums
                        .iter()
                        .position(|s| s.code == code && s.n == n)
                        .filter(|_| self.sums_on)
                        .and_then(|k| Some((k, self.window_sums[k].read_at(a)?)));
                    WindowRead::Buckets { code, n, a, sums }
                }
                None => WindowRead::Unserved,
            },
        }
    }

    /// `window_count(window, at)` for active ordinal `i`.
    pub fn window_count(&self, i: usize, window: Window, at: i64) -> f64 {
        self.window_count_with(i, self.window_read(window, at))
    }

    /// `window_count` for active ordinal `i`, as prepared by [`SignalState::window_read`].
    #[inline]
    pub fn window_count_with(&self, i: usize, r: WindowRead) -> f64 {
        match r {
            WindowRead::All { at } => {
                if at >= self.last_ts[i] {
                    self.total[i]
                } else {
                    self.total[i] - self.later_sum(i, at, |_| 1.0)
                }
            }
            WindowRead::Buckets {
                code,
                n,
                a,
                sums: Some((k, how)),
            } => match how {
                SumsRead::AtHead => self.cell(i, k).sum,
                SumsRead::After { cut } if self.cell(i, k).oldest > cut => self.cell(i, k).sum,
                SumsRead::After { .. } => self.bucket_sum(i, code, a - n, a),
                SumsRead::Empty => 0.0,
            },
            WindowRead::Buckets {
                code,
                n,
                a,
                sums: None,
            } => self.bucket_sum(i, code, a - n, a),
            WindowRead::Unserved => 0.0,
        }
    }

    /// `window_count / div` for each ordinal in `ords` (0 for `u32::MAX`, ordinals past
    /// the end and ordinals without events). Served by the window sums where it can:
    /// one load per entity, no activity check.
    pub fn gather_window(&self, r: WindowRead, ords: &[u32], div: f64, out: &mut Vec<f64>) {
        out.clear();
        out.reserve(ords.len());
        match r {
            WindowRead::Buckets {
                sums: Some((k, SumsRead::AtHead)),
                ..
            } => {
                let nw = self.window_sums.len();
                let cells = &self.window_cells;
                out.extend(
                    ords.iter()
                        .map(|&o| cells.get(o as usize * nw + k).map_or(0.0, |c| c.sum / div)),
                );
            }
            WindowRead::Buckets {
                code,
                n,
                a,
                sums: Some((k, SumsRead::After { cut })),
            } => {
                let nw = self.window_sums.len();
                let cells = &self.window_cells;
                out.extend(ords.iter().map(|&o| match cells.get(o as usize * nw + k) {
                    Some(c) if c.oldest > cut => c.sum / div,
                    // Weight leaves the window: the entity has events, read its buckets.
                    Some(_) => self.bucket_sum(o as usize, code, a - n, a) / div,
                    None => 0.0,
                }));
            }
            WindowRead::Buckets {
                sums: Some((_, SumsRead::Empty)),
                ..
            }
            | WindowRead::Unserved => out.resize(ords.len(), 0.0),
            _ => {
                if !self.sums_on && ords.len() >= WINDOW_SUMS_REQUEST_ORDS_MIN {
                    self.sums_wanted.set();
                }
                self.gather_window_slow(r, ords, div, out);
            }
        }
    }

    /// [`SignalState::gather_window`] entity by entity from the warm tier.
    fn gather_window_slow(&self, r: WindowRead, ords: &[u32], div: f64, out: &mut Vec<f64>) {
        out.extend(ords.iter().map(|&o| {
            let i = o as usize;
            if self.is_active(i) {
                self.window_count_with(i, r) / div
            } else {
                0.0
            }
        }));
    }

    /// `(count over (at − W, at] − count over (at − 2W, at − W]) / hours` for ordinal `i`.
    pub fn acceleration(&self, i: usize, window: Window, at: i64) -> f64 {
        match window.hours() {
            Some(hours) => self.acceleration_with(i, self.window_read(window, at), hours),
            None => 0.0,
        }
    }

    /// [`SignalState::acceleration`] as prepared by [`SignalState::window_read`].
    #[inline]
    pub fn acceleration_with(&self, i: usize, r: WindowRead, hours: f64) -> f64 {
        let WindowRead::Buckets { code, n, a, .. } = r else {
            return 0.0;
        };
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

    /// Over the buckets [`SignalState::bucket_sum`] reads for `(lo, hi]`: the sum of all
    /// but the newest (folded the same way), the sum of all (bit-identical to
    /// `bucket_sum`), and the oldest one's index ([`NO_BUCKET`] if none).
    fn window_parts(&self, i: usize, code: usize, lo: i64, hi: i64) -> (f64, f64, i64) {
        let tier = self.layout.tiers()[code];
        let last = self.last_ts[i];
        if tier.index(last) <= lo {
            return (0.0, 0.0, NO_BUCKET);
        }
        let Some(w) = self.warm_of(i) else {
            return (0.0, 0.0, NO_BUCKET);
        };
        let lo = lo.max(tier.floor_index(last) - 1);
        let base = tier.base(last);
        let slots = w.range(code, bound(base, lo + 1), bound(base, hi + 1));
        let Some((newest, rest)) = slots.split_last() else {
            return (0.0, 0.0, NO_BUCKET);
        };
        let prefix = rest.iter().map(warm::Slot::sum).fold(0.0, |a, b| a + b);
        let oldest = slots.first().map_or(NO_BUCKET, |s| base + s.offset());
        (prefix, prefix + newest.sum(), oldest)
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
            if !self.window_cells.is_empty() {
                let nw = self.window_sums.len();
                for k in 0..nw {
                    self.window_cells[new * nw + k] = self.window_cells[old * nw + k];
                }
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
        self.window_cells.truncate(len * self.window_sums.len());
        self.window_cells.shrink_to_fit();
        for ws in &mut self.window_sums {
            ws.remap_members(remap);
        }
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
        // Buckets the window sums were counting may be gone.
        self.rebuild_window_sums();
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
            + vec_bytes(&self.window_cells)
            + self
                .window_sums
                .iter()
                .map(WindowSums::memory_bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod window_sums_tests {
    use proptest::prelude::*;
    use tidal_core::{DecaySpec, EntityKind, SignalId};

    use super::*;

    const MINUTE: i64 = 60_000_000;
    const WINDOWS: [&str; 6] = ["5m", "1h", "2h", "3h", "24h", "7d"];

    fn state(windows: &[&str]) -> SignalState {
        let mut d = SignalDef::new(
            "s",
            EntityKind::Item,
            DecaySpec::exponential("1 day").expect("valid"),
            windows.iter().map(|w| Window::parse(w).expect("valid")),
        )
        .expect("valid");
        d.id = SignalId(1);
        SignalState::new(d)
    }

    /// Every invariant of `window_sums.rs`, and every read served by the sums equal to
    /// the per-entity warm read, bit for bit, at instants around the head.
    fn check(s: &SignalState, probes: &[i64]) -> Result<(), TestCaseError> {
        if !s.sums_on {
            return Ok(());
        }
        for (k, ws) in s.window_sums.iter().enumerate() {
            let tier = s.layout.tiers()[ws.code];
            let newest = s
                .last_ts
                .iter()
                .filter(|&&t| t != NO_EVENT_TS)
                .map(|&t| tier.index(t))
                .max();
            prop_assert_eq!(
                newest.unwrap_or(i64::MIN),
                ws.head,
                "head is the newest bucket"
            );
            if ws.head == i64::MIN {
                continue;
            }
            let (lo, hi) = (ws.head - ws.n, ws.head);
            for i in 0..s.len() {
                let (prefix, sum, oldest) = if s.is_active(i) {
                    s.window_parts(i, ws.code, lo, hi)
                } else {
                    (0.0, 0.0, NO_BUCKET)
                };
                if s.is_active(i) {
                    let read = s.bucket_sum(i, ws.code, lo, hi);
                    prop_assert_eq!(read.to_bits(), sum.to_bits(), "parts of {}", i);
                }
                let c = s.cell(i, k);
                prop_assert_eq!(c.prefix.to_bits(), prefix.to_bits(), "prefix of {}", i);
                prop_assert_eq!(c.sum.to_bits(), sum.to_bits(), "sum of {}", i);
                prop_assert_eq!(c.oldest, oldest, "oldest of {}", i);
                if oldest != NO_BUCKET {
                    prop_assert!(
                        ws.members_of(oldest).contains(&(i as u32)),
                        "ordinal {} missing from bucket {}",
                        i,
                        oldest
                    );
                }
            }
            let mut ats: Vec<i64> = probes.to_vec();
            for k in [0, 1, 2, ws.n / 2, ws.n - 1, ws.n, ws.n + 1] {
                ats.push((ws.head + k) * tier.width_us);
                ats.push((ws.head + k) * tier.width_us + tier.width_us - 1);
            }
            ats.push((ws.head - 1) * tier.width_us);
            let w = Window::Minutes((ws.n * tier.width_us / MINUTE) as u32);
            for &at in &ats {
                let a = tier.index(clamp_ts(at));
                for i in (0..s.len()).filter(|&i| s.is_active(i)) {
                    let got = s.window_count(i, w, at);
                    let want = s.bucket_sum(i, ws.code, a - ws.n, a);
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{} at {} ord {}", w, at, i);
                }
                // The vectorized gather, including ordinals without events or out of range.
                let ords: Vec<u32> = (0..=s.len() as u32).chain([u32::MAX]).collect();
                let mut out = Vec::new();
                s.gather_window(s.window_read(w, at), &ords, 1.0, &mut out);
                for (&o, got) in ords.iter().zip(&out) {
                    let i = o as usize;
                    let want = if s.is_active(i) {
                        s.bucket_sum(i, ws.code, a - ws.n, a)
                    } else {
                        0.0
                    };
                    prop_assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "gather {} at {} ord {}",
                        w,
                        at,
                        o
                    );
                }
            }
        }
        Ok(())
    }

    fn events() -> impl Strategy<Value = Vec<(u32, i64, f64)>> {
        // Steps between events: mostly seconds to minutes forward, sometimes hours or
        // days forward, sometimes backdated.
        let step = prop_oneof![
            6 => 0i64..(5 * MINUTE),
            2 => 0i64..(3 * 60 * MINUTE),
            1 => 0i64..(10 * 24 * 60 * MINUTE),
            2 => -(30 * 60 * MINUTE)..0i64,
        ];
        let weight = prop_oneof![Just(1.0), Just(0.1), Just(-0.3), Just(2.5), -3.0f64..3.0];
        proptest::collection::vec((0u32..12, step, weight), 1..120).prop_map(|v| {
            let mut t = 1_795_000_000_000_000i64;
            v.into_iter()
                .map(|(e, step, w)| {
                    t += step;
                    (e, t, w)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn window_sums_equal_the_warm_read(
            windows in proptest::sample::subsequence(WINDOWS.to_vec(), 1..=3),
            evs in events(),
            every in 1usize..8,
            enable_at in prop_oneof![Just(0usize), 0usize..60],
        ) {
            let mut s = state(&windows);
            let probes: Vec<i64> = evs.iter().map(|e| e.1).collect();
            for (k, &(e, ts, w)) in evs.iter().enumerate() {
                // Sums built from the warm tier part-way equal sums kept from the start.
                if k == enable_at {
                    prop_assert!(!s.sums_on);
                    s.enable_window_sums();
                    prop_assert!(s.sums_on);
                }
                s.apply(e, ts, w);
                if k % every == 0 {
                    check(&s, &probes[..=k])?;
                }
            }
            s.enable_window_sums();
            check(&s, &probes)?;
            // Rebuilt from the warm tier (as after decoding): the same.
            let mut r = s.clone();
            r.rebuild_window_sums();
            for (a, b) in r.window_sums.iter().zip(&s.window_sums) {
                prop_assert_eq!(a.head, b.head);
                let same = r.window_cells.iter().zip(&s.window_cells).all(|(x, y)| {
                    x.sum.to_bits() == y.sum.to_bits()
                        && x.prefix.to_bits() == y.prefix.to_bits()
                        && x.oldest == y.oldest
                });
                prop_assert!(same, "rebuilt window sums differ");
            }
            check(&r, &probes)?;
            // Renumbering (dropping the ordinals without events) keeps them.
            let mut m = s.clone();
            let mut next = 0u32;
            let remap: Vec<u32> = (0..m.len())
                .map(|i| {
                    if m.is_active(i) {
                        next += 1;
                        next - 1
                    } else {
                        u32::MAX
                    }
                })
                .collect();
            m.remap(&remap);
            check(&m, &probes)?;
            // Expiring buckets keeps the invariants.
            let newest = evs.iter().map(|e| e.1).max().unwrap_or(0);
            s.expire(newest - 5 * 60 * MINUTE);
            check(&s, &probes)?;
        }
    }
}
