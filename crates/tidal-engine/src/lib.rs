//! tidalDB's storage engine: the single owner of all state.
//!
//! A write is one atomic [`WriteTxn`]: validated as it is built, then committed through
//! the write-ahead log (group commit, fdatasync) and applied to every materializer —
//! the entity store (fjall), the signal ledger, and any registered [`Materializer`] — in
//! log order before `commit` returns. Derived state is checkpointed with the LSN it
//! covers; opening restores the newest checkpoint and replays the log after it.
//!
//! Signals declared `MARKS seen|liked|hidden` also keep, per user, a Roaring bitmap of
//! the entities the user marked (a positive weight sets the bit, a negative one clears
//! it); [`ReadView::marked`] and [`ReadView::is_marked`] read them.
//!
//! ```
//! use tidal_core::{DecaySpec, EntityId, EntityKind, Mark, SchemaChange, SignalDef, Window};
//! use tidal_engine::{Engine, EngineConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::new(dir.path()))?;
//! let mut txn = engine.begin();
//! txn.schema_change(SchemaChange::CreateSignal(SignalDef::new(
//!     "like", EntityKind::Item, DecaySpec::exponential("14 days")?, [Window::parse("24h")?],
//! )?.with_marks(Mark::Liked)))?;
//! txn.commit()?;
//!
//! let mut txn = engine.begin();
//! txn.signal("like", EntityId(42), Some(EntityId(7)), 1.0, None)?;
//! txn.commit()?;
//!
//! let view = engine.read();
//! let score = view.decay("like", EntityId(42), engine.now())?;
//! assert!(score > 0.99 && score <= 1.0);
//! assert!(view.is_marked(EntityId(7), Mark::Liked, EntityId(42)));
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Durability: `commit` returns only after the transaction is fdatasynced. Limits:
//! one transaction ≤ 256 MiB encoded ([`TXN_BYTES_MAX`]).

mod checkpoint;
mod cohort;
mod config;
mod engine;
mod error;
#[cfg(test)]
mod fixture_tests;
mod history;
mod marks;
mod preference;
mod read;
mod registry;
mod social;
mod store;
#[cfg(test)]
mod tests;
mod text;
mod vector;

pub use cohort::{
    COHORT_INVERSE_MAPS_MAX, CohortEntry, CohortRead, CohortStats, Cohorts, cohort_value_text,
};
pub use config::{CHECKPOINT_INTERVAL_MS, CHECKPOINT_WAL_BYTES_MAX, EngineConfig, TXN_BYTES_MAX};
pub use engine::{
    CheckpointStats, Engine, MEMORY_METRICS_REFRESH_MS, PendingTxn, TxnMark, WriteOutcome, WriteTxn,
};
pub use error::EngineError;
pub use history::{
    HISTORY_BLOCK_EVENTS, HISTORY_ROW_GROUP_ROWS, HISTORY_TAIL_EVENTS_MAX, HistoryFile,
    HistorySnapshot, history_schema,
};
pub use read::ReadView;
pub use registry::Materializer;
/// The bitmap type of [`ReadView::marked`], so users need no dependency of their own.
pub use roaring;
pub use social::{AffinityEntry, affinity_value};
pub use store::StoreSnapshot;
pub use text::TableText;
/// The text index types of [`ReadView::text`], so users need no dependency of their own.
pub use tidal_index;
pub use tidal_wal::{Lsn, WalStats};
pub use vector::TableVector;
