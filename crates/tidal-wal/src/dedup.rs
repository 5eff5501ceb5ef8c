//! Exact-duplicate suppression for signal events.
//!
//! An event's identity is the whole event — signal, entity, user (and whether there is one),
//! weight bits and ts — kept as a 40-byte [`EventKey`] and compared field by field, so two
//! different events are never taken for one another. A seeded folded-multiply hash of the
//! key only decides where to look: a hash collision costs a comparison, never an event.
//!
//! Each shard keeps the events it accepted in a ring in acceptance order (arrivals never
//! decrease). The ring is also the expiry queue: entries leave from the front once they fall
//! out of the window, or, to bound their number, oldest first. An open-addressing index of
//! 8-byte slots — a 32-bit hash tag and the 32-bit sequence number of an entry in the ring —
//! finds the newest entry of a key. A key accepted again (after its window ran out) gets a
//! new entry and its slot moves to it. Entries leave without touching the index: a slot
//! whose entry has left is dead, never matches, and is reused by a later key or swept out
//! when the index fills up. So the writer's cost per event is about one random memory
//! access (the slot, looked up and then filled), and the loads of a run of events are
//! issued together so their cache misses overlap.
//!
//! A large set is split into [`DEDUP_SHARDS`] shards by hash, each with its own ring, index
//! and an equal share of the bound (hashes are uniform, so "oldest of its shard" is close to
//! "oldest overall"). Shards keep the writer's index-growth pauses short and let recovery
//! rebuild the set on several threads.
//!
//! The hash seeds are drawn at random for each set: nothing hashed outlives the process (the
//! set is rebuilt from the log at every open), and inputs cannot be prepared in advance to
//! collide.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;

use tidal_core::{SignalEvent, Timestamp};

use crate::Op;

/// Shards of a large dedup set.
const DEDUP_SHARDS: usize = 16;
/// A set bounded below `DEDUP_SHARDS` times this many entries stays in one shard.
const DEDUP_SHARD_ENTRIES_MIN: usize = 16_384;
/// Fewest events per thread worth a thread of their own when rebuilding.
const REBUILD_THREAD_EVENTS_MIN: usize = 100_000;
/// Ring sequence numbers are 32-bit: a shard holds fewer entries than this (by far more
/// than fits in memory at 48 bytes an entry).
const SHARD_ENTRIES_LIMIT: usize = 1 << 31;
/// Fewest slots of a non-empty index.
const INDEX_SLOTS_MIN: usize = 16;
/// Largest key buffer kept for reuse between transactions.
const SPARE_KEYS_MAX: usize = 1 << 16;
/// Index slots checked for dead ones per new key: a pass over the index every quarter of its
/// size in new keys keeps dead slots to about an eighth of it (they die evenly spread).
const SWEEP_STEP: usize = 4;
/// Entries added to a shard between two full sweeps of its index at most; far fewer than
/// the 2^32 sequence numbers (minus [`SHARD_ENTRIES_LIMIT`]) it takes to reuse a dead
/// slot's.
const SWEEP_PUSHES_MAX: usize = 1 << 30;
/// Events whose index slots are loaded together before any of them is looked at, so the
/// cache misses overlap instead of following one another.
const LOAD_AHEAD: usize = 32;

/// The exact identity of a signal event: every field, the weight by its bits (so -0.0 and
/// 0.0 differ). 40 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EventKey {
    entity: u64,
    /// 0 without a user; `has_user` tells that apart from user 0.
    user: u64,
    weight_bits: u64,
    ts: i64,
    signal: u32,
    has_user: bool,
}

const _: () = assert!(std::mem::size_of::<EventKey>() == 40);

impl EventKey {
    pub(crate) fn new(ev: &SignalEvent) -> EventKey {
        EventKey {
            entity: ev.entity.0,
            user: ev.user.map_or(0, |u| u.0),
            weight_bits: ev.weight.to_bits(),
            ts: ev.ts.0,
            signal: ev.signal.0,
            has_user: ev.user.is_some(),
        }
    }
}

/// An accepted event's key and its hash, handed from [`Dedup::filter`] to
/// [`Dedup::insert`] so it is hashed once. Only meaningful to the set that made it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HashedKey {
    key: EventKey,
    hash: u64,
}

/// The 128-bit product of `a` and `b`, its halves folded together with xor.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A fast, seeded, non-cryptographic hash of an [`EventKey`] (folded multiplies over its
/// words, as in foldhash).
#[derive(Debug, Clone, Copy)]
struct KeyHasher {
    seeds: [u64; 4],
    /// Applied to every hash: all ones, except in tests that force collisions.
    mask: u64,
}

impl KeyHasher {
    fn random() -> KeyHasher {
        let state = RandomState::new();
        KeyHasher {
            seeds: std::array::from_fn(|i| state.hash_one(i)),
            mask: u64::MAX,
        }
    }

    #[inline]
    fn hash(&self, k: &EventKey) -> u64 {
        let [s0, s1, s2, s3] = self.seeds;
        let a = fold_mul(k.entity ^ s0, k.user ^ s1);
        let b = fold_mul(k.weight_bits ^ s2, k.ts as u64 ^ s3);
        let c = u64::from(k.signal) | u64::from(k.has_user) << 32;
        // Odd constant from the golden ratio, as in Fibonacci hashing.
        fold_mul(a ^ c, b ^ 0x9E37_79B9_7F4A_7C15) & self.mask
    }
}

/// The index tag of a hash: its low 32 bits, never 0 (0 marks an empty slot).
#[inline]
fn tag(hash: u64) -> u32 {
    (hash as u32).max(1)
}

/// The shard of a hash in a set split `shards` ways, from the bits the tag does not use.
#[inline]
fn shard_of(hash: u64, shards: usize) -> usize {
    (((hash >> 32) * shards as u64) >> 32) as usize
}

/// An open-addressing (linear probing) table of 32-bit positions by 32-bit tag; the keys
/// live elsewhere and are compared through a closure. A slot is 0 when empty, otherwise
/// `pos << 32 | tag`. A tag's home slot is its low bits, so slots can be moved without the
/// keys. A slot may be *dead* (its position no longer means anything, as the caller's
/// closures tell): it still takes part in probing, but `find` never matches it and `insert`
/// takes it over.
#[derive(Debug, Default)]
struct Index {
    /// A power of two in length, or empty.
    slots: Vec<u64>,
    /// Slots in use, dead or alive.
    used: usize,
    /// Where [`Index::sweep_step`] goes on.
    cursor: usize,
}

impl Index {
    /// Slots for `n` entries at most half full.
    fn slots_for(n: usize) -> usize {
        (n * 2).next_power_of_two().max(INDEX_SLOTS_MIN)
    }

    /// Whether one more slot can be taken without passing the maximum load of 3/4.
    #[inline]
    fn has_room(&self) -> bool {
        (self.used + 1) * 4 <= self.slots.len() * 3
    }

    /// The slot holding `tag` whose position satisfies `is_key` (never a dead one).
    #[inline]
    fn find(&self, tag: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = tag as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s as u32 == tag && is_key((s >> 32) as u32) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Reads the home slot of `tag` (so that it is in cache when needed); 0 if none.
    #[inline]
    fn touch(&self, tag: u32) -> u64 {
        let mask = self.slots.len().wrapping_sub(1);
        self.slots.get(tag as usize & mask).copied().unwrap_or(0)
    }

    #[inline]
    fn pos(&self, slot: usize) -> u32 {
        (self.slots[slot] >> 32) as u32
    }

    #[inline]
    fn set_pos(&mut self, slot: usize, pos: u32) {
        let s = &mut self.slots[slot];
        *s = u64::from(pos) << 32 | (*s & u64::from(u32::MAX));
    }

    /// Adds `pos` under `tag` in the first empty or dead slot of its probe sequence. The
    /// caller knows the key has no live slot, and that there is room.
    #[inline]
    fn insert(&mut self, tag: u32, pos: u32, is_dead: impl Fn(u32) -> bool) {
        debug_assert!(self.has_room());
        let mask = self.slots.len() - 1;
        let mut i = tag as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                self.used += 1;
                break;
            }
            if is_dead((s >> 32) as u32) {
                break;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = u64::from(pos) << 32 | u64::from(tag);
    }

    /// Adds `pos` under `tag`, growing if needed, in a table without dead slots.
    #[inline]
    fn push(&mut self, tag: u32, pos: u32) {
        if !self.has_room() {
            self.resize(Index::slots_for(self.used + 1), |_| true);
        }
        self.insert(tag, pos, |_| false);
    }

    /// Empties the slot, shifting back the entries probed past it.
    fn remove(&mut self, slot: usize) {
        let mask = self.slots.len() - 1;
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let home = s as u32 as usize & mask;
            // It may fill the hole if the hole lies on its probe path from home to `j`.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.used -= 1;
    }

    /// Removes, in place, every slot whose position fails `keep`.
    fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        // Starting after an empty slot, no run of slots wraps around the sweep; removing
        // only shifts slots not yet swept back to the current one.
        let Some(start) = self.slots.iter().position(|&s| s == 0) else {
            return;
        };
        let mask = self.slots.len() - 1;
        let mut i = start;
        for _ in 0..self.slots.len() {
            i = (i + 1) & mask;
            while self.slots[i] != 0 && !keep(self.pos(i)) {
                self.remove(i);
            }
        }
    }

    /// Checks the next `n` slots from the cursor (going round), removing those whose
    /// position fails `keep`.
    #[inline]
    fn sweep_step(&mut self, n: usize, keep: impl Fn(u32) -> bool) {
        let mask = self.slots.len().wrapping_sub(1);
        for _ in 0..n.min(self.slots.len()) {
            let i = self.cursor & mask;
            while self.slots[i] != 0 && !keep(self.pos(i)) {
                self.remove(i);
            }
            self.cursor = i + 1;
        }
    }

    /// Makes room for `additional` more slots without passing the maximum load.
    fn reserve(&mut self, additional: usize) {
        let want = Index::slots_for(self.used + additional);
        if want > self.slots.len() {
            self.resize(want, |_| true);
        }
    }

    /// Empties the table, sized for `n` entries (a much larger table is let go).
    fn reset(&mut self, n: usize) {
        let want = Index::slots_for(n);
        if self.slots.len() < want || self.slots.len() > want * 4 {
            self.slots = vec![0; want];
        } else {
            self.slots.fill(0);
        }
        self.used = 0;
    }

    /// Moves the slots whose positions satisfy `keep` to a table of `slots` slots.
    fn resize(&mut self, slots: usize, keep: impl Fn(u32) -> bool) {
        debug_assert!(slots.is_power_of_two());
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        let mask = slots - 1;
        self.used = 0;
        for s in old {
            if s == 0 || !keep((s >> 32) as u32) {
                continue;
            }
            let mut i = s as u32 as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
            self.used += 1;
        }
        debug_assert!(self.used * 2 <= slots);
    }
}

/// An accepted event in a shard's ring. 48 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key: EventKey,
    /// Arrival of the transaction that accepted it.
    arrival: i64,
}

/// One shard: the ring of accepted events and the index of the newest entry of each key.
///
/// Entries leave the ring from the front without touching the index: a slot whose sequence
/// number is no longer in the ring is dead. It is taken over by a later insert, or removed
/// by the sweep that goes round the index [`SWEEP_STEP`] slots per new key (a run of slots
/// after each transaction). The index is
/// swept whole only when it fills up anyway (then it may grow) and at least every
/// [`SWEEP_PUSHES_MAX`] entries, long before sequence numbers wrap around to a dead slot.
#[derive(Debug, Default)]
struct Shard {
    /// Accepted events, oldest first; `ring[i]` has sequence number `front + i` (mod 2^32).
    ring: VecDeque<Entry>,
    /// Sequence number of `ring[0]`.
    front: u32,
    /// Key → sequence number of its newest entry.
    index: Index,
    /// Entries added since the last full sweep of the index.
    since_sweep: usize,
    /// Slots the sweep owes for keys added since [`Shard::settle`].
    sweep_owed: usize,
}

impl Shard {
    /// The entry with sequence number `seq`, if it is still in the ring.
    #[inline]
    fn entry(&self, seq: u32) -> Option<&Entry> {
        self.ring.get(seq.wrapping_sub(self.front) as usize)
    }

    /// The index slot of `key`.
    #[inline]
    fn find(&self, key: &EventKey, hash: u64) -> Option<usize> {
        self.index.find(tag(hash), |seq| {
            self.entry(seq).is_some_and(|e| e.key == *key)
        })
    }

    /// When `key` was last accepted, if it is remembered.
    #[inline]
    fn arrival(&self, key: &EventKey, hash: u64) -> Option<i64> {
        let slot = self.find(key, hash)?;
        self.entry(self.index.pos(slot)).map(|e| e.arrival)
    }

    /// Starts loading the index slot of `hash`; see [`LOAD_AHEAD`].
    #[inline]
    fn touch(&self, hash: u64) -> u64 {
        self.index.touch(tag(hash))
    }

    /// Adds an acceptance at `arrival` (never less than the last). The ring may then be
    /// over the bound until [`Shard::settle`].
    fn remember(&mut self, key: EventKey, hash: u64, arrival: i64) {
        debug_assert!(self.ring.back().is_none_or(|e| e.arrival <= arrival));
        if self.since_sweep >= SWEEP_PUSHES_MAX {
            self.sweep();
        }
        let seq = self.front.wrapping_add(self.ring.len() as u32);
        match self.find(&key, hash) {
            Some(slot) => self.index.set_pos(slot, seq),
            None => {
                if !self.index.has_room() {
                    self.sweep();
                }
                let (front, len) = (self.front, self.ring.len());
                self.index
                    .insert(tag(hash), seq, |s| s.wrapping_sub(front) as usize >= len);
                self.sweep_owed += SWEEP_STEP;
            }
        }
        self.ring.push_back(Entry { key, arrival });
        self.since_sweep += 1;
    }

    /// Removes the dead slots, then grows the index if it is still half full, so that at
    /// least a quarter of it is free for new keys until the next sweep.
    fn sweep(&mut self) {
        let (front, len) = (self.front, self.ring.len());
        let live = move |s: u32| (s.wrapping_sub(front) as usize) < len;
        self.index.retain(live);
        if self.index.used * 2 >= self.index.slots.len() {
            self.index
                .resize(Index::slots_for(self.index.used + 1), live);
        }
        self.since_sweep = 0;
    }

    /// Forgets the `n` oldest entries.
    fn pop_front(&mut self, n: usize) {
        let n = n.min(self.ring.len());
        self.ring.drain(..n);
        self.front = self.front.wrapping_add(n as u32);
    }

    /// After a run of [`Shard::remember`]: enforces the memory bound, forgetting the oldest
    /// acceptances first, and sweeps on. Trimming after a run leaves the same set as
    /// trimming after each would: only the oldest entries go, and a key is forgotten only
    /// with its newest entry. Sweeping a run at a time reads the index sequentially.
    fn settle(&mut self, entries_max: usize) {
        self.pop_front(self.ring.len().saturating_sub(entries_max));
        let (front, len) = (self.front, self.ring.len());
        let owed = std::mem::take(&mut self.sweep_owed);
        self.index
            .sweep_step(owed, |s| (s.wrapping_sub(front) as usize) < len);
    }

    fn expire(&mut self, now: i64, window_micros: i64) {
        // Arrivals never decrease along the ring.
        let n = self
            .ring
            .partition_point(|e| now.saturating_sub(e.arrival) >= window_micros);
        self.pop_front(n);
    }

    /// Number of remembered events.
    #[cfg(test)]
    fn len(&self) -> usize {
        (0..self.index.slots.len())
            .filter(|&i| self.index.slots[i] != 0 && self.entry(self.index.pos(i)).is_some())
            .count()
    }
}

/// Result of filtering one transaction: the events to write and the keys to remember once
/// the transaction is accepted.
#[derive(Debug, Default)]
pub(crate) struct Filtered {
    pub ops: Vec<Op>,
    pub keys: Vec<HashedKey>,
    pub accepted: usize,
    pub duplicate: usize,
}

/// The set of recently accepted events.
#[derive(Debug)]
pub(crate) struct Dedup {
    window_micros: i64,
    hasher: KeyHasher,
    shards: Vec<Shard>,
    /// The bound on each shard's ring.
    shard_entries_max: usize,
    /// Positions in the key list of the transaction being filtered, to catch duplicates
    /// inside it.
    txn: Index,
    /// A key buffer given back by [`Dedup::insert`], for the next [`Dedup::filter`].
    spare: Vec<HashedKey>,
}

impl Dedup {
    pub(crate) fn new(window_micros: i64, entries_max: usize) -> Dedup {
        debug_assert!(window_micros >= 0);
        let entries_max = entries_max.max(1);
        let n = if entries_max >= DEDUP_SHARDS * DEDUP_SHARD_ENTRIES_MIN {
            DEDUP_SHARDS
        } else {
            1
        };
        Dedup {
            window_micros,
            hasher: KeyHasher::random(),
            shards: (0..n).map(|_| Shard::default()).collect(),
            shard_entries_max: entries_max.div_ceil(n).min(SHARD_ENTRIES_LIMIT),
            txn: Index::default(),
            spare: Vec::new(),
        }
    }

    /// Number of remembered events.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    /// Forgets every event accepted `window` or longer before `now`.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        for shard in &mut self.shards {
            shard.expire(now.0, self.window_micros);
        }
    }

    /// Drops from `ops` every event already accepted within the window before `now` or
    /// repeated earlier in `ops`. Signal ops left without events are removed. Nothing is
    /// remembered until [`Dedup::insert`] is called with the returned keys.
    pub(crate) fn filter(&mut self, mut ops: Vec<Op>, now: Timestamp) -> Filtered {
        let events: usize = ops
            .iter()
            .map(|op| match op {
                Op::Signals(events) => events.len(),
                _ => 0,
            })
            .sum();
        let mut keys = std::mem::take(&mut self.spare);
        keys.clear();
        keys.reserve(events);
        self.txn.reset(events);
        let (hasher, shards, txn) = (&self.hasher, &self.shards, &mut self.txn);
        let window_micros = self.window_micros;
        let mut duplicate = 0;
        let mut hashes = [0u64; LOAD_AHEAD];
        // In place: the request's vectors become the filtered ones.
        ops.retain_mut(|op| {
            let Op::Signals(events) = op else {
                return true;
            };
            let mut kept = 0;
            for start in (0..events.len()).step_by(LOAD_AHEAD) {
                let chunk = &events[start..(start + LOAD_AHEAD).min(events.len())];
                for (h, ev) in hashes.iter_mut().zip(chunk) {
                    *h = hasher.hash(&EventKey::new(ev));
                }
                // A short loop of independent loads: many cache misses in flight at once.
                let warm = hashes[..chunk.len()]
                    .iter()
                    .fold(0, |w, &h| w ^ shards[shard_of(h, shards.len())].touch(h));
                std::hint::black_box(warm);
                for (i, &hash) in hashes[..chunk.len()].iter().enumerate() {
                    let ev = events[start + i];
                    let key = EventKey::new(&ev);
                    let recent = shards[shard_of(hash, shards.len())]
                        .arrival(&key, hash)
                        .is_some_and(|a| now.0.saturating_sub(a) < window_micros);
                    // A position past u32::MAX (a transaction far beyond WAL_TXN_BYTES_MAX)
                    // would wrap and only miss duplicates: keys are compared exactly.
                    if recent
                        || txn
                            .find(tag(hash), |p| keys[p as usize].key == key)
                            .is_some()
                    {
                        duplicate += 1;
                        continue;
                    }
                    txn.push(tag(hash), keys.len() as u32);
                    keys.push(HashedKey { key, hash });
                    events[kept] = ev;
                    kept += 1;
                }
            }
            events.truncate(kept);
            kept > 0
        });
        Filtered {
            accepted: keys.len(),
            duplicate,
            ops,
            keys,
        }
    }

    /// Remembers keys returned by [`Dedup::filter`], accepted at `arrival` (which never
    /// decreases between calls), and keeps the buffer for reuse.
    pub(crate) fn insert(&mut self, keys: Vec<HashedKey>, arrival: Timestamp) {
        let n = self.shards.len();
        for chunk in keys.chunks(LOAD_AHEAD) {
            let warm = chunk
                .iter()
                .fold(0, |w, k| w ^ self.shards[shard_of(k.hash, n)].touch(k.hash));
            std::hint::black_box(warm);
            for k in chunk {
                self.shards[shard_of(k.hash, n)].remember(k.key, k.hash, arrival.0);
            }
        }
        for shard in &mut self.shards {
            shard.settle(self.shard_entries_max);
        }
        if keys.capacity() <= SPARE_KEYS_MAX && keys.capacity() > self.spare.capacity() {
            self.spare = keys;
        }
    }

    /// Rebuilds the set from transactions read back from the log, oldest first, keeping
    /// what is still within the window at `horizon`. Large sets are hashed and inserted
    /// on several threads (each thread owns whole shards, so no locking is needed).
    pub(crate) fn rebuild(
        window_micros: i64,
        entries_max: usize,
        txns: &[(Timestamp, Vec<SignalEvent>)],
        horizon: Timestamp,
    ) -> io::Result<Dedup> {
        let mut dedup = Dedup::new(window_micros, entries_max);
        // Transactions already out of the window at `horizon` need no work at all.
        let skip = txns.partition_point(|(a, _)| horizon.0.saturating_sub(a.0) >= window_micros);
        let txns = &txns[skip..];
        let events: usize = txns.iter().map(|(_, e)| e.len()).sum();
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = parallelism
            .min(dedup.shards.len())
            .min(events / REBUILD_THREAD_EVENTS_MIN)
            .max(1);
        let shard_reserve = (events / dedup.shards.len()).min(dedup.shard_entries_max);
        for shard in &mut dedup.shards {
            shard.ring.reserve(shard_reserve);
            shard.index.reserve(shard_reserve);
        }
        let hasher = dedup.hasher;
        // Hash every event (split by transaction ranges), keeping log order.
        let ranges: Vec<&[(Timestamp, Vec<SignalEvent>)]> =
            txns.chunks(txns.len().div_ceil(threads).max(1)).collect();
        let hashes: Vec<Vec<u64>> = run_parallel(ranges, |range| {
            range
                .iter()
                .flat_map(|(_, events)| events.iter().map(|ev| hasher.hash(&EventKey::new(ev))))
                .collect()
        })?;
        // Insert into the shards, each thread owning a contiguous run of them.
        let n = dedup.shards.len();
        let per_thread = n.div_ceil(threads);
        let shard_entries_max = dedup.shard_entries_max;
        let groups: Vec<(usize, &mut [Shard])> = dedup
            .shards
            .chunks_mut(per_thread)
            .enumerate()
            .map(|(i, g)| (i * per_thread, g))
            .collect();
        run_parallel(groups, |(first, group)| {
            let mine = first..first + group.len();
            let events = txns
                .iter()
                .flat_map(|(arrival, events)| events.iter().map(move |ev| (arrival.0, ev)));
            let mut ours = events
                .zip(hashes.iter().flatten())
                .filter_map(|((arrival, ev), &hash)| {
                    let shard = shard_of(hash, n);
                    mine.contains(&shard)
                        .then(|| (shard - first, arrival, ev, hash))
                })
                .peekable();
            let mut batch = Vec::with_capacity(LOAD_AHEAD);
            while ours.peek().is_some() {
                batch.clear();
                batch.extend(ours.by_ref().take(LOAD_AHEAD));
                let warm = batch
                    .iter()
                    .fold(0, |w, &(i, _, _, hash)| w ^ group[i].touch(hash));
                std::hint::black_box(warm);
                for &(i, arrival, ev, hash) in &batch {
                    group[i].remember(EventKey::new(ev), hash, arrival);
                }
            }
            // Recovery hands over at most `entries_max` events (and one transaction), so
            // the rings overshoot the bound by little before this.
            for shard in group.iter_mut() {
                shard.settle(shard_entries_max);
            }
        })?;
        dedup.expire(horizon);
        Ok(dedup)
    }
}

/// Runs `f` on every item — on the calling thread for a single item, otherwise on one
/// scoped thread per item — and returns the results in order.
fn run_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> io::Result<Vec<R>> {
    if items.len() <= 1 {
        return Ok(items.into_iter().map(f).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles = items
            .into_iter()
            .map(|item| {
                std::thread::Builder::new()
                    .name("tidal-wal-dedup".to_string())
                    .spawn_scoped(scope, move || f(item))
            })
            .collect::<io::Result<Vec<_>>>()?;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| io::Error::other("a dedup rebuild thread panicked"))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use tidal_core::{EntityId, EntityKind, SignalId};

    use super::*;

    fn ev(entity: u64, weight: f64, ts: i64) -> SignalEvent {
        SignalEvent {
            signal: SignalId(1),
            entity: EntityId(entity),
            user: Some(EntityId(9)),
            weight,
            ts: Timestamp(ts),
        }
    }

    impl Dedup {
        /// The key `filter` would hand out for `ev`.
        fn hashed(&self, ev: &SignalEvent) -> HashedKey {
            let key = EventKey::new(ev);
            HashedKey {
                key,
                hash: self.hasher.hash(&key),
            }
        }

        /// Narrows every hash to `mask`, forcing collisions (only on an empty set).
        fn with_hash_mask(mut self, mask: u64) -> Dedup {
            assert_eq!(self.len(), 0);
            self.hasher.mask = mask;
            self
        }

        /// Filters one transaction of `events` and, if `accept`, remembers what it kept.
        /// Returns which events were kept.
        fn offer(&mut self, events: &[SignalEvent], now: i64, accept: bool) -> Vec<bool> {
            let f = self.filter(vec![Op::Signals(events.to_vec())], Timestamp(now));
            let kept: Vec<SignalEvent> = match f.ops.as_slice() {
                [Op::Signals(kept)] => kept.clone(),
                [] => Vec::new(),
                other => panic!("unexpected ops {other:?}"),
            };
            assert_eq!(
                (f.accepted, f.accepted + f.duplicate),
                (kept.len(), events.len())
            );
            if accept {
                self.insert(f.keys, Timestamp(now));
            }
            // Kept events are a subsequence of `events`, in order.
            let mut rest = kept.iter().peekable();
            events
                .iter()
                .map(|e| {
                    let hit = rest
                        .peek()
                        .is_some_and(|k| EventKey::new(k) == EventKey::new(e));
                    if hit {
                        rest.next();
                    }
                    hit
                })
                .collect()
        }
    }

    impl Shard {
        /// Remembered key → arrival; checks that no key has two live slots.
        fn live(&self) -> HashMap<EventKey, i64> {
            let live: HashMap<EventKey, i64> = self
                .index
                .slots
                .iter()
                .filter(|&&s| s != 0)
                .filter_map(|&s| self.entry((s >> 32) as u32))
                .map(|e| (e.key, e.arrival))
                .collect();
            assert_eq!(live.len(), self.len());
            live
        }
    }

    #[test]
    fn key_covers_every_field() {
        let base = ev(1, 1.0, 5);
        let variants = [
            SignalEvent {
                signal: SignalId(2),
                ..base
            },
            SignalEvent {
                entity: EntityId(2),
                ..base
            },
            SignalEvent { user: None, ..base },
            SignalEvent {
                user: Some(EntityId(0)),
                ..base
            },
            SignalEvent {
                weight: 1.0000001,
                ..base
            },
            SignalEvent {
                weight: -0.0,
                ..ev(1, 0.0, 5)
            },
            SignalEvent {
                ts: Timestamp(6),
                ..base
            },
        ];
        for v in variants {
            assert_ne!(EventKey::new(&v), EventKey::new(&base), "{v:?}");
        }
        assert_eq!(EventKey::new(&ev(1, 1.0, 5)), EventKey::new(&base));
        assert_ne!(
            EventKey::new(&ev(1, 0.0, 5)),
            EventKey::new(&ev(1, -0.0, 5))
        );
        let no_user = SignalEvent { user: None, ..base };
        let user_0 = SignalEvent {
            user: Some(EntityId(0)),
            ..base
        };
        assert_ne!(EventKey::new(&no_user), EventKey::new(&user_0));
    }

    #[test]
    fn filters_within_and_across_transactions() {
        let mut d = Dedup::new(60, 100);
        let ops = vec![
            Op::Signals(vec![ev(1, 1.0, 5), ev(1, 1.0, 5), ev(2, 1.0, 5)]),
            Op::Delete {
                kind: EntityKind::Item,
                id: EntityId(3),
            },
            Op::Signals(vec![ev(2, 1.0, 5)]),
        ];
        let f = d.filter(ops, Timestamp(0));
        assert_eq!((f.accepted, f.duplicate), (2, 2));
        assert_eq!(f.ops.len(), 2, "the emptied Signals op is removed");
        d.insert(f.keys, Timestamp(0));
        let f = d.filter(
            vec![Op::Signals(vec![ev(1, 1.0, 5), ev(1, 2.0, 5)])],
            Timestamp(59),
        );
        assert_eq!((f.accepted, f.duplicate), (1, 1));
        d.insert(f.keys, Timestamp(59));
        d.expire(Timestamp(60));
        assert_eq!(
            d.len(),
            1,
            "only the event accepted at 59 is still within the window"
        );
        let f = d.filter(vec![Op::Signals(vec![ev(1, 1.0, 5)])], Timestamp(60));
        assert_eq!((f.accepted, f.duplicate), (1, 0));
    }

    #[test]
    fn bounded_by_entries_max() {
        let mut d = Dedup::new(1_000, 3);
        for i in 0..5 {
            let f = d.filter(vec![Op::Signals(vec![ev(i, 1.0, 0)])], Timestamp(i as i64));
            d.insert(f.keys, Timestamp(i as i64));
        }
        assert_eq!(d.len(), 3);
        // The two oldest were forgotten early; the newest three are still suppressed.
        let all: Vec<SignalEvent> = (0..5).map(|i| ev(i, 1.0, 0)).collect();
        let f = d.filter(vec![Op::Signals(all)], Timestamp(10));
        assert_eq!((f.accepted, f.duplicate), (2, 3));
    }

    #[test]
    fn reaccepted_key_is_not_expired_by_its_stale_entry() {
        let mut d = Dedup::new(10, 100);
        let key = d.hashed(&ev(1, 1.0, 0));
        d.insert(vec![key], Timestamp(0));
        d.expire(Timestamp(5));
        // Accepted again after the window (the stale entry is still queued).
        d.insert(vec![key], Timestamp(12));
        d.expire(Timestamp(15));
        assert_eq!(d.len(), 1);
        let f = d.filter(vec![Op::Signals(vec![ev(1, 1.0, 0)])], Timestamp(15));
        assert_eq!(f.duplicate, 1);
    }

    /// Events that differ from one another in a single field — each field in turn — are
    /// all kept, among many random events and whatever the hash does; repeating any of
    /// them is a duplicate.
    #[test]
    fn events_differing_in_one_field_are_never_merged() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut events = Vec::new();
        for i in 0..2_000u64 {
            let base = SignalEvent {
                signal: SignalId(next() as u32 % 4),
                entity: EntityId(next() % 1_000),
                user: (i % 5 != 0).then(|| EntityId(next() % 100)),
                weight: [1.0, 0.0, 0.5, 1e300][(next() % 4) as usize],
                ts: Timestamp(next() as i64 % 1_000_000),
            };
            let flip = 1 << (next() % 64);
            let user = base.user.map_or(EntityId(next() % 100), |u| u);
            events.extend([
                base,
                SignalEvent {
                    signal: SignalId(base.signal.0 ^ (flip as u32).max(1)),
                    ..base
                },
                SignalEvent {
                    entity: EntityId(base.entity.0 ^ flip),
                    ..base
                },
                SignalEvent {
                    user: base.user.map(|u| EntityId(u.0 ^ flip)),
                    ..base
                },
                // Presence alone: no user against user 0 or the same id.
                SignalEvent {
                    user: if base.user.is_some() {
                        None
                    } else {
                        Some(user)
                    },
                    ..base
                },
                SignalEvent {
                    weight: f64::from_bits(base.weight.to_bits() ^ flip),
                    ..base
                },
                SignalEvent {
                    ts: Timestamp(base.ts.0 ^ flip as i64),
                    ..base
                },
            ]);
        }
        // Variants that happen to equal an earlier event are true duplicates.
        let mut distinct = std::collections::HashSet::new();
        let expected: Vec<bool> = events
            .iter()
            .map(|e| {
                distinct.insert((
                    e.signal.0,
                    e.entity.0,
                    e.user.map(|u| u.0),
                    e.weight.to_bits(),
                    e.ts.0,
                ))
            })
            .collect();
        assert!(expected.iter().filter(|&&k| k).count() > events.len() * 9 / 10);
        // Every hash alike, a few values, and the real hash.
        for mask in [0, 0b111, 0xFFFF_0000_0000_000F, u64::MAX] {
            // One transaction: duplicates inside it.
            let mut d = Dedup::new(1_000, 1 << 20).with_hash_mask(mask);
            assert_eq!(d.offer(&events, 0, true), expected, "mask {mask:#x}");
            assert_eq!(d.len(), distinct.len());
            // Everything again: all duplicates of the remembered set.
            assert!(d.offer(&events, 1, false).iter().all(|k| !k));
            // Transaction by transaction: duplicates across them.
            let mut d = Dedup::new(1_000, 1 << 20).with_hash_mask(mask);
            let kept: Vec<bool> = events
                .chunks(7)
                .enumerate()
                .flat_map(|(i, chunk)| d.offer(chunk, i as i64 / 10, true))
                .collect();
            assert_eq!(kept, expected, "mask {mask:#x}");
        }
    }

    /// The naive reference: key → (arrival, sequence number of its newest acceptance),
    /// and every acceptance in order.
    struct Model {
        window: i64,
        entries_max: usize,
        live: HashMap<EventKey, (i64, u64)>,
        queue: VecDeque<(u64, i64, EventKey)>,
        next_seq: u64,
    }

    impl Model {
        fn offer(&mut self, events: &[SignalEvent], now: i64, accept: bool) -> Vec<bool> {
            let mut txn = std::collections::HashSet::new();
            let kept: Vec<bool> = events
                .iter()
                .map(|e| {
                    let k = EventKey::new(e);
                    let recent = self
                        .live
                        .get(&k)
                        .is_some_and(|&(a, _)| now.saturating_sub(a) < self.window);
                    !recent && txn.insert(k)
                })
                .collect();
            if accept {
                for (e, _) in events.iter().zip(&kept).filter(|(_, k)| **k) {
                    let k = EventKey::new(e);
                    self.live.insert(k, (now, self.next_seq));
                    self.queue.push_back((self.next_seq, now, k));
                    self.next_seq += 1;
                    while self.queue.len() > self.entries_max {
                        self.pop();
                    }
                }
            }
            kept
        }

        fn pop(&mut self) {
            if let Some((seq, _, k)) = self.queue.pop_front()
                && self.live.get(&k).is_some_and(|&(_, s)| s == seq)
            {
                self.live.remove(&k);
            }
        }

        fn expire(&mut self, now: i64) {
            while let Some(&(_, a, _)) = self.queue.front() {
                if now.saturating_sub(a) < self.window {
                    break;
                }
                self.pop();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The set accepts exactly what the naive reference does, under random traffic with
        /// many repeats, rejected transactions, expiry and a small bound, whatever the hash.
        #[test]
        fn matches_naive_reference(
            mask in prop::sample::select(vec![0u64, 0b11, 0xF0F, u64::MAX]),
            window in 0i64..40,
            entries_max in 1usize..60,
            steps in prop::collection::vec(
                (
                    prop::collection::vec((0u32..2, 0u64..6, 0u8..3, 0u8..2, 0i64..3), 0..12),
                    0i64..8,
                    any::<bool>(),
                    any::<bool>(),
                ),
                1..80,
            ),
        ) {
            let mut d = Dedup::new(window, entries_max).with_hash_mask(mask);
            let mut m = Model {
                window,
                entries_max,
                live: HashMap::new(),
                queue: VecDeque::new(),
                next_seq: 0,
            };
            let mut now = 0;
            for (events, advance, accept, expire) in steps {
                now += advance;
                let events: Vec<SignalEvent> = events
                    .into_iter()
                    .map(|(signal, entity, user, weight, ts)| SignalEvent {
                        signal: SignalId(signal),
                        entity: EntityId(entity),
                        user: (user > 0).then(|| EntityId(u64::from(user) - 1)),
                        weight: if weight == 0 { 0.0 } else { -0.0 },
                        ts: Timestamp(ts),
                    })
                    .collect();
                if expire {
                    d.expire(Timestamp(now));
                    m.expire(now);
                }
                prop_assert_eq!(d.offer(&events, now, accept), m.offer(&events, now, accept));
                prop_assert_eq!(d.len(), m.live.len());
            }
        }
    }

    /// Long churn through a small set — keys expiring, trimmed, accepted again — so the
    /// index goes through many sweeps and grows; it still agrees with the reference.
    #[test]
    fn matches_naive_reference_under_churn() {
        for mask in [0, 0xFF, u64::MAX] {
            let (window, entries_max) = (40, 300);
            let mut d = Dedup::new(window, entries_max).with_hash_mask(mask);
            let mut m = Model {
                window,
                entries_max,
                live: HashMap::new(),
                queue: VecDeque::new(),
                next_seq: 0,
            };
            let mut rng = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for now in 0..3_000 {
                let events: Vec<SignalEvent> = (0..next() % 16)
                    .map(|_| ev(next() % 1_500, 1.0, 0))
                    .collect();
                if now % 3 == 0 {
                    d.expire(Timestamp(now));
                    m.expire(now);
                }
                let accept = next() % 8 != 0;
                assert_eq!(
                    d.offer(&events, now, accept),
                    m.offer(&events, now, accept),
                    "mask {mask:#x} at {now}"
                );
                assert_eq!(d.len(), m.live.len(), "mask {mask:#x} at {now}");
            }
        }
    }

    /// The parallel, sharded rebuild remembers exactly what accepting the same
    /// transactions one by one would.
    #[test]
    fn rebuild_matches_sequential_inserts() {
        let entries_max = DEDUP_SHARDS * DEDUP_SHARD_ENTRIES_MIN + 7;
        // Distinct events, all within the bound; then events repeating every 1,500
        // transactions, more than the bound (trimmed) and enough for two threads.
        type Event = fn(u64, u64) -> SignalEvent;
        let distinct: Event = |t, i| ev(t * 100 + i, 1.0, (t % 50) as i64);
        let repeating: Event = |t, i| ev((t * 100 + i) % 150_000, 1.0, 0);
        for (n, window, event) in [(2_600, 1_000, distinct), (4_000, 3_000, repeating)] {
            let txns: Vec<(Timestamp, Vec<SignalEvent>)> = (0..n)
                .map(|t| {
                    let events = (0..100).map(|i| event(t, i)).collect();
                    (Timestamp(t as i64), events)
                })
                .collect();
            let horizon = Timestamp(n as i64 + 200);
            let rebuilt = Dedup::rebuild(window, entries_max, &txns, horizon).unwrap();
            assert_eq!(rebuilt.shards.len(), DEDUP_SHARDS);
            let mut sequential = Dedup::new(window, entries_max);
            sequential.hasher = rebuilt.hasher;
            for (arrival, events) in &txns {
                let keys: Vec<HashedKey> = events.iter().map(|e| sequential.hashed(e)).collect();
                sequential.insert(keys, *arrival);
            }
            sequential.expire(horizon);
            if n == 2_600 {
                // Arrivals 1801..=2599 are within the window at the horizon.
                assert_eq!(rebuilt.len(), 799 * 100);
            } else {
                // Arrivals 1201..=3999 are within the window: every key twice, but the
                // bound trims only older entries of keys accepted again.
                assert_eq!(rebuilt.len(), 150_000);
                let entries: usize = rebuilt.shards.iter().map(|s| s.ring.len()).sum();
                // Every shard had more than its share (~17,500 of 279,900) and was trimmed.
                assert_eq!(entries, DEDUP_SHARDS * entries_max.div_ceil(DEDUP_SHARDS));
            }
            assert_eq!(rebuilt.len(), sequential.len());
            for shard in 0..DEDUP_SHARDS {
                let (a, b) = (&rebuilt.shards[shard], &sequential.shards[shard]);
                assert!(a.len() > 0, "shard {shard} is used");
                assert_eq!(a.live(), b.live(), "shard {shard}");
                assert!(a.ring.iter().eq(b.ring.iter()), "shard {shard}");
            }
        }
    }

    /// Filter-and-remember cost on the writer's path at the default bound, and the memory
    /// the full set takes; run with
    /// `cargo test --release -p tidal-wal -- --ignored --nocapture filter_throughput`.
    #[test]
    #[ignore = "measurement, run in release"]
    fn filter_throughput() {
        const TXN_EVENTS: u64 = 1_000;
        const TXNS: u64 = 12_000;
        let rss = || {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 4096
        };
        let rss0 = rss();
        let mut d = Dedup::new(crate::DEDUP_WINDOW_MICROS, crate::DEDUP_ENTRIES_MAX);
        let mut busy = std::time::Duration::ZERO;
        let mut duplicate = 0;
        // Every tenth transaction is sent again at once (a retry): all duplicates.
        let (mut retried, mut retry_busy) = (0, std::time::Duration::ZERO);
        // The longest transaction once the set is full (index sweeps, no more growth).
        let mut slowest_full = std::time::Duration::ZERO;
        for t in 0..TXNS {
            let events: Vec<SignalEvent> = (0..TXN_EVENTS)
                .map(|i| {
                    let s = t * TXN_EVENTS + i;
                    SignalEvent {
                        signal: SignalId(1),
                        entity: EntityId(s % 100_000),
                        user: Some(EntityId(s % 5_000)),
                        weight: 1.0,
                        ts: Timestamp(-((s % 7_000_000) as i64)),
                    }
                })
                .collect();
            let now = Timestamp(t as i64 * 1_000);
            let retry = (t % 10 == 0).then(|| events.clone());
            let started = std::time::Instant::now();
            d.expire(now);
            let f = d.filter(vec![Op::Signals(events)], now);
            duplicate += f.duplicate;
            d.insert(f.keys, now);
            let took = started.elapsed();
            busy += took;
            if t * TXN_EVENTS >= 2 * crate::DEDUP_ENTRIES_MAX as u64 {
                slowest_full = slowest_full.max(took);
            }
            if let Some(events) = retry {
                let started = std::time::Instant::now();
                let f = d.filter(vec![Op::Signals(events)], now);
                retry_busy += started.elapsed();
                assert_eq!(f.accepted, 0);
                retried += f.duplicate;
            }
        }
        let n = TXNS * TXN_EVENTS;
        let grown = rss().saturating_sub(rss0) as f64;
        println!(
            "filter+insert: {n} events, {duplicate} duplicates, {:.1} ns/event; \
             {} remembered, RSS grew {:.0} MB, {:.1} B/entry",
            busy.as_secs_f64() * 1e9 / n as f64,
            d.len(),
            grown / 1e6,
            grown / d.len() as f64,
        );
        println!(
            "retries: {retried} duplicates, {:.1} ns/event; slowest transaction when full: \
             {:.2} ms",
            retry_busy.as_secs_f64() * 1e9 / retried as f64,
            slowest_full.as_secs_f64() * 1e3
        );
    }

    /// Rebuild cost at the default bound; run with
    /// `cargo test --release -p tidal-wal -- --ignored --nocapture rebuild_throughput`.
    #[test]
    #[ignore = "measurement, run in release"]
    fn rebuild_throughput() {
        let events_max = crate::DEDUP_ENTRIES_MAX as u64;
        let txns: Vec<(Timestamp, Vec<SignalEvent>)> = (0..events_max / 1_000)
            .map(|t| {
                let events = (0..1_000)
                    .map(|i| {
                        let s = t * 1_000 + i;
                        SignalEvent {
                            signal: SignalId(1),
                            entity: EntityId(s % 1_000_000),
                            user: Some(EntityId(s % 777)),
                            weight: 1.0,
                            ts: Timestamp(-(s as i64)),
                        }
                    })
                    .collect();
                (Timestamp(t as i64 * 1_000), events)
            })
            .collect();
        let horizon = Timestamp(events_max as i64);
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let d = Dedup::rebuild(
                crate::DEDUP_WINDOW_MICROS,
                crate::DEDUP_ENTRIES_MAX,
                &txns,
                horizon,
            )
            .unwrap();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "rebuild: {} events in {:.3} s, {:.0} ns/event",
                d.len(),
                secs,
                secs * 1e9 / d.len() as f64
            );
        }
    }
}
