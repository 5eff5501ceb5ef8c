use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tidal_core::{CoreError, ErrorClass};
use tidal_engine::EngineError;

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    DataFusion(DataFusionError),
    #[error("{function}: {reason}")]
    BadArgument {
        function: &'static str,
        reason: String,
    },
    #[error("syntax error: {message}")]
    Syntax { message: String },
}

impl From<CoreError> for SqlError {
    fn from(e: CoreError) -> Self {
        SqlError::Engine(EngineError::Core(e))
    }
}

impl From<DataFusionError> for SqlError {
    /// Unwraps our own errors that travelled through DataFusion as `External`, so the
    /// classification (and SQLSTATE) is decided from the original variant.
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<SqlError>() {
                Ok(ours) => *ours,
                Err(other) => SqlError::DataFusion(DataFusionError::External(other)),
            },
            DataFusionError::Context(ctx, inner) => match SqlError::from(*inner) {
                SqlError::DataFusion(d) => {
                    SqlError::DataFusion(DataFusionError::Context(ctx, Box::new(d)))
                }
                ours => ours,
            },
            // An error raised inside a record-batch stream crosses Arrow's error type on
            // its way out (`External` becomes `ArrowError::ExternalError`).
            DataFusionError::ArrowError(a, bt) => match *a {
                datafusion::arrow::error::ArrowError::ExternalError(inner) => {
                    match inner.downcast::<SqlError>() {
                        Ok(ours) => *ours,
                        Err(other) => match other.downcast::<DataFusionError>() {
                            Ok(df) => SqlError::from(*df),
                            Err(other) => SqlError::DataFusion(DataFusionError::ArrowError(
                                Box::new(datafusion::arrow::error::ArrowError::ExternalError(
                                    other,
                                )),
                                bt,
                            )),
                        },
                    }
                }
                a => SqlError::DataFusion(DataFusionError::ArrowError(Box::new(a), bt)),
            },
            other => SqlError::DataFusion(other),
        }
    }
}

impl SqlError {
    /// Wraps this error for returning through DataFusion's APIs.
    pub(crate) fn into_df(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }

    /// Classification for the wire edge's SQLSTATE mapping.
    pub fn class(&self) -> ErrorClass {
        match self {
            SqlError::Engine(e) => e.class(),
            SqlError::BadArgument { .. } => ErrorClass::InvalidParameter,
            SqlError::Syntax { .. } => ErrorClass::Syntax,
            // DataFusion wraps errors in context and diagnostics; classify the root.
            SqlError::DataFusion(e) => match e.find_root() {
                DataFusionError::SQL(..) => ErrorClass::Syntax,
                DataFusionError::SchemaError(..) => ErrorClass::UndefinedObject,
                DataFusionError::Plan(m) if m.contains("not found") => ErrorClass::UndefinedObject,
                DataFusionError::Plan(_) => ErrorClass::Syntax,
                DataFusionError::NotImplemented(_) => ErrorClass::Syntax,
                DataFusionError::ResourcesExhausted(_) => ErrorClass::OutOfMemory,
                // A value that cannot be cast or parsed (`CAST('x' AS BIGINT)`, a bad
                // timestamp literal), a division by zero or an overflow is bad data in the
                // statement (22000), not an internal failure.
                DataFusionError::ArrowError(a, _)
                    if matches!(
                        **a,
                        ArrowError::CastError(_)
                            | ArrowError::ParseError(_)
                            | ArrowError::DivideByZero
                            | ArrowError::ArithmeticOverflow(_)
                    ) =>
                {
                    ErrorClass::DataException
                }
                _ => ErrorClass::Internal,
            },
        }
    }
}

pub(crate) fn bad_arg(function: &'static str, reason: impl Into<String>) -> DataFusionError {
    SqlError::BadArgument {
        function,
        reason: reason.into(),
    }
    .into_df()
}

pub(crate) fn engine_err(e: impl Into<EngineError>) -> DataFusionError {
    SqlError::Engine(e.into()).into_df()
}
