//! Frames: the checksummed unit of the log.
//!
//! ```text
//! frame   = [len u32 LE][len ^ 0xFFFF_FFFF u32 LE][blake3(payload) 32 bytes][payload: len bytes]
//! payload = [lsn u64 LE][txn u64 LE][kind u8][body]
//! ```
//!
//! In format-2 segments the kind byte's high bit marks the first frame of a write batch
//! (what recovery needs to tell a torn last batch from damage to a synced one).
//!
//! The inverted copy of the length makes a damaged length field detectable without reading
//! the payload, so recovery can tell "this frame was cut short by a crash" (the header is
//! intact but the file ends early) from "a length was flipped on disk" (the two copies
//! disagree). The checksum covers the payload; the length is covered implicitly because a
//! wrong length selects different payload bytes.
//!
//! A transaction's ops are encoded once as an *ops stream* `[op count u32][op]*` and that
//! stream is cut into the bodies of one or more `Data` frames (each payload at most
//! [`WAL_RECORD_BYTES_MAX`]); a transaction with no ops has no `Data` frame at all. The
//! transaction ends with a `Commit` frame whose body is `[arrival i64 LE]`.

use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{CoreError, Timestamp};

use crate::{Lsn, Op, WAL_RECORD_BYTES_MAX};

/// Bytes before the payload: two length fields and the BLAKE3 hash.
pub(crate) const FRAME_HEADER_BYTES: usize = 4 + 4 + 32;
/// Bytes of the payload before the body: lsn, txn and kind.
pub(crate) const PAYLOAD_PREFIX_BYTES: usize = 8 + 8 + 1;
/// Size of a Commit frame's body.
pub(crate) const COMMIT_BODY_BYTES: usize = 8;
/// Largest body of a Data frame, so that its payload fits [`WAL_RECORD_BYTES_MAX`].
pub(crate) const DATA_BODY_BYTES_MAX: usize = WAL_RECORD_BYTES_MAX - PAYLOAD_PREFIX_BYTES;
/// Whole size of a Commit frame.
pub(crate) const COMMIT_FRAME_BYTES: usize =
    FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES + COMMIT_BODY_BYTES;

const KIND_DATA: u8 = 1;
const KIND_COMMIT: u8 = 2;
/// Set in the kind byte of the first frame of every write batch (segment format 2), so
/// recovery can tell a batch that was torn by a crash from damage to a synced one.
const BATCH_START: u8 = 0x80;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A piece of a transaction's ops stream.
    Data,
    /// The end of a transaction, with its arrival time.
    Commit,
}

impl FrameKind {
    fn tag(self) -> u8 {
        match self {
            FrameKind::Data => KIND_DATA,
            FrameKind::Commit => KIND_COMMIT,
        }
    }
}

/// A frame decoded in place from a byte slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRef<'a> {
    pub lsn: Lsn,
    pub txn: u64,
    pub kind: FrameKind,
    pub body: &'a [u8],
    /// Size of the whole frame (header and payload) on disk.
    pub frame_bytes: usize,
    /// The first frame of a write batch (see [`append_txn`]).
    pub batch_start: bool,
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The bytes end before the frame does: fewer than a header, or a valid header whose
    /// payload runs past the end.
    Truncated,
    /// The two length copies disagree or the length is out of range.
    BadHeader,
    /// The header is consistent but the payload does not match its checksum.
    BadChecksum { frame_bytes: usize },
    /// The checksum matches but the payload is malformed (a writer bug, not disk damage).
    BadPayload(&'static str),
}

impl FrameError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            FrameError::Truncated => "frame runs past the end of the segment",
            FrameError::BadHeader => "frame length fields disagree",
            FrameError::BadChecksum { .. } => "frame checksum mismatch",
            FrameError::BadPayload(why) => why,
        }
    }
}

/// Whether a kind byte is a valid kind with the batch-start flag (a cheap filter before
/// a frame is decoded and hashed).
pub(crate) fn is_batch_start_kind(byte: u8) -> bool {
    byte & BATCH_START != 0 && matches!(byte & !BATCH_START, KIND_DATA | KIND_COMMIT)
}

/// Appends one frame to `buf`. The payload is written in place and hashed there, so no
/// temporary buffer is needed.
pub(crate) fn append_frame(
    buf: &mut Vec<u8>,
    lsn: Lsn,
    txn: u64,
    kind: FrameKind,
    body: &[u8],
    batch_start: bool,
) {
    let payload_len = PAYLOAD_PREFIX_BYTES + body.len();
    debug_assert!(payload_len <= WAL_RECORD_BYTES_MAX);
    let start = buf.len();
    buf.reserve(FRAME_HEADER_BYTES + payload_len);
    buf.resize(start + FRAME_HEADER_BYTES, 0);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&txn.to_le_bytes());
    buf.push(if batch_start {
        kind.tag() | BATCH_START
    } else {
        kind.tag()
    });
    buf.extend_from_slice(body);
    let hash = blake3::hash(&buf[start + FRAME_HEADER_BYTES..]);
    let len = payload_len as u32;
    let header = &mut buf[start..start + FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&(len ^ 0xFFFF_FFFF).to_le_bytes());
    header[8..40].copy_from_slice(hash.as_bytes());
}

/// Number of frames and bytes a transaction whose ops stream is `stream_bytes` long
/// occupies, when Data bodies are cut at `body_bytes_max`.
pub(crate) fn txn_frames(stream_bytes: usize, body_bytes_max: usize) -> (usize, usize) {
    debug_assert!(body_bytes_max > 0);
    let data_frames = stream_bytes.div_ceil(body_bytes_max);
    let bytes = data_frames * (FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES)
        + stream_bytes
        + COMMIT_FRAME_BYTES;
    (data_frames + 1, bytes)
}

/// Appends a whole transaction — its ops stream cut into Data frames of at most
/// `body_bytes_max` body bytes, then the Commit frame — with consecutive LSNs starting at
/// `first_lsn`. Returns the LSN of the Commit frame. `batch_start` flags its first frame
/// as the start of a write batch.
pub(crate) fn append_txn(
    buf: &mut Vec<u8>,
    first_lsn: Lsn,
    txn: u64,
    stream: &[u8],
    arrival: Timestamp,
    body_bytes_max: usize,
    batch_start: bool,
) -> Lsn {
    debug_assert!(body_bytes_max > 0 && body_bytes_max <= DATA_BODY_BYTES_MAX);
    let mut lsn = first_lsn;
    let mut first = batch_start;
    for chunk in stream.chunks(body_bytes_max) {
        append_frame(buf, lsn, txn, FrameKind::Data, chunk, first);
        first = false;
        lsn += 1;
    }
    let arrival = arrival.0.to_le_bytes();
    append_frame(buf, lsn, txn, FrameKind::Commit, &arrival, first);
    lsn
}

/// Decodes the frame at the start of `buf`, verifying lengths and checksum. Never panics,
/// whatever the bytes.
pub(crate) fn decode_frame(buf: &[u8]) -> Result<FrameRef<'_>, FrameError> {
    let header = buf.get(..FRAME_HEADER_BYTES).ok_or(FrameError::Truncated)?;
    let len = u32::from_le_bytes(le4(&header[0..4]));
    let inv = u32::from_le_bytes(le4(&header[4..8]));
    let len_usize = len as usize;
    if len ^ 0xFFFF_FFFF != inv
        || !(PAYLOAD_PREFIX_BYTES..=WAL_RECORD_BYTES_MAX).contains(&len_usize)
    {
        return Err(FrameError::BadHeader);
    }
    let frame_bytes = FRAME_HEADER_BYTES + len_usize;
    let payload = buf
        .get(FRAME_HEADER_BYTES..frame_bytes)
        .ok_or(FrameError::Truncated)?;
    if blake3::hash(payload).as_bytes() != &header[8..40] {
        return Err(FrameError::BadChecksum { frame_bytes });
    }
    let lsn = u64::from_le_bytes(le8(&payload[0..8]));
    let txn = u64::from_le_bytes(le8(&payload[8..16]));
    let batch_start = payload[16] & BATCH_START != 0;
    let kind = match payload[16] & !BATCH_START {
        KIND_DATA => FrameKind::Data,
        KIND_COMMIT => FrameKind::Commit,
        _ => return Err(FrameError::BadPayload("unknown frame kind")),
    };
    let body = &payload[PAYLOAD_PREFIX_BYTES..];
    match kind {
        FrameKind::Data if body.is_empty() => {
            return Err(FrameError::BadPayload("empty Data frame"));
        }
        FrameKind::Commit if body.len() != COMMIT_BODY_BYTES => {
            return Err(FrameError::BadPayload(
                "Commit frame body has the wrong size",
            ));
        }
        _ => {}
    }
    Ok(FrameRef {
        lsn,
        txn,
        kind,
        body,
        frame_bytes,
        batch_start,
    })
}

/// The arrival time carried by a Commit frame's body.
pub(crate) fn commit_arrival(body: &[u8]) -> Result<Timestamp, CoreError> {
    let mut d = Decoder::new(body);
    let arrival = Timestamp(d.i64()?);
    d.finish()?;
    Ok(arrival)
}

/// Encodes `ops` as an ops stream into `out` (cleared first), reusing its allocation.
pub(crate) fn encode_ops(ops: &[Op], out: &mut Vec<u8>) {
    out.clear();
    let mut e = Encoder {
        buf: std::mem::take(out),
    };
    if ops.is_empty() {
        // A transaction without ops has no Data frame; keep its stream empty.
        *out = e.buf;
        return;
    }
    debug_assert!(ops.len() <= u32::MAX as usize);
    e.u32(ops.len() as u32);
    for op in ops {
        op.encode(&mut e);
    }
    *out = e.buf;
}

/// Decodes an ops stream written by [`encode_ops`]; the empty stream is no ops.
pub(crate) fn decode_ops(stream: &[u8]) -> Result<Vec<Op>, CoreError> {
    if stream.is_empty() {
        return Ok(Vec::new());
    }
    let mut d = Decoder::new(stream);
    let n = d.u32()? as usize;
    // Every op takes at least one byte, which bounds the allocation by the data present.
    if n == 0 || n > d.remaining() {
        return Err(CoreError::Decode("op count does not match data"));
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(Op::decode(&mut d)?);
    }
    d.finish()?;
    Ok(ops)
}

fn le4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

fn le8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use tidal_core::{EntityId, EntityKind, SchemaChange, SignalEvent, SignalId, Value};

    pub(crate) fn arb_event() -> impl Strategy<Value = SignalEvent> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<Option<u64>>(),
            -1e12f64..1e12,
            any::<i64>(),
        )
            .prop_map(|(s, e, u, w, ts)| SignalEvent {
                signal: SignalId(s),
                entity: EntityId(e),
                user: u.map(EntityId),
                weight: w,
                ts: Timestamp(ts),
            })
    }

    fn arb_kind() -> impl Strategy<Value = EntityKind> {
        prop_oneof![
            Just(EntityKind::Item),
            Just(EntityKind::User),
            Just(EntityKind::Creator)
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            (-1e300f64..1e300).prop_map(Value::Double),
            (-1e30f32..1e30).prop_map(Value::Real),
            any::<bool>().prop_map(Value::Bool),
            ".{0,12}".prop_map(Value::Text),
            any::<i64>().prop_map(|t| Value::Timestamp(Timestamp(t))),
            proptest::collection::vec(".{0,6}", 0..4).prop_map(Value::TextArray),
            proptest::collection::vec(-1e6f32..1e6, 0..8).prop_map(Value::Vector),
        ]
    }

    pub(crate) fn arb_op() -> impl Strategy<Value = Op> {
        let row = || proptest::collection::vec(arb_value(), 0..6);
        prop_oneof![
            proptest::collection::vec(arb_event(), 0..12).prop_map(Op::Signals),
            (arb_kind(), any::<u64>(), row()).prop_map(|(kind, id, row)| Op::Insert {
                kind,
                id: EntityId(id),
                row
            }),
            (arb_kind(), any::<u64>(), row()).prop_map(|(kind, id, row)| Op::Upsert {
                kind,
                id: EntityId(id),
                row
            }),
            (arb_kind(), any::<u64>()).prop_map(|(kind, id)| Op::Delete {
                kind,
                id: EntityId(id)
            }),
            ("[a-z_]{1,20}", any::<u32>()).prop_map(|(name, id)| Op::Schema(
                SchemaChange::DropSignal {
                    name,
                    id: SignalId(id)
                }
            )),
            arb_kind().prop_map(|kind| Op::Schema(SchemaChange::DropTable { kind })),
        ]
    }

    /// Reads back every transaction in `buf` (frames only, no segment header).
    fn read_txns(buf: &[u8]) -> Vec<(Lsn, u64, Timestamp, Vec<Op>)> {
        let mut out = Vec::new();
        let mut stream = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let f = decode_frame(&buf[pos..]).unwrap();
            match f.kind {
                FrameKind::Data => stream.extend_from_slice(f.body),
                FrameKind::Commit => {
                    let ops = decode_ops(&stream).unwrap();
                    out.push((f.lsn, f.txn, commit_arrival(f.body).unwrap(), ops));
                    stream.clear();
                }
            }
            pos += f.frame_bytes;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Ops survive encode → frames → decode exactly, whether the stream is cut into one
        /// Data frame or many, and the predicted frame count and size are right.
        #[test]
        fn ops_round_trip_through_frames(
            txns in proptest::collection::vec(proptest::collection::vec(arb_op(), 0..6), 1..5),
            body_max in prop_oneof![Just(DATA_BODY_BYTES_MAX), 1usize..64],
            arrival in any::<i64>(),
        ) {
            let mut buf = Vec::new();
            let mut stream = Vec::new();
            let mut lsn = 1;
            let mut expected = Vec::new();
            for (i, ops) in txns.iter().enumerate() {
                encode_ops(ops, &mut stream);
                let (frames, bytes) = txn_frames(stream.len(), body_max);
                let before = buf.len();
                let commit = append_txn(&mut buf, lsn, i as u64 + 7, &stream, Timestamp(arrival), body_max, i % 2 == 0);
                prop_assert_eq!(buf.len() - before, bytes);
                prop_assert_eq!(commit - lsn + 1, frames as u64);
                expected.push((commit, i as u64 + 7, Timestamp(arrival), ops.clone()));
                lsn = commit + 1;
            }
            prop_assert_eq!(read_txns(&buf), expected);
        }

        /// Whatever the bytes, decoding a frame never panics.
        #[test]
        fn decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_frame(&bytes);
            let _ = decode_ops(&bytes);
        }
    }

    #[test]
    fn detects_damage() {
        let mut buf = Vec::new();
        append_frame(
            &mut buf,
            1,
            1,
            FrameKind::Commit,
            &5i64.to_le_bytes(),
            false,
        );
        assert_eq!(buf.len(), COMMIT_FRAME_BYTES);
        let f = decode_frame(&buf).unwrap();
        assert_eq!(
            (f.lsn, f.txn, f.kind, f.frame_bytes),
            (1, 1, FrameKind::Commit, buf.len())
        );
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut]).unwrap_err(),
                FrameError::Truncated
            );
        }
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let err = decode_frame(&b).unwrap_err();
            if bit < 64 {
                assert_eq!(err, FrameError::BadHeader, "bit {bit}");
            } else {
                assert!(
                    matches!(err, FrameError::BadChecksum { .. }),
                    "bit {bit}: {err:?}"
                );
            }
        }
        assert_eq!(decode_frame(&[0u8; 64]).unwrap_err(), FrameError::BadHeader);
    }
}
