//! An HNSW index over one vector column, on usearch.
//!
//! The engine feeds it every change of its column in log order ([`VectorIndex::apply`]);
//! a change is searchable when `apply` returns, so a row is found as soon as the
//! statement that wrote it returns. [`VectorIndex::flush`] saves the graph to
//! `<dir>/<lsn>.usearch` and then a small `META` file naming it, the LSN it covers and
//! its blake3 checksum (written to a temporary name, fsynced, renamed, directory
//! fsynced): a crash at any point leaves the previous file and META intact. At open the
//! file is checked against META; any mismatch makes the index unusable and the caller
//! rebuilds it.
//!
//! Concurrency: usearch adds and searches safely from many threads, each holding one of
//! the thread contexts reserved at creation; [`VECTOR_SEARCH_THREADS_MAX`] bounds the
//! callers at once (others wait for a context). Growing the capacity takes the write
//! side of a lock; nothing else does.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};
use tidal_core::VectorMetric;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::IndexError;

/// Thread contexts reserved in each index: concurrent searches and adds beyond this
/// wait for one to free up.
pub const VECTOR_SEARCH_THREADS_MAX: usize = 16;
/// Capacity reserved when an index is created; it doubles as it fills.
pub const VECTOR_INITIAL_CAPACITY: usize = 1024;
/// A batch of at least this many changes is added from several threads (an index
/// build, a large COPY): graph inserts are the cost, and usearch takes them concurrently.
pub const VECTOR_PARALLEL_APPLY_OPS_MIN: usize = 2_048;
/// Most threads one batch is added from.
pub const VECTOR_APPLY_THREADS_MAX: usize = 8;

const META_MAGIC: &[u8; 8] = b"TIDALVEC";
const META_VERSION: u32 = 1;
const META_FILE: &str = "META";

/// What an index is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorSpec {
    pub dimensions: usize,
    pub metric: VectorMetric,
    /// HNSW links per node (pgvector's `m`).
    pub m: usize,
    pub ef_construction: usize,
}

/// One change of the indexed column.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorOp {
    /// The row now has this vector (inserted or updated).
    Upsert { id: u64, vector: Vec<f32> },
    /// The row is gone, or its vector is NULL now.
    Delete { id: u64 },
}

impl VectorOp {
    /// The row the change is about.
    pub fn id(&self) -> u64 {
        match self {
            VectorOp::Upsert { id, .. } | VectorOp::Delete { id } => *id,
        }
    }
}

/// Counts callers holding one of usearch's thread contexts.
#[derive(Debug, Default)]
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut used = self.used.lock();
        while *used >= VECTOR_SEARCH_THREADS_MAX {
            self.freed.wait(&mut used);
        }
        *used += 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.used.lock() -= 1;
        self.0.freed.notify_one();
    }
}

/// The index; see the module docs.
pub struct VectorIndex {
    dir: PathBuf,
    spec: VectorSpec,
    index: RwLock<Index>,
    /// Serializes changes and saves.
    writer: Mutex<WriterState>,
    slots: Slots,
    /// The log position the saved file covers.
    durable_lsn: AtomicU64,
    /// The log position the in-memory graph covers.
    applied_lsn: AtomicU64,
}

#[derive(Debug)]
struct WriterState {
    /// Changes since the last save.
    dirty: u64,
    /// Entries removed (deleted or replaced) since the index was created or opened.
    /// usearch's graph does not heal around removals: after enough of them some live
    /// entries are no longer reachable (see `VectorIndex::removed`).
    removed: u64,
    /// The file the last save wrote (kept until the next one replaces it), with its
    /// length and checksum.
    file: Option<SavedFile>,
}

#[derive(Debug, Clone)]
struct SavedFile {
    name: String,
    len: u64,
    hash: [u8; 32],
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dir", &self.dir)
            .field("spec", &self.spec)
            .field("len", &self.len())
            .field("applied_lsn", &self.applied_lsn())
            .finish()
    }
}

fn native(e: impl std::fmt::Display) -> IndexError {
    IndexError::Vector {
        reason: e.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn options(spec: &VectorSpec) -> IndexOptions {
    IndexOptions {
        dimensions: spec.dimensions,
        metric: match spec.metric {
            // Squared L2 orders exactly as L2; exact distances are computed above.
            VectorMetric::L2 => MetricKind::L2sq,
            VectorMetric::Cosine => MetricKind::Cos,
            VectorMetric::InnerProduct => MetricKind::IP,
        },
        quantization: ScalarKind::F32,
        connectivity: spec.m,
        expansion_add: spec.ef_construction,
        // A search asks for max(ef_search, k) candidates, and usearch's beam is at
        // least the number asked for: the per-query ef_search is that count.
        expansion_search: 1,
        multi: false,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), IndexError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((len, *hasher.finalize().as_bytes()))
}

/// The contents of META.
struct Meta {
    lsn: u64,
    file: String,
    len: u64,
    hash: [u8; 32],
    spec: VectorSpec,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(META_MAGIC);
        b.extend_from_slice(&META_VERSION.to_le_bytes());
        b.extend_from_slice(&self.lsn.to_le_bytes());
        b.extend_from_slice(&(self.file.len() as u32).to_le_bytes());
        b.extend_from_slice(self.file.as_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&self.hash);
        b.extend_from_slice(&(self.spec.dimensions as u32).to_le_bytes());
        b.push(match self.spec.metric {
            VectorMetric::L2 => 1,
            VectorMetric::Cosine => 2,
            VectorMetric::InnerProduct => 3,
        });
        b.extend_from_slice(&(self.spec.m as u32).to_le_bytes());
        b.extend_from_slice(&(self.spec.ef_construction as u32).to_le_bytes());
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Meta, String> {
        if b.len() < 32 + 8 {
            return Err("META is truncated".into());
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("META checksum mismatch".into());
        }
        let mut r = body;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if r.len() < n {
                return Err("META is truncated".into());
            }
            let (h, t) = r.split_at(n);
            r = t;
            Ok(h)
        };
        if take(8)? != META_MAGIC {
            return Err("not a vector index META".into());
        }
        let u32_of = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let u64_of = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        };
        let version = u32_of(take(4)?);
        if version != META_VERSION {
            return Err(format!("META version {version} is not supported"));
        }
        let lsn = u64_of(take(8)?);
        let n = u32_of(take(4)?) as usize;
        let file = String::from_utf8(take(n)?.to_vec()).map_err(|_| "bad file name")?;
        let len = u64_of(take(8)?);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(take(32)?);
        let dimensions = u32_of(take(4)?) as usize;
        let metric = match take(1)?[0] {
            1 => VectorMetric::L2,
            2 => VectorMetric::Cosine,
            3 => VectorMetric::InnerProduct,
            _ => return Err("bad metric".into()),
        };
        let m = u32_of(take(4)?) as usize;
        let ef_construction = u32_of(take(4)?) as usize;
        Ok(Meta {
            lsn,
            file,
            len,
            hash,
            spec: VectorSpec {
                dimensions,
                metric,
                m,
                ef_construction,
            },
        })
    }
}

impl VectorIndex {
    /// A new, empty index in `dir` (created; must not hold another index), covering
    /// the log up to `covered_lsn`.
    pub fn create(
        dir: &Path,
        spec: VectorSpec,
        covered_lsn: u64,
    ) -> Result<VectorIndex, IndexError> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let index = Index::new(&options(&spec)).map_err(native)?;
        index
            .reserve_capacity_and_threads(VECTOR_INITIAL_CAPACITY, VECTOR_SEARCH_THREADS_MAX)
            .map_err(native)?;
        let v = VectorIndex {
            dir: dir.to_path_buf(),
            spec,
            index: RwLock::new(index),
            writer: Mutex::new(WriterState {
                dirty: 1,
                removed: 0,
                file: None,
            }),
            slots: Slots::default(),
            durable_lsn: AtomicU64::new(0),
            applied_lsn: AtomicU64::new(covered_lsn),
        };
        Ok(v)
    }

    /// Opens the index saved in `dir`; returns it with the LSN it covers. Fails with
    /// [`IndexError::Unusable`] when it is missing, damaged or of another spec.
    pub fn open(dir: &Path, spec: VectorSpec) -> Result<(VectorIndex, u64), IndexError> {
        let unusable = |reason: String| IndexError::Unusable {
            path: dir.display().to_string(),
            reason,
        };
        let meta_path = dir.join(META_FILE);
        let bytes = fs::read(&meta_path).map_err(|e| unusable(format!("{META_FILE}: {e}")))?;
        let meta = Meta::decode(&bytes).map_err(unusable)?;
        if meta.spec != spec {
            return Err(unusable(format!(
                "built as {:?}, defined as {spec:?}",
                meta.spec
            )));
        }
        let path = dir.join(&meta.file);
        let (len, hash) = hash_file(&path).map_err(|e| unusable(e.to_string()))?;
        if len != meta.len || hash != meta.hash {
            return Err(unusable(format!(
                "{} does not match its checksum",
                meta.file
            )));
        }
        let index = Index::new(&options(&spec)).map_err(native)?;
        let path_str = path
            .to_str()
            .ok_or_else(|| unusable("path is not UTF-8".into()))?;
        index.load(path_str).map_err(|e| unusable(e.to_string()))?;
        if index.dimensions() != spec.dimensions {
            return Err(unusable(format!(
                "file has {} dimensions, not {}",
                index.dimensions(),
                spec.dimensions
            )));
        }
        let capacity = (index.size() + index.size() / 4).max(VECTOR_INITIAL_CAPACITY);
        index
            .reserve_capacity_and_threads(capacity, VECTOR_SEARCH_THREADS_MAX)
            .map_err(native)?;
        // expansion_search is not part of what usearch saves in every version.
        index.change_expansion_search(1);
        let v = VectorIndex {
            dir: dir.to_path_buf(),
            spec,
            index: RwLock::new(index),
            writer: Mutex::new(WriterState {
                dirty: 0,
                removed: 0,
                file: Some(SavedFile {
                    name: meta.file,
                    len: meta.len,
                    hash: meta.hash,
                }),
            }),
            slots: Slots::default(),
            durable_lsn: AtomicU64::new(meta.lsn),
            applied_lsn: AtomicU64::new(meta.lsn),
        };
        Ok((v, meta.lsn))
    }

    pub fn spec(&self) -> VectorSpec {
        self.spec
    }

    /// Vectors in the index.
    pub fn len(&self) -> usize {
        self.index.read().size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the graph and vectors take.
    pub fn memory_bytes(&self) -> usize {
        self.index.read().memory_usage()
    }

    /// The log position the in-memory index covers.
    pub fn applied_lsn(&self) -> u64 {
        self.applied_lsn.load(Ordering::Acquire)
    }

    /// The log position the saved file covers (0 before the first save).
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.load(Ordering::Acquire)
    }

    /// Whether the index holds `id`.
    pub fn contains(&self, id: u64) -> bool {
        self.index.read().contains(id)
    }

    /// A zero vector has no direction: under cosine it is never a neighbour (its
    /// distance is NaN, as in pgvector), so it is not indexed.
    fn indexable(&self, v: &[f32]) -> bool {
        v.len() == self.spec.dimensions
            && v.iter().all(|x| x.is_finite())
            && (self.spec.metric != VectorMetric::Cosine || v.iter().any(|x| *x != 0.0))
    }

    /// Applies the changes of the transaction at `lsn`; they are searchable on return.
    pub fn apply(&self, lsn: u64, ops: &[VectorOp]) -> Result<(), IndexError> {
        let mut w = self.writer.lock();
        let adds = ops
            .iter()
            .filter(|o| matches!(o, VectorOp::Upsert { .. }))
            .count();
        {
            let index = self.index.read();
            if index.size() + adds > index.capacity() {
                drop(index);
                let index = self.index.write();
                let want = (index.size() + adds).max(index.capacity() * 2);
                index
                    .reserve_capacity_and_threads(want, VECTOR_SEARCH_THREADS_MAX)
                    .map_err(native)?;
            }
        }
        let index = self.index.read();
        // The parallel path takes only pure adds of distinct new ids (an index build, a
        // COPY of new rows): changes to one id must keep their order, and concurrent
        // adds are the case usearch is built and tested for.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(VECTOR_APPLY_THREADS_MAX);
        let parallel = threads > 1 && ops.len() >= VECTOR_PARALLEL_APPLY_OPS_MIN && {
            let mut ids = Vec::with_capacity(ops.len());
            let all_new = ops.iter().all(|op| match op {
                VectorOp::Upsert { id, .. } => {
                    ids.push(*id);
                    !index.contains(*id)
                }
                VectorOp::Delete { .. } => false,
            });
            ids.sort_unstable();
            all_new && ids.windows(2).all(|w| w[0] != w[1])
        };
        if parallel {
            let part = ops.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = ops
                    .chunks(part)
                    .map(|chunk| {
                        let index = &*index;
                        scope.spawn(move || {
                            let _slot = self.slots.acquire();
                            chunk
                                .iter()
                                .try_for_each(|op| self.apply_one(index, op).map(|_| ()))
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|h| {
                    h.join().map_err(|_| IndexError::Vector {
                        reason: "an index worker thread panicked".into(),
                    })?
                })
            })?;
        } else {
            let _slot = self.slots.acquire();
            for op in ops {
                if self.apply_one(&index, op)? {
                    w.removed += 1;
                }
            }
        }
        w.dirty += ops.len() as u64;
        self.applied_lsn.fetch_max(lsn, Ordering::AcqRel);
        Ok(())
    }

    /// Applies one change; whether it removed an entry (left a tombstone).
    fn apply_one(&self, index: &Index, op: &VectorOp) -> Result<bool, IndexError> {
        let (id, vector) = match op {
            VectorOp::Upsert { id, vector } => (*id, Some(vector)),
            VectorOp::Delete { id } => (*id, None),
        };
        let removed = index.contains(id);
        if removed {
            index.remove(id).map_err(native)?;
        }
        if let Some(v) = vector
            && self.indexable(v)
        {
            index.add(id, v).map_err(native)?;
        }
        Ok(removed)
    }

    /// Entries removed (deleted, or replaced by an update) since the index was created
    /// or opened. The graph does not heal around them — `updated_rows_leave_the_graph`
    /// shows live rows becoming unreachable after a few hundred updates of 60 rows.
    pub fn removed(&self) -> u64 {
        self.writer.lock().removed
    }

    /// Records that the log reached `lsn` without changing this index.
    pub fn note(&self, lsn: u64) {
        self.applied_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// The `count` nearest ids to `query` (nearest first) among those `filter` accepts.
    /// `count` is also the search beam (ef_search): asking for more finds more of the
    /// true neighbours.
    pub fn search(&self, query: &[f32], count: usize) -> Result<Vec<u64>, IndexError> {
        self.search_inner(query, count, None)
    }

    /// Like [`VectorIndex::search`], among the ids `filter` accepts; the filter runs
    /// inside the graph search, so `count` passing ids come back whenever that many
    /// pass and are reachable.
    pub fn search_filtered(
        &self,
        query: &[f32],
        count: usize,
        filter: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<u64>, IndexError> {
        self.search_inner(query, count, Some(filter))
    }

    fn search_inner(
        &self,
        query: &[f32],
        count: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<u64>, IndexError> {
        if query.len() != self.spec.dimensions {
            return Err(IndexError::Vector {
                reason: format!(
                    "expected {} dimensions, not {}",
                    self.spec.dimensions,
                    query.len()
                ),
            });
        }
        if count == 0 || !self.indexable(query) {
            return Ok(Vec::new());
        }
        let index = self.index.read();
        let _slot = self.slots.acquire();
        let found = match filter {
            None => index.search(query, count),
            Some(f) => index.filtered_search(query, count, f),
        }
        .map_err(native)?;
        Ok(found.keys)
    }

    /// Saves the index if it changed since the last save, or just moves META's LSN
    /// forward if only the log did. Returns the LSN now durably covered.
    pub fn flush(&self) -> Result<u64, IndexError> {
        let mut w = self.writer.lock();
        let lsn = self.applied_lsn();
        if let (0, Some(file)) = (w.dirty, &w.file) {
            if lsn > self.durable_lsn() {
                self.write_meta(lsn, file)?;
                self.durable_lsn.store(lsn, Ordering::Release);
            }
            return Ok(self.durable_lsn());
        }
        let name = format!("{lsn:020}.usearch");
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let index = self.index.read();
            let tmp_str = tmp.to_str().ok_or_else(|| IndexError::Vector {
                reason: "index path is not UTF-8".into(),
            })?;
            index.save(tmp_str).map_err(native)?;
        }
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        let (len, hash) = hash_file(&tmp)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fsync_dir(&self.dir)?;
        let saved = SavedFile { name, len, hash };
        self.write_meta(lsn, &saved)?;
        // META names the new file now; the old one is garbage.
        if let Some(old) = w.file.replace(saved)
            && w.file.as_ref().is_some_and(|f| f.name != old.name)
        {
            let _ = fs::remove_file(self.dir.join(old.name));
        }
        w.dirty = 0;
        self.durable_lsn.store(lsn, Ordering::Release);
        Ok(lsn)
    }

    fn write_meta(&self, lsn: u64, file: &SavedFile) -> Result<(), IndexError> {
        let meta = Meta {
            lsn,
            file: file.name.clone(),
            len: file.len,
            hash: file.hash,
            spec: self.spec,
        };
        let tmp = self.dir.join(format!("{META_FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&meta.encode()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let dst = self.dir.join(META_FILE);
        fs::rename(&tmp, &dst).map_err(io(&dst))?;
        fsync_dir(&self.dir)
    }

    /// Deletes the index's files.
    pub fn destroy(&self) -> Result<(), IndexError> {
        let _w = self.writer.lock();
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn spec(dimensions: usize, metric: VectorMetric) -> VectorSpec {
        VectorSpec {
            dimensions,
            metric,
            m: 16,
            ef_construction: 64,
        }
    }

    /// `n` vectors around 20 centres, varying along 8 hidden directions (embeddings
    /// have a low intrinsic dimension; uniform noise in all `d` would make every point
    /// of a cluster nearly equidistant). The centres and directions come from `seed`
    /// 0, so data and queries of other seeds share them.
    fn clustered(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut shared = StdRng::seed_from_u64(0);
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..d).map(|_| shared.random_range(-1.0..1.0)).collect())
            .collect();
        let basis: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..d).map(|_| shared.random_range(-0.5..0.5)).collect())
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let mut v = centres[i % centres.len()].clone();
                for b in &basis {
                    let z: f32 = rng.random_range(-1.0..1.0);
                    for (x, y) in v.iter_mut().zip(b) {
                        *x += z * y;
                    }
                }
                v
            })
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(b) {
            ab += f64::from(*x) * f64::from(*y);
            aa += f64::from(*x) * f64::from(*x);
            bb += f64::from(*y) * f64::from(*y);
        }
        1.0 - ab / (aa.sqrt() * bb.sqrt())
    }

    fn exact(data: &[Vec<f32>], q: &[f32], k: usize, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut all: Vec<(f64, u64)> = data
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i as u64))
            .map(|(i, v)| (cosine(v, q), i as u64))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn recall(got: &[u64], want: &[u64]) -> f64 {
        let hit = got
            .iter()
            .take(want.len())
            .filter(|g| want.contains(g))
            .count();
        hit as f64 / want.len() as f64
    }

    fn load(index: &VectorIndex, data: &[Vec<f32>]) {
        let ops: Vec<VectorOp> = data
            .iter()
            .enumerate()
            .map(|(i, v)| VectorOp::Upsert {
                id: i as u64,
                vector: v.clone(),
            })
            .collect();
        for (n, chunk) in ops.chunks(500).enumerate() {
            index.apply(n as u64 + 1, chunk).unwrap();
        }
    }

    #[test]
    fn recall_filters_and_a_saved_index_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx");
        let data = clustered(4000, 48, 7);
        let index = VectorIndex::create(&path, spec(48, VectorMetric::Cosine), 0).unwrap();
        load(&index, &data);
        assert_eq!(index.len(), 4000);
        let queries = clustered(40, 48, 8);
        let (mut r, mut rf) = (0.0, 0.0);
        let keep = |id: u64| id % 10 == 3;
        for q in &queries {
            r += recall(
                &index.search(q, 40).unwrap(),
                &exact(&data, q, 10, |_| true),
            );
            let got = index.search_filtered(q, 40, &keep).unwrap();
            assert!(
                got.len() >= 10,
                "a filter passing 400 rows returned {}",
                got.len()
            );
            assert!(got.iter().all(|id| keep(*id)));
            rf += recall(&got, &exact(&data, q, 10, keep));
        }
        let (r, rf) = (r / 40.0, rf / 40.0);

        assert!(r >= 0.95, "recall@10 {r}");
        assert!(rf >= 0.9, "filtered recall@10 {rf}");

        let before: Vec<Vec<u64>> = queries
            .iter()
            .map(|q| index.search(q, 40).unwrap())
            .collect();
        assert_eq!(index.flush().unwrap(), 8);
        index.note(12);
        assert_eq!(
            index.flush().unwrap(),
            12,
            "META moves forward without a re-save"
        );
        drop(index);
        let (index, lsn) = VectorIndex::open(&path, spec(48, VectorMetric::Cosine)).unwrap();
        assert_eq!(lsn, 12);
        let after: Vec<Vec<u64>> = queries
            .iter()
            .map(|q| index.search(q, 40).unwrap())
            .collect();
        assert_eq!(before, after);

        // Changes after reopening: an update moves a row, a delete removes it.
        let far: Vec<f32> = (0..48).map(|i| if i == 0 { 100.0 } else { 0.0 }).collect();
        index
            .apply(
                13,
                &[
                    VectorOp::Upsert {
                        id: 5,
                        vector: far.clone(),
                    },
                    VectorOp::Delete { id: 6 },
                ],
            )
            .unwrap();
        assert_eq!(index.search(&far, 100).unwrap()[0], 5);
        assert!(!index.contains(6));
        assert_eq!(index.len(), 3999);
        // Another spec, or a damaged file, makes it unusable (the engine rebuilds).
        index.flush().unwrap();
        drop(index);
        assert!(matches!(
            VectorIndex::open(&path, spec(48, VectorMetric::L2)),
            Err(IndexError::Unusable { .. })
        ));
        let file = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "usearch"))
            .unwrap();
        let mut bytes = fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&file, bytes).unwrap();
        let err = VectorIndex::open(&path, spec(48, VectorMetric::Cosine)).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    /// A large batch of new ids is added from several threads; the graph is as good as
    /// one built batch by batch, and batches that repeat an id or update existing rows
    /// keep their order (the last change wins).
    #[test]
    fn large_batches_build_in_parallel_and_keep_change_order() {
        let dir = tempfile::tempdir().unwrap();
        let data = clustered(6000, 32, 3);
        let bulk = VectorIndex::create(&dir.path().join("bulk"), spec(32, VectorMetric::Cosine), 0)
            .unwrap();
        let ops: Vec<VectorOp> = data
            .iter()
            .enumerate()
            .map(|(i, v)| VectorOp::Upsert {
                id: i as u64,
                vector: v.clone(),
            })
            .collect();
        assert!(ops.len() >= VECTOR_PARALLEL_APPLY_OPS_MIN);
        bulk.apply(1, &ops).unwrap();
        assert_eq!(bulk.len(), data.len());
        let queries = clustered(40, 32, 9);
        let mut r = 0.0;
        for q in &queries {
            r += recall(&bulk.search(q, 40).unwrap(), &exact(&data, q, 10, |_| true));
        }
        assert!(
            r / 40.0 >= 0.95,
            "recall@10 after a parallel build: {}",
            r / 40.0
        );

        // One batch (large, so it would be parallel if allowed) that moves id 0 twice
        // and deletes id 1 after updating it: applied in order.
        let mut mixed: Vec<VectorOp> = (6000..8100u64)
            .map(|id| VectorOp::Upsert {
                id,
                vector: data[(id % 6000) as usize].clone(),
            })
            .collect();
        let far: Vec<f32> = (0..32).map(|i| if i == 0 { -50.0 } else { 0.0 }).collect();
        let other: Vec<f32> = (0..32).map(|i| if i == 1 { -50.0 } else { 0.0 }).collect();
        mixed.push(VectorOp::Upsert {
            id: 0,
            vector: other.clone(),
        });
        mixed.push(VectorOp::Upsert {
            id: 0,
            vector: far.clone(),
        });
        mixed.push(VectorOp::Upsert {
            id: 1,
            vector: other.clone(),
        });
        mixed.push(VectorOp::Delete { id: 1 });
        bulk.apply(2, &mixed).unwrap();
        assert_eq!(bulk.search(&far, 40).unwrap()[0], 0);
        assert!(!bulk.contains(1));
        assert_eq!(bulk.len(), 8100 - 1);
    }

    /// A known limit (docs/architecture.md): updating rows over and over
    /// (usearch remove + add of the same key) leaves some live entries unreachable —
    /// present, with the right vector, but never found. Removals are counted.
    #[test]
    fn updated_rows_leave_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::create(dir.path(), spec(4, VectorMetric::Cosine), 0).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut coarse = || -> Vec<f32> {
            (0..4)
                .map(|_| rng.random_range(0..9) as f32 / 2.0 - 2.0)
                .collect()
        };
        let mut current: Vec<Vec<f32>> = (0..60).map(|_| coarse()).collect();
        let ops: Vec<VectorOp> = current
            .iter()
            .enumerate()
            .map(|(i, v)| VectorOp::Upsert {
                id: i as u64,
                vector: v.clone(),
            })
            .collect();
        index.apply(1, &ops).unwrap();
        assert_eq!(index.removed(), 0);
        let mut rng2 = StdRng::seed_from_u64(6);
        let mut missed = 0;
        for step in 0..2000u64 {
            let id = rng2.random_range(0..60usize);
            let v = coarse();
            current[id] = v.clone();
            index
                .apply(
                    step + 2,
                    &[VectorOp::Upsert {
                        id: id as u64,
                        vector: v,
                    }],
                )
                .unwrap();
            let q = coarse();
            if q.iter().all(|x| *x == 0.0) {
                continue;
            }
            let best = current
                .iter()
                .filter(|v| v.iter().any(|x| *x != 0.0))
                .map(|v| cosine(v, &q))
                .fold(f64::INFINITY, f64::min);
            let got = index.search(&q, 40).unwrap();
            if (cosine(&current[got[0] as usize], &q) - best).abs() > 1e-6 {
                missed += 1;
            }
        }
        // Every update of a row already indexed removed an entry.
        assert!(index.removed() > 1900, "{}", index.removed());
        assert!(
            missed > 0,
            "usearch healed its graph: the engine's rebuild can go"
        );
    }

    #[test]
    fn zero_vectors_are_not_cosine_neighbours_and_dimensions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::create(dir.path(), spec(3, VectorMetric::Cosine), 0).unwrap();
        index
            .apply(
                1,
                &[
                    VectorOp::Upsert {
                        id: 1,
                        vector: vec![0.0, 0.0, 0.0],
                    },
                    VectorOp::Upsert {
                        id: 2,
                        vector: vec![1.0, 0.0, 0.0],
                    },
                ],
            )
            .unwrap();
        assert_eq!(index.search(&[1.0, 0.1, 0.0], 10).unwrap(), vec![2]);
        assert!(index.search(&[0.0, 0.0, 0.0], 10).unwrap().is_empty());
        assert!(index.search(&[1.0, 0.0], 10).is_err());
        // Growing past the initial capacity.
        let ops: Vec<VectorOp> = (10..3000u64)
            .map(|i| VectorOp::Upsert {
                id: i,
                vector: vec![i as f32, 1.0, 2.0],
            })
            .collect();
        index.apply(2, &ops).unwrap();
        assert_eq!(index.len(), 2991);
    }
}
