//! Per-user preference vectors (SQL.md §7): `CREATE SIGNAL … PREFERENCE lr`.
//!
//! Each event of such a signal with a user moves that user's vector toward (or, with a
//! negative `lr · weight`, away from) the embedding of the event's item:
//!
//! ```text
//! p ← normalize(p + lr · weight · normalize(e))
//! ```
//!
//! with `p` the zero vector before the user's first move. The arithmetic is in f64 and
//! the result is stored as f32, as embeddings are. Edge cases, each a rule rather than
//! an error (a write must never fail on derived state):
//!
//! - an item without an embedding (no row, NULL, or a zero vector) moves nothing;
//! - an embedding whose dimension differs from the stored vector (the table was
//!   recreated with another `VECTOR(n)`) starts the user afresh from zero;
//! - a sum of zero length (a move that exactly cancels the vector) clears it: the user
//!   is back to "no preference", which reads as NULL;
//! - a step too large for f64 (`lr · weight` overflows) moves the vector to
//!   `±normalize(e)`, the limit of the formula.
//!
//! Where the vectors live: in the entity store's `preferences` keyspace, written in the
//! same atomic batch as the transaction's rows and its LSN (see `store.rs`). So the
//! vectors always cover exactly the LSN the store does, and replay after a crash reads
//! each item's embedding as it was when the event was first applied — which a
//! checkpointed in-memory map could not guarantee, because the store may be ahead of
//! the newest checkpoint. Memory follows activity: nothing is kept in RAM beyond
//! fjall's block cache; one vector of `4·n + 4` bytes per user who has moved.

use tidal_core::EntityId;

use crate::EngineError;

/// Where the encoding of a stored vector is described in errors.
const PREFERENCES_PATH: &str = "store/preferences";

/// `normalize(p + step · normalize(e))`, or `None` when the result has no direction.
/// `p` of another dimension than `e` counts as zero. `None` is also returned, with
/// `p` left as it was by the caller, when `e` has no direction: see [`moves`].
pub fn moved(p: Option<&[f32]>, e: &[f32], step: f64) -> Option<Vec<f32>> {
    let ne = norm(e.iter().map(|x| f64::from(*x)))?;
    let base = p.filter(|p| p.len() == e.len());
    let v: Vec<f64> = if step.is_finite() {
        e.iter()
            .enumerate()
            .map(|(i, x)| base.map_or(0.0, |p| f64::from(p[i])) + step * (f64::from(*x) / ne))
            .collect()
    } else {
        let sign = step.signum();
        e.iter().map(|x| sign * (f64::from(*x) / ne)).collect()
    };
    let nv = norm(v.iter().copied())?;
    Some(v.iter().map(|x| (x / nv) as f32).collect())
}

/// Whether an event on an item with embedding `e` and step `step` changes anything:
/// `e` must have a direction and the step must be non-zero.
pub fn moves(e: &[f32], step: f64) -> bool {
    step != 0.0 && !step.is_nan() && norm(e.iter().map(|x| f64::from(*x))).is_some()
}

/// The Euclidean length, computed without overflow; `None` for zero or non-finite.
fn norm(v: impl Iterator<Item = f64> + Clone) -> Option<f64> {
    let m = v.clone().fold(0.0f64, |m, x| m.max(x.abs()));
    if m == 0.0 || !m.is_finite() {
        return None;
    }
    let n = m * v.map(|x| (x / m) * (x / m)).sum::<f64>().sqrt();
    (n > 0.0 && n.is_finite()).then_some(n)
}

/// The stored form: `[dims u32 LE] [f32 LE × dims]`.
pub fn encode(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * v.len());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The inverse of [`encode`]; anything it would not have written is an error.
pub fn decode(user: EntityId, bytes: &[u8]) -> Result<Vec<f32>, EngineError> {
    let bad = |reason: &str| EngineError::CheckpointCorrupt {
        path: PREFERENCES_PATH.into(),
        reason: format!("vector of user {}: {reason}", user.0),
    };
    let (head, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("shorter than its header"))?;
    let dims = u32::from_le_bytes(*head) as usize;
    if body.len() != dims * 4 || dims == 0 {
        return Err(bad("length does not match its dimensions"));
    }
    let v: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(bad("has a non-finite component"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> f64 {
        v.iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn first_move_is_the_direction_of_the_step() {
        let e = [3.0f32, 4.0];
        let p = moved(None, &e, 0.1).unwrap();
        assert!((p[0] - 0.6).abs() < 1e-7 && (p[1] - 0.8).abs() < 1e-7);
        let away = moved(None, &e, -0.05).unwrap();
        assert!((away[0] + 0.6).abs() < 1e-7 && (away[1] + 0.8).abs() < 1e-7);
    }

    #[test]
    fn moves_follow_the_formula_and_stay_unit() {
        let p = moved(None, &[1.0, 0.0, 0.0], 1.0).unwrap();
        let q = moved(Some(&p), &[0.0, 2.0, 0.0], 0.5).unwrap();
        // normalize((1, 0, 0) + 0.5·(0, 1, 0)) = (1, 0.5, 0)/√1.25
        let n = 1.25f64.sqrt();
        assert!((f64::from(q[0]) - 1.0 / n).abs() < 1e-7);
        assert!((f64::from(q[1]) - 0.5 / n).abs() < 1e-7);
        assert!((unit(&q) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn edge_cases_are_rules() {
        // No direction in the embedding: nothing moves.
        assert!(!moves(&[0.0, 0.0], 1.0));
        assert!(moved(None, &[0.0, 0.0], 1.0).is_none());
        assert!(!moves(&[1.0], 0.0));
        // Exact cancellation clears the vector.
        let p = moved(None, &[1.0, 0.0], 1.0).unwrap();
        assert!(moved(Some(&p), &[1.0, 0.0], -1.0).is_none());
        // Another dimension starts afresh.
        let q = moved(Some(&p), &[0.0, 0.0, 5.0], 0.01).unwrap();
        assert_eq!(q, vec![0.0, 0.0, 1.0]);
        // Overflowing steps go to ±normalize(e); huge finite ones do not overflow.
        let r = moved(Some(&p), &[0.0, 2.0], f64::INFINITY).unwrap();
        assert_eq!(r, vec![0.0, 1.0]);
        let s = moved(Some(&p), &[0.0, 2.0], -1e300).unwrap();
        assert_eq!(s, vec![0.0, -1.0]);
        let t = moved(Some(&p), &[f32::MAX, f32::MAX], 1.0).unwrap();
        assert!((unit(&t) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn encoding_round_trips_and_refuses_damage() {
        let v = vec![0.25f32, -0.5, 1.0];
        let bytes = encode(&v);
        assert_eq!(decode(EntityId(1), &bytes).unwrap(), v);
        for n in 0..bytes.len() {
            assert!(
                decode(EntityId(1), &bytes[..n]).is_err(),
                "truncated to {n}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(EntityId(1), &longer).is_err());
        let mut nan = bytes.clone();
        nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode(EntityId(1), &nan).is_err());
        assert!(decode(EntityId(1), &encode(&[])).is_err());
    }
}
