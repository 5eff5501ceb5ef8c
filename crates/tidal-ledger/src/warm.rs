//! The warm tier: per (entity, signal) sums of weights in time buckets.
//!
//! # Bucket rule
//!
//! A window of `W` minutes is served by buckets of width `g` ([`bucket_width_micros`]):
//! one minute for windows up to 2 hours, one hour up to 7 days, one day beyond — except
//! that a window that is not a whole number of those buckets (`'150m'`, `'169h'`) falls
//! back to the next finer width that divides it, so every window is exactly
//! `n = W / g` buckets. Bucket `b` holds the events with `b·g ≤ ts < (b+1)·g`.
//!
//! With `a = floor(at / g)`, the window `(at − W, at]` is read as the buckets
//! `(a − n, a]`. That differs from the exact window only by events within one bucket of
//! the far edge `at − W`, and by events later than `at` in `at`'s own bucket — there are
//! none when `at` is at or after the entity's newest event.
//!
//! # Retention
//!
//! A signal allocates one tier per distinct bucket width its windows need. Each tier
//! keeps `2n` buckets for the largest window `n` it serves (so that acceleration can read
//! the previous window too), counted back from the entity's newest event: with
//! `newest = floor(last_ts / g)`, buckets `b > newest − 2n`. Older buckets are never
//! read again and are dropped (lazily, when the pair's storage would otherwise grow),
//! and an event older than that at insert time is not added to the tier. Both rules
//! together mean a tier answers for exactly the events whose bucket is inside the
//! retention of the *current* newest event.
//!
//! # Layout
//!
//! All tiers of one pair live in one boxed slice of 12-byte slots: a header slot (used
//! length and where each tier's run starts) followed by one run of buckets per tier,
//! coarsest tier first, each sorted by offset. A bucket's offset counts from a per-pair
//! anchor day that trails the newest event by `ANCHOR_SLACK_DAYS`, so offsets stay small
//! whatever the epoch. Sums are stored as the two halves of their bits, which keeps the
//! slot at 12 bytes without a packed struct.

use std::ops::Range;

use tidal_core::Window;
use tidal_core::time::{MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE};

use crate::memory::alloc_bytes;

/// Windows up to this many minutes are served by minute buckets.
pub const MINUTE_BUCKETS_WINDOW_MINUTES_MAX: u32 = 2 * 60;
/// Windows up to this many minutes (and above the minute limit) by hour buckets.
pub const HOUR_BUCKETS_WINDOW_MINUTES_MAX: u32 = 7 * 24 * 60;

/// The anchor day sits this many days before the newest event's day. It must exceed the
/// longest retention (2 × 90 days), so that every retained bucket has a positive offset.
const ANCHOR_SLACK_DAYS: i64 = 192;
/// Slots in front of the buckets: used length and run starts.
const HEADER_SLOTS: usize = 1;

/// The bucket width serving `window`, in microseconds; `None` for `'all'`.
pub fn bucket_width_micros(window: Window) -> Option<i64> {
    let Window::Minutes(m) = window else {
        return None;
    };
    let w_us = i64::from(m) * MICROS_PER_MINUTE;
    let preferred = if m <= MINUTE_BUCKETS_WINDOW_MINUTES_MAX {
        MICROS_PER_MINUTE
    } else if m <= HOUR_BUCKETS_WINDOW_MINUTES_MAX {
        MICROS_PER_HOUR
    } else {
        MICROS_PER_DAY
    };
    [MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE]
        .into_iter()
        .find(|&g| g <= preferred && w_us % g == 0)
}

/// The day (since the epoch) that offsets of a pair whose newest event is `last` count from.
#[inline]
fn anchor_day(last: i64) -> i64 {
    last.div_euclid(MICROS_PER_DAY) - ANCHOR_SLACK_DAYS
}

/// One bucket width of a signal and how many buckets of it each pair keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tier {
    pub width_us: i64,
    /// Buckets retained: twice the bucket count of the largest window served.
    pub keep: i64,
}

impl Tier {
    /// `floor(ts / width)`. Widths are one of three constants; matching on them lets the
    /// compiler replace a slow 64-bit division by a multiplication on the hot path.
    #[inline]
    pub fn index(&self, ts: i64) -> i64 {
        match self.width_us {
            MICROS_PER_MINUTE => ts.div_euclid(MICROS_PER_MINUTE),
            MICROS_PER_HOUR => ts.div_euclid(MICROS_PER_HOUR),
            MICROS_PER_DAY => ts.div_euclid(MICROS_PER_DAY),
            g => ts.div_euclid(g),
        }
    }

    /// Buckets per day.
    #[inline]
    fn per_day(&self) -> i64 {
        match self.width_us {
            MICROS_PER_MINUTE => MICROS_PER_DAY / MICROS_PER_MINUTE,
            MICROS_PER_HOUR => MICROS_PER_DAY / MICROS_PER_HOUR,
            _ => 1,
        }
    }

    /// The oldest bucket index retained while the newest event is at `last`.
    #[inline]
    pub fn floor_index(&self, last: i64) -> i64 {
        self.index(last) - self.keep + 1
    }

    /// Start time of the oldest retained bucket.
    #[inline]
    pub fn start_us(&self, last: i64) -> i64 {
        self.floor_index(last) * self.width_us
    }

    /// The bucket index at offset 0 for a pair whose newest event is at `last`.
    #[inline]
    pub fn base(&self, last: i64) -> i64 {
        anchor_day(last) * self.per_day()
    }
}

/// The tiers one signal needs, coarsest first; a tier's position is its code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Layout {
    tiers: Vec<Tier>,
}

impl Layout {
    pub fn new(windows: &[Window]) -> Layout {
        let mut tiers: Vec<Tier> = Vec::new();
        for &w in windows {
            let (Some(g), Some(w_us)) = (bucket_width_micros(w), w.micros()) else {
                continue;
            };
            let keep = 2 * (w_us / g);
            match tiers.iter_mut().find(|t| t.width_us == g) {
                Some(t) => t.keep = t.keep.max(keep),
                None => tiers.push(Tier { width_us: g, keep }),
            }
        }
        tiers.sort_by_key(|t| std::cmp::Reverse(t.width_us));
        Layout { tiers }
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tier code serving `window` and the window's length in its buckets.
    pub fn route(&self, window: Window) -> Option<(usize, i64)> {
        let g = bucket_width_micros(window)?;
        let code = self.tiers.iter().position(|t| t.width_us == g)?;
        Some((code, window.micros()? / g))
    }
}

/// Which pieces [`visit_pieces`] reports, relative to an instant `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Pieces that start after `at` (every event in them is later than `at`).
    After(i64),
    /// Pieces that start at or before `at`.
    UpTo(i64),
}

impl Side {
    #[inline]
    fn wants(self, piece_lo: i64) -> bool {
        match self {
            Side::After(at) => piece_lo > at,
            Side::UpTo(at) => piece_lo <= at,
        }
    }
}

/// Visits the retained weight of a pair as disjoint pieces `(lo_us, hi_us, sum)`, each
/// event in exactly one piece: an event is read from the *finest tier that retains it*
/// (a tier retains every event at or after its oldest bucket's start). A piece is that
/// event's bucket in that tier, cut short where a finer tier takes over; the cut-short
/// piece's sum is the coarse bucket minus what the finer tier holds of it.
pub(crate) fn visit_pieces(
    layout: &Layout,
    warm: &Warm,
    last: i64,
    side: Side,
    mut f: impl FnMut(i64, i64, f64),
) {
    let tiers = layout.tiers();
    // Everything at or after `cut` was read from finer tiers; `prev` is the tier that
    // retains all of it.
    let mut cut: Option<i64> = None;
    let mut prev = 0usize;
    for code in (0..tiers.len()).rev() {
        let tier = tiers[code];
        let start = tier.start_us(last);
        if cut.is_some_and(|c| start >= c) {
            continue;
        }
        let g = tier.width_us;
        let base = tier.base(last);
        let floor = tier.floor_index(last);
        // Whole buckets below the cut.
        let cut_idx = cut.map_or(i64::MAX, |c| c.div_euclid(g));
        let (lo_idx, hi_idx) = match side {
            Side::After(at) => (floor.max(tier.index(at).saturating_add(1)), cut_idx),
            Side::UpTo(at) => (floor, cut_idx.min(tier.index(at).saturating_add(1))),
        };
        if lo_idx < hi_idx {
            for b in warm.range(code, bound(base, lo_idx), bound(base, hi_idx)) {
                let lo = (base + b.offset()) * g;
                f(lo, lo + g, b.sum());
            }
        }
        // The bucket straddling the cut, minus the part read from the finer tier.
        if let Some(c) = cut
            && c.rem_euclid(g) != 0
        {
            let idx = c.div_euclid(g);
            if idx >= floor && side.wants(idx * g) {
                let whole = warm.sum(code, bound(base, idx), bound(base, idx + 1));
                let fine = tiers[prev];
                let fine_base = fine.base(last);
                let finer = warm.sum(
                    prev,
                    bound(fine_base, fine.index(c)),
                    bound(fine_base, fine.index((idx + 1) * g)),
                );
                f(idx * g, c, whole - finer);
            }
        }
        cut = Some(start);
        prev = code;
        if let Side::After(at) = side
            && start <= at
        {
            break;
        }
    }
}

/// Offset of bucket `idx` from `base`, clamped into `u32`: what range bounds need.
#[inline]
pub(crate) fn bound(base: i64, idx: i64) -> u32 {
    idx.saturating_sub(base).clamp(0, i64::from(u32::MAX)) as u32
}

/// Offset of bucket `idx` from `base`, if it is representable.
#[inline]
pub(crate) fn exact_offset(base: i64, idx: i64) -> Option<u32> {
    u32::try_from(idx.checked_sub(base)?)
        .ok()
        .filter(|&o| o < u32::MAX)
}

/// A bucket (offset, sum of weights) or, in slot 0, the header (used length, start of
/// run 1, start of run 2). The sum is kept as two `u32` halves of its bits so that the
/// slot is 12 bytes with 4-byte alignment: the warm tier is most of the ledger's memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    a: u32,
    b: u32,
    c: u32,
}

impl Slot {
    #[inline]
    fn bucket(offset: u32, sum: f64) -> Slot {
        let bits = sum.to_bits();
        Slot {
            a: offset,
            b: bits as u32,
            c: (bits >> 32) as u32,
        }
    }

    /// The bucket's offset from its tier's base.
    #[inline]
    pub fn offset(&self) -> i64 {
        i64::from(self.a)
    }

    #[inline]
    pub fn sum(&self) -> f64 {
        f64::from_bits(u64::from(self.b) | (u64::from(self.c) << 32))
    }

    #[inline]
    fn add(&mut self, w: f64) {
        *self = Slot::bucket(self.a, self.sum() + w);
    }
}

/// The buckets of one (entity, signal) pair across all its tiers (at most three).
#[derive(Debug, Clone)]
pub(crate) struct Warm {
    slots: Box<[Slot]>,
}

impl Warm {
    pub fn with_capacity(buckets: usize) -> Warm {
        let h = HEADER_SLOTS as u32;
        let header = Slot { a: h, b: h, c: h };
        Warm {
            slots: vec![header; HEADER_SLOTS + buckets.max(1)].into_boxed_slice(),
        }
    }

    /// Slot positions: start of runs 0, 1, 2 and the used length.
    #[inline]
    fn bounds(&self) -> [usize; 4] {
        let h = self.slots[0];
        let used = (h.a as usize).min(self.slots.len());
        let s2 = (h.c as usize).min(used);
        let s1 = (h.b as usize).min(s2);
        [HEADER_SLOTS, s1, s2, used]
    }

    #[inline]
    fn used(&self) -> usize {
        self.bounds()[3]
    }

    /// Slot positions of tier `code`'s run.
    #[inline]
    fn run_slots(&self, code: usize) -> Range<usize> {
        let b = self.bounds();
        b[code.min(2)]..b[code.min(2) + 1]
    }

    /// Tier `code`'s buckets, sorted by offset.
    #[inline]
    pub fn run(&self, code: usize) -> &[Slot] {
        &self.slots[self.run_slots(code)]
    }

    pub fn is_empty(&self) -> bool {
        self.used() == HEADER_SLOTS
    }

    /// Free slots before the next reallocation.
    #[inline]
    pub fn spare(&self) -> usize {
        self.slots.len() - self.used()
    }

    /// Tier `code`'s buckets with offsets in `[lo, hi)`.
    #[inline]
    pub fn range(&self, code: usize, lo: u32, hi: u32) -> &[Slot] {
        let run = self.run(code);
        let start = run.partition_point(|x| x.a < lo);
        let end = start + run[start..].partition_point(|x| x.a < hi);
        &run[start..end]
    }

    /// Sum of tier `code`'s buckets with offsets in `[lo, hi)`.
    pub fn sum(&self, code: usize, lo: u32, hi: u32) -> f64 {
        // Folding from +0.0 (not `Sum`, which starts at -0.0) so an empty window reads 0,
        // never -0 in SQL output.
        self.range(code, lo, hi)
            .iter()
            .map(Slot::sum)
            .fold(0.0, |a, b| a + b)
    }

    /// Adds `w` to tier `code`'s bucket at `offset`, creating it if needed. In-order
    /// events land in the run's last bucket, which is checked first.
    #[inline]
    pub fn add(&mut self, code: usize, offset: u32, w: f64) {
        let r = self.run_slots(code);
        let pos = match self.slots[r.clone()].last() {
            Some(last) if last.a == offset => {
                self.slots[r.end - 1].add(w);
                return;
            }
            Some(last) if last.a < offset => r.end,
            _ => r.start + self.slots[r.clone()].partition_point(|x| x.a < offset),
        };
        if pos < r.end && self.slots[pos].a == offset {
            self.slots[pos].add(w);
            return;
        }
        self.insert(code, pos, Slot::bucket(offset, w));
    }

    /// Inserts `slot` at position `pos` (inside or at the end of run `code`).
    fn insert(&mut self, code: usize, pos: usize, slot: Slot) {
        let used = self.used();
        if used == self.slots.len() {
            // Grow by half (at least two slots): amortised O(1), ≤ 50% slack.
            let cap = used + ((used - HEADER_SLOTS) / 2).max(2);
            self.resize(cap);
        }
        self.slots.copy_within(pos..used, pos + 1);
        self.slots[pos] = slot;
        self.move_bounds(code, 1);
    }

    /// Moves the used length and the starts of runs after `code` by `delta` slots.
    fn move_bounds(&mut self, code: usize, delta: isize) {
        let h = &mut self.slots[0];
        let shift = |v: u32| (v as isize + delta) as u32;
        h.a = shift(h.a);
        if code < 1 {
            h.b = shift(h.b);
        }
        if code < 2 {
            h.c = shift(h.c);
        }
    }

    /// Reallocates to `cap` slots (≥ used).
    fn resize(&mut self, cap: usize) {
        let used = self.used();
        let mut v = Vec::with_capacity(cap.max(used));
        v.extend_from_slice(&self.slots[..used]);
        v.resize(cap.max(used), Slot { a: 0, b: 0, c: 0 });
        self.slots = v.into_boxed_slice();
    }

    /// Removes the slots `r`, all inside run `code`, and gives memory back when most of
    /// it has become slack (not sooner, so that a pair that drops one bucket and adds
    /// one does not reallocate every time).
    fn remove(&mut self, code: usize, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        let used = self.used();
        self.slots.copy_within(r.end..used, r.start);
        self.move_bounds(code, -(r.len() as isize));
        if self.slots.len() > 4 * self.used() + 8 {
            self.shrink();
        }
    }

    /// Reallocates to the used length plus a quarter.
    pub fn shrink(&mut self) {
        let used = self.used();
        if self.slots.len() > used + used / 4 + 1 {
            self.resize(used + used / 4 + 1);
        }
    }

    /// Drops tier `code`'s buckets with offsets below `floor`.
    pub fn trim_below(&mut self, code: usize, floor: u32) {
        let r = self.run_slots(code);
        let cut = self.slots[r.clone()].partition_point(|x| x.a < floor);
        self.remove(code, r.start..r.start + cut);
    }

    /// Moves tier `code`'s buckets `delta` offsets down (the anchor moved forward),
    /// dropping those that would fall below 0: they are far outside retention, since
    /// the anchor trails the newest event by more than any retention.
    pub fn shift_down(&mut self, code: usize, delta: i64) {
        let Ok(d) = u32::try_from(delta) else {
            let r = self.run_slots(code);
            self.remove(code, r);
            return;
        };
        self.trim_below(code, d);
        let r = self.run_slots(code);
        for s in &mut self.slots[r] {
            s.a -= d;
        }
    }

    /// Appends a bucket to tier `code`, which must be the last non-empty run, above its
    /// existing offsets (decoding). Returns false when out of order.
    pub fn push_sorted(&mut self, code: usize, offset: u32, sum: f64) -> bool {
        let r = self.run_slots(code);
        if r.end != self.used() || self.slots[r.clone()].last().is_some_and(|b| b.a >= offset) {
            return false;
        }
        self.insert(code, r.end, Slot::bucket(offset, sum));
        true
    }

    /// Heap bytes of this pair's warm state.
    pub fn heap_bytes(&self) -> usize {
        alloc_bytes(std::mem::size_of_val::<[Slot]>(&self.slots))
    }
}

/// Records `w` at `ts` for a pair whose newest event moved from `old_last` to `last`
/// (`old_last == last` when it did not move; `old_last` is ignored for a fresh `warm`).
///
/// Buckets that fell out of retention are never read (reads clamp to the retention
/// floor) and are dropped lazily, when the pair's storage is about to grow: that keeps
/// the per-event work to one bucket update per tier.
#[inline]
pub(crate) fn apply(
    layout: &Layout,
    slot: &mut Option<Warm>,
    ts: i64,
    w: f64,
    old_last: i64,
    last: i64,
) {
    let anchor = anchor_day(last);
    if let Some(warm) = slot.as_mut() {
        if last > old_last {
            let days = anchor - anchor_day(old_last);
            if days > 0 {
                for (code, tier) in layout.tiers().iter().enumerate() {
                    warm.shift_down(code, days.saturating_mul(tier.per_day()));
                }
            }
        }
        if warm.spare() < layout.tiers().len() {
            trim(layout, warm, last, last);
        }
    }
    for (code, tier) in layout.tiers().iter().enumerate() {
        let idx = tier.index(ts);
        if idx <= tier.index(last) - tier.keep {
            continue;
        }
        let Some(offset) = exact_offset(anchor * tier.per_day(), idx) else {
            debug_assert!(false, "a retained bucket must have an offset");
            continue;
        };
        slot.get_or_insert_with(|| Warm::with_capacity(layout.tiers().len()))
            .add(code, offset, w);
    }
}

/// Drops the buckets outside retention of the newest event `last`, and those no read at
/// `at ≥ horizon` looks at.
fn trim(layout: &Layout, warm: &mut Warm, last: i64, horizon: i64) {
    for (code, tier) in layout.tiers().iter().enumerate() {
        let floor = tier
            .floor_index(last)
            .max(tier.index(horizon) - tier.keep + 1);
        warm.trim_below(code, bound(tier.base(last), floor));
    }
}

/// Drops the buckets that no read at `at ≥ horizon` looks at (see `Ledger::expire`) and
/// releases slack. Returns whether anything is left.
pub(crate) fn expire(layout: &Layout, warm: &mut Warm, last: i64, horizon: i64) -> bool {
    trim(layout, warm, last, horizon);
    warm.shrink();
    !warm.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        Window::parse(s).unwrap()
    }

    #[test]
    fn widths_follow_the_rule() {
        let m = MICROS_PER_MINUTE;
        let h = MICROS_PER_HOUR;
        let d = MICROS_PER_DAY;
        assert_eq!(bucket_width_micros(w("1m")), Some(m));
        assert_eq!(bucket_width_micros(w("2h")), Some(m));
        assert_eq!(bucket_width_micros(w("3h")), Some(h));
        assert_eq!(bucket_width_micros(w("150m")), Some(m));
        assert_eq!(bucket_width_micros(w("7d")), Some(h));
        assert_eq!(bucket_width_micros(w("8d")), Some(d));
        assert_eq!(bucket_width_micros(w("169h")), Some(h));
        assert_eq!(bucket_width_micros(w("10081m")), Some(m));
        assert_eq!(bucket_width_micros(w("90d")), Some(d));
        assert_eq!(bucket_width_micros(Window::All), None);
    }

    #[test]
    fn layout_groups_windows_by_width() {
        let l = Layout::new(&[w("1h"), w("24h"), w("7d"), Window::All]);
        assert_eq!(
            l.tiers(),
            &[
                Tier {
                    width_us: MICROS_PER_HOUR,
                    keep: 336
                },
                Tier {
                    width_us: MICROS_PER_MINUTE,
                    keep: 120
                }
            ]
        );
        assert_eq!(l.route(w("24h")), Some((0, 24)));
        assert_eq!(l.route(w("1h")), Some((1, 60)));
        // Undeclared windows are read from the tier of their width, if there is one.
        assert_eq!(l.route(w("2h")), Some((1, 120)));
        assert_eq!(l.route(w("8d")), None);
        assert!(Layout::new(&[Window::All]).is_empty());
    }

    #[test]
    fn slot_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 12);
    }

    #[test]
    fn runs_stay_sorted_and_bounded() {
        let mut warm = Warm::with_capacity(1);
        for (code, off) in [(0, 5u32), (1, 3), (0, 2), (1, 1), (0, 5), (0, 9), (2, 4)] {
            warm.add(code, off, 1.0);
        }
        let offs = |w: &Warm, c: usize| w.run(c).iter().map(|b| b.a).collect::<Vec<u32>>();
        assert_eq!(offs(&warm, 0), vec![2, 5, 9]);
        assert_eq!(offs(&warm, 1), vec![1, 3]);
        assert_eq!(offs(&warm, 2), vec![4]);
        assert_eq!(warm.range(0, 5, 6)[0].sum(), 2.0);
        assert_eq!(warm.sum(1, 0, 10), 2.0);
        warm.trim_below(0, 9);
        assert_eq!(offs(&warm, 0), vec![9]);
        assert_eq!(offs(&warm, 1), vec![1, 3]);
        warm.shift_down(1, 2);
        assert_eq!(offs(&warm, 1), vec![1]);
        warm.shift_down(0, i64::MAX);
        assert!(warm.run(0).is_empty());
        assert_eq!(offs(&warm, 2), vec![4]);
        assert!(!warm.push_sorted(1, 7, 1.0), "run 2 is not empty");
        assert!(warm.push_sorted(2, 7, 1.5));
        assert!(!warm.push_sorted(2, 7, 1.5));
        assert_eq!(warm.sum(2, 0, u32::MAX), 2.5);
        // Sums keep every bit.
        let mut w = Warm::with_capacity(1);
        w.add(0, 0, 0.1);
        w.add(0, 0, -1e-300);
        assert_eq!(w.run(0)[0].sum(), 0.1 + -1e-300);
    }

    #[test]
    fn pieces_read_each_event_from_the_finest_tier() {
        // Minute tier keeps 2 h, hour tier 14 days.
        let l = Layout::new(&[w("1h"), w("7d")]);
        let day = 1_000 * MICROS_PER_DAY;
        let last = day + 5 * MICROS_PER_HOUR + 17 * MICROS_PER_MINUTE + 3;
        let events = [
            (last, 1.0),
            (day + 3 * MICROS_PER_HOUR + 30 * MICROS_PER_MINUTE, 2.0), // within the minute tier
            (day + 3 * MICROS_PER_HOUR + 10 * MICROS_PER_MINUTE, 4.0), // same hour, before it
            (day - 3 * MICROS_PER_HOUR, 8.0),                          // hour tier only
            (day - 20 * MICROS_PER_DAY, 16.0),                         // retained nowhere
        ];
        let mut slot: Option<Warm> = None;
        let mut newest = i64::MIN;
        for (ts, wt) in events {
            let old = newest;
            newest = newest.max(ts);
            apply(&l, &mut slot, ts, wt, old, newest);
        }
        let warm = slot.unwrap();
        let mut pieces = Vec::new();
        visit_pieces(&l, &warm, last, Side::UpTo(last), |lo, hi, s| {
            pieces.push((lo, hi, s))
        });
        let minute_start = last - last.rem_euclid(MICROS_PER_MINUTE) - 119 * MICROS_PER_MINUTE;
        assert_eq!(
            pieces,
            vec![
                (
                    day + 210 * MICROS_PER_MINUTE,
                    day + 211 * MICROS_PER_MINUTE,
                    2.0
                ),
                (
                    day + 317 * MICROS_PER_MINUTE,
                    day + 318 * MICROS_PER_MINUTE,
                    1.0
                ),
                (day - 3 * MICROS_PER_HOUR, day - 2 * MICROS_PER_HOUR, 8.0),
                (day + 3 * MICROS_PER_HOUR, minute_start, 4.0),
            ]
        );
        let mut after = Vec::new();
        visit_pieces(
            &l,
            &warm,
            last,
            Side::After(day + 80 * MICROS_PER_MINUTE),
            |lo, _, s| after.push((lo, s)),
        );
        assert_eq!(after.iter().map(|p| p.1).sum::<f64>(), 7.0);
    }
}
