//! Preference vectors in SQL (SQL.md §7): `preference(user)`, `similarity()` inside
//! profiles (bound to `preference_similarity`), and the `SUGGEST` statement.
//!
//! ```text
//! SUGGEST items FOR USER 7
//!     [USING PROFILE name] [WHERE pred] [FILTER unseen | liked | …]
//!     [DIVERSITY max_per_creator n] [FUSION rrf | FUSION linear (a, b)]
//!     [CANDIDATES n] [LIMIT n] [AT 'ts']
//! ```
//!
//! SUGGEST runs in two steps. First the candidates: the items nearest to the user's
//! preference vector by cosine distance among those passing WHERE, FILTER and the
//! profile's GATE/FILTER — an ordinary `ORDER BY embedding <=> p LIMIT n` query, so an
//! HNSW index with `vector_cosine_ops` serves it (filter inside the search) and without
//! one it is the exact vectorized scan. Then the ranking, shaped like SEARCH's with the
//! similarity in place of the relevance:
//!
//! ```text
//! Fetch      rank, id, score, similarity, <entity columns>
//!   Rank     limit, max_per_creator
//!     Projection score = similarity | 1/(60+rank_sim) + 1/(60+rank_profile) | a·sim + b·profile
//!       Filter suggest_nearest[...](id) AND <WHERE> AND <GATE> AND <marks>
//!         TableScan items
//! ```
//!
//! How many candidates: `LIMIT` when the score is the similarity itself (no profile, no
//! diversity: the nearest are the answer); otherwise `CANDIDATES n`, by default
//! [`SUGGEST_CANDIDATES_PER_RESULT`] × LIMIT but at least [`SUGGEST_CANDIDATES_MIN`],
//! at most [`SUGGEST_CANDIDATES_MAX`]. A user without a vector gets the profile's
//! ranking (a RETRIEVE with the same clauses, `similarity` NULL), or no rows without a
//! profile.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float32Builder, Float64Array, Int64Array, ListBuilder, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility, lit,
};
use datafusion::physical_plan::displayable;
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::Ident;
use datafusion::sql::sqlparser::parser::Parser;
use tidal_core::{EntityId, EntityKind, TableDef, Timestamp};
use tidal_engine::Engine;

use crate::error::{bad_arg, engine_err};
use crate::profile::{
    RETRIEVE_LIMIT_DEFAULT, Retrieve, at_clause, bind_profile, diversity, entity_table,
    filter_terms, limit, next_clause, require_creator, user_id, where_clause,
};
use crate::search::{Candidates, FusedSpec, Fusion, fused_plan, fusion};
use crate::statement::{end, expect_word, ident, syntax};
use crate::vector::{Vectors, parse_vector, unsized_vector_type};
use crate::{SqlError, SqlSession};

/// Default candidates per result row when a profile or diversity re-ranks them.
pub const SUGGEST_CANDIDATES_PER_RESULT: usize = 10;
/// Fewest candidates a re-ranking SUGGEST considers by default.
pub const SUGGEST_CANDIDATES_MIN: usize = 100;
/// Most candidates a SUGGEST may ask for (`CANDIDATES n`).
pub const SUGGEST_CANDIDATES_MAX: usize = 10_000;

/// A parsed `SUGGEST`.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggest {
    pub kind: EntityKind,
    pub user: i64,
    pub profile: Option<String>,
    /// The WHERE predicate as SQL text.
    pub predicate: Option<String>,
    pub filters: Vec<crate::FilterTerm>,
    pub max_per_creator: Option<u32>,
    /// `EXPLORE fraction` (overrides the profile's; needs USING PROFILE).
    pub explore: Option<f64>,
    pub fusion: Option<Fusion>,
    pub candidates: Option<usize>,
    /// `WITHIN COHORT …` (needs USING PROFILE): the profile reads this cohort.
    pub cohort: Option<crate::cohort::CohortScope>,
    pub limit: usize,
    pub at: Option<Timestamp>,
}

/// `SUGGEST` after its first word.
pub(crate) fn parse_suggest(p: &mut Parser<'_>) -> Result<Suggest, SqlError> {
    let kind = entity_table(p)?;
    if kind != EntityKind::Item {
        return Err(bad_arg(
            "SUGGEST",
            format!(
                "SUGGEST ranks items (preference vectors follow item embeddings), not {}",
                kind.table_name()
            ),
        )
        .into());
    }
    if !(crate::statement::peek_words(p, &["FOR", "USER"])) {
        return Err(syntax(
            "SUGGEST needs FOR USER id: it ranks by that user's preference vector",
        ));
    }
    p.next_token();
    p.next_token();
    let user = user_id(p)?;
    let mut s = Suggest {
        kind,
        user,
        profile: None,
        predicate: None,
        filters: Vec::new(),
        max_per_creator: None,
        explore: None,
        cohort: None,
        fusion: None,
        candidates: None,
        limit: RETRIEVE_LIMIT_DEFAULT,
        at: None,
    };
    let clauses = [
        "USING",
        "WHERE",
        "FILTER",
        "DIVERSITY",
        "EXPLORE",
        "WITHIN",
        "FUSION",
        "CANDIDATES",
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
            "WHERE" => s.predicate = Some(where_clause(p)?),
            "FILTER" => s.filters = filter_terms(p)?,
            "DIVERSITY" => s.max_per_creator = Some(diversity(p)?),
            "EXPLORE" => s.explore = Some(crate::profile::explore_clause(p, "SUGGEST")?),
            "WITHIN" => s.cohort = Some(crate::profile::within_cohort(p)?),
            "FUSION" => s.fusion = Some(fusion(p, "SUGGEST", "the similarity weight")?),
            "CANDIDATES" => {
                let n = limit(p, "SUGGEST")?;
                if n == 0 || n > SUGGEST_CANDIDATES_MAX {
                    return Err(bad_arg(
                        "SUGGEST",
                        format!("CANDIDATES must be 1 to {SUGGEST_CANDIDATES_MAX}, not {n}"),
                    )
                    .into());
                }
                s.candidates = Some(n);
            }
            "LIMIT" => s.limit = limit(p, "SUGGEST")?,
            "AT" => s.at = Some(at_clause(p)?),
            _ => unreachable!("clause words are checked above"),
        }
    }
    end(p)?;
    if s.explore.is_some() && s.profile.is_none() {
        return Err(syntax(
            "EXPLORE judges items cold by a profile's signals and GATE: it needs USING PROFILE",
        ));
    }
    if s.fusion.is_some() && s.profile.is_none() {
        return Err(syntax(
            "FUSION combines similarity with a profile's score: it needs USING PROFILE",
        ));
    }
    if s.cohort.is_some() && s.profile.is_none() {
        return Err(syntax(
            "WITHIN COHORT makes a profile's signal functions read a cohort: it needs USING PROFILE",
        ));
    }
    Ok(s)
}

fn similarity_field() -> Field {
    Field::new("similarity", DataType::Float64, true)
}

/// The result columns of `s`: `rank, id, score, similarity`, then the entity's columns.
pub(crate) fn suggest_schema(session: &SqlSession, s: &Suggest) -> Result<SchemaRef, SqlError> {
    let view = session.engine().read();
    let table = view.schema().table(s.kind)?.clone();
    let schema = crate::retrieve::fetch_schema(&table, &[similarity_field()]);
    let profile = match &s.profile {
        Some(p) => Some(view.schema().profile(p)?),
        None => None,
    };
    Ok(match crate::explore::fraction(s.explore, profile) {
        Some(_) => crate::explore::with_explored(schema),
        None => schema,
    })
}

/// The score is the similarity itself: the nearest candidates are the answer.
fn is_direct(s: &Suggest) -> bool {
    s.profile.is_none() && s.max_per_creator.is_none()
}

fn candidate_count(s: &Suggest) -> usize {
    if is_direct(s) {
        return s.limit;
    }
    s.candidates.unwrap_or_else(|| {
        (s.limit.saturating_mul(SUGGEST_CANDIDATES_PER_RESULT))
            .clamp(SUGGEST_CANDIDATES_MIN, SUGGEST_CANDIDATES_MAX)
    })
}

/// What a SUGGEST resolved to at planning.
struct Planned {
    state: SessionState,
    table: TableDef,
    how: How,
}

enum How {
    /// The user has no vector (or one of another dimension than the embeddings).
    NoVector,
    /// The nearest candidates, by the candidate query.
    Nearest {
        /// `(id, similarity)`, nearest first, ties by smaller id.
        found: Vec<(u64, f64)>,
        /// The candidate query's physical plan, for EXPLAIN.
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        spec: Box<Ranking>,
    },
}

/// Everything the ranking step needs besides the candidates.
struct Ranking {
    profile: Option<crate::profile::BoundProfile>,
    marks: Vec<crate::retrieve::FilterSet>,
    max_per_creator: Option<u32>,
    explore: Option<crate::explore::ExploreSpec>,
    creator: Option<&'static str>,
}

/// The statement's session state: its instant fixed by AT.
fn statement_state(session: &SqlSession, s: &Suggest) -> Result<SessionState, SqlError> {
    let mut state = session.context().state();
    if let Some(at) = s.at {
        state.execution_props_mut().query_execution_start_time = Some(
            crate::retrieve::chrono_utc(at)
                .ok_or_else(|| bad_arg("SUGGEST", "AT is out of range"))?,
        );
    }
    Ok(state)
}

/// A vector in pgvector's text form, each component as the shortest text that reads
/// back as the same f32.
pub(crate) fn vector_text(v: &[f32]) -> String {
    let mut text = String::with_capacity(v.len() * 12 + 2);
    text.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        // `{:?}` prints the shortest text that reads back as the same f32.
        text.push_str(&format!("{x:?}"));
    }
    text.push(']');
    text
}

async fn plan(session: &SqlSession, s: &Suggest) -> Result<Planned, SqlError> {
    let view = session.engine().read();
    let schema = view.schema().clone();
    let table = schema.table(s.kind)?.clone();
    let Some((column, dims)) = table.preference_column() else {
        return Err(bad_arg(
            "SUGGEST",
            format!(
                "SUGGEST ranks by the items' embeddings, but {} has no VECTOR column",
                s.kind.table_name()
            ),
        )
        .into());
    };
    let profile_def = match &s.profile {
        Some(name) => Some(crate::profile::profile_on(&schema, name, s.kind, "SUGGEST")?.clone()),
        None => None,
    };
    let max_per_creator = s
        .max_per_creator
        .or(profile_def.as_ref().and_then(|d| d.max_per_creator));
    if max_per_creator.is_some() {
        require_creator(s.kind, &schema)?;
    }
    // Checked (the signals exist and mark) even when the user has no vector.
    let marks = crate::retrieve::filter_sets(&view, s.kind, s.user, &s.filters, "SUGGEST")?;
    let state = statement_state(session, s)?;
    let preference = crate::retrieve::user_preference(&view, Some(s.user))?
        .filter(|p| dims == 0 || p.len() == dims as usize);
    let Some(preference) = preference else {
        return Ok(Planned {
            state,
            table,
            how: How::NoVector,
        });
    };
    let profile = profile_def
        .as_ref()
        .map(|d| {
            let mut user = crate::retrieve::user_state(&view, Some(s.user), d)?;
            user.preference = Some(preference.clone());
            user.cohort = s.cohort.clone();
            bind_profile(d, &schema, None, &user)
        })
        .transpose()?;

    let creator = crate::explore::creator_select(&table);
    let explore = crate::explore::fraction(s.explore, profile_def.as_ref()).map(|f| {
        let at = s.at.unwrap_or_else(|| session.engine().now());
        crate::explore::spec(f, s.limit, max_per_creator, Some(s.user), at)
    });
    let mut conds = Vec::new();
    // Exploring keeps the items GATE drops among the candidates: they are cold.
    let keep = match explore {
        Some(_) => profile.as_ref().and_then(|b| b.filter.as_ref()),
        None => profile.as_ref().and_then(|b| b.keep.as_ref()),
    };
    if let Some(keep) = keep {
        conds.push(keep.clone());
    }
    if let Some(p) = &s.predicate {
        conds.push(format!("({p})"));
    }
    let name = Ident::with_quote('"', &table.columns[column].name);
    let sql = format!(
        "SELECT id, {name} <=> '{}' AS distance FROM {}{} ORDER BY distance LIMIT {}",
        vector_text(&preference),
        s.kind.table_name(),
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        },
        candidate_count(s)
    );
    // The FILTER sets go right above the scan, with WHERE, so that the index search
    // applies them inside the search too.
    let plan = crate::retrieve::scan_filters(state.create_logical_plan(&sql).await?, &marks)?;
    let frame = DataFrame::new(state.clone(), plan);
    let task = Arc::new(frame.task_ctx());
    let physical = frame.create_physical_plan().await?;
    let batches = datafusion::physical_plan::collect(physical.clone(), task).await?;
    let mut found = Vec::new();
    for b in &batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("SUGGEST: ids are not BIGINT".into()))?;
        let distances = datafusion::arrow::compute::cast(b.column(1), &DataType::Float64)
            .map_err(DataFusionError::from)?;
        let distances = distances
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| DataFusionError::Internal("SUGGEST: distances are not DOUBLE".into()))?;
        for (id, d) in ids.iter().zip(distances.iter()) {
            // Rows without an embedding (or with a zero one) have no distance.
            if let (Some(id), Some(d)) = (id, d)
                && d.is_finite()
                && let Ok(id) = u64::try_from(id)
            {
                found.push((id, d));
            }
        }
    }
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let found = found.into_iter().map(|(id, d)| (id, 1.0 - d)).collect();
    Ok(Planned {
        state,
        table,
        how: How::Nearest {
            found,
            plan: physical,
            spec: Box::new(Ranking {
                profile,
                marks,
                max_per_creator,
                explore,
                creator,
            }),
        },
    })
}

/// Whether the candidate query was served by an HNSW index (for EXPLAIN).
fn used_index(plan: &str) -> bool {
    plan.contains("HnswIndexScan")
}

/// The result of a SUGGEST: a batch (direct path, no vector) or a plan to run.
pub(crate) enum SuggestOutput {
    Rows(RecordBatch),
    Frame(DataFrame),
}

fn empty(table: &TableDef) -> Result<RecordBatch, SqlError> {
    let schema = crate::retrieve::fetch_schema(table, &[similarity_field()]);
    Ok(RecordBatch::new_empty(schema))
}

/// The RETRIEVE a user without a vector gets, with `similarity` NULL after `score`.
async fn fallback(session: &SqlSession, s: &Suggest, profile: &str) -> Result<DataFrame, SqlError> {
    let r = Retrieve {
        kind: s.kind,
        user: Some(s.user),
        profile: profile.to_string(),
        predicate: s.predicate.clone(),
        filters: s.filters.clone(),
        max_per_creator: s.max_per_creator,
        explore: s.explore,
        cohort: s.cohort.clone(),
        limit: s.limit,
        at: s.at,
    };
    let frame = crate::retrieve::plan_retrieve(session, &r).await?;
    let mut exprs: Vec<Expr> = frame
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    exprs.insert(3, lit(ScalarValue::Float64(None)).alias("similarity"));
    Ok(frame.select(exprs)?)
}

/// Runs a SUGGEST.
pub(crate) async fn run_suggest(
    session: &SqlSession,
    s: &Suggest,
) -> Result<SuggestOutput, SqlError> {
    let planned = plan(session, s).await?;
    match planned.how {
        How::NoVector => match &s.profile {
            Some(p) => Ok(SuggestOutput::Frame(fallback(session, s, p).await?)),
            None => Ok(SuggestOutput::Rows(empty(&planned.table)?)),
        },
        How::Nearest { found, spec, .. } => {
            if is_direct(s) {
                return Ok(SuggestOutput::Rows(direct_rows(
                    session,
                    &planned.table,
                    &found,
                )?));
            }
            let plan = ranked(&planned.state, s, &found, &spec).await?;
            let view = session.engine().read();
            let plan = match spec.explore {
                Some(_) => crate::explore::explored_last(crate::retrieve::FetchNode::plan(
                    plan,
                    view,
                    planned.table,
                    &[similarity_field(), crate::explore::explored_field()],
                )?)?,
                None => crate::retrieve::FetchNode::plan(
                    plan,
                    view,
                    planned.table,
                    &[similarity_field()],
                )?,
            };
            Ok(SuggestOutput::Frame(DataFrame::new(planned.state, plan)))
        }
    }
}

/// The ranked nearest candidates: `score = similarity`, then point reads of the rows.
fn direct_rows(
    session: &SqlSession,
    table: &TableDef,
    found: &[(u64, f64)],
) -> Result<RecordBatch, SqlError> {
    let view = session.engine().read();
    let n = found.len();
    let similarity = || {
        Arc::new(Float64Array::from_iter_values(
            found.iter().map(|(_, s)| *s),
        )) as ArrayRef
    };
    let input = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("rank", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float64, true),
            similarity_field(),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=n as i64)),
            Arc::new(Int64Array::from_iter_values(
                found.iter().map(|(id, _)| *id as i64),
            )),
            similarity(),
            similarity(),
        ],
    )
    .map_err(DataFusionError::from)?;
    let schema = crate::retrieve::fetch_schema(table, &[similarity_field()]);
    Ok(crate::retrieve::fetch_rows(
        &view,
        table,
        &["similarity".to_string()],
        &schema,
        &input,
    )?)
}

async fn ranked(
    state: &SessionState,
    s: &Suggest,
    found: &[(u64, f64)],
    spec: &Ranking,
) -> Result<LogicalPlan, SqlError> {
    let candidates = Candidates {
        scores: found.iter().copied().collect::<HashMap<u64, f64>>(),
        label: format!(
            "user {} nearest {} of {}",
            s.user,
            found.len(),
            candidate_count(s)
        ),
        score_label: format!("user {}", s.user),
        filter_function: "suggest_nearest",
        score_function: "suggest_similarity",
        column: "similarity",
    };
    let fused = FusedSpec {
        kind: s.kind,
        profile: spec.profile.as_ref(),
        predicate: s.predicate.as_deref(),
        user: Some(s.user),
        marks: &spec.marks,
        max_per_creator: spec.max_per_creator,
        fusion: s.fusion,
        limit: s.limit,
        explore: spec.explore,
        creator: spec.creator,
    };
    fused_plan(state, &fused, &candidates).await
}

/// `EXPLAIN [ANALYZE] SUGGEST`: how the candidates are found (the candidate query's
/// plan: `HnswIndexScan` when an index serves it), then how they are ranked.
pub(crate) async fn explain_suggest(
    session: &SqlSession,
    s: &Suggest,
    analyze: bool,
) -> Result<Vec<RecordBatch>, SqlError> {
    let t = std::time::Instant::now();
    let planned = plan(session, s).await?;
    let mut rows: Vec<(String, String)> = Vec::new();
    match &planned.how {
        How::NoVector => {
            rows.push((
                "suggest_candidates".into(),
                format!(
                    "user {} has no preference vector: {}",
                    s.user,
                    match &s.profile {
                        Some(p) => format!("the ranking of profile {p} (RETRIEVE) follows"),
                        None => "the result is empty".into(),
                    }
                ),
            ));
        }
        How::Nearest { found, plan, spec } => {
            let plan = displayable(plan.as_ref()).indent(true).to_string();
            rows.push((
                "suggest_candidates".into(),
                format!(
                    "nearest {} by cosine distance to user {}'s preference vector ({}; {} found)\n{plan}",
                    candidate_count(s),
                    s.user,
                    if used_index(&plan) {
                        "HNSW index"
                    } else {
                        "exact scan"
                    },
                    found.len(),
                ),
            ));
            if is_direct(s) {
                rows.push((
                    "suggest_rank".into(),
                    "score = similarity; Fetch: point reads of the ranked ids".into(),
                ));
            } else {
                let plan = ranked(&planned.state, s, found, spec).await?;
                let frame = DataFrame::new(planned.state.clone(), plan);
                let physical = frame.create_physical_plan().await?;
                rows.push((
                    "suggest_rank".into(),
                    displayable(physical.as_ref()).indent(true).to_string(),
                ));
            }
        }
    }
    let mut out = vec![explain_batch(&rows)?];
    if matches!(planned.how, How::NoVector)
        && let Some(p) = &s.profile
    {
        let frame = fallback(session, s, p).await?;
        for b in frame.explain(false, false)?.collect().await? {
            let text = |i: usize| -> Vec<String> {
                let c = b.column(i).as_any().downcast_ref::<StringArray>();
                c.map(|c| c.iter().map(|v| v.unwrap_or("").to_string()).collect())
                    .unwrap_or_default()
            };
            let pairs: Vec<(String, String)> = text(0).into_iter().zip(text(1)).collect();
            out.push(explain_batch(&pairs)?);
        }
    }
    if analyze {
        let n = match run_suggest(session, s).await? {
            SuggestOutput::Rows(b) => b.num_rows(),
            SuggestOutput::Frame(f) => f.collect().await?.iter().map(|b| b.num_rows()).sum(),
        };
        out.push(explain_batch(&[(
            "analyze".into(),
            format!(
                "ran: {n} rows; planning and running took {} µs",
                t.elapsed().as_micros()
            ),
        )])?);
    }
    Ok(out)
}

fn explain_batch(rows: &[(String, String)]) -> Result<RecordBatch, SqlError> {
    Ok(RecordBatch::try_new(
        crate::session::explain_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
        ],
    )
    .map_err(DataFusionError::from)?)
}

/// `preference(user)`: the user's preference vector (unit length), NULL before the
/// user's first move.
#[derive(Debug)]
pub struct PreferenceUdf {
    engine: Arc<Engine>,
    signature: Signature,
}

impl PreferenceUdf {
    pub fn new(engine: Arc<Engine>) -> PreferenceUdf {
        PreferenceUdf {
            engine,
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

impl PartialEq for PreferenceUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine)
    }
}
impl Eq for PreferenceUdf {}
impl Hash for PreferenceUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.engine).hash(state);
    }
}

impl ScalarUDFImpl for PreferenceUdf {
    fn name(&self) -> &str {
        "preference"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [t] if t.is_integer() => Ok(vec![DataType::Int64]),
            [DataType::Null] => Ok(vec![DataType::Null]),
            _ => Err(bad_arg(
                "preference",
                "preference(user) takes one BIGINT user id",
            )),
        }
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(unsized_vector_type())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let view = self.engine.read();
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = datafusion::arrow::compute::cast(&ids, &DataType::Int64)?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("preference: ids are not BIGINT".into()))?;
        let item = match unsized_vector_type() {
            DataType::List(f) => f,
            _ => {
                return Err(DataFusionError::Internal(
                    "vector type is not a list".into(),
                ));
            }
        };
        let mut out = ListBuilder::new(Float32Builder::new()).with_field(item);
        for id in ids.iter() {
            let v = match id.and_then(EntityId::from_i64) {
                Some(u) => view.preference(u).map_err(engine_err)?,
                None => None,
            };
            match v {
                Some(v) => {
                    out.values().append_slice(&v);
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(array),
        })
    }
}

/// `preference_similarity(embedding, 'vector')`: what `similarity()` in a profile
/// becomes for a user with a vector: the cosine similarity of the two, 0 for a NULL or
/// zero embedding or one of another dimension.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PreferenceSimilarityUdf {
    signature: Signature,
}

impl Default for PreferenceSimilarityUdf {
    fn default() -> Self {
        PreferenceSimilarityUdf {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PreferenceSimilarityUdf {
    fn name(&self) -> &str {
        "preference_similarity"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !(crate::vector::is_vector_value_type(&args[0]) || args[0] == DataType::Null) {
            return Err(bad_arg(
                "preference_similarity",
                format!("the first argument must be a vector, not {}", args[0]),
            ));
        }
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let q = match &args.args[1] {
            ColumnarValue::Scalar(v) => match v.try_as_str().flatten() {
                Some(t) => parse_vector(t)?,
                None => {
                    return Err(bad_arg(
                        "preference_similarity",
                        "the preference vector must be a constant vector literal",
                    ));
                }
            },
            ColumnarValue::Array(_) => {
                return Err(bad_arg(
                    "preference_similarity",
                    "the preference vector must be a constant vector literal",
                ));
            }
        };
        let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        let rows = Vectors::of(&args.args[0], "preference_similarity")?;
        let n = args.number_rows;
        let out: Float64Array = (0..n)
            .map(|i| {
                let Some(e) = rows.get(i) else {
                    return Some(0.0);
                };
                if e.len() != q.len() || qn == 0.0 {
                    return Some(0.0);
                }
                let (mut dot, mut ee) = (0.0f32, 0.0f32);
                for (a, b) in e.iter().zip(&q) {
                    dot += a * b;
                    ee += a * a;
                }
                if ee == 0.0 {
                    return Some(0.0);
                }
                Some(f64::from(dot) / (f64::from(ee.sqrt()) * f64::from(qn)))
            })
            .collect();
        if let ColumnarValue::Scalar(_) = &args.args[0] {
            return Ok(ColumnarValue::Scalar(ScalarValue::Float64(
                out.iter().next().flatten(),
            )));
        }
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
