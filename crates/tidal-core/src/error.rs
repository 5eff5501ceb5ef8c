use crate::EntityKind;

/// Errors raised while parsing or validating tidalDB's core definitions.
///
/// Every variant names the offending input so that the message can be shown to a
/// user unchanged. The wire layer maps variants to SQLSTATEs (see [`CoreError::sqlstate`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("invalid identifier {name:?}: {reason}")]
    BadIdentifier { name: String, reason: &'static str },
    #[error("signal {name:?} already exists")]
    DuplicateSignal { name: String },
    #[error("signal {name:?} does not exist")]
    UnknownSignal { name: String },
    #[error("table for entity kind {kind} already exists")]
    DuplicateTable { kind: EntityKind },
    #[error("no table is defined for entity kind {kind}")]
    UnknownTable { kind: EntityKind },
    #[error("table {name:?} does not exist (entity tables are items, users and creators)")]
    UnknownTableName { name: String },
    #[error("column {column:?} of relation {table:?} does not exist")]
    UnknownColumn { table: String, column: String },
    #[error("column {column:?} is declared twice")]
    DuplicateColumn { column: String },
    #[error("column {column:?}: {reason}")]
    BadColumn { column: String, reason: String },
    #[error("invalid window {text:?}: {reason}")]
    BadWindow { text: String, reason: &'static str },
    #[error("invalid interval {text:?}: {reason}")]
    BadInterval { text: String, reason: &'static str },
    #[error("half-life {text:?} is out of range: must be between 1 second and 10 years")]
    HalfLifeOutOfRange { text: String },
    #[error("unknown entity kind {text:?} (expected item, user or creator)")]
    UnknownKind { text: String },
    #[error("unknown mark {text:?} (expected seen, liked or hidden)")]
    UnknownMark { text: String },
    #[error("invalid timestamp {text:?}: {reason}")]
    BadTimestamp { text: String, reason: &'static str },
    #[error("signal {signal:?} has no window {window}; declared windows are {declared}")]
    UndeclaredWindow {
        signal: String,
        window: String,
        declared: String,
    },
    #[error("{what} does not accept the window 'all'")]
    AllWindowNotAllowed { what: &'static str },
    #[error("weight {weight} is not a finite number")]
    NonFiniteWeight { weight: f64 },
    #[error("event time {ts} is more than {skew_s} seconds in the future (now {now})")]
    FutureTimestamp {
        ts: crate::Timestamp,
        now: crate::Timestamp,
        skew_s: u64,
    },
    #[error("signal {signal:?} is defined on {expected}, not on {got}")]
    WrongKind {
        signal: String,
        expected: EntityKind,
        got: EntityKind,
    },
    #[error("value for column {column:?}: {reason}")]
    BadValue { column: String, reason: String },
    #[error("profile {name:?} already exists (use CREATE OR REPLACE PROFILE to change it)")]
    DuplicateProfile { name: String },
    #[error("profile {name:?} does not exist")]
    UnknownProfile { name: String },
    #[error("invalid profile {name:?}: {reason}")]
    BadProfile { name: String, reason: String },
    #[error("cannot drop {object} because {dependents} depends on it")]
    DependentObjects { object: String, dependents: String },
    #[error("relation {name:?} already exists")]
    DuplicateIndex { name: String },
    #[error("index {name:?} does not exist")]
    UnknownIndex { name: String },
    #[error("invalid index {name:?}: {reason}")]
    BadIndex { name: String, reason: String },
    #[error("invalid PREFERENCE on signal {signal:?}: {reason}")]
    BadPreference { signal: String, reason: String },
    #[error("invalid AFFINITY on signal {signal:?}: {reason}")]
    BadAffinity { signal: String, reason: String },
    #[error("relationship {name:?} already exists")]
    DuplicateRelationship { name: String },
    #[error("relationship {name:?} does not exist")]
    UnknownRelationship { name: String },
    #[error("table or relationship {name:?} does not exist")]
    UnknownRelation { name: String },
    #[error("invalid relationship {name:?}: {reason}")]
    BadRelationship { name: String, reason: String },
    #[error("invalid COHORTS on signal {signal:?}: {reason}")]
    BadCohorts { signal: String, reason: String },
    #[error("invalid WITHIN COHORT: {reason}")]
    BadCohortScope { reason: String },
    #[error(
        "users column {column:?} is a cohort dimension and already has the maximum of {max} \
         distinct values; a new value {value:?} cannot be added"
    )]
    CohortValuesExceeded {
        column: String,
        value: String,
        max: usize,
    },
    #[error("malformed encoded data: {0}")]
    Decode(&'static str),
}

/// A coarse classification of errors, shared by every layer, from which the wire edge
/// derives a SQLSTATE. Kept here so each crate's error enum can say what it is
/// without knowing about PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Malformed statement or definition (SQLSTATE 42601).
    Syntax,
    /// A parameter value out of range or not allowed (22023).
    InvalidParameter,
    /// An object that does not exist (42704 / 42P01).
    UndefinedObject,
    /// A column that does not exist (42703).
    UndefinedColumn,
    /// An object that already exists (42710).
    DuplicateObject,
    /// A unique key violated (23505).
    UniqueViolation,
    /// A NOT NULL constraint violated (23502).
    NotNull,
    /// Bad data in a value (22P02 / 22000).
    DataException,
    /// A memory limit was hit (53200).
    OutOfMemory,
    /// Cancelled by the user or a timeout (57014).
    Cancelled,
    /// Storage or internal failure (XX000 / 58030).
    Internal,
    /// The database cannot accept writes until restarted (58030).
    Unavailable,
    /// A concurrent change invalidated a transaction; retrying it may succeed (40001).
    Conflict,
    /// Other objects depend on the one being dropped (2BP01).
    DependentObjects,
    /// A named limit of the database was reached (54000).
    LimitExceeded,
}

impl CoreError {
    /// The class of this error, for SQLSTATE mapping at the wire edge.
    pub fn class(&self) -> ErrorClass {
        use CoreError::*;
        match self {
            BadIdentifier { .. } | BadWindow { .. } | BadInterval { .. } => ErrorClass::Syntax,
            // SQL.md §1 puts a duplicate signal name with the invalid definitions
            // (42601/22023), not with PostgreSQL's duplicate_object (42710).
            DuplicateTable { .. }
            | DuplicateColumn { .. }
            | DuplicateProfile { .. }
            | DuplicateIndex { .. }
            | DuplicateRelationship { .. } => ErrorClass::DuplicateObject,
            BadIndex { .. }
            | BadPreference { .. }
            | BadAffinity { .. }
            | BadCohorts { .. }
            | BadCohortScope { .. }
            | BadRelationship { .. } => ErrorClass::InvalidParameter,
            CohortValuesExceeded { .. } => ErrorClass::LimitExceeded,
            DependentObjects { .. } => ErrorClass::DependentObjects,
            BadProfile { .. } => ErrorClass::InvalidParameter,
            UnknownSignal { .. }
            | UnknownTable { .. }
            | UnknownTableName { .. }
            | UnknownProfile { .. }
            | UnknownIndex { .. }
            | UnknownRelationship { .. }
            | UnknownRelation { .. } => ErrorClass::UndefinedObject,
            DuplicateSignal { .. }
            | HalfLifeOutOfRange { .. }
            | UnknownKind { .. }
            | UnknownMark { .. }
            | UndeclaredWindow { .. }
            | AllWindowNotAllowed { .. }
            | NonFiniteWeight { .. }
            | FutureTimestamp { .. }
            | WrongKind { .. }
            | BadColumn { .. } => ErrorClass::InvalidParameter,
            BadTimestamp { .. } | BadValue { .. } => ErrorClass::DataException,
            UnknownColumn { .. } => ErrorClass::UndefinedColumn,
            Decode(_) => ErrorClass::Internal,
        }
    }
}
