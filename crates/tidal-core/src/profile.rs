//! Ranking profiles (`CREATE PROFILE name ON items (SCORE ..., GATE ..., ...)`): named,
//! versioned scoring definitions stored in the schema.
//!
//! The core keeps a profile as text — its clauses are SQL expressions that only the SQL
//! layer can type-check — plus the names of the signals it reads, so that the schema can
//! refuse to drop a signal (or a table) a profile depends on.

use crate::codec::{Decoder, Encoder};
use crate::{CoreError, EntityKind};

/// Most profiles a database may hold.
pub const PROFILES_MAX: usize = 1_024;
/// Longest text of one profile clause (an expression or predicate), in bytes.
pub const PROFILE_CLAUSE_BYTES_MAX: usize = 16 * 1024;
/// Largest `DIVERSITY max_per_creator n`.
pub const PROFILE_MAX_PER_CREATOR_MAX: u32 = 1_000_000;

/// A ranking profile. `score`, `gate` and `filter` are SQL expression texts in which the
/// signal functions take the entity implicitly (`decay('like')`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileDef {
    /// Lower-case name.
    pub name: String,
    pub kind: EntityKind,
    /// 1 when created; `CREATE OR REPLACE` bumps it.
    pub version: u32,
    pub score: String,
    pub gate: Option<String>,
    pub filter: Option<String>,
    /// `RECENCY HALF_LIFE '2 days'`: the text as written and its length in microseconds.
    pub recency: Option<(String, i64)>,
    /// `DIVERSITY max_per_creator n`.
    pub max_per_creator: Option<u32>,
    /// `EXPLORE fraction`: the default share of cold items (SQL.md §10), in (0, 1].
    pub explore: Option<f64>,
    /// Lower-case names of the signals the clauses read (dependencies).
    pub signals: Vec<String>,
}

impl ProfileDef {
    /// The definition as SQL, for `SHOW PROFILES`.
    pub fn definition(&self) -> String {
        let mut parts = vec![format!("SCORE {}", self.score)];
        if let Some(g) = &self.gate {
            parts.push(format!("GATE {g}"));
        }
        if let Some(f) = &self.filter {
            parts.push(format!("FILTER {f}"));
        }
        if let Some((text, _)) = &self.recency {
            parts.push(format!("RECENCY HALF_LIFE '{}'", text.replace('\'', "''")));
        }
        if let Some(n) = self.max_per_creator {
            parts.push(format!("DIVERSITY max_per_creator {n}"));
        }
        if let Some(f) = self.explore {
            parts.push(format!("EXPLORE {f}"));
        }
        format!("ON {} ({})", self.kind.table_name(), parts.join(", "))
    }

    /// Checks the size limits of the clauses.
    pub fn validate(&self) -> Result<(), CoreError> {
        crate::schema::validate_identifier(&self.name)?;
        let clauses = [Some(&self.score), self.gate.as_ref(), self.filter.as_ref()];
        for c in clauses.into_iter().flatten() {
            if c.len() > PROFILE_CLAUSE_BYTES_MAX {
                return Err(CoreError::BadProfile {
                    name: self.name.clone(),
                    reason: format!(
                        "a clause is {} bytes; at most {PROFILE_CLAUSE_BYTES_MAX} are allowed",
                        c.len()
                    ),
                });
            }
        }
        if let Some(f) = self.explore
            && !(f.is_finite() && f > 0.0 && f <= 1.0)
        {
            return Err(CoreError::BadProfile {
                name: self.name.clone(),
                reason: format!("EXPLORE takes a fraction in (0, 1], not {f}"),
            });
        }
        if let Some(n) = self.max_per_creator
            && !(1..=PROFILE_MAX_PER_CREATOR_MAX).contains(&n)
        {
            return Err(CoreError::BadProfile {
                name: self.name.clone(),
                reason: format!(
                    "max_per_creator must be between 1 and {PROFILE_MAX_PER_CREATOR_MAX}, not {n}"
                ),
            });
        }
        Ok(())
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.str(&self.name);
        e.u8(self.kind.tag());
        e.u32(self.version);
        e.str(&self.score);
        let opt = |e: &mut Encoder, s: &Option<String>| match s {
            Some(s) => {
                e.u8(1);
                e.str(s);
            }
            None => e.u8(0),
        };
        opt(e, &self.gate);
        opt(e, &self.filter);
        match &self.recency {
            Some((text, us)) => {
                e.u8(1);
                e.str(text);
                e.i64(*us);
            }
            None => e.u8(0),
        }
        // Bit 0 of this tag: max_per_creator follows; bit 1: an EXPLORE fraction
        // follows (definitions written before EXPLORE existed have 0 or 1).
        let tag =
            u8::from(self.max_per_creator.is_some()) | (u8::from(self.explore.is_some()) << 1);
        e.u8(tag);
        if let Some(n) = self.max_per_creator {
            e.u32(n);
        }
        if let Some(f) = self.explore {
            e.f64(f);
        }
        e.u32(self.signals.len() as u32);
        for s in &self.signals {
            e.str(s);
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<ProfileDef, CoreError> {
        let name = d.str()?.to_string();
        let kind = EntityKind::from_tag(d.u8()?).ok_or(CoreError::Decode("bad entity kind"))?;
        let version = d.u32()?;
        let score = d.str()?.to_string();
        let opt = |d: &mut Decoder<'_>| -> Result<Option<String>, CoreError> {
            Ok(match d.u8()? {
                0 => None,
                1 => Some(d.str()?.to_string()),
                _ => return Err(CoreError::Decode("bad option tag")),
            })
        };
        let gate = opt(d)?;
        let filter = opt(d)?;
        let recency = match d.u8()? {
            0 => None,
            1 => Some((d.str()?.to_string(), d.i64()?)),
            _ => return Err(CoreError::Decode("bad option tag")),
        };
        let tag = d.u8()?;
        if tag > 3 {
            return Err(CoreError::Decode("bad option tag"));
        }
        let max_per_creator = if tag & 1 != 0 { Some(d.u32()?) } else { None };
        let explore = if tag & 2 != 0 {
            let f = d.f64()?;
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                return Err(CoreError::Decode("bad EXPLORE fraction"));
            }
            Some(f)
        } else {
            None
        };
        let n = d.u32()? as usize;
        if n > crate::schema::SIGNALS_MAX {
            return Err(CoreError::Decode("too many profile signals"));
        }
        let mut signals = Vec::with_capacity(n);
        for _ in 0..n {
            signals.push(d.str()?.to_string());
        }
        Ok(ProfileDef {
            name,
            kind,
            version,
            score,
            gate,
            filter,
            recency,
            max_per_creator,
            explore,
            signals,
        })
    }
}
