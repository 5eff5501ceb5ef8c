use std::path::PathBuf;

use tidal_core::CoreError;

use crate::Lsn;

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL corrupt in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    #[error("the WAL is poisoned after a failed write or fsync; restart to recover")]
    Poisoned,
    #[error("the WAL is closed")]
    Closed,
    #[error("transaction too large: {bytes} bytes")]
    TooLarge { bytes: usize },
    #[error("WAL I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] CoreError),
    /// The applier failed to apply a durable transaction (during recovery, or after a
    /// batch was written — then the log is poisoned as well).
    #[error("applying the transaction at LSN {lsn} failed: {source}")]
    Apply {
        lsn: Lsn,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Another handle (in this or another process) has the log open.
    #[error("the WAL in {} is already open", dir.display())]
    Locked { dir: PathBuf },
}

/// Result of a failed [`crate::Wal::commit`].
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E: std::error::Error + 'static> {
    /// The applier's `prepare` refused the transaction; nothing was written.
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    Wal(#[from] WalError),
}
