//! `EXPLORE fraction` (SQL.md §10): a share of the page goes to cold items.
//!
//! The rule, exactly:
//!
//! * **Slots.** `ceil(fraction × LIMIT)` ranks are exploration slots: the multiples of
//!   `step = round(1 / fraction)` up to LIMIT (`0.1` → ranks 10, 20, 30 …). When those
//!   are fewer than the slots (`0.4` of 50: step 3 gives 16 multiples for 20 slots), the
//!   rest are the highest ranks not yet taken, counting down from LIMIT.
//! * **Cold.** An item is cold when the profile's GATE drops it or when the profile's
//!   signals have fewer than [`EXPLORE_COLD_EVENTS_MIN`] events on it in total (the
//!   sum of `signal_total` over them, so weights count). Every other candidate is warm.
//! * **Order of the cold.** By a proxy score: the mean score of the warm candidates of
//!   the item's creator (the mean over all warm candidates when the creator has none,
//!   or 0 when no candidate is warm), plus `spread · u`, where `spread` is the range of
//!   the cold items' proxies (1 when they are all equal) and `u ∈ [0, 1)` is a hash of
//!   (FOR USER user, item, UTC day of the statement's instant): different users see
//!   different new items, and one user sees a stable page within a day. Ties by id.
//! * **The page.** Rank by rank: a slot takes the next cold item, any other rank the
//!   next warm item (score descending, ties by id); when one side runs out the other
//!   fills in. Diversity holds for the whole page: an item whose creator already has
//!   `max_per_creator` items on it is skipped, and when both sides are exhausted with
//!   ranks left, the skipped items fill the tail (warm in score order, then cold in
//!   proxy order), as RETRIEVE's fill rule does.
//! * The result gains a last column `explored` (BOOLEAN): true for the cold items.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, internal_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    InputDistributionRequirements, Partitioning, PlanProperties, ReplaceChildrenOptions,
    execute_stream,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

/// Fewer events than this (over the profile's signals) make an item cold.
pub const EXPLORE_COLD_EVENTS_MIN: f64 = 10.0;
/// The candidate column saying whether an item is warm.
pub(crate) const WARM_COLUMN: &str = "__tidal_warm";
/// The output column saying whether a row is an exploration pick.
pub const EXPLORED_COLUMN: &str = "explored";

/// `EXPLORE f` must have `0 < f ≤ 1`.
pub(crate) fn check_fraction(f: f64, what: &'static str) -> Result<f64, crate::SqlError> {
    if f.is_finite() && f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(
            crate::error::bad_arg(what, format!("EXPLORE takes a fraction in (0, 1], not {f}"))
                .into(),
        )
    }
}

/// The exploration ranks (1-based, ascending) of a page of `limit` rows.
pub fn slot_ranks(fraction: f64, limit: usize) -> Vec<usize> {
    if limit == 0 {
        return Vec::new();
    }
    // ceil(f × LIMIT), reading a product within rounding of a whole number as that
    // number (0.3 × 10 is 3.0000000000000004 in binary floating point).
    let x = fraction * limit as f64;
    let want = if (x - x.round()).abs() < 1e-9 {
        x.round()
    } else {
        x.ceil()
    };
    let want = (want as usize).clamp(1, limit);
    let step = ((1.0 / fraction).round() as usize).max(1);
    let mut ranks: Vec<usize> = (1..)
        .map(|j| j * step)
        .take_while(|r| *r <= limit)
        .take(want)
        .collect();
    let mut r = limit;
    while ranks.len() < want && r > 0 {
        if !ranks.contains(&r) {
            ranks.push(r);
        }
        r -= 1;
    }
    ranks.sort_unstable();
    ranks
}

/// `u ∈ [0, 1)` for (user, item, day): splitmix64 chained over the three.
pub fn perturbation(user: u64, item: u64, day: i64) -> f64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let h = mix(mix(mix(user) ^ item) ^ day as u64);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One candidate of an exploring page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: i64,
    pub creator: Option<i64>,
    /// `None` ranks after every number (NaN above them, as ORDER BY does).
    pub score: Option<f64>,
    pub warm: bool,
}

/// Score descending (NULL last, Arrow's total order), then id ascending.
fn by_score(a: &Candidate, b: &Candidate) -> Ordering {
    match (a.score, b.score) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then(a.id.cmp(&b.id))
}

/// The page: indices into `cands` in rank order, each with whether it is explored.
pub fn explore_page(
    cands: &[Candidate],
    limit: usize,
    max_per_creator: Option<u32>,
    fraction: f64,
    user: u64,
    day: i64,
) -> Vec<(usize, bool)> {
    if limit == 0 || cands.is_empty() {
        return Vec::new();
    }
    // Priors: the creators' mean warm score.
    let mut sums: HashMap<i64, (f64, u32)> = HashMap::new();
    let (mut all, mut n_all) = (0.0, 0u32);
    for c in cands.iter().filter(|c| c.warm) {
        let Some(s) = c.score.filter(|s| s.is_finite()) else {
            continue;
        };
        all += s;
        n_all += 1;
        if let Some(cr) = c.creator {
            let e = sums.entry(cr).or_default();
            e.0 += s;
            e.1 += 1;
        }
    }
    let fallback = if n_all > 0 {
        all / f64::from(n_all)
    } else {
        0.0
    };
    let prior = |c: &Candidate| {
        c.creator
            .and_then(|cr| sums.get(&cr))
            .map_or(fallback, |(s, n)| s / f64::from(*n))
    };
    let mut warm: Vec<usize> = Vec::new();
    let mut cold: Vec<(usize, f64)> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if c.warm {
            warm.push(i);
        } else {
            cold.push((i, prior(c)));
        }
    }
    let (lo, hi) = cold
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, p)| {
            (lo.min(*p), hi.max(*p))
        });
    let spread = if (hi - lo).is_finite() && hi > lo {
        hi - lo
    } else {
        1.0
    };
    let mut cold: Vec<(usize, f64)> = cold
        .into_iter()
        .map(|(i, p)| {
            let c = &cands[i];
            (i, p + spread * perturbation(user, c.id as u64, day))
        })
        .collect();
    cold.sort_by(|a, b| b.1.total_cmp(&a.1).then(cands[a.0].id.cmp(&cands[b.0].id)));
    warm.sort_by(|a, b| by_score(&cands[*a], &cands[*b]));
    let cold: Vec<usize> = cold.into_iter().map(|(i, _)| i).collect();

    let slots = slot_ranks(fraction, limit);
    let mut counts: HashMap<i64, u32> = HashMap::new();
    let fits = |counts: &HashMap<i64, u32>, c: &Candidate| match (max_per_creator, c.creator) {
        (Some(max), Some(cr)) => counts.get(&cr).copied().unwrap_or(0) < max,
        _ => true,
    };
    // Next item of a side that fits the page; the ones that do not are set aside.
    struct Side {
        order: Vec<usize>,
        next: usize,
        skipped: Vec<usize>,
    }
    let mut sides = [
        Side {
            order: warm,
            next: 0,
            skipped: Vec::new(),
        },
        Side {
            order: cold,
            next: 0,
            skipped: Vec::new(),
        },
    ];
    let take = |side: &mut Side, counts: &HashMap<i64, u32>| -> Option<usize> {
        while side.next < side.order.len() {
            let i = side.order[side.next];
            side.next += 1;
            if fits(counts, &cands[i]) {
                return Some(i);
            }
            side.skipped.push(i);
        }
        None
    };
    let mut page = Vec::with_capacity(limit);
    for rank in 1..=limit {
        let first = usize::from(slots.binary_search(&rank).is_ok());
        let picked = take(&mut sides[first], &counts)
            .map(|i| (i, first == 1))
            .or_else(|| take(&mut sides[1 - first], &counts).map(|i| (i, first == 0)));
        let Some((i, explored)) = picked else { break };
        if let Some(cr) = cands[i].creator {
            *counts.entry(cr).or_default() += 1;
        }
        page.push((i, explored));
    }
    // The fill rule: skipped items take the ranks left.
    for (s, explored) in [(0, false), (1, true)] {
        for &i in &sides[s].skipped {
            if page.len() >= limit {
                break;
            }
            page.push((i, explored));
        }
    }
    page
}

// ---------------------------------------------------------------------------------
// Statement helpers
// ---------------------------------------------------------------------------------

/// The `explored` result column.
pub(crate) fn explored_field() -> Field {
    Field::new(EXPLORED_COLUMN, DataType::Boolean, true)
}

/// `schema` with `explored` appended (a statement's described result).
pub(crate) fn with_explored(schema: SchemaRef) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(explored_field()));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The fraction a statement explores with: its own EXPLORE, else its profile's.
pub(crate) fn fraction(own: Option<f64>, profile: Option<&tidal_core::ProfileDef>) -> Option<f64> {
    own.or(profile.and_then(|p| p.explore))
}

/// The spec of an exploring ranking for `user` at the statement's instant `at`.
pub(crate) fn spec(
    fraction: f64,
    limit: usize,
    max_per_creator: Option<u32>,
    user: Option<i64>,
    at: tidal_core::Timestamp,
) -> ExploreSpec {
    ExploreSpec {
        limit,
        max_per_creator,
        fraction,
        user: user.and_then(|u| u64::try_from(u).ok()).unwrap_or(0),
        day: at.0.div_euclid(tidal_core::time::MICROS_PER_DAY),
    }
}

/// The select-list item giving the candidates' creator as BIGINT, when the table has a
/// `creator_id` column (the cold items' prior is their creator's mean score).
pub(crate) fn creator_select(table: &tidal_core::TableDef) -> Option<&'static str> {
    let i = table.column_index("creator_id")?;
    matches!(
        table.columns[i].ty,
        tidal_core::ColumnType::BigInt | tidal_core::ColumnType::Int
    )
    .then_some("CAST(creator_id AS BIGINT) AS creator_id")
}

/// `plan` (a fetch of an exploring ranking: `rank, id, score, …, explored, <entity
/// columns>`) with `explored` moved to the end, where SQL.md §10 puts it.
pub(crate) fn explored_last(plan: LogicalPlan) -> Result<LogicalPlan> {
    let columns = plan.schema().columns();
    let (explored, rest): (Vec<_>, Vec<_>) = columns.into_iter().partition(|c| {
        c.name == EXPLORED_COLUMN && c.relation.as_ref().is_some_and(|r| r.table() == "retrieve")
    });
    let exprs: Vec<Expr> = rest.into_iter().chain(explored).map(Expr::Column).collect();
    datafusion::logical_expr::LogicalPlanBuilder::from(plan)
        .project(exprs)?
        .build()
}

// ---------------------------------------------------------------------------------
// Plan nodes
// ---------------------------------------------------------------------------------

/// Wraps `input` (with `id`, `score`, [`WARM_COLUMN`] and, if any, `creator_id`) in an
/// [`ExploreNode`]: `rank`, the input's columns but the warm flag, then `explored`.
pub(crate) fn explore_plan(input: LogicalPlan, spec: ExploreSpec) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(ExploreNode::try_new(Arc::new(input), spec)?),
    }))
}

/// The parameters of one exploring ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ExploreSpec {
    pub limit: usize,
    pub max_per_creator: Option<u32>,
    pub fraction: f64,
    /// The FOR USER user (0 without one).
    pub user: u64,
    /// The UTC day of the statement's instant.
    pub day: i64,
}

impl std::hash::Hash for ExploreSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.limit.hash(state);
        self.max_per_creator.hash(state);
        self.fraction.to_bits().hash(state);
        self.user.hash(state);
        self.day.hash(state);
    }
}
impl Eq for ExploreSpec {}

impl fmt::Display for ExploreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = slot_ranks(self.fraction, self.limit);
        write!(
            f,
            "limit={}, max_per_creator={}, fraction={}, slots={} at ranks {:?}, user={}, day={}",
            self.limit,
            self.max_per_creator
                .map_or_else(|| "none".to_string(), |n| n.to_string()),
            self.fraction,
            slots.len(),
            slots,
            self.user,
            self.day
        )
    }
}

/// Where the columns the exploring ranking reads sit in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Keys {
    id: usize,
    score: usize,
    warm: usize,
    creator: Option<usize>,
}

impl Keys {
    fn resolve(schema: &Schema) -> Result<Keys> {
        let find = |name: &str, ty: &DataType| -> Result<Option<usize>> {
            match schema.fields().iter().position(|f| f.name() == name) {
                Some(i) if schema.field(i).data_type() == ty => Ok(Some(i)),
                Some(i) => plan_err!(
                    "EXPLORE needs column {name} to be {ty}, not {}",
                    schema.field(i).data_type()
                ),
                None => Ok(None),
            }
        };
        let need = |name: &str, ty: &DataType| -> Result<usize> {
            find(name, ty)?.map_or_else(|| plan_err!("EXPLORE needs a column {name}"), Ok)
        };
        if schema
            .fields()
            .iter()
            .any(|f| f.name() == "rank" || f.name() == EXPLORED_COLUMN)
        {
            return plan_err!("the ranking adds rank and explored; its input must not have them");
        }
        Ok(Keys {
            id: need("id", &DataType::Int64)?,
            score: need("score", &DataType::Float64)?,
            warm: need(WARM_COLUMN, &DataType::Boolean)?,
            creator: find("creator_id", &DataType::Int64)?,
        })
    }
}

fn output_fields(input: &Schema, keys: &Keys) -> Vec<Arc<Field>> {
    let mut fields = vec![Arc::new(Field::new("rank", DataType::Int64, false))];
    fields.extend(
        input
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != keys.warm)
            .map(|(_, f)| f.clone()),
    );
    fields.push(Arc::new(Field::new(
        EXPLORED_COLUMN,
        DataType::Boolean,
        false,
    )));
    fields
}

/// The logical exploring ranking (`Explore: limit=50, … slots=5 at ranks [10, …]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ExploreNode {
    input: Arc<LogicalPlan>,
    spec: ExploreSpec,
    keys: Keys,
    schema: DFSchemaRef,
}

impl ExploreNode {
    fn try_new(input: Arc<LogicalPlan>, spec: ExploreSpec) -> Result<ExploreNode> {
        let in_schema = input.schema();
        let keys = Keys::resolve(in_schema.as_arrow())?;
        let mut fields = vec![(None, Arc::new(Field::new("rank", DataType::Int64, false)))];
        fields.extend(
            in_schema
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != keys.warm)
                .map(|(_, (q, f))| (q.cloned(), Arc::clone(f))),
        );
        fields.push((
            None,
            Arc::new(Field::new(EXPLORED_COLUMN, DataType::Boolean, false)),
        ));
        let schema = DFSchema::new_with_metadata(fields, in_schema.metadata().clone())?;
        Ok(ExploreNode {
            input,
            spec,
            keys,
            schema: Arc::new(schema),
        })
    }
}

impl PartialOrd for ExploreNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self.spec.limit, &self.input)
            .partial_cmp(&(other.spec.limit, &other.input))
            .filter(|c| *c != Ordering::Equal || self == other)
    }
}

impl UserDefinedLogicalNodeCore for ExploreNode {
    fn name(&self) -> &str {
        "Explore"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Explore: {}", self.spec)
    }
    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Ok::<[LogicalPlan; 1], _>([input]) = inputs.try_into() else {
            return internal_err!("Explore takes exactly one input");
        };
        if !exprs.is_empty() {
            return internal_err!("Explore takes no expressions");
        }
        ExploreNode::try_new(Arc::new(input), self.spec)
    }
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // Output column j (after rank) is input column j-1, shifted past the warm flag.
        let input_of = |j: usize| -> Option<usize> {
            let k = j.checked_sub(1)?;
            let i = if k >= self.keys.warm { k + 1 } else { k };
            (i < self.input.schema().fields().len()).then_some(i)
        };
        let mut needed: Vec<usize> = output_columns
            .iter()
            .filter_map(|&j| input_of(j))
            .chain([self.keys.id, self.keys.score, self.keys.warm])
            .chain(self.keys.creator)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

/// Plans [`ExploreNode`] as [`ExploreExec`].
#[derive(Debug, Default)]
pub(crate) struct ExplorePlanner;

#[async_trait]
impl ExtensionPlanner for ExplorePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ExploreNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return internal_err!("Explore takes exactly one input");
        };
        Ok(Some(Arc::new(ExploreExec::try_new(
            Arc::clone(input),
            node.spec,
        )?)))
    }
}

/// Buffers every candidate (accounted in the memory pool), then builds the page.
#[derive(Debug)]
pub(crate) struct ExploreExec {
    input: Arc<dyn ExecutionPlan>,
    spec: ExploreSpec,
    keys: Keys,
    properties: Arc<PlanProperties>,
}

impl ExploreExec {
    fn try_new(input: Arc<dyn ExecutionPlan>, spec: ExploreSpec) -> Result<ExploreExec> {
        let in_schema = input.schema();
        let keys = Keys::resolve(&in_schema)?;
        let schema = Arc::new(Schema::new_with_metadata(
            output_fields(&in_schema, &keys),
            in_schema.metadata().clone(),
        ));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(ExploreExec {
            input,
            spec,
            keys,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for ExploreExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ExploreExec: {}", self.spec)
    }
}

impl ExecutionPlan for ExploreExec {
    fn name(&self) -> &str {
        "ExploreExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![Distribution::SinglePartition])
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Ok::<[Arc<dyn ExecutionPlan>; 1], _>([input]) = children.try_into() else {
            return internal_err!("ExploreExec takes exactly one input");
        };
        Ok(Arc::new(ExploreExec::try_new(input, self.spec)?))
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("ExploreExec has one output partition, not {partition}");
        }
        let input = execute_stream(Arc::clone(&self.input), Arc::clone(&context))?;
        let in_schema = self.input.schema();
        let schema = self.schema();
        let (spec, keys) = (self.spec, self.keys);
        let reservation = MemoryConsumer::new("ExploreExec").register(context.memory_pool());
        let run = async move {
            let mut batches = Vec::new();
            let mut input = input;
            while let Some(b) = input.next().await {
                let b = b?;
                reservation.try_grow(b.get_array_memory_size())?;
                batches.push(b);
            }
            let all = concat_batches(&in_schema, &batches)?;
            drop(batches);
            let page = page_of(&all, &keys, &spec)?;
            Ok::<_, datafusion::error::DataFusionError>(vec![output(&all, &keys, &page, schema)?])
        };
        let out = futures::stream::once(run)
            .map_ok(|b| futures::stream::iter(b.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), out)))
    }
}

fn page_of(all: &RecordBatch, keys: &Keys, spec: &ExploreSpec) -> Result<Vec<(usize, bool)>> {
    let ids = all.column(keys.id).as_primitive::<Int64Type>();
    let scores = all.column(keys.score).as_primitive::<Float64Type>();
    let warm = all.column(keys.warm).as_boolean();
    let creators = keys
        .creator
        .map(|c| all.column(c).as_primitive::<Int64Type>().clone());
    let mut cands = Vec::with_capacity(all.num_rows());
    for i in 0..all.num_rows() {
        if ids.is_null(i) {
            return internal_err!("EXPLORE: a candidate has a NULL id");
        }
        cands.push(Candidate {
            id: ids.value(i),
            creator: creators
                .as_ref()
                .and_then(|c| c.is_valid(i).then(|| c.value(i))),
            score: scores.is_valid(i).then(|| scores.value(i)),
            warm: warm.is_valid(i) && warm.value(i),
        });
    }
    Ok(explore_page(
        &cands,
        spec.limit,
        spec.max_per_creator,
        spec.fraction,
        spec.user,
        spec.day,
    ))
}

fn output(
    all: &RecordBatch,
    keys: &Keys,
    page: &[(usize, bool)],
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let take = UInt32Array::from(page.iter().map(|(i, _)| *i as u32).collect::<Vec<_>>());
    let picked = take_record_batch(all, &take)?;
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
        1..=page.len() as i64,
    ))];
    columns.extend(
        picked
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != keys.warm)
            .map(|(_, c)| c.clone()),
    );
    columns.push(Arc::new(BooleanArray::from(
        page.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
    )));
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_follow_the_rule() {
        assert_eq!(slot_ranks(0.1, 50), vec![10, 20, 30, 40, 50]);
        assert_eq!(slot_ranks(0.1, 10), vec![10]);
        assert_eq!(slot_ranks(0.1, 5), vec![5]);
        assert_eq!(slot_ranks(1.0, 3), vec![1, 2, 3]);
        assert_eq!(slot_ranks(0.3, 10), vec![3, 6, 9]);
        assert_eq!(slot_ranks(0.3, 11), vec![3, 6, 9, 11]);
        // 20 slots, 16 multiples of 3: the last four free ranks from the end.
        let r = slot_ranks(0.4, 50);
        assert_eq!(r.len(), 20);
        assert!(r.ends_with(&[45, 46, 47, 48, 49, 50]), "{r:?}");
    }

    #[test]
    fn perturbation_is_stable_and_spread() {
        assert_eq!(perturbation(7, 3, 100), perturbation(7, 3, 100));
        assert_ne!(perturbation(7, 3, 100), perturbation(8, 3, 100));
        assert_ne!(perturbation(7, 3, 100), perturbation(7, 3, 101));
        let mean: f64 = (0..10_000).map(|i| perturbation(1, i, 5)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    /// The rule of the module docs, written the slow way.
    fn reference(
        cands: &[Candidate],
        limit: usize,
        max: Option<u32>,
        f: f64,
        user: u64,
        day: i64,
    ) -> Vec<(usize, bool)> {
        let warm_scores: Vec<(Option<i64>, f64)> = cands
            .iter()
            .filter(|c| c.warm)
            .filter_map(|c| c.score.filter(|s| s.is_finite()).map(|s| (c.creator, s)))
            .collect();
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let global = if warm_scores.is_empty() {
            0.0
        } else {
            mean(warm_scores.iter().map(|x| x.1).collect())
        };
        let prior = |c: &Candidate| {
            let own: Vec<f64> = warm_scores
                .iter()
                .filter(|(cr, _)| cr.is_some() && *cr == c.creator)
                .map(|x| x.1)
                .collect();
            if own.is_empty() { global } else { mean(own) }
        };
        let colds: Vec<usize> = (0..cands.len()).filter(|&i| !cands[i].warm).collect();
        let priors: Vec<f64> = colds.iter().map(|&i| prior(&cands[i])).collect();
        let lo = priors.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = priors.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let spread = if hi > lo { hi - lo } else { 1.0 };
        let mut cold: Vec<(f64, i64, usize)> = colds
            .iter()
            .zip(&priors)
            .map(|(&i, p)| {
                (
                    p + spread * perturbation(user, cands[i].id as u64, day),
                    cands[i].id,
                    i,
                )
            })
            .collect();
        cold.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut warm: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].warm).collect();
        warm.sort_by(|a, b| by_score(&cands[*a], &cands[*b]));
        let slots = slot_ranks(f, limit);
        let mut queues = [warm, cold.into_iter().map(|x| x.2).collect::<Vec<_>>()];
        let mut page: Vec<(usize, bool)> = Vec::new();
        let count = |page: &[(usize, bool)], cr: Option<i64>| {
            page.iter()
                .filter(|(i, _)| cr.is_some() && cands[*i].creator == cr)
                .count() as u32
        };
        let mut skipped: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        'ranks: for rank in 1..=limit {
            let first = usize::from(slots.contains(&rank));
            for side in [first, 1 - first] {
                while !queues[side].is_empty() {
                    let i = queues[side].remove(0);
                    let ok = match max {
                        Some(m) => count(&page, cands[i].creator) < m || cands[i].creator.is_none(),
                        None => true,
                    };
                    if ok {
                        page.push((i, side == 1));
                        continue 'ranks;
                    }
                    skipped[side].push(i);
                }
            }
            break;
        }
        for (side, sk) in skipped.iter().enumerate() {
            for &i in sk {
                if page.len() < limit {
                    page.push((i, side == 1));
                }
            }
        }
        page
    }

    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (
                prop::option::weighted(0.8, 0i64..6),
                prop::option::weighted(0.95, -50.0f64..50.0),
                any::<bool>(),
            ),
            0..60,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (creator, score, warm))| Candidate {
                    id: i as i64 * 3 + 1,
                    creator,
                    score: score.map(|s| (s * 4.0).round() / 4.0),
                    warm,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn page_equals_the_reference(
            cands in candidates(),
            limit in 0usize..40,
            max in prop::option::of(1u32..4),
            f in prop::sample::select(vec![0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0]),
            user in 0u64..5,
            day in 0i64..3,
        ) {
            let got = explore_page(&cands, limit, max, f, user, day);
            let want = reference(&cands, limit, max, f, user, day);
            prop_assert_eq!(&got, &want);
            // Every explored row is cold, every other one warm.
            for (i, e) in &got {
                prop_assert_eq!(*e, !cands[*i].warm);
            }
            prop_assert!(got.len() == limit.min(cands.len()));
        }
    }
}
