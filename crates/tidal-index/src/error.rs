/// Errors of the index layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The query string does not parse (tantivy's query grammar).
    #[error("invalid search query {query:?}: {reason}")]
    BadQuery { query: String, reason: String },
    /// An empty (or all-blank) query string.
    #[error("the search query is empty")]
    EmptyQuery,
    /// A field that is not one of the index's text fields.
    #[error("{field:?} is not a text field of this table (text fields: {fields})")]
    UnknownField { field: String, fields: String },
    /// The index directory is missing, damaged or of another definition; it is rebuilt.
    #[error("index {path} cannot be used: {reason}")]
    Unusable { path: String, reason: String },
    /// The indexer thread stopped after an error; every later call fails with it.
    #[error("the text index failed and accepts no more changes until restart: {reason}")]
    Failed { reason: String },
    #[error("the text index is closed")]
    Closed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// usearch refused an operation.
    #[error("vector index: {reason}")]
    Vector { reason: String },
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
}

impl IndexError {
    /// Whether this is the caller's fault (a bad query or field), as opposed to a
    /// failure of the index.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            IndexError::BadQuery { .. } | IndexError::EmptyQuery | IndexError::UnknownField { .. }
        )
    }
}
