//! Segment files: naming, header, listing, creation and directory fsync.
//!
//! A segment is named after the LSN of its first frame, `{first_lsn:020}.wal`, so the
//! lexical and numeric order of the files agree. It starts with a fixed header:
//!
//! ```text
//! [magic b"TIDALWAL"][format version u32][first lsn u64][first txn u64]
//! [previous arrival i64][check u64]
//! ```
//!
//! `first txn` and `previous arrival` carry the transaction counter and the arrival clock
//! across segment boundaries, so both stay monotonic even after every earlier segment has
//! been retired. `check` is the first 8 bytes of BLAKE3 over the 36 bytes before it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tidal_core::Timestamp;

use crate::Lsn;

/// First bytes of every segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"TIDALWAL";
/// Version of the segment and frame format written by this code. Version 2 flags the
/// first frame of every write batch; version 1 (read, and continued, but not created)
/// has no flags.
pub(crate) const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Oldest version still read.
pub(crate) const SEGMENT_FORMAT_VERSION_MIN: u32 = 1;
/// Size of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 8 + 8;
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// What a segment header records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub first_lsn: Lsn,
    /// Id of the first transaction written to the segment.
    pub first_txn: u64,
    /// Arrival of the last transaction committed before the segment was created
    /// ([`Timestamp::MIN`] for none).
    pub prev_arrival: Timestamp,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..8].copy_from_slice(SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        h[12..20].copy_from_slice(&self.first_lsn.to_le_bytes());
        h[20..28].copy_from_slice(&self.first_txn.to_le_bytes());
        h[28..36].copy_from_slice(&self.prev_arrival.0.to_le_bytes());
        let check = header_check(&h[..36]);
        h[36..44].copy_from_slice(&check);
        h
    }

    /// Parses and verifies a header read from the file named for `first_lsn`.
    pub(crate) fn decode(buf: &[u8], first_lsn: Lsn) -> Result<SegmentHeader, &'static str> {
        let h = buf
            .get(..SEGMENT_HEADER_BYTES)
            .ok_or("segment shorter than its header")?;
        if &h[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        if header_check(&h[..36]) != h[36..44] {
            return Err("segment header checksum mismatch");
        }
        let version = u32::from_le_bytes(arr(&h[8..12]));
        if !(SEGMENT_FORMAT_VERSION_MIN..=SEGMENT_FORMAT_VERSION).contains(&version) {
            return Err("unsupported segment format version");
        }
        let header = SegmentHeader {
            first_lsn: u64::from_le_bytes(arr(&h[12..20])),
            first_txn: u64::from_le_bytes(arr(&h[20..28])),
            prev_arrival: Timestamp(i64::from_le_bytes(arr(&h[28..36]))),
        };
        if header.first_lsn != first_lsn {
            return Err("segment header LSN does not match its file name");
        }
        if header.first_lsn == 0 {
            return Err("segment starts at LSN 0");
        }
        Ok(header)
    }
}

/// The format version of a segment whose header [`SegmentHeader::decode`] accepted.
pub(crate) fn format_version(buf: &[u8]) -> u32 {
    buf.get(8..12).map_or(0, |v| u32::from_le_bytes(arr(v)))
}

fn header_check(bytes: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    c
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// `{first_lsn:020}.wal`.
pub(crate) fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The first LSN encoded in a segment file name, `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `dir`, ordered by first LSN. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(Lsn, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(lsn) = name.to_str().and_then(parse_segment_file_name)
            && entry.file_type()?.is_file()
        {
            out.push((lsn, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(lsn, _)| *lsn);
    Ok(out)
}

/// Makes a directory entry change (create, delete) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new segment with its header, fsyncs it and the directory, and returns it
/// open for writing (the writer writes at explicit offsets).
pub(crate) fn create_segment(dir: &Path, header: SegmentHeader) -> io::Result<File> {
    let path = dir.join(segment_file_name(header.first_lsn));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.write_all(&header.encode())?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Replaces the header of a segment that holds no frames (after a crash during creation).
pub(crate) fn rewrite_empty_segment(path: &Path, header: SegmentHeader) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.set_len(0)?;
    file.write_all(&header.encode())?;
    file.sync_all()
}

/// Cuts a segment back to `len` bytes and makes the new length durable.
pub(crate) fn truncate_segment(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Opens an existing segment for writing after recovery (at explicit offsets).
pub(crate) fn open_for_writing(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

/// What the writer knows about one segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    /// LSN of the last frame, or `first_lsn - 1` when the segment holds no frames.
    pub last_lsn: Lsn,
    /// Newest arrival committed in the segment, `None` when it holds no transaction.
    pub last_arrival: Option<Timestamp>,
    /// Bytes of the log in the file, header included: the file size, except for the
    /// active segment, whose file also holds the zeros the writer wrote ahead.
    pub bytes: u64,
    /// Whether its frames flag batch starts (format version 2 or later).
    pub batch_flags: bool,
}

impl SegmentInfo {
    pub(crate) fn has_frames(&self) -> bool {
        self.last_lsn >= self.first_lsn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_numerically() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(segment_file_name(u64::MAX).len(), 24);
        for lsn in [0, 1, 99, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(lsn)), Some(lsn));
        }
        for bad in [
            "1.wal",
            "0000000000000000000a.wal",
            "00000000000000000001.log",
            "LOCK",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            first_lsn: 42,
            first_txn: 7,
            prev_arrival: Timestamp(-3),
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes, 42), Ok(h));
        assert!(SegmentHeader::decode(&bytes, 43).is_err());
        assert!(SegmentHeader::decode(&bytes[..SEGMENT_HEADER_BYTES - 1], 42).is_err());
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&b, 42).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn create_list_truncate() {
        let dir = tempfile::tempdir().unwrap();
        for lsn in [10, 1, 5] {
            let h = SegmentHeader {
                first_lsn: lsn,
                first_txn: 1,
                prev_arrival: Timestamp::MIN,
            };
            create_segment(dir.path(), h).unwrap();
        }
        fs::write(dir.path().join("LOCK"), b"").unwrap();
        let listed: Vec<Lsn> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(listed, vec![1, 5, 10]);
        let h = SegmentHeader {
            first_lsn: 1,
            first_txn: 1,
            prev_arrival: Timestamp::MIN,
        };
        assert!(
            create_segment(dir.path(), h).is_err(),
            "segments are never overwritten"
        );
        let path = dir.path().join(segment_file_name(5));
        truncate_segment(&path, 3).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 3);
        rewrite_empty_segment(&path, SegmentHeader { first_lsn: 5, ..h }).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(SegmentHeader::decode(&bytes, 5).unwrap().first_lsn, 5);
    }
}
