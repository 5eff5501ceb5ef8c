//! tidalDB — a database for personalized content ranking, embeddable in Rust.
//!
//! Engagement signals (view, like, skip…) are primitives with native decay, windows,
//! velocity and acceleration; entities (items, users, creators) are typed rows. This
//! crate is the embedded facade: open a [`Database`] on a directory and write and read
//! in-process. Every write is durable (fdatasynced) when the call returns, and atomic.
//!
//! ```
//! use tidal::{Database, DecaySpec, EntityKind, SignalDef, Timestamp, Window};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Database::open(dir.path())?;
//! db.create_signal(SignalDef::new(
//!     "like",
//!     EntityKind::Item,
//!     DecaySpec::exponential("14 days")?,
//!     [Window::parse("24h")?, Window::All],
//! )?)?;
//!
//! let now = db.now();
//! db.signal("like", 42, Some(7), 1.0, Some(now))?;
//! db.signal("like", 42, Some(8), 1.0, Some(now))?;
//!
//! assert_eq!(db.window_count("like", 42, "24h", None)?, 2.0);
//! assert_eq!(db.signal_total("like", 42)?, 2.0);
//! let in_two_weeks = Timestamp(now.0 + 14 * 86_400_000_000);
//! assert!((db.decay("like", 42, Some(in_two_weeks))? - 1.0).abs() < 1e-9);
//! db.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Limits and guarantees: see `docs/architecture.md`. Exact duplicate events (same
//! signal, entity, user, weight and ts) arriving within 60 s are counted once. Events may
//! be at most 5 minutes in the future. One write call is one transaction (≤ 256 MiB).

use std::path::Path;
use std::sync::{Arc, OnceLock};

/// DataFusion, as tidalDB links it (use this re-export to get matching versions).
pub use datafusion;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionContext;
pub use tidal_sql::{SCAN_BATCH_ROWS, SqlError, SqlSession};

pub use tidal_core::{
    Clock, CohortDim, ColumnDef, ColumnType, CoreError, DecaySpec, EntityId, EntityKind,
    ErrorClass, ManualClock, Mark, Row, Schema, SchemaChange, SignalDef, SignalId, SystemClock,
    TableDef, Timestamp, Value, Window,
};
pub use tidal_engine::{
    CheckpointStats, Engine, EngineConfig as Config, EngineError, ReadView, WriteOutcome, WriteTxn,
};

/// Errors returned by the facade.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Engine(EngineError::Core(e))
    }
}

impl Error {
    /// Classification for mapping to a SQLSTATE.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Engine(e) => e.class(),
            Error::Sql(e) => e.class(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One signal event for [`Database::signals`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    pub signal: &'a str,
    pub entity: u64,
    pub user: Option<u64>,
    pub weight: f64,
    /// `None` = the time of the call.
    pub ts: Option<Timestamp>,
}

impl<'a> Event<'a> {
    /// An event of weight 1 at the time of the call.
    pub fn new(signal: &'a str, entity: u64) -> Event<'a> {
        Event {
            signal,
            entity,
            user: None,
            weight: 1.0,
            ts: None,
        }
    }
}

/// An open tidalDB database. `Send + Sync`: share it with an `Arc`.
///
/// Dropping it closes it cleanly (best effort; never panics). Call
/// [`Database::shutdown`] to see errors from the final checkpoint.
#[derive(Debug)]
pub struct Database {
    engine: Arc<Engine>,
    /// Built on first use: opening a database for ingest alone never pays for it.
    sql: OnceLock<SqlSession>,
}

impl Drop for Database {
    fn drop(&mut self) {
        // A SessionContext handed out by `session()` may outlive us and keep the engine
        // alive; the database still closes cleanly now. Errors were logged by the engine.
        let _ = self.engine.shutdown();
    }
}

impl Database {
    /// Opens or creates a database in `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        Database::open_with(Config::new(path.as_ref()))
    }

    /// Opens or creates a database with explicit settings (clock, checkpoint policy…).
    pub fn open_with(config: Config) -> Result<Database> {
        Ok(Database {
            engine: Arc::new(Engine::open(config)?),
            sql: OnceLock::new(),
        })
    }

    /// The engine underneath, for callers that need atomic multi-op writes
    /// ([`Engine::begin`]) or consistent read views ([`Engine::read`]).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A shared handle to the engine, for building more SQL sessions over it (for
    /// example with another memory limit, as the server does).
    pub fn engine_arc(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    fn sql_session(&self) -> Result<&SqlSession> {
        if let Some(s) = self.sql.get() {
            return Ok(s);
        }
        let session = SqlSession::new(self.engine.clone())?;
        Ok(self.sql.get_or_init(|| session))
    }

    /// Runs one SQL query (SELECT over `items`/`users`/`creators`, the signal functions,
    /// `information_schema`, `EXPLAIN`) and collects the result as Arrow batches.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.sql_session()?.sql(query).await?)
    }

    /// Like [`Database::sql`], but the rows of a query arrive as a stream of batches
    /// while DataFusion computes them (bounded memory for large results; dropping the
    /// stream stops the query). A write statement completes before this returns.
    pub async fn sql_stream(&self, query: &str) -> Result<SendableRecordBatchStream> {
        Ok(self.sql_session()?.sql_stream(query).await?)
    }

    /// The DataFusion `SessionContext` over this database, for callers that embed
    /// DataFusion directly (register more tables or functions, build DataFrames).
    pub fn session(&self) -> Result<SessionContext> {
        Ok(self.sql_session()?.context().clone())
    }

    /// The database clock's "now".
    pub fn now(&self) -> Timestamp {
        self.engine.now()
    }

    /// The current schema.
    pub fn schema(&self) -> std::sync::Arc<Schema> {
        self.engine.schema()
    }

    fn ddl(&self, change: SchemaChange) -> Result<()> {
        let mut txn = self.engine.begin();
        txn.schema_change(change)?;
        txn.commit()?;
        Ok(())
    }

    /// `CREATE SIGNAL`.
    pub fn create_signal(&self, def: SignalDef) -> Result<()> {
        self.ddl(SchemaChange::CreateSignal(def))
    }

    /// `DROP SIGNAL`.
    pub fn drop_signal(&self, name: &str) -> Result<()> {
        self.ddl(SchemaChange::DropSignal {
            name: name.to_string(),
            id: SignalId(0),
        })
    }

    /// `CREATE TABLE ... WITH (kind = ...)`.
    pub fn create_table(&self, def: TableDef) -> Result<()> {
        self.ddl(SchemaChange::CreateTable(def))
    }

    /// Records one event; durable when this returns.
    pub fn signal(
        &self,
        signal: &str,
        entity: u64,
        user: Option<u64>,
        weight: f64,
        ts: Option<Timestamp>,
    ) -> Result<WriteOutcome> {
        self.signals(&[Event {
            signal,
            entity,
            user,
            weight,
            ts,
        }])
    }

    /// Records a batch of events atomically: all or none.
    pub fn signals(&self, batch: &[Event<'_>]) -> Result<WriteOutcome> {
        let mut txn = self.engine.begin();
        for e in batch {
            txn.signal(
                e.signal,
                EntityId(e.entity),
                e.user.map(EntityId),
                e.weight,
                e.ts,
            )?;
        }
        Ok(txn.commit()?)
    }

    /// Inserts a row (column 0 is the id); fails if the id exists.
    pub fn insert(&self, kind: EntityKind, row: Row) -> Result<()> {
        let mut txn = self.engine.begin();
        txn.insert(kind, row)?;
        txn.commit()?;
        Ok(())
    }

    /// Inserts or replaces a row (column 0 is the id).
    pub fn upsert(&self, kind: EntityKind, row: Row) -> Result<()> {
        let mut txn = self.engine.begin();
        txn.upsert(kind, row)?;
        txn.commit()?;
        Ok(())
    }

    /// One row by id.
    pub fn get(&self, kind: EntityKind, id: u64) -> Result<Option<Row>> {
        Ok(self.engine.read().get(kind, EntityId(id))?)
    }

    /// Deletes a row; returns whether it existed.
    pub fn delete(&self, kind: EntityKind, id: u64) -> Result<bool> {
        let existed = self.get(kind, id)?.is_some();
        let mut txn = self.engine.begin();
        txn.delete(kind, EntityId(id))?;
        txn.commit()?;
        Ok(existed)
    }

    fn at(&self, at: Option<Timestamp>) -> Timestamp {
        at.unwrap_or_else(|| self.engine.now())
    }

    /// `decay(signal, entity [, at])`.
    pub fn decay(&self, signal: &str, entity: u64, at: Option<Timestamp>) -> Result<f64> {
        Ok(self
            .engine
            .read()
            .decay(signal, EntityId(entity), self.at(at))?)
    }

    /// Shared parsing for the windowed reads.
    fn windowed(
        &self,
        signal: &str,
        entity: u64,
        window: &str,
        at: Option<Timestamp>,
        read: fn(&ReadView, &str, EntityId, Window, Timestamp) -> Result<f64, EngineError>,
    ) -> Result<f64> {
        let w = Window::parse(window)?;
        Ok(read(
            &self.engine.read(),
            signal,
            EntityId(entity),
            w,
            self.at(at),
        )?)
    }

    /// `window_count(signal, entity, window [, at])`.
    pub fn window_count(
        &self,
        signal: &str,
        entity: u64,
        window: &str,
        at: Option<Timestamp>,
    ) -> Result<f64> {
        self.windowed(signal, entity, window, at, ReadView::window_count)
    }

    /// `velocity(signal, entity, window [, at])` — weight per hour.
    pub fn velocity(
        &self,
        signal: &str,
        entity: u64,
        window: &str,
        at: Option<Timestamp>,
    ) -> Result<f64> {
        self.windowed(signal, entity, window, at, ReadView::velocity)
    }

    /// `acceleration(signal, entity, window [, at])`.
    pub fn acceleration(
        &self,
        signal: &str,
        entity: u64,
        window: &str,
        at: Option<Timestamp>,
    ) -> Result<f64> {
        self.windowed(signal, entity, window, at, ReadView::acceleration)
    }

    /// `signal_total(signal, entity)`.
    pub fn signal_total(&self, signal: &str, entity: u64) -> Result<f64> {
        Ok(self.engine.read().total(signal, EntityId(entity))?)
    }

    /// `last_signal_at(signal, entity)`.
    pub fn last_signal_at(&self, signal: &str, entity: u64) -> Result<Option<Timestamp>> {
        Ok(self.engine.read().last(signal, EntityId(entity))?)
    }

    /// Writes a checkpoint now (normally done in the background).
    pub fn checkpoint(&self) -> Result<CheckpointStats> {
        Ok(self.engine.checkpoint()?)
    }

    /// Clean close: finishes in-flight writes, checkpoints, syncs. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        Ok(self.engine.shutdown()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn database_is_send_and_sync() {
        assert_send_sync::<Database>();
    }
}
