//! Reads: entity rows from a store snapshot, signal state from the ledger.

use std::sync::Arc;

use tidal_core::{CoreError, EntityId, EntityKind, Row, Schema, SignalDef, Timestamp, Window};

use crate::EngineError;
use crate::registry::Shared;
use crate::store::StoreSnapshot;

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
        let def = self.windowed(signal, window, "window_count")?;
        Ok(self
            .shared
            .ledger
            .ledger
            .read()
            .window_count(def.id, entity, window, at))
    }

    /// `velocity(signal, entity, window, at)`: weight per hour over the window.
    pub fn velocity(
        &self,
        signal: &str,
        entity: EntityId,
        window: Window,
        at: Timestamp,
    ) -> Result<f64, EngineError> {
        let def = self.windowed(signal, window, "velocity")?;
        Ok(self
            .shared
            .ledger
            .ledger
            .read()
            .velocity(def.id, entity, window, at))
    }

    /// `acceleration(signal, entity, window, at)`.
    pub fn acceleration(
        &self,
        signal: &str,
        entity: EntityId,
        window: Window,
        at: Timestamp,
    ) -> Result<f64, EngineError> {
        let def = self.windowed(signal, window, "acceleration")?;
        Ok(self
            .shared
            .ledger
            .ledger
            .read()
            .acceleration(def.id, entity, window, at))
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

    /// Runs `f` with shared access to the ledger, for vectorized readers.
    pub fn with_ledger<R>(&self, f: impl FnOnce(&tidal_ledger::Ledger) -> R) -> R {
        f(&self.shared.ledger.ledger.read())
    }
}
