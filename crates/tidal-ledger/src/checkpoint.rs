//! The ledger's checkpoint format.
//!
//! ```text
//! u32 magic "TLDG"   u32 version (1)
//! 3 × (u32 n, n × u64 entity id)            ordinals of items, users, creators
//! u32 signals, then per signal (ascending id):
//!     bytes SignalDef (tidal-core encoding, u32-length-prefixed)
//!     u32 column length   u32 active pairs
//!     per active pair (ascending ordinal):
//!         u32 ordinal   f64 score   i64 last_ts   f64 total
//!         per tier of the signal (coarsest first): u32 n, n × (i64 bucket index, f64 sum)
//! u64 checksum
//! ```
//!
//! All integers little-endian. Bucket indices are absolute (`floor(ts / width)`), so the
//! in-memory anchoring is free to change. The checksum is a running hash of every value
//! written; decoding recomputes it and rejects any mismatch, and checks every count
//! against the remaining bytes before allocating, so corrupt input is an error, never a
//! panic or a huge allocation.

use std::collections::HashMap;

use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{CoreError, EntityId, EntityKind, SignalDef};

use crate::ledger::{Ledger, kind_index};
use crate::ordinals::{IdBuildHasher, OrdinalMap};
use crate::signal::{NO_EVENT_TS, SignalState, TIMESTAMP_MICROS_MAX, TIMESTAMP_MICROS_MIN};
use crate::warm::{Warm, exact_offset};

const MAGIC: u32 = u32::from_le_bytes(*b"TLDG");
const VERSION: u32 = 1;
const CHECKSUM_SEED: u64 = 0x2545_F491_4F6C_DD1D;
const CHECKSUM_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Writes values and folds each into a running checksum.
struct Writer<'a> {
    e: &'a mut Encoder,
    h: u64,
}

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    let p = u128::from(h ^ v) * u128::from(CHECKSUM_MULTIPLIER);
    ((p as u64) ^ ((p >> 64) as u64)).rotate_left(23)
}

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.h = mix(self.h, u64::from(v));
        self.e.u32(v);
    }
    fn u64(&mut self, v: u64) {
        self.h = mix(self.h, v);
        self.e.u64(v);
    }
    fn i64(&mut self, v: i64) {
        self.u64(v as u64);
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.h = mix(self.h, v.len() as u64);
        for chunk in v.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.h = mix(self.h, u64::from_le_bytes(word));
        }
        self.e.bytes(v);
    }
}

/// Reads values and recomputes the writer's checksum.
struct Reader<'a, 'b> {
    d: &'a mut Decoder<'b>,
    h: u64,
}

impl<'b> Reader<'_, 'b> {
    fn u32(&mut self) -> Result<u32, CoreError> {
        let v = self.d.u32()?;
        self.h = mix(self.h, u64::from(v));
        Ok(v)
    }
    fn u64(&mut self) -> Result<u64, CoreError> {
        let v = self.d.u64()?;
        self.h = mix(self.h, v);
        Ok(v)
    }
    fn i64(&mut self) -> Result<i64, CoreError> {
        Ok(self.u64()? as i64)
    }
    fn f64(&mut self) -> Result<f64, CoreError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bytes(&mut self) -> Result<&'b [u8], CoreError> {
        let v = self.d.bytes()?;
        self.h = mix(self.h, v.len() as u64);
        for chunk in v.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.h = mix(self.h, u64::from_le_bytes(word));
        }
        Ok(v)
    }
    /// A count of items of at least `item_bytes` each, checked against what is left.
    fn count(&mut self, item_bytes: usize, what: &'static str) -> Result<usize, CoreError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_bytes) > self.d.remaining() {
            return Err(CoreError::Decode(what));
        }
        Ok(n)
    }
}

pub(crate) fn encode(l: &Ledger, e: &mut Encoder) {
    let mut w = Writer {
        e,
        h: CHECKSUM_SEED,
    };
    w.u32(MAGIC);
    w.u32(VERSION);
    for kind in EntityKind::ALL {
        let ids = l.ordinals[kind_index(kind)].ids();
        w.u32(ids.len() as u32);
        for id in ids {
            w.u64(id.0);
        }
    }
    let mut ids: Vec<u32> = l.signals.keys().copied().collect();
    ids.sort_unstable();
    w.u32(ids.len() as u32);
    for id in ids {
        let Some(s) = l.signals.get(&id) else {
            continue;
        };
        encode_signal(s, &mut w);
    }
    let h = w.h;
    w.e.u64(h);
}

fn encode_signal(s: &SignalState, w: &mut Writer<'_>) {
    let mut def = Encoder::new();
    s.def.encode(&mut def);
    w.bytes(&def.buf);
    w.u32(s.len() as u32);
    w.u32(s.active as u32);
    for i in (0..s.len()).filter(|&i| s.is_active(i)) {
        let last = s.last_ts[i];
        w.u32(i as u32);
        w.f64(s.score[i]);
        w.i64(last);
        w.f64(s.total[i]);
        let warm = s.warm.get(i).and_then(Option::as_ref);
        for (code, tier) in s.layout.tiers().iter().enumerate() {
            let run = warm.map_or(&[][..], |wm| wm.run(code));
            // Buckets below the retention floor wait to be trimmed; they are not state.
            let (base, floor) = (tier.base(last), tier.floor_index(last));
            let live = || {
                run.iter()
                    .map(|b| (base + b.offset(), b.sum()))
                    .filter(|&(idx, _)| idx >= floor)
            };
            w.u32(live().count() as u32);
            for (idx, sum) in live() {
                w.i64(idx);
                w.f64(sum);
            }
        }
    }
}

pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Ledger, CoreError> {
    let mut r = Reader {
        d,
        h: CHECKSUM_SEED,
    };
    if r.u32()? != MAGIC {
        return Err(CoreError::Decode("not a ledger checkpoint (bad magic)"));
    }
    if r.u32()? != VERSION {
        return Err(CoreError::Decode("unsupported ledger checkpoint version"));
    }
    let mut ordinals: [OrdinalMap; 3] = Default::default();
    for kind in EntityKind::ALL {
        let n = r.count(8, "entity count exceeds data")?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(EntityId(r.u64()?));
        }
        ordinals[kind_index(kind)] =
            OrdinalMap::from_ids(ids).ok_or(CoreError::Decode("duplicate entity id"))?;
    }
    let n = r.count(4, "signal count exceeds data")?;
    let mut signals: HashMap<u32, SignalState, IdBuildHasher> =
        HashMap::with_capacity_and_hasher(n, IdBuildHasher::default());
    for _ in 0..n {
        let s = decode_signal(&mut r, &ordinals)?;
        if signals.insert(s.def.id.0, s).is_some() {
            return Err(CoreError::Decode("duplicate signal id"));
        }
    }
    let expected = r.h;
    if r.d.u64()? != expected {
        return Err(CoreError::Decode("ledger checkpoint checksum mismatch"));
    }
    Ok(Ledger::from_parts(signals, ordinals))
}

fn decode_signal(
    r: &mut Reader<'_, '_>,
    ordinals: &[OrdinalMap; 3],
) -> Result<SignalState, CoreError> {
    let def_bytes = r.bytes()?;
    let mut dd = Decoder::new(def_bytes);
    let def = SignalDef::decode(&mut dd)?;
    dd.finish()?;
    let mut s = SignalState::new(def);
    let len = r.u32()? as usize;
    if len > ordinals[kind_index(s.def.kind)].len() {
        return Err(CoreError::Decode(
            "signal columns exceed the kind's entities",
        ));
    }
    // Each active pair takes at least 28 bytes plus 4 per tier.
    let active = r.count(
        28 + 4 * s.layout.tiers().len(),
        "active pair count exceeds data",
    )?;
    if active > len {
        return Err(CoreError::Decode("more active pairs than columns"));
    }
    s.grow_columns(len);
    s.score.shrink_to_fit();
    s.last_ts.shrink_to_fit();
    s.total.shrink_to_fit();
    s.warm.shrink_to_fit();
    let mut next = 0usize;
    for _ in 0..active {
        let i = r.u32()? as usize;
        if i < next || i >= len {
            return Err(CoreError::Decode("pair ordinals out of order or range"));
        }
        next = i + 1;
        let score = r.f64()?;
        let last = r.i64()?;
        let total = r.f64()?;
        if !(TIMESTAMP_MICROS_MIN..=TIMESTAMP_MICROS_MAX).contains(&last) || last == NO_EVENT_TS {
            return Err(CoreError::Decode("event time out of range"));
        }
        s.score[i] = score;
        s.last_ts[i] = last;
        s.total[i] = total;
        s.active += 1;
        if !s.layout.is_empty() {
            s.warm[i] = decode_warm(r, &s, last)?;
        }
    }
    s.rebuild_window_sums();
    Ok(s)
}

fn decode_warm(
    r: &mut Reader<'_, '_>,
    s: &SignalState,
    last: i64,
) -> Result<Option<Warm>, CoreError> {
    let mut warm: Option<Warm> = None;
    for (code, tier) in s.layout.tiers().iter().enumerate() {
        let n = r.count(16, "bucket count exceeds data")?;
        if n as i64 > tier.keep {
            return Err(CoreError::Decode("more buckets than the tier retains"));
        }
        let (floor, newest, base) = (tier.floor_index(last), tier.index(last), tier.base(last));
        for _ in 0..n {
            let idx = r.i64()?;
            let sum = r.f64()?;
            if idx < floor || idx > newest {
                return Err(CoreError::Decode("bucket outside the tier's retention"));
            }
            let offset =
                exact_offset(base, idx).ok_or(CoreError::Decode("bucket offset out of range"))?;
            let w = warm.get_or_insert_with(|| Warm::with_capacity(n));
            if !w.push_sorted(code, offset, sum) {
                return Err(CoreError::Decode("buckets out of order"));
            }
        }
    }
    Ok(warm)
}

#[cfg(test)]
mod tests {
    use tidal_core::{DecaySpec, SignalEvent, SignalId, Timestamp, Window};

    use super::*;

    fn sample() -> Ledger {
        let mut l = Ledger::new();
        let mut view = SignalDef::new(
            "view",
            EntityKind::Item,
            DecaySpec::exponential("1 day").unwrap(),
            ["1h", "24h", "8d", "all"]
                .iter()
                .map(|w| Window::parse(w).unwrap()),
        )
        .unwrap();
        view.id = SignalId(3);
        let mut share =
            SignalDef::new("share", EntityKind::User, DecaySpec::None, [Window::All]).unwrap();
        share.id = SignalId(9);
        l.define(&view);
        l.define(&share);
        let t0 = Timestamp::parse("2026-11-25 10:00:00").unwrap().0;
        for k in 0..200i64 {
            for (sig, e) in [(3, k % 7), (9, k % 3)] {
                l.apply(&SignalEvent {
                    signal: SignalId(sig),
                    entity: EntityId(e as u64 * 1000),
                    user: None,
                    weight: 1.0 + (k % 4) as f64,
                    ts: Timestamp(t0 + (k * 7_919 % 200) * 600_000_000),
                });
            }
        }
        l
    }

    #[test]
    fn round_trip_preserves_every_read() {
        let l = sample();
        let mut e = Encoder::new();
        l.encode(&mut e);
        let bytes = e.into_inner();
        let mut d = Decoder::new(&bytes);
        let back = Ledger::decode(&mut d).unwrap();
        d.finish().unwrap();
        assert_eq!(back.active_pairs(), l.active_pairs());
        let mut e2 = Encoder::new();
        back.encode(&mut e2);
        assert_eq!(e2.buf, bytes, "re-encoding is byte-identical");
        let t0 = Timestamp::parse("2026-11-25 10:00:00").unwrap().0;
        for k in 0..7u64 {
            let id = EntityId(k * 1000);
            for at in [
                t0 - 1,
                t0 + 3_600_000_000,
                t0 + 40 * 3_600_000_000,
                t0 + 500 * 3_600_000_000,
            ] {
                let at = Timestamp(at);
                for sig in [SignalId(3), SignalId(9)] {
                    assert_eq!(
                        back.decay(sig, id, at).to_bits(),
                        l.decay(sig, id, at).to_bits()
                    );
                    for w in ["1h", "24h", "8d", "all"] {
                        let w = Window::parse(w).unwrap();
                        assert_eq!(
                            back.window_count(sig, id, w, at).to_bits(),
                            l.window_count(sig, id, w, at).to_bits()
                        );
                        assert_eq!(
                            back.acceleration(sig, id, w, at).to_bits(),
                            l.acceleration(sig, id, w, at).to_bits()
                        );
                    }
                }
            }
            assert_eq!(back.total(SignalId(3), id), l.total(SignalId(3), id));
            assert_eq!(back.last(SignalId(3), id), l.last(SignalId(3), id));
            assert_eq!(
                back.ordinal(EntityKind::Item, id),
                l.ordinal(EntityKind::Item, id)
            );
        }
    }

    #[test]
    fn truncated_or_corrupted_bytes_are_errors() {
        let l = sample();
        let mut e = Encoder::new();
        l.encode(&mut e);
        let bytes = e.into_inner();
        for cut in 0..bytes.len() {
            assert!(
                Ledger::decode(&mut Decoder::new(&bytes[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        for pos in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[pos] ^= flip;
                assert!(
                    Ledger::decode(&mut Decoder::new(&bad)).is_err(),
                    "flip {flip:#x} at {pos}"
                );
            }
        }
        assert!(Ledger::decode(&mut Decoder::new(&[])).is_err());
        assert!(Ledger::decode(&mut Decoder::new(b"TLDG\x01\0\0\0\xff\xff\xff\xff")).is_err());
    }

    #[test]
    fn empty_ledger_round_trips() {
        let mut e = Encoder::new();
        Ledger::new().encode(&mut e);
        let back = Ledger::decode(&mut Decoder::new(&e.buf)).unwrap();
        assert_eq!(back.active_pairs(), 0);
    }
}
