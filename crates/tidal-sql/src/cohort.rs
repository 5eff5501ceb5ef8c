//! Cohorts in SQL (SQL.md §9): `WITHIN COHORT dim = 'v' [AND …]` on RETRIEVE, SEARCH
//! and SUGGEST, the `cohort_windows` state table and the `cohorts` catalogue view.
//!
//! Under `WITHIN COHORT`, binding a profile rewrites each signal function call into a
//! cohort read, and the plan says which kind:
//!
//! * `cohort_signal(fn, signal, id, window, scope, at)` — the conditions are exactly a
//!   declared dimension (a column, or a composite over exactly those columns): the
//!   function reads that cohort's state, with the same math and precision as global
//!   state.
//! * `cohort_estimate(fn, signal, id, window, scope, at)` — a conjunction nobody
//!   declared as a composite: per entity `x(a ∧ b …) ≈ x(a) · x(b) … / x(global)^(k−1)`
//!   (independence; 0 where the global value is 0), each factor an exact single-column
//!   cohort read. `last_signal_at` there is the earliest of the single cohorts' newest
//!   events (the conjunction's newest event is no later), NULL if any is empty.
//!
//! Both gather a whole batch per call: global ordinals from the ordinal memo, mapped to
//! the cohort's ordinals through one cached dense array (`tidal_engine::CohortRead`),
//! then the ledger's vectorized readers — no per-row hash lookups over the catalogue.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use tidal_core::{CoreError, EntityId, SignalDef, Timestamp, Window};
use tidal_engine::{CohortRead, Engine};
use tidal_ledger::Ledger;

use crate::SqlError;
use crate::error::{bad_arg, engine_err};
use crate::statement::{found, ident, syntax};
use crate::udf::{OrdinalMemo, SignalFn, read_ords};

/// The state table of cohort windows.
pub const COHORT_WINDOWS_TABLE: &str = "cohort_windows";
/// The catalogue view of cohort dimensions.
pub const COHORTS_TABLE: &str = "cohorts";
/// An exact cohort read (see the module docs).
pub(crate) const COHORT_SIGNAL_FUNCTION: &str = "cohort_signal";
/// An independence estimate over single-column cohorts.
pub(crate) const COHORT_ESTIMATE_FUNCTION: &str = "cohort_estimate";
/// Most conditions in one WITHIN COHORT.
pub const COHORT_SCOPE_TERMS_MAX: usize = 8;

/// `WITHIN COHORT region = 'US' AND age_group = '18-24'`: users columns (lower-case)
/// and the value each must have, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortScope {
    pub terms: Vec<(String, String)>,
}

impl CohortScope {
    /// The predicate after `WITHIN COHORT`: `column = value` joined by AND, values a
    /// string, a whole number or a boolean.
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<CohortScope, SqlError> {
        let mut terms: Vec<(String, String)> = Vec::new();
        loop {
            let column = ident(p, "a users column")?;
            match p.next_token().token {
                Token::Eq => {}
                t => {
                    return Err(syntax(format!(
                        "WITHIN COHORT takes column = 'value' conditions joined by AND, found \
                         \"{t}\" after {column}"
                    )));
                }
            }
            let negative = p.peek_token_ref().token == Token::Minus;
            if negative {
                p.next_token();
            }
            let value = match p.next_token().token {
                Token::SingleQuotedString(s) if !negative => s,
                Token::Number(n, _) if n.parse::<i64>().is_ok() => {
                    if negative {
                        format!("-{n}")
                    } else {
                        n
                    }
                }
                Token::Word(w)
                    if !negative
                        && w.quote_style.is_none()
                        && matches!(w.value.to_ascii_lowercase().as_str(), "true" | "false") =>
                {
                    w.value.to_ascii_lowercase()
                }
                t => {
                    return Err(syntax(format!(
                        "WITHIN COHORT {column} = needs a quoted value, a whole number or a \
                         boolean, found \"{t}\""
                    )));
                }
            };
            if terms.iter().any(|(c, _)| *c == column) {
                return Err(SqlError::from(CoreError::BadCohortScope {
                    reason: format!("column {column} is given twice"),
                }));
            }
            terms.push((column, value));
            if terms.len() > COHORT_SCOPE_TERMS_MAX {
                return Err(SqlError::from(CoreError::BadCohortScope {
                    reason: format!("at most {COHORT_SCOPE_TERMS_MAX} conditions"),
                }));
            }
            if crate::statement::is_word(&p.peek_token_ref().token, "AND") {
                p.next_token();
                continue;
            }
            if terms.is_empty() {
                return Err(syntax(format!(
                    "expected a WITHIN COHORT condition, found {}",
                    found(p)
                )));
            }
            return Ok(CohortScope { terms });
        }
    }

    /// The scope as the UDF argument: `column=len:value` joined by `;` (lengths make
    /// any value text safe).
    fn encode(&self) -> String {
        self.terms
            .iter()
            .map(|(c, v)| format!("{c}={}:{v}", v.len()))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn decode(mut s: &str) -> Option<CohortScope> {
        let mut terms = Vec::new();
        while !s.is_empty() {
            let (column, rest) = s.split_once('=')?;
            let (len, rest) = rest.split_once(':')?;
            let len: usize = len.parse().ok()?;
            let value = rest.get(..len)?;
            terms.push((column.to_string(), value.to_string()));
            s = rest.get(len..)?;
            s = s.strip_prefix(';').unwrap_or(s);
        }
        Some(CohortScope { terms })
    }

    /// `region = 'US' AND age_group = '18-24'`.
    pub fn sql(&self) -> String {
        self.terms
            .iter()
            .map(|(c, v)| format!("{c} = '{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// How a signal's functions read under a scope.
#[derive(Debug, Clone, PartialEq)]
enum Resolution {
    /// Declared dimension `dim`; values in the dimension's column order.
    Exact { dim: usize, values: Vec<String> },
    /// Single-column dimensions and their values.
    Estimate(Vec<(usize, String)>),
}

fn resolve(def: &SignalDef, scope: &CohortScope) -> Result<Resolution, CoreError> {
    let bad = |reason: String| CoreError::BadCohortScope { reason };
    if def.cohorts.is_empty() {
        return Err(bad(format!(
            "signal {} declares no COHORTS, so it has no state per cohort (add COHORTS (...) \
             to CREATE SIGNAL)",
            def.name
        )));
    }
    let declared = || {
        def.cohorts
            .iter()
            .map(|d| d.sql())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let columns: Vec<&str> = scope.terms.iter().map(|(c, _)| c.as_str()).collect();
    if let Some(dim) = def.cohort_index(&columns) {
        let values = def.cohorts[dim]
            .columns
            .iter()
            .map(|c| {
                scope
                    .terms
                    .iter()
                    .find(|(t, _)| t == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect();
        return Ok(Resolution::Exact { dim, values });
    }
    let mut singles = Vec::new();
    for (c, v) in &scope.terms {
        let Some(dim) = def.cohort_index(&[c.as_str()]) else {
            return Err(bad(format!(
                "signal {} has no cohort dimension {c} (declared: {})",
                def.name,
                declared()
            )));
        };
        singles.push((dim, v.clone()));
    }
    Ok(Resolution::Estimate(singles))
}

/// The cohort read replacing a bound signal function call under `scope` (see the
/// module docs): `args` are the bound call's (signal, id, [window], [at]).
pub(crate) fn scoped_call(
    f: SignalFn,
    def: &SignalDef,
    window: Option<&str>,
    scope: &CohortScope,
    at: Option<&SqlExpr>,
) -> Result<SqlExpr, SqlError> {
    let function = match resolve(def, scope)? {
        Resolution::Exact { .. } => COHORT_SIGNAL_FUNCTION,
        Resolution::Estimate(_) => COHORT_ESTIMATE_FUNCTION,
    };
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let text = format!(
        "{function}({}, {}, id, {}, {}, {})",
        q(f.name()),
        q(&def.name),
        window.map_or_else(|| "CAST(NULL AS VARCHAR)".to_string(), q),
        q(&scope.encode()),
        at.map_or_else(|| "now()".to_string(), |e| e.to_string()),
    );
    crate::profile::parse_expr(&text)
}

/// `cohort_signal` / `cohort_estimate` (see the module docs). Only binding writes
/// calls to them; the arguments are constants but the entity.
#[derive(Debug)]
pub struct CohortSignalUdf {
    estimate: bool,
    engine: Arc<Engine>,
    signature: Signature,
    memo: Arc<OrdinalMemo>,
}

impl CohortSignalUdf {
    pub(crate) fn new(estimate: bool, engine: Arc<Engine>, memo: Arc<OrdinalMemo>) -> Self {
        CohortSignalUdf {
            estimate,
            engine,
            signature: Signature::user_defined(Volatility::Stable),
            memo,
        }
    }

    pub(crate) fn pair(engine: &Arc<Engine>, memo: &Arc<OrdinalMemo>) -> [ScalarUDF; 2] {
        [false, true].map(|e| {
            ScalarUDF::new_from_impl(CohortSignalUdf::new(e, engine.clone(), memo.clone()))
        })
    }

    fn what(&self) -> &'static str {
        if self.estimate {
            COHORT_ESTIMATE_FUNCTION
        } else {
            COHORT_SIGNAL_FUNCTION
        }
    }
}

impl PartialEq for CohortSignalUdf {
    fn eq(&self, other: &Self) -> bool {
        self.estimate == other.estimate && Arc::ptr_eq(&self.engine, &other.engine)
    }
}

impl Eq for CohortSignalUdf {}

impl Hash for CohortSignalUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.estimate.hash(state);
        Arc::as_ptr(&self.engine).hash(state);
    }
}

fn scalar_str(v: &ColumnarValue) -> Option<Option<&str>> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => Some(s.as_deref()),
        ColumnarValue::Scalar(ScalarValue::Null) => Some(None),
        _ => None,
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

impl ScalarUDFImpl for CohortSignalUdf {
    fn name(&self) -> &str {
        self.what()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 6 {
            return Err(bad_arg(
                self.what(),
                "takes (function, signal, entity, window, scope, at); WITHIN COHORT writes it",
            ));
        }
        Ok(vec![
            DataType::Utf8,
            DataType::Utf8,
            DataType::Int64,
            DataType::Utf8,
            DataType::Utf8,
            ts_type(),
        ])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let last = matches!(
            args.scalar_arguments.first(),
            Some(Some(ScalarValue::Utf8(Some(f)))) if f == SignalFn::Last.name()
        );
        let ty = if last { ts_type() } else { DataType::Float64 };
        Ok(Arc::new(Field::new(self.what(), ty, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let what = self.what();
        let n = args.number_rows;
        let text = |i: usize| scalar_str(&args.args[i]);
        let f = text(0)
            .flatten()
            .and_then(|name| SignalFn::ALL.into_iter().find(|f| f.name() == name))
            .ok_or_else(|| bad_arg(what, "the function must be a signal function's name"))?;
        let signal = text(1)
            .flatten()
            .ok_or_else(|| bad_arg(what, "the signal must be a constant name"))?;
        let window = text(3).ok_or_else(|| bad_arg(what, "the window must be a constant"))?;
        let scope = text(4)
            .flatten()
            .and_then(CohortScope::decode)
            .ok_or_else(|| bad_arg(what, "the scope must be a constant WITHIN COHORT scope"))?;
        let at = match &args.args[5] {
            ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(t), _)) => Timestamp(*t),
            ColumnarValue::Scalar(s) if s.is_null() => self.engine.now(),
            _ => return Err(bad_arg(what, "WITHIN COHORT reads at one instant")),
        };
        let view = self.engine.read();
        let def = view.signal(signal).map_err(engine_err)?.clone();
        let w = match window {
            Some(w) => Window::parse(w).map_err(engine_err)?,
            None => Window::All,
        };
        let resolution = resolve(&def, &scope).map_err(engine_err)?;
        let entities = args.args[2].to_array(n)?;
        let entities = entities
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad_arg(what, "the entity must be a BIGINT id"))?;
        let ids: Vec<EntityId> = entities
            .iter()
            .map(|v| EntityId(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(u64::MAX)))
            .collect();
        if matches!(f, SignalFn::WindowCount | SignalFn::Velocity) {
            view.prepare_window_sums();
            view.prepare_cohort_window_sums(def.id);
        }
        let out = view.with_cohorts(|r| {
            let gords = self.memo.ordinals(r.global(), def.kind, entities, &ids);
            Batch {
                r,
                f,
                def: &def,
                w,
                gords: &gords,
                at,
            }
            .evaluate(&resolution)
        });
        let nulls = entities.nulls().cloned();
        Ok(ColumnarValue::Array(match out {
            Values::Numbers(v) => Arc::new(Float64Array::new(v.into(), nulls)) as ArrayRef,
            Values::Times(t) => {
                let arr: TimestampMicrosecondArray = t
                    .iter()
                    .enumerate()
                    .map(|(i, t)| if entities.is_null(i) { None } else { *t })
                    .collect();
                Arc::new(arr)
            }
        }))
    }
}

enum Values {
    Numbers(Vec<f64>),
    Times(Vec<Option<i64>>),
}

/// One batch of a cohort read: the function, its signal and instant, and the batch's
/// global ordinals.
struct Batch<'a> {
    r: &'a CohortRead<'a>,
    f: SignalFn,
    def: &'a SignalDef,
    w: Window,
    gords: &'a [u32],
    at: Timestamp,
}

impl Batch<'_> {
    /// One cohort's values for the batch (zeros / None when the cohort is empty).
    fn cohort(&self, dim: usize, values: &[&str]) -> Values {
        let (r, def, n) = (self.r, self.def, self.gords.len());
        let key = r.state.key(def.id, dim, values);
        let mut cords = Vec::new();
        let ledger: Option<&Ledger> = match key {
            Some(k) => {
                r.map_ords(def.id, dim, k, def.kind, self.gords, &mut cords);
                r.state.ledger(def.id, dim, k)
            }
            None => None,
        };
        match (ledger, self.f) {
            (None, SignalFn::Last) => Values::Times(vec![None; n]),
            (None, _) => Values::Numbers(vec![0.0; n]),
            (Some(l), SignalFn::Last) => {
                let mut out = Vec::with_capacity(n);
                l.last_ords(def.id, &cords, &mut out);
                Values::Times(out.into_iter().map(|t| t.map(|t| t.0)).collect())
            }
            (Some(l), f) => {
                let mut out = Vec::with_capacity(n);
                read_ords(l, f, def.id, self.w, &cords, self.at, &mut out);
                Values::Numbers(out)
            }
        }
    }

    fn evaluate(&self, resolution: &Resolution) -> Values {
        let n = self.gords.len();
        match resolution {
            Resolution::Exact { dim, values } => {
                let v: Vec<&str> = values.iter().map(String::as_str).collect();
                self.cohort(*dim, &v)
            }
            Resolution::Estimate(singles) => {
                let parts: Vec<Values> = singles
                    .iter()
                    .map(|(dim, v)| self.cohort(*dim, &[v.as_str()]))
                    .collect();
                if self.f == SignalFn::Last {
                    let mut out: Vec<Option<i64>> = vec![Some(i64::MAX); n];
                    for p in parts {
                        if let Values::Times(t) = p {
                            for (o, t) in out.iter_mut().zip(t) {
                                *o = match (*o, t) {
                                    (Some(a), Some(b)) => Some(a.min(b)),
                                    _ => None,
                                };
                            }
                        }
                    }
                    return Values::Times(out);
                }
                let mut global = Vec::with_capacity(n);
                let def = self.def;
                read_ords(
                    self.r.global(),
                    self.f,
                    def.id,
                    self.w,
                    self.gords,
                    self.at,
                    &mut global,
                );
                let k = parts.len() as i32;
                let mut out = vec![1.0; n];
                for p in parts {
                    if let Values::Numbers(v) = p {
                        for (o, x) in out.iter_mut().zip(v) {
                            *o *= x;
                        }
                    }
                }
                for (o, g) in out.iter_mut().zip(global) {
                    *o = if g == 0.0 { 0.0 } else { *o / g.powi(k - 1) };
                }
                Values::Numbers(out)
            }
        }
    }
}

/// `cohort_windows(entity_id, signal, dimension, value, window, count, velocity)` and
/// `cohorts(signal, dimension, distinct_values, active_pairs, bytes)`.
#[derive(Debug)]
pub struct CohortTable {
    engine: Arc<Engine>,
    windows: bool,
    schema: SchemaRef,
}

impl CohortTable {
    pub fn windows(engine: Arc<Engine>) -> CohortTable {
        CohortTable {
            engine,
            windows: true,
            schema: Arc::new(Schema::new(vec![
                Field::new("entity_id", DataType::Int64, false),
                Field::new("signal", DataType::Utf8, false),
                Field::new("dimension", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, false),
                Field::new("window", DataType::Utf8, false),
                Field::new("count", DataType::Float64, false),
                Field::new("velocity", DataType::Float64, true),
            ])),
        }
    }

    pub fn catalogue(engine: Arc<Engine>) -> CohortTable {
        CohortTable {
            engine,
            windows: false,
            schema: Arc::new(Schema::new(vec![
                Field::new("signal", DataType::Utf8, false),
                Field::new("dimension", DataType::Utf8, false),
                Field::new("distinct_values", DataType::Int64, false),
                Field::new("active_pairs", DataType::Int64, false),
                Field::new("bytes", DataType::Int64, false),
            ])),
        }
    }

    fn catalogue_batch(&self) -> Result<RecordBatch> {
        let view = self.engine.read();
        let stats = view.with_cohorts(|r| r.state.stats());
        let col = |f: &dyn Fn(&tidal_engine::CohortStats) -> i64| -> ArrayRef {
            Arc::new(stats.iter().map(f).collect::<Int64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                stats
                    .iter()
                    .map(|s| Some(s.signal.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                stats
                    .iter()
                    .map(|s| Some(s.dimension.as_str()))
                    .collect::<StringArray>(),
            ),
            col(&|s| s.values as i64),
            col(&|s| s.active_pairs as i64),
            col(&|s| s.bytes as i64),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Rows of the cohorts of signals named in `signals` (all when `None`).
    fn windows_batch(
        &self,
        at: Timestamp,
        signals: Option<&BTreeSet<String>>,
    ) -> Result<RecordBatch> {
        let view = self.engine.read();
        let (mut ids, mut names, mut dims, mut values, mut windows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut counts, mut velocities) = (Vec::new(), Vec::new());
        view.with_cohorts(|r| {
            for c in r.state.each_cohort() {
                if signals.is_some_and(|s| !s.contains(&c.signal.name)) {
                    continue;
                }
                let Some(cols) = c.ledger.columns(c.signal.id) else {
                    continue;
                };
                let entities = c.ledger.entities(c.signal.kind);
                let active: Vec<EntityId> = cols
                    .last_ts
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| **t != tidal_ledger::NO_EVENT_TS)
                    .filter_map(|(o, _)| entities.get(o).copied())
                    .collect();
                let value = r.state.values_of(c.signal.id, c.dim_index, c.key).join(",");
                let dimension = c.dimension.name();
                let mut out = Vec::with_capacity(active.len());
                let mut vel = Vec::with_capacity(active.len());
                for &w in &c.signal.windows {
                    c.ledger
                        .window_count_batch(c.signal.id, &active, w, at, &mut out);
                    vel.clear();
                    if w != Window::All {
                        c.ledger
                            .velocity_batch(c.signal.id, &active, w, at, &mut vel);
                    }
                    for (i, e) in active.iter().enumerate() {
                        ids.push(e.0 as i64);
                        names.push(c.signal.name.clone());
                        dims.push(dimension.clone());
                        values.push(value.clone());
                        windows.push(w.to_string());
                        counts.push(out[i]);
                        velocities.push(vel.get(i).copied());
                    }
                }
            }
        });
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(dims)),
            Arc::new(StringArray::from(values)),
            Arc::new(StringArray::from(windows)),
            Arc::new(Float64Array::from(counts)),
            Arc::new(Float64Array::from(velocities)),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The signal names an equality filter `signal = 'x'` (or `IN`) allows, for pruning.
fn signal_filter(filters: &[Expr]) -> Option<BTreeSet<String>> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    for f in filters {
        if let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = f
        {
            let (c, v) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                    (c, v)
                }
                _ => continue,
            };
            if c.name == "signal"
                && let ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) = v
            {
                return Some(BTreeSet::from([s.to_ascii_lowercase()]));
            }
        }
    }
    None
}

#[async_trait]
impl TableProvider for CohortTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        // Inexact: the signal filter prunes cohorts, DataFusion still applies it.
        Ok(vec![
            datafusion::logical_expr::TableProviderFilterPushDown::Inexact;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = if self.windows {
            let at = state
                .execution_props()
                .query_execution_start_time
                .map_or_else(|| self.engine.now(), |t| Timestamp(t.timestamp_micros()));
            self.windows_batch(at, signal_filter(filters).as_ref())?
        } else {
            self.catalogue_batch()?
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_text_round_trips_any_value() {
        let s = CohortScope {
            terms: vec![
                ("region".into(), "US;x=3:y".into()),
                ("age_group".into(), "".into()),
                ("lang".into(), "été's".into()),
            ],
        };
        assert_eq!(CohortScope::decode(&s.encode()), Some(s));
        assert_eq!(CohortScope::decode("region=9:US"), None);
    }
}
