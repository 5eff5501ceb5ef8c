//! SQL for tidalDB on Apache DataFusion: the `tidal` catalog with the entity tables
//! (`items`, `users`, `creators`) read from consistent snapshots of the engine's store,
//! the signal functions of SQL.md §4 as vectorized scalar UDFs, profiles and RETRIEVE
//! (§5), and text search (§6: `SEARCH`, `search(table, query)`, `snippet()`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tidal_core::{DecaySpec, EntityId, EntityKind, SchemaChange, SignalDef, Window};
//! use tidal_engine::{Engine, EngineConfig};
//! use tidal_sql::SqlSession;
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Arc::new(Engine::open(EngineConfig::new(dir.path()))?);
//! let mut txn = engine.begin();
//! let like = SignalDef::new("like", EntityKind::Item, DecaySpec::None, [Window::All])?;
//! txn.schema_change(SchemaChange::CreateSignal(like))?;
//! txn.commit()?;
//! let mut txn = engine.begin();
//! txn.signal("like", EntityId(42), None, 2.0, None)?;
//! txn.commit()?;
//!
//! let sql = SqlSession::new(engine.clone())?;
//! let batches = sql.sql("SELECT signal_total('like', 42) AS n").await?;
//! let n = batches[0].column(0).as_any().downcast_ref::<datafusion::arrow::array::Float64Array>().unwrap();
//! assert_eq!(n.value(0), 2.0);
//! # Ok(()) }
//! ```
//!
//! Limits: all queries of a session share a [`QUERY_MEMORY_BYTES_MAX`] memory pool.
//!
//! Text search through the same session:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::sync::Arc;
//! # use tidal_engine::{Engine, EngineConfig};
//! # use tidal_sql::SqlSession;
//! # let dir = tempfile::tempdir()?;
//! # let engine = Arc::new(Engine::open(EngineConfig::new(dir.path()))?);
//! let sql = SqlSession::new(engine.clone())?;
//! sql.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT) \
//!          WITH (kind = 'item', text_fields = 'title')").await?;
//! sql.sql("INSERT INTO items VALUES (1, 'piano tutorial'), (2, 'guitar')").await?;
//! // Searchable as soon as the INSERT returned.
//! let hits = sql.sql("SELECT id FROM search('items', 'piano')").await?;
//! assert_eq!(hits.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
//! # Ok(()) }
//! ```

mod ann;
mod cohort;
mod coop;
mod error;
mod explore;
mod history;
mod insert;
mod json;
mod like;
mod mask;
mod profile;
mod provider;
mod rank;
mod retrieve;
mod scoring;
mod search;
mod session;
mod social;
mod state;
mod statement;
mod stats;
mod suggest;
mod types;
mod udf;
mod vector;

#[cfg(test)]
mod cohort_tests;
#[cfg(test)]
mod ranking_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vector_tests;

pub use ann::{
    AnnRule, AnnScanExec, AnnTable, HNSW_EF_SEARCH_DEFAULT, HNSW_EF_SEARCH_DEFAULT_TEXT,
    HNSW_EF_SEARCH_MAX, HnswOptions, VECTOR_EXACT_COST_RATIO, VECTOR_EXACT_FALLBACK_ROWS_MAX,
    VECTOR_EXACT_PASSING_ROWS_MAX, parse_ef_search, with_ef_search,
};
pub use cohort::{
    COHORT_SCOPE_TERMS_MAX, COHORT_WINDOWS_TABLE, COHORTS_TABLE, CohortScope, CohortSignalUdf,
    CohortTable,
};
pub use error::SqlError;
pub use explore::{EXPLORE_COLD_EVENTS_MIN, EXPLORED_COLUMN};
pub use history::SignalsTable;
pub use insert::{EDGE_COLUMNS, SIGNAL_COLUMNS};
pub use profile::{FilterTerm, MarkFilter, RETRIEVE_LIMIT_DEFAULT, RETRIEVE_LIMIT_MAX, Retrieve};
pub use provider::{EntityTable, SCAN_BATCH_ROWS, SIGNALS_TABLE, TidalSchema};
pub use retrieve::RankProfileUdf;
pub use scoring::{ScoreFn, ScoreUdf};
pub use search::{
    Fusion, RRF_K, SEARCH_AMONG_IDS_MAX, SEARCH_QUERY_BYTES_MAX, SNIPPET_CHARS_DEFAULT, Search,
    SearchFunction, SnippetUdf,
};
pub use session::{
    CATALOG_NAME, QUERY_MEMORY_BYTES_MAX, SCHEMA_NAME, SqlSession, StatementFailed, explain_schema,
    explains_tidal_statement,
};
pub use social::{AFFINITIES_TABLE, AffinityUdf, InDegreeUdf, UserAffinityUdf, edge_schema};
pub use state::{SignalStateTable, StateTable};
pub use statement::{OnConflict, RowChange, TidalStatement, parse as parse_tidal_statement};
pub use stats::{METRICS_SOURCES_MAX, MetricsSource, STATS_TABLE};
pub use suggest::{
    PreferenceSimilarityUdf, PreferenceUdf, SUGGEST_CANDIDATES_MAX, SUGGEST_CANDIDATES_MIN,
    SUGGEST_CANDIDATES_PER_RESULT, Suggest,
};
pub use types::{arrow_type, table_schema};
pub use udf::{SignalFn, SignalUdf};
pub use vector::{UNSIZED_VECTOR_ITEM, is_vector_value_type, parse_vector};
