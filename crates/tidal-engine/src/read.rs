//! Reads: entity rows from a store snapshot, signal state from the ledger.

use std::sync::Arc;

use roaring::RoaringTreemap;
use tidal_core::{
    CoreError, EntityId, EntityKind, Mark, Row, Schema, SignalDef, Timestamp, Window,
};

use crate::EngineError;
use crate::history::HistorySnapshot;
use crate::marks;
use crate::registry::Shared;
use crate::store::StoreSnapshot;
use tidal_core::SignalId;
use tidal_ledger::Ledger;

/// A read view: the schema and entity rows as of its creation (a consistent
/// snapshot), and signal state read at an explicit instant `at`.
///
/// Signal reads take a short shared lock per call (or per batch call), never blocking
/// the writer for longer than one call.
#[derive(Debug, Clone)]
pub struct ReadView {
    shared: Arc<Shared>,
    schema: Arc<Schema>,
    store: StoreSnapshot,
}

impl ReadView {
    pub(crate) fn new(shared: Arc<Shared>, schema: Arc<Schema>) -> ReadView {
        let store = shared.store.snapshot();
        ReadView {
            shared,
            schema,
            store,
        }
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The entity rows of this view.
    pub fn store(&self) -> &StoreSnapshot {
        &self.store
    }

    /// One entity row by id.
    pub fn get(&self, kind: EntityKind, id: EntityId) -> Result<Option<Row>, EngineError> {
        self.schema.table(kind)?;
        self.store.get(kind, id)
    }

    /// The definition of `signal`, or [`CoreError::UnknownSignal`].
    pub fn signal(&self, signal: &str) -> Result<&SignalDef, EngineError> {
        Ok(self.schema.signal(signal)?)
    }

    fn windowed(
        &self,
        signal: &str,
        window: Window,
        what: &'static str,
    ) -> Result<&SignalDef, EngineError> {
        let def = self.signal(signal)?;
        if window == Window::All && what != "window_count" {
            return Err(CoreError::AllWindowNotAllowed { what }.into());
        }
        def.require_window(window)?;
        Ok(def)
    }

    /// Validates the window for `what` and reads one value under the ledger lock.
    fn windowed_read(
        &self,
        signal: &str,
        entity: EntityId,
        window: Window,
        at: Timestamp,
        what: &'static str,
        read: fn(&Ledger, SignalId, EntityId, Window, Timestamp) -> f64,
    ) -> Result<f64, EngineError> {
        let def = self.windowed(signal, window, what)?;
        Ok(read(
            &self.shared.ledger.ledger.read(),
            def.id,
            entity,
            window,
            at,
        ))
    }

    /// `decay(signal, entity, at)`.
    pub fn decay(&self, signal: &str, entity: EntityId, at: Timestamp) -> Result<f64, EngineError> {
        let def = self.signal(signal)?;
        Ok(self.shared.ledger.ledger.read().decay(def.id, entity, at))
    }

    /// `window_count(signal, entity, window, at)`.
    pub fn window_count(
        &self,
        signal: &str,
        entity: EntityId,
        window: Window,
        at: Timestamp,
    ) -> Result<f64, EngineError> {
        self.windowed_read(
            signal,
            entity,
            window,
            at,
            "window_count",
            Ledger::window_count,
        )
    }

    /// `velocity(signal, entity, window, at)`: weight per hour over the window.
    pub fn velocity(
        &self,
        signal: &str,
        entity: EntityId,
        window: Window,
        at: Timestamp,
    ) -> Result<f64, EngineError> {
        self.windowed_read(signal, entity, window, at, "velocity", Ledger::velocity)
    }

    /// `acceleration(signal, entity, window, at)`.
    pub fn acceleration(
        &self,
        signal: &str,
        entity: EntityId,
        window: Window,
        at: Timestamp,
    ) -> Result<f64, EngineError> {
        self.windowed_read(
            signal,
            entity,
            window,
            at,
            "acceleration",
            Ledger::acceleration,
        )
    }

    /// `signal_total(signal, entity)`.
    pub fn total(&self, signal: &str, entity: EntityId) -> Result<f64, EngineError> {
        let def = self.signal(signal)?;
        Ok(self.shared.ledger.ledger.read().total(def.id, entity))
    }

    /// `last_signal_at(signal, entity)`.
    pub fn last(&self, signal: &str, entity: EntityId) -> Result<Option<Timestamp>, EngineError> {
        let def = self.signal(signal)?;
        Ok(self.shared.ledger.ledger.read().last(def.id, entity))
    }

    /// Vectorized `decay` over many entities (one lock acquisition).
    pub fn decay_batch(
        &self,
        signal: &str,
        entities: &[EntityId],
        at: Timestamp,
        out: &mut Vec<f64>,
    ) -> Result<(), EngineError> {
        let def = self.signal(signal)?;
        self.shared
            .ledger
            .ledger
            .read()
            .decay_batch(def.id, entities, at, out);
        Ok(())
    }

    /// Builds the window sums that earlier bulk window reads asked for (see
    /// `tidal_ledger`'s `window_sums.rs`), taking the ledger's write lock only when there
    /// is something to build. Vectorized readers call this before a batch read, so a
    /// catalogue-wide ranking is fast from its second batch on even with no writes.
    pub fn prepare_window_sums(&self) {
        let ledger = &self.shared.ledger.ledger;
        if ledger.read().window_sums_wanted() {
            ledger.write().enable_wanted_window_sums();
        }
    }

    /// Builds the window sums bulk reads of `sig`'s cohorts asked for.
    pub fn prepare_cohort_window_sums(&self, sig: SignalId) {
        self.shared.cohorts.prepare_window_sums(sig);
    }

    /// Runs `f` with shared access to the global ledger and the cohort state (SQL.md
    /// §9), for vectorized cohort readers. Locks the ledger first, then the cohorts.
    pub fn with_cohorts<R>(&self, f: impl FnOnce(&crate::CohortRead<'_>) -> R) -> R {
        let ledger = self.shared.ledger.ledger.read();
        self.shared.cohorts.read(&ledger, f)
    }

    /// Runs `f` with shared access to the ledger, for vectorized readers.
    pub fn with_ledger<R>(&self, f: impl FnOnce(&tidal_ledger::Ledger) -> R) -> R {
        f(&self.shared.ledger.ledger.read())
    }

    /// The entities `user` has marked with `mark`: the union of the user's bitmaps of
    /// every signal in this view's schema declared `MARKS mark`. Empty if there is none.
    ///
    /// Entity ids are the bitmap's values (`EntityId.0`). The bitmaps are read as of
    /// this call, like signal state; a signal dropped since the view was taken has no
    /// marks left.
    pub fn marked(&self, user: EntityId, mark: Mark) -> RoaringTreemap {
        let signals = marks::signals_with(&self.schema, mark);
        self.shared.marks.union(&signals, user)
    }

    /// Whether `user` has marked `entity` with `mark` (see [`ReadView::marked`]),
    /// without building the union.
    pub fn is_marked(&self, user: EntityId, mark: Mark, entity: EntityId) -> bool {
        let signals = marks::signals_with(&self.schema, mark);
        self.shared.marks.contains(&signals, user, entity)
    }

    /// `user`'s preference vector as of this view (SQL.md §7): unit length, `None`
    /// before the user's first move by a `PREFERENCE` signal.
    pub fn preference(&self, user: EntityId) -> Result<Option<Vec<f32>>, EngineError> {
        self.store.preference(user)
    }

    /// The targets of `user`'s edges in relationship `name` as of this view (SQL.md §8:
    /// what `FILTER name` keeps).
    pub fn out_edges(&self, name: &str, user: EntityId) -> Result<RoaringTreemap, EngineError> {
        let rel = self.schema.relationship(name)?;
        self.store.out_edges(rel.id, user)
    }

    /// `affinity(user, creator, at)` as of this view (SQL.md §8).
    pub fn affinity(
        &self,
        user: EntityId,
        creator: EntityId,
        at: tidal_core::Timestamp,
    ) -> Result<f64, EngineError> {
        let entries = self.store.affinity_entries(user, creator)?;
        Ok(crate::social::affinity_value(&entries, &self.schema, at))
    }

    /// The text index of `kind`'s table (for `SEARCH`). Its snapshots show every write
    /// acknowledged before they are taken. Fails when the table has no text fields, or
    /// when it was re-created since this view was taken.
    pub fn text(&self, kind: EntityKind) -> Result<Arc<crate::TableText>, EngineError> {
        let table = self.schema.table(kind)?;
        if table.text_fields.is_empty() {
            return Err(EngineError::NoTextFields {
                table: kind.table_name(),
            });
        }
        self.shared
            .text
            .table(kind)
            .filter(|t| t.generation == table.generation)
            .ok_or_else(|| EngineError::Conflict {
                what: format!(
                    "table {} was re-created during the statement",
                    kind.table_name()
                ),
            })
    }

    /// The vector index called `name` (for `ORDER BY <distance> LIMIT k`). It holds
    /// every write acknowledged before this call.
    pub fn vector_index(&self, name: &str) -> Option<Arc<crate::TableVector>> {
        self.shared.vectors.index(name)
    }

    /// The vector indexes of `kind`'s table.
    pub fn vector_indexes(&self, kind: EntityKind) -> Vec<Arc<crate::TableVector>> {
        self.shared
            .vectors
            .all()
            .into_iter()
            .filter(|t| t.def.kind == kind)
            .collect()
    }

    /// Bytes of text changes queued for the text indexers (their in-memory part
    /// besides tantivy's indexing arenas).
    pub fn text_queued_bytes(&self) -> usize {
        self.shared.text.queued_bytes()
    }

    /// The event history: immutable Parquet files plus the in-memory events not yet
    /// flushed, disjoint, as of this call.
    pub fn history(&self) -> Result<HistorySnapshot, EngineError> {
        self.shared.history.snapshot()
    }
}
