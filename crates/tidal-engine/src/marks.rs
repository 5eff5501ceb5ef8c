//! Per-user mark bitmaps: which entities a user has `seen`, `liked` or `hidden`, as
//! declared by `CREATE SIGNAL … MARKS seen|liked|hidden`.
//!
//! For every signal whose definition has `marks = Some(_)` the materializer keeps one
//! [`RoaringTreemap`] of entity ids per user. An event of such a signal with a user and
//! a positive weight sets the entity's bit; a negative weight (an "unlike") clears it;
//! a zero weight or a missing user changes nothing. Bitmaps are kept per signal, not
//! merged per mark, so that `DROP SIGNAL` removes exactly that signal's marks; readers
//! union over the signals that carry the requested mark (see [`crate::ReadView::marked`]).
//!
//! Memory: one hash entry per (marking signal, user) with at least one bit set (a
//! bitmap that becomes empty is removed), about 100 bytes each, plus the bitmap itself:
//! 2 bytes per marked entity while a user has fewer than 4,096 marks in a block of
//! 65,536 consecutive ids, never more than 8 KiB per such block. There is no limit:
//! marks grow with engagement just as the ledger does.
//!
//! Checkpoint section `"marks"`: `[version u32 = 1] [count u64]` then `count` entries
//! `[signal u32] [user u64] [len u64] [bitmap: len bytes]`, sorted by (signal, user)
//! so that the same state always encodes to the same bytes. The bitmap is Roaring's
//! portable 64-bit format (`RoaringTreemap::serialize_into`), never empty.

use std::collections::HashMap;

use parking_lot::RwLock;
use roaring::RoaringTreemap;
use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{EntityId, Mark, Schema, SchemaChange, SignalEvent, SignalId};
use tidal_wal::{CommittedTxn, Op};

use crate::EngineError;
use crate::registry::Materializer;

/// Checkpoint section name of the marks materializer.
pub(crate) const MARKS_SECTION: &str = "marks";
/// Version of the section's encoding; bumped on any change to it.
const MARKS_FORMAT_VERSION: u32 = 1;

/// The mark bitmaps as a materializer. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct MarksMaterializer {
    marks: RwLock<Marks>,
}

/// Bitmaps by marking signal, then by user. No bitmap is empty.
#[derive(Debug, Default, Clone, PartialEq)]
struct Marks {
    by_signal: HashMap<SignalId, HashMap<EntityId, RoaringTreemap>>,
}

impl Marks {
    fn apply_event(&mut self, ev: &SignalEvent) {
        let Some(user) = ev.user else { return };
        if ev.weight > 0.0 {
            self.by_signal
                .entry(ev.signal)
                .or_default()
                .entry(user)
                .or_default()
                .insert(ev.entity.0);
        } else if ev.weight < 0.0 {
            let Some(users) = self.by_signal.get_mut(&ev.signal) else {
                return;
            };
            let Some(bitmap) = users.get_mut(&user) else {
                return;
            };
            bitmap.remove(ev.entity.0);
            if bitmap.is_empty() {
                users.remove(&user);
                if users.is_empty() {
                    self.by_signal.remove(&ev.signal);
                }
            }
        }
    }

    fn get(&self, signal: SignalId, user: EntityId) -> Option<&RoaringTreemap> {
        self.by_signal.get(&signal)?.get(&user)
    }

    fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let mut entries: Vec<(SignalId, EntityId, &RoaringTreemap)> = self
            .by_signal
            .iter()
            .flat_map(|(s, users)| users.iter().map(move |(u, b)| (*s, *u, b)))
            .collect();
        entries.sort_unstable_by_key(|(s, u, _)| (*s, *u));
        let mut e = Encoder::new();
        e.u32(MARKS_FORMAT_VERSION);
        e.u64(entries.len() as u64);
        let mut bitmap = Vec::new();
        for (signal, user, b) in entries {
            debug_assert!(!b.is_empty(), "empty bitmaps are removed when cleared");
            bitmap.clear();
            b.serialize_into(&mut bitmap)
                .map_err(|err| corrupt(format!("could not serialize a bitmap: {err}")))?;
            e.u32(signal.0);
            e.u64(user.0);
            e.u64(bitmap.len() as u64);
            e.buf.extend_from_slice(&bitmap);
        }
        Ok(e.into_inner())
    }

    /// The inverse of [`Marks::encode`]; anything it would not have written is an error.
    fn decode(bytes: &[u8]) -> Result<Marks, EngineError> {
        let mut d = Decoder::new(bytes);
        let version = d.u32()?;
        if version != MARKS_FORMAT_VERSION {
            return Err(corrupt(format!("unsupported format version {version}")));
        }
        let count = d.u64()?;
        let mut marks = Marks::default();
        let mut prev: Option<(SignalId, EntityId)> = None;
        for _ in 0..count {
            let key = (SignalId(d.u32()?), EntityId(d.u64()?));
            if prev.is_some_and(|p| p >= key) {
                return Err(corrupt(format!(
                    "entry for signal {} user {} is out of order or repeated",
                    key.0, key.1
                )));
            }
            prev = Some(key);
            let len = usize::try_from(d.u64()?)
                .map_err(|_| corrupt("bitmap length out of range".to_string()))?;
            if len > d.remaining() {
                return Err(corrupt("bitmap length exceeds the section".to_string()));
            }
            let raw = d.take(len)?;
            let bitmap = RoaringTreemap::deserialize_from(raw)
                .map_err(|err| corrupt(format!("bad bitmap for user {}: {err}", key.1)))?;
            // Re-encoding must give back exactly the stored bytes: this rejects trailing
            // bytes and repeated high keys, which `deserialize_from` silently accepts.
            if bitmap.is_empty() || bitmap.serialized_size() != raw.len() {
                return Err(corrupt(format!(
                    "bitmap for user {} is empty or not canonical",
                    key.1
                )));
            }
            marks
                .by_signal
                .entry(key.0)
                .or_default()
                .insert(key.1, bitmap);
        }
        d.finish()?;
        Ok(marks)
    }
}

fn corrupt(reason: String) -> EngineError {
    EngineError::CheckpointSection {
        section: MARKS_SECTION,
        reason,
    }
}

impl MarksMaterializer {
    /// The union of `user`'s bitmaps over `signals`.
    pub fn union(&self, signals: &[SignalId], user: EntityId) -> RoaringTreemap {
        let marks = self.marks.read();
        let mut found = signals.iter().filter_map(|s| marks.get(*s, user));
        let mut out = found.next().cloned().unwrap_or_default();
        for b in found {
            out |= b;
        }
        out
    }

    /// Whether `entity` is set in any of `user`'s bitmaps over `signals`.
    pub fn contains(&self, signals: &[SignalId], user: EntityId, entity: EntityId) -> bool {
        let marks = self.marks.read();
        signals
            .iter()
            .filter_map(|s| marks.get(*s, user))
            .any(|b| b.contains(entity.0))
    }
}

/// The ids of the signals in `schema` that set `mark`.
pub(crate) fn signals_with(schema: &Schema, mark: Mark) -> Vec<SignalId> {
    schema
        .signals()
        .filter(|s| s.marks == Some(mark))
        .map(|s| s.id)
        .collect()
}

impl Materializer for MarksMaterializer {
    fn name(&self) -> &'static str {
        MARKS_SECTION
    }

    /// Which signals mark is read from `schema`, the schema *after* this transaction's
    /// own changes. So events of a signal the same transaction creates are marked, and
    /// events of a signal the same transaction drops are ignored — which changes nothing,
    /// because the drop removes that signal's bitmaps anyway. Signal ids are never
    /// reused, so no event can be taken for another signal's.
    fn apply(&self, txn: &CommittedTxn, schema: &Schema) -> Result<(), EngineError> {
        let mut marking: Option<Vec<SignalId>> = None;
        let mut marks = None;
        for op in &txn.ops {
            match op {
                Op::Signals(events) => {
                    let marking = marking.get_or_insert_with(|| {
                        schema
                            .signals()
                            .filter(|s| s.marks.is_some())
                            .map(|s| s.id)
                            .collect()
                    });
                    if marking.is_empty() {
                        continue;
                    }
                    for ev in events.iter().filter(|e| marking.contains(&e.signal)) {
                        marks
                            .get_or_insert_with(|| self.marks.write())
                            .apply_event(ev);
                    }
                }
                Op::Schema(SchemaChange::DropSignal { id, .. }) => {
                    marks
                        .get_or_insert_with(|| self.marks.write())
                        .by_signal
                        .remove(id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        self.marks.read().encode()
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), EngineError> {
        let marks = Marks::decode(bytes)?;
        *self.marks.write() = marks;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tidal_core::Timestamp;

    use super::*;

    fn ev(signal: u32, entity: u64, user: Option<u64>, weight: f64) -> SignalEvent {
        SignalEvent {
            signal: SignalId(signal),
            entity: EntityId(entity),
            user: user.map(EntityId),
            weight,
            ts: Timestamp(0),
        }
    }

    fn sample() -> Marks {
        let mut m = Marks::default();
        for (s, e, u) in [(1, 5, 7), (1, 6, 7), (2, 1 << 40, 7), (1, 5, 8), (3, 0, 0)] {
            m.apply_event(&ev(s, e, Some(u), 1.0));
        }
        m
    }

    #[test]
    fn clearing_the_last_bit_removes_the_bitmap() {
        let mut m = Marks::default();
        m.apply_event(&ev(1, 5, Some(7), 2.0));
        m.apply_event(&ev(1, 5, Some(7), -1.0));
        assert_eq!(m, Marks::default());
        // Clearing what was never set is a no-op.
        m.apply_event(&ev(1, 5, Some(7), -1.0));
        assert_eq!(m, Marks::default());
    }

    #[test]
    fn encoding_round_trips_and_is_deterministic() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(Marks::decode(&bytes).unwrap(), m);
        // Built in another order, the same state encodes to the same bytes.
        let mut other = Marks::default();
        for (s, e, u) in [(3, 0, 0), (1, 5, 8), (2, 1 << 40, 7), (1, 6, 7), (1, 5, 7)] {
            other.apply_event(&ev(s, e, Some(u), 1.0));
        }
        assert_eq!(other.encode().unwrap(), bytes);
        let empty = Marks::default().encode().unwrap();
        assert_eq!(Marks::decode(&empty).unwrap(), Marks::default());
    }

    #[test]
    fn damaged_sections_are_refused() {
        let bytes = sample().encode().unwrap();
        // Every truncation fails, and so does a trailing byte.
        for n in 0..bytes.len() {
            assert!(Marks::decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Marks::decode(&longer).is_err());
        // Unknown version.
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            Marks::decode(&v2),
            Err(EngineError::CheckpointSection {
                section: "marks",
                ..
            })
        ));
        // Entries out of order: swap the first two (signal 1 users 7 and 8).
        let m = sample();
        let mut e = Encoder::new();
        e.u32(MARKS_FORMAT_VERSION);
        e.u64(2);
        for user in [8u64, 7] {
            let mut raw = Vec::new();
            m.get(SignalId(1), EntityId(user))
                .unwrap()
                .serialize_into(&mut raw)
                .unwrap();
            e.u32(1);
            e.u64(user);
            e.u64(raw.len() as u64);
            e.buf.extend_from_slice(&raw);
        }
        assert!(Marks::decode(&e.into_inner()).is_err());
        // An empty bitmap is never written.
        let mut e = Encoder::new();
        e.u32(MARKS_FORMAT_VERSION);
        e.u64(1);
        let mut raw = Vec::new();
        RoaringTreemap::new().serialize_into(&mut raw).unwrap();
        e.u32(1);
        e.u64(1);
        e.u64(raw.len() as u64);
        e.buf.extend_from_slice(&raw);
        assert!(Marks::decode(&e.into_inner()).is_err());
    }
}
