//! The text index of one table: a tantivy index on disk, fed in log order by the
//! engine, made visible on demand.
//!
//! Writers never wait for tantivy. [`TextIndex::apply`] appends a transaction's changes
//! to a bounded queue and returns; one indexer thread per index drains the queue into
//! tantivy's `IndexWriter`. A tantivy commit is what makes documents searchable, and it
//! costs milliseconds (it flushes the in-memory segment and fsyncs the segment files and
//! `meta.json`), so it is never done per transaction. It is done
//!
//! * when a reader asks for a snapshot and changes are queued or uncommitted
//!   ([`TextIndex::snapshot`]): the reader waits for that one commit, which covers every
//!   change queued before it asked, and every reader waiting at the time shares it; this
//!   is what makes a row searchable by the statement after the one that wrote it;
//! * in the background, [`TEXT_COMMIT_INTERVAL_MS`] after the first uncommitted change,
//!   or after [`TEXT_COMMIT_DOCS_MAX`] changes, so the log after the index's last commit
//!   stays short;
//! * on [`TextIndex::flush`] (the engine's checkpoint).
//!
//! Every commit carries the LSN it covers in tantivy's commit payload; after a crash the
//! engine replays the log after it. Commits are durable (fsynced), so the payload read
//! at open is always backed by the segments it names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use parking_lot::{Condvar, Mutex};
use tantivy::collector::Count;
use tantivy::query::{AllQuery, QueryParser};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tidal_core::TextAnalyzer as Analyzer;

use crate::IndexError;
use crate::search::TextSnapshot;
use crate::stats::{LiveStats, SegmentStats};

/// Memory of tantivy's in-memory segment (its indexing arena). A larger arena indexes
/// bulk loads into fewer segments but makes each commit slower (the arena is set up
/// again per commit).
pub const TEXT_WRITER_ARENA_BYTES: usize = 32 << 20;
/// Bytes of text changes queued for the indexer before writers wait (back-pressure).
pub const TEXT_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Changes queued for the indexer before writers wait.
pub const TEXT_QUEUE_OPS_MAX: usize = 100_000;
/// The longest time changes stay uncommitted when no reader asks for them.
pub const TEXT_COMMIT_INTERVAL_MS: u64 = 1_000;
/// Uncommitted changes that trigger a commit without a reader asking.
pub const TEXT_COMMIT_DOCS_MAX: usize = 200_000;
/// How long a reader waits for the index to reach the writes before it.
pub const TEXT_REFRESH_WAIT_MS_MAX: u64 = 30_000;

/// Commit payloads look like `tidal-lsn:<lsn>`.
const PAYLOAD_PREFIX: &str = "tidal-lsn:";
/// The id field's name cannot be a SQL identifier, so no text column (and no query's
/// `field:` prefix written for one) can name it.
pub(crate) const ID_FIELD: &str = "#id";

/// What to index: the table's text fields (with query-time boosts) and the analyzer.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    /// `(column name, boost)`, in declaration order.
    pub fields: Vec<(String, f32)>,
    pub analyzer: Analyzer,
}

impl TextSpec {
    fn tokenizer(&self) -> &'static str {
        match self.analyzer {
            Analyzer::Default => "default",
            Analyzer::EnStem => "en_stem",
        }
    }

    pub(crate) fn schema(&self) -> Schema {
        let mut b = Schema::builder();
        b.add_u64_field(ID_FIELD, INDEXED | FAST);
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(self.tokenizer())
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(true);
        for (name, _) in &self.fields {
            b.add_text_field(
                &text_field_name(name),
                TextOptions::default().set_indexing_options(indexing.clone()),
            );
        }
        for (name, _) in &self.fields {
            b.add_u64_field(&len_field_name(name), FAST);
        }
        b.build()
    }
}

/// Text fields keep their column names, so queries say `title:word`.
fn text_field_name(column: &str) -> String {
    column.to_string()
}
/// The exact token count of a field, under a name no column can have.
fn len_field_name(column: &str) -> String {
    format!("#len {column}")
}

/// One change to the index, in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum TextOp {
    /// A new row (its id is not in the index).
    Insert {
        id: u64,
        texts: Vec<Option<String>>,
    },
    /// A row written over whatever the id had.
    Upsert {
        id: u64,
        texts: Vec<Option<String>>,
    },
    Delete {
        id: u64,
    },
}

impl TextOp {
    fn bytes(&self) -> usize {
        match self {
            TextOp::Insert { texts, .. } | TextOp::Upsert { texts, .. } => {
                32 + texts.iter().flatten().map(|t| t.len() + 8).sum::<usize>()
            }
            TextOp::Delete { .. } => 16,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    ops: Vec<TextOp>,
    bytes: usize,
    /// LSN of the last transaction with changes queued.
    text_lsn: u64,
    /// Every text change of transactions up to here is queued (or indexed).
    covered_lsn: u64,
    /// A reader (or flush) waits for everything queued to be committed.
    commit_wanted: bool,
    stop: bool,
}

/// A reader waiting for the commit that covers an LSN.
type Waiter = (u64, oneshot::Sender<Result<Arc<TextSnapshot>, IndexError>>);

struct Visible {
    /// Text changes through this LSN are searchable in `snapshot`.
    lsn: u64,
    /// The last commit (durable), as LSN covered.
    durable_lsn: u64,
    snapshot: Arc<TextSnapshot>,
    waiters: Vec<Waiter>,
    failed: Option<String>,
}

struct Inner {
    path: PathBuf,
    spec: TextSpec,
    index: Index,
    reader: IndexReader,
    id_field: Field,
    text_fields: Vec<Field>,
    len_fields: Vec<Field>,
    queue: Mutex<Queue>,
    work: Condvar,
    space: Condvar,
    visible: Mutex<Visible>,
    /// Per segment and delete generation, the live statistics.
    segment_stats:
        Mutex<std::collections::HashMap<(tantivy::index::SegmentId, Option<u64>), SegmentStats>>,
}

/// The text index of one table. See the module docs.
pub struct TextIndex {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> IndexError {
    IndexError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl TextIndex {
    /// Opens the index in `path`, which must hold an index of exactly `spec` with a
    /// commit payload; returns it with the LSN its last commit covers. Anything else
    /// (missing, damaged, another definition) is [`IndexError::Unusable`]: the caller
    /// rebuilds it with [`TextIndex::create`].
    pub fn open(path: &Path, spec: TextSpec) -> Result<(TextIndex, u64), IndexError> {
        let unusable = |reason: String| IndexError::Unusable {
            path: path.display().to_string(),
            reason,
        };
        if !path.join("meta.json").exists() {
            return Err(unusable("no index here".into()));
        }
        let index = Index::open_in_dir(path).map_err(|e| unusable(e.to_string()))?;
        if index.schema() != spec.schema() {
            return Err(unusable("it indexes other fields".into()));
        }
        let metas = index.load_metas().map_err(|e| unusable(e.to_string()))?;
        let lsn = metas
            .payload
            .as_deref()
            .and_then(|p| p.strip_prefix(PAYLOAD_PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| unusable("its last commit carries no LSN".into()))?;
        // Every segment must open and its fast fields read: a damaged file shows here.
        let t = Self::start(path, spec, index, lsn).map_err(|e| unusable(e.to_string()))?;
        Ok((t, lsn))
    }

    /// Creates an empty index in `path` (removing whatever is there), committed as
    /// covering `lsn`.
    pub fn create(path: &Path, spec: TextSpec, lsn: u64) -> Result<TextIndex, IndexError> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| io_err(path, e))?;
        }
        std::fs::create_dir_all(path).map_err(|e| io_err(path, e))?;
        let index = Index::create_in_dir(path, spec.schema())?;
        let t = Self::start(path, spec, index, 0)?;
        t.commit_through(lsn, true)?;
        Ok(t)
    }

    fn start(path: &Path, spec: TextSpec, index: Index, lsn: u64) -> Result<TextIndex, IndexError> {
        let schema = index.schema();
        let field = |name: &str| schema.get_field(name);
        let id_field = field(ID_FIELD)?;
        let text_fields = spec
            .fields
            .iter()
            .map(|(n, _)| field(&text_field_name(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let len_fields = spec
            .fields
            .iter()
            .map(|(n, _)| field(&len_field_name(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, TEXT_WRITER_ARENA_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            spec,
            index,
            reader,
            id_field,
            text_fields,
            len_fields,
            queue: Mutex::new(Queue {
                text_lsn: lsn,
                covered_lsn: lsn,
                ..Queue::default()
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            visible: Mutex::new(Visible {
                lsn,
                durable_lsn: lsn,
                snapshot: Arc::new(placeholder_snapshot()?),
                waiters: Vec::new(),
                failed: None,
            }),
            segment_stats: Mutex::new(Default::default()),
        });
        let snapshot = inner.build_snapshot(lsn)?;
        inner.visible.lock().snapshot = snapshot;
        let worker_inner = inner.clone();
        let worker = std::thread::Builder::new()
            .name("tidal-text-indexer".into())
            .spawn(move || worker_inner.run(writer))
            .map_err(|e| io_err(path, e))?;
        Ok(TextIndex {
            inner,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The definition this index was opened with.
    pub fn spec(&self) -> &TextSpec {
        &self.inner.spec
    }

    /// Queues the text changes of the transaction at `lsn` (called in log order).
    /// Returns once they are queued; waits only while the queue is full.
    pub fn apply(&self, lsn: u64, ops: Vec<TextOp>) -> Result<(), IndexError> {
        let bytes: usize = ops.iter().map(TextOp::bytes).sum();
        let mut q = self.inner.queue.lock();
        while !q.ops.is_empty()
            && (q.ops.len() + ops.len() > TEXT_QUEUE_OPS_MAX
                || q.bytes + bytes > TEXT_QUEUE_BYTES_MAX)
        {
            if q.stop {
                return Err(IndexError::Closed);
            }
            if let Some(reason) = self.inner.visible.lock().failed.clone() {
                return Err(IndexError::Failed { reason });
            }
            self.inner
                .space
                .wait_for(&mut q, Duration::from_millis(100));
        }
        if q.stop {
            return Err(IndexError::Closed);
        }
        if !ops.is_empty() {
            q.ops.extend(ops);
            q.bytes += bytes;
            q.text_lsn = q.text_lsn.max(lsn);
        }
        q.covered_lsn = q.covered_lsn.max(lsn);
        drop(q);
        self.inner.work.notify_one();
        Ok(())
    }

    /// Notes that the transaction at `lsn` changed nothing here (so the index's commits
    /// can cover it, and the log before it can be retired).
    pub fn note(&self, lsn: u64) {
        let mut q = self.inner.queue.lock();
        q.covered_lsn = q.covered_lsn.max(lsn);
    }

    /// A snapshot that shows every change queued before this call, waiting for the one
    /// commit that makes them visible if needed. The indexer answers every waiter (with
    /// the snapshot or its failure); callers with a deadline wrap this in their timer
    /// ([`TEXT_REFRESH_WAIT_MS_MAX`] is the engine's).
    pub async fn snapshot(&self) -> Result<Arc<TextSnapshot>, IndexError> {
        let rx = {
            let mut q = self.inner.queue.lock();
            let target = q.text_lsn;
            let mut v = self.inner.visible.lock();
            if let Some(reason) = &v.failed {
                return Err(IndexError::Failed {
                    reason: reason.clone(),
                });
            }
            if v.lsn >= target {
                return Ok(v.snapshot.clone());
            }
            let (tx, rx) = oneshot::channel();
            v.waiters.push((target, tx));
            q.commit_wanted = true;
            rx
        };
        self.inner.work.notify_one();
        rx.await.map_err(|_| IndexError::Closed)?
    }

    /// The newest visible snapshot, without waiting for queued changes (for work that
    /// needs the index's analyzer and statistics, not its freshest rows).
    pub fn current(&self) -> Arc<TextSnapshot> {
        self.inner.visible.lock().snapshot.clone()
    }

    /// [`TextIndex::snapshot`] for callers that are not async.
    pub fn snapshot_blocking(&self) -> Result<Arc<TextSnapshot>, IndexError> {
        futures::executor::block_on(self.snapshot())
    }

    /// Commits everything queued so far and returns the LSN the index now durably
    /// covers (the engine retires no log after it).
    pub fn flush(&self) -> Result<u64, IndexError> {
        let target = self.inner.queue.lock().covered_lsn;
        self.commit_through(target, false)?;
        Ok(self.inner.visible.lock().durable_lsn)
    }

    /// Waits for a commit covering `target` (a new one when `force`, even if nothing
    /// changed).
    fn commit_through(&self, target: u64, force: bool) -> Result<(), IndexError> {
        let rx = {
            let mut q = self.inner.queue.lock();
            let mut v = self.inner.visible.lock();
            if let Some(reason) = &v.failed {
                return Err(IndexError::Failed {
                    reason: reason.clone(),
                });
            }
            if !force && v.durable_lsn >= target && q.ops.is_empty() {
                return Ok(());
            }
            q.covered_lsn = q.covered_lsn.max(target);
            let (tx, rx) = oneshot::channel();
            // A durable-LSN waiter: answered after the next commit at or past target.
            v.waiters.push((target, tx));
            q.commit_wanted = true;
            rx
        };
        self.inner.work.notify_one();
        futures::executor::block_on(rx).map_err(|_| IndexError::Closed)??;
        Ok(())
    }

    /// The LSN the last commit covers.
    pub fn durable_lsn(&self) -> u64 {
        self.inner.visible.lock().durable_lsn
    }

    /// Bytes of queued changes (the index's in-memory part besides tantivy's arena of
    /// [`TEXT_WRITER_ARENA_BYTES`]).
    pub fn queued_bytes(&self) -> usize {
        self.inner.queue.lock().bytes
    }

    /// Stops the indexer after committing what is queued. Idempotent.
    pub fn close(&self) -> Result<(), IndexError> {
        let worker = self.worker.lock().take();
        let Some(worker) = worker else { return Ok(()) };
        let flushed = self.flush();
        self.inner.queue.lock().stop = true;
        self.inner.work.notify_all();
        self.inner.space.notify_all();
        let _ = worker.join();
        flushed.map(|_| ())
    }

    /// Closes the index and deletes its directory.
    pub fn destroy(&self) -> Result<(), IndexError> {
        {
            let mut q = self.inner.queue.lock();
            q.ops.clear();
            q.bytes = 0;
        }
        let _ = self.close();
        let path = &self.inner.path;
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }

    /// Counts the documents (rows) of the current snapshot the expensive way, for
    /// tests: tantivy's own count of alive documents.
    pub fn count_alive(&self) -> Result<u64, IndexError> {
        let snap = self.inner.visible.lock().snapshot.clone();
        Ok(snap.searcher.search(&AllQuery, &Count)? as u64)
    }
}

impl Drop for TextIndex {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, path = %self.inner.path.display(), "closing a text index failed");
        }
    }
}

/// A snapshot of nothing, replaced before the index is handed out.
fn placeholder_snapshot() -> Result<TextSnapshot, IndexError> {
    let mut b = Schema::builder();
    let id = b.add_u64_field(ID_FIELD, INDEXED | FAST);
    let index = Index::create_in_ram(b.build());
    let searcher = index.reader()?.searcher();
    Ok(TextSnapshot {
        stats: LiveStats::new(searcher.clone(), &[], &[]),
        parser: QueryParser::for_index(&index, vec![]),
        searcher,
        id_field: id,
        text_fields: Vec::new(),
        lsn: 0,
    })
}

impl Inner {
    fn build_snapshot(&self, lsn: u64) -> Result<Arc<TextSnapshot>, IndexError> {
        let searcher = self.reader.searcher();
        let len_names: Vec<String> = self
            .spec
            .fields
            .iter()
            .map(|(n, _)| len_field_name(n))
            .collect();
        let mut cache = self.segment_stats.lock();
        let mut live = std::collections::HashMap::new();
        let mut segments = Vec::new();
        for reader in searcher.segment_readers() {
            let key = (reader.segment_id(), reader.delete_opstamp());
            let stats = match cache.get(&key) {
                Some(s) => s.clone(),
                None => SegmentStats::compute(reader, &len_names)?,
            };
            live.insert(key, stats.clone());
            segments.push(stats);
        }
        *cache = live;
        drop(cache);
        let mut parser = QueryParser::for_index(&self.index, self.text_fields.clone());
        for (f, (_, boost)) in self.text_fields.iter().zip(&self.spec.fields) {
            if *boost != 1.0 {
                parser.set_field_boost(*f, *boost);
            }
        }
        Ok(Arc::new(TextSnapshot {
            stats: LiveStats::new(searcher.clone(), &self.text_fields, &segments),
            parser,
            searcher,
            id_field: self.id_field,
            text_fields: self
                .spec
                .fields
                .iter()
                .map(|(n, _)| n.clone())
                .zip(self.text_fields.iter().copied())
                .collect(),
            lsn,
        }))
    }

    /// The indexer thread: drains the queue into tantivy and commits when asked or due.
    fn run(self: Arc<Self>, mut writer: IndexWriter<TantivyDocument>) {
        let mut uncommitted = 0usize;
        let mut first_uncommitted: Option<Instant> = None;
        let interval = Duration::from_millis(TEXT_COMMIT_INTERVAL_MS);
        loop {
            let (ops, covered, commit_wanted, stop) = {
                let mut q = self.queue.lock();
                loop {
                    let due = first_uncommitted.is_some_and(|t| t.elapsed() >= interval);
                    if !q.ops.is_empty() || q.commit_wanted || q.stop || due {
                        break;
                    }
                    let wait = first_uncommitted
                        .map_or(interval, |t| interval.saturating_sub(t.elapsed()));
                    self.work
                        .wait_for(&mut q, wait.max(Duration::from_millis(1)));
                }
                let ops = std::mem::take(&mut q.ops);
                q.bytes = 0;
                let wanted = std::mem::take(&mut q.commit_wanted);
                (ops, q.covered_lsn, wanted, q.stop)
            };
            self.space.notify_all();
            if !ops.is_empty() {
                first_uncommitted.get_or_insert_with(Instant::now);
                uncommitted += ops.len();
                if let Err(e) = self.index_ops(&writer, ops) {
                    return self.fail(e.to_string());
                }
            }
            let due = first_uncommitted.is_some_and(|t| t.elapsed() >= interval)
                || uncommitted >= TEXT_COMMIT_DOCS_MAX;
            let behind = covered > self.visible.lock().durable_lsn || uncommitted > 0;
            if commit_wanted || (due && behind) || (stop && behind) {
                if let Err(e) = self.commit(&mut writer, covered) {
                    return self.fail(e.to_string());
                }
                uncommitted = 0;
                first_uncommitted = None;
            }
            if stop {
                let _ = writer.wait_merging_threads();
                return;
            }
        }
    }

    fn index_ops(
        &self,
        writer: &IndexWriter<TantivyDocument>,
        ops: Vec<TextOp>,
    ) -> Result<(), IndexError> {
        for op in ops {
            let (id, texts, replace) = match op {
                TextOp::Delete { id } => {
                    writer.delete_term(Term::from_field_u64(self.id_field, id));
                    continue;
                }
                TextOp::Insert { id, texts } => (id, texts, false),
                TextOp::Upsert { id, texts } => (id, texts, true),
            };
            if replace {
                writer.delete_term(Term::from_field_u64(self.id_field, id));
            }
            let mut doc = TantivyDocument::new();
            doc.add_u64(self.id_field, id);
            for (i, text) in texts.iter().enumerate() {
                let (Some(text), Some(field)) = (text, self.text_fields.get(i)) else {
                    if let Some(len) = self.len_fields.get(i) {
                        doc.add_u64(*len, 0);
                    }
                    continue;
                };
                doc.add_text(*field, text);
                doc.add_u64(self.len_fields[i], count_tokens(text));
            }
            writer.add_document(doc)?;
        }
        Ok(())
    }

    fn commit(
        &self,
        writer: &mut IndexWriter<TantivyDocument>,
        covered: u64,
    ) -> Result<(), IndexError> {
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&format!("{PAYLOAD_PREFIX}{covered}"));
        prepared.commit()?;
        self.reader.reload()?;
        let snapshot = self.build_snapshot(covered)?;
        let mut v = self.visible.lock();
        v.lsn = covered;
        v.durable_lsn = covered;
        v.snapshot = snapshot.clone();
        let (ready, waiting): (Vec<_>, Vec<_>) = v
            .waiters
            .drain(..)
            .partition(|(target, _)| *target <= covered);
        v.waiters = waiting;
        drop(v);
        for (_, tx) in ready {
            let _ = tx.send(Ok(snapshot.clone()));
        }
        Ok(())
    }

    fn fail(&self, reason: String) {
        tracing::error!(path = %self.path.display(), %reason, "text indexer stopped");
        let mut v = self.visible.lock();
        v.failed = Some(reason.clone());
        for (_, tx) in v.waiters.drain(..) {
            let _ = tx.send(Err(IndexError::Failed {
                reason: reason.clone(),
            }));
        }
        drop(v);
        self.space.notify_all();
    }
}

/// Tokens longer than this many bytes are dropped by both analyzers (tantivy's
/// `RemoveLongFilter::limit(40)` in `default` and `en_stem`).
const ANALYZER_TOKEN_BYTES_LIMIT: usize = 40;

/// The number of tokens tantivy records for `text` (its field length before
/// quantization) under the `default` and `en_stem` analyzers: maximal runs of
/// alphanumeric characters (tantivy's `SimpleTokenizer`) shorter than
/// [`ANALYZER_TOKEN_BYTES_LIMIT`] bytes; lowercasing and stemming never drop a token.
/// Counting without running the analyzer saves the indexer a second tokenization of
/// every text (tantivy tokenizes it to index it). `token_counts_equal_the_analyzers`
/// checks this against the analyzers themselves.
pub(crate) fn count_tokens(text: &str) -> u64 {
    let mut n = 0u64;
    let mut run = 0usize;
    for c in text.chars() {
        if c.is_alphanumeric() {
            run += c.len_utf8();
        } else {
            n += u64::from(run > 0 && run < ANALYZER_TOKEN_BYTES_LIMIT);
            run = 0;
        }
    }
    n + u64::from(run > 0 && run < ANALYZER_TOKEN_BYTES_LIMIT)
}
