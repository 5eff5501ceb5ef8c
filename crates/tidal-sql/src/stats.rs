//! The `tidal_stats` table: every monitoring figure of the database, one row per
//! metric and label set, the same figures a Prometheus scrape of `/metrics` shows.
//!
//! Sources are the engine ([`Engine::metrics`]), this layer (scan cache, query memory)
//! and whatever the embedding program adds ([`crate::SqlSession::add_metrics_source`];
//! the server adds statements, errors and connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::RwLock;
use tidal_core::metrics::{Metric, MetricValue};
use tidal_engine::Engine;

/// The table's name.
pub const STATS_TABLE: &str = "tidal_stats";

/// Most metric sources a session accepts (each is called on every read of the table).
pub const METRICS_SOURCES_MAX: usize = 16;

/// A producer of metrics, called on every scrape and every read of `tidal_stats`.
pub type MetricsSource = Arc<dyn Fn() -> Vec<Metric> + Send + Sync>;

/// Scan-cache outcomes, counted where a full-table scan decides how to read.
#[derive(Debug, Default)]
pub(crate) struct ScanCacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// Everything `tidal_stats` and [`crate::SqlSession::metrics`] report.
pub(crate) struct Stats {
    pub engine: Arc<Engine>,
    pub cache: Arc<crate::provider::ScanCache>,
    pub pool: Arc<dyn MemoryPool>,
    pub pool_limit_bytes: usize,
    pub sources: RwLock<Vec<MetricsSource>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("sources", &self.sources.read().len())
            .finish_non_exhaustive()
    }
}

impl Stats {
    pub fn collect(&self) -> Vec<Metric> {
        let mut out = self.engine.metrics();
        let c = self.cache.counters();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (entries, bytes) = self.cache.size();
        out.extend([
            Metric::counter(
                "tidal_scan_cache_hits",
                "Full-table scans served from the scan cache as it was.",
                get(&c.hits),
            ),
            Metric::counter(
                "tidal_scan_cache_patches",
                "Full-table scans served from the scan cache after re-reading only the rows written since.",
                self.cache.patches(),
            ),
            Metric::counter(
                "tidal_scan_cache_misses",
                "Full-table scans that read the entity store.",
                get(&c.misses),
            ),
            Metric::gauge(
                "tidal_scan_cache_entries",
                "(table, projection) scans held by the scan cache.",
                entries as f64,
            ),
            Metric::gauge(
                "tidal_memory_bytes",
                "Estimated heap bytes of each in-memory structure.",
                bytes as f64,
            )
            .label("part", "scan_cache"),
            Metric::gauge(
                "tidal_query_memory_reserved_bytes",
                "Memory running queries hold in the query memory pool.",
                self.pool.reserved() as f64,
            ),
            Metric::gauge(
                "tidal_query_memory_limit_bytes",
                "Size of the query memory pool (over it a query fails with 53200).",
                self.pool_limit_bytes as f64,
            ),
        ]);
        let sources: Vec<MetricsSource> = self.sources.read().clone();
        for source in sources {
            out.extend(source());
        }
        out
    }
}

/// `tidal_stats`: one row per metric and label set.
#[derive(Debug)]
pub(crate) struct StatsTable {
    stats: Arc<Stats>,
    schema: SchemaRef,
}

impl StatsTable {
    pub fn new(stats: Arc<Stats>) -> StatsTable {
        let f = |name: &str, ty: DataType, nullable: bool| Field::new(name, ty, nullable);
        StatsTable {
            stats,
            schema: Arc::new(Schema::new(vec![
                f("metric", DataType::Utf8, false),
                f("labels", DataType::Utf8, false),
                f("kind", DataType::Utf8, false),
                f("value", DataType::Float64, false),
                f("sum", DataType::Float64, true),
                f("p50", DataType::Float64, true),
                f("p99", DataType::Float64, true),
                f("max", DataType::Float64, true),
                f("help", DataType::Utf8, false),
            ])),
        }
    }

    fn batch(&self) -> Result<RecordBatch> {
        let metrics = self.stats.collect();
        let text = |f: &dyn Fn(&Metric) -> String| -> ArrayRef {
            Arc::new(metrics.iter().map(|m| Some(f(m))).collect::<StringArray>())
        };
        let num = |f: &dyn Fn(&MetricValue) -> Option<f64>| -> ArrayRef {
            Arc::new(
                metrics
                    .iter()
                    .map(|m| f(&m.value))
                    .collect::<Float64Array>(),
            )
        };
        let hist = |f: &dyn Fn(&tidal_core::metrics::HistogramSnapshot) -> Option<f64>| {
            num(&|v| match v {
                MetricValue::Histogram(h) => f(h),
                _ => None,
            })
        };
        let columns: Vec<ArrayRef> = vec![
            text(&Metric::exposed_name),
            text(&Metric::labels_text),
            text(&|m| m.kind().to_string()),
            // A histogram's value is its count of observations.
            num(&|v| {
                Some(match v {
                    MetricValue::Counter(n) => *n as f64,
                    MetricValue::Gauge(g) => *g,
                    MetricValue::Histogram(h) => h.count as f64,
                })
            }),
            hist(&|h| Some(h.sum)),
            hist(&|h| h.quantile(0.5)),
            hist(&|h| h.quantile(0.99)),
            hist(&|h| (h.count > 0).then_some(h.max)),
            text(&|m| m.help.to_string()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for StatsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![self.batch()?]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
