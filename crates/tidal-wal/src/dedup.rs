//! Exact-duplicate suppression for signal events.
//!
//! An event's identity is (signal, entity, user, weight bits, ts), hashed to 128 bits with
//! two SipHash instances seeded by different prefixes — a collision needs both 64-bit
//! halves to agree, which is negligible at the sizes bounded here. Keys map to the arrival
//! of the transaction that accepted them; a queue in arrival order expires them once they
//! fall out of the window, and bounds their number by forgetting the oldest first.
//!
//! A large set is split into [`DEDUP_SHARDS`] shards by key, each with its own table,
//! queue and an equal share of the bound (keys are uniform, so "oldest of its shard" is
//! close to "oldest overall"). Shards keep the writer's rehash pauses short and let
//! recovery rebuild the set on several threads.
//!
//! The hashes only need to agree within one process: the set is rebuilt from the log at
//! every open, so the unstable `DefaultHasher` algorithm is fine.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io;

use tidal_core::{SignalEvent, Timestamp};

use crate::Op;

/// Shards of a large dedup set.
const DEDUP_SHARDS: usize = 16;
/// A set bounded below `DEDUP_SHARDS` times this many entries stays in one shard.
const DEDUP_SHARD_ENTRIES_MIN: usize = 16_384;
/// Fewest events per thread worth a thread of their own when rebuilding.
const REBUILD_THREAD_EVENTS_MIN: usize = 100_000;

/// 128-bit identity of a signal event: two independent 64-bit hashes. A pair of `u64`
/// rather than a `u128` keeps table entries 8-aligned (24 bytes with the arrival, not 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventKey(u64, u64);

impl EventKey {
    /// The shard of a set split `shards` ways; uses the half the tables do not hash by.
    fn shard(self, shards: usize) -> usize {
        (self.1 % shards as u64) as usize
    }
}

impl Hash for EventKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniform hash: one half is enough to pick a bucket.
        state.write_u64(self.0);
    }
}

/// Passes an [`EventKey`]'s hash through; hashing it again would be wasted work.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `EventKey`; fold the bytes so the hasher stays total.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap<V> = HashMap<EventKey, V, BuildHasherDefault<KeyHasher>>;
type KeySet = HashSet<EventKey, BuildHasherDefault<KeyHasher>>;

/// Bytes hashed per event: prefix, signal, entity, user flag and id, weight bits, ts.
const KEY_INPUT_BYTES: usize = 1 + 4 + 8 + 1 + 8 + 8 + 8;

/// The 128-bit identity of `ev`.
pub(crate) fn event_key(ev: &SignalEvent) -> EventKey {
    let mut input = [0u8; KEY_INPUT_BYTES];
    input[1..5].copy_from_slice(&ev.signal.0.to_le_bytes());
    input[5..13].copy_from_slice(&ev.entity.0.to_le_bytes());
    if let Some(u) = ev.user {
        input[13] = 1;
        input[14..22].copy_from_slice(&u.0.to_le_bytes());
    }
    input[22..30].copy_from_slice(&ev.weight.to_bits().to_le_bytes());
    input[30..38].copy_from_slice(&ev.ts.0.to_le_bytes());
    // One `write` per hasher: SipHash's per-call overhead dominates for small fields.
    let mut half = |prefix: u8| {
        input[0] = prefix;
        let mut h = DefaultHasher::new();
        h.write(&input);
        h.finish()
    };
    EventKey(half(0x5A), half(0xA5))
}

/// Result of filtering one transaction: the events to write and the keys to remember once
/// the transaction is accepted.
#[derive(Debug, Default)]
pub(crate) struct Filtered {
    pub ops: Vec<Op>,
    pub keys: Vec<EventKey>,
    pub accepted: usize,
    pub duplicate: usize,
}

/// One shard: key → arrival, and the acceptance queue.
#[derive(Debug, Default)]
struct Shard {
    /// Key → arrival of the transaction that accepted it.
    arrivals: KeyMap<i64>,
    /// (arrival, key) in acceptance order; may hold stale pairs for keys re-accepted later,
    /// which are skipped when they reach the front.
    order: VecDeque<(i64, EventKey)>,
}

impl Shard {
    fn remember(&mut self, key: EventKey, arrival: i64, entries_max: usize) {
        debug_assert!(self.order.back().is_none_or(|&(a, _)| a <= arrival));
        self.arrivals.insert(key, arrival);
        self.order.push_back((arrival, key));
        // The memory bound: forget the oldest acceptances first.
        while self.order.len() > entries_max {
            if let Some((a, k)) = self.order.pop_front() {
                self.forget(a, k);
            }
        }
    }

    fn forget(&mut self, arrival: i64, key: EventKey) {
        if self.arrivals.get(&key) == Some(&arrival) {
            self.arrivals.remove(&key);
        }
    }

    fn expire(&mut self, now: i64, window_micros: i64) {
        while let Some(&(arrival, key)) = self.order.front() {
            if now.saturating_sub(arrival) < window_micros {
                break;
            }
            self.order.pop_front();
            self.forget(arrival, key);
        }
    }
}

/// The set of recently accepted events.
#[derive(Debug)]
pub(crate) struct Dedup {
    window_micros: i64,
    shards: Vec<Shard>,
    /// The bound on each shard's queue.
    shard_entries_max: usize,
    /// Keys of the transaction being filtered, to catch duplicates inside it.
    txn_keys: KeySet,
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
            shards: (0..n).map(|_| Shard::default()).collect(),
            shard_entries_max: entries_max.div_ceil(n),
            txn_keys: KeySet::default(),
        }
    }

    /// Number of remembered events.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.arrivals.len()).sum()
    }

    /// Forgets every event accepted `window` or longer before `now`.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        for shard in &mut self.shards {
            shard.expire(now.0, self.window_micros);
        }
    }

    fn is_recent(&self, key: EventKey, now: Timestamp) -> bool {
        let shard = &self.shards[key.shard(self.shards.len())];
        shard
            .arrivals
            .get(&key)
            .is_some_and(|&a| now.0.saturating_sub(a) < self.window_micros)
    }

    /// Drops from `ops` every event already accepted within the window before `now` or
    /// repeated earlier in `ops`. Signal ops left without events are removed. Nothing is
    /// remembered until [`Dedup::insert`] is called with the returned keys.
    pub(crate) fn filter(&mut self, ops: Vec<Op>, now: Timestamp) -> Filtered {
        let mut out = Filtered {
            ops: Vec::with_capacity(ops.len()),
            ..Filtered::default()
        };
        self.txn_keys.clear();
        for op in ops {
            let Op::Signals(events) = op else {
                out.ops.push(op);
                continue;
            };
            let before = events.len();
            let mut kept = Vec::with_capacity(events.len());
            for ev in events {
                let key = event_key(&ev);
                if self.is_recent(key, now) || !self.txn_keys.insert(key) {
                    continue;
                }
                out.keys.push(key);
                kept.push(ev);
            }
            out.accepted += kept.len();
            out.duplicate += before - kept.len();
            if !kept.is_empty() {
                out.ops.push(Op::Signals(kept));
            }
        }
        out
    }

    /// Remembers keys accepted at `arrival` (which never decreases between calls).
    pub(crate) fn insert(&mut self, keys: &[EventKey], arrival: Timestamp) {
        let n = self.shards.len();
        for &key in keys {
            self.shards[key.shard(n)].remember(key, arrival.0, self.shard_entries_max);
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
            shard.arrivals.reserve(shard_reserve);
            shard.order.reserve(shard_reserve);
        }
        // Hash every event (split by transaction ranges), keeping log order.
        let ranges: Vec<&[(Timestamp, Vec<SignalEvent>)]> =
            txns.chunks(txns.len().div_ceil(threads).max(1)).collect();
        let keyed: Vec<Vec<(i64, EventKey)>> = run_parallel(ranges, |range| {
            range
                .iter()
                .flat_map(|(arrival, events)| {
                    events.iter().map(move |ev| (arrival.0, event_key(ev)))
                })
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
            for &(arrival, key) in keyed.iter().flatten() {
                let shard = key.shard(n);
                if let Some(s) = shard.checked_sub(first).and_then(|i| group.get_mut(i)) {
                    s.remember(key, arrival, shard_entries_max);
                }
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
    use super::*;
    use tidal_core::{EntityId, EntityKind, SignalId};

    fn ev(entity: u64, weight: f64, ts: i64) -> SignalEvent {
        SignalEvent {
            signal: SignalId(1),
            entity: EntityId(entity),
            user: Some(EntityId(9)),
            weight,
            ts: Timestamp(ts),
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
            assert_ne!(event_key(&v), event_key(&base), "{v:?}");
        }
        assert_eq!(event_key(&ev(1, 1.0, 5)), event_key(&base));
        assert_ne!(event_key(&ev(1, 0.0, 5)), event_key(&ev(1, -0.0, 5)));
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
        d.insert(&f.keys, Timestamp(0));
        let f = d.filter(
            vec![Op::Signals(vec![ev(1, 1.0, 5), ev(1, 2.0, 5)])],
            Timestamp(59),
        );
        assert_eq!((f.accepted, f.duplicate), (1, 1));
        d.insert(&f.keys, Timestamp(59));
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
            d.insert(&f.keys, Timestamp(i as i64));
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
        let key = event_key(&ev(1, 1.0, 0));
        d.insert(&[key], Timestamp(0));
        d.expire(Timestamp(5));
        // Accepted again after the window (the stale pair is still queued).
        d.insert(&[key], Timestamp(12));
        d.expire(Timestamp(15));
        assert_eq!(d.len(), 1);
        let f = d.filter(vec![Op::Signals(vec![ev(1, 1.0, 0)])], Timestamp(15));
        assert_eq!(f.duplicate, 1);
    }

    /// The parallel, sharded rebuild remembers exactly what accepting the same
    /// transactions one by one would.
    #[test]
    fn rebuild_matches_sequential_inserts() {
        let window = 1_000;
        let entries_max = DEDUP_SHARDS * DEDUP_SHARD_ENTRIES_MIN + 7;
        let txns: Vec<(Timestamp, Vec<SignalEvent>)> = (0..2_600u64)
            .map(|t| {
                let events = (0..100)
                    .map(|i| ev(t * 100 + i, 1.0, (t % 50) as i64))
                    .collect();
                (Timestamp(t as i64), events)
            })
            .collect();
        let horizon = Timestamp(2_600 + 200);
        let rebuilt = Dedup::rebuild(window, entries_max, &txns, horizon).unwrap();
        assert_eq!(rebuilt.shards.len(), DEDUP_SHARDS);
        let mut sequential = Dedup::new(window, entries_max);
        for (arrival, events) in &txns {
            let keys: Vec<EventKey> = events.iter().map(event_key).collect();
            sequential.insert(&keys, *arrival);
        }
        sequential.expire(horizon);
        // Arrivals 1801..=2599 are within the window at the horizon.
        assert_eq!(rebuilt.len(), 799 * 100);
        assert_eq!(rebuilt.len(), sequential.len());
        for shard in 0..DEDUP_SHARDS {
            let (a, b) = (&rebuilt.shards[shard], &sequential.shards[shard]);
            assert_eq!(a.arrivals, b.arrivals, "shard {shard}");
            assert!(a.order.iter().eq(b.order.iter()), "shard {shard}");
        }
    }
}
