//! tidalDB's core vocabulary: entity ids and kinds, microsecond timestamps, windows,
//! decay, schema definitions with validation, entity values, and a small binary codec.
//!
//! Everything here is pure: no I/O, no clock reads (a [`Clock`] is passed in).
//!
//! ```
//! use tidal_core::{DecaySpec, EntityKind, SignalDef, Window};
//!
//! let like = SignalDef::new(
//!     "like",
//!     EntityKind::Item,
//!     DecaySpec::exponential("14 days")?,
//!     ["24h", "7d", "all"].iter().map(|w| Window::parse(w)).collect::<Result<Vec<_>, _>>()?,
//! )?;
//! assert_eq!(like.windows_text(), "1d, 7d, all");
//! # Ok::<(), tidal_core::CoreError>(())
//! ```
//!
//! Limits: windows 1 minute to 90 days (or `'all'`), half-lives 1 second to 10 years,
//! identifiers up to 63 bytes, 16 windows per signal, 4096 signals, 1600 columns.

pub mod codec;
mod decay;
mod error;
mod event;
mod id;
pub mod metrics;
pub mod profile;
pub mod schema;
pub mod time;
mod value;
mod window;

pub use decay::{DecaySpec, HALF_LIFE_MICROS_MAX, HALF_LIFE_MICROS_MIN};
pub use error::{CoreError, ErrorClass};
pub use event::{FUTURE_SKEW_MICROS_MAX, SignalEvent};
pub use id::{EntityId, EntityKind};
pub use profile::{PROFILES_MAX, ProfileDef};
pub use schema::{
    AFFINITY_DELTA_ABS_MAX, COHORT_COMPOSITE_COLUMNS_MAX, COHORT_DIMENSIONS_MAX, COHORT_VALUES_MAX,
    CohortDim, ColumnDef, ColumnType, Mark, RELATIONSHIPS_MAX, RelationshipDef, Schema,
    SchemaChange, SignalDef, SignalId, TEXT_BOOST_MAX, TEXT_FIELDS_MAX, TableDef, TextAnalyzer,
    VECTOR_DIMENSIONS_MAX, VECTOR_INDEXES_MAX, VectorIndexDef, VectorMetric,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use value::{Row, Value, decode_row, encode_row};
pub use window::{WINDOW_MINUTES_MAX, WINDOW_MINUTES_MIN, Window};
