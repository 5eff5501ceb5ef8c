//! Approximate nearest-neighbour search through HNSW indexes: `ORDER BY <distance>
//! LIMIT k` over an entity table with a matching index becomes an index search.
//!
//! [`AnnRule`] (a logical optimizer rule, run after DataFusion's own) looks for
//! `Sort(fetch = k)` over projections and filters down to a table scan, whose single
//! sort key is a distance between the scan's vector column and a constant, ascending
//! (`<->` with `vector_l2_ops`, `<=>` with `vector_cosine_ops`, `<#>` with
//! `vector_ip_ops`; `inner_product(..) DESC` also uses an ip index). It swaps the scan's
//! source for an [`AnnTable`], whose scan reads only the rows the index returns.
//! Everything above stays as planned: the filters are still applied, and distances and
//! the final order are computed exactly from the stored vectors (the index only chooses
//! candidates).
//!
//! A `WHERE` filter runs inside the search: [`AnnScanExec`] first evaluates it over the
//! table (its own child plan, reading only the filter's columns) into a set of passing
//! ids, then either searches the graph with that set as the predicate, or, when so few
//! rows pass that reading them is cheaper than walking the graph past the others,
//! returns all passing rows for the exact computation above. If the graph search yields
//! fewer than k rows while at least k pass, the passing rows are searched exactly, so k
//! rows come back whenever k rows pass.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{Int64Type, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigExtension;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, TableReference};
use datafusion::datasource::{TableType, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, Sort, TableProviderFilterPushDown, TableScan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, create_physical_expr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use tidal_core::VectorMetric;
use tidal_engine::TableVector;
use tidal_engine::roaring::RoaringTreemap;

use crate::provider::EntityTable;
use crate::retrieve::DenseIds;

/// The default `hnsw.ef_search`. pgvector's is 40; SQL.md §7 asks recall@10 ≥ 0.95 at
/// the default, and on real sentence embeddings (all-MiniLM-L6-v2 over 63 k titles,
/// m = 16, ef_construction = 64) 40 gave 0.924 and 100 gave 0.951 (docs/benchmarks.md).
pub const HNSW_EF_SEARCH_DEFAULT: usize = 100;
/// [`HNSW_EF_SEARCH_DEFAULT`] as `SHOW hnsw.ef_search` prints it.
pub const HNSW_EF_SEARCH_DEFAULT_TEXT: &str = "100";
/// pgvector's bounds for `hnsw.ef_search`.
pub const HNSW_EF_SEARCH_MAX: usize = 1000;
/// How many graph visits one row read costs, roughly: with `p` rows passing a filter
/// out of `n`, the filtered graph search visits about `ef·n/p` nodes while the exact
/// path reads `p` rows, so the exact path is chosen when `p² · ratio ≤ ef · n`.
pub const VECTOR_EXACT_COST_RATIO: f64 = 16.0;
/// Most passing rows the exact path reads when the filtered graph search came back
/// short of k (beyond it, the rows the graph found are returned).
pub const VECTOR_EXACT_FALLBACK_ROWS_MAX: u64 = 200_000;
/// While at most this many rows pass a WHERE filter, their distances are computed
/// exactly from the filter pass's (cached) vector column, and the graph is not searched:
/// ~0.3 µs a row for 384 dimensions, less than a filtered graph search that must skip
/// the many rows that do not pass.
pub const VECTOR_EXACT_PASSING_ROWS_MAX: usize = 10_000;

datafusion::common::extensions_options! {
    /// `SET hnsw.ef_search = n`: candidates an HNSW search keeps (at least the LIMIT).
    pub struct HnswOptions {
        pub ef_search: usize, default = HNSW_EF_SEARCH_DEFAULT
    }
}

impl ConfigExtension for HnswOptions {
    const PREFIX: &'static str = "hnsw";
}

tokio::task_local! {
    /// A per-connection `hnsw.ef_search` (the server's sessions share one context).
    static EF_SEARCH: usize;
}

/// Runs `fut` (which plans a statement) with `hnsw.ef_search` set to `ef_search` for
/// the queries it plans, whatever the context's own setting.
pub async fn with_ef_search<F: Future>(ef_search: Option<usize>, fut: F) -> F::Output {
    match ef_search {
        Some(ef) => EF_SEARCH.scope(ef, fut).await,
        None => fut.await,
    }
}

/// Checks a value for `hnsw.ef_search` (pgvector's range and message).
pub fn parse_ef_search(value: &str) -> std::result::Result<usize, String> {
    let v = value.trim().trim_matches('\'');
    match v.parse::<i64>() {
        Ok(n) if (1..=HNSW_EF_SEARCH_MAX as i64).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!(
            "{n} is outside the valid range for parameter \"hnsw.ef_search\" (1 .. {HNSW_EF_SEARCH_MAX})"
        )),
        Err(_) => Err(format!(
            "invalid value for parameter \"hnsw.ef_search\": \"{v}\""
        )),
    }
}

/// Refuses `SET hnsw.ef_search` to a value out of range before DataFusion stores it;
/// returns the statement to run instead of `RESET hnsw.ef_search` (which DataFusion
/// does not know for extension settings).
pub(crate) fn check_setting(sql: &str) -> std::result::Result<Option<String>, crate::SqlError> {
    let lower = sql.trim().trim_end_matches(';').trim().to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("reset")
        && rest.trim() == "hnsw.ef_search"
    {
        return Ok(Some(format!(
            "SET hnsw.ef_search = {HNSW_EF_SEARCH_DEFAULT}"
        )));
    }
    let Some(rest) = lower.strip_prefix("set") else {
        return Ok(None);
    };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("session ").unwrap_or(rest).trim_start();
    let Some(value) = rest.strip_prefix("hnsw.ef_search") else {
        return Ok(None);
    };
    let value = value.trim_start();
    let value = value
        .strip_prefix('=')
        .or_else(|| value.strip_prefix("to "))
        .unwrap_or(value);
    parse_ef_search(value)
        .map(|_| None)
        .map_err(|reason| crate::SqlError::BadArgument {
            function: "SET",
            reason,
        })
}

fn ef_search(config: &dyn OptimizerConfig) -> usize {
    EF_SEARCH.try_with(|v| *v).unwrap_or_else(|_| {
        config
            .options()
            .extensions
            .get::<HnswOptions>()
            .map_or(HNSW_EF_SEARCH_DEFAULT, |o| o.ef_search)
    })
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct AnnRule;

/// What a matched `ORDER BY <distance> LIMIT k` asks for.
struct Matched {
    column: String,
    metric: VectorMetric,
    query: Vec<f32>,
    filter: Option<Expr>,
}

impl OptimizerRule for AnnRule {
    fn name(&self) -> &str {
        "tidal_hnsw_search"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let ef = ef_search(config).clamp(1, HNSW_EF_SEARCH_MAX);
        plan.transform_down(|node| {
            let LogicalPlan::Sort(sort) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(k) = sort.fetch else {
                return Ok(Transformed::no(node));
            };
            let Some((scan, m)) = match_sort(sort)? else {
                return Ok(Transformed::no(node));
            };
            let provider = source_as_provider(&scan.source)?;
            let Some(table) = provider.downcast_ref::<EntityTable>() else {
                return Ok(Transformed::no(node));
            };
            let view = table.engine().read();
            let Some(index) = view
                .vector_indexes(table.def().kind)
                .into_iter()
                .find(|t| t.def.column == m.column && t.def.metric == m.metric)
            else {
                return Ok(Transformed::no(node));
            };
            // A query of the wrong dimension is left to the exact path, which reports it.
            if m.query.len() != index.index.spec().dimensions {
                return Ok(Transformed::no(node));
            }
            let ann = Arc::new(AnnTable {
                base: table.clone(),
                table_name: scan.table_name.clone(),
                index,
                query: Arc::new(m.query),
                k,
                ef_search: ef,
                filter: m.filter,
            });
            let LogicalPlan::Sort(sort) = node else {
                return Ok(Transformed::no(node));
            };
            let input = Arc::unwrap_or_clone(sort.input).transform_down(|n| match n {
                LogicalPlan::TableScan(ts) => Ok(Transformed::new(
                    LogicalPlan::TableScan(TableScan {
                        source: provider_as_source(ann.clone()),
                        ..ts
                    }),
                    true,
                    TreeNodeRecursion::Stop,
                )),
                other => Ok(Transformed::no(other)),
            })?;
            Ok(Transformed::new(
                LogicalPlan::Sort(Sort {
                    expr: sort.expr,
                    input: Arc::new(input.data),
                    fetch: sort.fetch,
                }),
                true,
                TreeNodeRecursion::Jump,
            ))
        })
    }
}

/// The table scan under `sort` and what the sort asks for, if the sort is an HNSW
/// candidate: one ascending distance key between a scan column and a constant, over
/// a chain of projections and filters (filters only below every projection).
fn match_sort(sort: &Sort) -> Result<Option<(TableScan, Matched)>> {
    let [key] = sort.expr.as_slice() else {
        return Ok(None);
    };
    // Casts of the query vector (a bound `$1` is one) are rewritten under an alias that
    // keeps the column name; the alias says nothing about the order.
    let mut expr = key.expr.clone().unalias_nested().data;
    let mut plan = sort.input.as_ref();
    let mut filters = Vec::new();
    loop {
        match plan {
            LogicalPlan::Projection(p) => {
                if !filters.is_empty() {
                    // A filter above a projection would need rewriting through it.
                    return Ok(None);
                }
                let columns = p.schema.columns();
                expr = expr
                    .transform(|e| match &e {
                        Expr::Column(c) => match columns.iter().position(|o| o == c) {
                            Some(i) => Ok(Transformed::yes(p.expr[i].clone().unalias())),
                            None => Ok(Transformed::no(e)),
                        },
                        _ => Ok(Transformed::no(e)),
                    })?
                    .data;
                plan = p.input.as_ref();
            }
            LogicalPlan::Filter(f) => {
                if f.predicate.exists(|e| {
                    Ok(matches!(
                        e,
                        Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_)
                    ) || e.is_volatile())
                })? {
                    return Ok(None);
                }
                filters.push(f.predicate.clone());
                plan = f.input.as_ref();
            }
            LogicalPlan::TableScan(ts) => {
                let Some((column, metric, query)) = distance_key(&expr, key.asc, ts)? else {
                    return Ok(None);
                };
                return Ok(Some((
                    ts.clone(),
                    Matched {
                        column,
                        metric,
                        query,
                        filter: conjunction(filters),
                    },
                )));
            }
            _ => return Ok(None),
        }
    }
}

/// `distance(column, constant)` (either order) in the direction an index serves.
fn distance_key(
    expr: &Expr,
    asc: bool,
    scan: &TableScan,
) -> Result<Option<(String, VectorMetric, Vec<f32>)>> {
    let Expr::ScalarFunction(f) = expr else {
        return Ok(None);
    };
    let metric = match (f.func.name(), asc) {
        ("l2_distance", true) => VectorMetric::L2,
        ("cosine_distance", true) => VectorMetric::Cosine,
        ("vector_negative_inner_product", true) | ("inner_product", false) => {
            VectorMetric::InnerProduct
        }
        _ => return Ok(None),
    };
    let [a, b] = f.args.as_slice() else {
        return Ok(None);
    };
    let (column, constant) = match (a, b) {
        (Expr::Column(c), other) | (other, Expr::Column(c)) if constant_expr(other) => (c, other),
        _ => return Ok(None),
    };
    if column
        .relation
        .as_ref()
        .is_some_and(|r| !r.resolved_eq(&scan.table_name))
    {
        return Ok(None);
    }
    let Some(query) = constant_vector(constant)? else {
        return Ok(None);
    };
    Ok(Some((column.name.to_ascii_lowercase(), metric, query)))
}

fn constant_expr(e: &Expr) -> bool {
    !e.exists(|x| {
        Ok(matches!(
            x,
            Expr::Column(_) | Expr::Placeholder(_) | Expr::OuterReferenceColumn(..)
        ) || x.is_volatile())
    })
    .unwrap_or(true)
}

/// Evaluates a constant vector expression (a literal, a cast, a parameter bound as
/// text); `None` if it is not a vector.
fn constant_vector(e: &Expr) -> Result<Option<Vec<f32>>> {
    let props = ExecutionProps::new();
    let phys = create_physical_expr(
        e,
        &DFSchema::empty(),
        &props,
        &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default(),
    )?;
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let value = phys.evaluate(&batch)?;
    let Ok(v) = crate::vector::Vectors::of(&value, "ORDER BY") else {
        return Ok(None);
    };
    Ok(v.get(0).map(<[f32]>::to_vec))
}

/// An entity table whose scan reads only the rows an HNSW search picks.
#[derive(Debug)]
pub struct AnnTable {
    base: EntityTable,
    table_name: TableReference,
    index: Arc<TableVector>,
    query: Arc<Vec<f32>>,
    k: usize,
    ef_search: usize,
    /// The WHERE conjunction above the scan, in the scan's columns.
    filter: Option<Expr>,
}

#[async_trait]
impl TableProvider for AnnTable {
    fn schema(&self) -> SchemaRef {
        self.base.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.base.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.base.def().columns.len()).collect();
        let projection = projection.unwrap_or(&all).clone();
        let schema = Arc::new(self.base.schema().project(&projection)?);
        // The filter pass: the table's id and filter columns, filtered, as ids.
        let passing = match &self.filter {
            None => None,
            Some(filter) => {
                let full = self.base.schema();
                // The vector column rides along, so that when few rows pass their
                // distances are computed right here from the cached columns.
                let mut cols: BTreeSet<usize> = BTreeSet::from([0, self.index.column]);
                for c in filter.column_refs() {
                    if let Ok(i) = full.index_of(&c.name) {
                        cols.insert(i);
                    }
                }
                let cols: Vec<usize> = cols.into_iter().collect();
                let scan = self.base.scan(state, Some(&cols), filters, None).await?;
                let df_schema = DFSchema::try_from_qualified_schema(
                    self.table_name.clone(),
                    &full.project(&cols)?,
                )?;
                let predicate = state.create_physical_expr(filter.clone(), &df_schema)?;
                let filtered: Arc<dyn ExecutionPlan> =
                    Arc::new(FilterExec::try_new(predicate, scan)?);
                let fs = filtered.schema();
                let id = datafusion::physical_expr::expressions::col("id", &fs)?;
                let vector = Arc::new(datafusion::physical_expr::expressions::Column::new(
                    fs.field(
                        cols.iter()
                            .position(|c| *c == self.index.column)
                            .unwrap_or(0),
                    )
                    .name(),
                    cols.iter()
                        .position(|c| *c == self.index.column)
                        .unwrap_or(0),
                ));
                Some(Arc::new(ProjectionExec::try_new(
                    vec![
                        (id, "id".to_string()),
                        (vector as Arc<dyn PhysicalExpr>, "vector".to_string()),
                    ],
                    filtered,
                )?) as Arc<dyn ExecutionPlan>)
            }
        };
        Ok(Arc::new(AnnScanExec {
            base: self.base.clone(),
            index: self.index.clone(),
            query: self.query.clone(),
            k: self.k,
            ef_search: self.ef_search,
            projection,
            pushed: filters.to_vec(),
            passing,
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
            schema,
        }))
    }
}

/// Reads the rows an HNSW search (with the WHERE filter inside it) picks.
#[derive(Debug)]
pub struct AnnScanExec {
    base: EntityTable,
    index: Arc<TableVector>,
    query: Arc<Vec<f32>>,
    k: usize,
    ef_search: usize,
    projection: Vec<usize>,
    /// Id filters pushed into the scan.
    pushed: Vec<Expr>,
    /// The ids passing the WHERE filter, when there is one.
    passing: Option<Arc<dyn ExecutionPlan>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for AnnScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HnswIndexScan: index={} ({} {}), k={}, ef_search={}",
            self.index.def.name,
            self.index.def.column,
            self.index.def.metric.opclass(),
            self.k,
            self.ef_search,
        )?;
        if self.passing.is_some() {
            write!(
                f,
                ", filter inside the search (exact over the passing rows when few pass)"
            )?;
        }
        Ok(())
    }
}

/// Which ids to read: what the index search found, or every passing id.
/// The rows passing the WHERE filter, and their `(distance, id)` while few pass.
type Passing = (RoaringTreemap, Option<Vec<(f64, u64)>>);

fn candidates(
    index: &TableVector,
    query: &[f32],
    k: usize,
    ef: usize,
    passing: Option<Passing>,
) -> Result<BTreeSet<u64>> {
    let err = |e: tidal_engine::tidal_index::IndexError| DataFusionError::External(Box::new(e));
    let count = k.max(ef);
    // The index orders its beam by the same metric: of the `count` it finds, the first
    // k are the answer; only those rows are read (~7 µs each), and re-ranked exactly
    // above.
    let Some((passing, near)) = passing else {
        return Ok(index
            .index
            .search(query, count)
            .map_err(err)?
            .into_iter()
            .take(k)
            .collect());
    };
    // Few rows pass: their distances were computed exactly during the filter pass.
    if let Some(mut near) = near {
        near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        return Ok(near.into_iter().take(k).map(|(_, id)| id).collect());
    }
    let p = passing.len();
    let n = index.index.len() as f64;
    if (p as f64) * (p as f64) * VECTOR_EXACT_COST_RATIO <= ef as f64 * n {
        return Ok(passing.iter().collect());
    }
    let dense = DenseIds::of(&passing);
    let found = match &dense {
        Some(d) => index
            .index
            .search_filtered(query, count, &|id| d.contains(id))
            .map_err(err)?,
        None => index
            .index
            .search_filtered(query, count, &|id| passing.contains(id))
            .map_err(err)?,
    };
    let found: Vec<u64> = found.into_iter().take(k).collect();
    if found.len() < k && p >= k as u64 && p <= VECTOR_EXACT_FALLBACK_ROWS_MAX {
        return Ok(passing.iter().collect());
    }
    Ok(found.into_iter().collect())
}

impl ExecutionPlan for AnnScanExec {
    fn name(&self) -> &str {
        "HnswIndexScan"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.passing.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut children = children.into_iter();
        Ok(Arc::new(AnnScanExec {
            base: self.base.clone(),
            index: self.index.clone(),
            query: self.query.clone(),
            k: self.k,
            ef_search: self.ef_search,
            projection: self.projection.clone(),
            pushed: self.pushed.clone(),
            passing: self.passing.as_ref().and(children.next()),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "HnswIndexScan has one partition, not {partition}"
            )));
        }
        let passing = self.passing.clone();
        let index = self.index.clone();
        let query = self.query.clone();
        let (k, ef) = (self.k, self.ef_search);
        let base = self.base.clone();
        let projection = self.projection.clone();
        let pushed = self.pushed.clone();
        let fut = async move {
            let metric = match index.def.metric {
                VectorMetric::L2 => crate::vector::Metric::L2,
                VectorMetric::Cosine => crate::vector::Metric::Cosine,
                VectorMetric::InnerProduct => crate::vector::Metric::NegativeInnerProduct,
            };
            let passing = match passing {
                None => None,
                Some(plan) => {
                    let mut set = RoaringTreemap::new();
                    // (distance, id) of the passing rows while there are at most
                    // VECTOR_EXACT_PASSING_ROWS_MAX of them.
                    let mut near: Option<Vec<(f64, u64)>> = Some(Vec::new());
                    let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.clone())?;
                    while let Some(batch) = stream.next().await {
                        let batch = batch?;
                        let ids = batch.column(0).as_primitive::<Int64Type>();
                        let vectors = crate::vector::Vectors::of(
                            &datafusion::logical_expr::ColumnarValue::Array(
                                batch.column(1).clone(),
                            ),
                            "HnswIndexScan",
                        )?;
                        for i in 0..ids.len() {
                            if !(ids.is_valid(i) && ids.value(i) >= 0) {
                                continue;
                            }
                            let id = ids.value(i) as u64;
                            set.insert(id);
                            if let Some(n) = near.as_mut() {
                                if n.len() >= VECTOR_EXACT_PASSING_ROWS_MAX {
                                    near = None;
                                } else if let Some(v) = vectors.get(i)
                                    && v.len() == query.len()
                                {
                                    let d = metric.eval(v, &query);
                                    if !d.is_nan() {
                                        n.push((d, id));
                                    }
                                }
                            }
                        }
                    }
                    Some((set, near))
                }
            };
            // The graph search is CPU work of a millisecond or more: off the runtime.
            let ids =
                tokio::task::spawn_blocking(move || candidates(&index, &query, k, ef, passing))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
            base.point_stream(projection, ids, &pushed, ctx)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(fut).try_flatten(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_shown_as_it_is_used() {
        assert_eq!(
            parse_ef_search(HNSW_EF_SEARCH_DEFAULT_TEXT),
            Ok(HNSW_EF_SEARCH_DEFAULT)
        );
        const { assert!(HNSW_EF_SEARCH_DEFAULT <= HNSW_EF_SEARCH_MAX) };
    }
}
