//! The server's error type and the one place errors become SQLSTATEs.

use pgwire::error::{ErrorInfo, PgWireError};
use tidal::datafusion::error::DataFusionError;
use tidal_core::ErrorClass;
use tidal_sql::SqlError;

/// Errors of the wire front end, wrapping the SQL layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Database(#[from] tidal::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid parameter ${index}: {reason}")]
    BadParameter { index: usize, reason: String },
    /// A text-format parameter that does not parse as its type (PostgreSQL: 22P02).
    #[error("invalid input syntax for type {ty} in parameter ${index}: {reason}")]
    ParameterText {
        index: usize,
        ty: String,
        reason: String,
    },
    /// A text-format integer parameter too large for its type (22003).
    #[error("value out of range for type {ty} in parameter ${index}: {reason}")]
    ParameterRange {
        index: usize,
        ty: String,
        reason: String,
    },
    /// A text-format parameter that is not UTF-8 (22021).
    #[error("invalid byte sequence for encoding \"UTF8\" in parameter ${index}: {reason}")]
    ParameterEncoding { index: usize, reason: String },
    /// A binary-format parameter that is not a valid encoding of its type (22P03).
    #[error("invalid binary value for type {ty} in parameter ${index}: {reason}")]
    ParameterBinary {
        index: usize,
        ty: String,
        reason: String,
    },
    #[error("COPY line {line}: {source}")]
    CopyLine { line: u64, source: Box<ServerError> },
    /// A value that does not parse as its column's type.
    #[error("{0}")]
    InvalidText(String),
    #[error("{0} can only be used in transaction blocks")]
    NotInBlock(&'static str),
    #[error("{0} cannot run inside a transaction block")]
    InBlock(&'static str),
    #[error("savepoint \"{0}\" does not exist")]
    NoSuchSavepoint(String),
    #[error("too many savepoints (at most {0} in one transaction block)")]
    TooManySavepoints(usize),
    #[error("prepared statement \"{0}\" does not exist")]
    UnknownStatement(String),
    #[error("cursor can only scan forward (FETCH NEXT, n, ALL or FORWARD n | ALL)")]
    ForwardOnly,
    #[error("cursor \"{0}\" does not exist")]
    UnknownCursor(String),
    #[error("cursor \"{0}\" is in use by an unfinished FETCH (a suspended portal)")]
    CursorBusy(String),
    #[error("cursor \"{0}\" already exists")]
    DuplicateCursor(String),
    #[error("DECLARE CURSOR can only be used in transaction blocks (or declare it WITH HOLD)")]
    CursorOutsideBlock,
    #[error("too many open cursors (at most {0} per connection); CLOSE some first")]
    TooManyCursors(usize),
    #[error("canceling statement due to user request")]
    Cancelled,
    #[error("canceling statement due to statement timeout")]
    Timeout,
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DataFusionError> for ServerError {
    /// Our own errors that travelled through DataFusion are unwrapped, so the client
    /// reads their message without DataFusion's "External error: " prefix.
    fn from(e: DataFusionError) -> Self {
        ServerError::Sql(SqlError::from(e))
    }
}

impl ServerError {
    /// The SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ServerError::Sql(e) => sql_state(e),
            ServerError::Database(tidal::Error::Sql(e)) => sql_state(e),
            ServerError::Database(tidal::Error::Engine(e)) => class_state(e.class(), ""),
            ServerError::Database(_) => "XX000",
            ServerError::Unsupported(_) => "0A000",
            ServerError::InvalidText(_) => "22P02",
            ServerError::CopyLine { source, .. } => source.sqlstate(),
            ServerError::BadParameter { .. } => "22023",
            ServerError::ParameterText { .. } => "22P02",
            ServerError::ParameterBinary { .. } => "22P03",
            ServerError::ParameterRange { .. } => "22003",
            ServerError::ParameterEncoding { .. } => "22021",
            ServerError::NotInBlock(_) => "25P01",
            ServerError::InBlock(_) => "25001",
            ServerError::NoSuchSavepoint(_) => "3B001",
            ServerError::TooManySavepoints(_) => "54000",
            ServerError::UnknownStatement(_) => "26000",
            ServerError::ForwardOnly => "55000",
            ServerError::UnknownCursor(_) => "34000",
            ServerError::DuplicateCursor(_) => "42P03",
            ServerError::CursorBusy(_) => "55006",
            ServerError::CursorOutsideBlock => "25P01",
            ServerError::TooManyCursors(_) => "54000",
            ServerError::Cancelled | ServerError::Timeout => "57014",
            ServerError::ShuttingDown => "57P01",
            ServerError::TransactionAborted => "25P02",
            ServerError::Config(_) => "22023",
            ServerError::Io(_) | ServerError::Internal(_) => "XX000",
        }
    }

    /// The ErrorResponse for this error. Internal failures are logged in full and sent
    /// without their details.
    /// The ErrorResponse for this error. Every error a client is sent passes here once,
    /// which is where errors are counted by SQLSTATE.
    pub fn to_error_info(&self) -> ErrorInfo {
        let state = self.sqlstate();
        crate::metrics::METRICS.error(state);
        let message = if state == "XX000" || state == "58030" {
            tracing::error!(error = %self, "internal error");
            match state {
                "58030" => format!("storage failure: {self}"),
                _ => "internal error; details are in the server log".to_string(),
            }
        } else {
            self.to_string()
        };
        ErrorInfo::new("ERROR".to_string(), state.to_string(), message)
    }

    pub fn into_pg(self) -> PgWireError {
        PgWireError::UserError(Box::new(self.to_error_info()))
    }
}

fn sql_state(e: &SqlError) -> &'static str {
    // A few DataFusion errors carry more precise information than their class.
    if let SqlError::DataFusion(df) = e {
        match df.find_root() {
            DataFusionError::SchemaError(s, _) => {
                use tidal::datafusion::common::SchemaError;
                return match s.as_ref() {
                    SchemaError::FieldNotFound { .. } => "42703",
                    SchemaError::AmbiguousReference { .. } => "42702",
                    _ => "42P01",
                };
            }
            DataFusionError::Plan(m) if m.contains("table") && m.contains("not found") => {
                return "42P01";
            }
            DataFusionError::ArrowError(a, _) => {
                use tidal::datafusion::arrow::error::ArrowError;
                return match a.as_ref() {
                    ArrowError::DivideByZero => "22012",
                    ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
                    ArrowError::ArithmeticOverflow(_) => "22003",
                    ArrowError::MemoryError(_) => "53200",
                    _ => "22000",
                };
            }
            DataFusionError::NotImplemented(_) => return "0A000",
            // Execution errors are about the data or the query (bad cast, bad
            // argument at run time), not about the server.
            DataFusionError::Execution(_) => return "22000",
            DataFusionError::External(inner) => {
                if let Some(inner) = inner.downcast_ref::<SqlError>() {
                    return sql_state(inner);
                }
            }
            _ => {}
        }
    }
    class_state(e.class(), &e.to_string())
}

fn class_state(class: ErrorClass, message: &str) -> &'static str {
    match class {
        ErrorClass::Syntax => "42601",
        ErrorClass::InvalidParameter => "22023",
        ErrorClass::UndefinedObject if message.contains("table") => "42P01",
        ErrorClass::UndefinedObject => "42704",
        ErrorClass::UndefinedColumn => "42703",
        ErrorClass::DuplicateObject => "42710",
        ErrorClass::UniqueViolation => "23505",
        ErrorClass::NotNull => "23502",
        ErrorClass::DataException => "22000",
        ErrorClass::OutOfMemory => "53200",
        ErrorClass::Cancelled => "57014",
        ErrorClass::Unavailable => "58030",
        ErrorClass::Conflict => "40001",
        ErrorClass::DependentObjects => "2BP01",
        ErrorClass::LimitExceeded => "54000",
        _ => "XX000",
    }
}
