//! Checkpoint files: the in-memory materializers' state at one LSN.
//!
//! Format: `b"TIDALCKP" [version u32] [lsn u64] [body length u64] [blake3(body) 32]`
//! followed by the body, a list of sections `[name str][bytes]` (see
//! `tidal_core::codec`). Files are written to a temporary name, fsynced, renamed to
//! `NNNNNNNNNNNNNNNNNNNN.ckpt` (the LSN) and the directory is fsynced, so a crash leaves
//! either the old or the new checkpoint, never a partial one. The newest file wins;
//! older ones are deleted after a successful write.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tidal_core::codec::{Decoder, Encoder};
use tidal_wal::Lsn;

use crate::EngineError;

const MAGIC: &[u8; 8] = b"TIDALCKP";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 32;
/// Refuse to load a checkpoint body larger than this (a damaged length field must not
/// make us allocate the machine's memory).
const CHECKPOINT_BYTES_MAX: u64 = 64 << 30;

/// A decoded checkpoint: LSN covered and named sections.
#[derive(Debug, Default)]
pub(crate) struct Checkpoint {
    pub lsn: Lsn,
    pub sections: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

fn file_name(lsn: Lsn) -> String {
    format!("{lsn:020}.ckpt")
}

fn list(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, EngineError> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| EngineError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".ckpt") {
            if let Ok(lsn) = stem.parse::<u64>() {
                out.push((lsn, entry.path()));
            }
        } else if name.ends_with(".tmp") {
            // Left over from a crash during a checkpoint write.
            let _ = fs::remove_file(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::io(dir, e))
}

/// Writes a checkpoint durably and removes older ones. Returns the file's size.
pub(crate) fn write(dir: &Path, ckpt: &Checkpoint) -> Result<u64, EngineError> {
    let mut body = Encoder::new();
    body.u32(ckpt.sections.len() as u32);
    for (name, bytes) in &ckpt.sections {
        body.str(name);
        body.u64(bytes.len() as u64);
        body.buf.extend_from_slice(bytes);
    }
    let body = body.into_inner();
    let mut head = Encoder::with_capacity(HEADER_BYTES);
    head.buf.extend_from_slice(MAGIC);
    head.u32(FORMAT_VERSION);
    head.u64(ckpt.lsn);
    head.u64(body.len() as u64);
    head.buf.extend_from_slice(blake3::hash(&body).as_bytes());

    let final_path = dir.join(file_name(ckpt.lsn));
    let tmp = dir.join(format!("{}.tmp", file_name(ckpt.lsn)));
    let io = |e| EngineError::io(&tmp, e);
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&head.buf).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, &final_path).map_err(|e| EngineError::io(&final_path, e))?;
    fsync_dir(dir)?;
    for (lsn, path) in list(dir)? {
        if lsn < ckpt.lsn {
            fs::remove_file(&path).map_err(|e| EngineError::io(&path, e))?;
        }
    }
    Ok((head.buf.len() + body.len()) as u64)
}

/// Loads the newest checkpoint, or `None` for a fresh database. A damaged newest
/// checkpoint is an error: silently falling back could lose data whose WAL was retired.
pub(crate) fn load_latest(dir: &Path) -> Result<Option<Checkpoint>, EngineError> {
    let Some((_, path)) = list(dir)?.pop() else {
        return Ok(None);
    };
    let bad = |reason: &str| EngineError::CheckpointCorrupt {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    let mut f = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
    let mut head = [0u8; HEADER_BYTES];
    f.read_exact(&mut head)
        .map_err(|_| bad("truncated header"))?;
    if &head[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let mut d = Decoder::new(&head[8..]);
    let version = d.u32()?;
    if version != FORMAT_VERSION {
        return Err(bad(&format!("unsupported format version {version}")));
    }
    let lsn = d.u64()?;
    let len = d.u64()?;
    if len > CHECKPOINT_BYTES_MAX {
        return Err(bad("body length out of range"));
    }
    let mut body = Vec::with_capacity(len as usize);
    f.take(len)
        .read_to_end(&mut body)
        .map_err(|e| EngineError::io(&path, e))?;
    if body.len() as u64 != len {
        return Err(bad("truncated body"));
    }
    if blake3::hash(&body).as_bytes() != &head[HEADER_BYTES - 32..] {
        return Err(bad("checksum mismatch"));
    }
    let mut d = Decoder::new(&body);
    let n = d.u32()? as usize;
    let mut sections = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = d.str()?.to_string();
        let len = d.u64()? as usize;
        if len > d.remaining() {
            return Err(bad("section length exceeds body"));
        }
        sections.push((name, d.take(len)?.to_vec()));
    }
    d.finish()?;
    Ok(Some(Checkpoint { lsn, sections }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_latest(dir.path()).unwrap().is_none());
        let c = Checkpoint {
            lsn: 7,
            sections: vec![("a".into(), vec![1, 2, 3])],
        };
        write(dir.path(), &c).unwrap();
        let c2 = Checkpoint {
            lsn: 9,
            sections: vec![("b".into(), vec![4; 100])],
        };
        write(dir.path(), &c2).unwrap();
        let back = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(back.lsn, 9);
        assert_eq!(back.section("b").unwrap(), &[4; 100][..]);
        assert_eq!(
            list(dir.path()).unwrap().len(),
            1,
            "older checkpoint removed"
        );
        // Flip one byte of the body: refused.
        let path = dir.path().join(file_name(9));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load_latest(dir.path()),
            Err(EngineError::CheckpointCorrupt { .. })
        ));
    }
}
