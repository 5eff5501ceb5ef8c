//! The vector materializer: one [`VectorIndex`] (HNSW, usearch) per `CREATE INDEX …
//! USING hnsw`, fed every write of its column in log order, on the writer thread, so a
//! row is searchable when the statement that wrote it returns.
//!
//! Like text indexes, vector indexes persist themselves (each save records the LSN it
//! covers) and are not part of the checkpoint: at open the log after that LSN is
//! replayed into each; the checkpoint saves them before retiring log segments and
//! retires nothing an index still needs. A missing or damaged index is rebuilt from the
//! entity store at open, and `CREATE INDEX` builds from the store, both with progress
//! lines. Directories: `vector/<index id>/` (the id is the schema version that created
//! it, so a re-created index never finds an old one's files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use tidal_core::{ColumnType, EntityKind, Schema, SchemaChange, Value, VectorIndexDef};
use tidal_index::{IndexError, VectorIndex, VectorOp, VectorSpec};
use tidal_wal::{CommittedTxn, Lsn, Op};

use crate::EngineError;
use crate::store::EntityStore;

/// Rows a build hands to the index at a time.
const BUILD_CHUNK_ROWS: usize = 4096;
/// Rows between two progress lines of a build.
const BUILD_PROGRESS_ROWS: u64 = 50_000;

/// One HNSW index and what it indexes.
#[derive(Debug)]
pub struct TableVector {
    pub def: VectorIndexDef,
    /// Position of the indexed column among the table's columns.
    pub column: usize,
    pub index: VectorIndex,
    /// Transactions at or below this LSN were already in the index when it was opened.
    covered_at_open: Lsn,
}

/// The vector indexes of the database; see the module docs.
#[derive(Debug)]
pub(crate) struct VectorMaterializer {
    dir: PathBuf,
    indexes: RwLock<HashMap<String, Arc<TableVector>>>,
}

fn index_err(e: IndexError) -> EngineError {
    EngineError::Index(e)
}

/// The index's spec and its column's position, from the schema.
fn spec_of(schema: &Schema, def: &VectorIndexDef) -> Result<(VectorSpec, usize), EngineError> {
    let table = schema.table(def.kind)?;
    let column = table
        .column_index(&def.column)
        .ok_or_else(|| EngineError::VectorIndex {
            what: format!("index {} names a missing column {}", def.name, def.column),
        })?;
    let ColumnType::Vector(n) = table.columns[column].ty else {
        return Err(EngineError::VectorIndex {
            what: format!("index {} is on a column that is not a vector", def.name),
        });
    };
    Ok((
        VectorSpec {
            dimensions: n as usize,
            metric: def.metric,
            m: def.m as usize,
            ef_construction: def.ef_construction as usize,
        },
        column,
    ))
}

fn op_of(id: u64, value: Option<&Value>) -> VectorOp {
    match value {
        Some(Value::Vector(v)) => VectorOp::Upsert {
            id,
            vector: v.clone(),
        },
        _ => VectorOp::Delete { id },
    }
}

impl VectorMaterializer {
    pub fn new(dir: PathBuf) -> VectorMaterializer {
        VectorMaterializer {
            dir,
            indexes: RwLock::new(HashMap::new()),
        }
    }

    fn path(&self, def: &VectorIndexDef) -> PathBuf {
        self.dir.join(def.id.to_string())
    }

    /// Opens every index of `schema`, rebuilding from the store (which holds the log up
    /// to `store_lsn`) those that are missing or unusable, and deletes the directories
    /// of indexes that no longer exist.
    pub fn open_all(
        &self,
        schema: &Schema,
        store: &EntityStore,
        store_lsn: Lsn,
    ) -> Result<(), EngineError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| EngineError::io(&self.dir, e))?;
        let mut indexes = HashMap::new();
        for def in schema.indexes() {
            let (spec, column) = spec_of(schema, def)?;
            let path = self.path(def);
            let (index, covered) = match VectorIndex::open(&path, spec) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(
                        index = def.name,
                        error = %e,
                        "rebuilding the vector index from the entity store"
                    );
                    let index = Self::build(&path, def, spec, column, store, store_lsn)?;
                    index.flush().map_err(index_err)?;
                    (index, store_lsn)
                }
            };
            indexes.insert(
                def.name.clone(),
                Arc::new(TableVector {
                    def: def.clone(),
                    column,
                    index,
                    covered_at_open: covered,
                }),
            );
        }
        let keep: Vec<PathBuf> = schema.indexes().map(|d| self.path(d)).collect();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| EngineError::io(&self.dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| EngineError::io(&self.dir, e))?.path();
            if !keep.contains(&path) {
                tracing::info!(path = %path.display(), "removing the files of a dropped vector index");
                std::fs::remove_dir_all(&path).map_err(|e| EngineError::io(&path, e))?;
            }
        }
        *self.indexes.write() = indexes;
        Ok(())
    }

    /// Builds an index afresh from the rows in the store, as covering `lsn`, logging
    /// progress.
    fn build(
        path: &Path,
        def: &VectorIndexDef,
        spec: VectorSpec,
        column: usize,
        store: &EntityStore,
        lsn: Lsn,
    ) -> Result<VectorIndex, EngineError> {
        let index = VectorIndex::create(path, spec, 0).map_err(index_err)?;
        let started = Instant::now();
        let total = store.approximate_len(def.kind);
        let snapshot = store.snapshot();
        let mut chunk = Vec::with_capacity(BUILD_CHUNK_ROWS);
        let mut done = 0u64;
        for row in snapshot.scan(def.kind) {
            let (id, row) = row?;
            if let Some(Value::Vector(v)) = row.get(column) {
                chunk.push(VectorOp::Upsert {
                    id: id.0,
                    vector: v.clone(),
                });
            }
            done += 1;
            if chunk.len() == BUILD_CHUNK_ROWS {
                index.apply(lsn, &chunk).map_err(index_err)?;
                chunk.clear();
            }
            if done.is_multiple_of(BUILD_PROGRESS_ROWS) {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let left = (total as f64 - done as f64).max(0.0);
                tracing::info!(
                    index = def.name,
                    rows = done,
                    of_about = total,
                    rows_per_s = rate as u64,
                    eta_s = (left / rate.max(1.0)) as u64,
                    "building vector index"
                );
            }
        }
        index.apply(lsn, &chunk).map_err(index_err)?;
        index.note(lsn);
        tracing::info!(
            index = def.name,
            rows = done,
            vectors = index.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vector index built"
        );
        Ok(index)
    }

    /// The index called `name`.
    pub fn index(&self, name: &str) -> Option<Arc<TableVector>> {
        self.indexes.read().get(name).cloned()
    }

    /// Every index, in no particular order.
    pub fn all(&self) -> Vec<Arc<TableVector>> {
        self.indexes.read().values().cloned().collect()
    }

    /// The lowest LSN an index covered at open (the log after it is replayed into the
    /// indexes); 0 without indexes (only index creations matter then).
    pub fn min_covered_at_open(&self) -> Lsn {
        self.indexes
            .read()
            .values()
            .map(|t| t.covered_at_open)
            .min()
            .unwrap_or(0)
    }

    /// The highest LSN a saved index covers (for the check that the log reaches it).
    pub fn max_covered(&self) -> Lsn {
        self.indexes
            .read()
            .values()
            .map(|t| t.index.durable_lsn())
            .max()
            .unwrap_or(0)
    }

    /// Saves every index that changed; returns the lowest LSN they now durably cover
    /// (the log after it must be kept), or `Lsn::MAX` without indexes.
    pub fn flush(&self) -> Result<Lsn, EngineError> {
        let mut min = Lsn::MAX;
        for t in self.all() {
            min = min.min(t.index.flush().map_err(index_err)?);
        }
        Ok(min)
    }

    fn create(
        &self,
        def: &VectorIndexDef,
        schema: &Schema,
        store: &EntityStore,
        lsn: Lsn,
    ) -> Result<(), EngineError> {
        let (spec, column) = spec_of(schema, def)?;
        // The store already holds this transaction (it is applied first), and every
        // later one replayed after a crash is applied again idempotently.
        let index = Self::build(&self.path(def), def, spec, column, store, lsn)?;
        self.indexes.write().insert(
            def.name.clone(),
            Arc::new(TableVector {
                def: def.clone(),
                column,
                index,
                covered_at_open: lsn.saturating_sub(1),
            }),
        );
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), EngineError> {
        let removed = self.indexes.write().remove(name);
        if let Some(t) = removed {
            t.index.destroy().map_err(index_err)?;
        }
        Ok(())
    }

    /// Feeds one transaction; `store` is the entity store, which already holds it.
    pub fn apply_with_store(
        &self,
        txn: &CommittedTxn,
        schema: &Schema,
        store: &EntityStore,
    ) -> Result<(), EngineError> {
        let mut ops: HashMap<String, Vec<VectorOp>> = HashMap::new();
        for op in &txn.ops {
            match op {
                Op::Schema(SchemaChange::CreateIndex(def)) => {
                    // The id is the schema's (set by prepare); a replayed creation of an
                    // index dropped later is skipped, and one opened at open already
                    // covers its own creation.
                    let current = schema.index(&def.name).is_ok_and(|d| d.id == def.id);
                    let exists = self.index(&def.name).is_some_and(|t| t.def.id == def.id);
                    if current && !exists {
                        ops.remove(&def.name);
                        self.create(def, schema, store, txn.lsn)?;
                    }
                }
                Op::Schema(SchemaChange::DropIndex { name }) => {
                    ops.remove(name);
                    self.remove(name)?;
                }
                Op::Schema(SchemaChange::DropTable { kind }) => {
                    let gone: Vec<String> = self
                        .all()
                        .iter()
                        .filter(|t| t.def.kind == *kind)
                        .map(|t| t.def.name.clone())
                        .collect();
                    for name in gone {
                        ops.remove(&name);
                        self.remove(&name)?;
                    }
                }
                Op::Insert { kind, id, row } | Op::Upsert { kind, id, row } => {
                    for t in self.on(*kind) {
                        if txn.lsn > t.covered_at_open {
                            ops.entry(t.def.name.clone())
                                .or_default()
                                .push(op_of(id.0, row.get(t.column)));
                        }
                    }
                }
                Op::Delete { kind, id } => {
                    for t in self.on(*kind) {
                        if txn.lsn > t.covered_at_open {
                            ops.entry(t.def.name.clone())
                                .or_default()
                                .push(VectorOp::Delete { id: id.0 });
                        }
                    }
                }
                _ => {}
            }
        }
        for t in self.all() {
            if txn.lsn <= t.covered_at_open {
                continue;
            }
            match ops.remove(&t.def.name) {
                Some(ops) => t.index.apply(txn.lsn, &ops).map_err(index_err)?,
                None => t.index.note(txn.lsn),
            }
        }
        Ok(())
    }

    fn on(&self, kind: EntityKind) -> Vec<Arc<TableVector>> {
        self.indexes
            .read()
            .values()
            .filter(|t| t.def.kind == kind)
            .cloned()
            .collect()
    }
}
