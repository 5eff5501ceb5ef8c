//! The ledger as tables (SQL.md §4): `signal_state(entity_id, signal, score, total,
//! last_ts)` and `signal_windows(entity_id, signal, window, count, velocity,
//! acceleration)`, one row per (entity, signal) with events (per declared window for
//! `signal_windows`). `score` and the window columns are read when the statement's
//! physical plan is made — DataFusion stamps that instant separately from the one the
//! signal functions' default `at` uses, so the two can differ by the planning time
//! (milliseconds). Pass an explicit `at` to the functions where that matters.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use tidal_core::{EntityId, Timestamp, Window};
use tidal_engine::Engine;
use tidal_ledger::NO_EVENT_TS;

/// Which of the two state tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateTable {
    State,
    Windows,
}

impl StateTable {
    pub fn name(self) -> &'static str {
        match self {
            StateTable::State => "signal_state",
            StateTable::Windows => "signal_windows",
        }
    }

    fn schema(self) -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        Arc::new(Schema::new(match self {
            StateTable::State => vec![
                Field::new("entity_id", DataType::Int64, false),
                Field::new("signal", DataType::Utf8, false),
                Field::new("score", DataType::Float64, false),
                Field::new("total", DataType::Float64, false),
                Field::new("last_ts", ts, true),
            ],
            StateTable::Windows => vec![
                Field::new("entity_id", DataType::Int64, false),
                Field::new("signal", DataType::Utf8, false),
                Field::new("window", DataType::Utf8, false),
                Field::new("count", DataType::Float64, false),
                Field::new("velocity", DataType::Float64, true),
                Field::new("acceleration", DataType::Float64, true),
            ],
        }))
    }
}

#[derive(Debug)]
pub struct SignalStateTable {
    engine: Arc<Engine>,
    which: StateTable,
    schema: SchemaRef,
}

impl SignalStateTable {
    pub fn new(engine: Arc<Engine>, which: StateTable) -> SignalStateTable {
        SignalStateTable {
            engine,
            which,
            schema: which.schema(),
        }
    }

    fn batch(&self, at: Timestamp) -> Result<RecordBatch> {
        let view = self.engine.read();
        let schema = view.schema().clone();
        let mut ids: Vec<i64> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut f1: Vec<f64> = Vec::new();
        let mut f2: Vec<Option<f64>> = Vec::new();
        let mut f3: Vec<Option<f64>> = Vec::new();
        let mut last: Vec<Option<i64>> = Vec::new();
        let mut windows: Vec<String> = Vec::new();
        view.with_ledger(|l| {
            for def in schema.signals() {
                let Some(cols) = l.columns(def.id) else {
                    continue;
                };
                let entities = l.entities(def.kind);
                let active: Vec<EntityId> = cols
                    .last_ts
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| **t != NO_EVENT_TS)
                    .filter_map(|(ord, _)| entities.get(ord).copied())
                    .collect();
                let mut out = Vec::with_capacity(active.len());
                match self.which {
                    StateTable::State => {
                        l.decay_batch(def.id, &active, at, &mut out);
                        let mut totals = Vec::with_capacity(active.len());
                        l.total_batch(def.id, &active, &mut totals);
                        let mut lasts = Vec::with_capacity(active.len());
                        l.last_batch(def.id, &active, &mut lasts);
                        for (i, e) in active.iter().enumerate() {
                            ids.push(e.0 as i64);
                            names.push(def.name.clone());
                            f1.push(out[i]);
                            f2.push(Some(totals[i]));
                            last.push(lasts[i].map(|t| t.0));
                        }
                    }
                    StateTable::Windows => {
                        for &w in &def.windows {
                            l.window_count_batch(def.id, &active, w, at, &mut out);
                            let mut vel = Vec::new();
                            let mut acc = Vec::new();
                            if w != Window::All {
                                l.velocity_batch(def.id, &active, w, at, &mut vel);
                                l.acceleration_batch(def.id, &active, w, at, &mut acc);
                            }
                            for (i, e) in active.iter().enumerate() {
                                ids.push(e.0 as i64);
                                names.push(def.name.clone());
                                windows.push(w.to_string());
                                f1.push(out[i]);
                                f2.push(vel.get(i).copied());
                                f3.push(acc.get(i).copied());
                            }
                        }
                    }
                }
            }
        });
        let columns: Vec<ArrayRef> = match self.which {
            StateTable::State => vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
                Arc::new(Float64Array::from(f1)),
                Arc::new(
                    f2.into_iter()
                        .map(|v| v.unwrap_or(0.0))
                        .collect::<Float64Array>(),
                ),
                Arc::new(TimestampMicrosecondArray::from(last)),
            ],
            StateTable::Windows => vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(windows)),
                Arc::new(Float64Array::from(f1)),
                Arc::new(Float64Array::from(f2)),
                Arc::new(Float64Array::from(f3)),
            ],
        };
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for SignalStateTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let at = state
            .execution_props()
            .query_execution_start_time
            .map_or_else(|| self.engine.now(), |t| Timestamp(t.timestamp_micros()));
        let batch = self.batch(at)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
