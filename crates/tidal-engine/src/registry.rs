//! The materializer registry: the WAL's [`Applier`], through which every piece of
//! derived state is fed, in LSN order, exactly once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{EntityId, EntityKind, Schema, SchemaChange};
use tidal_ledger::Ledger;
use tidal_wal::{Applier, CommittedTxn, Lsn, Op};

use crate::EngineError;
use crate::checkpoint::Checkpoint;
use crate::cohort::CohortMaterializer;
use crate::history::History;
use crate::marks::MarksMaterializer;
use crate::store::EntityStore;
use crate::text::TextMaterializer;
use crate::vector::VectorMaterializer;

/// A piece of derived state kept in memory and saved in checkpoints.
///
/// Implementations are fed every committed transaction after their checkpoint, in LSN
/// order, on the WAL's writer thread (or during recovery). `apply` must be
/// deterministic: replaying the same log must rebuild the same state.
pub trait Materializer: Send + Sync + fmt::Debug {
    /// Unique name; also the checkpoint section name.
    fn name(&self) -> &'static str;
    /// Applies one durable transaction. `schema` is the schema after this transaction's
    /// own schema changes. Errors are fatal (they poison the log).
    fn apply(&self, txn: &CommittedTxn, schema: &Schema) -> Result<(), EngineError>;
    /// Serializes the state for a checkpoint. Runs on the writer thread between
    /// batches, so the state is exactly that of the last applied LSN.
    fn snapshot(&self) -> Result<Vec<u8>, EngineError>;
    /// Replaces the state with a checkpointed one.
    fn restore(&self, bytes: &[u8]) -> Result<(), EngineError>;
    /// `None` (the default) for state restored from the checkpoint: it is fed the log
    /// after the checkpoint. `Some(lsn)` for state that persists itself and covered the
    /// log up to `lsn` when the engine opened: it is fed every transaction after `lsn`,
    /// checkpoint or not.
    fn replay_after(&self) -> Option<Lsn> {
        None
    }
}

/// Checkpoint section holding the history's signal names.
pub(crate) const HISTORY_SECTION: &str = "history";

/// State shared by the writer (through the registry) and every reader.
#[derive(Debug)]
pub(crate) struct Shared {
    pub schema: RwLock<Arc<Schema>>,
    pub store: EntityStore,
    pub ledger: Arc<LedgerMaterializer>,
    pub marks: Arc<MarksMaterializer>,
    pub cohorts: Arc<CohortMaterializer>,
    pub text: Arc<TextMaterializer>,
    pub vectors: Arc<VectorMaterializer>,
    pub history: History,
    pub extra: Vec<Arc<dyn Materializer>>,
}

impl Shared {
    fn materializers(&self) -> impl Iterator<Item = &dyn Materializer> {
        [
            self.ledger.as_ref() as &dyn Materializer,
            self.marks.as_ref() as &dyn Materializer,
            self.cohorts.as_ref() as &dyn Materializer,
            self.text.as_ref() as &dyn Materializer,
        ]
        .into_iter()
        .chain(self.extra.iter().map(|m| m.as_ref()))
    }
}

/// The signal ledger as a materializer.
#[derive(Debug, Default)]
pub(crate) struct LedgerMaterializer {
    pub ledger: RwLock<Ledger>,
}

impl Materializer for LedgerMaterializer {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn apply(&self, txn: &CommittedTxn, _schema: &Schema) -> Result<(), EngineError> {
        let mut ledger = None;
        for op in &txn.ops {
            let l = ledger.get_or_insert_with(|| {
                let mut l = self.ledger.write();
                if l.window_sums_wanted() {
                    l.enable_wanted_window_sums();
                }
                l
            });
            match op {
                Op::Signals(events) => events.iter().for_each(|e| l.apply(e)),
                Op::Schema(SchemaChange::CreateSignal(def)) => l.define(def),
                Op::Schema(SchemaChange::DropSignal { id, .. }) => l.drop_signal(*id),
                _ => {}
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let mut e = Encoder::new();
        self.ledger.read().encode(&mut e);
        Ok(e.into_inner())
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), EngineError> {
        let mut d = Decoder::new(bytes);
        let ledger = Ledger::decode(&mut d)?;
        d.finish()?;
        *self.ledger.write() = ledger;
        Ok(())
    }
}

/// Feeds transactions to every materializer; implements the WAL's [`Applier`].
#[derive(Debug)]
pub(crate) struct Registry {
    pub shared: Arc<Shared>,
    /// Transactions at or below this LSN are already in the restored checkpoint.
    checkpoint_lsn: Lsn,
    /// Transactions at or below this LSN are already in the entity store.
    store_lsn: Lsn,
    /// Events of transactions at or below this LSN are already in history files.
    history_lsn: Lsn,
    /// Last LSN applied (or covered by restored state).
    pub applied_lsn: Lsn,
    /// Entity existence as changed by transactions prepared but not yet applied.
    pending_rows: HashMap<(EntityKind, EntityId), bool>,
    /// The schema as changed by transactions prepared but not yet applied.
    pending_schema: Option<Schema>,
}

impl Registry {
    /// Restores checkpointed state (if any) and positions replay after it.
    pub fn restore(shared: Arc<Shared>, ckpt: Option<Checkpoint>) -> Result<Registry, EngineError> {
        let mut checkpoint_lsn = 0;
        let mut names = None;
        if let Some(c) = &ckpt {
            checkpoint_lsn = c.lsn;
            if let Some(bytes) = c.section("schema") {
                let mut d = Decoder::new(bytes);
                let schema = Schema::decode(&mut d)?;
                d.finish()?;
                *shared.schema.write() = Arc::new(schema);
            }
            for m in shared.materializers() {
                if let Some(bytes) = c.section(m.name()) {
                    m.restore(bytes)?;
                }
            }
            names = c.section(HISTORY_SECTION);
        }
        let schema = shared.schema.read().clone();
        shared.history.restore_names(names, &schema)?;
        let store_lsn = shared.store.applied_lsn()?;
        Ok(Registry {
            applied_lsn: checkpoint_lsn.max(store_lsn),
            history_lsn: shared.history.flushed_at_open,
            shared,
            checkpoint_lsn,
            store_lsn,
            pending_rows: HashMap::new(),
            pending_schema: None,
        })
    }

    /// Captures every in-memory materializer at the last applied LSN and records that
    /// LSN in the store, so that a following `persist` makes the store cover it too.
    pub fn snapshot(&self) -> Result<Checkpoint, EngineError> {
        let mut sections = Vec::new();
        let mut e = Encoder::new();
        self.shared.schema.read().encode(&mut e);
        sections.push(("schema".to_string(), e.into_inner()));
        for m in self.shared.materializers() {
            sections.push((m.name().to_string(), m.snapshot()?));
        }
        self.shared.history.freeze(self.applied_lsn);
        sections.push((
            HISTORY_SECTION.to_string(),
            self.shared.history.snapshot_names(),
        ));
        self.shared.store.mark_applied(self.applied_lsn)?;
        Ok(Checkpoint {
            lsn: self.applied_lsn,
            sections,
        })
    }

    fn check_row_target(
        schema: &Schema,
        kind: EntityKind,
        row_len: Option<usize>,
    ) -> Result<(), EngineError> {
        let table = schema.table(kind)?;
        if let Some(got) = row_len
            && got != table.columns.len()
        {
            return Err(EngineError::RowArity {
                kind,
                expected: table.columns.len(),
                got,
            });
        }
        Ok(())
    }
}

impl Applier for Registry {
    type Error = EngineError;

    fn prepare(&mut self, ops: &[Op]) -> Result<(), EngineError> {
        // Validate against the current state plus every transaction already prepared in
        // this batch; stage the effects only if the whole transaction passes.
        let mut schema: Option<Schema> = None;
        // Existence as changed by this transaction so far (last write wins); a map, so
        // a large COPY stays linear.
        let mut rows: HashMap<(EntityKind, EntityId), bool> = HashMap::new();
        let current = self.shared.schema.read().clone();
        for op in ops {
            let base = schema
                .as_ref()
                .or(self.pending_schema.as_ref())
                .unwrap_or(&current);
            match op {
                Op::Schema(change) => {
                    let mut next = base.clone();
                    next.apply(change)?;
                    schema = Some(next);
                }
                Op::Insert { kind, id, row } => {
                    Self::check_row_target(base, *kind, Some(row.len()))?;
                    let key = (*kind, *id);
                    let staged = rows.get(&key).copied();
                    let exists = match staged.or_else(|| self.pending_rows.get(&key).copied()) {
                        Some(e) => e,
                        None => self.shared.store.contains(*kind, *id)?,
                    };
                    if exists {
                        return Err(EngineError::DuplicateKey {
                            kind: *kind,
                            id: *id,
                        });
                    }
                    rows.insert(key, true);
                }
                Op::Upsert { kind, id, row } => {
                    Self::check_row_target(base, *kind, Some(row.len()))?;
                    rows.insert((*kind, *id), true);
                }
                Op::Delete { kind, id } => {
                    Self::check_row_target(base, *kind, None)?;
                    rows.insert((*kind, *id), false);
                }
                // The relationship may have been dropped since the edge was validated.
                Op::EdgeInsert { rel, .. } | Op::EdgeDelete { rel, .. }
                    if base.relationship_by_id(*rel).is_none() =>
                {
                    return Err(EngineError::Core(
                        tidal_core::CoreError::UnknownRelationship {
                            name: format!("#{rel} (dropped while the statement ran)"),
                        },
                    ));
                }
                _ => {}
            }
        }
        // Cohort dictionaries are bounded: refuse a new value past the limit now; and an
        // ALTER … ADD COHORTS whose history cannot rebuild it.
        let after = schema
            .as_ref()
            .or(self.pending_schema.as_ref())
            .unwrap_or(&current);
        self.shared.cohorts.check(ops, after)?;
        self.shared.cohorts.check_alter(
            ops,
            &self.shared.history,
            &self.shared.ledger.ledger.read(),
            after,
        )?;
        if let Some(s) = schema {
            self.pending_schema = Some(s);
        }
        self.pending_rows.extend(rows);
        Ok(())
    }

    fn apply(&mut self, txn: &CommittedTxn) -> Result<(), EngineError> {
        debug_assert!(
            txn.lsn > self.applied_lsn || txn.lsn <= self.checkpoint_lsn.max(self.store_lsn)
        );
        let in_memory = txn.lsn > self.checkpoint_lsn;
        let schema = {
            let changes: Vec<&SchemaChange> = txn
                .ops
                .iter()
                .filter_map(|op| {
                    if let Op::Schema(c) = op {
                        Some(c)
                    } else {
                        None
                    }
                })
                .collect();
            if in_memory && !changes.is_empty() {
                let mut next = (**self.shared.schema.read()).clone();
                for c in changes {
                    next.apply(c)?;
                }
                let next = Arc::new(next);
                *self.shared.schema.write() = next.clone();
                next
            } else {
                self.shared.schema.read().clone()
            }
        };
        if txn.lsn > self.store_lsn {
            self.shared.store.apply(txn, &schema)?;
        }
        self.shared.history.apply(txn, txn.lsn > self.history_lsn);
        // Vector indexes persist themselves (like text indexes) and build from the
        // store, which now holds this transaction.
        if txn.lsn > self.shared.vectors.min_covered_at_open() {
            self.shared
                .vectors
                .apply_with_store(txn, &schema, &self.shared.store)?;
        }
        for m in self.shared.materializers() {
            let feed = match m.replay_after() {
                None => in_memory,
                Some(after) => txn.lsn > after,
            };
            if feed {
                m.apply(txn, &schema)?;
            }
        }
        if in_memory {
            // ALTER SIGNAL … ADD COHORTS: the new cohorts from the history.
            self.shared.cohorts.backfill(txn, &self.shared.history)?;
        }
        self.applied_lsn = self.applied_lsn.max(txn.lsn);
        Ok(())
    }

    fn batch_done(&mut self) {
        self.pending_rows.clear();
        self.pending_schema = None;
        self.shared.cohorts.batch_done();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tidal_core::codec::{Decoder, Encoder};
    use tidal_core::{
        DecaySpec, EntityId, EntityKind, ManualClock, Schema, SchemaChange, SignalDef, Timestamp,
        Window,
    };
    use tidal_wal::{CommittedTxn, Op};

    use super::Materializer;
    use crate::{Engine, EngineConfig, EngineError};

    /// Events per user: a stand-in for real per-user state.
    #[derive(Debug, Default)]
    struct PerUser(Mutex<BTreeMap<u64, u64>>);

    impl Materializer for PerUser {
        fn name(&self) -> &'static str {
            "per_user"
        }
        fn apply(&self, txn: &CommittedTxn, _schema: &Schema) -> Result<(), EngineError> {
            let mut m = self.0.lock();
            for op in &txn.ops {
                if let Op::Signals(events) = op {
                    for e in events.iter().filter_map(|e| e.user) {
                        *m.entry(e.0).or_default() += 1;
                    }
                }
            }
            Ok(())
        }
        fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
            let m = self.0.lock();
            let mut e = Encoder::new();
            e.u32(m.len() as u32);
            for (k, v) in m.iter() {
                e.u64(*k);
                e.u64(*v);
            }
            Ok(e.into_inner())
        }
        fn restore(&self, bytes: &[u8]) -> Result<(), EngineError> {
            let mut d = Decoder::new(bytes);
            let mut m = BTreeMap::new();
            for _ in 0..d.u32()? {
                m.insert(d.u64()?, d.u64()?);
            }
            d.finish()?;
            *self.0.lock() = m;
            Ok(())
        }
    }

    fn open(dir: &std::path::Path, m: Arc<PerUser>) -> Engine {
        let clock = ManualClock::new(Timestamp::parse("2026-11-25 10:00:00").unwrap());
        let mut c = EngineConfig::new(dir)
            .with_clock(Arc::new(clock))
            .with_materializer(m);
        c.checkpoint_wal_bytes = None;
        Engine::open(c).unwrap()
    }

    fn write(engine: &Engine, users: std::ops::Range<u64>) {
        let mut txn = engine.begin();
        for u in users {
            txn.signal(
                "view",
                EntityId(1),
                Some(EntityId(u % 3)),
                1.0,
                Some(Timestamp(u as i64)),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn registered_materializer_is_fed_checkpointed_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(PerUser::default());
        let engine = open(dir.path(), m.clone());
        let mut txn = engine.begin();
        let def = SignalDef::new("view", EntityKind::Item, DecaySpec::None, [Window::All]);
        txn.schema_change(SchemaChange::CreateSignal(def.unwrap()))
            .unwrap();
        txn.commit().unwrap();
        write(&engine, 0..30);
        engine.checkpoint().unwrap();
        write(&engine, 30..60);
        let expected = m.0.lock().clone();
        assert_eq!(expected.values().sum::<u64>(), 60);

        // A fresh instance restores the checkpoint and replays the tail. (Drop's clean
        // shutdown writes another checkpoint; reopen twice to cover both paths.)
        let again = Arc::new(PerUser::default());
        drop(engine);
        let engine = open(dir.path(), again.clone());
        assert_eq!(*again.0.lock(), expected);
        drop(engine);

        let dup = EngineConfig::new(dir.path())
            .with_materializer(Arc::new(PerUser::default()))
            .with_materializer(Arc::new(PerUser::default()));
        assert!(matches!(
            Engine::open(dup),
            Err(EngineError::DuplicateMaterializer { .. })
        ));
    }
}
