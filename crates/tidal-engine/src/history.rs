//! Event history: every signal event ever accepted, as columnar Parquet files
//! partitioned by UTC day, plus an in-memory tail of the events not flushed yet.
//!
//! Layout under the data directory (readable by DuckDB, Spark or DataFusion directly):
//!
//! ```text
//! history/
//!   FLUSHED                          -- decimal LSN: every event at or below it is in a file
//!   day=2026-11-25/
//!     00000000000000000001-00000000000000004711.parquet
//! ```
//!
//! A file holds the events of one UTC day (by event `ts`) from the transactions with LSN
//! in `(lo, hi]` of its name, sorted by (signal, entity_id, ts). Columns: `signal` (UTF-8),
//! `entity_id` (INT64), `user_id` (INT64, nullable), `weight` (DOUBLE), `ts`
//! (TIMESTAMP(µs), UTC, no zone). Files are immutable once named.
//!
//! Crash safety: a checkpoint *freezes* the tail at its LSN; the flush writes the frozen
//! events (temporary name, fsync, rename, directory fsync), then `FLUSHED`, and only then
//! may the WAL be retired through that LSN. A crash anywhere in between leaves files
//! whose `hi` exceeds `FLUSHED`; those are deleted on open and their events are replayed
//! from the WAL, which still holds them. So every event is in exactly one place.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use parking_lot::{Mutex, RwLock};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tidal_core::codec::{Decoder, Encoder};
use tidal_core::time::civil_from_days;
use tidal_core::{Schema, SchemaChange, SignalEvent};
use tidal_wal::{CommittedTxn, Lsn, Op};

use crate::EngineError;

/// Events per sealed in-memory block (the unit readers share without copying).
pub const HISTORY_BLOCK_EVENTS: usize = 65_536;
/// The background checkpointer flushes once this many events wait in memory, whatever
/// the WAL size (at ~37 bytes per event, about 150 MB).
pub const HISTORY_TAIL_EVENTS_MAX: usize = 4_000_000;
/// Rows per Parquet row group: the granularity of ts/signal pruning.
pub const HISTORY_ROW_GROUP_ROWS: usize = 131_072;

const DAY_MICROS: i64 = 86_400_000_000;
const FLUSHED_FILE: &str = "FLUSHED";

/// The Arrow schema of history rows (the `signals` table).
pub fn history_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(ArrowSchema::new(vec![
                Field::new("signal", DataType::Utf8, false),
                Field::new("entity_id", DataType::Int64, false),
                Field::new("user_id", DataType::Int64, true),
                Field::new("weight", DataType::Float64, false),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                    false,
                ),
            ]))
        })
        .clone()
}

/// One immutable Parquet file of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFile {
    pub path: PathBuf,
    /// UTC day of every event in the file, in days since 1970-01-01.
    pub day: i64,
    /// LSN range `(lo, hi]` of the transactions the events came from.
    pub lo: Lsn,
    pub hi: Lsn,
    pub bytes: u64,
}

/// What a reader sees: the flushed files and the in-memory events, disjoint.
#[derive(Debug, Clone)]
pub struct HistorySnapshot {
    pub files: Vec<Arc<HistoryFile>>,
    pub batches: Vec<RecordBatch>,
}

impl HistorySnapshot {
    /// Calls `f(entity, user, weight, ts)` for every event of `signal` (by name), files
    /// first, then memory; `progress(done, of)` after each file or batch. Returns the
    /// number of events.
    pub fn for_each_event(
        &self,
        signal: &str,
        mut f: impl FnMut(u64, Option<u64>, f64, i64),
        mut progress: impl FnMut(usize, usize),
    ) -> Result<u64, EngineError> {
        let mut n = 0u64;
        let mut visit = |b: &RecordBatch| -> Result<(), EngineError> {
            let col = |i: usize| b.column(i).as_any();
            let (Some(sig), Some(ent), Some(usr), Some(w), Some(ts)) = (
                col(0).downcast_ref::<StringArray>(),
                col(1).downcast_ref::<Int64Array>(),
                col(2).downcast_ref::<Int64Array>(),
                col(3).downcast_ref::<Float64Array>(),
                col(4).downcast_ref::<TimestampMicrosecondArray>(),
            ) else {
                return Err(EngineError::CheckpointCorrupt {
                    path: "history".into(),
                    reason: "a history batch does not have the history schema".into(),
                });
            };
            for i in 0..b.num_rows() {
                if sig.value(i) != signal {
                    continue;
                }
                let user = (!usr.is_null(i)).then(|| usr.value(i) as u64);
                f(ent.value(i) as u64, user, w.value(i), ts.value(i));
                n += 1;
            }
            Ok(())
        };
        let of = self.files.len() + self.batches.len();
        for (k, file) in self.files.iter().enumerate() {
            let handle = File::open(&file.path).map_err(|e| EngineError::io(&file.path, e))?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)
                    .and_then(|b| b.build())
                    .map_err(|e| EngineError::CheckpointCorrupt {
                        path: file.path.display().to_string(),
                        reason: e.to_string(),
                    })?;
            for b in reader {
                let b = b.map_err(|e| EngineError::CheckpointCorrupt {
                    path: file.path.display().to_string(),
                    reason: e.to_string(),
                })?;
                visit(&b)?;
            }
            progress(k + 1, of);
        }
        for (k, b) in self.batches.iter().enumerate() {
            visit(b)?;
            progress(self.files.len() + k + 1, of);
        }
        Ok(n)
    }
}

/// Append buffer for the newest events.
#[derive(Debug, Default)]
struct OpenBlock {
    signal: Vec<u32>,
    entity: Vec<i64>,
    user: Vec<i64>,
    user_valid: Vec<bool>,
    weight: Vec<f64>,
    ts: Vec<i64>,
}

impl OpenBlock {
    fn len(&self) -> usize {
        self.signal.len()
    }

    fn push(&mut self, e: &SignalEvent) {
        self.signal.push(e.signal.0);
        self.entity.push(e.entity.0 as i64);
        self.user.push(e.user.map_or(0, |u| u.0 as i64));
        self.user_valid.push(e.user.is_some());
        self.weight.push(e.weight);
        self.ts.push(e.ts.0);
    }

    /// Moves the buffered events into a sealed block.
    fn seal(&mut self) -> Block {
        let taken = std::mem::take(self);
        let nulls = NullBuffer::from(taken.user_valid);
        Block {
            signal: UInt32Array::from(taken.signal),
            entity: Int64Array::from(taken.entity),
            user: Int64Array::new(taken.user.into(), Some(nulls)),
            weight: Float64Array::from(taken.weight),
            ts: TimestampMicrosecondArray::from(taken.ts),
            named: OnceLock::new(),
        }
    }
}

/// Sealed events, signal still as ids; the named batch is built once, on first read.
#[derive(Debug)]
struct Block {
    signal: UInt32Array,
    entity: Int64Array,
    user: Int64Array,
    weight: Float64Array,
    ts: TimestampMicrosecondArray,
    named: OnceLock<RecordBatch>,
}

impl Block {
    fn len(&self) -> usize {
        self.signal.len()
    }

    fn with_ids(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("signal_id", DataType::UInt32, false),
            Field::new("entity_id", DataType::Int64, false),
            Field::new("user_id", DataType::Int64, true),
            Field::new("weight", DataType::Float64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(self.signal.clone()),
                Arc::new(self.entity.clone()),
                Arc::new(self.user.clone()),
                Arc::new(self.weight.clone()),
                Arc::new(self.ts.clone()),
            ],
        )
    }

    fn named(&self, names: &StringArray) -> Result<RecordBatch, EngineError> {
        if let Some(b) = self.named.get() {
            return Ok(b.clone());
        }
        let b = name_batch(&self.with_ids().map_err(arrow_err)?, names)?;
        Ok(self.named.get_or_init(|| b).clone())
    }
}

/// Replaces the `signal_id` column by the signal names.
fn name_batch(with_ids: &RecordBatch, names: &StringArray) -> Result<RecordBatch, EngineError> {
    let signal = take(names, with_ids.column(0).as_ref(), None).map_err(arrow_err)?;
    let mut columns: Vec<ArrayRef> = vec![signal];
    columns.extend(with_ids.columns()[1..].iter().cloned());
    RecordBatch::try_new(history_schema(), columns).map_err(arrow_err)
}

fn arrow_err(e: arrow::error::ArrowError) -> EngineError {
    EngineError::History {
        reason: e.to_string(),
    }
}

/// Events frozen by a checkpoint at `hi`, waiting to be written.
#[derive(Debug)]
struct Frozen {
    lo: Lsn,
    hi: Lsn,
    blocks: Vec<Arc<Block>>,
}

#[derive(Debug, Default)]
struct State {
    /// Signal id → name, for every signal ever defined (ids are never reused).
    names: Vec<Option<Arc<str>>>,
    flushed_lsn: Lsn,
    files: Vec<Arc<HistoryFile>>,
    frozen: Vec<Arc<Frozen>>,
    /// LSN the unfrozen tail starts after.
    tail_lo: Lsn,
    sealed: Vec<Arc<Block>>,
    open: OpenBlock,
    tail_events: usize,
}

impl State {
    fn names_array(&self) -> StringArray {
        StringArray::from_iter(
            self.names
                .iter()
                .map(|n| Some(n.as_deref().unwrap_or("<unknown>"))),
        )
    }

    fn name(&mut self, id: u32, name: &str) {
        let i = id as usize;
        if self.names.len() <= i {
            self.names.resize(i + 1, None);
        }
        self.names[i] = Some(Arc::from(name));
    }
}

/// The event history. See the module docs for the layout and the crash protocol.
#[derive(Debug)]
pub(crate) struct History {
    dir: PathBuf,
    state: RwLock<State>,
    /// Serializes flushes (a checkpoint's flush and a retry of a failed one).
    flush: Mutex<()>,
    /// Events of transactions at or below this LSN were already in files at open.
    pub(crate) flushed_at_open: Lsn,
}

impl History {
    /// Opens `dir` (created if missing), deleting files a crashed flush left behind.
    pub fn open(dir: &Path) -> Result<History, EngineError> {
        fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let flushed_path = dir.join(FLUSHED_FILE);
        let flushed_lsn = match fs::read_to_string(&flushed_path) {
            Ok(text) => text
                .trim()
                .parse::<Lsn>()
                .map_err(|_| EngineError::History {
                    reason: format!("{} does not hold an LSN", flushed_path.display()),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(EngineError::io(&flushed_path, e)),
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))? {
            let entry = entry.map_err(|e| EngineError::io(dir, e))?;
            let name = entry.file_name();
            let Some(day) = name.to_str().and_then(|n| n.strip_prefix("day=")) else {
                if name.to_str().is_some_and(|n| n.ends_with(".tmp")) {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            };
            let Some(day) = parse_day(day) else { continue };
            let day_dir = entry.path();
            for f in fs::read_dir(&day_dir).map_err(|e| EngineError::io(&day_dir, e))? {
                let f = f.map_err(|e| EngineError::io(&day_dir, e))?;
                let path = f.path();
                let fname = f.file_name();
                let Some(fname) = fname.to_str() else {
                    continue;
                };
                let range = fname.strip_suffix(".parquet").and_then(|stem| {
                    let (lo, hi) = stem.split_once('-')?;
                    Some((lo.parse::<Lsn>().ok()?, hi.parse::<Lsn>().ok()?))
                });
                match range {
                    Some((lo, hi)) if hi <= flushed_lsn => {
                        let bytes = f.metadata().map_err(|e| EngineError::io(&path, e))?.len();
                        files.push(Arc::new(HistoryFile {
                            path,
                            day,
                            lo,
                            hi,
                            bytes,
                        }));
                    }
                    // Written by a flush that did not reach FLUSHED: its events are
                    // still in the WAL and will be replayed into the tail.
                    Some(_) => remove(&path)?,
                    None if fname.ends_with(".tmp") => remove(&path)?,
                    None => {}
                }
            }
        }
        files.sort_by_key(|f| (f.day, f.lo));
        Ok(History {
            dir: dir.to_path_buf(),
            state: RwLock::new(State {
                flushed_lsn,
                files,
                tail_lo: flushed_lsn,
                ..State::default()
            }),
            flush: Mutex::new(()),
            flushed_at_open: flushed_lsn,
        })
    }

    /// Restores signal names from a checkpoint section and the live schema.
    pub fn restore_names(
        &self,
        section: Option<&[u8]>,
        schema: &Schema,
    ) -> Result<(), EngineError> {
        let mut st = self.state.write();
        if let Some(bytes) = section {
            let mut d = Decoder::new(bytes);
            for _ in 0..d.u32()? {
                let id = d.u32()?;
                let name = d.str()?;
                st.name(id, name);
            }
            d.finish()?;
        }
        for s in schema.signals() {
            st.name(s.id.0, &s.name);
        }
        Ok(())
    }

    /// Records the names defined by a transaction and, if `events`, its events.
    pub fn apply(&self, txn: &CommittedTxn, events: bool) {
        let mut st = self.state.write();
        for op in &txn.ops {
            match op {
                Op::Schema(SchemaChange::CreateSignal(def)) => st.name(def.id.0, &def.name),
                Op::Signals(list) if events => {
                    for e in list.iter() {
                        st.open.push(e);
                        if st.open.len() >= HISTORY_BLOCK_EVENTS {
                            let block = Arc::new(st.open.seal());
                            st.sealed.push(block);
                        }
                    }
                    st.tail_events += list.len();
                }
                _ => {}
            }
        }
    }

    /// Events held in memory (tail and frozen), for the checkpoint trigger.
    pub fn memory_events(&self) -> usize {
        let st = self.state.read();
        st.tail_events
            + st.frozen
                .iter()
                .flat_map(|f| f.blocks.iter())
                .map(|b| b.len())
                .sum::<usize>()
    }

    /// Freezes every event applied so far as covering `(tail_lo, lsn]`. Called on the
    /// writer thread by the checkpoint snapshot, so `lsn` is the last applied LSN.
    pub fn freeze(&self, lsn: Lsn) {
        let mut st = self.state.write();
        if lsn <= st.tail_lo {
            return;
        }
        if st.open.len() > 0 {
            let block = Arc::new(st.open.seal());
            st.sealed.push(block);
        }
        let blocks = std::mem::take(&mut st.sealed);
        let lo = st.tail_lo;
        st.frozen.push(Arc::new(Frozen {
            lo,
            hi: lsn,
            blocks,
        }));
        st.tail_lo = lsn;
        st.tail_events = 0;
    }

    /// Names for the checkpoint section.
    pub fn snapshot_names(&self) -> Vec<u8> {
        let st = self.state.read();
        let mut e = Encoder::new();
        let named: Vec<(usize, &Arc<str>)> = st
            .names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .collect();
        e.u32(named.len() as u32);
        for (i, n) in named {
            e.u32(i as u32);
            e.str(n);
        }
        e.into_inner()
    }

    /// LSN through which every event is in a file.
    pub fn flushed_lsn(&self) -> Lsn {
        self.state.read().flushed_lsn
    }

    /// Writes every frozen chunk to Parquet and advances `FLUSHED`. Returns the new
    /// flushed LSN. On error nothing is published and the chunks stay frozen (a later
    /// checkpoint retries); the WAL must not be retired past [`History::flushed_lsn`].
    pub fn flush(&self) -> Result<Lsn, EngineError> {
        let _serial = self.flush.lock();
        let (frozen, names) = {
            let st = self.state.read();
            (st.frozen.clone(), st.names_array())
        };
        let (Some(first), Some(last)) = (frozen.first(), frozen.last()) else {
            return Ok(self.flushed_lsn());
        };
        let (lo, hi) = (first.lo, last.hi);
        let blocks: Vec<RecordBatch> = frozen
            .iter()
            .flat_map(|f| f.blocks.iter())
            .map(|b| b.with_ids())
            .collect::<Result<_, _>>()
            .map_err(arrow_err)?;
        let mut written = Vec::new();
        if let Some(b) = blocks.first() {
            let all = concat_batches(&b.schema(), &blocks).map_err(arrow_err)?;
            drop(blocks);
            written = self.write_days(&all, &names, lo, hi)?;
        }
        write_atomically(&self.dir, FLUSHED_FILE, format!("{hi}\n").as_bytes())?;
        let mut st = self.state.write();
        st.frozen.drain(..frozen.len());
        st.files.extend(written.into_iter().map(Arc::new));
        st.files.sort_by_key(|f| (f.day, f.lo));
        st.flushed_lsn = hi;
        tracing::debug!(lo, hi, files = st.files.len(), "history flushed");
        Ok(hi)
    }

    /// Sorts `all` by (day, signal, entity, ts) and writes one file per UTC day.
    fn write_days(
        &self,
        all: &RecordBatch,
        names: &StringArray,
        lo: Lsn,
        hi: Lsn,
    ) -> Result<Vec<HistoryFile>, EngineError> {
        let ts = all
            .column(4)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| EngineError::History {
                reason: "ts column is not a timestamp".into(),
            })?;
        let days =
            Int64Array::from_iter_values(ts.values().iter().map(|t| t.div_euclid(DAY_MICROS)));
        let sort: Vec<SortColumn> = std::iter::once(Arc::new(days.clone()) as ArrayRef)
            .chain([0, 1, 4].map(|i| all.column(i).clone()))
            .map(|values| SortColumn {
                values,
                options: None,
            })
            .collect();
        let order = lexsort_to_indices(&sort, None).map_err(arrow_err)?;
        let sorted = take_record_batch(all, &order).map_err(arrow_err)?;
        let days = take(&days, &order, None).map_err(arrow_err)?;
        let days =
            days.as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| EngineError::History {
                    reason: "day column is not INT64".into(),
                })?;
        let sorted = name_batch(&sorted, names)?;
        let mut out = Vec::new();
        let mut start = 0;
        while start < sorted.num_rows() {
            let day = days.value(start);
            let mut end = start;
            while end < sorted.num_rows() && days.value(end) == day {
                end += 1;
            }
            out.push(self.write_file(&sorted.slice(start, end - start), day, lo, hi)?);
            start = end;
        }
        sync_dir(&self.dir)?;
        Ok(out)
    }

    fn write_file(
        &self,
        batch: &RecordBatch,
        day: i64,
        lo: Lsn,
        hi: Lsn,
    ) -> Result<HistoryFile, EngineError> {
        let (y, m, d) = civil_from_days(day);
        let day_dir = self.dir.join(format!("day={y:04}-{m:02}-{d:02}"));
        fs::create_dir_all(&day_dir).map_err(|e| EngineError::io(&day_dir, e))?;
        let name = format!("{lo:020}-{hi:020}.parquet");
        let tmp = day_dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(HISTORY_ROW_GROUP_ROWS))
            .build();
        let parquet_err = |e: parquet::errors::ParquetError| EngineError::History {
            reason: format!("writing {}: {e}", tmp.display()),
        };
        let mut writer =
            ArrowWriter::try_new(file, history_schema(), Some(props)).map_err(parquet_err)?;
        writer.write(batch).map_err(parquet_err)?;
        let file = writer.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
        let bytes = file.metadata().map_err(|e| EngineError::io(&tmp, e))?.len();
        drop(file);
        let path = day_dir.join(&name);
        fs::rename(&tmp, &path).map_err(|e| EngineError::io(&path, e))?;
        sync_dir(&day_dir)?;
        Ok(HistoryFile {
            path,
            day,
            lo,
            hi,
            bytes,
        })
    }

    /// The files and in-memory events as of now; the two never overlap.
    pub fn snapshot(&self) -> Result<HistorySnapshot, EngineError> {
        let st = self.state.read();
        let names = st.names_array();
        let mut batches = Vec::new();
        for block in st
            .frozen
            .iter()
            .flat_map(|f| f.blocks.iter())
            .chain(&st.sealed)
        {
            batches.push(block.named(&names)?);
        }
        if st.open.len() > 0 {
            let copy = {
                // Cloning the open block's vectors is bounded by HISTORY_BLOCK_EVENTS.
                let mut open = OpenBlock {
                    signal: st.open.signal.clone(),
                    entity: st.open.entity.clone(),
                    user: st.open.user.clone(),
                    user_valid: st.open.user_valid.clone(),
                    weight: st.open.weight.clone(),
                    ts: st.open.ts.clone(),
                };
                open.seal()
            };
            batches.push(name_batch(&copy.with_ids().map_err(arrow_err)?, &names)?);
        }
        Ok(HistorySnapshot {
            files: st.files.clone(),
            batches,
        })
    }
}

fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let y = parts.next()?.parse::<i64>().ok()?;
    let m = parts.next()?.parse::<u32>().ok()?;
    let d = parts.next()?.parse::<u32>().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(tidal_core::time::days_from_civil(y, m, d))
}

fn remove(path: &Path) -> Result<(), EngineError> {
    fs::remove_file(path).map_err(|e| EngineError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(dir, e))
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), EngineError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| EngineError::io(&tmp, e))?;
    drop(f);
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| EngineError::io(&path, e))?;
    sync_dir(dir)
}
