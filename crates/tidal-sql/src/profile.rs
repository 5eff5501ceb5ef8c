//! Ranking profiles and `RETRIEVE` (SQL.md §5): parsing, binding of profile expressions
//! and their type checks.
//!
//! ```text
//! CREATE [OR REPLACE] PROFILE name ON items (
//!     SCORE expr [, GATE pred] [, FILTER pred] [, RECENCY HALF_LIFE 'interval']
//!     [, DIVERSITY max_per_creator n])
//! DROP PROFILE [IF EXISTS] name
//! SHOW PROFILES
//! RETRIEVE items [FOR USER id] USING PROFILE name [WHERE pred]
//!     [FILTER unseen | seen | liked | not liked | hidden | not hidden [, ...]]
//!     [DIVERSITY max_per_creator n] [LIMIT n] [AT 'timestamp']
//! ```
//!
//! Inside a profile the signal functions take the entity implicitly: `decay('like')`
//! is bound to `decay('like', id)`. Binding checks every signal and window by name, so a
//! typo is reported at `CREATE PROFILE`, not when the profile is first used.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Value,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use tidal_core::time::parse_interval_micros;
use tidal_core::{
    ColumnType, CoreError, EntityKind, Mark, PROFILES_MAX, ProfileDef, Schema, Timestamp, Window,
};

use crate::SqlError;
use crate::statement::{end, expect_word, found, ident, is_word, peek_words, string, syntax};
use crate::udf::SignalFn;

/// Rows a RETRIEVE returns when it has no LIMIT.
pub const RETRIEVE_LIMIT_DEFAULT: usize = 100;
/// Largest LIMIT of a RETRIEVE (its result is ranked and fetched row by row).
pub const RETRIEVE_LIMIT_MAX: usize = 100_000;

/// One `FILTER` term of a RETRIEVE: keep items the user has (`want`) or has not marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkFilter {
    pub mark: Mark,
    pub want: bool,
}

impl MarkFilter {
    pub fn text(&self) -> String {
        match (self.mark, self.want) {
            (Mark::Seen, false) => "unseen".to_string(),
            (m, true) => m.as_str().to_string(),
            (m, false) => format!("not {}", m.as_str()),
        }
    }
}

/// One `FILTER` term: a mark of the user's, or a relationship of theirs (SQL.md §5, §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterTerm {
    Mark(MarkFilter),
    /// `FILTER name` (`want`) / `FILTER not name`: items whose creator (or, for a
    /// relationship TO items, whose id) is a target of the user's edges.
    Relationship {
        name: String,
        want: bool,
    },
}

impl FilterTerm {
    pub fn text(&self) -> String {
        match self {
            FilterTerm::Mark(m) => m.text(),
            FilterTerm::Relationship { name, want: true } => name.clone(),
            FilterTerm::Relationship { name, want: false } => format!("not {name}"),
        }
    }

    pub fn is_relationship(&self) -> bool {
        matches!(self, FilterTerm::Relationship { .. })
    }
}

/// A parsed `RETRIEVE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieve {
    pub kind: EntityKind,
    pub user: Option<i64>,
    pub profile: String,
    /// The WHERE predicate as SQL text.
    pub predicate: Option<String>,
    pub filters: Vec<FilterTerm>,
    /// Overrides the profile's DIVERSITY.
    pub max_per_creator: Option<u32>,
    /// `EXPLORE fraction` (overrides the profile's).
    pub explore: Option<f64>,
    /// `WITHIN COHORT …`: the profile's signal functions read this cohort.
    pub cohort: Option<crate::cohort::CohortScope>,
    pub limit: usize,
    pub at: Option<Timestamp>,
}

fn u32_token(p: &mut Parser<'_>, what: &str) -> Result<u64, SqlError> {
    match p.peek_token_ref().token.clone() {
        Token::Number(n, _) => {
            p.next_token();
            n.parse::<u64>()
                .map_err(|_| syntax(format!("{what} must be a whole number, not {n}")))
        }
        _ => Err(syntax(format!("expected {what}, found {}", found(p)))),
    }
}

fn max_per_creator(p: &mut Parser<'_>) -> Result<u32, SqlError> {
    let w = ident(p, "max_per_creator")?;
    if w != "max_per_creator" {
        return Err(syntax(format!(
            "expected DIVERSITY max_per_creator n, found {w}"
        )));
    }
    let n = u32_token(p, "the number of items per creator")?;
    u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
        SqlError::from(CoreError::BadProfile {
            name: "DIVERSITY".into(),
            reason: format!("max_per_creator must be at least 1 and fit 32 bits, not {n}"),
        })
    })
}

fn expr_text(p: &mut Parser<'_>, what: &str) -> Result<SqlExpr, SqlError> {
    p.parse_expr()
        .map_err(|e| syntax(format!("in {what}: {e}")))
}

/// `CREATE [OR REPLACE] PROFILE` after the two (or four) leading words. The returned
/// definition has no signals or version yet: [`bind_profile`] fills them in.
pub(crate) fn parse_create_profile(
    p: &mut Parser<'_>,
    replace: bool,
) -> Result<(ProfileDef, bool), SqlError> {
    let name = ident(p, "a profile name")?;
    tidal_core::schema::validate_identifier(&name)?;
    expect_word(p, "ON")?;
    let table = ident(p, "items, users or creators")?;
    let kind = EntityKind::ALL
        .into_iter()
        .find(|k| k.table_name() == table)
        .ok_or_else(|| CoreError::UnknownTableName {
            name: table.clone(),
        })?;
    p.expect_token(&Token::LParen)
        .map_err(|e| syntax(e.to_string()))?;
    let mut def = ProfileDef {
        name,
        kind,
        version: 0,
        score: String::new(),
        gate: None,
        filter: None,
        recency: None,
        max_per_creator: None,
        explore: None,
        signals: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    loop {
        let clause = ident(p, "SCORE, GATE, FILTER, RECENCY, DIVERSITY or EXPLORE")?;
        if !seen.insert(clause.clone()) {
            return Err(syntax(format!("{} is given twice", clause.to_uppercase())));
        }
        match clause.as_str() {
            "score" => def.score = expr_text(p, "SCORE")?.to_string(),
            "gate" => def.gate = Some(expr_text(p, "GATE")?.to_string()),
            "filter" => def.filter = Some(expr_text(p, "FILTER")?.to_string()),
            "recency" => {
                expect_word(p, "HALF_LIFE")?;
                let text = string(p, "the recency half-life")?;
                let us = parse_interval_micros(&text)?;
                if us <= 0 {
                    return Err(CoreError::HalfLifeOutOfRange { text }.into());
                }
                def.recency = Some((text, us));
            }
            "diversity" => def.max_per_creator = Some(max_per_creator(p)?),
            "explore" => def.explore = Some(explore_clause(p, "CREATE PROFILE")?),
            other => {
                return Err(syntax(format!(
                    "expected SCORE, GATE, FILTER, RECENCY, DIVERSITY or EXPLORE, found {other}"
                )));
            }
        }
        match p.next_token().token {
            Token::Comma => continue,
            Token::RParen => break,
            t => {
                return Err(syntax(format!(
                    "expected , or ) after a profile clause, found \"{t}\""
                )));
            }
        }
    }
    if def.score.is_empty() {
        return Err(syntax("a profile needs a SCORE clause"));
    }
    end(p)?;
    Ok((def, replace))
}

/// The entity table a RETRIEVE/SEARCH names.
pub(crate) fn entity_table(p: &mut Parser<'_>) -> Result<EntityKind, SqlError> {
    let table = ident(p, "items, users or creators")?;
    Ok(EntityKind::ALL
        .into_iter()
        .find(|k| k.table_name() == table)
        .ok_or_else(|| CoreError::UnknownTableName {
            name: table.clone(),
        })?)
}

/// The user id after `FOR USER`.
pub(crate) fn user_id(p: &mut Parser<'_>) -> Result<i64, SqlError> {
    let negative = p.peek_token_ref().token == Token::Minus;
    if negative {
        p.next_token();
    }
    let n = match p.peek_token_ref().token.clone() {
        Token::Number(n, _) => {
            p.next_token();
            n.parse::<i64>()
                .map_err(|_| syntax(format!("FOR USER needs a BIGINT user id, not {n}")))?
        }
        _ => return Err(syntax(format!("expected a user id, found {}", found(p)))),
    };
    Ok(if negative { -n } else { n })
}

/// The terms after `FILTER`: marks (`unseen`, `seen`, `liked`, `not liked`, …) and
/// relationships (`follows`, `not blocks`), separated by commas or AND. A word that is
/// not a mark names a relationship (checked when the statement is planned).
pub(crate) fn filter_terms(p: &mut Parser<'_>) -> Result<Vec<FilterTerm>, SqlError> {
    let mut filters = Vec::new();
    loop {
        let not = is_word(&p.peek_token_ref().token, "NOT");
        if not {
            p.next_token();
        }
        let word = ident(p, "unseen, seen, liked, hidden or a relationship name")?;
        let f = match (word.as_str(), not) {
            ("unseen", false) => FilterTerm::Mark(MarkFilter {
                mark: Mark::Seen,
                want: false,
            }),
            ("unliked", false) => FilterTerm::Mark(MarkFilter {
                mark: Mark::Liked,
                want: false,
            }),
            ("unseen" | "unliked", true) => {
                return Err(syntax(format!(
                    "FILTER not {word} is a double negative: write FILTER {}",
                    word.trim_start_matches("un")
                )));
            }
            (w, not) => match w.parse::<Mark>() {
                Ok(mark) => FilterTerm::Mark(MarkFilter { mark, want: !not }),
                Err(_) => FilterTerm::Relationship {
                    name: w.to_string(),
                    want: !not,
                },
            },
        };
        filters.push(f);
        if p.peek_token_ref().token == Token::Comma || is_word(&p.peek_token_ref().token, "AND") {
            p.next_token();
            continue;
        }
        return Ok(filters);
    }
}

/// FILTER reads the user's marks and edges: it needs FOR USER.
pub(crate) fn require_user_for_filter(
    filters: &[FilterTerm],
    user: Option<i64>,
) -> Result<(), SqlError> {
    match filters.first() {
        Some(f) if user.is_none() => Err(syntax(format!(
            "FILTER {} needs FOR USER id (marks and relationships are per user)",
            f.text()
        ))),
        _ => Ok(()),
    }
}

/// The number after `LIMIT`, at most [`RETRIEVE_LIMIT_MAX`].
pub(crate) fn limit(p: &mut Parser<'_>, what: &'static str) -> Result<usize, SqlError> {
    let n = u32_token(p, "the LIMIT")?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= RETRIEVE_LIMIT_MAX)
        .ok_or_else(|| SqlError::BadArgument {
            function: what,
            reason: format!("LIMIT {n} is above the maximum of {RETRIEVE_LIMIT_MAX}"),
        })
}

/// The next clause word if it is one of `words` (unquoted, upper-cased), consumed;
/// a clause given twice is an error.
pub(crate) fn next_clause(
    p: &mut Parser<'_>,
    words: &[&str],
    seen: &mut BTreeSet<String>,
) -> Result<Option<String>, SqlError> {
    let tok = p.peek_token_ref().token.clone();
    let Token::Word(w) = &tok else {
        return Ok(None);
    };
    if w.quote_style.is_some() {
        return Ok(None);
    }
    let clause = w.value.to_ascii_uppercase();
    if !words.contains(&clause.as_str()) {
        return Ok(None);
    }
    p.next_token();
    if !seen.insert(clause.clone()) {
        return Err(syntax(format!("{clause} is given twice")));
    }
    Ok(Some(clause))
}

pub(crate) fn where_clause(p: &mut Parser<'_>) -> Result<String, SqlError> {
    Ok(expr_text(p, "WHERE")?.to_string())
}

pub(crate) fn diversity(p: &mut Parser<'_>) -> Result<u32, SqlError> {
    max_per_creator(p)
}

/// The fraction after `EXPLORE`, in (0, 1].
pub(crate) fn explore_clause(p: &mut Parser<'_>, what: &'static str) -> Result<f64, SqlError> {
    let f = crate::search::number(p, "the fraction after EXPLORE")?;
    crate::explore::check_fraction(f, what)
}

pub(crate) fn at_clause(p: &mut Parser<'_>) -> Result<Timestamp, SqlError> {
    Ok(Timestamp::parse(&string(p, "the AT timestamp")?)?)
}

/// `RETRIEVE` after its first word.
pub(crate) fn parse_retrieve(p: &mut Parser<'_>) -> Result<Retrieve, SqlError> {
    let kind = entity_table(p)?;
    let mut user = None;
    if peek_words(p, &["FOR", "USER"]) {
        p.next_token();
        p.next_token();
        user = Some(user_id(p)?);
    }
    expect_word(p, "USING")?;
    expect_word(p, "PROFILE")?;
    let profile = ident(p, "a profile name")?;
    let mut r = Retrieve {
        kind,
        user,
        profile,
        predicate: None,
        filters: Vec::new(),
        max_per_creator: None,
        explore: None,
        cohort: None,
        limit: RETRIEVE_LIMIT_DEFAULT,
        at: None,
    };
    let mut seen = BTreeSet::new();
    while let Some(clause) = next_clause(
        p,
        &[
            "WHERE",
            "WITHIN",
            "FILTER",
            "DIVERSITY",
            "EXPLORE",
            "LIMIT",
            "AT",
        ],
        &mut seen,
    )? {
        match clause.as_str() {
            "WITHIN" => r.cohort = Some(within_cohort(p)?),
            "WHERE" => r.predicate = Some(where_clause(p)?),
            "FILTER" => r.filters = filter_terms(p)?,
            "DIVERSITY" => r.max_per_creator = Some(max_per_creator(p)?),
            "EXPLORE" => r.explore = Some(explore_clause(p, "RETRIEVE")?),
            "LIMIT" => r.limit = limit(p, "RETRIEVE")?,
            "AT" => r.at = Some(at_clause(p)?),
            _ => unreachable!("clause words are checked above"),
        }
    }
    end(p)?;
    require_user_for_filter(&r.filters, r.user)?;
    Ok(r)
}

/// `COHORT pred` after `WITHIN`.
pub(crate) fn within_cohort(p: &mut Parser<'_>) -> Result<crate::cohort::CohortScope, SqlError> {
    expect_word(p, "COHORT")?;
    crate::cohort::CohortScope::parse(p)
}

fn str_lit(e: &SqlExpr) -> Option<&str> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn arg_expr(a: &FunctionArg) -> Option<&SqlExpr> {
    match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        _ => None,
    }
}

fn unnamed(e: SqlExpr) -> FunctionArg {
    FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
}

/// How a profile expression is bound.
pub(crate) struct Binding<'a> {
    pub schema: &'a Schema,
    pub kind: EntityKind,
    /// The instant to read at, as an expression (`rank_profile` passes its `at`);
    /// `None` leaves it to the statement's instant.
    pub at: Option<SqlExpr>,
    /// What `similarity()` becomes: the FOR USER user's preference vector, if any.
    pub preference: Option<&'a [f32]>,
    /// Whether `affinity()` reads a FOR USER user's pairs (else it is 0).
    pub affinity: bool,
    /// `WITHIN COHORT`: signal functions read this cohort's state.
    pub cohort: Option<&'a crate::cohort::CohortScope>,
}

/// What the statement's FOR USER user brings to a profile's binding.
#[derive(Debug, Default, Clone)]
pub(crate) struct UserState {
    pub preference: Option<Vec<f32>>,
    /// The user's affinity pairs, read at planning; `None` without a user or pairs.
    pub affinity: Option<std::sync::Arc<crate::social::UserAffinity>>,
    /// The statement's `WITHIN COHORT` (not the user's, but bound the same way).
    pub cohort: Option<crate::cohort::CohortScope>,
}

impl Binding<'_> {
    /// Rewrites a profile expression in place: every signal function gets the entity
    /// `id` (and `at`, when given) and has its signal and window checked. Returns the
    /// signals read.
    pub fn bind(&self, expr: &mut SqlExpr) -> Result<BTreeSet<String>, SqlError> {
        let mut signals = BTreeSet::new();
        let mut error = None;
        let _ = visit_expressions_mut(expr, |e| {
            if let SqlExpr::Function(f) = e {
                let name = f.name.to_string().to_ascii_lowercase();
                if name == "similarity" || (name == "affinity" && no_arguments(f)) {
                    let bound = if name == "similarity" {
                        self.similarity(f)
                    } else {
                        self.affinity()
                    };
                    match bound {
                        Ok(bound) => *e = bound,
                        Err(err) => {
                            error = Some(err);
                            return ControlFlow::Break(());
                        }
                    }
                    return ControlFlow::Continue(());
                }
                let FunctionArguments::List(list) = &mut f.args else {
                    return ControlFlow::Continue(());
                };
                let r = self.bind_call(&name, &mut list.args, &mut signals);
                if let Err(err) = r {
                    error = Some(err);
                    return ControlFlow::Break(());
                }
                if let Some(scope) = self.cohort
                    && let Some(sf) = SignalFn::ALL.into_iter().find(|f| f.name() == name)
                {
                    match self.cohort_call(sf, &list.args, scope) {
                        Ok(call) => *e = call,
                        Err(err) => {
                            error = Some(err);
                            return ControlFlow::Break(());
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        });
        match error {
            Some(e) => Err(e),
            None => Ok(signals),
        }
    }

    /// A bound signal function call `(signal, id, [window], [at])` as its cohort read.
    fn cohort_call(
        &self,
        f: SignalFn,
        args: &[FunctionArg],
        scope: &crate::cohort::CohortScope,
    ) -> Result<SqlExpr, SqlError> {
        let lit = |i: usize| args.get(i).and_then(arg_expr).and_then(str_lit);
        let signal = lit(0).unwrap_or_default();
        let def = self.schema.signal(signal)?;
        let window = if f.has_window() { lit(2) } else { None };
        crate::cohort::scoped_call(f, def, window, scope, self.at.as_ref())
    }

    /// `affinity()` (SQL.md §8): the FOR USER user's affinity for the row's creator, as
    /// `user_affinity(creator_id, now())`, which the statement's plan then binds to the
    /// user's pairs read once at planning (`social::bind_user_affinity`); the constant 0
    /// without a user or pairs.
    fn affinity(&self) -> Result<SqlExpr, SqlError> {
        let table = self.schema.table(self.kind)?;
        let creator = table
            .column_index("creator_id")
            .map(|i| table.columns[i].ty);
        if !matches!(creator, Some(ColumnType::BigInt | ColumnType::Int)) {
            return Err(SqlError::BadArgument {
                function: "affinity",
                reason: format!(
                    "affinity() is the user's affinity for the row's creator, but {} has no \
                     BIGINT column creator_id",
                    self.kind.table_name()
                ),
            });
        }
        if !self.affinity {
            return parse_expr("CAST(0.0 AS DOUBLE)");
        }
        parse_expr(&format!(
            "{}(creator_id, {})",
            crate::social::USER_AFFINITY_FUNCTION,
            self.at
                .as_ref()
                .map_or_else(|| "now()".to_string(), |e| e.to_string())
        ))
    }

    /// `similarity()` (SQL.md §7): the cosine similarity of the user's preference
    /// vector and the row's embedding, as `preference_similarity(<column>, '<vector>')`;
    /// the constant 0 without a user or a vector.
    fn similarity(
        &self,
        f: &datafusion::sql::sqlparser::ast::Function,
    ) -> Result<SqlExpr, SqlError> {
        let empty = match &f.args {
            FunctionArguments::None => true,
            FunctionArguments::List(l) => l.args.is_empty(),
            FunctionArguments::Subquery(_) => false,
        };
        if !empty {
            return Err(SqlError::BadArgument {
                function: "similarity",
                reason: "similarity() takes no arguments: the user is the statement's FOR USER \
                         and the vector the row's embedding"
                    .into(),
            });
        }
        let table = self.schema.table(self.kind)?;
        let Some((column, _)) = table.preference_column() else {
            return Err(SqlError::BadArgument {
                function: "similarity",
                reason: format!(
                    "similarity() compares the row's embedding with the user's preference \
                     vector, but {} has no VECTOR column",
                    self.kind.table_name()
                ),
            });
        };
        match self.preference {
            None => parse_expr("CAST(0.0 AS DOUBLE)"),
            Some(p) => {
                let text = crate::suggest::vector_text(p);
                parse_expr(&format!(
                    "preference_similarity({}, '{text}')",
                    Ident::with_quote('"', &table.columns[column].name)
                ))
            }
        }
    }

    fn bind_call(
        &self,
        name: &str,
        args: &mut Vec<FunctionArg>,
        signals: &mut BTreeSet<String>,
    ) -> Result<(), SqlError> {
        if name == "rank_profile" {
            return Err(syntax("a profile cannot call rank_profile"));
        }
        if let Some(f) = SignalFn::ALL.into_iter().find(|f| f.name() == name) {
            // The entity is implicit and the instant is the statement's (RETRIEVE … AT,
            // rank_profile's `at`), so a profile passes neither.
            let min = f.arity().0 - 1;
            if args.len() != min {
                return Err(SqlError::BadArgument {
                    function: f.name(),
                    reason: format!(
                        "inside a profile the entity is implicit and the instant is the \
                         statement's: write {}",
                        f.usage()
                            .replacen(", entity", "", 1)
                            .replacen(" [, at]", "", 1)
                    ),
                });
            }
            let signal = args
                .first()
                .and_then(arg_expr)
                .and_then(str_lit)
                .ok_or_else(|| SqlError::BadArgument {
                    function: f.name(),
                    reason: "the signal must be a quoted name such as 'like'".into(),
                })?;
            let def = self.schema.signal(signal)?;
            if def.kind != self.kind {
                return Err(CoreError::WrongKind {
                    signal: def.name.clone(),
                    expected: def.kind,
                    got: self.kind,
                }
                .into());
            }
            if f.has_window() {
                let text = args
                    .get(1)
                    .and_then(arg_expr)
                    .and_then(str_lit)
                    .ok_or_else(|| SqlError::BadArgument {
                        function: f.name(),
                        reason: "the window must be a quoted window such as '24h'".into(),
                    })?;
                let w = Window::parse(text).map_err(|e| SqlError::BadArgument {
                    function: f.name(),
                    reason: format!("{e}; declared windows are {}", def.windows_text()),
                })?;
                if w == Window::All && f != SignalFn::WindowCount {
                    return Err(CoreError::AllWindowNotAllowed { what: f.name() }.into());
                }
                def.require_window(w)?;
            }
            signals.insert(def.name.clone());
            args.insert(1, unnamed(SqlExpr::Identifier(Ident::new("id"))));
            if let Some(at) = &self.at
                && f.has_at()
            {
                args.push(unnamed(at.clone()));
            }
            return Ok(());
        }
        // Scoring functions of "now" read the binding's instant too.
        if let Some(at) = &self.at {
            match (name, args.len()) {
                ("freshness", 2) => args.push(unnamed(at.clone())),
                ("hn", 2) => {
                    args.push(unnamed(SqlExpr::value(Value::Number("1.8".into(), false))));
                    args.push(unnamed(at.clone()));
                }
                ("hn", 3) => args.push(unnamed(at.clone())),
                _ => {}
            }
        }
        Ok(())
    }
}

fn no_arguments(f: &datafusion::sql::sqlparser::ast::Function) -> bool {
    match &f.args {
        FunctionArguments::None => true,
        FunctionArguments::List(l) => l.args.is_empty(),
        FunctionArguments::Subquery(_) => false,
    }
}

/// Parses a stored clause back into an expression.
pub(crate) fn parse_expr(text: &str) -> Result<SqlExpr, SqlError> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let mut p = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| syntax(e.to_string()))?;
    let e = p.parse_expr().map_err(|e| syntax(e.to_string()))?;
    if p.peek_token_ref().token != Token::EOF {
        return Err(syntax(format!(
            "unexpected {} after the expression",
            found(&p)
        )));
    }
    Ok(e)
}

/// The SQL of a profile, bound for evaluation over its entity table.
#[derive(Debug, Clone)]
pub(crate) struct BoundProfile {
    /// The score, with recency applied, as a DOUBLE expression.
    pub score: String,
    /// Every condition an entity must meet (FILTER and GATE), or `None`.
    pub keep: Option<String>,
    /// The profile's FILTER alone (EXPLORE keeps GATE-dropped items as cold).
    pub filter: Option<String>,
    /// `(GATE) AND <events over the profile's signals> >= 10`: the item is warm
    /// (SQL.md §10; without a GATE only the events count).
    pub warm: String,
    pub signals: BTreeSet<String>,
    /// The FOR USER user's affinity pairs `affinity()` reads (bind them into the plan
    /// with [`BoundProfile::bind_plan`]).
    pub affinity: Option<std::sync::Arc<crate::social::UserAffinity>>,
}

impl BoundProfile {
    /// A plan of this profile's SQL with its user state bound (see `affinity()`).
    pub(crate) fn bind_plan(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
    ) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
        match &self.affinity {
            Some(a) => crate::social::bind_user_affinity(plan, a),
            None => Ok(plan),
        }
    }
}

/// Binds a profile's clauses. `at` is `None` for the statement's instant (RETRIEVE) or
/// an expression (rank_profile's `at` column).
pub(crate) fn bind_profile(
    def: &ProfileDef,
    schema: &Schema,
    at: Option<SqlExpr>,
    user: &UserState,
) -> Result<BoundProfile, SqlError> {
    let table = schema.table(def.kind)?;
    let now = at
        .as_ref()
        .map_or_else(|| "now()".to_string(), |e| e.to_string());
    let binding = Binding {
        schema,
        kind: def.kind,
        at,
        preference: user.preference.as_deref(),
        affinity: user.affinity.is_some(),
        cohort: user.cohort.as_ref(),
    };
    let mut signals = BTreeSet::new();
    let mut bind = |text: &str| -> Result<String, SqlError> {
        let mut e = parse_expr(text)?;
        signals.extend(binding.bind(&mut e)?);
        Ok(e.to_string())
    };
    let mut score = format!("CAST(({}) AS DOUBLE)", bind(&def.score)?);
    let mut keep = Vec::new();
    let filter = def.filter.as_ref().map(|f| bind(f)).transpose()?;
    let gate = def.gate.as_ref().map(|g| bind(g)).transpose()?;
    if let Some(f) = &filter {
        keep.push(format!("({f})"));
    }
    if let Some(g) = &gate {
        keep.push(format!("({g})"));
    }
    if let Some((_, us)) = &def.recency {
        match table
            .column_index("created_at")
            .map(|i| table.columns[i].ty)
        {
            Some(ColumnType::Timestamp) => {}
            _ => {
                return Err(CoreError::BadProfile {
                    name: def.name.clone(),
                    reason: format!(
                        "RECENCY needs a TIMESTAMP column created_at on {}",
                        def.kind.table_name()
                    ),
                }
                .into());
            }
        }
        // × 2^(−age/half_life); an entity without created_at (or from the future) is
        // not penalised.
        let hl_s = *us as f64 / 1e6;
        score = format!(
            "({score} * COALESCE(power(2.0, -greatest(0.0, date_part('epoch', {now}) - \
             date_part('epoch', created_at)) / {hl_s:?}), 1.0))"
        );
    }
    if def.max_per_creator.is_some() {
        require_creator(def.kind, schema)?;
    }
    let events = if signals.is_empty() {
        "0.0".to_string()
    } else {
        signals
            .iter()
            .map(|s| format!("signal_total('{}', id)", s.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut warm = format!(
        "(({events}) >= {:?})",
        crate::explore::EXPLORE_COLD_EVENTS_MIN
    );
    if let Some(g) = &gate {
        warm = format!("(COALESCE(({g}), false) AND {warm})");
    }
    Ok(BoundProfile {
        score,
        keep: (!keep.is_empty()).then(|| keep.join(" AND ")),
        filter: filter.map(|f| format!("({f})")),
        warm,
        signals,
        affinity: user.affinity.clone(),
    })
}

/// The profile `name`, checked to rank `kind` (the statement `what` names it).
pub(crate) fn profile_on<'s>(
    schema: &'s Schema,
    name: &str,
    kind: EntityKind,
    what: &'static str,
) -> Result<&'s ProfileDef, SqlError> {
    let def = schema.profile(name)?;
    if def.kind != kind {
        return Err(crate::error::bad_arg(
            what,
            format!(
                "profile {} is defined on {}, not on {}",
                def.name,
                def.kind.table_name(),
                kind.table_name()
            ),
        )
        .into());
    }
    Ok(def)
}

/// Diversity groups by `creator_id`, which must be a BIGINT column.
pub(crate) fn require_creator(kind: EntityKind, schema: &Schema) -> Result<(), SqlError> {
    let table = schema.table(kind)?;
    match table
        .column_index("creator_id")
        .map(|i| table.columns[i].ty)
    {
        Some(ColumnType::BigInt) | Some(ColumnType::Int) => Ok(()),
        _ => Err(CoreError::BadProfile {
            name: "DIVERSITY".into(),
            reason: format!(
                "DIVERSITY max_per_creator needs a BIGINT column creator_id on {}",
                kind.table_name()
            ),
        }
        .into()),
    }
}

/// Fills in the signals a new profile reads and checks the limit on profile count
/// (the schema checks the rest when the change is prepared).
pub(crate) fn complete_profile(def: &mut ProfileDef, schema: &Schema) -> Result<(), SqlError> {
    let bound = bind_profile(def, schema, None, &UserState::default())?;
    def.signals = bound.signals.into_iter().collect();
    if schema.profiles().count() >= PROFILES_MAX && schema.profile(&def.name).is_err() {
        return Err(CoreError::BadProfile {
            name: def.name.clone(),
            reason: format!("the database already has the maximum of {PROFILES_MAX} profiles"),
        }
        .into());
    }
    Ok(())
}
