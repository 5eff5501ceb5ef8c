//! The [`Engine`]: single owner of the WAL and every piece of derived state.

use std::fs::{self, File};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tidal_core::metrics::{Histogram, LATENCY_BOUNDS_MICROS, Metric};
use tidal_core::{EntityId, EntityKind, Row, Schema, SchemaChange, SignalEvent, Timestamp, Value};
use tidal_wal::{Lsn, Op, Wal, WalOptions};

type CommitOutcome = Result<tidal_wal::Committed, EngineError>;

use crate::EngineError;
use crate::checkpoint;
use crate::config::{EngineConfig, TXN_BYTES_MAX};
use crate::history::{HISTORY_TAIL_EVENTS_MAX, History};
use crate::marks::MarksMaterializer;
use crate::read::ReadView;
use crate::registry::{LedgerMaterializer, Registry, Shared};
use crate::store::EntityStore;
use crate::text::TextMaterializer;
use crate::vector::VectorMaterializer;

/// The outcome of a committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The transaction's position in the log.
    pub lsn: Lsn,
    /// Signal events applied.
    pub events_accepted: usize,
    /// Signal events dropped as exact duplicates within the dedup window.
    pub events_duplicate: usize,
    /// Entity rows written or deleted.
    pub rows: usize,
}

/// What a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStats {
    pub lsn: Lsn,
    pub bytes: u64,
    pub wal_segments_deleted: usize,
}

#[derive(Debug)]
struct CheckpointState {
    wal_bytes_at_last: u64,
    at_last: Instant,
    lsn_at_last: Lsn,
}

/// Figures the engine keeps for [`Engine::metrics`].
#[derive(Debug)]
struct EngineMetrics {
    /// How long [`Engine::open`] took (checkpoint load, index opens, WAL replay).
    open_micros: u64,
    checkpoint_micros: Histogram,
    checkpoint_failures: AtomicU64,
    checkpoint_last_bytes: AtomicU64,
    checkpoint_last_lsn: AtomicU64,
    /// Memory figures walk every warm pair: computed at most once per
    /// [`MEMORY_METRICS_REFRESH_MS`], however often they are read.
    memory: Mutex<Option<(Instant, Vec<Metric>)>>,
}

/// Minimum interval between two walks of the in-memory state for its size.
pub const MEMORY_METRICS_REFRESH_MS: u64 = 5_000;

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    metrics: EngineMetrics,
    shared: Arc<Shared>,
    /// `None` once shut down. Writers hold the read side while they wait for their
    /// commit, so shutdown (write side) waits for in-flight statements.
    wal: RwLock<Option<Wal<Registry>>>,
    ddl: Mutex<()>,
    checkpoint: Mutex<CheckpointState>,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    _lock: File,
}

/// The storage engine. `Send + Sync`; share it behind an `Arc`.
///
/// Dropping the engine performs a best-effort clean shutdown.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Opens (or creates) a database: restores the newest checkpoint, replays the WAL
    /// after it, and starts the writer and the background checkpointer.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        let dir = &config.dir;
        for sub in ["", "wal", "store", "checkpoints", "history"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| EngineError::io(&p, e))?;
        }
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| EngineError::io(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(EngineError::Locked {
                path: dir.display().to_string(),
            });
        }
        let started = Instant::now();
        let mut names = std::collections::BTreeSet::from([
            "schema",
            "ledger",
            crate::marks::MARKS_SECTION,
            crate::cohort::COHORTS_SECTION,
            crate::registry::HISTORY_SECTION,
            "text",
            "vector",
        ]);
        for m in &config.materializers {
            if !names.insert(m.name()) {
                return Err(EngineError::DuplicateMaterializer {
                    name: m.name().to_string(),
                });
            }
        }
        let store = EntityStore::open(&dir.join("store"))?;
        let history = History::open(&dir.join("history"))?;
        let cohorts = Arc::new(crate::cohort::CohortMaterializer::new(store.clone()));
        let shared = Arc::new(Shared {
            schema: RwLock::new(Arc::new(Schema::new())),
            store,
            ledger: Arc::new(LedgerMaterializer::default()),
            marks: Arc::new(MarksMaterializer::default()),
            cohorts,
            text: Arc::new(TextMaterializer::new(dir.join("text"))),
            vectors: Arc::new(VectorMaterializer::new(dir.join("vector"))),
            history,
            extra: config.materializers.clone(),
        });
        let ckpt = checkpoint::load_latest(&dir.join("checkpoints"))?;
        let ckpt_lsn = ckpt.as_ref().map_or(0, |c| c.lsn);
        let registry = Registry::restore(shared.clone(), ckpt)?;
        // Text indexes persist themselves: open (or rebuild) them before the log is
        // replayed into them.
        let schema = shared.schema.read().clone();
        shared
            .text
            .open_all(&schema, &shared.store, shared.store.applied_lsn()?)?;
        shared
            .vectors
            .open_all(&schema, &shared.store, shared.store.applied_lsn()?)?;
        let mut wal_opts = WalOptions::new(dir.join("wal"), config.clock.clone());
        wal_opts.segment_bytes_max = config.wal_segment_bytes;
        let wal = Wal::open(wal_opts, registry)?;
        let last_lsn = wal.last_lsn();
        // Everything derived from the log must be covered by it (see `LogBehindState`).
        let store_lsn = shared.store.applied_lsn()?;
        for (what, state_lsn) in [
            ("checkpoint", ckpt_lsn),
            ("entity store", store_lsn),
            ("text index", shared.text.max_covered()),
            ("vector index", shared.vectors.max_covered()),
        ] {
            if last_lsn < state_lsn {
                return Err(EngineError::LogBehindState {
                    wal_lsn: last_lsn,
                    state_lsn,
                    what,
                });
            }
        }
        tracing::info!(
            dir = %dir.display(),
            checkpoint_lsn = ckpt_lsn,
            last_lsn,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tidal engine opened"
        );
        let wal_bytes = wal.stats().bytes;
        let inner = Arc::new(Inner {
            shared,
            wal: RwLock::new(Some(wal)),
            ddl: Mutex::new(()),
            checkpoint: Mutex::new(CheckpointState {
                wal_bytes_at_last: wal_bytes,
                at_last: Instant::now(),
                lsn_at_last: ckpt_lsn,
            }),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            _lock: lock,
            config,
            metrics: EngineMetrics {
                open_micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                checkpoint_micros: Histogram::new(LATENCY_BOUNDS_MICROS),
                checkpoint_failures: AtomicU64::new(0),
                checkpoint_last_bytes: AtomicU64::new(0),
                checkpoint_last_lsn: AtomicU64::new(ckpt_lsn),
                memory: Mutex::new(None),
            },
        });
        let checkpointer = if inner.config.checkpoint_wal_bytes.is_some() {
            let weak = Arc::downgrade(&inner);
            Some(
                std::thread::Builder::new()
                    .name("tidal-checkpointer".into())
                    .spawn(move || checkpointer_loop(weak))
                    .map_err(|e| EngineError::io(&inner.config.dir, e))?,
            )
        } else {
            None
        };
        Ok(Engine {
            inner,
            checkpointer: Mutex::new(checkpointer),
        })
    }

    /// The engine's clock reading (the default `at` and default event time).
    pub fn now(&self) -> Timestamp {
        self.inner.config.clock.now()
    }

    /// The current schema.
    pub fn schema(&self) -> Arc<Schema> {
        self.inner.shared.schema.read().clone()
    }

    /// Starts an atomic write: every op added is validated immediately; nothing is
    /// applied until [`WriteTxn::commit`], and then all of it or none.
    pub fn begin(&self) -> WriteTxn<'_> {
        let schema = self.schema();
        WriteTxn {
            engine: self,
            base_version: schema.version,
            schema,
            ops: Vec::new(),
            bytes: 0,
            rows: 0,
            now: self.now(),
            ddl: None,
        }
    }

    /// Continues a transaction detached with [`WriteTxn::suspend`]. Fails with
    /// [`EngineError::Conflict`] if the schema changed since the transaction's first
    /// operation (its validated operations could be stale); the caller retries.
    pub fn resume(&self, pending: PendingTxn) -> Result<WriteTxn<'_>, EngineError> {
        let ddl = pending.ddl.then(|| self.inner.ddl.lock());
        if !pending.ops.is_empty() && self.schema().version != pending.base_version {
            return Err(EngineError::Conflict {
                what: "the schema changed while this transaction was open; retry it".into(),
            });
        }
        Ok(WriteTxn {
            engine: self,
            base_version: pending.base_version,
            schema: pending.schema,
            ops: pending.ops,
            bytes: pending.bytes,
            rows: pending.rows,
            now: self.now(),
            ddl,
        })
    }

    /// A consistent read view of entity rows and signal state.
    pub fn read(&self) -> ReadView {
        ReadView::new(self.inner.shared.clone(), self.schema())
    }

    /// Writes a checkpoint of all in-memory state, makes the entity store durable, and
    /// deletes WAL segments the checkpoint covers.
    pub fn checkpoint(&self) -> Result<CheckpointStats, EngineError> {
        checkpoint_inner(&self.inner)
    }

    /// Total bytes the WAL has written since open (for monitoring and tests).
    pub fn wal_stats(&self) -> Result<tidal_wal::WalStats, EngineError> {
        let wal = self.inner.wal.read();
        Ok(wal.as_ref().ok_or(EngineError::Closed)?.stats())
    }

    /// Monitoring figures: WAL commits, batch sizes and fsync latency, checkpoints,
    /// recovery, and the memory of each in-memory structure and index. Cheap to call:
    /// counters are atomics, and the memory walk is cached (see
    /// [`MEMORY_METRICS_REFRESH_MS`]).
    pub fn metrics(&self) -> Vec<Metric> {
        let m = &self.inner.metrics;
        let mut out = Vec::with_capacity(32);
        if let Some(wal) = self.inner.wal.read().as_ref() {
            let s = wal.stats();
            out.extend([
                Metric::counter(
                    "tidal_wal_commits",
                    "Transactions committed to the WAL (durable and applied).",
                    s.txns,
                ),
                Metric::counter(
                    "tidal_wal_batches",
                    "Group-commit batches: one write and one fdatasync each.",
                    s.batches,
                ),
                Metric::counter("tidal_wal_frames", "WAL frames written.", s.frames),
                Metric::counter(
                    "tidal_wal_written_bytes",
                    "Bytes of frames written to WAL segments.",
                    s.bytes,
                ),
                Metric::counter(
                    "tidal_signal_events_accepted",
                    "Signal events written.",
                    s.events_accepted,
                ),
                Metric::counter(
                    "tidal_signal_events_duplicate",
                    "Signal events dropped as exact duplicates within the dedup window.",
                    s.events_duplicate,
                ),
                Metric::histogram(
                    "tidal_wal_fsync_seconds",
                    "Duration of each batch's fdatasync.",
                    wal.fsync_seconds(),
                ),
                Metric::histogram(
                    "tidal_wal_batch_transactions",
                    "Transactions per group-commit batch (sharing one fsync).",
                    wal.batch_transactions(),
                ),
                Metric::gauge(
                    "tidal_wal_last_lsn",
                    "LSN of the last committed transaction.",
                    wal.last_lsn() as f64,
                ),
                Metric::gauge(
                    "tidal_wal_poisoned",
                    "1 when a failed write or fsync stopped the log; writes fail until a restart.",
                    if wal.is_poisoned() { 1.0 } else { 0.0 },
                ),
                Metric::gauge(
                    "tidal_recovery_read_transactions",
                    "Transactions the last open read from the WAL (those a checkpoint covers are skipped).",
                    s.replayed_txns as f64,
                ),
                Metric::gauge(
                    "tidal_recovery_read_bytes",
                    "WAL bytes the last open read.",
                    s.replayed_bytes as f64,
                ),
            ]);
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.extend([
            Metric::gauge(
                "tidal_recovery_seconds",
                "How long the last open took: checkpoint load, index opens, WAL replay.",
                m.open_micros as f64 * 1e-6,
            ),
            Metric::histogram(
                "tidal_checkpoint_seconds",
                "Duration of each checkpoint (state snapshot, store flush, history and index flushes).",
                m.checkpoint_micros.snapshot(1e6),
            ),
            Metric::counter(
                "tidal_checkpoint_failures",
                "Checkpoints that failed (the WAL keeps everything they would have covered).",
                get(&m.checkpoint_failures),
            ),
            Metric::gauge(
                "tidal_checkpoint_last_bytes",
                "Size of the last checkpoint written.",
                get(&m.checkpoint_last_bytes) as f64,
            ),
            Metric::gauge(
                "tidal_checkpoint_last_lsn",
                "LSN the last checkpoint covers.",
                get(&m.checkpoint_last_lsn) as f64,
            ),
        ]);
        let mut memory = m.memory.lock();
        let fresh = memory
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < Duration::from_millis(MEMORY_METRICS_REFRESH_MS));
        if !fresh {
            *memory = Some((Instant::now(), self.memory_metrics()));
        }
        if let Some((_, figures)) = memory.as_ref() {
            out.extend(figures.iter().cloned());
        }
        out
    }

    fn memory_metrics(&self) -> Vec<Metric> {
        let shared = &self.inner.shared;
        let part = |name: &'static str, bytes: usize| {
            Metric::gauge(
                "tidal_memory_bytes",
                "Estimated heap bytes of each in-memory structure.",
                bytes as f64,
            )
            .label("part", name)
        };
        let view = self.read();
        let ledger = view.with_ledger(|l| l.memory_bytes());
        let cohorts: usize = view.with_cohorts(|r| r.state.stats().iter().map(|s| s.bytes).sum());
        let mut out = vec![
            part("ledger", ledger),
            part("cohorts", cohorts),
            part("text_queue", shared.text.queued_bytes()),
            Metric::gauge(
                "tidal_history_tail_events",
                "Signal events held in memory until the next history flush.",
                shared.history.memory_events() as f64,
            ),
        ];
        for v in shared.vectors.all() {
            out.push(
                Metric::gauge(
                    "tidal_vector_index_memory_bytes",
                    "Memory of each HNSW index.",
                    v.index.memory_bytes() as f64,
                )
                .label("index", v.def.name.clone()),
            );
            out.push(
                Metric::gauge(
                    "tidal_vector_index_vectors",
                    "Vectors in each HNSW index.",
                    v.index.len() as f64,
                )
                .label("index", v.def.name.clone()),
            );
        }
        out
    }

    /// Clean shutdown: waits for in-flight writes, checkpoints, closes the WAL and makes
    /// the store durable. Idempotent.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        {
            *self.inner.stop.lock() = true;
            self.inner.stop_cv.notify_all();
        }
        if let Some(h) = self.checkpointer.lock().take() {
            let _ = h.join();
        }
        if self.inner.wal.read().is_none() {
            return Ok(());
        }
        let ckpt = checkpoint_inner(&self.inner);
        let wal = self.inner.wal.write().take();
        if let Some(wal) = wal {
            wal.close()?;
        }
        self.inner.shared.text.close()?;
        self.inner.shared.store.persist()?;
        ckpt.map(|_| ())
    }

    fn commit_ops(&self, ops: Vec<Op>) -> Result<tidal_wal::Committed, EngineError> {
        let wal = self.inner.wal.read();
        let wal = wal.as_ref().ok_or(EngineError::Closed)?;
        Ok(wal.commit(ops)?)
    }

    /// Queues `ops` for group commit; the receiver yields the outcome once they are
    /// durable and applied. A receiver whose sender is gone means the log shut down
    /// (or its writer died) before answering.
    fn submit_ops(&self, ops: Vec<Op>) -> Result<oneshot::Receiver<CommitOutcome>, EngineError> {
        let wal = self.inner.wal.read();
        let wal = wal.as_ref().ok_or(EngineError::Closed)?;
        let (tx, rx) = oneshot::channel();
        wal.commit_then(ops, move |r| {
            // The waiter may have gone (a dropped future); the commit stands regardless.
            let _ = tx.send(r.map_err(EngineError::from));
        })?;
        Ok(rx)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "shutdown on drop failed; the next open will replay the WAL");
        }
    }
}

fn checkpoint_inner(inner: &Inner) -> Result<CheckpointStats, EngineError> {
    let started = Instant::now();
    let result = checkpoint_body(inner);
    let m = &inner.metrics;
    match &result {
        Ok(stats) => {
            m.checkpoint_micros.observe_duration(started.elapsed());
            m.checkpoint_last_bytes
                .store(stats.bytes, Ordering::Relaxed);
            m.checkpoint_last_lsn.store(stats.lsn, Ordering::Relaxed);
        }
        Err(_) => {
            m.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

fn checkpoint_body(inner: &Inner) -> Result<CheckpointStats, EngineError> {
    let mut state = inner.checkpoint.lock();
    let snapshot = {
        let wal = inner.wal.read();
        let wal = wal.as_ref().ok_or(EngineError::Closed)?;
        wal.with_applier(|reg| reg.snapshot())??
    };
    let lsn = snapshot.lsn;
    let bytes = checkpoint::write(&inner.config.dir.join("checkpoints"), &snapshot)?;
    drop(snapshot);
    inner.shared.store.persist()?;
    // The WAL is the only other copy of unflushed events: retire only what the history
    // files now hold.
    let flushed = inner.shared.history.flush()?;
    // Text indexes persist themselves; the log they still need stays.
    let text = inner.shared.text.flush()?;
    let vectors = inner.shared.vectors.flush()?;
    let (deleted, wal_bytes) = {
        let wal = inner.wal.read();
        let wal = wal.as_ref().ok_or(EngineError::Closed)?;
        (
            wal.retire_through(lsn.min(flushed).min(text).min(vectors))?,
            wal.stats().bytes,
        )
    };
    *state = CheckpointState {
        wal_bytes_at_last: wal_bytes,
        at_last: Instant::now(),
        lsn_at_last: lsn,
    };
    tracing::debug!(
        lsn,
        bytes,
        wal_segments_deleted = deleted,
        "checkpoint written"
    );
    Ok(CheckpointStats {
        lsn,
        bytes,
        wal_segments_deleted: deleted,
    })
}

/// Checks once a second whether the WAL has grown enough (or enough time has passed
/// with new writes) to warrant a checkpoint.
fn checkpointer_loop(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        {
            let mut stop = inner.stop.lock();
            if *stop {
                return;
            }
            inner.stop_cv.wait_for(&mut stop, Duration::from_secs(1));
            if *stop {
                return;
            }
        }
        let due = {
            let state = inner.checkpoint.lock();
            let wal = inner.wal.read();
            let Some(wal) = wal.as_ref() else { return };
            let stats = wal.stats();
            let grown = stats.bytes.saturating_sub(state.wal_bytes_at_last);
            let limit = inner.config.checkpoint_wal_bytes.unwrap_or(u64::MAX);
            grown >= limit
                || inner.shared.history.memory_events() >= HISTORY_TAIL_EVENTS_MAX
                || (wal.last_lsn() > state.lsn_at_last
                    && state.at_last.elapsed() >= inner.config.checkpoint_interval)
        };
        if due && let Err(e) = checkpoint_inner(&inner) {
            tracing::error!(error = %e, "background checkpoint failed");
        }
    }
}

/// An atomic write being assembled. See [`Engine::begin`].
#[derive(Debug)]
pub struct WriteTxn<'a> {
    engine: &'a Engine,
    schema: Arc<Schema>,
    ops: Vec<Op>,
    bytes: usize,
    rows: usize,
    now: Timestamp,
    /// Held from the first schema change to commit, so DDL is serialized and signal ids
    /// assigned here stay unique.
    ddl: Option<MutexGuard<'a, ()>>,
    /// Engine schema version the operations were validated against.
    base_version: u64,
}

/// A transaction's validated operations, detached from the engine between the
/// statements of a client's `BEGIN … COMMIT` block (no locks are held while detached).
#[derive(Debug)]
pub struct PendingTxn {
    ops: Vec<Op>,
    bytes: usize,
    rows: usize,
    schema: Arc<Schema>,
    base_version: u64,
    ddl: bool,
}

/// A point in a [`PendingTxn`] that it can be rolled back to ([`PendingTxn::mark`]):
/// what SQL's `SAVEPOINT` names, and how a failed statement inside a block is undone.
#[derive(Debug, Clone)]
pub struct TxnMark {
    ops: usize,
    /// Events in the last op when it is `Op::Signals`: later events are appended to it.
    last_signals: usize,
    bytes: usize,
    rows: usize,
    schema: Arc<Schema>,
    /// The engine schema version the operations up to the mark were validated against
    /// (a schema change after the mark rebases the transaction onto a newer one).
    base_version: u64,
    ddl: bool,
}

impl PendingTxn {
    /// Whether any operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The transaction as it is now, to return to with [`PendingTxn::rollback_to`].
    pub fn mark(&self) -> TxnMark {
        TxnMark {
            ops: self.ops.len(),
            last_signals: match self.ops.last() {
                Some(Op::Signals(v)) => v.len(),
                _ => 0,
            },
            bytes: self.bytes,
            rows: self.rows,
            schema: self.schema.clone(),
            base_version: self.base_version,
            ddl: self.ddl,
        }
    }

    /// Drops every operation added since `mark`, which must have been taken from this
    /// transaction (at or before its current state).
    pub fn rollback_to(&mut self, mark: &TxnMark) {
        debug_assert!(mark.ops <= self.ops.len(), "a mark from a later state");
        self.ops.truncate(mark.ops);
        if let Some(Op::Signals(v)) = self.ops.last_mut() {
            v.truncate(mark.last_signals);
        }
        self.bytes = mark.bytes;
        self.rows = mark.rows;
        self.schema = mark.schema.clone();
        self.base_version = mark.base_version;
        self.ddl = mark.ddl;
    }

    /// Whether it changes the schema (resuming it takes the DDL lock, and it commits
    /// while holding it).
    pub fn changes_schema(&self) -> bool {
        self.ddl
    }
}

impl WriteTxn<'_> {
    fn account(&mut self, bytes: usize) -> Result<(), EngineError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > TXN_BYTES_MAX {
            return Err(EngineError::TooLarge {
                what: format!("more than {TXN_BYTES_MAX} bytes in one statement"),
            });
        }
        Ok(())
    }

    /// The time used for events without a timestamp and for the future-skew check.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The schema this transaction validates against (including its own changes).
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Adds one signal event. `ts` defaults to the transaction's `now`.
    pub fn signal(
        &mut self,
        signal: &str,
        entity: EntityId,
        user: Option<EntityId>,
        weight: f64,
        ts: Option<Timestamp>,
    ) -> Result<(), EngineError> {
        let def = self.schema.signal(signal)?;
        let ev = SignalEvent {
            signal: def.id,
            entity,
            user,
            weight,
            ts: ts.unwrap_or(self.now),
        };
        ev.validate(self.now)?;
        self.account(SignalEvent::ENCODED_BYTES)?;
        match self.ops.last_mut() {
            Some(Op::Signals(v)) => v.push(ev),
            _ => self.ops.push(Op::Signals(vec![ev])),
        }
        Ok(())
    }

    fn check_row(&self, kind: EntityKind, row: &Row) -> Result<EntityId, EngineError> {
        let table = self.schema.table(kind)?;
        if row.len() != table.columns.len() {
            return Err(EngineError::RowArity {
                kind,
                expected: table.columns.len(),
                got: row.len(),
            });
        }
        for (v, col) in row.iter().zip(&table.columns) {
            v.check(col)?;
        }
        match row.first() {
            Some(Value::Int(id)) => EntityId::from_i64(*id).ok_or_else(|| {
                EngineError::Core(tidal_core::CoreError::BadValue {
                    column: "id".into(),
                    reason: format!("ids must be non-negative, got {id}"),
                })
            }),
            _ => Err(EngineError::NullId { kind }),
        }
    }

    fn row_bytes(row: &Row) -> usize {
        row.iter()
            .map(|v| match v {
                Value::Text(s) => 5 + s.len(),
                Value::TextArray(a) => 5 + a.iter().map(|s| 4 + s.len()).sum::<usize>(),
                Value::Vector(x) => 5 + 4 * x.len(),
                _ => 9,
            })
            .sum::<usize>()
            + 16
    }

    /// Inserts a new row; committing fails with [`EngineError::DuplicateKey`] if the id
    /// exists (checked at commit time, against all earlier commits).
    pub fn insert(&mut self, kind: EntityKind, row: Row) -> Result<(), EngineError> {
        let id = self.check_row(kind, &row)?;
        self.account(Self::row_bytes(&row))?;
        self.rows += 1;
        self.ops.push(Op::Insert { kind, id, row });
        Ok(())
    }

    /// Inserts or replaces a whole row.
    pub fn upsert(&mut self, kind: EntityKind, row: Row) -> Result<(), EngineError> {
        let id = self.check_row(kind, &row)?;
        self.account(Self::row_bytes(&row))?;
        self.rows += 1;
        self.ops.push(Op::Upsert { kind, id, row });
        Ok(())
    }

    /// Deletes a row (no error if it does not exist).
    pub fn delete(&mut self, kind: EntityKind, id: EntityId) -> Result<(), EngineError> {
        self.schema.table(kind)?;
        self.account(16)?;
        self.rows += 1;
        self.ops.push(Op::Delete { kind, id });
        Ok(())
    }

    /// Adds the edge `src → dst` to relationship `name` (a duplicate edge stays one
    /// edge, with its first `created_at`). Targets need not exist (SQL.md §8).
    pub fn edge_insert(
        &mut self,
        name: &str,
        src: EntityId,
        dst: EntityId,
        created_at: Option<Timestamp>,
    ) -> Result<(), EngineError> {
        let rel = self.schema.relationship(name)?.id;
        self.account(40)?;
        self.rows += 1;
        self.ops.push(Op::EdgeInsert {
            rel,
            src,
            dst,
            created_at: created_at.unwrap_or(self.now),
        });
        Ok(())
    }

    /// Removes the edge `src → dst` of relationship `name` (no error if absent).
    pub fn edge_delete(
        &mut self,
        name: &str,
        src: EntityId,
        dst: EntityId,
    ) -> Result<(), EngineError> {
        let rel = self.schema.relationship(name)?.id;
        self.account(32)?;
        self.rows += 1;
        self.ops.push(Op::EdgeDelete { rel, src, dst });
        Ok(())
    }

    /// Adds a schema change, validated against the schema as this transaction sees it.
    pub fn schema_change(&mut self, change: SchemaChange) -> Result<(), EngineError> {
        if self.ddl.is_none() {
            self.ddl = Some(self.engine.inner.ddl.lock());
            // Under the DDL lock the schema cannot move; validate against the newest.
            if self.schema.version != self.engine.schema().version {
                if self.ops.iter().any(|op| !matches!(op, Op::Schema(_))) {
                    return Err(EngineError::Conflict {
                        what: "the schema changed while this transaction was open; retry it".into(),
                    });
                }
                let mut s = (*self.engine.schema()).clone();
                self.base_version = s.version;
                for op in &self.ops {
                    if let Op::Schema(c) = op {
                        s.apply(c)?;
                    }
                }
                self.schema = Arc::new(s);
            }
        }
        let change = self.schema.prepare(change)?;
        let mut next = (*self.schema).clone();
        next.apply(&change)?;
        self.schema = Arc::new(next);
        self.account(256)?;
        self.ops.push(Op::Schema(change));
        Ok(())
    }

    /// Number of ops so far.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Detaches the transaction from the engine (releasing the DDL lock) so it can be
    /// continued later with [`Engine::resume`].
    pub fn suspend(self) -> PendingTxn {
        PendingTxn {
            ddl: self.ddl.is_some(),
            ops: self.ops,
            bytes: self.bytes,
            rows: self.rows,
            schema: self.schema,
            base_version: self.base_version,
        }
    }

    /// Like [`WriteTxn::commit`], but waits without blocking a thread: the returned
    /// future resolves once the transaction is durable and applied. Use it from async
    /// code, where a blocking commit would park a runtime worker for a whole fsync.
    ///
    /// The transaction is submitted before this returns: dropping the future does not
    /// cancel it, it only stops waiting for the answer. A transaction that changes the
    /// schema holds the DDL lock until applied, so it commits synchronously here.
    pub fn commit_async(
        self,
    ) -> impl Future<Output = Result<WriteOutcome, EngineError>> + Send + 'static {
        let rows = self.rows;
        let submitted = if self.ddl.is_some() {
            Err(self.commit())
        } else {
            Ok(self.engine.submit_ops(self.ops))
        };
        async move {
            let committed = match submitted {
                Err(done) => return done,
                Ok(rx) => rx?.await.map_err(|_| EngineError::Closed)??,
            };
            Ok(WriteOutcome {
                lsn: committed.lsn,
                events_accepted: committed.events_accepted,
                events_duplicate: committed.events_duplicate,
                rows,
            })
        }
    }

    /// Makes the transaction durable and applied, all or nothing.
    pub fn commit(self) -> Result<WriteOutcome, EngineError> {
        // A new signal with cohorts starts tracking users columns from the store; a
        // checkpoint right after keeps replay from crossing that read (cohort.rs).
        let cohorts = self.ops.iter().any(
            |op| matches!(op, Op::Schema(SchemaChange::CreateSignal(d)) if !d.cohorts.is_empty()),
        );
        let committed = self.engine.commit_ops(self.ops)?;
        if cohorts && let Err(e) = checkpoint_inner(&self.engine.inner) {
            tracing::warn!(error = %e, "checkpoint after a COHORTS signal failed");
        }
        drop(self.ddl);
        Ok(WriteOutcome {
            lsn: committed.lsn,
            events_accepted: committed.events_accepted,
            events_duplicate: committed.events_duplicate,
            rows: self.rows,
        })
    }
}
