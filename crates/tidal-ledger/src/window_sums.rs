//! Window sums kept current at ingest: for each finite window a signal declares, one
//! dense `f64` per entity ordinal holding exactly what the warm tier's bucket read gives
//! for that window at the signal's newest bucket.
//!
//! Reading a window from the warm tier costs a pointer chase and a binary search per
//! entity (100–300 ns when the pair's buckets are not in cache), which across a whole
//! catalogue was most of a ranking query's time. With these sums, a read at the newest
//! bucket is one load from a dense array; a read a little later patches only the
//! entities whose oldest in-window bucket has left the window.
//!
//! # Invariants (for each window `W` of `n` buckets of tier `code`)
//!
//! * `head` is the bucket of the newest event of the signal (`i64::MIN` before any).
//! * Ordinal `i`'s cell (kept by the signal, all windows of an ordinal side by side):
//!   `sum` is bit-for-bit the warm read of buckets `(head − n, head]` (recomputed by
//!   that same fold whenever it changes, never accumulated, so no rounding drift and no
//!   difference from the per-entity path; 0 for an ordinal without events, so a gather
//!   needs no activity check); `prefix` is the same fold without the newest bucket, so
//!   an in-order event into that bucket sets `sum = prefix + bucket`; `oldest` is the
//!   oldest bucket in the window holding weight of `i`, or [`NO_BUCKET`].
//! * `members` holds one list per bucket `b` in `(head − n, head]`, oldest first, of
//!   (possibly repeated) ordinals with weight in `b`: the ordinals to recompute when `b`
//!   leaves the window.
//!
//! The sums are derived state: not checkpointed, rebuilt from the warm tier on decode.

use std::collections::VecDeque;

use crate::memory::{alloc_bytes, vec_bytes};

/// `oldest` of an ordinal with no weight in the window.
pub(crate) const NO_BUCKET: i64 = i64::MAX;

#[derive(Debug, Clone)]
pub(crate) struct WindowSums {
    /// Tier serving the window.
    pub code: usize,
    /// Window length in that tier's buckets.
    pub n: i64,
    pub head: i64,
    members: VecDeque<Vec<u32>>,
}

/// One ordinal's state in one window (see the invariants above).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SumCell {
    pub sum: f64,
    pub oldest: i64,
    pub prefix: f64,
}

impl SumCell {
    pub const EMPTY: SumCell = SumCell {
        sum: 0.0,
        oldest: NO_BUCKET,
        prefix: 0.0,
    };
}

/// How a window read at bucket `a` is served by the sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SumsRead {
    /// `a == head`: the sums as they are.
    AtHead,
    /// `head < a < head + n`: the sums, except for ordinals with weight in a bucket at or
    /// before `cut = a − n`, which are read from the warm tier.
    After { cut: i64 },
    /// `a ≥ head + n`: every bucket with weight is before the window.
    Empty,
}

impl WindowSums {
    pub fn new(code: usize, n: i64) -> WindowSums {
        WindowSums {
            code,
            n,
            head: i64::MIN,
            members: VecDeque::new(),
        }
    }

    /// How a read of buckets `(a − n, a]` can use the sums; `None` when it cannot
    /// (`a` before the head: the window would need buckets that already left).
    #[inline]
    pub fn read_at(&self, a: i64) -> Option<SumsRead> {
        if self.head == i64::MIN || a.saturating_sub(self.n) >= self.head {
            Some(SumsRead::Empty)
        } else if a == self.head {
            Some(SumsRead::AtHead)
        } else if a > self.head {
            Some(SumsRead::After { cut: a - self.n })
        } else {
            None
        }
    }

    /// Moves the head to `to` (later than it) and returns the ordinals listed in the
    /// buckets that leave the window.
    pub fn advance(&mut self, to: i64) -> Vec<u32> {
        debug_assert!(to > self.head);
        let n = usize::try_from(self.n).unwrap_or(usize::MAX);
        let shift = usize::try_from(to.saturating_sub(self.head)).unwrap_or(usize::MAX);
        let gone = shift.min(self.members.len());
        let leaving: Vec<u32> = self.members.drain(..gone).flatten().collect();
        self.head = to;
        self.members.resize_with(n, Vec::new);
        leaving
    }

    /// Sets the head without any member (rebuilding).
    pub fn reset(&mut self, head: i64) {
        self.head = head;
        self.members.clear();
        if head != i64::MIN {
            self.members
                .resize_with(usize::try_from(self.n).unwrap_or(0), Vec::new);
        }
    }

    /// Records that ordinal `i` has weight in bucket `b`, which is in the window.
    #[inline]
    pub fn add_member(&mut self, b: i64, i: u32) {
        let j = b - (self.head - self.n + 1);
        if let Some(list) = usize::try_from(j)
            .ok()
            .and_then(|j| self.members.get_mut(j))
        {
            list.push(i);
        } else {
            debug_assert!(false, "bucket {b} outside the window at {}", self.head);
        }
    }

    /// The ordinals listed in bucket `b`.
    #[cfg(test)]
    pub fn members_of(&self, b: i64) -> &[u32] {
        usize::try_from(b - (self.head - self.n + 1))
            .ok()
            .and_then(|j| self.members.get(j))
            .map_or(&[], Vec::as_slice)
    }

    /// Renumbers the listed ordinals (`remap[old]`, `u32::MAX` for dropped ones).
    pub fn remap_members(&mut self, remap: &[u32]) {
        for list in &mut self.members {
            list.retain_mut(|o| match remap.get(*o as usize) {
                Some(&n) if n != u32::MAX => {
                    *o = n;
                    true
                }
                _ => false,
            });
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.members.iter().map(vec_bytes).sum::<usize>()
            + alloc_bytes(self.members.capacity() * std::mem::size_of::<Vec<u32>>())
    }
}
