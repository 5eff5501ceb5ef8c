//! `Mask`: FILTER terms that remove rows (`FILTER unseen`, `FILTER not blocks`) applied
//! to the scored candidates, right under the ranking.
//!
//! Decision — **removing terms after scoring, keeping terms before.** A term that keeps
//! only its set (`FILTER follows`, `FILTER liked`) leaves few candidates, so it filters
//! right above the scan and only those are scored. A term that removes its set usually
//! removes few rows, and filtering the scan's batches would hand the signal functions
//! fresh id arrays: the ordinal memo (udf.rs), keyed by the scan cache's buffers, then
//! misses and every id is hashed again — measured at 1 M items, `FILTER not blocks` cost
//! 8.9 ms that way on an 11 ms RETRIEVE. Scoring the cached batches and dropping the
//! removed rows from the (id, creator, score) output costs a bitmap test per row and one
//! copy of those few columns. The optimizer must not push this filter below the
//! projection again, hence a plan node of its own rather than a `Filter`.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, internal_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use crate::retrieve::FilterSet;

/// `plan` with the rows failing any of `sets` dropped (each set's column must be an
/// Int64 column of `plan`). `plan` itself when there are none.
pub(crate) fn mask_plan(plan: LogicalPlan, sets: Vec<FilterSet>) -> Result<LogicalPlan> {
    if sets.is_empty() {
        return Ok(plan);
    }
    let columns = sets
        .iter()
        .map(|s| column_index(plan.schema(), s.column))
        .collect::<Result<Vec<_>>>()?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(MaskNode {
            input: plan,
            sets: Arc::new(sets),
            columns,
        }),
    }))
}

fn column_index(schema: &DFSchemaRef, name: &str) -> Result<usize> {
    match schema.fields().iter().position(|f| f.name() == name) {
        Some(i) => Ok(i),
        None => plan_err!("Mask: the candidates have no column {name}"),
    }
}

/// The logical node (`Mask: NOT marked_by[user 7 seen](id), …` in EXPLAIN).
#[derive(Debug, Clone)]
pub(crate) struct MaskNode {
    input: LogicalPlan,
    sets: Arc<Vec<FilterSet>>,
    /// Each set's column in `input`.
    columns: Vec<usize>,
}

impl PartialEq for MaskNode {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && Arc::ptr_eq(&self.sets, &other.sets)
    }
}
impl Eq for MaskNode {}
impl std::hash::Hash for MaskNode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.columns.hash(state);
    }
}
impl PartialOrd for MaskNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.input
            .partial_cmp(&other.input)
            .filter(|c| *c != Ordering::Equal || self == other)
    }
}

fn describe(sets: &[FilterSet], f: &mut fmt::Formatter) -> fmt::Result {
    for (i, s) in sets.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        let not = if s.want { "" } else { "NOT " };
        write!(f, "{not}{}[{}]({})", s.function, s.label, s.column)?;
    }
    Ok(())
}

impl UserDefinedLogicalNodeCore for MaskNode {
    fn name(&self) -> &str {
        "Mask"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Mask: ")?;
        describe(&self.sets, f)
    }
    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Ok::<[LogicalPlan; 1], _>([input]) = inputs.try_into() else {
            return internal_err!("Mask takes exactly one input");
        };
        if !exprs.is_empty() {
            return internal_err!("Mask takes no expressions");
        }
        let columns = self
            .sets
            .iter()
            .map(|s| column_index(input.schema(), s.column))
            .collect::<Result<Vec<_>>>()?;
        Ok(MaskNode {
            input,
            sets: self.sets.clone(),
            columns,
        })
    }
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let mut needed: Vec<usize> = output_columns
            .iter()
            .copied()
            .chain(self.columns.iter().copied())
            .collect();
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

/// Plans [`MaskNode`] as [`MaskExec`].
#[derive(Debug, Default)]
pub(crate) struct MaskPlanner;

#[async_trait]
impl ExtensionPlanner for MaskPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<MaskNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return internal_err!("Mask takes exactly one input");
        };
        let schema = input.schema();
        let mut columns = Vec::with_capacity(node.sets.len());
        for s in node.sets.iter() {
            match schema.fields().iter().position(|f| f.name() == s.column) {
                Some(i) => columns.push(i),
                None => return internal_err!("MaskExec: no column {}", s.column),
            }
        }
        Ok(Some(Arc::new(MaskExec {
            input: Arc::clone(input),
            sets: node.sets.clone(),
            columns,
            properties: Arc::clone(input.properties()),
        })))
    }
}

/// Drops the rows of each input batch that fail a set; partitioning and order are the
/// input's.
#[derive(Debug)]
pub(crate) struct MaskExec {
    input: Arc<dyn ExecutionPlan>,
    sets: Arc<Vec<FilterSet>>,
    columns: Vec<usize>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for MaskExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MaskExec: ")?;
        describe(&self.sets, f)
    }
}

impl ExecutionPlan for MaskExec {
    fn name(&self) -> &str {
        "MaskExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
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
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Ok::<[Arc<dyn ExecutionPlan>; 1], _>([input]) = children.try_into() else {
            return internal_err!("MaskExec takes exactly one input");
        };
        Ok(Arc::new(MaskExec {
            properties: Arc::clone(input.properties()),
            input,
            sets: self.sets.clone(),
            columns: self.columns.clone(),
        }))
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let sets = self.sets.clone();
        let columns = self.columns.clone();
        let out = input.map(move |batch| {
            let batch = batch?;
            mask(&batch, &sets, &columns)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), out)))
    }
}

fn mask(batch: &RecordBatch, sets: &[FilterSet], columns: &[usize]) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut keep: Option<BooleanBuffer> = None;
    for (s, &c) in sets.iter().zip(columns) {
        let Some(values) = batch.column(c).as_primitive_opt::<Int64Type>() else {
            return internal_err!("MaskExec: column {} is not BIGINT", s.column);
        };
        // Ids are non-negative, so a negative value (read as a huge u64) is in no set;
        // a NULL (an item without a creator) is in no set either.
        let raw = values.values();
        let nulls = values.nulls();
        let bits = match (s.dense(), nulls) {
            (Some(d), None) => {
                BooleanBuffer::collect_bool(n, |i| d.contains(raw[i] as u64) == s.want)
            }
            _ => BooleanBuffer::collect_bool(n, |i| {
                (nulls.is_none_or(|m| m.is_valid(i)) && s.contains(raw[i] as u64)) == s.want
            }),
        };
        keep = Some(match keep {
            Some(k) => &k & &bits,
            None => bits,
        });
    }
    let Some(keep) = keep else {
        return Ok(batch.clone());
    };
    if keep.count_set_bits() == n {
        return Ok(batch.clone());
    }
    Ok(filter_record_batch(batch, &BooleanArray::new(keep, None))?)
}
