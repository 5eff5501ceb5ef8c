//! Text search (SQL.md §6): the `SEARCH` statement, the `search(table, query)` table
//! function and `snippet(table, id, field, query)`.
//!
//! ```text
//! SEARCH items QUERY 'piano tutorial'
//!     [USING PROFILE name] [FOR USER id] [WHERE pred] [FILTER unseen | liked | …]
//!     [DIVERSITY max_per_creator n] [FUSION rrf | FUSION linear (a, b)] [LIMIT n] [AT 'ts']
//! ```
//!
//! The query runs on a snapshot of the table's text index that shows every write
//! acknowledged before the statement; its matches become the candidate set of a plan
//! shaped like RETRIEVE's:
//!
//! ```text
//! Fetch      rank, id, score, relevance, <entity columns>
//!   Rank     limit, max_per_creator
//!     Projection score = relevance | 1/(60+rank_rel) + 1/(60+rank_profile) | a·rel + b·profile
//!       [Window  row_number() over relevance, over profile_score]     (rrf only)
//!         Filter marked_by[user 7 seen](id)                          (FILTER terms)
//!           Projection id, [creator_id], text_relevance(id), [profile score]
//!             Filter text_match[items 'q': how (n rows)](id) AND <WHERE> AND <GATE>
//!               TableScan items
//! ```
//!
//! Which matches are computed depends on the statement. Without a profile or diversity
//! the score is the relevance, so the index's own top-k (block-max pruning) among the
//! rows passing WHERE and FILTER is the answer: WHERE is evaluated first as an id set
//! and tested, with the marks, inside the collector. With a profile or diversity every
//! candidate is needed; when WHERE or a positive mark filter (`FILTER liked`) bounds
//! them to at most [`SEARCH_AMONG_IDS_MAX`] rows only those rows are scored (by seeking
//! to each), otherwise every match is.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprFunctionExt, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TypeSignature, Volatility, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use tidal_core::{EntityId, EntityKind, Timestamp};
use tidal_engine::roaring::RoaringTreemap;
use tidal_engine::tidal_index::{Hit, TEXT_REFRESH_WAIT_MS_MAX, TextSnapshot};
use tidal_engine::{Engine, ReadView};

use crate::error::{bad_arg, engine_err};
use crate::profile::{
    RETRIEVE_LIMIT_DEFAULT, at_clause, bind_profile, diversity, entity_table, filter_terms, limit,
    next_clause, require_creator, user_id, where_clause,
};
use crate::statement::{end, expect_word, found, ident, string, syntax};
use crate::{SqlError, SqlSession};

/// RRF's rank constant (SQL.md §6).
pub const RRF_K: f64 = 60.0;
/// A positive mark filter with at most this many marked rows scores only those rows;
/// above it, every match is scored and the filter applied after.
pub const SEARCH_AMONG_IDS_MAX: u64 = 100_000;
/// With at most this many matches the candidate scan reads only the matching rows
/// (point reads); with more it scans the table (served from the scan cache).
pub const SEARCH_POINT_READS_MAX: usize = 1_024;
/// Longest query string.
pub const SEARCH_QUERY_BYTES_MAX: usize = 16 << 10;
/// Longest snippet `snippet()` returns, in characters.
pub const SNIPPET_CHARS_DEFAULT: usize = 150;

/// How a profile's score and the text relevance are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// `1/(60 + relevance_rank) + 1/(60 + profile_rank)` (the default with a profile).
    Rrf,
    /// `a·relevance + b·profile_score`.
    Linear(f64, f64),
}

/// A parsed `SEARCH`.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub kind: EntityKind,
    pub query: String,
    pub profile: Option<String>,
    pub user: Option<i64>,
    /// The WHERE predicate as SQL text.
    pub predicate: Option<String>,
    pub filters: Vec<crate::FilterTerm>,
    pub max_per_creator: Option<u32>,
    /// `EXPLORE fraction` (overrides the profile's; needs USING PROFILE).
    pub explore: Option<f64>,
    pub fusion: Option<Fusion>,
    /// `WITHIN COHORT …` (needs USING PROFILE): the profile reads this cohort.
    pub cohort: Option<crate::cohort::CohortScope>,
    pub limit: usize,
    pub at: Option<Timestamp>,
}

pub(crate) fn number(p: &mut Parser<'_>, what: &str) -> Result<f64, SqlError> {
    let negative = p.peek_token_ref().token == Token::Minus;
    if negative {
        p.next_token();
    }
    match p.peek_token_ref().token.clone() {
        Token::Number(n, _) => {
            p.next_token();
            let v: f64 = n
                .parse()
                .map_err(|_| syntax(format!("{what} must be a number, not {n}")))?;
            Ok(if negative { -v } else { v })
        }
        _ => Err(syntax(format!("expected {what}, found {}", found(p)))),
    }
}

/// `SEARCH` after its first word.
pub(crate) fn parse_search(p: &mut Parser<'_>) -> Result<Search, SqlError> {
    let kind = entity_table(p)?;
    expect_word(p, "QUERY")?;
    let query = string(p, "the search query")?;
    if query.len() > SEARCH_QUERY_BYTES_MAX {
        return Err(SqlError::BadArgument {
            function: "SEARCH",
            reason: format!("the query is longer than {SEARCH_QUERY_BYTES_MAX} bytes"),
        });
    }
    let mut s = Search {
        kind,
        query,
        profile: None,
        user: None,
        predicate: None,
        filters: Vec::new(),
        max_per_creator: None,
        explore: None,
        cohort: None,
        fusion: None,
        limit: RETRIEVE_LIMIT_DEFAULT,
        at: None,
    };
    let clauses = [
        "USING",
        "FOR",
        "WHERE",
        "FILTER",
        "DIVERSITY",
        "EXPLORE",
        "WITHIN",
        "FUSION",
        "LIMIT",
        "AT",
    ];
    let mut seen = BTreeSet::new();
    while let Some(clause) = next_clause(p, &clauses, &mut seen)? {
        match clause.as_str() {
            "USING" => {
                expect_word(p, "PROFILE")?;
                s.profile = Some(ident(p, "a profile name")?);
            }
            "FOR" => {
                expect_word(p, "USER")?;
                s.user = Some(user_id(p)?);
            }
            "WHERE" => s.predicate = Some(where_clause(p)?),
            "FILTER" => s.filters = filter_terms(p)?,
            "DIVERSITY" => s.max_per_creator = Some(diversity(p)?),
            "EXPLORE" => s.explore = Some(crate::profile::explore_clause(p, "SEARCH")?),
            "WITHIN" => s.cohort = Some(crate::profile::within_cohort(p)?),
            "FUSION" => s.fusion = Some(fusion(p, "SEARCH", "the relevance weight")?),
            "LIMIT" => s.limit = limit(p, "SEARCH")?,
            "AT" => s.at = Some(at_clause(p)?),
            _ => unreachable!("clause words are checked above"),
        }
    }
    end(p)?;
    crate::profile::require_user_for_filter(&s.filters, s.user)?;
    if s.explore.is_some() && s.profile.is_none() {
        return Err(syntax(
            "EXPLORE judges items cold by a profile's signals and GATE: it needs USING PROFILE",
        ));
    }
    if s.fusion.is_some() && s.profile.is_none() {
        return Err(syntax(
            "FUSION combines relevance with a profile's score: it needs USING PROFILE",
        ));
    }
    if s.cohort.is_some() && s.profile.is_none() {
        return Err(syntax(
            "WITHIN COHORT makes a profile's signal functions read a cohort: it needs USING PROFILE",
        ));
    }
    Ok(s)
}

/// The words after `FUSION`: `rrf` or `linear (a, b)`; `own` names the weight `a`
/// of the candidates' own score.
pub(crate) fn fusion(
    p: &mut Parser<'_>,
    what: &'static str,
    own: &str,
) -> Result<Fusion, SqlError> {
    let how = ident(p, "rrf or linear")?;
    match how.as_str() {
        "rrf" => Ok(Fusion::Rrf),
        "linear" => {
            p.expect_token(&Token::LParen)
                .map_err(|e| syntax(e.to_string()))?;
            let a = number(p, own)?;
            p.expect_token(&Token::Comma)
                .map_err(|e| syntax(e.to_string()))?;
            let b = number(p, "the profile weight")?;
            p.expect_token(&Token::RParen)
                .map_err(|e| syntax(e.to_string()))?;
            if !(a.is_finite() && b.is_finite()) {
                return Err(SqlError::BadArgument {
                    function: what,
                    reason: "FUSION linear weights must be finite".into(),
                });
            }
            Ok(Fusion::Linear(a, b))
        }
        other => Err(syntax(format!(
            "expected FUSION rrf or FUSION linear (a, b), found {other}"
        ))),
    }
}

/// The text snapshot of `kind`'s table that shows every write acknowledged before the
/// call (waiting, at most [`TEXT_REFRESH_WAIT_MS_MAX`], for the commit that shows them).
pub(crate) async fn fresh_snapshot(
    view: &ReadView,
    kind: EntityKind,
) -> Result<Arc<TextSnapshot>, SqlError> {
    let text = view.text(kind)?;
    let wait = Duration::from_millis(TEXT_REFRESH_WAIT_MS_MAX);
    match tokio::time::timeout(wait, text.index.snapshot()).await {
        Ok(r) => Ok(r.map_err(tidal_engine::EngineError::from)?),
        Err(_) => Err(SqlError::BadArgument {
            function: "SEARCH",
            reason: format!(
                "the text index of {} did not catch up with the writes before this \
                 statement within {TEXT_REFRESH_WAIT_MS_MAX} ms",
                kind.table_name()
            ),
        }),
    }
}

fn index_err(e: tidal_engine::tidal_index::IndexError) -> SqlError {
    SqlError::Engine(e.into())
}

/// The matches a statement needs, and how they were found (for EXPLAIN).
struct Matches {
    hits: Vec<Hit>,
    how: String,
}

/// Runs the query for `s`: see the module docs for which matches are computed.
/// `passing` is the set of rows that pass the statement's WHERE, when it has one.
fn matches(
    snap: &TextSnapshot,
    s: &Search,
    marks: &[crate::retrieve::FilterSet],
    passing: Option<&RoaringTreemap>,
) -> Result<Matches, SqlError> {
    let q = snap.parse(&s.query).map_err(index_err)?;
    if s.profile.is_none() && s.max_per_creator.is_none() {
        // score = relevance and no diversity: the index's own top-k among the rows that
        // pass WHERE and FILTER is the answer, found with pruning.
        if passing.is_none() && marks.is_empty() {
            let hits = snap.top_k(&q, s.limit).map_err(index_err)?;
            return Ok(Matches {
                how: format!("top {} of the index (pruned)", s.limit),
                hits,
            });
        }
        let keep =
            |id: u64| passing.is_none_or(|p| p.contains(id)) && marks.iter().all(|f| f.keeps(id));
        let hits = snap.top_k_where(&q, s.limit, &keep).map_err(index_err)?;
        return Ok(Matches {
            how: format!(
                "top {} of the index among the rows passing {} (pruned)",
                s.limit,
                match (passing.is_some(), marks.is_empty()) {
                    (true, true) => "WHERE",
                    (true, false) => "WHERE and FILTER",
                    _ => "FILTER",
                }
            ),
            hits,
        });
    }
    // Every candidate is needed (ranks for RRF, the profile's order, diversity's fill):
    // score only the smallest known superset of the candidates when it is small.
    let mut smallest: Option<(String, &RoaringTreemap)> =
        passing.map(|p| ("rows passing WHERE".to_string(), p));
    for f in marks.iter().filter(|f| f.want && f.column == "id") {
        if smallest.as_ref().is_none_or(|(_, s)| f.set.len() < s.len()) {
            smallest = Some((f.rows.clone(), &f.set));
        }
    }
    if let Some((what, set)) = smallest
        && set.len() <= SEARCH_AMONG_IDS_MAX
    {
        let ids: Vec<u64> = set.iter().collect();
        let hits = snap.among(&q, &ids).map_err(index_err)?;
        return Ok(Matches {
            how: format!("only the {} {what}", ids.len()),
            hits,
        });
    }
    let hits = snap.all(&q).map_err(index_err)?;
    Ok(Matches {
        how: "every match".into(),
        hits,
    })
}

/// The ids of `kind`'s rows that pass `predicate`, evaluated with the statement's state
/// (its instant, for signal functions in the predicate).
async fn passing_ids(
    state: &datafusion::execution::SessionState,
    kind: EntityKind,
    predicate: &str,
) -> Result<RoaringTreemap, SqlError> {
    let sql = format!("SELECT id FROM {} WHERE ({predicate})", kind.table_name());
    let plan = state.create_logical_plan(&sql).await?;
    let batches = DataFrame::new(state.clone(), plan).collect().await?;
    let mut ids = RoaringTreemap::new();
    for b in &batches {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("SEARCH: ids are not BIGINT".into()))?;
        ids.extend(col.iter().flatten().filter_map(|id| u64::try_from(id).ok()));
    }
    Ok(ids)
}

/// The result columns of `s`: `rank, id, score, relevance`, then the entity's columns.
pub(crate) fn search_schema(session: &SqlSession, s: &Search) -> Result<SchemaRef, SqlError> {
    let view = session.engine().read();
    let table = view.schema().table(s.kind)?.clone();
    view.text(s.kind)?;
    let schema = crate::retrieve::fetch_schema(&table, &[relevance_field()]);
    let profile = match &s.profile {
        Some(p) => Some(view.schema().profile(p)?),
        None => None,
    };
    Ok(match crate::explore::fraction(s.explore, profile) {
        Some(_) => crate::explore::with_explored(schema),
        None => schema,
    })
}

fn relevance_field() -> Field {
    Field::new("relevance", DataType::Float64, true)
}

/// The session state a SEARCH plans with: the statement's instant fixed by AT.
fn statement_state(
    session: &SqlSession,
    s: &Search,
) -> Result<datafusion::execution::SessionState, SqlError> {
    let mut state = session.context().state();
    if let Some(at) = s.at {
        state.execution_props_mut().query_execution_start_time = Some(
            crate::retrieve::chrono_utc(at)
                .ok_or_else(|| bad_arg("SEARCH", "AT is out of range"))?,
        );
    }
    Ok(state)
}

/// A SEARCH whose score is the relevance (no profile, no diversity) needs no DataFusion
/// plan: the index's top-k among the rows passing WHERE and FILTER is its answer.
fn is_direct(s: &Search) -> bool {
    // A relationship FILTER may test the creator, which the index does not hold.
    s.profile.is_none()
        && s.max_per_creator.is_none()
        && !s.filters.iter().any(crate::FilterTerm::is_relationship)
}

/// The matches of a direct SEARCH (see [`is_direct`]).
async fn direct_matches(session: &SqlSession, s: &Search) -> Result<Matches, SqlError> {
    let view = session.engine().read();
    let marks = match s.user {
        Some(user) => crate::retrieve::filter_sets(&view, s.kind, user, &s.filters, "SEARCH")?,
        None => Vec::new(),
    };
    let passing = match &s.predicate {
        Some(p) => Some(passing_ids(&statement_state(session, s)?, s.kind, p).await?),
        None => None,
    };
    let snap = fresh_snapshot(&view, s.kind).await?;
    matches(&snap, s, &marks, passing.as_ref())
}

/// Runs a direct SEARCH (see [`is_direct`]): the top-k, then point reads of those rows,
/// so its cost is the index's search plus a few reads, not query planning. `None` for
/// every other SEARCH.
pub(crate) async fn run_search_direct(
    session: &SqlSession,
    s: &Search,
) -> Result<Option<RecordBatch>, SqlError> {
    if !is_direct(s) {
        return Ok(None);
    }
    Ok(Some(search_direct(session, s).await?.1))
}

/// A direct SEARCH's matches and result rows.
async fn search_direct(
    session: &SqlSession,
    s: &Search,
) -> Result<(Matches, RecordBatch), SqlError> {
    let found = direct_matches(session, s).await?;
    // Read the rows from a view taken after the index snapshot, so every row the
    // snapshot found is there (unless a later DELETE removed it: then it is left out).
    let view = session.engine().read();
    let table = view.schema().table(s.kind)?.clone();
    let n = found.hits.len();
    let relevance = || {
        Arc::new(Float64Array::from_iter_values(
            found.hits.iter().map(|h| f64::from(h.score)),
        ))
    };
    let input = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("rank", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float64, true),
            relevance_field(),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=n as i64)),
            Arc::new(Int64Array::from_iter_values(
                found.hits.iter().map(|h| h.id as i64),
            )),
            relevance(),
            relevance(),
        ],
    )
    .map_err(DataFusionError::from)?;
    let schema = crate::retrieve::fetch_schema(&table, &[relevance_field()]);
    let batch =
        crate::retrieve::fetch_rows(&view, &table, &["relevance".to_string()], &schema, &input)?;
    Ok((found, batch))
}

/// How [`run_search_direct`] answers `s`, for EXPLAIN (with ANALYZE it also runs it and
/// says how long that took). `None` for a SEARCH that is planned.
pub(crate) async fn explain_search_direct(
    session: &SqlSession,
    s: &Search,
    analyze: bool,
) -> Result<Option<RecordBatch>, SqlError> {
    if !is_direct(s) {
        return Ok(None);
    }
    // With ANALYZE the statement runs (once) and says how long it took.
    let (found, ran) = if analyze {
        let t = std::time::Instant::now();
        let (found, rows) = search_direct(session, s).await?;
        let took = t.elapsed().as_micros();
        let ran = format!("\n  (ran: {} rows in {took} µs)", rows.num_rows());
        (found, ran)
    } else {
        (direct_matches(session, s).await?, String::new())
    };
    let plan = format!(
        "SearchTopK: {} {:?}: {} ({} rows){}\n  Fetch: point reads of the ranked ids{ran}",
        s.kind.table_name(),
        s.query,
        found.how,
        found.hits.len(),
        match &s.predicate {
            Some(p) => format!("\n  WHERE evaluated first as an id set: {p}"),
            None => String::new(),
        }
    );
    Ok(Some(
        RecordBatch::try_new(
            crate::session::explain_schema(),
            vec![
                Arc::new(StringArray::from(vec!["direct_plan"])),
                Arc::new(StringArray::from(vec![plan])),
            ],
        )
        .map_err(DataFusionError::from)?,
    ))
}

/// Builds the plan of a SEARCH (the DataFrame's state carries the statement instant).
pub(crate) async fn plan_search(session: &SqlSession, s: &Search) -> Result<DataFrame, SqlError> {
    let engine = session.engine();
    let view = engine.read();
    let schema = view.schema().clone();
    let table = schema.table(s.kind)?.clone();
    let profile = match &s.profile {
        Some(name) => {
            let def = crate::profile::profile_on(&schema, name, s.kind, "SEARCH")?;
            let mut user = crate::retrieve::user_state(&view, s.user, def)?;
            user.cohort = s.cohort.clone();
            Some((def.clone(), bind_profile(def, &schema, None, &user)?))
        }
        None => None,
    };
    let max_per_creator = s
        .max_per_creator
        .or(profile.as_ref().and_then(|(d, _)| d.max_per_creator));
    if max_per_creator.is_some() {
        require_creator(s.kind, &schema)?;
    }
    let marks = match s.user {
        Some(user) => crate::retrieve::filter_sets(&view, s.kind, user, &s.filters, "SEARCH")?,
        None => Vec::new(),
    };
    let state = statement_state(session, s)?;
    let passing = match &s.predicate {
        Some(p) => Some(passing_ids(&state, s.kind, p).await?),
        None => None,
    };
    let snap = fresh_snapshot(&view, s.kind).await?;
    let found = matches(&snap, s, &marks, passing.as_ref())?;
    let label = format!(
        "{} {:?}: {} ({} rows)",
        s.kind.table_name(),
        s.query,
        found.how,
        found.hits.len()
    );
    let candidates = Candidates {
        scores: found
            .hits
            .iter()
            .map(|h| (h.id, f64::from(h.score)))
            .collect(),
        label,
        score_label: format!("{} {:?}", s.kind.table_name(), s.query),
        filter_function: "text_match",
        score_function: "text_relevance",
        column: "relevance",
    };
    let explore = crate::explore::fraction(s.explore, profile.as_ref().map(|(d, _)| d)).map(|f| {
        let at = s.at.unwrap_or_else(|| engine.now());
        crate::explore::spec(f, s.limit, max_per_creator, s.user, at)
    });
    let spec = FusedSpec {
        kind: s.kind,
        profile: profile.as_ref().map(|(_, b)| b),
        predicate: s.predicate.as_deref(),
        user: s.user,
        marks: &marks,
        max_per_creator,
        fusion: s.fusion,
        limit: s.limit,
        explore,
        creator: crate::explore::creator_select(&table),
    };
    let plan = fused_plan(&state, &spec, &candidates).await?;
    let plan = match explore {
        Some(_) => crate::explore::explored_last(crate::retrieve::FetchNode::plan(
            plan,
            view,
            table,
            &[relevance_field(), crate::explore::explored_field()],
        )?)?,
        None => crate::retrieve::FetchNode::plan(plan, view, table, &[relevance_field()])?,
    };
    Ok(DataFrame::new(state, plan))
}

/// The scored candidates of a fused statement (SEARCH's matches, SUGGEST's nearest
/// items) and how EXPLAIN names them.
pub(crate) struct Candidates {
    /// The candidate's own score (relevance, similarity) by id.
    pub scores: HashMap<u64, f64>,
    /// Says how the candidates were found, in the filter's name.
    pub label: String,
    /// Names the statement in the score function's name.
    pub score_label: String,
    pub filter_function: &'static str,
    pub score_function: &'static str,
    /// The result column holding the candidate's score.
    pub column: &'static str,
}

/// The clauses of a fused statement other than its candidates.
pub(crate) struct FusedSpec<'a> {
    pub kind: EntityKind,
    pub profile: Option<&'a crate::profile::BoundProfile>,
    pub predicate: Option<&'a str>,
    pub user: Option<i64>,
    pub marks: &'a [crate::retrieve::FilterSet],
    pub max_per_creator: Option<u32>,
    pub fusion: Option<Fusion>,
    pub limit: usize,
    /// Exploring (SQL.md §10): the ranking is an Explore node, GATE marks items cold
    /// instead of dropping them, and the result gains `explored`.
    pub explore: Option<crate::explore::ExploreSpec>,
    /// How to select `creator_id` when exploring (`None`: the table has none).
    pub creator: Option<&'static str>,
}

/// The ranked plan of a statement that fuses candidates' own scores with a profile
/// (SQL.md §6): `rank, id, creator_id?, score, <candidate column>`, before the fetch.
/// Only candidates that pass WHERE, FILTER and the profile's GATE/FILTER are ranked.
pub(crate) async fn fused_plan(
    state: &datafusion::execution::SessionState,
    spec: &FusedSpec<'_>,
    candidates: &Candidates,
) -> Result<datafusion::logical_expr::LogicalPlan, SqlError> {
    let mut ids = RoaringTreemap::new();
    ids.extend(candidates.scores.keys().copied());
    let mut conds = Vec::new();
    // Exploring keeps the items GATE drops: they are cold, not gone.
    let keep = match spec.explore {
        Some(_) => spec.profile.and_then(|b| b.filter.as_ref()),
        None => spec.profile.and_then(|b| b.keep.as_ref()),
    };
    if let Some(keep) = keep {
        conds.push(keep.clone());
    }
    if let Some(p) = spec.predicate {
        conds.push(format!("({p})"));
    }
    let creator = match (spec.explore, spec.creator) {
        (Some(_), Some(c)) => Some(c),
        _ if spec.max_per_creator.is_some() => Some("creator_id"),
        _ => None,
    };
    let warm = match (spec.explore, spec.profile) {
        (Some(_), Some(b)) => Some(&b.warm),
        _ => None,
    };
    let sql = format!(
        "SELECT id{}{}{} FROM {}{}",
        creator.map(|c| format!(", {c}")).unwrap_or_default(),
        match spec.profile {
            Some(bound) => format!(", {} AS profile_score", bound.score),
            None => String::new(),
        },
        warm.map(|w| format!(", {w} AS {}", crate::explore::WARM_COLUMN))
            .unwrap_or_default(),
        spec.kind.table_name(),
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    );
    let mut plan = state.create_logical_plan(&sql).await?;
    if let Some(bound) = spec.profile {
        plan = bound.bind_plan(plan)?;
    }
    let plan = crate::retrieve::ledger_ordered_scans(plan)?;
    // The candidate filter goes under the projection (DataFusion pushes it into the
    // scan's filter), so profile scores are computed for candidates only.
    let mut matched = crate::retrieve::id_set_filter(
        candidates.filter_function,
        &candidates.label,
        Arc::new(ids),
    );
    if candidates.scores.len() <= SEARCH_POINT_READS_MAX {
        // Few candidates: `id IN (…)` is pushed into the scan, which then reads just
        // those rows instead of the whole table.
        let mut sorted: Vec<u64> = candidates.scores.keys().copied().collect();
        sorted.sort_unstable();
        let list = sorted
            .into_iter()
            .filter_map(|id| i64::try_from(id).ok())
            .map(lit)
            .collect();
        matched = col("id").in_list(list, false).and(matched);
    }
    let mut plan = LogicalPlanBuilder::from(plan).filter(matched)?.build()?;
    if spec.user.is_some() {
        plan = crate::retrieve::scan_filters(plan, spec.marks)?;
    }
    let own = ScalarUDF::new_from_impl(RelevanceUdf {
        name: candidates.score_function,
        label: candidates.score_label.clone(),
        scores: Arc::new(candidates.scores.clone()),
        signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
    })
    .call(vec![col("id")]);
    let column = candidates.column;
    let mut keep = vec![col("id")];
    if creator.is_some() {
        keep.push(col("creator_id"));
    }
    if warm.is_some() {
        keep.push(col(crate::explore::WARM_COLUMN));
    }
    let mut with_own = keep.clone();
    with_own.push(own.alias(column));
    if spec.profile.is_some() {
        with_own.push(col("profile_score"));
    }
    let mut plan = LogicalPlanBuilder::from(plan).project(with_own)?;
    let score = match (spec.profile, spec.fusion.unwrap_or(Fusion::Rrf)) {
        (None, _) => col(column),
        (Some(_), Fusion::Linear(a, b)) => lit(a) * col(column) + lit(b) * col("profile_score"),
        (Some(_), Fusion::Rrf) => {
            let rank_of = |by: &str| -> Result<Expr, SqlError> {
                Ok(row_number()
                    .order_by(vec![
                        col(by).sort(false, false),
                        col("id").sort(true, false),
                    ])
                    .build()?)
            };
            // One window node per ordering: DataFusion plans a window node's functions
            // over a single sort.
            let own_rank = format!("{column}_rank");
            plan = plan
                .window(vec![rank_of(column)?.alias(own_rank.as_str())])?
                .window(vec![rank_of("profile_score")?.alias("profile_rank")])?;
            let part = |c: &str| {
                lit(1.0)
                    / (lit(RRF_K)
                        + Expr::Cast(datafusion::logical_expr::Cast::new(
                            Box::new(col(c)),
                            DataType::Float64,
                        )))
            };
            part(&own_rank) + part("profile_rank")
        }
    };
    let mut out = keep;
    out.push(score.alias("score"));
    out.push(col(column));
    let plan = plan.project(out)?.build()?;
    Ok(match spec.explore {
        Some(e) => crate::explore::explore_plan(plan, e)?,
        None => crate::rank::rank_plan(plan, spec.limit, spec.max_per_creator)?,
    })
}

/// `text_relevance(id)` (SEARCH), `suggest_similarity(id)` (SUGGEST): the candidate's
/// own score, captured at planning; NULL for a row that is not a candidate.
#[derive(Debug)]
struct RelevanceUdf {
    name: &'static str,
    label: String,
    scores: Arc<HashMap<u64, f64>>,
    signature: Signature,
}

impl PartialEq for RelevanceUdf {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && Arc::ptr_eq(&self.scores, &other.scores)
    }
}
impl Eq for RelevanceUdf {}
impl Hash for RelevanceUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for RelevanceUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = ids.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
            DataFusionError::Internal(format!("{}: ids are not BIGINT", self.name))
        })?;
        let out: Float64Array = ids
            .iter()
            .map(|id| {
                id.and_then(|id| u64::try_from(id).ok())
                    .and_then(|id| self.scores.get(&id).copied())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn literal_str(e: &Expr, what: &str, function: &'static str) -> Result<String> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten().map(str::to_string),
        _ => None,
    }
    .ok_or_else(|| bad_arg(function, format!("{what} must be a quoted string")))
}

fn table_kind(name: &str, function: &'static str) -> Result<EntityKind> {
    EntityKind::ALL
        .into_iter()
        .find(|k| k.table_name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            bad_arg(
                function,
                format!("{name:?} is not an entity table (items, users or creators)"),
            )
        })
}

/// `search(table, query)`: every row matching the query, `(id, relevance)`.
#[derive(Debug)]
pub struct SearchFunction {
    engine: Arc<Engine>,
}

impl SearchFunction {
    pub fn new(engine: Arc<Engine>) -> SearchFunction {
        SearchFunction { engine }
    }
}

impl TableFunctionImpl for SearchFunction {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() != 2 {
            return Err(bad_arg(
                "search",
                "takes 2 arguments: search('items', 'query text')",
            ));
        }
        let kind = table_kind(&literal_str(&exprs[0], "the table", "search")?, "search")?;
        // A `$n` query is only planned to describe the statement (the wire server
        // binds parameters into the text before it runs).
        let query = match &exprs[1] {
            Expr::Placeholder(_) => None,
            e => Some(literal_str(e, "the query", "search")?),
        };
        // Errors that need no index (no such table, no text fields) surface here.
        self.engine.read().text(kind).map_err(engine_err)?;
        Ok(Arc::new(SearchTable {
            engine: self.engine.clone(),
            kind,
            query,
            schema: Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("relevance", DataType::Float64, false),
            ])),
        }))
    }
}

/// The rows of one `search(table, query)` call.
#[derive(Debug)]
struct SearchTable {
    engine: Arc<Engine>,
    kind: EntityKind,
    /// `None` for an unbound parameter (described, never scanned).
    query: Option<String>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for SearchTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Temporary
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let query = self
            .query
            .as_deref()
            .ok_or_else(|| bad_arg("search", "the query parameter has no value"))?;
        let view = self.engine.read();
        let snap = fresh_snapshot(&view, self.kind)
            .await
            .map_err(SqlError::into_df)?;
        let q = snap.parse(query).map_err(|e| index_err(e).into_df())?;
        let mut hits = snap.all(&q).map_err(|e| index_err(e).into_df())?;
        hits.sort_unstable_by_key(|h| h.id);
        let ids: Int64Array = hits.iter().map(|h| h.id as i64).collect();
        let rel: Float64Array = hits.iter().map(|h| f64::from(h.score)).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(ids), Arc::new(rel)])?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// `snippet(table, id, field, query [, max_chars])`: the part of the row's `field` that
/// best matches `query`, the matched terms between `<b>` and `</b>` (as PostgreSQL's
/// `ts_headline`); empty when the field does not match, NULL for a missing row or a
/// NULL field.
#[derive(Debug)]
pub struct SnippetUdf {
    engine: Arc<Engine>,
    signature: Signature,
}

impl SnippetUdf {
    pub fn new(engine: Arc<Engine>) -> SnippetUdf {
        let s = |n| TypeSignature::Any(n);
        SnippetUdf {
            engine,
            signature: Signature::one_of(vec![s(4), s(5)], Volatility::Stable),
        }
    }
}

impl PartialEq for SnippetUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine)
    }
}
impl Eq for SnippetUdf {}
impl Hash for SnippetUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.engine).hash(state);
    }
}

fn scalar_str(v: &ColumnarValue, what: &str) -> Result<String> {
    match v {
        ColumnarValue::Scalar(v) => v.try_as_str().flatten().map(str::to_string),
        ColumnarValue::Array(_) => None,
    }
    .ok_or_else(|| {
        bad_arg(
            "snippet",
            format!("{what} must be a constant string: snippet('items', id, 'body', 'query')"),
        )
    })
}

impl ScalarUDFImpl for SnippetUdf {
    fn name(&self) -> &str {
        "snippet"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !(args[1].is_integer() || args[1] == DataType::Null) {
            return Err(bad_arg(
                "snippet",
                format!("the id must be a BIGINT, not {}", args[1]),
            ));
        }
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let kind = table_kind(&scalar_str(&args.args[0], "the table")?, "snippet")?;
        let field = scalar_str(&args.args[2], "the field")?;
        let query = scalar_str(&args.args[3], "the query")?;
        let max_chars = match args.args.get(4) {
            None => SNIPPET_CHARS_DEFAULT,
            Some(ColumnarValue::Scalar(v)) => match v.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(m)) if (1..=100_000).contains(&m) => m as usize,
                _ => return Err(bad_arg("snippet", "max_chars must be 1 to 100000")),
            },
            Some(_) => return Err(bad_arg("snippet", "max_chars must be a constant")),
        };
        let view = self.engine.read();
        let table = view.schema().table(kind).map_err(engine_err)?.clone();
        let column = table
            .text_fields
            .iter()
            .find(|f| f.eq_ignore_ascii_case(&field))
            .and_then(|f| table.column_index(f))
            .ok_or_else(|| {
                bad_arg(
                    "snippet",
                    format!(
                        "{field:?} is not a text field of {} (text fields: {})",
                        kind.table_name(),
                        table.text_fields.join(", ")
                    ),
                )
            })?;
        // Only term statistics and the analyzer come from the index; the text is read
        // from the row, so the current snapshot (without waiting) is enough.
        let text = view.text(kind).map_err(engine_err)?;
        let snap = text.index.current();
        let q = snap.parse(&query).map_err(|e| index_err(e).into_df())?;
        let ids = args.args[1].to_array(n)?;
        let ids = datafusion::arrow::compute::cast(&ids, &DataType::Int64)?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("snippet: ids are not BIGINT".into()))?;
        let mut out = Vec::with_capacity(n);
        for id in ids.iter() {
            let row = match id.and_then(EntityId::from_i64) {
                Some(id) => view.get(kind, id).map_err(engine_err)?,
                None => None,
            };
            let value = match row.as_ref().and_then(|r| r.get(column)) {
                Some(tidal_core::Value::Text(t)) => Some(
                    snap.snippet(&q, &field, t, ("<b>", "</b>"), max_chars)
                        .map_err(|e| index_err(e).into_df())?,
                ),
                _ => None,
            };
            out.push(value);
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}
