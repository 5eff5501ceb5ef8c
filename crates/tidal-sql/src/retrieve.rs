//! `RETRIEVE` compiled to a DataFusion plan, and `rank_profile()`.
//!
//! ```text
//! Fetch: rank, id, score, <entity columns>       -- FetchExec: k point reads of the winners
//!   Rank: limit=50, max_per_creator=2           -- RankExec: top-k / greedy diversity
//!     Filter: <user marks>                      -- bitmap membership (FILTER unseen …)
//!       Projection: id, creator_id, <score> AS score
//!         Filter: <profile FILTER> AND <GATE> AND <WHERE>
//!           TableScan: items (only the columns the clauses read)
//! ```
//!
//! The candidate side reads only the columns the profile needs; full rows are fetched
//! for the `LIMIT` winners alone.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SessionState, TaskContext};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, Extension, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, UserDefinedLogicalNodeCore, Volatility, col, lit,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tidal_core::{EntityId, EntityKind, Mark, ProfileDef, TableDef};
use tidal_engine::roaring::RoaringTreemap;
use tidal_engine::{Engine, ReadView};

use crate::error::{bad_arg, engine_err};
use crate::profile::{Retrieve, bind_profile, require_creator};
use crate::provider::{EntityTable, ScanOrder};
use crate::types::{BatchBuilder, table_schema};
use crate::{SqlError, SqlSession};

/// Builds the plan of a RETRIEVE (the DataFrame's state carries the statement instant).
pub(crate) async fn plan_retrieve(
    session: &SqlSession,
    r: &Retrieve,
) -> Result<DataFrame, SqlError> {
    let engine = session.engine();
    let view = engine.read();
    let schema = view.schema().clone();
    let def = crate::profile::profile_on(&schema, &r.profile, r.kind, "RETRIEVE")?;
    let table = schema.table(r.kind)?.clone();
    let mut user = user_state(&view, r.user, def)?;
    user.cohort = r.cohort.clone();
    let bound = bind_profile(def, &schema, None, &user)?;
    let max_per_creator = r.max_per_creator.or(def.max_per_creator);
    if max_per_creator.is_some() {
        require_creator(r.kind, &schema)?;
    }
    let explore = crate::explore::fraction(r.explore, Some(def));
    // Exploring keeps the items GATE drops: they are cold, not gone.
    let mut conds: Vec<String> = match explore {
        Some(_) => bound.filter.clone().into_iter().collect(),
        None => bound.keep.clone().into_iter().collect(),
    };
    if let Some(p) = &r.predicate {
        conds.push(format!("({p})"));
    }
    // FILTER terms that keep a set restrict the scan; those that remove one mask the
    // scored candidates (mask.rs says why).
    let (restrict, exclude): (Vec<FilterSet>, Vec<FilterSet>) = match r.user {
        Some(user) => filter_sets(&view, r.kind, user, &r.filters, "RETRIEVE")?
            .into_iter()
            .partition(|f| f.want),
        None => (Vec::new(), Vec::new()),
    };
    let mask_reads_creator = exclude.iter().any(|f| f.column == "creator_id");
    let mut select = vec!["id".to_string()];
    match (explore, crate::explore::creator_select(&table)) {
        (Some(_), Some(creator)) => select.push(creator.to_string()),
        _ if max_per_creator.is_some() || mask_reads_creator => {
            select.push("creator_id".to_string())
        }
        _ => {}
    }
    select.push(format!("{} AS score", bound.score));
    if explore.is_some() {
        select.push(format!("{} AS {}", bound.warm, crate::explore::WARM_COLUMN));
    }
    let sql = format!(
        "SELECT {} FROM {}{}",
        select.join(", "),
        r.kind.table_name(),
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    );
    let mut state = session.context().state();
    if let Some(at) = r.at {
        // Every signal function and `now()` of the statement reads at this instant.
        state.execution_props_mut().query_execution_start_time =
            Some(chrono_utc(at).ok_or_else(|| bad_arg("RETRIEVE", "AT is out of range"))?);
    }
    let plan = bound.bind_plan(state.create_logical_plan(&sql).await?)?;
    let plan = scan_filters(ledger_ordered_scans(plan)?, &restrict)?;
    let plan = crate::mask::mask_plan(plan, exclude)?;
    let plan = match explore {
        Some(fraction) => {
            let at = r.at.unwrap_or_else(|| engine.now());
            let spec = crate::explore::spec(fraction, r.limit, max_per_creator, r.user, at);
            let plan = crate::explore::explore_plan(plan, spec)?;
            let plan = FetchNode::plan(plan, view, table, &[crate::explore::explored_field()])?;
            crate::explore::explored_last(plan)?
        }
        None => {
            let plan = crate::rank::rank_plan(plan, r.limit, max_per_creator)?;
            FetchNode::plan(plan, view, table, &[])?
        }
    };
    Ok(DataFrame::new(state, plan))
}

/// What the FOR USER user brings to profile `def`: the preference vector, and the
/// affinity state when the profile calls `affinity()`.
pub(crate) fn user_state(
    view: &ReadView,
    user: Option<i64>,
    def: &ProfileDef,
) -> Result<crate::profile::UserState, SqlError> {
    let preference = user_preference(view, user)?;
    let uses_affinity = [Some(&def.score), def.gate.as_ref(), def.filter.as_ref()]
        .into_iter()
        .flatten()
        .any(|c| crate::social::mentions_affinity(c));
    let affinity = match user.and_then(EntityId::from_i64) {
        Some(u) if uses_affinity => crate::social::UserAffinity::read(view, u)?,
        _ => None,
    };
    Ok(crate::profile::UserState {
        preference,
        affinity,
        cohort: None,
    })
}

/// The preference vector of the statement's FOR USER user, if it has one.
pub(crate) fn user_preference(
    view: &ReadView,
    user: Option<i64>,
) -> Result<Option<Vec<f32>>, SqlError> {
    match user.and_then(EntityId::from_i64) {
        Some(u) => Ok(view.preference(u)?),
        None => Ok(None),
    }
}

/// One FILTER term resolved for a user: the set captured when the statement is
/// planned and the column it tests.
#[derive(Debug, Clone)]
pub(crate) struct FilterSet {
    /// What EXPLAIN shows: `marked_by[user 7 seen]`, `edge_of[user 7 follows]`.
    pub function: &'static str,
    pub label: String,
    /// `id`, or `creator_id` for a relationship to creators or users.
    pub column: &'static str,
    /// Keep rows in the set (else rows outside it).
    pub want: bool,
    /// What the set is, for EXPLAIN: `rows liked by the user`.
    pub rows: String,
    pub set: Arc<RoaringTreemap>,
    /// The same set as a plain bitmap when its values are small enough.
    dense: Arc<Option<DenseIds>>,
}

impl FilterSet {
    fn new(
        function: &'static str,
        label: String,
        column: &'static str,
        want: bool,
        rows: String,
        set: RoaringTreemap,
    ) -> FilterSet {
        FilterSet {
            function,
            label,
            column,
            want,
            rows,
            dense: Arc::new(DenseIds::of(&set)),
            set: Arc::new(set),
        }
    }

    /// The set as a plain bitmap, when it has one.
    pub(crate) fn dense(&self) -> Option<&DenseIds> {
        self.dense.as_ref().as_ref()
    }

    pub(crate) fn contains(&self, value: u64) -> bool {
        match self.dense.as_ref() {
            Some(d) => d.contains(value),
            None => self.set.contains(value),
        }
    }

    /// Whether a row passes, given the value of its [`FilterSet::column`].
    pub(crate) fn keeps(&self, value: u64) -> bool {
        self.contains(value) == self.want
    }
}

/// The user's marks and edges of `filters` (checked to exist and to apply to `kind`)
/// as sets captured now.
pub(crate) fn filter_sets(
    view: &ReadView,
    kind: EntityKind,
    user: i64,
    filters: &[crate::FilterTerm],
    what: &'static str,
) -> Result<Vec<FilterSet>, SqlError> {
    let schema = view.schema();
    let mut out = Vec::with_capacity(filters.len());
    let uid = EntityId::from_i64(user);
    for f in filters {
        match f {
            crate::FilterTerm::Mark(m) => {
                if !schema
                    .signals()
                    .any(|s| s.kind == kind && s.marks == Some(m.mark))
                {
                    return Err(bad_arg(
                        what,
                        format!(
                            "FILTER {} needs a signal on {} declared with MARKS {}",
                            m.text(),
                            kind.table_name(),
                            m.mark.as_str()
                        ),
                    )
                    .into());
                }
                let set = match uid {
                    Some(u) => view.marked(u, m.mark),
                    None => RoaringTreemap::new(),
                };
                out.push(FilterSet::new(
                    "marked_by",
                    format!("user {user} {}", m.mark.as_str()),
                    "id",
                    m.want,
                    format!("rows {} by the user", m.mark.as_str()),
                    set,
                ));
            }
            crate::FilterTerm::Relationship { name, want } => {
                let rel = schema.relationship(name)?;
                let column = if rel.to == kind {
                    "id"
                } else {
                    if kind != EntityKind::Item || rel.to == EntityKind::Item {
                        return Err(bad_arg(
                            what,
                            format!(
                                "FILTER {} keeps {} by their creator, but relationship {} goes to {}",
                                f.text(),
                                kind.table_name(),
                                rel.name,
                                rel.to.table_name()
                            ),
                        )
                        .into());
                    }
                    require_creator_column(kind, schema, &f.text())?;
                    "creator_id"
                };
                let set = match uid {
                    Some(u) => view.out_edges(&rel.name, u)?,
                    None => RoaringTreemap::new(),
                };
                out.push(FilterSet::new(
                    "edge_of",
                    format!("user {user} {}", rel.name),
                    column,
                    *want,
                    format!("rows of the user's {}", rel.name),
                    set,
                ));
            }
        }
    }
    Ok(out)
}

/// A relationship FILTER on items reads `creator_id`, which must be an integer column.
fn require_creator_column(
    kind: EntityKind,
    schema: &tidal_core::Schema,
    term: &str,
) -> Result<(), SqlError> {
    let table = schema.table(kind)?;
    match table
        .column_index("creator_id")
        .map(|i| table.columns[i].ty)
    {
        Some(tidal_core::ColumnType::BigInt | tidal_core::ColumnType::Int) => Ok(()),
        _ => Err(bad_arg(
            "FILTER",
            format!(
                "FILTER {term} matches items by creator: {} needs a BIGINT column creator_id",
                kind.table_name()
            ),
        )
        .into()),
    }
}

/// `plan` with every FILTER set applied right above its entity-table scan (one
/// bitmap membership test per term and row), so that rows a filter drops are never
/// scored, and an index search under the filter applies them inside the search.
pub(crate) fn scan_filters(plan: LogicalPlan, sets: &[FilterSet]) -> Result<LogicalPlan, SqlError> {
    if sets.is_empty() {
        return Ok(plan);
    }
    let plan = plan.transform_up(|n| match n {
        LogicalPlan::TableScan(_) => {
            let mut keep: Option<Expr> = None;
            for f in sets {
                let member = id_set_column_filter(f.function, &f.label, f.set.clone(), f.column);
                let term = if f.want { member } else { !member };
                keep = Some(match keep {
                    Some(k) => k.and(term),
                    None => term,
                });
            }
            let Some(keep) = keep else {
                return Ok(Transformed::no(n));
            };
            let filtered = LogicalPlanBuilder::from(n).filter(keep)?.build()?;
            Ok(Transformed::new(filtered, true, TreeNodeRecursion::Jump))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(plan.data)
}

/// `<function>[<label>](id)`: whether the row's id is in `set` (captured at planning).
/// The label is part of the function's name so that EXPLAIN shows which set it is.
pub(crate) fn id_set_filter(function: &str, label: &str, set: Arc<RoaringTreemap>) -> Expr {
    id_set_column_filter(function, label, set, "id")
}

/// [`id_set_filter`] over another integer column (`creator_id`).
pub(crate) fn id_set_column_filter(
    function: &str,
    label: &str,
    set: Arc<RoaringTreemap>,
    column: &str,
) -> Expr {
    let dense = DenseIds::of(&set);
    let udf = ScalarUDF::new_from_impl(MarkSetUdf {
        label: format!("{function}[{label}]"),
        set,
        dense,
        signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
    });
    udf.call(vec![col(column)])
}

/// Points every entity-table scan of `plan` at the cached rows in ledger order: the
/// candidates' signal reads then walk the ledger's dense columns in order. RETRIEVE's
/// output order comes from its rank alone, so the scan order is free to choose.
pub(crate) fn ledger_ordered_scans(plan: LogicalPlan) -> Result<LogicalPlan, SqlError> {
    let plan = plan.transform_up(|p| {
        let LogicalPlan::TableScan(mut scan) = p else {
            return Ok(Transformed::no(p));
        };
        let ordered = source_as_provider(&scan.source).ok().and_then(|t| {
            t.downcast_ref::<EntityTable>()
                .map(|t| t.with_order(ScanOrder::Ledger))
        });
        match ordered {
            Some(t) => {
                scan.source = provider_as_source(Arc::new(t));
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
        }
    })?;
    Ok(plan.data)
}

pub(crate) fn chrono_utc(at: tidal_core::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(at.0)
}

/// `id ∈ set` for one user's mark bitmap, captured when the statement is planned.
#[derive(Debug)]
struct MarkSetUdf {
    label: String,
    set: Arc<RoaringTreemap>,
    /// The same set as a plain bitmap when its ids are small enough: a membership test
    /// per scanned row is then one load and a shift (a candidate scan tests every row of
    /// the table).
    dense: Option<DenseIds>,
    signature: Signature,
}

/// Largest id a [`DenseIds`] bitmap covers (8 MiB of bits).
const DENSE_IDS_MAX: u64 = 1 << 26;

/// Sets of at most this many ids are tested through a small filter that stays in L1.
const SMALL_IDS_MAX: u64 = 1_024;
/// Bits of the small sets' filter (on the low bits of the id).
const SMALL_FILTER_BITS: u64 = 1 << 14;

/// A set of ids tested once per scanned row, so the test must not leave the CPU's
/// first-level cache: small sets (a user's marks, blocks) as a 2 KiB filter on the
/// id's low bits plus the sorted ids, larger ones as a plain bitmap. Rows come in
/// ledger order, so a bitmap spanning all ids would be probed at random.
#[derive(Debug)]
pub(crate) enum DenseIds {
    Small { filter: Vec<u64>, sorted: Vec<u64> },
    Bits(Vec<u64>),
}

impl DenseIds {
    pub(crate) fn of(set: &RoaringTreemap) -> Option<DenseIds> {
        let max = set.max()?;
        if set.len() <= SMALL_IDS_MAX {
            let mut filter = vec![0u64; (SMALL_FILTER_BITS / 64) as usize];
            for id in set.iter() {
                let b = id % SMALL_FILTER_BITS;
                filter[(b / 64) as usize] |= 1 << (b % 64);
            }
            return Some(DenseIds::Small {
                filter,
                sorted: set.iter().collect(),
            });
        }
        if max > DENSE_IDS_MAX {
            return None;
        }
        let mut words = vec![0u64; (max / 64 + 1) as usize];
        for id in set.iter() {
            words[(id / 64) as usize] |= 1 << (id % 64);
        }
        Some(DenseIds::Bits(words))
    }

    #[inline]
    pub(crate) fn contains(&self, id: u64) -> bool {
        match self {
            DenseIds::Small { filter, sorted } => {
                let b = id % SMALL_FILTER_BITS;
                filter[(b / 64) as usize] & (1 << (b % 64)) != 0
                    && sorted.binary_search(&id).is_ok()
            }
            DenseIds::Bits(words) => words
                .get((id / 64) as usize)
                .is_some_and(|w| w & (1 << (id % 64)) != 0),
        }
    }
}

impl PartialEq for MarkSetUdf {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && Arc::ptr_eq(&self.set, &other.set)
    }
}
impl Eq for MarkSetUdf {}
impl Hash for MarkSetUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for MarkSetUdf {
    fn name(&self) -> &str {
        &self.label
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = ids.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
            DataFusionError::Internal(format!("{}: ids are not BIGINT", self.label))
        })?;
        let values = ids.values();
        // A NULL (an item without a creator) is in no set: `FILTER not blocks` keeps
        // it, `FILTER follows` drops it.
        let member = |i: usize| {
            ids.is_valid(i)
                && u64::try_from(values[i]).is_ok_and(|u| match &self.dense {
                    Some(d) => d.contains(u),
                    None => self.set.contains(u),
                })
        };
        let bits = datafusion::arrow::buffer::BooleanBuffer::collect_bool(values.len(), member);
        let out = BooleanArray::new(bits, None);
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Logical node: fetch the entity rows of ranked ids.
#[derive(Debug, Clone)]
pub(crate) struct FetchNode {
    input: LogicalPlan,
    view: ReadView,
    table: TableDef,
    /// Columns of the ranked input carried after `score` (SEARCH's `relevance`).
    extra: Vec<Field>,
    schema: DFSchemaRef,
}

impl FetchNode {
    pub(crate) fn plan(
        input: LogicalPlan,
        view: ReadView,
        table: TableDef,
        extra: &[Field],
    ) -> Result<LogicalPlan> {
        let arrow = fetch_schema(&table, extra);
        // Qualified, so that an entity column named like an output column (`score`,
        // `rank`) stays apart from it: `retrieve.score` and `items.score`.
        let fields = arrow
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let q = if i < 3 + extra.len() {
                    "retrieve"
                } else {
                    table.kind.table_name()
                };
                (Some(datafusion::common::TableReference::bare(q)), f.clone())
            })
            .collect();
        let schema = Arc::new(DFSchema::new_with_metadata(fields, HashMap::new())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(FetchNode {
                input,
                view,
                table,
                extra: extra.to_vec(),
                schema,
            }),
        }))
    }
}

/// `rank, id, score`, the `extra` columns, then the table's columns other than id.
pub(crate) fn fetch_schema(table: &TableDef, extra: &[Field]) -> SchemaRef {
    let full = table_schema(table);
    let mut fields = vec![
        Field::new("rank", DataType::Int64, false),
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
    ];
    fields.extend(extra.iter().cloned());
    fields.extend(
        full.fields()
            .iter()
            .filter(|f| f.name() != "id")
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    Arc::new(ArrowSchema::new(fields))
}

impl PartialEq for FetchNode {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.table == other.table
    }
}
impl Eq for FetchNode {}
impl Hash for FetchNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.table.kind.hash(state);
    }
}
impl PartialOrd for FetchNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.input.partial_cmp(&other.input)
    }
}

impl UserDefinedLogicalNodeCore for FetchNode {
    fn name(&self) -> &str {
        "Fetch"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Fetch: {} rows of the ranked ids ({} columns)",
            self.table.kind.table_name(),
            self.table.columns.len()
        )
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        Ok(FetchNode {
            input: inputs.swap_remove(0),
            ..self.clone()
        })
    }
}

/// Turns [`FetchNode`] into [`FetchExec`].
#[derive(Debug)]
pub(crate) struct FetchPlanner;

#[async_trait]
impl ExtensionPlanner for FetchPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn datafusion::logical_expr::UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<FetchNode>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(FetchExec::new(
            physical_inputs[0].clone(),
            n.view.clone(),
            n.table.clone(),
            n.extra.clone(),
        ))))
    }
}

/// Reads the full rows of ranked ids from the statement's store snapshot.
#[derive(Debug)]
pub(crate) struct FetchExec {
    input: Arc<dyn ExecutionPlan>,
    view: ReadView,
    table: TableDef,
    extra: Vec<Field>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl FetchExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        view: ReadView,
        table: TableDef,
        extra: Vec<Field>,
    ) -> FetchExec {
        let schema = fetch_schema(&table, &extra);
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        FetchExec {
            input,
            view,
            table,
            extra,
            schema,
            props,
        }
    }
}

impl DisplayAs for FetchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FetchExec: {}", self.table.kind.table_name())
    }
}

use datafusion::physical_plan::ExecutionPlanProperties;

impl ExecutionPlan for FetchExec {
    fn name(&self) -> &str {
        "FetchExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(FetchExec::new(
            children.swap_remove(0),
            self.view.clone(),
            self.table.clone(),
            self.extra.clone(),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let view = self.view.clone();
        let table = self.table.clone();
        let schema = self.schema.clone();
        let extra: Vec<String> = self.extra.iter().map(|f| f.name().clone()).collect();
        let out = input.map(move |batch| fetch_rows(&view, &table, &extra, &schema, &batch?));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

pub(crate) fn fetch_rows(
    view: &ReadView,
    table: &TableDef,
    extra: &[String],
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("Fetch: input has no {name}")))
    };
    let (rank, ids, score) = (column("rank")?, column("id")?, column("score")?);
    let ids_arr = ids
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| DataFusionError::Internal("Fetch: id is not BIGINT".into()))?;
    let others: Vec<usize> = (0..table.columns.len())
        .filter(|&i| table.columns[i].name != "id")
        .collect();
    let others_schema = Arc::new(ArrowSchema::new(
        schema.fields()[3 + extra.len()..].to_vec(),
    ));
    let mut builder = BatchBuilder::new(table, &others, others_schema, ids_arr.len());
    let mut keep = Vec::with_capacity(ids_arr.len());
    for (i, id) in ids_arr.iter().enumerate() {
        let row = match id.and_then(EntityId::from_i64) {
            Some(id) => view.get(table.kind, id).map_err(engine_err)?,
            None => None,
        };
        // A row deleted between ranking and fetching is left out.
        if let Some(row) = row {
            builder.push(&row)?;
            keep.push(i as u32);
        }
    }
    let rest = builder.finish()?;
    let take = datafusion::arrow::array::UInt32Array::from(keep);
    let pick = |a: &ArrayRef| datafusion::arrow::compute::take(a, &take, None);
    let mut columns = vec![pick(&rank)?, pick(&ids)?, pick(&score)?];
    for name in extra {
        columns.push(pick(&column(name)?)?);
    }
    columns.extend(rest.columns().iter().cloned());
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `rank_profile(name, id [, at])`: the profile's score of an entity, read from the
/// store; `-Infinity` when the entity fails the profile's FILTER or GATE (so that
/// `ORDER BY score DESC` puts it last, as RETRIEVE leaves it out), NULL for an id
/// with no row.
#[derive(Debug)]
pub struct RankProfileUdf {
    engine: Arc<Engine>,
    state: Weak<RwLock<SessionState>>,
    bound: bool,
    signature: Signature,
    compiled: Mutex<HashMap<(String, u64), Arc<Compiled>>>,
}

#[derive(Debug)]
struct Compiled {
    table: TableDef,
    schema: SchemaRef,
    score: Arc<dyn PhysicalExpr>,
    keep: Option<Arc<dyn PhysicalExpr>>,
}

/// Distinct compiled profiles one session keeps (cleared when exceeded).
const RANK_PROFILE_CACHE_ENTRIES_MAX: usize = 256;
const AT_COLUMN: &str = "__tidal_at";

impl PartialEq for RankProfileUdf {
    fn eq(&self, other: &Self) -> bool {
        self.bound == other.bound && Arc::ptr_eq(&self.engine, &other.engine)
    }
}
impl Eq for RankProfileUdf {}
impl Hash for RankProfileUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bound.hash(state);
        Arc::as_ptr(&self.engine).hash(state);
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

impl RankProfileUdf {
    pub(crate) fn new(engine: Arc<Engine>, state: Weak<RwLock<SessionState>>, bound: bool) -> Self {
        RankProfileUdf {
            engine,
            state,
            bound,
            signature: Signature::user_defined(if bound {
                Volatility::Stable
            } else {
                Volatility::Volatile
            }),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    fn compile(&self, def: &ProfileDef, schema_version: u64) -> Result<Arc<Compiled>> {
        let key = (def.name.clone(), schema_version);
        if let Some(c) = self.compiled.lock().get(&key) {
            return Ok(c.clone());
        }
        let schema = self.engine.schema();
        let table = schema
            .table(def.kind)
            .map_err(|e| SqlError::from(e).into_df())?
            .clone();
        let mut fields: Vec<Field> = table_schema(&table)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(AT_COLUMN, ts_type(), false));
        let arrow = Arc::new(ArrowSchema::new(fields));
        let df_schema = DFSchema::try_from(arrow.as_ref().clone())?;
        let at = datafusion::sql::sqlparser::ast::Expr::Identifier(
            datafusion::sql::sqlparser::ast::Ident::new(AT_COLUMN),
        );
        let bound =
            bind_profile(def, &schema, Some(at), &Default::default()).map_err(SqlError::into_df)?;
        let state = self
            .state
            .upgrade()
            .ok_or_else(|| DataFusionError::Internal("rank_profile: session is gone".into()))?
            .read()
            .clone();
        let df_schema = Arc::new(df_schema);
        // Some functions (COALESCE, …) only plan after the simplifier has rewritten them;
        // the query path runs it as an optimizer rule, an expression must run it itself.
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(df_schema.clone())
                .with_config_options(Arc::new(state.config_options().as_ref().clone()))
                .build(),
        );
        let physical = |text: &str| -> Result<Arc<dyn PhysicalExpr>> {
            let e = state.create_logical_expr(text, &df_schema)?;
            let e = simplifier.simplify(e)?;
            state.create_physical_expr(e, &df_schema)
        };
        let compiled = Arc::new(Compiled {
            score: physical(&bound.score)?,
            keep: bound.keep.as_deref().map(physical).transpose()?,
            table,
            schema: arrow,
        });
        let mut cache = self.compiled.lock();
        if cache.len() >= RANK_PROFILE_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }
}

impl ScalarUDFImpl for RankProfileUdf {
    fn name(&self) -> &str {
        "rank_profile"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=3).contains(&arg_types.len()) {
            return Err(bad_arg(
                "rank_profile",
                "takes 2 or 3 arguments: rank_profile(profile, id [, at])",
            ));
        }
        if !(arg_types[1].is_integer() || arg_types[1] == DataType::Null) {
            return Err(bad_arg(
                "rank_profile",
                format!("the entity must be a BIGINT id, not {}", arg_types[1]),
            ));
        }
        let mut out = vec![DataType::Utf8, DataType::Int64];
        if arg_types.len() == 3 {
            out.push(ts_type());
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn simplify(&self, mut args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if self.bound {
            return Ok(ExprSimplifyResult::Original(args));
        }
        if args.len() == 2 {
            let Some(start) = info.query_execution_start_time() else {
                return Ok(ExprSimplifyResult::Original(args));
            };
            args.push(lit(ScalarValue::TimestampMicrosecond(
                Some(start.timestamp_micros()),
                None,
            )));
        }
        let udf = RankProfileUdf::new(self.engine.clone(), self.state.clone(), true);
        Ok(ExprSimplifyResult::Simplified(udf_call(udf, args)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let name = match &args.args[0] {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => s.clone(),
            _ => {
                return Err(bad_arg(
                    "rank_profile",
                    "the profile must be a constant name such as 'trending'",
                ));
            }
        };
        let at = match args.args.get(2) {
            Some(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(v), _))) => *v,
            Some(ColumnarValue::Scalar(_)) => {
                return Ok(ColumnarValue::Scalar(ScalarValue::Float64(None)));
            }
            Some(ColumnarValue::Array(_)) => {
                return Err(bad_arg(
                    "rank_profile",
                    "`at` must be the same for every row of a call",
                ));
            }
            None => tidal_core::Timestamp::now_system().0,
        };
        let view = self.engine.read();
        let def = view
            .schema()
            .profile(&name)
            .map_err(|e| SqlError::from(e).into_df())?
            .clone();
        let compiled = self.compile(&def, view.schema().version)?;
        let ids = args.args[1].to_array(n)?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("rank_profile: id is not BIGINT".into()))?;
        let all: Vec<usize> = (0..compiled.table.columns.len()).collect();
        let row_schema = Arc::new(ArrowSchema::new(
            compiled.schema.fields()[..all.len()].to_vec(),
        ));
        let mut builder = BatchBuilder::new(&compiled.table, &all, row_schema, ids.len());
        let mut found = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let row = match id.and_then(EntityId::from_i64) {
                Some(id) => view.get(compiled.table.kind, id).map_err(engine_err)?,
                None => None,
            };
            if let Some(row) = row {
                builder.push(&row)?;
                found.push(i);
            }
        }
        let rows = builder.finish()?;
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(TimestampMicrosecondArray::from(
            vec![at; rows.num_rows()],
        )));
        let batch = RecordBatch::try_new(compiled.schema.clone(), columns)?;
        let score = compiled
            .score
            .evaluate(&batch)?
            .into_array(batch.num_rows())?;
        let score = score
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| DataFusionError::Internal("rank_profile: score is not DOUBLE".into()))?
            .clone();
        let keep = match &compiled.keep {
            Some(k) => Some(k.evaluate(&batch)?.into_array(batch.num_rows())?),
            None => None,
        };
        let keep = keep
            .as_ref()
            .and_then(|k| k.as_any().downcast_ref::<BooleanArray>());
        let mut out: Vec<Option<f64>> = vec![None; ids.len()];
        for (j, &i) in found.iter().enumerate() {
            let passes = keep.is_none_or(|k| k.is_valid(j) && k.value(j));
            out[i] = if !passes {
                Some(f64::NEG_INFINITY)
            } else if score.is_valid(j) {
                Some(score.value(j))
            } else {
                None
            };
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
    }
}

fn udf_call(udf: impl ScalarUDFImpl + 'static, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(udf)),
        args,
    ))
}

/// The entity kinds a RETRIEVE names, for messages.
#[allow(dead_code)]
fn kind_name(k: EntityKind) -> &'static str {
    k.table_name()
}

/// Maps a mark for messages.
#[allow(dead_code)]
fn mark_name(m: Mark) -> &'static str {
    m.as_str()
}

/// A plain error type check for the clauses of a new profile: SCORE must be numeric,
/// FILTER and GATE boolean. Runs DataFusion's planner over the entity table, so unknown
/// columns and functions are reported here too.
pub(crate) async fn check_profile(session: &SqlSession, def: &ProfileDef) -> Result<(), SqlError> {
    let schema = session.engine().schema();
    let bound = bind_profile(def, &schema, None, &Default::default())?;
    let table = def.kind.table_name();
    let check = |what: &'static str, text: &str| {
        let sql = format!("SELECT {text} AS v FROM {table}");
        async move {
            let frame = session.context().sql(&sql).await?;
            let plan = frame.into_optimized_plan()?;
            let ty = plan.schema().field(0).data_type().clone();
            Ok::<_, SqlError>((what, ty))
        }
    };
    // similarity() is checked as it runs for a user with a vector.
    let probe: Vec<f32> = match schema.table(def.kind)?.preference_column() {
        Some((_, dims)) => vec![1.0; dims.max(1) as usize],
        None => Vec::new(),
    };
    let parse_clause = |text: &str| -> Result<String, SqlError> {
        let mut e = crate::profile::parse_expr(text)?;
        crate::profile::Binding {
            schema: &schema,
            kind: def.kind,
            at: None,
            preference: Some(&probe),
            // affinity() is checked as it runs for a user with pairs.
            affinity: true,
            cohort: None,
        }
        .bind(&mut e)?;
        Ok(e.to_string())
    };
    let (_, ty) = check("SCORE", &parse_clause(&def.score)?).await?;
    if !(ty.is_numeric() || ty == DataType::Null) {
        return Err(bad_arg(
            "CREATE PROFILE",
            format!("SCORE must be a number, not {ty}"),
        )
        .into());
    }
    for (what, clause) in [("FILTER", &def.filter), ("GATE", &def.gate)] {
        if let Some(text) = clause {
            let (_, ty) = check(what, &parse_clause(text)?).await?;
            if !matches!(ty, DataType::Boolean | DataType::Null) {
                return Err(bad_arg(
                    "CREATE PROFILE",
                    format!("{what} must be a condition (BOOLEAN), not {ty}"),
                )
                .into());
            }
        }
    }
    // The whole bound score (with recency) must plan too.
    check("SCORE", &bound.score).await?;
    Ok(())
}
