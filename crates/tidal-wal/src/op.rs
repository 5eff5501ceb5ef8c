use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{
    CoreError, EntityId, EntityKind, Row, SchemaChange, SignalEvent, Timestamp, decode_row,
    encode_row,
};

use crate::Lsn;

/// One mutation inside a transaction.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Op {
    /// Signal events (deduplicated by the writer before they are written).
    Signals(Vec<SignalEvent>),
    /// Insert a row that must not exist yet (checked by `Applier::prepare`).
    Insert {
        kind: EntityKind,
        id: EntityId,
        row: Row,
    },
    /// Insert or replace a whole row.
    Upsert {
        kind: EntityKind,
        id: EntityId,
        row: Row,
    },
    /// Delete a row (no error if absent).
    Delete { kind: EntityKind, id: EntityId },
    /// A schema change (already validated by the engine).
    Schema(SchemaChange),
    /// Add the edge `src → dst` to relationship `rel` (its id); an existing edge stays
    /// as it is, `created_at` included.
    EdgeInsert {
        rel: u64,
        src: EntityId,
        dst: EntityId,
        created_at: Timestamp,
    },
    /// Remove the edge `src → dst` of relationship `rel` (no error if absent).
    EdgeDelete {
        rel: u64,
        src: EntityId,
        dst: EntityId,
    },
}

/// A transaction as read back from the log (or just made durable).
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedTxn {
    /// LSN of the Commit frame: the transaction's position in the log.
    pub lsn: Lsn,
    pub txn: u64,
    /// Writer clock time when the batch was formed (monotonic across restarts).
    pub arrival: Timestamp,
    pub ops: Vec<Op>,
}

impl Op {
    /// Number of signal events in this op (0 for entity and schema ops).
    pub fn event_count(&self) -> usize {
        match self {
            Op::Signals(v) => v.len(),
            _ => 0,
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        match self {
            Op::Signals(events) => {
                e.u8(1);
                e.u32(events.len() as u32);
                for ev in events {
                    ev.encode(e);
                }
            }
            Op::Insert { kind, id, row } => {
                e.u8(2);
                e.u8(kind.tag());
                e.u64(id.0);
                encode_row(row, e);
            }
            Op::Upsert { kind, id, row } => {
                e.u8(3);
                e.u8(kind.tag());
                e.u64(id.0);
                encode_row(row, e);
            }
            Op::Delete { kind, id } => {
                e.u8(4);
                e.u8(kind.tag());
                e.u64(id.0);
            }
            Op::Schema(change) => {
                e.u8(5);
                change.encode(e);
            }
            Op::EdgeInsert {
                rel,
                src,
                dst,
                created_at,
            } => {
                e.u8(6);
                e.u64(*rel);
                e.u64(src.0);
                e.u64(dst.0);
                e.i64(created_at.0);
            }
            Op::EdgeDelete { rel, src, dst } => {
                e.u8(7);
                e.u64(*rel);
                e.u64(src.0);
                e.u64(dst.0);
            }
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<Op, CoreError> {
        let kind = |d: &mut Decoder<'_>| {
            EntityKind::from_tag(d.u8()?).ok_or(CoreError::Decode("bad entity kind"))
        };
        Ok(match d.u8()? {
            1 => {
                let n = d.u32()? as usize;
                if n > d.remaining() / SignalEvent::ENCODED_BYTES {
                    return Err(CoreError::Decode("event count exceeds data"));
                }
                let mut events = Vec::with_capacity(n);
                for _ in 0..n {
                    events.push(SignalEvent::decode(d)?);
                }
                Op::Signals(events)
            }
            2 => Op::Insert {
                kind: kind(d)?,
                id: EntityId(d.u64()?),
                row: decode_row(d)?,
            },
            3 => Op::Upsert {
                kind: kind(d)?,
                id: EntityId(d.u64()?),
                row: decode_row(d)?,
            },
            4 => Op::Delete {
                kind: kind(d)?,
                id: EntityId(d.u64()?),
            },
            5 => Op::Schema(SchemaChange::decode(d)?),
            6 => Op::EdgeInsert {
                rel: d.u64()?,
                src: EntityId(d.u64()?),
                dst: EntityId(d.u64()?),
                created_at: Timestamp(d.i64()?),
            },
            7 => Op::EdgeDelete {
                rel: d.u64()?,
                src: EntityId(d.u64()?),
                dst: EntityId(d.u64()?),
            },
            _ => return Err(CoreError::Decode("unknown op tag")),
        })
    }
}
