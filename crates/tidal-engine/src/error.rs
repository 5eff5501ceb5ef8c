use tidal_core::{CoreError, EntityId, EntityKind, ErrorClass};
use tidal_wal::WalError;

/// Errors of the engine layer, wrapping the layers below.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("entity store error: {0}")]
    Store(#[from] fjall::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("duplicate key value violates unique constraint: {kind} id {id} already exists")]
    DuplicateKey { kind: EntityKind, id: EntityId },
    #[error("null value in column \"id\" of relation \"{kind}\" violates not-null constraint")]
    NullId { kind: EntityKind },
    #[error("null value in column \"{column}\" violates not-null constraint")]
    NullColumn { column: String },
    #[error("row for {kind} has {got} values but the table has {expected} columns")]
    RowArity {
        kind: EntityKind,
        expected: usize,
        got: usize,
    },
    #[error("the row's id column ({row_id:?}) does not match the id {id}")]
    IdMismatch { id: EntityId, row_id: String },
    #[error("checkpoint {path} is damaged: {reason}")]
    CheckpointCorrupt { path: String, reason: String },
    /// One materializer's checkpoint section failed to decode, though the checkpoint
    /// file as a whole passed its checksum: a format mismatch or a writer bug.
    #[error("checkpoint section {section:?} is damaged: {reason}")]
    CheckpointSection {
        section: &'static str,
        reason: String,
    },
    #[error("data directory {path} is in use by another process")]
    Locked { path: String },
    #[error("the database is shut down")]
    Closed,
    #[error("two materializers are named {name:?}")]
    DuplicateMaterializer { name: String },
    #[error("event history: {reason}")]
    History { reason: String },
    #[error(transparent)]
    Index(#[from] tidal_index::IndexError),
    #[error(
        "table {table} has no text fields to search (declare them with WITH (text_fields = '...'))"
    )]
    NoTextFields { table: &'static str },
    /// A vector index definition that does not fit its table (a damaged schema).
    #[error("vector index: {what}")]
    VectorIndex { what: String },
    #[error("could not serialize access: {what}")]
    Conflict { what: String },
    #[error("transaction too large: {what}")]
    TooLarge { what: String },
    /// The log ends before state derived from it: acknowledged transactions are missing
    /// from the WAL. Opening would let new transactions reuse their LSNs, and those would
    /// be skipped as already applied.
    #[error(
        "the WAL ends at LSN {wal_lsn} but the {what} already holds LSN {state_lsn}: \
         transactions are missing from the log; refusing to open"
    )]
    LogBehindState {
        wal_lsn: u64,
        state_lsn: u64,
        what: &'static str,
    },
}

impl EngineError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> EngineError {
        EngineError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Classification for the wire edge's SQLSTATE mapping.
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Core(e) => e.class(),
            EngineError::DuplicateKey { .. } => ErrorClass::UniqueViolation,
            EngineError::NullId { .. } | EngineError::NullColumn { .. } => ErrorClass::NotNull,
            EngineError::RowArity { .. } | EngineError::IdMismatch { .. } => {
                ErrorClass::DataException
            }
            EngineError::TooLarge { .. } | EngineError::NoTextFields { .. } => {
                ErrorClass::InvalidParameter
            }
            EngineError::Index(e) if e.is_user_error() => ErrorClass::InvalidParameter,
            EngineError::Conflict { .. } => ErrorClass::Conflict,
            EngineError::Wal(WalError::Poisoned) | EngineError::Closed => ErrorClass::Unavailable,
            EngineError::Wal(WalError::TooLarge { .. }) => ErrorClass::InvalidParameter,
            _ => ErrorClass::Internal,
        }
    }
}

impl From<tidal_wal::CommitError<EngineError>> for EngineError {
    fn from(e: tidal_wal::CommitError<EngineError>) -> Self {
        match e {
            tidal_wal::CommitError::Rejected(e) => e,
            tidal_wal::CommitError::Wal(e) => EngineError::Wal(e),
        }
    }
}
