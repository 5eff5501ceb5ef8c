//! Recovery: scan every segment, verify it, repair a torn tail, replay into the applier.
//!
//! Each segment is read whole into one reused buffer (segments are bounded by
//! [`crate::WAL_SEGMENT_BYTES_MAX`] plus one batch) and frames are decoded in place; a
//! transaction's ops are decoded straight from its Data frame, and only a transaction
//! split over several frames is copied into a scratch buffer first.
//!
//! What is checked: segment headers (magic, version, checksum, LSN matching the file
//! name, and the LSN / transaction / arrival counters continuing from the previous
//! segment), every frame's length and checksum, dense LSNs, dense transaction ids, a
//! transaction's frames sharing its id, arrivals never decreasing, and ops decoding
//! exactly. A damaged frame is a *torn tail* only in the last segment, and only when
//! nothing but zero bytes follows it (or it runs past the end of the file), or — in
//! format-2 segments, whose first frame of every write batch is flagged — when it looks
//! torn (a sector of it reads as the zeros written ahead) and no frame after it starts a
//! batch: only the last batch can be partly on disk (each is synced before the next is
//! written), with its pages in any order. Then the file is cut back to the end of the
//! last committed transaction. Anything else is [`WalError::Corrupt`]. The last segment
//! is fsynced before recovery returns.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use tidal_core::{SignalEvent, Timestamp};

use crate::dedup::Dedup;
use crate::frame::{self, FRAME_HEADER_BYTES, FrameError, FrameKind};
use crate::segment::{self, SEGMENT_HEADER_BYTES, SegmentHeader, SegmentInfo};
use crate::{Applier, CommittedTxn, Lsn, Op, WalError};

/// The state the writer continues from.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Every segment in LSN order; the last one is where new batches are appended.
    pub segments: Vec<SegmentInfo>,
    pub last_lsn: Lsn,
    pub next_txn: u64,
    /// Arrival of the last committed transaction ([`Timestamp::MIN`] if none).
    pub last_arrival: Timestamp,
    /// Rebuilt as of `max(last_arrival, now)`; the first new batch must not arrive earlier.
    pub dedup: Dedup,
    /// Transactions handed to the applier.
    pub txns_replayed: u64,
    /// Bytes of segment files read.
    pub bytes_read: u64,
}

/// Where a damaged or unfinished tail begins.
struct Torn {
    offset: usize,
    reason: &'static str,
}

/// The reason of a "torn" tail that is only the zeros the writer wrote ahead.
const PREALLOCATED: &str = "preallocated zeros";
/// The reason of a torn tail whose later pages reached disk before an earlier one.
const TORN_BATCH: &str = "damaged frame in the last write batch, later pages of it on disk";

/// The unit a torn write shows in. A sector the crash kept this writer from writing
/// reads as zeros (the writer zero-fills ahead of the log, and a file's new end reads as
/// zeros), so damage from a torn batch includes an all-zero sector; a flipped bit does not.
const SECTOR_BYTES: usize = 512;
/// How far after a damaged frame the next batch's first frame can start: at most one
/// batch (which may overshoot its byte bound by one transaction) away.
const TORN_SCAN_BYTES_MAX: usize =
    crate::WAL_BATCH_BYTES_MAX + crate::WAL_TXN_BYTES_MAX + 2 * FRAME_HEADER_BYTES;
/// Checksums the scan for a later batch may compute; past that it gives up (and the
/// damage is reported, not cut), so data that mimics frame headers cannot make recovery
/// hash for hours.
const TORN_SCAN_HASHES_MAX: usize = 4096;

/// Whether the damaged frame at `pos` (at most `extent` bytes long) looks like a torn
/// write: the rest of its first sector from `pos` on is zeros (a legitimate frame's
/// length fields are never zero, and one flipped bit cannot zero them), or a whole sector
/// within it is.
fn looks_torn(buf: &[u8], pos: usize, extent: usize) -> bool {
    let end = pos.saturating_add(extent).min(buf.len());
    let head_end = (pos / SECTOR_BYTES + 1) * SECTOR_BYTES;
    if let Some(head) = buf.get(pos..head_end.min(buf.len()))
        && head.len() >= 8
        && all_zero(head)
    {
        return true;
    }
    let mut k = pos.div_ceil(SECTOR_BYTES);
    while (k + 1) * SECTOR_BYTES <= end {
        if buf
            .get(k * SECTOR_BYTES..(k + 1) * SECTOR_BYTES)
            .is_some_and(all_zero)
        {
            return true;
        }
        k += 1;
    }
    false
}

/// Whether a frame that starts a write batch decodes within one batch after `from` (at
/// any byte offset: nothing says where the next whole frame begins): `Some(true)` if
/// one does, `Some(false)` if none does, `None` if the scan gave up. Only run on a
/// damaged tail. Candidates are filtered on their kind byte before being hashed.
fn batch_starts_after(buf: &[u8], from: usize) -> Option<bool> {
    let end = buf.len().min(from.saturating_add(TORN_SCAN_BYTES_MAX));
    let mut hashes = 0usize;
    for at in from..end.saturating_sub(FRAME_HEADER_BYTES) {
        let kind = at + FRAME_HEADER_BYTES + 16;
        let flagged = buf
            .get(kind)
            .is_some_and(|&k| frame::is_batch_start_kind(k));
        if !flagged {
            continue;
        }
        hashes += 1;
        if hashes > TORN_SCAN_HASHES_MAX {
            return None;
        }
        if buf
            .get(at..)
            .and_then(|rest| frame::decode_frame(rest).ok())
            .is_some_and(|f| f.batch_start)
        {
            return Some(true);
        }
    }
    Some(false)
}

/// Scans the log in `dir`, creating the first segment if there is none.
///
/// The dedup set is rebuilt as it must be for the first new batch, whose arrival is at
/// least `max(last arrival, now)`: events already out of the window then are skipped.
/// Logs per-segment replay progress when the log is at least this large.
pub const RECOVERY_PROGRESS_BYTES_MIN: u64 = 64 << 20;

pub(crate) fn recover<A: Applier>(
    dir: &Path,
    applier: &mut A,
    now: Timestamp,
    dedup_window_micros: i64,
    dedup_entries_max: usize,
) -> Result<Recovered, WalError> {
    let files = segment::list_segments(dir)?;
    let mut scan = Scan {
        applier,
        expect: None,
        next_txn: 1,
        last_arrival: Timestamp::MIN,
        recent: RecentEvents::new(dedup_window_micros, dedup_entries_max),
        stream: Vec::new(),
        bodies: Vec::new(),
        txns: 0,
    };
    let mut segments = Vec::with_capacity(files.len().max(1));
    let mut buf = Vec::new();
    let mut bytes_read = 0u64;
    // Replaying a large log takes a while: say how far along it is, per segment.
    let bytes_total: u64 = files
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let report = bytes_total >= RECOVERY_PROGRESS_BYTES_MIN;
    let started = std::time::Instant::now();
    if report {
        tracing::info!(
            segments = files.len(),
            mib = bytes_total >> 20,
            "replaying the WAL"
        );
    }
    for (i, (first_lsn, path)) in files.iter().enumerate() {
        buf.clear();
        File::open(path)?.read_to_end(&mut buf)?;
        bytes_read += buf.len() as u64;
        let is_last = i + 1 == files.len();
        segments.push(scan.segment(&buf, path, *first_lsn, is_last)?);
        if report {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rate = bytes_read as f64 / secs;
            let left = bytes_total.saturating_sub(bytes_read) as f64;
            tracing::info!(
                segment = i + 1,
                of = files.len(),
                percent = (bytes_read * 100 / bytes_total.max(1)).min(100),
                txns = scan.txns,
                mib_per_s = (rate / (1u64 << 20) as f64) as u64,
                eta_s = (left / rate.max(1.0)) as u64,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "WAL replay progress"
            );
        }
    }
    if segments.is_empty() {
        let header = SegmentHeader {
            first_lsn: 1,
            first_txn: 1,
            prev_arrival: Timestamp::MIN,
        };
        segment::create_segment(dir, header)?;
        segments.push(SegmentInfo {
            path: dir.join(segment::segment_file_name(1)),
            first_lsn: 1,
            last_lsn: 0,
            last_arrival: None,
            bytes: SEGMENT_HEADER_BYTES as u64,
            batch_flags: true,
        });
    }
    scan.applier.batch_done();
    // What was replayed from the last segment may have been read from the page cache
    // only (the process was killed before the batch's fsync returned): make it durable
    // before anything built on it — a checkpoint, an acknowledgement — can be.
    if let Some(last) = segments.last() {
        File::open(&last.path)?.sync_all()?;
    }
    let last_lsn = segments.last().map_or(0, |s| s.last_lsn);
    let horizon = scan.last_arrival.max(now);
    let dedup = Dedup::rebuild(
        dedup_window_micros,
        dedup_entries_max,
        scan.recent.txns.make_contiguous(),
        horizon,
    )?;
    Ok(Recovered {
        segments,
        last_lsn,
        next_txn: scan.next_txn,
        last_arrival: scan.last_arrival,
        dedup,
        txns_replayed: scan.txns,
        bytes_read,
    })
}

/// The state carried from one segment to the next.
struct Scan<'a, A: Applier> {
    applier: &'a mut A,
    /// The header the next segment must have; `None` before the first segment.
    expect: Option<SegmentHeader>,
    next_txn: u64,
    last_arrival: Timestamp,
    recent: RecentEvents,
    /// Scratch for the ops stream of a transaction split over several Data frames.
    stream: Vec<u8>,
    /// Body ranges (in the segment buffer) of the open transaction's Data frames.
    bodies: Vec<Range<usize>>,
    txns: u64,
}

impl<A: Applier> Scan<'_, A> {
    /// Verifies and replays one segment, repairing it if it is the last and torn.
    fn segment(
        &mut self,
        buf: &[u8],
        path: &Path,
        name_lsn: Lsn,
        is_last: bool,
    ) -> Result<SegmentInfo, WalError> {
        let name = file_name(path);
        let corrupt = |offset: usize, reason: &str| WalError::Corrupt {
            segment: name.clone(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        let header = match SegmentHeader::decode(buf, name_lsn) {
            Ok(h) => h,
            Err(reason) => return self.repair_header(buf, path, name_lsn, is_last, reason),
        };
        if self.expect.is_some_and(|expect| header != expect) {
            return Err(corrupt(0, "segment does not continue the previous one"));
        }
        self.next_txn = header.first_txn;
        self.last_arrival = header.prev_arrival;
        let mut next_lsn = header.first_lsn;
        let batch_flags = segment::format_version(buf) >= 2;
        let mut info = SegmentInfo {
            path: path.to_path_buf(),
            first_lsn: header.first_lsn,
            last_lsn: header.first_lsn.wrapping_sub(1),
            last_arrival: None,
            bytes: buf.len() as u64,
            batch_flags,
        };
        let mut pos = SEGMENT_HEADER_BYTES;
        // Offset of the first Data frame of a transaction whose Commit is not seen yet.
        let mut open: Option<usize> = None;
        self.bodies.clear();
        let torn = loop {
            let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) else {
                break open.map(|offset| Torn {
                    offset,
                    reason: "transaction without Commit",
                });
            };
            let f = match frame::decode_frame(rest) {
                Ok(f) => f,
                Err(e) => {
                    let zero_from = match e {
                        FrameError::Truncated => buf.len(),
                        FrameError::BadHeader => pos + FRAME_HEADER_BYTES,
                        FrameError::BadChecksum { frame_bytes } => pos + frame_bytes,
                        FrameError::BadPayload(_) => return Err(corrupt(pos, e.reason())),
                    };
                    if is_last && all_zero(buf.get(zero_from..).unwrap_or_default()) {
                        // Zeros right after a whole transaction are the writer's
                        // preallocated space, not damage.
                        if open.is_none() && all_zero(buf.get(pos..).unwrap_or_default()) {
                            break Some(Torn {
                                offset: pos,
                                reason: PREALLOCATED,
                            });
                        }
                        break Some(Torn {
                            offset: open.unwrap_or(pos),
                            reason: e.reason(),
                        });
                    }
                    // Valid frames follow the damage. Only the last batch can be partly
                    // on disk (each is synced before the next is written), in any order
                    // of its pages: if no frame after the damage starts a batch, the
                    // damage is in the last batch, which was never acknowledged.
                    let extent = match e {
                        FrameError::BadChecksum { frame_bytes } => frame_bytes,
                        _ => SECTOR_BYTES,
                    };
                    if is_last
                        && batch_flags
                        && looks_torn(buf, pos, extent)
                        && batch_starts_after(buf, pos + 1) == Some(false)
                    {
                        break Some(Torn {
                            offset: open.unwrap_or(pos),
                            reason: TORN_BATCH,
                        });
                    }
                    return Err(corrupt(pos, e.reason()));
                }
            };
            if f.lsn != next_lsn {
                return Err(corrupt(pos, "LSN out of sequence"));
            }
            if f.batch_start && !batch_flags {
                return Err(corrupt(pos, "batch flag in a format-1 segment"));
            }
            if f.txn != self.next_txn {
                return Err(corrupt(pos, "transaction id out of sequence"));
            }
            let body_start = pos + FRAME_HEADER_BYTES + frame::PAYLOAD_PREFIX_BYTES;
            match f.kind {
                FrameKind::Data => {
                    open.get_or_insert(pos);
                    self.bodies.push(body_start..body_start + f.body.len());
                }
                FrameKind::Commit => {
                    let arrival =
                        frame::commit_arrival(f.body).map_err(|e| corrupt(pos, &e.to_string()))?;
                    if arrival < self.last_arrival {
                        return Err(corrupt(pos, "arrival time went backwards"));
                    }
                    let ops = self
                        .ops(buf)
                        .map_err(|e| corrupt(open.unwrap_or(pos), &e.to_string()))?;
                    self.replay(CommittedTxn {
                        lsn: f.lsn,
                        txn: f.txn,
                        arrival,
                        ops,
                    })?;
                    open = None;
                    info.last_lsn = f.lsn;
                    info.last_arrival = Some(arrival);
                }
            }
            next_lsn = next_lsn.wrapping_add(1);
            pos += f.frame_bytes;
        };
        if let Some(torn) = torn {
            if !is_last {
                return Err(corrupt(torn.offset, torn.reason));
            }
            if torn.reason == PREALLOCATED {
                tracing::debug!(segment = %name, offset = torn.offset, "cutting the WAL's preallocated tail");
            } else {
                tracing::warn!(
                    segment = %name,
                    offset = torn.offset,
                    reason = torn.reason,
                    "truncating torn tail of the WAL"
                );
            }
            segment::truncate_segment(path, torn.offset as u64)?;
            info.bytes = torn.offset as u64;
        }
        self.expect = Some(SegmentHeader {
            first_lsn: info.last_lsn.wrapping_add(1),
            first_txn: self.next_txn,
            prev_arrival: self.last_arrival,
        });
        Ok(info)
    }

    /// A segment whose header is unreadable is a crash during its creation only if it is
    /// the last one and holds nothing but zeros after the header; then the header can be
    /// rebuilt from the previous segment (or, for the first segment of a new log, from
    /// nothing).
    fn repair_header(
        &mut self,
        buf: &[u8],
        path: &Path,
        name_lsn: Lsn,
        is_last: bool,
        reason: &'static str,
    ) -> Result<SegmentInfo, WalError> {
        let header = match self.expect {
            Some(h) if h.first_lsn == name_lsn => Some(h),
            None if name_lsn == 1 => Some(SegmentHeader {
                first_lsn: 1,
                first_txn: 1,
                prev_arrival: Timestamp::MIN,
            }),
            _ => None,
        };
        let empty = all_zero(buf.get(SEGMENT_HEADER_BYTES..).unwrap_or_default());
        let Some(header) = header.filter(|_| is_last && empty) else {
            return Err(WalError::Corrupt {
                segment: file_name(path),
                offset: 0,
                reason: reason.to_string(),
            });
        };
        tracing::warn!(segment = %file_name(path), reason, "rewriting torn WAL segment header");
        segment::rewrite_empty_segment(path, header)?;
        self.expect = Some(header);
        Ok(SegmentInfo {
            path: path.to_path_buf(),
            first_lsn: header.first_lsn,
            last_lsn: header.first_lsn.wrapping_sub(1),
            last_arrival: None,
            bytes: SEGMENT_HEADER_BYTES as u64,
            // Rewritten with the current format.
            batch_flags: true,
        })
    }

    /// Decodes the open transaction's ops from its Data frame bodies.
    fn ops(&mut self, buf: &[u8]) -> Result<Vec<Op>, tidal_core::CoreError> {
        let ops = match self.bodies.as_slice() {
            [] => Vec::new(),
            [one] => frame::decode_ops(buf.get(one.clone()).unwrap_or_default())?,
            many => {
                self.stream.clear();
                for r in many {
                    self.stream
                        .extend_from_slice(buf.get(r.clone()).unwrap_or_default());
                }
                frame::decode_ops(&self.stream)?
            }
        };
        self.bodies.clear();
        Ok(ops)
    }

    fn replay(&mut self, txn: CommittedTxn) -> Result<(), WalError> {
        self.applier.apply(&txn).map_err(|e| WalError::Apply {
            lsn: txn.lsn,
            source: Box::new(e),
        })?;
        self.txns += 1;
        self.next_txn = txn.txn.wrapping_add(1);
        self.last_arrival = txn.arrival;
        self.recent.push(txn.arrival, txn.ops);
        Ok(())
    }
}

/// Signal events recent enough that they may still be in the dedup window at the end of
/// the log. Arrivals never decrease, so anything a full window older than the newest
/// arrival seen so far can be dropped; the count is bounded like the dedup set itself.
struct RecentEvents {
    window_micros: i64,
    entries_max: usize,
    txns: VecDeque<(Timestamp, Vec<SignalEvent>)>,
    events: usize,
}

impl RecentEvents {
    fn new(window_micros: i64, entries_max: usize) -> RecentEvents {
        RecentEvents {
            window_micros,
            entries_max,
            txns: VecDeque::new(),
            events: 0,
        }
    }

    fn push(&mut self, arrival: Timestamp, ops: Vec<Op>) {
        for op in ops {
            if let Op::Signals(events) = op
                && !events.is_empty()
            {
                self.events += events.len();
                self.txns.push_back((arrival, events));
            }
        }
        while let Some((a, events)) = self.txns.front() {
            let expired = arrival.0.saturating_sub(a.0) >= self.window_micros;
            if !expired && self.events - events.len() < self.entries_max {
                break;
            }
            self.events -= events.len();
            self.txns.pop_front();
        }
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use tidal_core::ManualClock;

    use super::*;
    use crate::WalOptions;
    use crate::testutil::*;

    /// Writes `n` transactions (one batch each), closing and measuring the last segment
    /// before the final one. Returns the transactions and the length of the last segment
    /// before the final transaction was appended.
    fn build(
        dir: &Path,
        clock: &ManualClock,
        n: u64,
        segment_bytes_max: u64,
    ) -> (Vec<CommittedTxn>, u64) {
        let mut opts = options(dir, clock);
        opts.segment_bytes_max = segment_bytes_max;
        let (wal, applied) = open(opts.clone());
        for i in 0..n - 1 {
            clock.advance_micros(1_000);
            wal.commit(txn(i * 10)).unwrap();
        }
        wal.close().unwrap();
        let (wal, _) = open(opts);
        let before = fs::metadata(segments(dir).last().unwrap()).unwrap().len();
        clock.advance_micros(1_000);
        wal.commit(txn(n * 10)).unwrap();
        let mut all = applied.lock().unwrap().clone();
        wal.close().unwrap();
        let (_, last) = {
            let (wal, applied) = open(options(dir, clock));
            wal.close().unwrap();
            ((), applied.lock().unwrap().last().cloned().unwrap())
        };
        all.push(last);
        (all, before)
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        segments(dir)
            .into_iter()
            .map(|p| (p.clone(), fs::read(p).unwrap()))
            .collect()
    }

    /// Restores `files` (taken from another directory) into `dir`, removing other segments.
    fn restore(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
        for p in segments(dir) {
            fs::remove_file(p).unwrap();
        }
        for (p, bytes) in files {
            fs::write(dir.join(p.file_name().unwrap()), bytes).unwrap();
        }
    }

    fn opts_for(dir: &Path, clock: &ManualClock) -> WalOptions {
        options(dir, clock)
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_transaction() {
        // Same segment as the earlier transactions, and alone in a segment of its own (so
        // cuts inside the segment header are covered as well).
        for segment_bytes_max in [crate::WAL_SEGMENT_BYTES_MAX, 1] {
            let src = tempfile::tempdir().unwrap();
            let clock = clock();
            let (txns, before) = build(src.path(), &clock, 4, segment_bytes_max);
            let files = snapshot(src.path());
            let (last_path, last_bytes) = files.last().unwrap().clone();
            let name = last_path.file_name().unwrap();
            let work = tempfile::tempdir().unwrap();
            // Alone in its segment, the last transaction starts right after the header.
            let (start, kept) = if segment_bytes_max == 1 {
                (0, SEGMENT_HEADER_BYTES as u64)
            } else {
                (before as usize, before)
            };
            for cut in start..last_bytes.len() {
                restore(work.path(), &files);
                fs::write(work.path().join(name), &last_bytes[..cut]).unwrap();
                let got = replay(opts_for(work.path(), &clock)).unwrap();
                assert_eq!(got, txns[..3], "cut at {cut}");
                let len = fs::metadata(work.path().join(name)).unwrap().len();
                assert_eq!(len, kept, "cut at {cut}");
            }
            // The repaired log takes new writes where the old tail was.
            let (wal, _) = open(opts_for(work.path(), &clock));
            let c = wal.commit(txn(77)).unwrap();
            assert_eq!(c.lsn, txns[2].lsn + 2);
            wal.close().unwrap();
            assert_eq!(replay(opts_for(work.path(), &clock)).unwrap().len(), 4);
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let src = tempfile::tempdir().unwrap();
        let clock = clock();
        let (txns, before) = build(src.path(), &clock, 4, crate::WAL_SEGMENT_BYTES_MAX);
        let files = snapshot(src.path());
        let (path, bytes) = files[0].clone();
        let work = tempfile::tempdir().unwrap();
        // Zeros from any offset of the last transaction to the end, and beyond it as a
        // preallocated file would look. Zeroing bytes that were zero already (the top byte
        // of the arrival, say) leaves the transaction whole.
        for from in before as usize..=bytes.len() {
            for extra in [0usize, 4096] {
                let mut damaged = bytes.clone();
                damaged[from..].fill(0);
                let intact = damaged == bytes;
                damaged.resize(bytes.len() + extra, 0);
                restore(work.path(), &[(path.clone(), damaged)]);
                let (want, len) = if intact {
                    (&txns[..], bytes.len() as u64)
                } else {
                    (&txns[..3], before)
                };
                let got = replay(opts_for(work.path(), &clock)).unwrap();
                assert_eq!(got, want, "zeros from {from} + {extra}");
                let name = path.file_name().unwrap();
                assert_eq!(fs::metadata(work.path().join(name)).unwrap().len(), len);
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_reported_or_loses_only_the_last_transaction() {
        let src = tempfile::tempdir().unwrap();
        let clock = clock();
        // About three transactions per segment, so sealed segments are damaged too.
        let (txns, _) = build(src.path(), &clock, 7, 600);
        let files = snapshot(src.path());
        assert!(files.len() >= 2);
        let work = tempfile::tempdir().unwrap();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut outcomes = [0usize; 2];
        for (f, (_, bytes)) in files.iter().enumerate() {
            for byte in 0..bytes.len() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut damaged = files.clone();
                damaged[f].1[byte] ^= 1 << (rng % 8);
                restore(work.path(), &damaged);
                match replay(opts_for(work.path(), &clock)) {
                    Err(WalError::Corrupt { .. }) => outcomes[0] += 1,
                    Err(e) => panic!("file {f} byte {byte}: unexpected error {e}"),
                    Ok(got) => {
                        outcomes[1] += 1;
                        assert!(
                            got.len() + 1 >= txns.len(),
                            "file {f} byte {byte}: lost {got:?}"
                        );
                        assert_eq!(got, txns[..got.len()], "file {f} byte {byte}");
                    }
                }
            }
        }
        // Exactly the flips in the last Commit frame's checksum and payload pass as a torn
        // tail (a flip in its length fields is caught by the inverted copy; a flip
        // elsewhere in the last batch leaves no zero sector, so it is no torn write).
        assert_eq!(
            outcomes[1],
            crate::frame::COMMIT_FRAME_BYTES - 8,
            "{outcomes:?}"
        );
    }

    #[test]
    fn damage_before_the_tail_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let clock = clock();
        let (_, _) = build(src.path(), &clock, 4, crate::WAL_SEGMENT_BYTES_MAX);
        let files = snapshot(src.path());
        let (path, bytes) = files[0].clone();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let work = tempfile::tempdir().unwrap();
        let corrupt_at = |damaged: Vec<u8>| -> (String, u64) {
            restore(work.path(), &[(path.clone(), damaged)]);
            match replay(opts_for(work.path(), &clock)) {
                Err(WalError::Corrupt {
                    segment, offset, ..
                }) => (segment, offset),
                other => panic!("expected corruption, got {other:?}"),
            }
        };
        // A flipped payload byte in the first transaction's Data frame.
        let mut damaged = bytes.clone();
        damaged[SEGMENT_HEADER_BYTES + 60] ^= 0x10;
        assert_eq!(
            corrupt_at(damaged),
            (name.clone(), SEGMENT_HEADER_BYTES as u64)
        );
        // Zeros in the middle of the log, followed by valid frames.
        let mut damaged = bytes.clone();
        damaged[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 100].fill(0);
        assert_eq!(
            corrupt_at(damaged),
            (name.clone(), SEGMENT_HEADER_BYTES as u64)
        );
        // The file was left alone.
        assert_eq!(
            fs::metadata(work.path().join(&name)).unwrap().len(),
            bytes.len() as u64
        );

        // Several segments: a torn end of a sealed segment, and a missing segment.
        let src = tempfile::tempdir().unwrap();
        build(src.path(), &clock, 4, 1);
        let files = snapshot(src.path());
        assert_eq!(files.len(), 4);
        let mut cut = files.clone();
        let len = cut[1].1.len();
        cut[1].1.truncate(len - 10);
        restore(work.path(), &cut);
        assert!(matches!(
            replay(opts_for(work.path(), &clock)),
            Err(WalError::Corrupt { .. })
        ));
        let mut gap = files.clone();
        gap.remove(2);
        restore(work.path(), &gap);
        let r = replay(opts_for(work.path(), &clock));
        assert!(
            matches!(&r, Err(WalError::Corrupt { offset: 0, .. })),
            "{r:?}"
        );
        // A damaged header of a sealed segment.
        let mut bad = files.clone();
        bad[0].1[9] ^= 1;
        restore(work.path(), &bad);
        assert!(matches!(
            replay(opts_for(work.path(), &clock)),
            Err(WalError::Corrupt { .. })
        ));
    }

    /// A log of two write batches: `[txn 1]` and `[txn 2, txn 3, txn 4]` (format 2, the
    /// first frame of each batch flagged). Returns the segment bytes and where each
    /// transaction starts and ends.
    fn two_batches() -> (Vec<u8>, Vec<Range<usize>>) {
        let header = SegmentHeader {
            first_lsn: 1,
            first_txn: 1,
            prev_arrival: Timestamp::MIN,
        };
        let mut buf = header.encode().to_vec();
        let mut stream = Vec::new();
        let mut spans = Vec::new();
        let mut lsn = 1;
        for t in 1..=4u64 {
            let start = buf.len();
            // Each transaction spans a few sectors.
            let ops = vec![Op::Upsert {
                kind: tidal_core::EntityKind::Item,
                id: tidal_core::EntityId(t),
                row: vec![
                    tidal_core::Value::Int(t as i64),
                    tidal_core::Value::Text("x".repeat(1500)),
                ],
            }];
            frame::encode_ops(&ops, &mut stream);
            lsn = frame::append_txn(
                &mut buf,
                lsn,
                t,
                &stream,
                Timestamp(T0 + t as i64),
                frame::DATA_BODY_BYTES_MAX,
                t == 1 || t == 2,
            ) + 1;
            spans.push(start..buf.len());
        }
        (buf, spans)
    }

    #[test]
    fn a_torn_batch_with_later_pages_on_disk_is_cut() {
        let clock = clock();
        let work = tempfile::tempdir().unwrap();
        let name = segment::segment_file_name(1);
        let (bytes, spans) = two_batches();
        let run = |damaged: &[u8]| {
            for p in segments(work.path()) {
                fs::remove_file(p).unwrap();
            }
            fs::write(work.path().join(&name), damaged).unwrap();
            replay(opts_for(work.path(), &clock))
        };
        assert_eq!(run(&bytes).unwrap().len(), 4);
        // Sectors in the middle of the last batch never reached disk (they read as the
        // zeros written ahead) while later ones did: everything from the damaged
        // transaction on goes.
        let sectors = |r: Range<usize>| {
            (r.start.div_ceil(SECTOR_BYTES) * SECTOR_BYTES)..(r.end / SECTOR_BYTES * SECTOR_BYTES)
        };
        let lost = sectors(spans[2].clone());
        assert!(!lost.is_empty(), "transaction 3 spans a whole sector");
        let mut damaged = bytes.clone();
        damaged[lost.clone()].fill(0);
        let got = run(&damaged).unwrap();
        assert_eq!(got.iter().map(|t| t.txn).collect::<Vec<_>>(), vec![1, 2]);
        let len = fs::metadata(work.path().join(&name)).unwrap().len();
        assert_eq!(
            len, spans[2].start as u64,
            "cut where the damaged transaction starts"
        );
        // The first sector of the last batch lost (its header with it), the rest on disk.
        let first = (spans[1].start / SECTOR_BYTES * SECTOR_BYTES)
            ..((spans[1].start / SECTOR_BYTES + 1) * SECTOR_BYTES);
        let mut damaged = bytes.clone();
        damaged[first.start.max(spans[1].start)..first.end].fill(0);
        let got = run(&damaged).unwrap();
        assert_eq!(got.iter().map(|t| t.txn).collect::<Vec<_>>(), vec![1]);
        // The same bytes garbled instead of zero are not a torn write under this writer
        // (an unwritten sector reads as zeros): a flipped bit in the last batch, which
        // was acknowledged, is reported.
        let mut damaged = bytes.clone();
        damaged[lost].fill(0xA5);
        assert!(matches!(run(&damaged), Err(WalError::Corrupt { .. })));
        let mut damaged = bytes.clone();
        damaged[spans[3].start + 60] ^= 0x10;
        assert!(matches!(run(&damaged), Err(WalError::Corrupt { .. })));
        // Damage in a batch that a later batch followed: it had been synced and
        // acknowledged, so this is corruption, not a torn write.
        let mut damaged = bytes.clone();
        damaged[spans[0].start + 60] ^= 0x10;
        assert!(matches!(run(&damaged), Err(WalError::Corrupt { .. })));
        assert_eq!(
            fs::metadata(work.path().join(&name)).unwrap().len(),
            bytes.len() as u64,
            "a refused log is left as it is"
        );
    }

    #[test]
    fn a_segment_whose_creation_was_torn_is_rebuilt() {
        let clock = clock();
        let dir = tempfile::tempdir().unwrap();
        // A brand-new log that crashed while writing its first header.
        fs::write(
            dir.path().join(segment::segment_file_name(1)),
            [b'T', b'I', 0, 0],
        )
        .unwrap();
        let (wal, applied) = open(opts_for(dir.path(), &clock));
        assert!(applied.lock().unwrap().is_empty());
        assert_eq!(wal.commit(txn(1)).unwrap().lsn, 2);
        wal.close().unwrap();
        assert_eq!(replay(opts_for(dir.path(), &clock)).unwrap().len(), 1);
        // A rotated segment that is all zeros.
        fs::write(dir.path().join(segment::segment_file_name(3)), [0u8; 100]).unwrap();
        let (wal, applied) = open(opts_for(dir.path(), &clock));
        assert_eq!(applied.lock().unwrap().len(), 1);
        assert_eq!(wal.commit(txn(2)).unwrap().lsn, 4);
        wal.close().unwrap();
        let got = replay(opts_for(dir.path(), &clock)).unwrap();
        assert_eq!(
            got.iter().map(|t| (t.lsn, t.txn)).collect::<Vec<_>>(),
            vec![(2, 1), (4, 2)]
        );
    }

    /// Format version 1 as written by the first version of this crate, committed so that
    /// a format change cannot go unnoticed.
    /// The crate's directory, read when the test runs (cargo sets `CARGO_MANIFEST_DIR` for
    /// it): a test binary reused from another checkout through a shared target directory
    /// must still find this checkout's files.
    fn manifest_dir() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
    }

    /// The committed log written by format `version`.
    fn fixture_dir_for(version: u32) -> PathBuf {
        manifest_dir().join(format!("tests/fixtures/wal-v{version}"))
    }

    const FIXTURE_SEGMENT_BYTES_MAX: u64 = 400;

    fn fixture_txns() -> Vec<Vec<Op>> {
        use tidal_core::{
            DecaySpec, EntityId, EntityKind, SchemaChange, SignalDef, SignalEvent, SignalId,
            Timestamp, Value, Window,
        };
        let like = SignalDef::new(
            "like",
            EntityKind::Item,
            DecaySpec::exponential_micros(7 * 86_400_000_000).unwrap(),
            [Window::Minutes(60), Window::All],
        )
        .unwrap();
        let event = |entity: u64, user: Option<u64>, weight: f64| SignalEvent {
            signal: SignalId(3),
            entity: EntityId(entity),
            user: user.map(EntityId),
            weight,
            ts: Timestamp(T0 - 5_000_000),
        };
        let row = vec![
            Value::Int(7),
            Value::Null,
            Value::Double(-2.5),
            Value::Real(0.25),
            Value::Bool(true),
            Value::Text("héllo".into()),
            Value::Timestamp(Timestamp(T0)),
            Value::TextArray(vec!["a".into(), "b".into()]),
            Value::Vector(vec![0.5, -1.0, 2.0]),
        ];
        vec![
            vec![Op::Schema(SchemaChange::CreateSignal(like))],
            vec![Op::Insert {
                kind: EntityKind::Item,
                id: EntityId(7),
                row: row.clone(),
            }],
            vec![Op::Signals(vec![
                event(7, Some(1), 1.0),
                event(7, None, -0.5),
            ])],
            Vec::new(),
            vec![
                Op::Upsert {
                    kind: EntityKind::User,
                    id: EntityId(1),
                    row,
                },
                Op::Delete {
                    kind: EntityKind::Creator,
                    id: EntityId(9),
                },
            ],
            vec![Op::Schema(SchemaChange::DropTable {
                kind: EntityKind::Creator,
            })],
        ]
    }

    #[test]
    #[ignore = "rewrites the committed format fixture; only when the format version changes"]
    fn write_format_fixture() {
        // Into the current version's directory: older fixtures stay as they are.
        let dir = fixture_dir_for(segment::SEGMENT_FORMAT_VERSION);
        let dir = dir.as_path();
        let _ = fs::remove_dir_all(dir);
        let clock = clock();
        let mut opts = options(dir, &clock);
        opts.segment_bytes_max = FIXTURE_SEGMENT_BYTES_MAX;
        let (wal, _) = open(opts);
        for ops in fixture_txns() {
            clock.advance_micros(1_000_000);
            wal.commit(ops).unwrap();
        }
        wal.close().unwrap();
        fs::remove_file(dir.join("LOCK")).unwrap();
    }

    #[test]
    fn format_v1_fixture_still_reads() {
        fixture_reads(1);
    }

    #[test]
    fn format_v2_fixture_still_reads() {
        fixture_reads(2);
    }

    /// The committed log of format `version` replays to the fixture's transactions.
    fn fixture_reads(version: u32) {
        let work = tempfile::tempdir().unwrap();
        let files: Vec<(PathBuf, Vec<u8>)> = segments(&fixture_dir_for(version))
            .into_iter()
            .map(|p| (p.clone(), fs::read(p).unwrap()))
            .collect();
        assert_eq!(files.len(), 3, "the fixture spans several segments");
        for (path, bytes) in &files {
            assert_eq!(
                segment::format_version(bytes),
                version,
                "{}",
                path.display()
            );
        }
        restore(work.path(), &files);
        let clock = clock();
        let got = replay(options(work.path(), &clock)).unwrap();
        let mut lsn = 0;
        let want: Vec<CommittedTxn> = fixture_txns()
            .into_iter()
            .enumerate()
            .map(|(i, ops)| {
                lsn += if ops.is_empty() { 1 } else { 2 };
                let arrival = Timestamp(T0 + (i as i64 + 1) * 1_000_000);
                CommittedTxn {
                    lsn,
                    txn: i as u64 + 1,
                    arrival,
                    ops,
                }
            })
            .collect();
        assert_eq!(got, want);
        // Nothing was repaired: the fixture is a clean log.
        for (path, bytes) in &files {
            assert_eq!(
                &fs::read(work.path().join(path.file_name().unwrap())).unwrap(),
                bytes
            );
        }
    }

    /// Replay throughput; run with
    /// `cargo test --release -p tidal-wal -- --ignored --nocapture replay_throughput`.
    #[test]
    #[ignore = "measurement, run in release"]
    fn replay_throughput() {
        use tidal_core::{EntityId, EntityKind, SignalEvent, SignalId, Timestamp, Value};

        #[derive(Debug, Default)]
        struct Count(usize);
        impl Applier for Count {
            type Error = std::convert::Infallible;
            fn prepare(&mut self, _: &[Op]) -> Result<(), Self::Error> {
                Ok(())
            }
            fn apply(&mut self, txn: &CommittedTxn) -> Result<(), Self::Error> {
                self.0 += txn.ops.len();
                Ok(())
            }
            fn batch_done(&mut self) {}
        }

        const TOTAL_BYTES: usize = 512 << 20;
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        let mut stream = Vec::new();
        let (mut lsn, mut txn_id, mut written) = (1u64, 1u64, 0usize);
        let mut arrival = T0;
        while written < TOTAL_BYTES {
            let header = SegmentHeader {
                first_lsn: lsn,
                first_txn: txn_id,
                prev_arrival: Timestamp(if lsn == 1 { i64::MIN } else { arrival }),
            };
            buf.clear();
            buf.extend_from_slice(&header.encode());
            while buf.len() < crate::WAL_SEGMENT_BYTES_MAX as usize {
                arrival += 100;
                let events: Vec<SignalEvent> = (0..40)
                    .map(|i| SignalEvent {
                        signal: SignalId(i % 3),
                        entity: EntityId(txn_id * 40 + u64::from(i)),
                        user: Some(EntityId(txn_id)),
                        weight: 1.0,
                        ts: Timestamp(arrival),
                    })
                    .collect();
                let ops = vec![
                    Op::Signals(events),
                    Op::Upsert {
                        kind: EntityKind::Item,
                        id: EntityId(txn_id),
                        row: vec![
                            Value::Int(txn_id as i64),
                            Value::Text("a short title".into()),
                        ],
                    },
                ];
                frame::encode_ops(&ops, &mut stream);
                lsn = frame::append_txn(
                    &mut buf,
                    lsn,
                    txn_id,
                    &stream,
                    Timestamp(arrival),
                    frame::DATA_BODY_BYTES_MAX,
                    true,
                ) + 1;
                txn_id += 1;
            }
            fs::write(
                dir.path()
                    .join(segment::segment_file_name(header.first_lsn)),
                &buf,
            )
            .unwrap();
            written += buf.len();
        }
        // With the full dedup bound (the last 4M events are hashed into the set) and with
        // a tiny one (scan, verify and decode only).
        for entries_max in [crate::DEDUP_ENTRIES_MAX, 1] {
            let mut applier = Count::default();
            let started = std::time::Instant::now();
            let now = Timestamp(i64::MIN);
            let rec = recover(
                dir.path(),
                &mut applier,
                now,
                crate::DEDUP_WINDOW_MICROS,
                entries_max,
            )
            .unwrap();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "dedup bound {entries_max}: replayed {} MB, {} txns, {} ops in {:.3} s: {:.0} MB/s",
                rec.bytes_read >> 20,
                rec.txns_replayed,
                applier.0,
                secs,
                rec.bytes_read as f64 / secs / 1e6
            );
        }
    }
}
