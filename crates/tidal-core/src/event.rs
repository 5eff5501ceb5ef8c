use crate::codec::{Decoder, Encoder};
use crate::time::MICROS_PER_MINUTE;
use crate::{CoreError, EntityId, SignalId, Timestamp};

/// An event may be at most this far ahead of the engine's clock (5 minutes).
pub const FUTURE_SKEW_MICROS_MAX: i64 = 5 * MICROS_PER_MINUTE;

/// One engagement event: `signal` happened to `entity` (by `user`) with `weight` at `ts`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalEvent {
    pub signal: SignalId,
    pub entity: EntityId,
    pub user: Option<EntityId>,
    pub weight: f64,
    pub ts: Timestamp,
}

impl SignalEvent {
    /// Encoded size in bytes; fixed so batches can be sized without encoding.
    pub const ENCODED_BYTES: usize = 4 + 8 + 1 + 8 + 8 + 8;

    /// Rejects non-finite weights and timestamps too far in the future.
    pub fn validate(&self, now: Timestamp) -> Result<(), CoreError> {
        if !self.weight.is_finite() {
            return Err(CoreError::NonFiniteWeight {
                weight: self.weight,
            });
        }
        if self.ts.0 > now.0.saturating_add(FUTURE_SKEW_MICROS_MAX) {
            return Err(CoreError::FutureTimestamp {
                ts: self.ts,
                now,
                skew_s: (FUTURE_SKEW_MICROS_MAX / 1_000_000) as u64,
            });
        }
        Ok(())
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u32(self.signal.0);
        e.u64(self.entity.0);
        match self.user {
            Some(u) => {
                e.u8(1);
                e.u64(u.0);
            }
            None => {
                e.u8(0);
                e.u64(0);
            }
        }
        e.f64(self.weight);
        e.i64(self.ts.0);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<SignalEvent, CoreError> {
        let signal = SignalId(d.u32()?);
        let entity = EntityId(d.u64()?);
        let has_user = d.u8()?;
        let user = d.u64()?;
        let user = match has_user {
            0 => None,
            1 => Some(EntityId(user)),
            _ => return Err(CoreError::Decode("bad user flag")),
        };
        Ok(SignalEvent {
            signal,
            entity,
            user,
            weight: d.f64()?,
            ts: Timestamp(d.i64()?),
        })
    }
}
