//! Honest memory accounting and the growth policy for ledger vectors.
//!
//! The figures are estimates of what the allocator really hands out, not just the bytes
//! asked for: every heap block is charged a glibc-style 8-byte header, rounded up to 16
//! bytes, with a 32-byte minimum. Hash maps are charged for every bucket (hashbrown's
//! layout: one `(K, V)` slot plus one control byte per bucket, plus a 16-byte group tail).

use std::collections::HashMap;
use std::mem::size_of;

/// Bytes an allocator spends on a block of `n` requested bytes.
pub(crate) fn alloc_bytes(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (n.saturating_add(8 + 15) & !15).max(32)
}

/// Heap bytes behind a `Vec` (its capacity, not its length).
pub(crate) fn vec_bytes<T>(v: &Vec<T>) -> usize {
    alloc_bytes(v.capacity().saturating_mul(size_of::<T>()))
}

/// Heap bytes behind a std `HashMap` (hashbrown), derived from its capacity.
pub(crate) fn hash_map_bytes<K, V, S>(m: &HashMap<K, V, S>) -> usize {
    let cap = m.capacity();
    if cap == 0 {
        return 0;
    }
    // hashbrown keeps at most 7/8 of its buckets full (all but one below 8 buckets).
    let buckets = if cap < 8 {
        (cap + 1).next_power_of_two()
    } else {
        (cap.saturating_mul(8) / 7).next_power_of_two()
    };
    alloc_bytes(
        buckets
            .saturating_mul(size_of::<(K, V)>() + 1)
            .saturating_add(16),
    )
}

/// Grows `v` to `len` elements filled with `fill`, reserving a quarter more than needed
/// when it must reallocate: amortised O(1) pushes with at most ~25% slack, instead of
/// the 100% slack of plain doubling.
pub(crate) fn grow_to<T: Clone>(v: &mut Vec<T>, len: usize, fill: T) {
    if len <= v.len() {
        return;
    }
    if len > v.capacity() {
        let target = len.max(v.capacity() + v.capacity() / 4).max(8);
        v.reserve_exact(target - v.len());
    }
    v.resize(len, fill);
}

/// Makes room for one more element in `v` with the same 25% growth policy.
pub(crate) fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_footprint() {
        assert_eq!(alloc_bytes(0), 0);
        assert_eq!(alloc_bytes(1), 32);
        assert_eq!(alloc_bytes(24), 32);
        assert_eq!(alloc_bytes(25), 48);
        assert_eq!(alloc_bytes(100), 112);
    }

    #[test]
    fn hash_map_estimate_tracks_capacity() {
        let mut m: HashMap<u64, u32> = HashMap::new();
        assert_eq!(hash_map_bytes(&m), 0);
        for i in 0..1000 {
            m.insert(i, i as u32);
        }
        // 1000 entries need 1024 or 2048 buckets of 17 bytes.
        let b = hash_map_bytes(&m);
        assert!((1024 * 17..=2048 * 17 + 64).contains(&b), "{b}");
    }

    #[test]
    fn growth_is_a_quarter() {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..10_000 {
            grow_to(&mut v, i + 1, 0);
        }
        assert!(v.capacity() <= 10_000 * 5 / 4 + 8, "{}", v.capacity());
    }
}
