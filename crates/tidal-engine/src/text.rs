//! The text materializer: one [`TextIndex`] per table declared with `text_fields`,
//! fed every entity write of that table in log order.
//!
//! Unlike the in-memory materializers, a text index is not part of the checkpoint: it
//! persists itself (each tantivy commit records the LSN it covers), and at open the
//! registry replays into it only the log after that LSN. The checkpoint therefore
//! flushes every index before retiring log segments, and retires nothing an index
//! still needs. A missing or unusable index is rebuilt from the entity store at open.
//!
//! Directories: `text/<table>-<generation>/`, so a dropped and re-created table never
//! finds the old table's index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use tidal_core::{EntityKind, Row, Schema, SchemaChange, TableDef, Value};
use tidal_index::{IndexError, TextIndex, TextOp, TextSpec};
use tidal_wal::{CommittedTxn, Lsn, Op};

use crate::EngineError;
use crate::registry::Materializer;
use crate::store::EntityStore;

/// Rows a rebuild hands to the indexer at a time.
const REBUILD_CHUNK_ROWS: usize = 10_000;
/// Rows between two progress lines of a rebuild.
const REBUILD_PROGRESS_ROWS: u64 = 100_000;

/// The text index of one table.
#[derive(Debug)]
pub struct TableText {
    pub(crate) kind: EntityKind,
    /// The generation of the table it indexes.
    pub generation: u64,
    /// Positions of the text fields among the table's columns.
    columns: Vec<usize>,
    pub index: TextIndex,
    /// Transactions at or below this LSN were already in the index when it was opened.
    covered_at_open: Lsn,
}

impl TableText {
    fn texts(&self, row: &Row) -> Vec<Option<String>> {
        self.columns
            .iter()
            .map(|&c| match row.get(c) {
                Some(Value::Text(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The text indexes of all tables; see the module docs.
#[derive(Debug)]
pub(crate) struct TextMaterializer {
    dir: PathBuf,
    tables: RwLock<HashMap<EntityKind, Arc<TableText>>>,
}

fn spec(def: &TableDef) -> TextSpec {
    TextSpec {
        fields: def
            .text_fields
            .iter()
            .cloned()
            .zip(def.text_boosts.iter().copied())
            .collect(),
        analyzer: def.text_analyzer,
    }
}

fn index_err(e: IndexError) -> EngineError {
    EngineError::Index(e)
}

impl TextMaterializer {
    pub fn new(dir: PathBuf) -> TextMaterializer {
        TextMaterializer {
            dir,
            tables: RwLock::new(HashMap::new()),
        }
    }

    fn path(&self, def: &TableDef) -> PathBuf {
        self.dir
            .join(format!("{}-{}", def.kind.table_name(), def.generation))
    }

    /// Opens the index of every table of `schema` that has text fields, rebuilding from
    /// the store (which holds the log up to `store_lsn`) those that are missing or
    /// unusable, and deletes index directories of tables that no longer exist.
    pub fn open_all(
        &self,
        schema: &Schema,
        store: &EntityStore,
        store_lsn: Lsn,
    ) -> Result<(), EngineError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| EngineError::io(&self.dir, e))?;
        let mut tables = HashMap::new();
        for def in schema.tables().filter(|t| !t.text_fields.is_empty()) {
            let path = self.path(def);
            let (index, covered) = match TextIndex::open(&path, spec(def)) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(
                        table = def.kind.table_name(),
                        error = %e,
                        "rebuilding the text index from the entity store"
                    );
                    (Self::rebuild(&path, def, store, store_lsn)?, store_lsn)
                }
            };
            tables.insert(
                def.kind,
                Arc::new(TableText {
                    kind: def.kind,
                    generation: def.generation,
                    columns: def.text_columns(),
                    index,
                    covered_at_open: covered,
                }),
            );
        }
        let keep: Vec<PathBuf> = schema
            .tables()
            .filter(|t| !t.text_fields.is_empty())
            .map(|t| self.path(t))
            .collect();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| EngineError::io(&self.dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| EngineError::io(&self.dir, e))?.path();
            if !keep.contains(&path) {
                tracing::info!(path = %path.display(), "removing the text index of a dropped table");
                std::fs::remove_dir_all(&path).map_err(|e| EngineError::io(&path, e))?;
            }
        }
        *self.tables.write() = tables;
        Ok(())
    }

    /// Builds the index of `def` afresh from the rows in the store, as covering
    /// `store_lsn`, logging progress.
    fn rebuild(
        path: &Path,
        def: &TableDef,
        store: &EntityStore,
        store_lsn: Lsn,
    ) -> Result<TextIndex, EngineError> {
        let index = TextIndex::create(path, spec(def), 0).map_err(index_err)?;
        let columns = def.text_columns();
        let started = Instant::now();
        let total = store.approximate_len(def.kind);
        let snapshot = store.snapshot();
        let mut chunk = Vec::with_capacity(REBUILD_CHUNK_ROWS);
        let mut done = 0u64;
        for row in snapshot.scan(def.kind) {
            let (id, row) = row?;
            let texts = columns
                .iter()
                .map(|&c| match row.get(c) {
                    Some(Value::Text(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            chunk.push(TextOp::Insert { id: id.0, texts });
            done += 1;
            if chunk.len() == REBUILD_CHUNK_ROWS {
                index
                    .apply(store_lsn, std::mem::take(&mut chunk))
                    .map_err(index_err)?;
            }
            if done.is_multiple_of(REBUILD_PROGRESS_ROWS) {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let left = (total as f64 - done as f64).max(0.0);
                tracing::info!(
                    table = def.kind.table_name(),
                    rows = done,
                    of_about = total,
                    rows_per_s = rate as u64,
                    eta_s = (left / rate.max(1.0)) as u64,
                    "rebuilding text index"
                );
            }
        }
        index.apply(store_lsn, chunk).map_err(index_err)?;
        index.note(store_lsn);
        index.flush().map_err(index_err)?;
        tracing::info!(
            table = def.kind.table_name(),
            rows = done,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "text index rebuilt"
        );
        Ok(index)
    }

    /// The index of `kind`'s table, if it has text fields.
    pub fn table(&self, kind: EntityKind) -> Option<Arc<TableText>> {
        self.tables.read().get(&kind).cloned()
    }

    /// The lowest LSN an index covered at open: the log after it is replayed. Without
    /// indexes, all of it (only table creations matter then, and those of tables that
    /// no longer exist are skipped).
    pub fn min_covered_at_open(&self) -> Lsn {
        self.tables
            .read()
            .values()
            .map(|t| t.covered_at_open)
            .min()
            .unwrap_or(0)
    }

    /// The highest LSN any index covers (for the check that the log reaches it).
    pub fn max_covered(&self) -> Lsn {
        self.tables
            .read()
            .values()
            .map(|t| t.index.durable_lsn())
            .max()
            .unwrap_or(0)
    }

    /// Commits every index; returns the lowest LSN they now durably cover (the log
    /// after it must be kept), or `Lsn::MAX` without indexes.
    pub fn flush(&self) -> Result<Lsn, EngineError> {
        let tables: Vec<Arc<TableText>> = self.tables.read().values().cloned().collect();
        let mut min = Lsn::MAX;
        for t in tables {
            min = min.min(t.index.flush().map_err(index_err)?);
        }
        Ok(min)
    }

    /// Commits and stops every indexer.
    pub fn close(&self) -> Result<(), EngineError> {
        let tables: Vec<Arc<TableText>> = self.tables.read().values().cloned().collect();
        for t in tables {
            t.index.close().map_err(index_err)?;
        }
        Ok(())
    }

    /// Bytes of text changes queued for the indexers.
    pub fn queued_bytes(&self) -> usize {
        self.tables
            .read()
            .values()
            .map(|t| t.index.queued_bytes())
            .sum()
    }

    fn create(&self, def: &TableDef, lsn: Lsn) -> Result<(), EngineError> {
        let path = self.path(def);
        let covered = lsn.saturating_sub(1);
        let index = TextIndex::create(&path, spec(def), covered).map_err(index_err)?;
        self.tables.write().insert(
            def.kind,
            Arc::new(TableText {
                kind: def.kind,
                generation: def.generation,
                columns: def.text_columns(),
                index,
                covered_at_open: covered,
            }),
        );
        Ok(())
    }
}

impl Materializer for TextMaterializer {
    fn name(&self) -> &'static str {
        "text"
    }

    fn apply(&self, txn: &CommittedTxn, schema: &Schema) -> Result<(), EngineError> {
        let mut ops: HashMap<EntityKind, Vec<TextOp>> = HashMap::new();
        for op in &txn.ops {
            match op {
                Op::Schema(SchemaChange::CreateTable(def)) if !def.text_fields.is_empty() => {
                    // Replayed creations of tables dropped later are skipped, and an index
                    // opened (or rebuilt) at open already covers its own table.
                    let current = schema
                        .table(def.kind)
                        .is_ok_and(|t| t.generation == def.generation);
                    let exists = self
                        .table(def.kind)
                        .is_some_and(|t| t.generation == def.generation);
                    if current && !exists {
                        self.create(def, txn.lsn)?;
                    }
                }
                Op::Schema(SchemaChange::DropTable { kind }) => {
                    ops.remove(kind);
                    let removed = self.tables.write().remove(kind);
                    if let Some(t) = removed {
                        t.index.destroy().map_err(index_err)?;
                    }
                }
                Op::Insert { kind, id, row } | Op::Upsert { kind, id, row } => {
                    if let Some(t) = self.table(*kind)
                        && txn.lsn > t.covered_at_open
                    {
                        let texts = t.texts(row);
                        let op = if matches!(op, Op::Insert { .. }) {
                            TextOp::Insert { id: id.0, texts }
                        } else {
                            TextOp::Upsert { id: id.0, texts }
                        };
                        ops.entry(*kind).or_default().push(op);
                    }
                }
                Op::Delete { kind, id } => {
                    if let Some(t) = self.table(*kind)
                        && txn.lsn > t.covered_at_open
                    {
                        ops.entry(*kind)
                            .or_default()
                            .push(TextOp::Delete { id: id.0 });
                    }
                }
                _ => {}
            }
        }
        let tables: Vec<Arc<TableText>> = self.tables.read().values().cloned().collect();
        for t in tables {
            if txn.lsn <= t.covered_at_open {
                continue;
            }
            match ops.remove(&t.kind) {
                Some(ops) => t.index.apply(txn.lsn, ops).map_err(index_err)?,
                None => t.index.note(txn.lsn),
            }
        }
        Ok(())
    }

    /// Text indexes persist themselves; the checkpoint holds nothing of them.
    fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        Ok(Vec::new())
    }

    fn restore(&self, _bytes: &[u8]) -> Result<(), EngineError> {
        Ok(())
    }

    fn replay_after(&self) -> Option<Lsn> {
        Some(self.min_covered_at_open())
    }
}
