//! Entity ordinals: a dense `u32` per entity of one kind, assigned at the entity's first
//! event, so that per-signal state lives in plain ordinal-indexed columns and memory
//! follows activity, not catalogue size.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

use tidal_core::EntityId;

use crate::memory::{hash_map_bytes, reserve_one, vec_bytes};

/// Most entities of one kind the ledger tracks; events for further entities are ignored.
pub const ENTITIES_PER_KIND_MAX: usize = u32::MAX as usize;

/// An odd 64-bit constant (the golden ratio) for the folded multiply.
const HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// The 128-bit product of `a` and `b`, high half xor low half: every input bit reaches
/// both the low bits (bucket index) and the top bits (hashbrown's control tag).
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A fast, non-cryptographic hasher for integer keys (entity and signal ids).
///
/// Ids are not attacker-chosen hash-flooding material here: they are dense or at least
/// well spread database keys, and the ledger is never exposed to raw untrusted keys
/// without a statement in between.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = folded_multiply(self.0 ^ v, HASH_MULTIPLIER);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

/// `BuildHasher` for [`IdHasher`].
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// Ordinals of one entity kind: `EntityId → u32` and back.
#[derive(Debug, Clone, Default)]
pub(crate) struct OrdinalMap {
    map: HashMap<u64, u32, IdBuildHasher>,
    ids: Vec<EntityId>,
}

impl OrdinalMap {
    /// Rebuilds a map from ids in ordinal order; `None` if an id repeats.
    pub fn from_ids(ids: Vec<EntityId>) -> Option<OrdinalMap> {
        let mut map = HashMap::with_capacity_and_hasher(ids.len(), IdBuildHasher::default());
        for (ord, id) in ids.iter().enumerate() {
            if map.insert(id.0, ord as u32).is_some() {
                return None;
            }
        }
        Some(OrdinalMap { map, ids })
    }

    #[inline]
    pub fn get(&self, id: EntityId) -> Option<u32> {
        self.map.get(&id.0).copied()
    }

    /// The entity's ordinal, assigning the next one on first sight. `None` only when the
    /// kind already holds [`ENTITIES_PER_KIND_MAX`] entities.
    #[inline]
    pub fn get_or_insert(&mut self, id: EntityId) -> Option<u32> {
        let next = self.ids.len();
        match self.map.entry(id.0) {
            Entry::Occupied(o) => Some(*o.get()),
            Entry::Vacant(v) => {
                if next >= ENTITIES_PER_KIND_MAX {
                    return None;
                }
                v.insert(next as u32);
                reserve_one(&mut self.ids);
                self.ids.push(id);
                Some(next as u32)
            }
        }
    }

    /// Ids in ordinal order.
    pub fn ids(&self) -> &[EntityId] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Keeps the ordinals with `keep[ord]` (missing entries count as kept) and renumbers
    /// them densely in their old order. Returns old ordinal → new ordinal, `u32::MAX`
    /// for dropped ones.
    pub fn retain(&mut self, keep: &[bool]) -> Vec<u32> {
        let mut remap = Vec::with_capacity(self.ids.len());
        let mut ids = Vec::with_capacity(self.ids.len());
        for (ord, id) in self.ids.iter().enumerate() {
            if keep.get(ord).copied().unwrap_or(true) {
                remap.push(ids.len() as u32);
                ids.push(*id);
            } else {
                remap.push(u32::MAX);
            }
        }
        ids.shrink_to_fit();
        let mut map = HashMap::with_capacity_and_hasher(ids.len(), IdBuildHasher::default());
        for (ord, id) in ids.iter().enumerate() {
            map.insert(id.0, ord as u32);
        }
        *self = OrdinalMap { map, ids };
        remap
    }

    pub fn memory_bytes(&self) -> usize {
        hash_map_bytes(&self.map) + vec_bytes(&self.ids)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn ordinals_are_dense_and_stable() {
        let mut m = OrdinalMap::default();
        assert_eq!(m.get_or_insert(EntityId(42)), Some(0));
        assert_eq!(m.get_or_insert(EntityId(7)), Some(1));
        assert_eq!(m.get_or_insert(EntityId(42)), Some(0));
        assert_eq!(m.get(EntityId(7)), Some(1));
        assert_eq!(m.get(EntityId(8)), None);
        assert_eq!(m.ids(), &[EntityId(42), EntityId(7)]);
        let remap = m.retain(&[false, true]);
        assert_eq!(remap, vec![u32::MAX, 0]);
        assert_eq!(m.get(EntityId(7)), Some(0));
        assert_eq!(m.get(EntityId(42)), None);
        assert!(OrdinalMap::from_ids(vec![EntityId(1), EntityId(1)]).is_none());
    }

    #[test]
    fn hasher_spreads_strided_keys() {
        // Keys that share their low bits must still land in distinct buckets and carry
        // distinct control tags (top 7 bits).
        let b = IdBuildHasher::default();
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for i in 0..1024u64 {
            let h = b.hash_one(i << 20);
            low.insert(h & 1023);
            top.insert(h >> 57);
        }
        assert!(low.len() > 600, "{}", low.len());
        assert_eq!(top.len(), 128);
    }
}
