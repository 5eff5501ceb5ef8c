//! Relationships and affinity (SQL.md §8): the stored forms and the decay math.
//!
//! Both live in the entity store and change inside `EntityStore::apply`, in the same
//! fjall batch as the transaction's rows and its LSN, for the reason preference vectors
//! do (see `preference.rs`): an affinity event counts for the creator the item had *at
//! the event*, and the store can be ahead of any checkpoint, so state derived from it
//! must advance with it, never be replayed against a later store.
//!
//! Keyspaces:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `edges` | relationship id ‖ src ‖ dst (u64 BE each) | created_at (i64 LE, µs) |
//! | `edges_in` | relationship id ‖ dst | in-degree (u64 LE), absent at 0 |
//! | `affinities` | user ‖ creator | per signal: id (u32 LE) ‖ t_ref (i64 LE) ‖ score (f64 LE) |
//!
//! One key per edge keeps inserts and deletes O(log n) and makes a user's out-edges
//! one contiguous key range: FILTER reads it into a Roaring bitmap at planning.
//!
//! Affinity per (user, creator, signal) is the hot-tier form of `decay()`: a score
//! expressed at a reference time `t_ref` (the newest event's). An event at `ts ≥ t_ref`
//! moves the reference: `score ← score · f(ts − t_ref) + w`; an older (out-of-order,
//! backdated) event adds `w · f(t_ref − ts)`, with `f(dt) = 2^(−dt/half_life)` (1 for
//! DECAY NONE). A read at `at ≥ t_ref` is `δ · score · f(at − t_ref)`: exact up to
//! rounding. A read before the pair's newest event cannot take the later events out
//! (one sum is kept, not the events), so it returns the value at `t_ref`.

use tidal_core::{DecaySpec, EntityId, Schema, SignalId, Timestamp};

use crate::EngineError;

/// Bytes of one signal's entry in an `affinities` value.
const AFFINITY_ENTRY_BYTES: usize = 20;

pub(crate) fn edge_key(rel: u64, src: EntityId, dst: EntityId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&rel.to_be_bytes());
    k[8..16].copy_from_slice(&src.0.to_be_bytes());
    k[16..].copy_from_slice(&dst.0.to_be_bytes());
    k
}

pub(crate) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// The u64 at `at` of a big-endian key, or an error naming the keyspace.
pub(crate) fn key_u64(key: &[u8], at: usize, keyspace: &str) -> Result<u64, EngineError> {
    key.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| EngineError::CheckpointCorrupt {
            path: format!("store/{keyspace}"),
            reason: format!("key of {} bytes", key.len()),
        })
}

pub(crate) fn le_u64(v: &[u8], keyspace: &str) -> Result<u64, EngineError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_le_bytes)
        .map_err(|_| EngineError::CheckpointCorrupt {
            path: format!("store/{keyspace}"),
            reason: format!("value of {} bytes, expected 8", v.len()),
        })
}

/// One signal's share of a (user, creator) affinity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinityEntry {
    pub signal: SignalId,
    /// The newest event's time: `score` is expressed at it.
    pub t_ref: i64,
    pub score: f64,
}

impl AffinityEntry {
    /// Adds an event of weight `w` at `ts` (in any order).
    pub fn add(&mut self, decay: DecaySpec, w: f64, ts: i64) {
        if ts >= self.t_ref {
            self.score = self.score * decay.factor(ts - self.t_ref) + w;
            self.t_ref = ts;
        } else {
            self.score += w * decay.factor(self.t_ref - ts);
        }
    }

    /// The decayed sum at `at` (at `t_ref` for an earlier `at`; see the module docs).
    pub fn at(&self, decay: DecaySpec, at: i64) -> f64 {
        self.score * decay.factor(at.saturating_sub(self.t_ref).max(0))
    }
}

/// Adds an event to a pair's entries (kept sorted by signal).
pub(crate) fn add_event(
    entries: &mut Vec<AffinityEntry>,
    signal: SignalId,
    decay: DecaySpec,
    w: f64,
    ts: Timestamp,
) {
    match entries.binary_search_by_key(&signal.0, |e| e.signal.0) {
        Ok(i) => entries[i].add(decay, w, ts.0),
        Err(i) => entries.insert(
            i,
            AffinityEntry {
                signal,
                t_ref: ts.0,
                score: w,
            },
        ),
    }
}

/// `affinity(user, creator, at)` from a pair's entries: Σ δ · decayed score over the
/// entries whose signal `schema` still declares with AFFINITY (a dropped signal's share
/// is ignored; a re-created one has a new id).
pub fn affinity_value(entries: &[AffinityEntry], schema: &Schema, at: Timestamp) -> f64 {
    let mut sum = 0.0;
    for e in entries {
        if let Some(def) = schema.signal_by_id(e.signal)
            && let Some(delta) = def.affinity
        {
            sum += delta * e.at(def.decay, at.0);
        }
    }
    sum
}

pub(crate) fn encode_affinity(entries: &[AffinityEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * AFFINITY_ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&e.signal.0.to_le_bytes());
        out.extend_from_slice(&e.t_ref.to_le_bytes());
        out.extend_from_slice(&e.score.to_le_bytes());
    }
    out
}

pub(crate) fn decode_affinity(bytes: &[u8]) -> Result<Vec<AffinityEntry>, EngineError> {
    let bad = |reason: &str| EngineError::CheckpointCorrupt {
        path: "store/affinities".into(),
        reason: reason.into(),
    };
    if bytes.is_empty() || !bytes.len().is_multiple_of(AFFINITY_ENTRY_BYTES) {
        return Err(bad("value length is not a whole number of entries"));
    }
    let mut out = Vec::with_capacity(bytes.len() / AFFINITY_ENTRY_BYTES);
    for c in bytes.chunks_exact(AFFINITY_ENTRY_BYTES) {
        let signal = SignalId(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut t = [0u8; 8];
        t.copy_from_slice(&c[4..12]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&c[12..20]);
        let e = AffinityEntry {
            signal,
            t_ref: i64::from_le_bytes(t),
            score: f64::from_le_bytes(s),
        };
        if out
            .last()
            .is_some_and(|p: &AffinityEntry| p.signal.0 >= signal.0)
        {
            return Err(bad("entries out of order"));
        }
        if !e.score.is_finite() {
            return Err(bad("non-finite score"));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(hl_s: i64) -> DecaySpec {
        DecaySpec::exponential_micros(hl_s * 1_000_000).unwrap()
    }

    #[test]
    fn out_of_order_events_sum_like_the_definition() {
        let d = exp(3600);
        let events = [
            (5_000_000_000i64, 1.0),
            (1_000_000_000, 2.0),
            (9_000_000_000, -0.5),
        ];
        let mut v = Vec::new();
        for (ts, w) in events {
            add_event(&mut v, SignalId(3), d, w, Timestamp(ts));
        }
        let at = 12_000_000_000i64;
        let want: f64 = events.iter().map(|(ts, w)| w * d.factor(at - ts)).sum();
        let got = v[0].at(d, at);
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
        let round = decode_affinity(&encode_affinity(&v)).unwrap();
        assert_eq!(round, v);
    }

    #[test]
    fn damaged_values_are_refused() {
        assert!(decode_affinity(&[1, 2, 3]).is_err());
        assert!(decode_affinity(&[]).is_err());
        let e = |s: u32| AffinityEntry {
            signal: SignalId(s),
            t_ref: 0,
            score: 1.0,
        };
        assert!(decode_affinity(&encode_affinity(&[e(2), e(1)])).is_err());
    }
}
