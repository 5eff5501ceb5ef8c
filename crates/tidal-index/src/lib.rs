//! tidalDB's derived search indexes: BM25 full-text search over a table's text
//! fields, on tantivy ([`TextIndex`]), and HNSW nearest-neighbour search over a vector
//! column, on usearch ([`VectorIndex`]).
//!
//! An index is *derived state*: the engine feeds it every change of its table in log
//! order ([`TextIndex::apply`]) and rebuilds it from the entity store when it is
//! missing or damaged. Each commit records the log position (LSN) it covers, so after a
//! crash only the log after that position is replayed into it.
//!
//! Relevance is exactly what tantivy gives for the same rows in a freshly built index:
//! the BM25 statistics (document count, average field length, document frequencies)
//! are computed over live documents only, whatever deletes and merges have happened
//! (see [`TextSnapshot`]).
//!
//! ```
//! use tidal_index::{TextIndex, TextOp, TextSpec};
//! use tidal_core::TextAnalyzer;
//!
//! let dir = tempfile::tempdir()?;
//! let spec = TextSpec {
//!     fields: vec![("title".into(), 2.0), ("body".into(), 1.0)],
//!     analyzer: TextAnalyzer::Default,
//! };
//! let index = TextIndex::create(dir.path(), spec, 0)?;
//! index.apply(1, vec![
//!     TextOp::Insert { id: 7, texts: vec![Some("Piano tutorial".into()), None] },
//!     TextOp::Insert { id: 8, texts: vec![Some("Guitar".into()), Some("a piano cameo".into())] },
//! ])?;
//! let snap = index.snapshot_blocking()?;           // waits for the commit that shows lsn 1
//! let hits = snap.top_k(&snap.parse("piano")?, 10)?;
//! assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [7, 8]);
//! index.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Limits: [`TEXT_QUEUE_BYTES_MAX`] / [`TEXT_QUEUE_OPS_MAX`] of queued changes (writers
//! wait beyond), a [`TEXT_WRITER_ARENA_BYTES`] indexing arena, commits at most
//! [`TEXT_COMMIT_INTERVAL_MS`] apart while changes are pending.

mod error;
mod search;
mod stats;
mod text;
mod vector;

#[cfg(test)]
mod tests;

pub use error::IndexError;
pub use search::{Hit, ParsedQuery, TextSnapshot};
pub use text::{
    TEXT_COMMIT_DOCS_MAX, TEXT_COMMIT_INTERVAL_MS, TEXT_QUEUE_BYTES_MAX, TEXT_QUEUE_OPS_MAX,
    TEXT_REFRESH_WAIT_MS_MAX, TEXT_WRITER_ARENA_BYTES, TextIndex, TextOp, TextSpec,
};
pub use vector::{
    VECTOR_APPLY_THREADS_MAX, VECTOR_INITIAL_CAPACITY, VECTOR_PARALLEL_APPLY_OPS_MIN,
    VECTOR_SEARCH_THREADS_MAX, VectorIndex, VectorOp, VectorSpec,
};
