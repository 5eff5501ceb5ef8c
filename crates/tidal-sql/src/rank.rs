//! The final step of RETRIEVE: rank candidates by score (ties by smaller id), with the
//! optional per-creator diversity rule.
//!
//! The rule (SQL.md §5): candidates are walked in `(score DESC, id ASC)` order, with
//! NULL scores after every non-NULL score. Without diversity the first LIMIT of them
//! are the result. With `max_per_creator n`, a candidate is picked only while its
//! creator has fewer than `n` picks; the walk stops at LIMIT picks, and if it runs out
//! of candidates first, the skipped ones fill the tail in walk order until LIMIT.
//! A NULL `creator_id` is never limited (each such row is its own creator).
//!
//! Scores follow Arrow's total order for floats, as `ORDER BY` does: NaN ranks above
//! every number. Rows with the same score and the same id come in unspecified order.
//! A NULL id is an execution error: ids are primary keys, so one means a broken input.
//!
//! The plan pieces: [`RankNode`] (logical, built with [`rank_plan`]) is planned by
//! [`RankPlanner`] into [`RankExec`]; [`TidalQueryPlanner`] installs the planner.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{
    SortColumn, SortOptions, concat, concat_batches, interleave_record_batch, lexsort_to_indices,
    take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::memory::RecordBatchMemoryCounter;
use datafusion::common::{DFSchema, DFSchemaRef, exec_err, internal_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, CardinalityEffect, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    InputDistributionRequirements, Partitioning, PlanProperties, ReplaceChildrenOptions,
    execute_stream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

/// The output column holding the 1-based position of a row in the ranking.
pub(crate) const RANK_COLUMN: &str = "rank";
const ID_COLUMN: &str = "id";
const SCORE_COLUMN: &str = "score";
const CREATOR_COLUMN: &str = "creator_id";

/// The diversity walk first sorts this many candidates per LIMIT, and doubles the
/// prefix while the walk over it ends with fewer than LIMIT picks.
const DIVERSITY_PREFIX_PER_LIMIT: usize = 4;

/// Where the columns the ranking reads sit in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyColumns {
    id: usize,
    score: usize,
    /// Present exactly when the diversity rule is on.
    creator: Option<usize>,
}

impl KeyColumns {
    /// Finds `id` Int64, `score` Float64 and, with diversity, `creator_id` Int64 by
    /// (unqualified) name; rejects an input that already has a `rank` column.
    fn resolve(schema: &Schema, max_per_creator: Option<u32>) -> Result<KeyColumns> {
        if max_per_creator == Some(0) {
            return plan_err!("max_per_creator must be at least 1");
        }
        if schema.fields().iter().any(|f| f.name() == RANK_COLUMN) {
            return plan_err!(
                "the ranking adds a column named {RANK_COLUMN}; its input must not have one"
            );
        }
        let creator = match max_per_creator {
            Some(_) => Some(key_index(schema, CREATOR_COLUMN, &DataType::Int64)?),
            None => None,
        };
        Ok(KeyColumns {
            id: key_index(schema, ID_COLUMN, &DataType::Int64)?,
            score: key_index(schema, SCORE_COLUMN, &DataType::Float64)?,
            creator,
        })
    }

    /// The sort of the walk: score descending with NULLs last, then id ascending.
    fn sort_columns(&self, batch: &RecordBatch) -> [SortColumn; 2] {
        sort_columns(
            Arc::clone(batch.column(self.score)),
            Arc::clone(batch.column(self.id)),
        )
    }
}

fn sort_columns(score: ArrayRef, id: ArrayRef) -> [SortColumn; 2] {
    [
        SortColumn {
            values: score,
            options: Some(SortOptions {
                descending: true,
                nulls_first: false,
            }),
        },
        SortColumn {
            values: id,
            options: Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
        },
    ]
}

fn key_index(schema: &Schema, name: &str, expected: &DataType) -> Result<usize> {
    let mut matches = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == name);
    let Some((index, field)) = matches.next() else {
        return plan_err!(
            "the ranking needs a column {name} of type {expected}; its input has none"
        );
    };
    if matches.next().is_some() {
        return plan_err!("the ranking input has more than one column named {name}");
    }
    if field.data_type() != expected {
        return plan_err!(
            "the ranking needs column {name} to be {expected}, not {}",
            field.data_type()
        );
    }
    Ok(index)
}

fn rank_field() -> Field {
    Field::new(RANK_COLUMN, DataType::Int64, false)
}

fn fmt_params(
    f: &mut fmt::Formatter,
    limit: usize,
    max_per_creator: Option<u32>,
    sep: &str,
) -> fmt::Result {
    match max_per_creator {
        Some(n) => write!(f, "limit={limit}{sep}max_per_creator={n}"),
        None => write!(f, "limit={limit}{sep}max_per_creator=none"),
    }
}

// ---------------------------------------------------------------------------------
// Logical plan
// ---------------------------------------------------------------------------------

/// Wraps `input` in a [`RankNode`]: the result has `rank` first, then the input's
/// columns, `limit` rows at most, in rank order.
pub(crate) fn rank_plan(
    input: LogicalPlan,
    limit: usize,
    max_per_creator: Option<u32>,
) -> Result<LogicalPlan> {
    let node = RankNode::try_new(Arc::new(input), limit, max_per_creator)?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

/// The logical ranking operator (`Rank: limit=50, max_per_creator=2` in EXPLAIN).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RankNode {
    input: Arc<LogicalPlan>,
    limit: usize,
    max_per_creator: Option<u32>,
    keys: KeyColumns,
    /// `rank` (unqualified), then the input's fields with their qualifiers.
    schema: DFSchemaRef,
}

impl RankNode {
    pub(crate) fn try_new(
        input: Arc<LogicalPlan>,
        limit: usize,
        max_per_creator: Option<u32>,
    ) -> Result<RankNode> {
        let input_schema = input.schema();
        let keys = KeyColumns::resolve(input_schema.as_arrow(), max_per_creator)?;
        let mut fields = vec![(None, Arc::new(rank_field()))];
        fields.extend(
            input_schema
                .iter()
                .map(|(q, f)| (q.cloned(), Arc::clone(f))),
        );
        let schema = DFSchema::new_with_metadata(fields, input_schema.metadata().clone())?;
        Ok(RankNode {
            input,
            limit,
            max_per_creator,
            keys,
            schema: Arc::new(schema),
        })
    }
}

// `schema` and `keys` follow from the other fields, so the order leaves them out.
impl PartialOrd for RankNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self.limit, self.max_per_creator, &self.input)
            .partial_cmp(&(other.limit, other.max_per_creator, &other.input))
            .filter(|cmp| *cmp != Ordering::Equal || self == other)
    }
}

impl UserDefinedLogicalNodeCore for RankNode {
    fn name(&self) -> &str {
        "Rank"
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
        write!(f, "Rank: ")?;
        fmt_params(f, self.limit, self.max_per_creator, ", ")
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Ok::<[LogicalPlan; 1], _>([input]) = inputs.try_into() else {
            return internal_err!("Rank takes exactly one input");
        };
        if !exprs.is_empty() {
            return internal_err!("Rank takes no expressions");
        }
        RankNode::try_new(Arc::new(input), self.limit, self.max_per_creator)
    }

    /// The input columns a parent needs (every output column but `rank` maps to the
    /// input column one to its left), plus the ones the ranking reads. Lets the
    /// optimizer prune unused columns below the ranking.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let mut needed: Vec<usize> = output_columns
            .iter()
            .filter_map(|c| c.checked_sub(1))
            .chain([self.keys.id, self.keys.score])
            .chain(self.keys.creator)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

// ---------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------

/// Plans [`RankNode`] as [`RankExec`].
#[derive(Debug, Default)]
pub(crate) struct RankPlanner;

#[async_trait]
impl ExtensionPlanner for RankPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(rank) = node.as_any().downcast_ref::<RankNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return internal_err!("Rank takes exactly one input");
        };
        let exec = RankExec::try_new(Arc::clone(input), rank.limit, rank.max_per_creator)?;
        Ok(Some(Arc::new(exec)))
    }
}

/// The session's query planner: DataFusion's default physical planner with tidalDB's
/// extension planners, [`RankPlanner`] first.
pub(crate) struct TidalQueryPlanner {
    planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
}

impl TidalQueryPlanner {
    pub(crate) fn new(extra: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>) -> TidalQueryPlanner {
        let mut planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> =
            vec![Arc::new(RankPlanner)];
        planners.extend(extra);
        TidalQueryPlanner { planners }
    }
}

impl fmt::Debug for TidalQueryPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TidalQueryPlanner")
            .field("planners", &self.planners.len())
            .finish()
    }
}

#[async_trait]
impl datafusion::execution::context::QueryPlanner for TidalQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(self.planners.clone())
            .create_physical_plan(logical_plan, session)
            .await
    }
}

// ---------------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------------

/// The physical ranking operator: one output partition with `rank` Int64 first, then
/// the input's columns, at most `limit` rows in rank order.
///
/// Without diversity it keeps a running top-`limit` (memory O(limit)). With diversity
/// it buffers the input, accounted in the task's memory pool, and sorts only as long a
/// prefix as the walk needs. It asks for a single input partition; executed on an
/// input with several it merges them itself.
#[derive(Debug)]
pub(crate) struct RankExec {
    input: Arc<dyn ExecutionPlan>,
    limit: usize,
    max_per_creator: Option<u32>,
    keys: KeyColumns,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RankExec {
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        limit: usize,
        max_per_creator: Option<u32>,
    ) -> Result<RankExec> {
        let input_schema = input.schema();
        let keys = KeyColumns::resolve(&input_schema, max_per_creator)?;
        let mut fields = vec![Arc::new(rank_field())];
        fields.extend(input_schema.fields().iter().cloned());
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        ));
        // Rows come out in rank order, whatever the diversity rule did.
        let by_rank = PhysicalSortExpr::new(
            Arc::new(Column::new(RANK_COLUMN, 0)) as Arc<dyn PhysicalExpr>,
            SortOptions {
                descending: false,
                nulls_first: false,
            },
        );
        let properties = PlanProperties::new(
            EquivalenceProperties::new_with_orderings(Arc::clone(&schema), [[by_rank]]),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(RankExec {
            input,
            limit,
            max_per_creator,
            keys,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for RankExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "RankExec: ")?;
                fmt_params(f, self.limit, self.max_per_creator, ", ")
            }
            DisplayFormatType::TreeRender => fmt_params(f, self.limit, self.max_per_creator, "\n"),
        }
    }
}

impl ExecutionPlan for RankExec {
    fn name(&self) -> &str {
        "RankExec"
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
            return internal_err!("RankExec takes exactly one input");
        };
        Ok(Arc::new(RankExec::try_new(
            input,
            self.limit,
            self.max_per_creator,
        )?))
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
            return internal_err!("RankExec has one output partition, not {partition}");
        }
        // Merges the input's partitions when the optimizer did not (direct execution).
        let input = execute_stream(Arc::clone(&self.input), Arc::clone(&context))?;
        let ranking = Ranking {
            limit: self.limit,
            max_per_creator: self.max_per_creator,
            keys: self.keys,
            schema: self.schema(),
            batch_size: context.session_config().batch_size().max(1),
        };
        let reservation = MemoryConsumer::new("RankExec").register(context.memory_pool());
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let output = futures::stream::once(ranking.run(input, reservation, metrics))
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            output,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::LowerEqual
    }
}

/// What one execution of [`RankExec`] needs, moved into its stream.
struct Ranking {
    limit: usize,
    max_per_creator: Option<u32>,
    keys: KeyColumns,
    /// The output schema.
    schema: SchemaRef,
    batch_size: usize,
}

impl Ranking {
    /// Consumes `input` and returns the output batches. Awaiting the input is where a
    /// cancelled query stops: dropping the stream drops this future.
    async fn run(
        self,
        mut input: SendableRecordBatchStream,
        reservation: MemoryReservation,
        metrics: BaselineMetrics,
    ) -> Result<Vec<RecordBatch>> {
        if self.limit == 0 {
            return Ok(vec![]);
        }
        let ranked = match self.max_per_creator {
            None => {
                let mut top = RunningTop::new(self.keys, self.limit, reservation);
                while let Some(batch) = input.next().await {
                    let _timer = metrics.elapsed_compute().timer();
                    top.push(batch?)?;
                }
                top.finish()
            }
            Some(max_per_creator) => {
                let mut buffer = DiversityBuffer::new(self.keys, reservation);
                while let Some(batch) = input.next().await {
                    buffer.push(batch?)?;
                }
                let _timer = metrics.elapsed_compute().timer();
                buffer.finish(self.limit, max_per_creator)?
            }
        };
        let Some(ranked) = ranked else {
            return Ok(vec![]);
        };
        let _timer = metrics.elapsed_compute().timer();
        metrics.record_output(ranked.num_rows());
        self.output_batches(ranked)
    }

    /// Prepends `rank` to the ranked rows and cuts them into batches of `batch_size`.
    fn output_batches(&self, ranked: RecordBatch) -> Result<Vec<RecordBatch>> {
        let rows = ranked.num_rows();
        let Ok(last_rank) = i64::try_from(rows) else {
            return internal_err!("RankExec: {rows} rows do not fit a BIGINT rank");
        };
        let mut columns = vec![Arc::new(Int64Array::from_iter_values(1..=last_rank)) as ArrayRef];
        columns.extend(ranked.columns().iter().cloned());
        let all = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok((0..rows)
            .step_by(self.batch_size)
            .map(|offset| all.slice(offset, self.batch_size.min(rows - offset)))
            .collect())
    }
}

fn check_ids(batch: &RecordBatch, keys: KeyColumns) -> Result<()> {
    if batch.column(keys.id).null_count() > 0 {
        return exec_err!("the ranking input has a row with a NULL id");
    }
    Ok(())
}

/// The best `limit` rows seen so far, in walk order.
struct RunningTop {
    keys: KeyColumns,
    limit: usize,
    top: Option<RecordBatch>,
    reservation: MemoryReservation,
}

impl RunningTop {
    fn new(keys: KeyColumns, limit: usize, reservation: MemoryReservation) -> RunningTop {
        RunningTop {
            keys,
            limit,
            top: None,
            reservation,
        }
    }

    fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        check_ids(&batch, self.keys)?;
        // Cut the batch to its own best rows first, so the merge below stays small.
        let candidates = if batch.num_rows() > self.limit {
            self.best_rows(&batch)?
        } else {
            batch
        };
        let merged = match self.top.take() {
            Some(top) => concat_batches(&top.schema(), [&top, &candidates])?,
            None => candidates,
        };
        let top = self.best_rows(&merged)?;
        self.reservation.try_resize(top.get_array_memory_size())?;
        self.top = Some(top);
        Ok(())
    }

    /// The first `limit` rows of `batch` in walk order, copied out of it.
    fn best_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let order = lexsort_to_indices(&self.keys.sort_columns(batch), Some(self.limit))?;
        Ok(take_record_batch(batch, &order)?)
    }

    fn finish(self) -> Option<RecordBatch> {
        self.top
    }
}

/// The whole input, for the diversity walk, accounted in the memory pool.
struct DiversityBuffer {
    keys: KeyColumns,
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Counts buffers shared by several batches (zero-copy slices) once.
    counter: RecordBatchMemoryCounter,
    reservation: MemoryReservation,
}

impl DiversityBuffer {
    fn new(keys: KeyColumns, reservation: MemoryReservation) -> DiversityBuffer {
        DiversityBuffer {
            keys,
            batches: vec![],
            rows: 0,
            counter: RecordBatchMemoryCounter::new(),
            reservation,
        }
    }

    fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        check_ids(&batch, self.keys)?;
        self.reservation
            .try_grow(self.counter.count_batch(&batch))?;
        self.rows += batch.num_rows();
        self.batches.push(batch);
        Ok(())
    }

    /// Runs the walk and gathers the chosen rows, in rank order.
    fn finish(self, limit: usize, max_per_creator: u32) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        // The sort's indices are u32.
        if u32::try_from(self.rows).is_err() {
            return exec_err!("the ranking input has {} rows, too many to sort", self.rows);
        }
        let Some(creator) = self.keys.creator else {
            return internal_err!("the diversity rule needs a creator_id column");
        };
        let score = self.concat_column(self.keys.score)?;
        let id = self.concat_column(self.keys.id)?;
        let creator = self.concat_column(creator)?;
        let scratch = self.rows * size_of::<u32>();
        self.reservation.try_grow(
            score.get_array_memory_size()
                + id.get_array_memory_size()
                + creator.get_array_memory_size()
                + scratch,
        )?;
        let Some(creator) = creator.as_primitive_opt::<Int64Type>() else {
            return internal_err!("creator_id is not Int64");
        };
        let keys = sort_columns(score, id);
        let chosen = diversity_walk(keys, creator, self.rows, limit, max_per_creator)?;
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        Ok(Some(interleave_record_batch(
            &batches,
            &self.locate(&chosen),
        )?))
    }

    /// One column of every buffered batch, as one array.
    fn concat_column(&self, index: usize) -> Result<ArrayRef> {
        let arrays: Vec<&dyn Array> = self
            .batches
            .iter()
            .map(|b| b.column(index).as_ref())
            .collect();
        Ok(concat(&arrays)?)
    }

    /// Row numbers across the buffer to (batch, row in batch) pairs.
    fn locate(&self, rows: &[u32]) -> Vec<(usize, usize)> {
        let starts: Vec<usize> = self
            .batches
            .iter()
            .scan(0, |start, b| {
                let this = *start;
                *start += b.num_rows();
                Some(this)
            })
            .collect();
        rows.iter()
            .map(|&row| {
                let row = row as usize;
                // `starts[0]` is 0, so the point is at least 1.
                let batch = starts.partition_point(|&s| s <= row) - 1;
                (batch, row - starts[batch])
            })
            .collect()
    }
}

/// The rows (indices into `creators`) the diversity rule picks, in rank order.
///
/// The picks of the walk depend only on the prefix it walks, so it sorts a prefix of
/// `DIVERSITY_PREFIX_PER_LIMIT * limit` rows, and doubles it while the walk runs out
/// of rows before LIMIT picks; only a walk over all rows applies the fill rule.
fn diversity_walk(
    keys: [SortColumn; 2],
    creators: &Int64Array,
    rows: usize,
    limit: usize,
    max_per_creator: u32,
) -> Result<Vec<u32>> {
    let mut prefix = limit.saturating_mul(DIVERSITY_PREFIX_PER_LIMIT).max(1);
    loop {
        let prefix_rows = prefix.min(rows);
        let order = lexsort_to_indices(&keys, Some(prefix_rows))?;
        let (mut picks, skipped) = walk(order.values(), creators, limit, max_per_creator);
        if picks.len() == limit {
            return Ok(picks);
        }
        if prefix_rows == rows {
            let missing = limit - picks.len();
            picks.extend(skipped.into_iter().take(missing));
            return Ok(picks);
        }
        prefix = prefix.saturating_mul(2);
    }
}

/// One greedy walk over `order`: the picks (at most `limit`), and the first `limit`
/// skipped rows in walk order (all the fill rule can need).
fn walk(
    order: &[u32],
    creators: &Int64Array,
    limit: usize,
    max_per_creator: u32,
) -> (Vec<u32>, Vec<u32>) {
    let mut per_creator: HashMap<i64, u32> = HashMap::new();
    let mut picks = Vec::with_capacity(limit);
    let mut skipped = Vec::new();
    for &row in order {
        if picks.len() == limit {
            break;
        }
        let index = row as usize;
        if creators.is_null(index) {
            picks.push(row);
            continue;
        }
        let taken = per_creator.entry(creators.value(index)).or_insert(0);
        if *taken < max_per_creator {
            *taken += 1;
            picks.push(row);
        } else if skipped.len() < limit {
            skipped.push(row);
        }
    }
    (picks, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext, col, lit};
    use proptest::prelude::*;

    /// One candidate; `title` stands for the entity columns that pass through.
    #[derive(Debug, Clone)]
    struct Row {
        id: i64,
        score: Option<f64>,
        creator: Option<i64>,
        title: Option<String>,
    }

    /// Comparable form: scores by bits, so NaN equals itself and -0.0 differs from 0.0.
    type RowKey = (i64, Option<u64>, Option<i64>, Option<String>);

    impl Row {
        fn new(id: i64, score: Option<f64>, creator: Option<i64>) -> Row {
            let title = (id % 5 != 0).then(|| format!("title {id}"));
            Row {
                id,
                score,
                creator,
                title,
            }
        }

        fn key(&self) -> RowKey {
            (
                self.id,
                self.score.map(f64::to_bits),
                self.creator,
                self.title.clone(),
            )
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("score", DataType::Float64, true),
            Field::new("creator_id", DataType::Int64, true),
            Field::new("title", DataType::Utf8, true),
        ]))
    }

    fn batch(rows: &[Row]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.score))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.creator))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.title.clone()))),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    /// Splits rows over `partitions` round-robin, each cut into batches of `batch_rows`.
    fn split(rows: &[Row], partitions: usize, batch_rows: usize) -> Vec<Vec<RecordBatch>> {
        (0..partitions)
            .map(|p| {
                let mine: Vec<Row> = rows.iter().skip(p).step_by(partitions).cloned().collect();
                mine.chunks(batch_rows).map(batch).collect()
            })
            .collect()
    }

    /// The rule of SQL.md, written the obvious way.
    fn reference(rows: &[Row], limit: usize, max_per_creator: Option<u32>) -> Vec<RowKey> {
        let mut order = rows.to_vec();
        order.sort_by(|a, b| {
            let by_score = match (a.score, b.score) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            by_score.then(a.id.cmp(&b.id))
        });
        let Some(max) = max_per_creator else {
            return order.iter().take(limit).map(Row::key).collect();
        };
        let mut picked = Vec::new();
        let mut skipped = Vec::new();
        let mut per_creator: HashMap<i64, u32> = HashMap::new();
        for row in &order {
            if picked.len() == limit {
                break;
            }
            match row.creator {
                None => picked.push(row.key()),
                Some(c) => {
                    let n = per_creator.entry(c).or_default();
                    if *n < max {
                        *n += 1;
                        picked.push(row.key());
                    } else {
                        skipped.push(row.key());
                    }
                }
            }
        }
        let missing = limit - picked.len();
        picked.extend(skipped.into_iter().take(missing));
        picked
    }

    fn context(batch_size: usize) -> SessionContext {
        SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch_size))
    }

    async fn rank_partitions(
        ctx: &SessionContext,
        partitions: &[Vec<RecordBatch>],
        limit: usize,
        max_per_creator: Option<u32>,
    ) -> Result<Vec<RecordBatch>> {
        let source = MemorySourceConfig::try_new_exec(partitions, schema(), None)?;
        let exec = RankExec::try_new(source, limit, max_per_creator)?;
        collect(Arc::new(exec), ctx.task_ctx()).await
    }

    /// The output rows, checking the rank column counts 1, 2, ... across batches and
    /// that no batch exceeds `batch_size`.
    fn ranked_rows(batches: &[RecordBatch], batch_size: usize) -> Vec<RowKey> {
        let mut out = Vec::new();
        for b in batches {
            assert!(b.num_rows() <= batch_size, "batch of {} rows", b.num_rows());
            assert_eq!(b.schema().field(0), &rank_field());
            let rank = b.column(0).as_primitive::<Int64Type>();
            let id = b.column(1).as_primitive::<Int64Type>();
            let score = b
                .column(2)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            let creator = b.column(3).as_primitive::<Int64Type>();
            let title = b.column(4).as_string::<i32>();
            for i in 0..b.num_rows() {
                assert_eq!(rank.value(i), out.len() as i64 + 1);
                out.push((
                    id.value(i),
                    score.is_valid(i).then(|| score.value(i).to_bits()),
                    creator.is_valid(i).then(|| creator.value(i)),
                    title.is_valid(i).then(|| title.value(i).to_string()),
                ));
            }
        }
        out
    }

    async fn rank_rows(rows: &[Row], limit: usize, max_per_creator: Option<u32>) -> Vec<RowKey> {
        let out = rank_partitions(
            &context(8192),
            &split(rows, 1, 8192),
            limit,
            max_per_creator,
        )
        .await
        .unwrap();
        ranked_rows(&out, 8192)
    }

    fn ids(keys: &[RowKey]) -> Vec<i64> {
        keys.iter().map(|k| k.0).collect()
    }

    #[tokio::test]
    async fn ties_on_score_go_to_the_smaller_id() {
        let rows = [
            Row::new(5, Some(1.0), None),
            Row::new(3, Some(1.0), None),
            Row::new(9, Some(2.0), None),
            Row::new(1, Some(0.5), None),
            Row::new(4, Some(1.0), None),
        ];
        assert_eq!(ids(&rank_rows(&rows, 3, None).await), [9, 3, 4]);
        assert_eq!(ids(&rank_rows(&rows, 3, Some(1)).await), [9, 3, 4]);
    }

    #[tokio::test]
    async fn null_scores_rank_after_every_score() {
        let rows = [
            Row::new(1, None, None),
            Row::new(2, Some(0.1), None),
            Row::new(3, None, None),
            Row::new(4, Some(-5.0), None),
            Row::new(0, None, None),
        ];
        assert_eq!(ids(&rank_rows(&rows, 5, None).await), [2, 4, 0, 1, 3]);
        assert_eq!(ids(&rank_rows(&rows, 3, Some(2)).await), [2, 4, 0]);
    }

    #[tokio::test]
    async fn limit_above_the_input_returns_every_row() {
        let rows = [
            Row::new(1, Some(1.0), Some(7)),
            Row::new(2, Some(3.0), Some(7)),
            Row::new(3, Some(2.0), Some(7)),
        ];
        assert_eq!(ids(&rank_rows(&rows, 10, None).await), [2, 3, 1]);
        // Diversity skips 3 and 1, and the fill rule brings them back.
        assert_eq!(ids(&rank_rows(&rows, 10, Some(1)).await), [2, 3, 1]);
        assert!(rank_rows(&[], 10, None).await.is_empty());
        assert!(rank_rows(&[], 10, Some(1)).await.is_empty());
    }

    #[tokio::test]
    async fn limit_zero_returns_no_rows() {
        let rows = [Row::new(1, Some(1.0), Some(1))];
        assert!(rank_rows(&rows, 0, None).await.is_empty());
        assert!(rank_rows(&rows, 0, Some(1)).await.is_empty());
    }

    #[tokio::test]
    async fn diversity_skips_a_creator_at_its_cap() {
        let rows = [
            Row::new(1, Some(10.0), Some(100)),
            Row::new(2, Some(9.0), Some(100)),
            Row::new(3, Some(8.0), Some(100)),
            Row::new(4, Some(7.0), Some(200)),
            Row::new(5, Some(6.0), Some(300)),
            Row::new(6, Some(5.0), Some(200)),
        ];
        assert_eq!(ids(&rank_rows(&rows, 3, Some(1)).await), [1, 4, 5]);
        assert_eq!(ids(&rank_rows(&rows, 4, Some(2)).await), [1, 2, 4, 5]);
        assert_eq!(ids(&rank_rows(&rows, 4, None).await), [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn diversity_fills_the_tail_with_skipped_rows_in_score_order() {
        // Creator A has the three best scores, B one: A1, B1, then A2 fills the tail.
        let rows = [
            Row::new(11, Some(10.0), Some(1)),
            Row::new(12, Some(9.0), Some(1)),
            Row::new(13, Some(8.0), Some(1)),
            Row::new(21, Some(7.0), Some(2)),
        ];
        assert_eq!(ids(&rank_rows(&rows, 3, Some(1)).await), [11, 21, 12]);
        assert_eq!(ids(&rank_rows(&rows, 4, Some(1)).await), [11, 21, 12, 13]);
    }

    #[tokio::test]
    async fn diversity_walk_reads_past_its_first_prefix() {
        // The first prefix (4 × LIMIT rows) is all creator 1; creator 2's row is far below.
        let mut rows: Vec<Row> = (0..300)
            .map(|i| Row::new(i, Some(1000.0 - i as f64), Some(1)))
            .collect();
        rows.push(Row::new(999, Some(1.0), Some(2)));
        assert_eq!(ids(&rank_rows(&rows, 2, Some(1)).await), [0, 999]);
        assert_eq!(ids(&rank_rows(&rows, 3, Some(1)).await), [0, 999, 1]);
    }

    #[tokio::test]
    async fn null_creators_are_never_limited() {
        let rows = [
            Row::new(1, Some(5.0), None),
            Row::new(2, Some(4.0), None),
            Row::new(3, Some(3.0), Some(9)),
            Row::new(4, Some(2.0), None),
            Row::new(5, Some(1.5), Some(9)),
            Row::new(6, Some(1.0), None),
        ];
        assert_eq!(ids(&rank_rows(&rows, 5, Some(1)).await), [1, 2, 3, 4, 6]);
    }

    fn random_rows(n: usize, seed: u64) -> Vec<Row> {
        // A small LCG: deterministic, many ties, some NULLs.
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        (0..n)
            .map(|i| {
                let score = (next() % 10 != 0).then(|| (next() % 1000) as f64 / 10.0);
                let creator = (next() % 8 != 0).then(|| (next() % 50) as i64);
                Row::new(i as i64 * 3 - 1000, score, creator)
            })
            .collect()
    }

    #[tokio::test]
    async fn input_with_several_partitions_is_ranked_as_one() {
        let rows = random_rows(3_000, 7);
        for max in [None, Some(1), Some(3)] {
            let partitions = split(&rows, 4, 97);
            let ctx = context(16);
            // Directly: RankExec merges the partitions itself.
            let out = rank_partitions(&ctx, &partitions, 50, max).await.unwrap();
            assert_eq!(ranked_rows(&out, 16), reference(&rows, 50, max));
        }
    }

    #[tokio::test]
    async fn many_small_batches() {
        let rows = random_rows(2_000, 11);
        for max in [None, Some(2)] {
            let out = rank_partitions(&context(7), &split(&rows, 1, 1), 60, max)
                .await
                .unwrap();
            assert_eq!(ranked_rows(&out, 7), reference(&rows, 60, max));
        }
    }

    #[tokio::test]
    async fn output_batches_hold_at_most_the_session_batch_size() {
        let rows = random_rows(500, 3);
        let out = rank_partitions(&context(8), &split(&rows, 2, 64), 50, None)
            .await
            .unwrap();
        let sizes: Vec<usize> = out.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, [8, 8, 8, 8, 8, 8, 2]);
    }

    #[tokio::test]
    async fn large_input_with_a_small_limit() {
        // The shape RETRIEVE runs: many candidates, LIMIT 50.
        let rows = random_rows(200_000, 5);
        let partitions = split(&rows, 2, 8_192);
        for max in [None, Some(2)] {
            let out = rank_partitions(&context(8_192), &partitions, 50, max)
                .await
                .unwrap();
            assert_eq!(ranked_rows(&out, 8_192), reference(&rows, 50, max));
        }
    }

    #[tokio::test]
    async fn diversity_buffer_is_held_to_the_memory_pool() {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(64 * 1024, 1.0)
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        let rows = random_rows(50_000, 1);
        let partitions = split(&rows, 1, 1_000);
        let err = rank_partitions(&ctx, &partitions, 10, Some(1))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("Resources exhausted"),
            "unexpected error: {err}"
        );
        // The running top-k without diversity fits easily.
        let out = rank_partitions(&ctx, &partitions, 10, None).await.unwrap();
        assert_eq!(ranked_rows(&out, 8192), reference(&rows, 10, None));
    }

    #[tokio::test]
    async fn a_null_id_is_an_execution_error() {
        let ids = Int64Array::from(vec![Some(1), None]);
        let scores = Float64Array::from(vec![1.0, 2.0]);
        let creators = Int64Array::from(vec![1, 2]);
        let titles = StringArray::from(vec!["a", "b"]);
        let b = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(ids),
                Arc::new(scores),
                Arc::new(creators),
                Arc::new(titles),
            ],
        )
        .unwrap();
        for max in [None, Some(1)] {
            let err = rank_partitions(&context(10), &[vec![b.clone()]], 5, max)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("NULL id"), "{err}");
        }
    }

    #[test]
    fn missing_or_mistyped_columns_are_plan_errors() {
        let exec = |fields: Vec<Field>, max: Option<u32>| {
            let schema = Arc::new(Schema::new(fields));
            let source = MemorySourceConfig::try_new_exec(&[vec![]], schema, None).unwrap();
            RankExec::try_new(source, 5, max)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let id = || Field::new("id", DataType::Int64, false);
        let score = || Field::new("score", DataType::Float64, true);
        let creator = || Field::new("creator_id", DataType::Int64, true);
        assert!(exec(vec![id(), score()], None).is_ok());
        assert!(exec(vec![id(), score(), creator()], Some(2)).is_ok());
        let err = exec(vec![id(), score()], Some(2)).unwrap_err();
        assert!(err.contains("creator_id"), "{err}");
        let err = exec(vec![id(), Field::new("score", DataType::Int64, true)], None).unwrap_err();
        assert!(err.contains("score") && err.contains("Float64"), "{err}");
        let err = exec(vec![score()], None).unwrap_err();
        assert!(err.contains("id"), "{err}");
        let err = exec(
            vec![id(), score(), Field::new("rank", DataType::Int64, true)],
            None,
        )
        .unwrap_err();
        assert!(err.contains("rank"), "{err}");
        let err = exec(vec![id(), score(), creator()], Some(0)).unwrap_err();
        assert!(err.contains("max_per_creator"), "{err}");
        assert!(err.starts_with("Error during planning"), "{err}");
    }

    /// Scores with many ties, some NULLs and any float (NaN, -0.0, infinities); creators
    /// from a pool of `creators`, NULL in `null_percent` of the rows.
    fn row_strategy(
        creators: i64,
        null_percent: u32,
    ) -> impl Strategy<Value = (Option<f64>, Option<i64>)> {
        let score = prop_oneof![
            6 => (0u8..6).prop_map(|v| Some(f64::from(v) * 0.5)),
            2 => Just(None),
            1 => any::<f64>().prop_map(Some),
        ];
        let creator = (0u32..100, 0..creators)
            .prop_map(move |(roll, creator)| (roll >= null_percent).then_some(creator));
        (score, creator)
    }

    #[derive(Debug, Clone)]
    struct Case {
        rows: Vec<Row>,
        limit: usize,
        max_per_creator: Option<u32>,
        partitions: usize,
        batch_rows: usize,
        batch_size: usize,
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        // Few creators and few NULL creators make the walk read past its first prefix.
        let pool = (
            0usize..150,
            1i64..8,
            prop_oneof![Just(0), Just(10), Just(30)],
        );
        pool.prop_flat_map(|(n, creators, null_percent)| {
            (
                Just((0..n as i64).collect::<Vec<_>>()).prop_shuffle(),
                prop::collection::vec(row_strategy(creators, null_percent), n),
                0usize..=60,
                prop_oneof![Just(None), (1u32..4).prop_map(Some)],
                1usize..5,
                1usize..40,
                1usize..20,
            )
        })
        .prop_map(
            |(ids, values, limit, max_per_creator, partitions, batch_rows, batch_size)| {
                let rows = ids
                    .into_iter()
                    .zip(values)
                    .map(|(id, (score, creator))| Row::new(id * 2 - 50, score, creator))
                    .collect();
                Case {
                    rows,
                    limit,
                    max_per_creator,
                    partitions,
                    batch_rows,
                    batch_size,
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn ranks_like_the_reference(case in case_strategy()) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let partitions = split(&case.rows, case.partitions, case.batch_rows);
            let out = runtime
                .block_on(rank_partitions(
                    &context(case.batch_size),
                    &partitions,
                    case.limit,
                    case.max_per_creator,
                ))
                .unwrap();
            prop_assert_eq!(
                ranked_rows(&out, case.batch_size),
                reference(&case.rows, case.limit, case.max_per_creator)
            );
        }
    }

    /// A session whose query planner knows the Rank node, with `t` registered as a
    /// MemTable of three partitions.
    async fn session_with_table(rows: &[Row]) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(Arc::new(TidalQueryPlanner::new(vec![])))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let table = MemTable::try_new(schema(), split(rows, 3, 10)).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    #[tokio::test]
    async fn rank_plan_runs_through_the_optimizer_and_planner() {
        let rows = random_rows(200, 21);
        let ctx = session_with_table(&rows).await;
        let scan = ctx.table("t").await.unwrap().into_unoptimized_plan();
        let plan = rank_plan(scan, 20, Some(2)).unwrap();
        assert_eq!(plan.schema().field(0).name(), "rank");
        assert_eq!(
            plan.schema().qualified_field(1).0.map(|q| q.to_string()),
            Some("t".into())
        );

        let df = ctx.execute_logical_plan(plan).await.unwrap();
        let logical = df
            .clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string();
        assert!(
            logical.contains("Rank: limit=20, max_per_creator=2"),
            "{logical}"
        );
        let physical = df.clone().create_physical_plan().await.unwrap();
        let physical = displayable(physical.as_ref()).indent(true).to_string();
        assert!(
            physical.contains("RankExec: limit=20, max_per_creator=2"),
            "{physical}"
        );
        // Three input partitions, merged below the ranking.
        assert!(physical.contains("CoalescePartitionsExec"), "{physical}");

        let out = df.collect().await.unwrap();
        assert_eq!(ranked_rows(&out, 8192), reference(&rows, 20, Some(2)));
    }

    #[tokio::test]
    async fn explain_shows_the_rank_node_and_operator() {
        let ctx = session_with_table(&random_rows(10, 2)).await;
        let scan = ctx.table("t").await.unwrap().into_unoptimized_plan();
        let plan = rank_plan(scan, 50, None).unwrap();
        let explained = ctx
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .explain(false, false)
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&explained)
            .unwrap()
            .to_string();
        assert!(
            text.contains("Rank: limit=50, max_per_creator=none"),
            "{text}"
        );
        assert!(
            text.contains("RankExec: limit=50, max_per_creator=none"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn columns_unused_above_the_ranking_are_pruned_below_it() {
        let rows = random_rows(100, 4);
        let ctx = session_with_table(&rows).await;
        let scan = ctx.table("t").await.unwrap().into_unoptimized_plan();
        let plan = LogicalPlanBuilder::from(rank_plan(scan, 5, Some(1)).unwrap())
            .project(vec![col("rank"), col("id")])
            .unwrap()
            .build()
            .unwrap();
        let df = ctx.execute_logical_plan(plan).await.unwrap();
        let logical = df
            .clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string();
        // `title` is dropped at the scan; what the ranking reads stays.
        assert!(
            logical.contains("TableScan: t projection=[id, score, creator_id]"),
            "{logical}"
        );
        let out = df.collect().await.unwrap();
        let got: Vec<(i64, i64)> = out
            .iter()
            .flat_map(|b| {
                let rank = b.column(0).as_primitive::<Int64Type>().clone();
                let id = b.column(1).as_primitive::<Int64Type>().clone();
                (0..b.num_rows()).map(move |i| (rank.value(i), id.value(i)))
            })
            .collect();
        let want: Vec<(i64, i64)> = reference(&rows, 5, Some(1))
            .iter()
            .enumerate()
            .map(|(i, k)| (i as i64 + 1, k.0))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_filter_above_the_ranking_stays_above_it() {
        // Filtering after ranking keeps the ranks the rows had; pushed below, it would
        // renumber them and admit rows beyond the LIMIT.
        let rows: Vec<Row> = (0..10)
            .map(|i| Row::new(i, Some(f64::from(10 - i as i32)), None))
            .collect();
        let ctx = session_with_table(&rows).await;
        let scan = ctx.table("t").await.unwrap().into_unoptimized_plan();
        let plan = LogicalPlanBuilder::from(rank_plan(scan, 4, None).unwrap())
            .filter(col("id").gt_eq(lit(2_i64)))
            .unwrap()
            .build()
            .unwrap();
        let out = ctx
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let got: Vec<(i64, i64)> = out
            .iter()
            .flat_map(|b| {
                let rank = b.column(0).as_primitive::<Int64Type>().clone();
                let id = b.column(1).as_primitive::<Int64Type>().clone();
                (0..b.num_rows()).map(move |i| (rank.value(i), id.value(i)))
            })
            .collect();
        assert_eq!(got, [(3, 2), (4, 3)]);
    }

    #[test]
    fn rank_node_rejects_an_input_without_the_key_columns() {
        let scan = LogicalPlanBuilder::empty(false).build().unwrap();
        let err = rank_plan(scan, 5, None).unwrap_err().to_string();
        assert!(err.contains("id"), "{err}");
    }
}
