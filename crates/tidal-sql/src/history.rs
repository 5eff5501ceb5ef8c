//! The `signals` table: event history, read from the engine's day-partitioned Parquet
//! files through DataFusion's Parquet source (row-group pruning on the pushed-down
//! predicate) plus the in-memory events not flushed yet.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use tidal_engine::{Engine, history_schema};

use crate::error::engine_err;

const DAY_MICROS: i64 = 86_400_000_000;

/// `signals (signal, entity_id, user_id, weight, ts)`: every accepted event.
#[derive(Debug)]
pub struct SignalsTable {
    engine: Arc<Engine>,
    schema: SchemaRef,
}

impl SignalsTable {
    pub fn new(engine: Arc<Engine>) -> SignalsTable {
        SignalsTable {
            engine,
            schema: history_schema(),
        }
    }
}

#[async_trait]
impl TableProvider for SignalsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning days and row groups; DataFusion still filters every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snap = self.engine.read().history().map_err(engine_err)?;
        let (lo, hi) = ts_bounds(filters);
        let (day_lo, day_hi) = (lo.div_euclid(DAY_MICROS), hi.div_euclid(DAY_MICROS));
        let files: Vec<_> = snap
            .files
            .iter()
            .filter(|f| f.day >= day_lo && f.day <= day_hi)
            .collect();
        // A limit may stop early only when nothing is filtered above us.
        let limit = limit.filter(|_| filters.is_empty());
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() {
            // DataFusion's physical filter pushdown hands the FilterExec above us to the
            // Parquet source (row-group pruning), so no predicate is attached here.
            let source = ParquetSource::new(self.schema.clone());
            let partitions = state.config().target_partitions().max(1);
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
            for (i, f) in files.iter().enumerate() {
                groups[i % partitions].push(PartitionedFile::new(
                    f.path.to_string_lossy().into_owned(),
                    f.bytes,
                ));
            }
            let groups = groups
                .into_iter()
                .filter(|g| !g.is_empty())
                .map(FileGroup::new)
                .collect();
            let config =
                FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                    .with_file_groups(groups)
                    .with_projection_indices(projection.cloned())?
                    .with_limit(limit)
                    .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !snap.batches.is_empty() {
            inputs.push(MemorySourceConfig::try_new_exec(
                &[snap.batches],
                self.schema.clone(),
                projection.cloned(),
            )?);
        }
        if inputs.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(inputs)
    }
}

/// The inclusive µs range of `ts` that a conjunction of filters can match (a superset).
fn ts_bounds(filters: &[Expr]) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    let mut visit = |e: &Expr| {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
            return;
        };
        let (op, value) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) if c.name == "ts" => (*op, v),
            (Expr::Literal(v, _), Expr::Column(c)) if c.name == "ts" => match op.swap() {
                Some(op) => (op, v),
                None => return,
            },
            _ => return,
        };
        let Some(v) = micros(value) else { return };
        match op {
            Operator::Eq => {
                lo = lo.max(v);
                hi = hi.min(v);
            }
            Operator::Gt => lo = lo.max(v.saturating_add(1)),
            Operator::GtEq => lo = lo.max(v),
            Operator::Lt => hi = hi.min(v.saturating_sub(1)),
            Operator::LtEq => hi = hi.min(v),
            _ => {}
        }
    };
    for f in filters {
        split_and(f, &mut visit);
    }
    (lo, hi)
}

fn split_and(e: &Expr, visit: &mut impl FnMut(&Expr)) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_and(left, visit);
            split_and(right, visit);
        }
        Expr::Between(b) if !b.negated => {
            if let Expr::Column(c) = b.expr.as_ref()
                && c.name == "ts"
            {
                let col = b.expr.as_ref().clone();
                visit(&col.clone().gt_eq(b.low.as_ref().clone()));
                visit(&col.lt_eq(b.high.as_ref().clone()));
            }
        }
        other => visit(other),
    }
}

/// A timestamp literal in µs (truncation is harmless: pruning is by whole days).
fn micros(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1_000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        _ => None,
    }
}
