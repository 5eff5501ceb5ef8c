//! Schema: signal definitions and entity tables, with validation that names the problem.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::codec::{Decoder, Encoder};
use crate::profile::{PROFILES_MAX, ProfileDef};
use crate::{CoreError, DecaySpec, EntityKind, Window};

/// Longest identifier, as PostgreSQL's NAMEDATALEN − 1.
pub const IDENTIFIER_BYTES_MAX: usize = 63;
/// Most windows one signal may declare.
pub const SIGNAL_WINDOWS_MAX: usize = 16;
/// Most signals one database may define.
pub const SIGNALS_MAX: usize = 4_096;
/// Most columns in an entity table (PostgreSQL's limit).
pub const TABLE_COLUMNS_MAX: usize = 1_600;
/// Largest vector dimension (pgvector's limit).
pub const VECTOR_DIMENSIONS_MAX: u32 = 16_000;

/// Checks that `name` is a plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, ≤ 63 bytes.
pub fn validate_identifier(name: &str) -> Result<(), CoreError> {
    let bad = |reason| CoreError::BadIdentifier {
        name: name.to_string(),
        reason,
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("identifiers cannot be empty")),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(bad("must start with a letter or underscore"));
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad("only letters, digits and underscores are allowed"));
    }
    if name.len() > IDENTIFIER_BYTES_MAX {
        return Err(bad("longer than 63 bytes"));
    }
    Ok(())
}

/// Dense id of a signal, assigned at CREATE and never reused, so events of a dropped
/// signal can never be confused with a new signal of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignalId(pub u32);

impl fmt::Display for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A per-user state bit that a signal sets on the entity (`MARKS seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    Seen,
    Liked,
    Hidden,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Seen => "seen",
            Mark::Liked => "liked",
            Mark::Hidden => "hidden",
        }
    }
    fn tag(self) -> u8 {
        match self {
            Mark::Seen => 1,
            Mark::Liked => 2,
            Mark::Hidden => 3,
        }
    }
    fn from_tag(t: u8) -> Option<Mark> {
        match t {
            1 => Some(Mark::Seen),
            2 => Some(Mark::Liked),
            3 => Some(Mark::Hidden),
            _ => None,
        }
    }
}

impl FromStr for Mark {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "seen" => Ok(Mark::Seen),
            "liked" => Ok(Mark::Liked),
            "hidden" => Ok(Mark::Hidden),
            _ => Err(CoreError::UnknownMark {
                text: s.to_string(),
            }),
        }
    }
}

/// `CREATE SIGNAL name ON kind DECAY ... WINDOWS (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalDef {
    pub id: SignalId,
    pub name: String,
    pub kind: EntityKind,
    pub decay: DecaySpec,
    /// Sorted, without duplicates.
    pub windows: Vec<Window>,
    pub marks: Option<Mark>,
    /// `PREFERENCE lr`: each event with a user moves the user's preference vector by
    /// `lr · weight` toward the item's embedding (SQL.md §7). Only on item signals.
    pub preference: Option<f64>,
    /// `AFFINITY δ`: each event with a user adds `δ · weight`, decayed with this
    /// signal's half-life, to the user's affinity for the item's creator (SQL.md §8).
    /// Only on item signals.
    pub affinity: Option<f64>,
    /// `COHORTS (region, age_group, (region, age_group))`: per value of each dimension,
    /// the same state the ledger keeps globally, over the events of users with that
    /// value (SQL.md §9). Empty for none.
    pub cohorts: Vec<CohortDim>,
}

/// Most cohort dimensions (single columns and composites) one signal may declare.
pub const COHORT_DIMENSIONS_MAX: usize = 8;
/// Most columns in one composite cohort dimension.
pub const COHORT_COMPOSITE_COLUMNS_MAX: usize = 3;
/// Most distinct values a users column that is a cohort dimension may take; a write
/// that would add one more fails (54000). Bounds every cohort dictionary and, with the
/// composite width, the number of cohorts per signal.
pub const COHORT_VALUES_MAX: usize = 1_024;

/// One cohort dimension: a users column, or a composite of several (an exact
/// conjunction). Column names are lower-case, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CohortDim {
    pub columns: Vec<String>,
}

impl CohortDim {
    pub fn new(columns: Vec<String>) -> CohortDim {
        CohortDim {
            columns: columns
                .into_iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        }
    }

    /// The name shown in `cohort_windows.dimension` and `cohorts`: the columns joined
    /// by commas (`region`, `region,age_group`).
    pub fn name(&self) -> String {
        self.columns.join(",")
    }

    /// The columns sorted: two dimensions over the same columns are the same cohort.
    pub fn column_set(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// `[count u8]`, then per dimension `[columns u8]` and the column names.
    pub fn encode_list(dims: &[CohortDim], e: &mut Encoder) {
        e.u8(dims.len() as u8);
        for d in dims {
            e.u8(d.columns.len() as u8);
            for c in &d.columns {
                e.str(c);
            }
        }
    }

    /// The inverse of [`CohortDim::encode_list`]; counts are checked against the limits.
    pub fn decode_list(d: &mut Decoder<'_>) -> Result<Vec<CohortDim>, CoreError> {
        let n = d.u8()? as usize;
        if n == 0 || n > COHORT_DIMENSIONS_MAX {
            return Err(CoreError::Decode("bad cohort dimension count"));
        }
        let mut dims = Vec::with_capacity(n);
        for _ in 0..n {
            let k = d.u8()? as usize;
            if k == 0 || k > COHORT_COMPOSITE_COLUMNS_MAX {
                return Err(CoreError::Decode("bad cohort composite width"));
            }
            let mut columns = Vec::with_capacity(k);
            for _ in 0..k {
                columns.push(d.str()?.to_string());
            }
            dims.push(CohortDim { columns });
        }
        Ok(dims)
    }

    /// `region` or `(region, age_group)`, as written in COHORTS.
    pub fn sql(&self) -> String {
        match self.columns.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        }
    }
}

/// Largest `|δ|` of `AFFINITY δ`.
pub const AFFINITY_DELTA_ABS_MAX: f64 = 1e6;

/// Largest `|lr|` of `PREFERENCE lr`: a rate past it would make one event replace the
/// vector outright, which `lr = 1` already does for a unit weight.
pub const PREFERENCE_RATE_ABS_MAX: f64 = 1_000.0;

impl SignalDef {
    /// Builds a definition, normalising windows (sorted, deduplicated) and validating
    /// the name. The id is assigned by [`Schema::apply`].
    pub fn new(
        name: &str,
        kind: EntityKind,
        decay: DecaySpec,
        windows: impl IntoIterator<Item = Window>,
    ) -> Result<SignalDef, CoreError> {
        validate_identifier(name)?;
        let mut windows: Vec<Window> = windows.into_iter().collect();
        windows.sort();
        windows.dedup();
        if windows.len() > SIGNAL_WINDOWS_MAX {
            return Err(CoreError::BadWindow {
                text: format!("{} windows", windows.len()),
                reason: "a signal may declare at most 16 windows",
            });
        }
        Ok(SignalDef {
            id: SignalId(0),
            name: name.to_string(),
            kind,
            decay,
            windows,
            marks: None,
            preference: None,
            affinity: None,
            cohorts: Vec::new(),
        })
    }

    /// Adds `COHORTS (...)`: checks counts, identifiers, composite widths and
    /// duplicates. Whether the columns exist on the users table is checked when the
    /// change is prepared against the schema ([`Schema::prepare`]).
    pub fn with_cohorts(mut self, dims: Vec<CohortDim>) -> Result<SignalDef, CoreError> {
        let bad = |reason: String| CoreError::BadCohorts {
            signal: self.name.clone(),
            reason,
        };
        if dims.is_empty() {
            return Err(bad("COHORTS needs at least one users column".into()));
        }
        if dims.len() > COHORT_DIMENSIONS_MAX {
            return Err(bad(format!(
                "{} dimensions given; a signal may declare at most {COHORT_DIMENSIONS_MAX}",
                dims.len()
            )));
        }
        if self.kind == EntityKind::User {
            return Err(bad(
                "cohorts split an item's or creator's events by the audience (the users \
                 who sent them), so they need a signal ON items or ON creators, not ON users"
                    .into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &dims {
            for c in &d.columns {
                validate_identifier(c)?;
            }
            if d.columns.len() > COHORT_COMPOSITE_COLUMNS_MAX {
                return Err(bad(format!(
                    "composite {} has {} columns; at most {COHORT_COMPOSITE_COLUMNS_MAX}",
                    d.sql(),
                    d.columns.len()
                )));
            }
            let set = d.column_set();
            if set.windows(2).any(|w| w[0] == w[1]) {
                return Err(bad(format!("composite {} names a column twice", d.sql())));
            }
            if d.columns.len() == 1 && d.columns[0] == "id" {
                return Err(bad(
                    "id names one user, not an audience: cohort dimensions are attributes \
                     such as region or age_group"
                        .into(),
                ));
            }
            if !seen.insert(set.join(",")) {
                return Err(bad(format!("dimension {} is declared twice", d.sql())));
            }
        }
        self.cohorts = dims;
        Ok(self)
    }

    /// The declared dimension over exactly these columns (in any order), by index.
    pub fn cohort_index(&self, columns: &[&str]) -> Option<usize> {
        let mut want: Vec<&str> = columns.to_vec();
        want.sort_unstable();
        self.cohorts.iter().position(|d| d.column_set() == want)
    }

    /// Every users column any of the signal's cohort dimensions reads.
    pub fn cohort_columns(&self) -> std::collections::BTreeSet<&str> {
        self.cohorts
            .iter()
            .flat_map(|d| d.columns.iter().map(String::as_str))
            .collect()
    }

    /// Adds `AFFINITY δ`: a finite, non-zero weight within ±[`AFFINITY_DELTA_ABS_MAX`],
    /// on a signal about items (affinity is user → the item's creator).
    pub fn with_affinity(mut self, delta: f64) -> Result<SignalDef, CoreError> {
        if !delta.is_finite() || delta == 0.0 || delta.abs() > AFFINITY_DELTA_ABS_MAX {
            return Err(CoreError::BadAffinity {
                signal: self.name,
                reason: format!(
                    "the weight must be a non-zero number between -{AFFINITY_DELTA_ABS_MAX} \
                     and {AFFINITY_DELTA_ABS_MAX}, not {delta}"
                ),
            });
        }
        if self.kind != EntityKind::Item {
            return Err(CoreError::BadAffinity {
                signal: self.name,
                reason: format!(
                    "AFFINITY is user → creator of the item, so it needs a signal ON items, \
                     not ON {} (which has no creators)",
                    self.kind.table_name()
                ),
            });
        }
        self.affinity = Some(delta);
        Ok(self)
    }

    pub fn with_marks(mut self, mark: Mark) -> SignalDef {
        self.marks = Some(mark);
        self
    }

    /// Adds `PREFERENCE lr`: a finite, non-zero rate within
    /// ±[`PREFERENCE_RATE_ABS_MAX`], on a signal about items (whose embeddings it
    /// follows).
    pub fn with_preference(mut self, lr: f64) -> Result<SignalDef, CoreError> {
        if !lr.is_finite() || lr == 0.0 || lr.abs() > PREFERENCE_RATE_ABS_MAX {
            return Err(CoreError::BadPreference {
                signal: self.name,
                reason: format!(
                    "the learning rate must be a non-zero number between -{PREFERENCE_RATE_ABS_MAX} \
                     and {PREFERENCE_RATE_ABS_MAX}, not {lr}"
                ),
            });
        }
        if self.kind != EntityKind::Item {
            return Err(CoreError::BadPreference {
                signal: self.name,
                reason: format!(
                    "PREFERENCE follows item embeddings, so it needs a signal ON items, not ON {}",
                    self.kind.table_name()
                ),
            });
        }
        self.preference = Some(lr);
        Ok(self)
    }

    /// Checks that `w` is declared on this signal.
    pub fn require_window(&self, w: Window) -> Result<(), CoreError> {
        if self.windows.contains(&w) {
            return Ok(());
        }
        Err(CoreError::UndeclaredWindow {
            signal: self.name.clone(),
            window: w.to_string(),
            declared: self.windows_text(),
        })
    }

    /// `'1h', '1d'` style list for messages and SHOW SIGNALS.
    pub fn windows_text(&self) -> String {
        let v: Vec<String> = self.windows.iter().map(|w| w.to_string()).collect();
        v.join(", ")
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u32(self.id.0);
        e.str(&self.name);
        e.u8(self.kind.tag());
        match self.decay {
            DecaySpec::Exponential { half_life_us, .. } => {
                e.u8(1);
                e.i64(half_life_us);
            }
            DecaySpec::None => e.u8(0),
        }
        e.u32(self.windows.len() as u32);
        for w in &self.windows {
            e.u32(w.to_code());
        }
        // The high bits of the marks byte say a preference rate and an affinity weight
        // follow; definitions written before either existed decode unchanged.
        let mut marks = self.marks.map_or(0, Mark::tag);
        if self.preference.is_some() {
            marks |= PREFERENCE_FLAG;
        }
        if self.affinity.is_some() {
            marks |= AFFINITY_FLAG;
        }
        if !self.cohorts.is_empty() {
            marks |= COHORTS_FLAG;
        }
        e.u8(marks);
        if let Some(lr) = self.preference {
            e.f64(lr);
        }
        if let Some(delta) = self.affinity {
            e.f64(delta);
        }
        if !self.cohorts.is_empty() {
            CohortDim::encode_list(&self.cohorts, e);
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<SignalDef, CoreError> {
        let id = SignalId(d.u32()?);
        let name = d.str()?.to_string();
        let kind = EntityKind::from_tag(d.u8()?).ok_or(CoreError::Decode("bad entity kind"))?;
        let decay = match d.u8()? {
            0 => DecaySpec::None,
            1 => DecaySpec::exponential_micros(d.i64()?)
                .map_err(|_| CoreError::Decode("bad half-life"))?,
            _ => return Err(CoreError::Decode("bad decay tag")),
        };
        let n = d.u32()? as usize;
        if n > SIGNAL_WINDOWS_MAX {
            return Err(CoreError::Decode("too many windows"));
        }
        let mut windows = Vec::with_capacity(n);
        for _ in 0..n {
            windows.push(Window::from_code(d.u32()?).ok_or(CoreError::Decode("bad window"))?);
        }
        let byte = d.u8()?;
        let marks = match byte & !(PREFERENCE_FLAG | AFFINITY_FLAG | COHORTS_FLAG) {
            0 => None,
            t => Some(Mark::from_tag(t).ok_or(CoreError::Decode("bad mark"))?),
        };
        let preference = if byte & PREFERENCE_FLAG != 0 {
            let lr = d.f64()?;
            if !lr.is_finite() || lr == 0.0 || lr.abs() > PREFERENCE_RATE_ABS_MAX {
                return Err(CoreError::Decode("bad preference rate"));
            }
            Some(lr)
        } else {
            None
        };
        let affinity = if byte & AFFINITY_FLAG != 0 {
            let delta = d.f64()?;
            if !delta.is_finite() || delta == 0.0 || delta.abs() > AFFINITY_DELTA_ABS_MAX {
                return Err(CoreError::Decode("bad affinity weight"));
            }
            Some(delta)
        } else {
            None
        };
        let cohorts = if byte & COHORTS_FLAG != 0 {
            CohortDim::decode_list(d)?
        } else {
            Vec::new()
        };
        Ok(SignalDef {
            id,
            name,
            kind,
            decay,
            windows,
            marks,
            preference,
            affinity,
            cohorts,
        })
    }
}

/// In a signal's encoded marks byte: a preference rate follows.
const PREFERENCE_FLAG: u8 = 0x80;
/// In a signal's encoded marks byte: an affinity weight follows (after the rate).
const AFFINITY_FLAG: u8 = 0x40;
/// In a signal's encoded marks byte: cohort dimensions follow (after the weight).
const COHORTS_FLAG: u8 = 0x20;

/// Column types an entity table may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    BigInt,
    Int,
    Double,
    Real,
    Boolean,
    Text,
    Timestamp,
    TextArray,
    /// `VECTOR(n)`.
    Vector(u32),
}

impl ColumnType {
    fn tag(self) -> (u8, u32) {
        match self {
            ColumnType::BigInt => (1, 0),
            ColumnType::Int => (2, 0),
            ColumnType::Double => (3, 0),
            ColumnType::Real => (4, 0),
            ColumnType::Boolean => (5, 0),
            ColumnType::Text => (6, 0),
            ColumnType::Timestamp => (7, 0),
            ColumnType::TextArray => (8, 0),
            ColumnType::Vector(n) => (9, n),
        }
    }
    fn from_tag(t: u8, n: u32) -> Option<ColumnType> {
        Some(match t {
            1 => ColumnType::BigInt,
            2 => ColumnType::Int,
            3 => ColumnType::Double,
            4 => ColumnType::Real,
            5 => ColumnType::Boolean,
            6 => ColumnType::Text,
            7 => ColumnType::Timestamp,
            8 => ColumnType::TextArray,
            9 => ColumnType::Vector(n),
            _ => return None,
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::BigInt => f.write_str("bigint"),
            ColumnType::Int => f.write_str("integer"),
            ColumnType::Double => f.write_str("double precision"),
            ColumnType::Real => f.write_str("real"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Text => f.write_str("text"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::TextArray => f.write_str("text[]"),
            ColumnType::Vector(n) => write!(f, "vector({n})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: ColumnType,
}

impl ColumnDef {
    pub fn new(name: &str, ty: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.to_string(),
            ty,
        }
    }
}

/// Most text fields one table may index.
pub const TEXT_FIELDS_MAX: usize = 32;
/// Largest field boost in `text_fields` (`'title^2,body'`).
pub const TEXT_BOOST_MAX: f32 = 1_000.0;

/// How the text fields of a table are split into terms (`text_analyzer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TextAnalyzer {
    /// Split on non-alphanumeric characters, drop tokens over 40 bytes, lowercase
    /// (tantivy's `default`).
    #[default]
    Default,
    /// `Default` plus the English (Porter 2) stemmer (tantivy's `en_stem`).
    EnStem,
}

impl TextAnalyzer {
    pub fn as_str(self) -> &'static str {
        match self {
            TextAnalyzer::Default => "default",
            TextAnalyzer::EnStem => "en_stem",
        }
    }
    fn tag(self) -> u8 {
        match self {
            TextAnalyzer::Default => 0,
            TextAnalyzer::EnStem => 1,
        }
    }
    fn from_tag(t: u8) -> Option<TextAnalyzer> {
        match t {
            0 => Some(TextAnalyzer::Default),
            1 => Some(TextAnalyzer::EnStem),
            _ => None,
        }
    }
}

impl FromStr for TextAnalyzer {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "default" => Ok(TextAnalyzer::Default),
            "en_stem" => Ok(TextAnalyzer::EnStem),
            _ => Err(CoreError::BadColumn {
                column: "text_analyzer".into(),
                reason: format!("unknown analyzer {s:?} (expected 'default' or 'en_stem')"),
            }),
        }
    }
}

/// An entity table: `CREATE TABLE items (...) WITH (kind = 'item')`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub kind: EntityKind,
    /// Column 0 is always `id BIGINT`.
    pub columns: Vec<ColumnDef>,
    /// Columns indexed for full-text search (`text_fields`).
    pub text_fields: Vec<String>,
    /// The query-time boost of each text field (`'title^2,body'`), 1.0 unless given;
    /// as long as `text_fields`.
    pub text_boosts: Vec<f32>,
    pub text_analyzer: TextAnalyzer,
    /// The schema version this table was created at: tells it from an earlier table of
    /// the same kind (its text index is named by it). 0 for tables created before it
    /// was recorded. Set by [`Schema::prepare`].
    pub generation: u64,
}

/// Boosts are checked finite and positive, so equality is total.
impl Eq for TableDef {}

impl TableDef {
    /// Validates and builds a table definition. `id BIGINT` must be present; it is
    /// moved to position 0 if declared elsewhere.
    pub fn new(
        kind: EntityKind,
        columns: Vec<ColumnDef>,
        text_fields: Vec<String>,
    ) -> Result<TableDef, CoreError> {
        if columns.len() > TABLE_COLUMNS_MAX {
            return Err(CoreError::BadColumn {
                column: format!("{} columns", columns.len()),
                reason: format!("a table may have at most {TABLE_COLUMNS_MAX} columns"),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &columns {
            validate_identifier(&c.name)?;
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(CoreError::DuplicateColumn {
                    column: c.name.clone(),
                });
            }
            if let ColumnType::Vector(n) = c.ty
                && (n == 0 || n > VECTOR_DIMENSIONS_MAX)
            {
                return Err(CoreError::BadColumn {
                    column: c.name.clone(),
                    reason: format!("vector dimension must be 1 to {VECTOR_DIMENSIONS_MAX}"),
                });
            }
        }
        let id_pos = columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case("id"))
            .ok_or_else(|| CoreError::BadColumn {
                column: "id".into(),
                reason: "every entity table needs an `id BIGINT PRIMARY KEY` column".into(),
            })?;
        if columns[id_pos].ty != ColumnType::BigInt {
            return Err(CoreError::BadColumn {
                column: "id".into(),
                reason: "must be BIGINT".into(),
            });
        }
        let expect = |name: &str, ty: ColumnType, what: &str| -> Result<(), CoreError> {
            match columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
                Some(c) if c.ty != ty => Err(CoreError::BadColumn {
                    column: c.name.clone(),
                    reason: format!("on {kind} this column is {what} and must be {ty}"),
                }),
                _ => Ok(()),
            }
        };
        if kind == EntityKind::Item {
            expect("creator_id", ColumnType::BigInt, "the creator reference")?;
            expect("created_at", ColumnType::Timestamp, "the creation time")?;
        }
        for f in &text_fields {
            match columns.iter().find(|c| c.name.eq_ignore_ascii_case(f)) {
                Some(c) if c.ty == ColumnType::Text => {}
                Some(c) => {
                    return Err(CoreError::BadColumn {
                        column: c.name.clone(),
                        reason: "text_fields must name TEXT columns".into(),
                    });
                }
                None => {
                    return Err(CoreError::BadColumn {
                        column: f.clone(),
                        reason: "text_fields names a column that does not exist".into(),
                    });
                }
            }
        }
        if text_fields.len() > TEXT_FIELDS_MAX {
            return Err(CoreError::BadColumn {
                column: "text_fields".into(),
                reason: format!("at most {TEXT_FIELDS_MAX} text fields"),
            });
        }
        let mut text_fields = text_fields;
        for f in text_fields.iter_mut() {
            let i = columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(f))
                .unwrap_or(0);
            f.clone_from(&columns[i].name);
        }
        let mut names = std::collections::BTreeSet::new();
        if let Some(dup) = text_fields.iter().find(|f| !names.insert(f.as_str())) {
            return Err(CoreError::BadColumn {
                column: dup.clone(),
                reason: "text_fields names this column twice".into(),
            });
        }
        let mut columns = columns;
        let id = columns.remove(id_pos);
        columns.insert(0, id);
        Ok(TableDef {
            kind,
            columns,
            text_boosts: vec![1.0; text_fields.len()],
            text_fields,
            text_analyzer: TextAnalyzer::Default,
            generation: 0,
        })
    }

    /// Sets the text analyzer and the per-field boosts (one per text field).
    pub fn with_text_options(
        mut self,
        analyzer: TextAnalyzer,
        boosts: Vec<f32>,
    ) -> Result<TableDef, CoreError> {
        if boosts.len() != self.text_fields.len() {
            return Err(CoreError::BadColumn {
                column: "text_fields".into(),
                reason: format!(
                    "{} boosts for {} text fields",
                    boosts.len(),
                    self.text_fields.len()
                ),
            });
        }
        if let Some(b) = boosts
            .iter()
            .find(|b| !(b.is_finite() && **b > 0.0 && **b <= TEXT_BOOST_MAX))
        {
            return Err(CoreError::BadColumn {
                column: "text_fields".into(),
                reason: format!(
                    "a field boost must be above 0 and at most {TEXT_BOOST_MAX}, not {b}"
                ),
            });
        }
        self.text_analyzer = analyzer;
        self.text_boosts = boosts;
        Ok(self)
    }

    /// Positions of the text fields among the columns.
    pub fn text_columns(&self) -> Vec<usize> {
        self.text_fields
            .iter()
            .filter_map(|f| self.column_index(f))
            .collect()
    }

    /// The column preference vectors follow (SQL.md §7): the VECTOR column named
    /// `embedding`, else the first VECTOR column; with its position and dimensions.
    pub fn preference_column(&self) -> Option<(usize, u32)> {
        let vector = |(i, c): (usize, &ColumnDef)| match c.ty {
            ColumnType::Vector(n) => Some((i, n)),
            _ => None,
        };
        let mut columns = self.columns.iter().enumerate();
        columns
            .clone()
            .filter(|(_, c)| c.name.eq_ignore_ascii_case("embedding"))
            .find_map(vector)
            .or_else(|| columns.find_map(vector))
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn encode(&self, e: &mut Encoder) {
        // The high bit of the kind byte says the text options and generation follow
        // (format 2); format-1 definitions (without it) decode with the defaults.
        e.u8(self.kind.tag() | TABLE_FORMAT2_FLAG);
        e.u32(self.columns.len() as u32);
        for c in &self.columns {
            e.str(&c.name);
            let (t, n) = c.ty.tag();
            e.u8(t);
            e.u32(n);
        }
        e.u32(self.text_fields.len() as u32);
        for f in &self.text_fields {
            e.str(f);
        }
        e.u8(self.text_analyzer.tag());
        for b in &self.text_boosts {
            e.f32(*b);
        }
        e.u64(self.generation);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<TableDef, CoreError> {
        let tag = d.u8()?;
        let format2 = tag & TABLE_FORMAT2_FLAG != 0;
        let kind = EntityKind::from_tag(tag & !TABLE_FORMAT2_FLAG)
            .ok_or(CoreError::Decode("bad entity kind"))?;
        let n = d.u32()? as usize;
        if n > TABLE_COLUMNS_MAX {
            return Err(CoreError::Decode("too many columns"));
        }
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let name = d.str()?.to_string();
            let (t, dim) = (d.u8()?, d.u32()?);
            let ty = ColumnType::from_tag(t, dim).ok_or(CoreError::Decode("bad column type"))?;
            columns.push(ColumnDef { name, ty });
        }
        let n = d.u32()? as usize;
        if n > TABLE_COLUMNS_MAX {
            return Err(CoreError::Decode("too many text fields"));
        }
        let mut text_fields = Vec::with_capacity(n);
        for _ in 0..n {
            text_fields.push(d.str()?.to_string());
        }
        let mut def = TableDef {
            kind,
            columns,
            text_boosts: vec![1.0; text_fields.len()],
            text_fields,
            text_analyzer: TextAnalyzer::Default,
            generation: 0,
        };
        if format2 {
            def.text_analyzer =
                TextAnalyzer::from_tag(d.u8()?).ok_or(CoreError::Decode("bad text analyzer"))?;
            for b in def.text_boosts.iter_mut() {
                *b = d.f32()?;
                if !(b.is_finite() && *b > 0.0) {
                    return Err(CoreError::Decode("bad text boost"));
                }
            }
            def.generation = d.u64()?;
        }
        Ok(def)
    }
}

/// Marks a format-2 table definition (see [`TableDef::encode`]).
const TABLE_FORMAT2_FLAG: u8 = 0x80;

/// A schema change, as carried in the WAL. Applying one is deterministic, so replay
/// rebuilds the same schema (including signal ids).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SchemaChange {
    CreateSignal(SignalDef),
    /// `id` is filled in by [`Schema::prepare`]; callers may pass `SignalId(0)`.
    DropSignal {
        name: String,
        id: SignalId,
    },
    CreateTable(TableDef),
    DropTable {
        kind: EntityKind,
    },
    /// `CREATE [OR REPLACE] PROFILE`. [`Schema::prepare`] sets the version (1, or the
    /// replaced profile's + 1).
    CreateProfile {
        def: ProfileDef,
        replace: bool,
    },
    DropProfile {
        name: String,
    },
    /// `CREATE INDEX name ON t USING hnsw (column opclass) WITH (...)`. [`Schema::prepare`]
    /// sets the id.
    CreateIndex(VectorIndexDef),
    DropIndex {
        name: String,
    },
    /// `CREATE RELATIONSHIP`. [`Schema::prepare`] sets the id.
    CreateRelationship(RelationshipDef),
    /// `DROP RELATIONSHIP`: its edges go with it. [`Schema::prepare`] fills in the id.
    DropRelationship {
        name: String,
        id: u64,
    },
    /// `ALTER SIGNAL name ADD COHORTS (...)`: the dimensions are appended to the
    /// signal's, and the engine builds their state from the history. [`Schema::prepare`]
    /// fills in the id and checks the combined list.
    AlterSignalCohorts {
        name: String,
        id: SignalId,
        add: Vec<CohortDim>,
    },
}

/// Most vector indexes a database may have.
pub const VECTOR_INDEXES_MAX: usize = 64;
/// Most relationships a database may have.
pub const RELATIONSHIPS_MAX: usize = 64;

/// Names a relationship may not take: the tables every database has (a relationship is
/// a table too) and the words `FILTER` reads as marks.
pub const RELATIONSHIP_RESERVED_NAMES: [&str; 14] = [
    "items",
    "users",
    "creators",
    "signals",
    "signal_state",
    "signal_windows",
    "affinities",
    "cohort_windows",
    "cohorts",
    "seen",
    "unseen",
    "liked",
    "unliked",
    "hidden",
];

/// `CREATE RELATIONSHIP name FROM users TO users | creators | items` (SQL.md §8): a
/// durable set of directed edges `(src, dst, created_at)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationshipDef {
    /// Lower-case, unique among relationships and distinct from every table name.
    pub name: String,
    /// Always users today (FILTER reads the FOR USER user's out-edges).
    pub from: EntityKind,
    pub to: EntityKind,
    /// The schema version this relationship was created at: keys its edges in the
    /// store, so a dropped and re-created relationship never sees the old edges. Set
    /// by [`Schema::prepare`].
    pub id: u64,
}

impl RelationshipDef {
    pub fn validate(&self) -> Result<(), CoreError> {
        validate_identifier(&self.name)?;
        let bad = |reason: String| CoreError::BadRelationship {
            name: self.name.clone(),
            reason,
        };
        if RELATIONSHIP_RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(bad(format!(
                "{:?} is reserved (a table, a state table or a FILTER mark word)",
                self.name
            )));
        }
        if self.from != EntityKind::User {
            return Err(bad(format!(
                "relationships go FROM users (FILTER reads the FOR USER user's edges), not FROM {}",
                self.from.table_name()
            )));
        }
        Ok(())
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.str(&self.name);
        e.u8(self.from.tag());
        e.u8(self.to.tag());
        e.u64(self.id);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<RelationshipDef, CoreError> {
        let kind = |d: &mut Decoder<'_>| {
            EntityKind::from_tag(d.u8()?).ok_or(CoreError::Decode("bad entity kind"))
        };
        Ok(RelationshipDef {
            name: d.str()?.to_string(),
            from: kind(d)?,
            to: kind(d)?,
            id: d.u64()?,
        })
    }
}

/// The distance an HNSW index orders by: its operator class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorMetric {
    /// `vector_l2_ops`: `<->`, `l2_distance`.
    L2,
    /// `vector_cosine_ops`: `<=>`, `cosine_distance`.
    Cosine,
    /// `vector_ip_ops`: `<#>` (negative inner product).
    InnerProduct,
}

impl VectorMetric {
    /// pgvector's operator class name.
    pub fn opclass(self) -> &'static str {
        match self {
            VectorMetric::L2 => "vector_l2_ops",
            VectorMetric::Cosine => "vector_cosine_ops",
            VectorMetric::InnerProduct => "vector_ip_ops",
        }
    }

    pub fn from_opclass(s: &str) -> Option<VectorMetric> {
        match s.to_ascii_lowercase().as_str() {
            "vector_l2_ops" => Some(VectorMetric::L2),
            "vector_cosine_ops" => Some(VectorMetric::Cosine),
            "vector_ip_ops" => Some(VectorMetric::InnerProduct),
            _ => None,
        }
    }

    fn tag(self) -> u8 {
        match self {
            VectorMetric::L2 => 1,
            VectorMetric::Cosine => 2,
            VectorMetric::InnerProduct => 3,
        }
    }

    fn from_tag(t: u8) -> Option<VectorMetric> {
        match t {
            1 => Some(VectorMetric::L2),
            2 => Some(VectorMetric::Cosine),
            3 => Some(VectorMetric::InnerProduct),
            _ => None,
        }
    }
}

/// An HNSW index over a `VECTOR(n)` column, with pgvector's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorIndexDef {
    /// Lower-case, unique among indexes.
    pub name: String,
    pub kind: EntityKind,
    /// The indexed column (lower-case).
    pub column: String,
    pub metric: VectorMetric,
    /// Links per node (pgvector's `m`, 2 to 100; default 16).
    pub m: u32,
    /// Candidate list size while building (4 to 1000, at least 2·m; default 64).
    pub ef_construction: u32,
    /// The schema version this index was created at: names its files, so a dropped
    /// and re-created index of the same name never finds the old one. Set by
    /// [`Schema::prepare`].
    pub id: u64,
}

impl VectorIndexDef {
    pub const M_DEFAULT: u32 = 16;
    pub const EF_CONSTRUCTION_DEFAULT: u32 = 64;

    /// Checks the parameters (pgvector's ranges and messages).
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |reason: String| CoreError::BadIndex {
            name: self.name.clone(),
            reason,
        };
        validate_identifier(&self.name)?;
        if !(2..=100).contains(&self.m) {
            return Err(bad(format!(
                "value {} out of bounds for option \"m\" (valid values are 2 to 100)",
                self.m
            )));
        }
        if !(4..=1000).contains(&self.ef_construction) {
            return Err(bad(format!(
                "value {} out of bounds for option \"ef_construction\" (valid values are 4 to 1000)",
                self.ef_construction
            )));
        }
        if self.ef_construction < 2 * self.m {
            return Err(bad(
                "ef_construction must be greater than or equal to 2 * m".into(),
            ));
        }
        Ok(())
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.str(&self.name);
        e.u8(self.kind.tag());
        e.str(&self.column);
        e.u8(self.metric.tag());
        e.u32(self.m);
        e.u32(self.ef_construction);
        e.u64(self.id);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<VectorIndexDef, CoreError> {
        Ok(VectorIndexDef {
            name: d.str()?.to_string(),
            kind: EntityKind::from_tag(d.u8()?).ok_or(CoreError::Decode("bad entity kind"))?,
            column: d.str()?.to_string(),
            metric: VectorMetric::from_tag(d.u8()?).ok_or(CoreError::Decode("bad metric"))?,
            m: d.u32()?,
            ef_construction: d.u32()?,
            id: d.u64()?,
        })
    }
}

impl SchemaChange {
    pub fn encode(&self, e: &mut Encoder) {
        match self {
            SchemaChange::CreateSignal(s) => {
                e.u8(1);
                s.encode(e);
            }
            SchemaChange::DropSignal { name, id } => {
                e.u8(2);
                e.str(name);
                e.u32(id.0);
            }
            SchemaChange::CreateTable(t) => {
                e.u8(3);
                t.encode(e);
            }
            SchemaChange::DropTable { kind } => {
                e.u8(4);
                e.u8(kind.tag());
            }
            SchemaChange::CreateProfile { def, replace } => {
                e.u8(5);
                def.encode(e);
                e.u8(u8::from(*replace));
            }
            SchemaChange::DropProfile { name } => {
                e.u8(6);
                e.str(name);
            }
            SchemaChange::CreateIndex(def) => {
                e.u8(7);
                def.encode(e);
            }
            SchemaChange::DropIndex { name } => {
                e.u8(8);
                e.str(name);
            }
            SchemaChange::CreateRelationship(def) => {
                e.u8(9);
                def.encode(e);
            }
            SchemaChange::DropRelationship { name, id } => {
                e.u8(10);
                e.str(name);
                e.u64(*id);
            }
            SchemaChange::AlterSignalCohorts { name, id, add } => {
                e.u8(11);
                e.str(name);
                e.u32(id.0);
                CohortDim::encode_list(add, e);
            }
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<SchemaChange, CoreError> {
        Ok(match d.u8()? {
            1 => SchemaChange::CreateSignal(SignalDef::decode(d)?),
            2 => SchemaChange::DropSignal {
                name: d.str()?.to_string(),
                id: SignalId(d.u32()?),
            },
            3 => SchemaChange::CreateTable(TableDef::decode(d)?),
            4 => SchemaChange::DropTable {
                kind: EntityKind::from_tag(d.u8()?).ok_or(CoreError::Decode("bad kind"))?,
            },
            5 => SchemaChange::CreateProfile {
                def: ProfileDef::decode(d)?,
                replace: d.u8()? != 0,
            },
            6 => SchemaChange::DropProfile {
                name: d.str()?.to_string(),
            },
            7 => SchemaChange::CreateIndex(VectorIndexDef::decode(d)?),
            8 => SchemaChange::DropIndex {
                name: d.str()?.to_string(),
            },
            9 => SchemaChange::CreateRelationship(RelationshipDef::decode(d)?),
            10 => SchemaChange::DropRelationship {
                name: d.str()?.to_string(),
                id: d.u64()?,
            },
            11 => {
                let name = d.str()?.to_string();
                let id = SignalId(d.u32()?);
                let add = CohortDim::decode_list(d)?;
                SchemaChange::AlterSignalCohorts { name, id, add }
            }
            _ => return Err(CoreError::Decode("unknown schema change")),
        })
    }
}

/// The whole schema: signals by name and one table per entity kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    signals: BTreeMap<String, SignalDef>,
    tables: BTreeMap<EntityKind, TableDef>,
    profiles: BTreeMap<String, ProfileDef>,
    /// Vector indexes by name.
    indexes: BTreeMap<String, VectorIndexDef>,
    relationships: BTreeMap<String, RelationshipDef>,
    next_signal_id: u32,
    /// Bumped by every applied change, so caches can tell a schema has moved on.
    pub version: u64,
}

impl Schema {
    pub fn new() -> Schema {
        Schema {
            next_signal_id: 1,
            ..Schema::default()
        }
    }

    pub fn signal(&self, name: &str) -> Result<&SignalDef, CoreError> {
        self.signals
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| CoreError::UnknownSignal {
                name: name.to_string(),
            })
    }

    pub fn signal_by_id(&self, id: SignalId) -> Option<&SignalDef> {
        self.signals.values().find(|s| s.id == id)
    }

    pub fn signals(&self) -> impl Iterator<Item = &SignalDef> {
        self.signals.values()
    }

    pub fn table(&self, kind: EntityKind) -> Result<&TableDef, CoreError> {
        self.tables
            .get(&kind)
            .ok_or(CoreError::UnknownTable { kind })
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableDef> {
        self.tables.values()
    }

    pub fn profile(&self, name: &str) -> Result<&ProfileDef, CoreError> {
        self.profiles
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| CoreError::UnknownProfile {
                name: name.to_string(),
            })
    }

    /// Profiles in name order.
    pub fn profiles(&self) -> impl Iterator<Item = &ProfileDef> {
        self.profiles.values()
    }

    pub fn index(&self, name: &str) -> Result<&VectorIndexDef, CoreError> {
        self.indexes
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| CoreError::UnknownIndex {
                name: name.to_string(),
            })
    }

    pub fn relationship(&self, name: &str) -> Result<&RelationshipDef, CoreError> {
        self.relationships
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| CoreError::UnknownRelationship {
                name: name.to_string(),
            })
    }

    pub fn relationship_by_id(&self, id: u64) -> Option<&RelationshipDef> {
        self.relationships.values().find(|r| r.id == id)
    }

    /// Relationships in name order.
    pub fn relationships(&self) -> impl Iterator<Item = &RelationshipDef> {
        self.relationships.values()
    }

    /// Vector indexes in name order.
    pub fn indexes(&self) -> impl Iterator<Item = &VectorIndexDef> {
        self.indexes.values()
    }

    /// Profiles that would break if `signal` (lower-case) went away.
    fn profiles_reading(&self, signal: &str) -> Vec<&str> {
        self.profiles
            .values()
            .filter(|p| p.signals.iter().any(|s| s == signal))
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Checks a change against this schema without applying it. For CREATE SIGNAL the
    /// returned change carries the id the signal will get.
    /// A signal's cohort dimensions must be users columns of a type with a text form
    /// (TEXT, BIGINT, INT, BOOLEAN).
    fn check_cohort_columns(&self, s: &SignalDef) -> Result<(), CoreError> {
        if s.cohorts.is_empty() {
            return Ok(());
        }
        let bad = |reason: String| CoreError::BadCohorts {
            signal: s.name.clone(),
            reason,
        };
        let users = self.table(EntityKind::User).map_err(|_| {
            bad("cohort dimensions are columns of the users table, which does not exist".into())
        })?;
        for c in s.cohort_columns() {
            let col = users
                .columns
                .iter()
                .find(|col| col.name.eq_ignore_ascii_case(c))
                .ok_or_else(|| CoreError::UnknownColumn {
                    table: "users".into(),
                    column: c.to_string(),
                })?;
            if !matches!(
                col.ty,
                ColumnType::Text | ColumnType::BigInt | ColumnType::Int | ColumnType::Boolean
            ) {
                return Err(bad(format!(
                    "users column {c:?} is {}: a cohort dimension is TEXT, BIGINT, INT or BOOLEAN",
                    col.ty
                )));
            }
        }
        Ok(())
    }

    pub fn prepare(&self, change: SchemaChange) -> Result<SchemaChange, CoreError> {
        match change {
            SchemaChange::CreateSignal(mut s) => {
                validate_identifier(&s.name)?;
                s.name = s.name.to_ascii_lowercase();
                if self.signals.contains_key(&s.name) {
                    return Err(CoreError::DuplicateSignal { name: s.name });
                }
                if self.signals.len() >= SIGNALS_MAX {
                    return Err(CoreError::BadIdentifier {
                        name: s.name,
                        reason: "the database already has the maximum of 4096 signals",
                    });
                }
                self.check_cohort_columns(&s)?;
                s.id = SignalId(self.next_signal_id);
                Ok(SchemaChange::CreateSignal(s))
            }
            SchemaChange::DropSignal { name, .. } => {
                let s = self.signal(&name)?;
                let users = self.profiles_reading(&s.name);
                if !users.is_empty() {
                    return Err(CoreError::DependentObjects {
                        object: format!("signal {:?}", s.name),
                        dependents: format!("profile {}", users.join(", ")),
                    });
                }
                Ok(SchemaChange::DropSignal {
                    name: s.name.clone(),
                    id: s.id,
                })
            }
            SchemaChange::CreateTable(mut t) => {
                if self.tables.contains_key(&t.kind) {
                    return Err(CoreError::DuplicateTable { kind: t.kind });
                }
                // The version this change will give the schema: unique, since schema
                // changes are serialized and versions only grow.
                t.generation = self.version + 1;
                Ok(SchemaChange::CreateTable(t))
            }
            SchemaChange::DropTable { kind } => {
                self.table(kind)?;
                if kind == EntityKind::User {
                    let users: Vec<&str> = self
                        .signals
                        .values()
                        .filter(|s| !s.cohorts.is_empty())
                        .map(|s| s.name.as_str())
                        .collect();
                    if !users.is_empty() {
                        return Err(CoreError::DependentObjects {
                            object: "table users".into(),
                            dependents: format!("the COHORTS of signal {}", users.join(", ")),
                        });
                    }
                }
                let users: Vec<&str> = self
                    .profiles
                    .values()
                    .filter(|p| p.kind == kind)
                    .map(|p| p.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(CoreError::DependentObjects {
                        object: format!("table {}", kind.table_name()),
                        dependents: format!("profile {}", users.join(", ")),
                    });
                }
                Ok(SchemaChange::DropTable { kind })
            }
            SchemaChange::CreateProfile { mut def, replace } => {
                def.name = def.name.to_ascii_lowercase();
                def.validate()?;
                self.table(def.kind)?;
                for s in &def.signals {
                    let sig = self.signal(s)?;
                    if sig.kind != def.kind {
                        return Err(CoreError::WrongKind {
                            signal: sig.name.clone(),
                            expected: sig.kind,
                            got: def.kind,
                        });
                    }
                }
                def.version = match self.profiles.get(&def.name) {
                    Some(old) if replace => old.version.saturating_add(1),
                    Some(_) => return Err(CoreError::DuplicateProfile { name: def.name }),
                    None => 1,
                };
                if !self.profiles.contains_key(&def.name) && self.profiles.len() >= PROFILES_MAX {
                    return Err(CoreError::BadProfile {
                        name: def.name,
                        reason: format!(
                            "the database already has the maximum of {PROFILES_MAX} profiles"
                        ),
                    });
                }
                Ok(SchemaChange::CreateProfile { def, replace })
            }
            SchemaChange::DropProfile { name } => {
                let p = self.profile(&name)?;
                Ok(SchemaChange::DropProfile {
                    name: p.name.clone(),
                })
            }
            SchemaChange::CreateIndex(mut def) => {
                def.name = def.name.to_ascii_lowercase();
                def.column = def.column.to_ascii_lowercase();
                def.validate()?;
                if self.indexes.contains_key(&def.name) {
                    return Err(CoreError::DuplicateIndex { name: def.name });
                }
                if self.indexes.len() >= VECTOR_INDEXES_MAX {
                    return Err(CoreError::BadIndex {
                        name: def.name,
                        reason: format!(
                            "the database already has the maximum of {VECTOR_INDEXES_MAX} indexes"
                        ),
                    });
                }
                let table = self.table(def.kind)?;
                let col = table
                    .columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(&def.column))
                    .ok_or_else(|| CoreError::UnknownColumn {
                        table: def.kind.table_name().to_string(),
                        column: def.column.clone(),
                    })?;
                if !matches!(col.ty, ColumnType::Vector(_)) {
                    return Err(CoreError::BadIndex {
                        name: def.name,
                        reason: format!(
                            "column {:?} is {}: hnsw indexes a vector column",
                            col.name, col.ty
                        ),
                    });
                }
                def.id = self.version + 1;
                Ok(SchemaChange::CreateIndex(def))
            }
            SchemaChange::DropIndex { name } => {
                let i = self.index(&name)?;
                Ok(SchemaChange::DropIndex {
                    name: i.name.clone(),
                })
            }
            SchemaChange::CreateRelationship(mut def) => {
                def.name = def.name.to_ascii_lowercase();
                def.validate()?;
                if self.relationships.contains_key(&def.name) {
                    return Err(CoreError::DuplicateRelationship { name: def.name });
                }
                if self.relationships.len() >= RELATIONSHIPS_MAX {
                    return Err(CoreError::BadRelationship {
                        name: def.name,
                        reason: format!(
                            "the database already has the maximum of {RELATIONSHIPS_MAX} relationships"
                        ),
                    });
                }
                def.id = self.version + 1;
                Ok(SchemaChange::CreateRelationship(def))
            }
            SchemaChange::DropRelationship { name, .. } => {
                let r = self.relationship(&name)?;
                Ok(SchemaChange::DropRelationship {
                    name: r.name.clone(),
                    id: r.id,
                })
            }
            SchemaChange::AlterSignalCohorts { name, add, .. } => {
                let s = self.signal(&name)?;
                let mut all = s.cohorts.clone();
                all.extend(add.iter().cloned());
                let merged = s.clone().with_cohorts(all)?;
                self.check_cohort_columns(&merged)?;
                Ok(SchemaChange::AlterSignalCohorts {
                    name: s.name.clone(),
                    id: s.id,
                    add,
                })
            }
        }
    }

    /// Applies a change produced by [`Schema::prepare`] (or read back from the WAL).
    pub fn apply(&mut self, change: &SchemaChange) -> Result<(), CoreError> {
        match change {
            SchemaChange::CreateSignal(s) => {
                if self.signals.contains_key(&s.name) {
                    return Err(CoreError::DuplicateSignal {
                        name: s.name.clone(),
                    });
                }
                self.next_signal_id = self.next_signal_id.max(s.id.0 + 1);
                self.signals.insert(s.name.clone(), s.clone());
            }
            SchemaChange::DropSignal { name, .. } => {
                self.signals
                    .remove(name)
                    .ok_or_else(|| CoreError::UnknownSignal { name: name.clone() })?;
            }
            SchemaChange::CreateTable(t) => {
                if self.tables.contains_key(&t.kind) {
                    return Err(CoreError::DuplicateTable { kind: t.kind });
                }
                self.tables.insert(t.kind, t.clone());
            }
            SchemaChange::DropTable { kind } => {
                self.tables
                    .remove(kind)
                    .ok_or(CoreError::UnknownTable { kind: *kind })?;
                // As in PostgreSQL, a table's indexes go with it.
                self.indexes.retain(|_, i| i.kind != *kind);
            }
            SchemaChange::CreateIndex(def) => {
                if self.indexes.contains_key(&def.name) {
                    return Err(CoreError::DuplicateIndex {
                        name: def.name.clone(),
                    });
                }
                self.indexes.insert(def.name.clone(), def.clone());
            }
            SchemaChange::DropIndex { name } => {
                self.indexes
                    .remove(name)
                    .ok_or_else(|| CoreError::UnknownIndex { name: name.clone() })?;
            }
            SchemaChange::CreateRelationship(def) => {
                if self.relationships.contains_key(&def.name) {
                    return Err(CoreError::DuplicateRelationship {
                        name: def.name.clone(),
                    });
                }
                self.relationships.insert(def.name.clone(), def.clone());
            }
            SchemaChange::DropRelationship { name, .. } => {
                self.relationships
                    .remove(name)
                    .ok_or_else(|| CoreError::UnknownRelationship { name: name.clone() })?;
            }
            SchemaChange::AlterSignalCohorts { name, add, .. } => {
                let s = self
                    .signals
                    .get_mut(name)
                    .ok_or_else(|| CoreError::UnknownSignal { name: name.clone() })?;
                s.cohorts.extend(add.iter().cloned());
            }
            SchemaChange::CreateProfile { def, .. } => {
                self.profiles.insert(def.name.clone(), def.clone());
            }
            SchemaChange::DropProfile { name } => {
                self.profiles
                    .remove(name)
                    .ok_or_else(|| CoreError::UnknownProfile { name: name.clone() })?;
            }
        }
        self.version += 1;
        Ok(())
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u64(self.version);
        e.u32(self.next_signal_id);
        e.u32(self.signals.len() as u32);
        for s in self.signals.values() {
            s.encode(e);
        }
        e.u32(self.tables.len() as u32);
        for t in self.tables.values() {
            t.encode(e);
        }
        e.u32(self.profiles.len() as u32);
        for p in self.profiles.values() {
            p.encode(e);
        }
        e.u32(self.indexes.len() as u32);
        for i in self.indexes.values() {
            i.encode(e);
        }
        e.u32(self.relationships.len() as u32);
        for r in self.relationships.values() {
            r.encode(e);
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<Schema, CoreError> {
        let version = d.u64()?;
        let next_signal_id = d.u32()?;
        let mut schema = Schema {
            version,
            next_signal_id,
            ..Schema::default()
        };
        let n = d.u32()? as usize;
        if n > SIGNALS_MAX {
            return Err(CoreError::Decode("too many signals"));
        }
        for _ in 0..n {
            let s = SignalDef::decode(d)?;
            schema.signals.insert(s.name.clone(), s);
        }
        let n = d.u32()?;
        if n > 3 {
            return Err(CoreError::Decode("too many tables"));
        }
        for _ in 0..n {
            let t = TableDef::decode(d)?;
            schema.tables.insert(t.kind, t);
        }
        // Data directories written before profiles existed end here.
        let n = if d.is_empty() { 0 } else { d.u32()? as usize };
        if n > PROFILES_MAX {
            return Err(CoreError::Decode("too many profiles"));
        }
        for _ in 0..n {
            let p = ProfileDef::decode(d)?;
            schema.profiles.insert(p.name.clone(), p);
        }
        // Data directories written before vector indexes existed end here.
        let n = if d.is_empty() { 0 } else { d.u32()? as usize };
        if n > VECTOR_INDEXES_MAX {
            return Err(CoreError::Decode("too many indexes"));
        }
        for _ in 0..n {
            let i = VectorIndexDef::decode(d)?;
            schema.indexes.insert(i.name.clone(), i);
        }
        // Data directories written before relationships existed end here.
        let n = if d.is_empty() { 0 } else { d.u32()? as usize };
        if n > RELATIONSHIPS_MAX {
            return Err(CoreError::Decode("too many relationships"));
        }
        for _ in 0..n {
            let r = RelationshipDef::decode(d)?;
            schema.relationships.insert(r.name.clone(), r);
        }
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str) -> SignalDef {
        SignalDef::new(
            name,
            EntityKind::Item,
            DecaySpec::exponential("7 days").unwrap(),
            ["24h", "1h", "1h", "all"]
                .iter()
                .map(|w| Window::parse(w).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn windows_sorted_and_deduplicated() {
        let s = sig("view");
        assert_eq!(
            s.windows,
            vec![Window::Minutes(60), Window::Minutes(1440), Window::All]
        );
        assert!(s.require_window(Window::Minutes(60)).is_ok());
        let err = s.require_window(Window::Minutes(15)).unwrap_err();
        assert!(err.to_string().contains("no window 15m"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let mut schema = Schema::new();
        let c = schema
            .prepare(SchemaChange::CreateSignal(sig("like")))
            .unwrap();
        schema.apply(&c).unwrap();
        let e = schema
            .prepare(SchemaChange::CreateSignal(sig("LIKE")))
            .unwrap_err();
        assert_eq!(
            e,
            CoreError::DuplicateSignal {
                name: "like".into()
            }
        );
        let e = SignalDef::new("1bad", EntityKind::Item, DecaySpec::None, []).unwrap_err();
        assert!(matches!(e, CoreError::BadIdentifier { .. }));
        let e = SignalDef::new("has space", EntityKind::Item, DecaySpec::None, []).unwrap_err();
        assert!(e.to_string().contains("has space"));
        assert!(matches!(
            schema.prepare(SchemaChange::DropSignal {
                name: "nope".into(),
                id: SignalId(0)
            }),
            Err(CoreError::UnknownSignal { .. })
        ));
    }

    #[test]
    fn signal_ids_are_never_reused() {
        let mut schema = Schema::new();
        let a = schema
            .prepare(SchemaChange::CreateSignal(sig("a")))
            .unwrap();
        schema.apply(&a).unwrap();
        schema
            .apply(&SchemaChange::DropSignal {
                name: "a".into(),
                id: SignalId(1),
            })
            .unwrap();
        let b = schema
            .prepare(SchemaChange::CreateSignal(sig("a")))
            .unwrap();
        schema.apply(&b).unwrap();
        assert_ne!(schema.signal("a").unwrap().id, SignalId(1));
    }

    #[test]
    fn table_validation() {
        let cols =
            |v: &[(&str, ColumnType)]| v.iter().map(|(n, t)| ColumnDef::new(n, *t)).collect();
        let t = TableDef::new(
            EntityKind::Item,
            cols(&[("title", ColumnType::Text), ("id", ColumnType::BigInt)]),
            vec!["title".into()],
        )
        .unwrap();
        assert_eq!(t.columns[0].name, "id");
        assert!(
            TableDef::new(
                EntityKind::Item,
                cols(&[("title", ColumnType::Text)]),
                vec![]
            )
            .is_err()
        );
        assert!(matches!(
            TableDef::new(
                EntityKind::User,
                cols(&[("id", ColumnType::BigInt), ("ID", ColumnType::Text)]),
                vec![]
            ),
            Err(CoreError::DuplicateColumn { .. })
        ));
        assert!(
            TableDef::new(
                EntityKind::Item,
                cols(&[("id", ColumnType::BigInt), ("created_at", ColumnType::Text)]),
                vec![]
            )
            .is_err()
        );
        assert!(
            TableDef::new(
                EntityKind::Item,
                cols(&[("id", ColumnType::BigInt), ("e", ColumnType::Vector(0))]),
                vec![]
            )
            .is_err()
        );
    }

    #[test]
    fn schema_round_trip() {
        let mut schema = Schema::new();
        for n in ["view", "like"] {
            let c = schema.prepare(SchemaChange::CreateSignal(sig(n))).unwrap();
            schema.apply(&c).unwrap();
        }
        let t = TableDef::new(
            EntityKind::User,
            vec![
                ColumnDef::new("id", ColumnType::BigInt),
                ColumnDef::new("v", ColumnType::Vector(4)),
            ],
            vec![],
        )
        .unwrap();
        schema.apply(&SchemaChange::CreateTable(t)).unwrap();
        let mut e = Encoder::new();
        schema.encode(&mut e);
        let buf = e.into_inner();
        let mut d = Decoder::new(&buf);
        assert_eq!(Schema::decode(&mut d).unwrap(), schema);
        d.finish().unwrap();
    }
}
