//! The `tidal` catalog's `public` schema: entity tables over the engine's store.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use tidal_core::{EntityId, EntityKind, TableDef};
use tidal_engine::{Engine, ReadView};
use tokio::sync::mpsc::Sender;

use crate::error::engine_err;
use crate::history::SignalsTable;
use crate::state::{SignalStateTable, StateTable};
use crate::types::{BatchBuilder, table_schema};

/// Rows per record batch produced by entity scans.
pub const SCAN_BATCH_ROWS: usize = 8_192;

/// The `public` schema: one table per defined entity kind, resolved against the
/// engine's current schema on every lookup (DDL is visible to the next statement).
#[derive(Debug)]
pub struct TidalSchema {
    engine: Arc<Engine>,
    cache: Arc<ScanCache>,
    stats: Arc<crate::stats::Stats>,
}

impl TidalSchema {
    pub(crate) fn new(engine: Arc<Engine>, stats: Arc<crate::stats::Stats>) -> TidalSchema {
        TidalSchema {
            engine,
            cache: stats.cache.clone(),
            stats,
        }
    }

    /// How many cached scans were patched instead of re-read so far.
    pub fn scan_cache_patches(&self) -> u64 {
        self.cache.patches()
    }
}

/// Memory the scan cache may hold, over all tables and projections.
pub const SCAN_CACHE_BYTES_MAX: usize = 1 << 30;
/// A cached scan older than the store is patched (instead of re-read) when at most this
/// many ids of its table changed since.
const SCAN_PATCH_IDS_MAX: usize = 4_096;

/// Most cached (table, projection) results.
const SCAN_CACHE_ENTRIES_MAX: usize = 16;

/// Full-table scans kept as Arrow batches, keyed by table and projection, valid for
/// exactly one store version of the table (any write to the table makes the next scan
/// read the store again and re-fill the entry). Ranking queries scan the same few
/// columns of the whole catalogue over and over; between item writes they read memory.
#[derive(Debug, Default)]
pub struct ScanCache {
    entries: parking_lot::Mutex<HashMap<CacheKey, CacheEntry>>,
    /// Entries brought up to date by [`ScanCache::patch`] (for tests and diagnostics).
    patches: std::sync::atomic::AtomicU64,
    counters: crate::stats::ScanCacheCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    kind: EntityKind,
    projection: Vec<usize>,
    order: ScanOrder,
}

/// The row order a full scan served from the [`ScanCache`] comes in. SQL promises none;
/// the order only decides how fast signal functions read the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScanOrder {
    /// By id (the store's key order): what a plain `SELECT` shows.
    #[default]
    Id,
    /// By ledger ordinal, entities without events last (by id). Signal functions then
    /// read the ledger's dense columns front to back instead of at random, several times
    /// faster over a large catalogue. Used for RETRIEVE's candidate scan.
    Ledger,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    store_version: u64,
    schema_version: u64,
    batches: Arc<Vec<RecordBatch>>,
    bytes: usize,
}

impl ScanCache {
    pub(crate) fn counters(&self) -> &crate::stats::ScanCacheCounters {
        &self.counters
    }

    pub(crate) fn patches(&self) -> u64 {
        self.patches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries held and their bytes.
    pub(crate) fn size(&self) -> (usize, usize) {
        let entries = self.entries.lock();
        (entries.len(), entries.values().map(|e| e.bytes).sum())
    }

    fn get(
        &self,
        key: &CacheKey,
        store_version: u64,
        schema_version: u64,
    ) -> Option<Arc<Vec<RecordBatch>>> {
        let entries = self.entries.lock();
        let e = entries.get(key)?;
        (e.store_version == store_version && e.schema_version == schema_version)
            .then(|| e.batches.clone())
    }

    /// Brings an entry of an older store version up to `view`'s by re-reading only the
    /// rows written since (from the store's change log): their old rows are dropped and
    /// their current ones appended. `None` when there is nothing to patch or it is not
    /// worth it; the caller then scans the table.
    fn patch(
        &self,
        key: &CacheKey,
        view: &ReadView,
        def: &TableDef,
        schema: &SchemaRef,
    ) -> Result<Option<Arc<Vec<RecordBatch>>>> {
        let (Some(store_version), schema_version) =
            (view.store().version(key.kind), view.schema().version)
        else {
            return Ok(None);
        };
        let old = {
            let entries = self.entries.lock();
            match entries.get(key) {
                Some(e)
                    if e.schema_version == schema_version && e.store_version < store_version =>
                {
                    e.clone()
                }
                _ => return Ok(None),
            }
        };
        let Some(id_col) = key.projection.iter().position(|&c| c == 0) else {
            return Ok(None);
        };
        let Some(changed) = view.store().changed_since(key.kind, old.store_version) else {
            return Ok(None);
        };
        if changed.len() > SCAN_PATCH_IDS_MAX {
            return Ok(None);
        }
        let changed: Vec<i64> = changed
            .iter()
            .filter_map(|id| i64::try_from(id.0).ok())
            .collect();
        let (lo, hi) = match (changed.first(), changed.last()) {
            (Some(&lo), Some(&hi)) => (lo, hi),
            _ => (i64::MAX, i64::MIN),
        };
        let hit = |v: &i64| *v >= lo && *v <= hi && changed.binary_search(v).is_ok();
        let mut batches: Vec<RecordBatch> = Vec::with_capacity(old.batches.len() + 1);
        for b in old.batches.iter() {
            let Some(ids) = b.column(id_col).as_any().downcast_ref::<Int64Array>() else {
                return Ok(None);
            };
            if !ids.values().iter().any(hit) {
                batches.push(b.clone());
                continue;
            }
            let keep: BooleanArray = ids.values().iter().map(|v| Some(!hit(v))).collect();
            let kept = filter_record_batch(b, &keep)?;
            if kept.num_rows() > 0 {
                batches.push(kept);
            }
        }
        let mut fresh = BatchBuilder::new(def, &key.projection, schema.clone(), changed.len());
        for &id in &changed {
            if let Some(row) = view
                .store()
                .get(key.kind, EntityId(id as u64))
                .map_err(engine_err)?
            {
                fresh.push(&row)?;
            }
        }
        let mut bytes = old.bytes;
        if !fresh.is_empty() {
            let mut fresh = fresh.finish()?;
            // Successive patches append to one small tail batch rather than many.
            if let Some(last) = batches.last()
                && last.num_rows() + fresh.num_rows() <= SCAN_BATCH_ROWS
                && last.num_rows() < SCAN_BATCH_ROWS / 2
            {
                fresh = concat_batches(schema, [last, &fresh])?;
                batches.pop();
            }
            bytes += fresh.get_array_memory_size();
            batches.push(fresh);
        }
        let batches = Arc::new(batches);
        self.patches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.put(
            key.clone(),
            CacheEntry {
                store_version,
                schema_version,
                batches: batches.clone(),
                bytes,
            },
        );
        Ok(Some(batches))
    }

    fn put(&self, key: CacheKey, entry: CacheEntry) {
        if entry.bytes > SCAN_CACHE_BYTES_MAX / 2 {
            return;
        }
        let mut entries = self.entries.lock();
        // A slower statement must not replace a newer entry with an older one.
        if entries.get(&key).is_some_and(|e| {
            e.schema_version == entry.schema_version && e.store_version > entry.store_version
        }) {
            return;
        }
        // Entries of another schema version are dead weight; entries of an older store
        // version can still be patched. Drop the dead ones, then anything, until the new
        // entry fits.
        entries.retain(|k, e| k.kind != key.kind || e.schema_version == entry.schema_version);
        let mut total: usize = entries.values().map(|e| e.bytes).sum();
        while (total + entry.bytes > SCAN_CACHE_BYTES_MAX
            || entries.len() >= SCAN_CACHE_ENTRIES_MAX)
            && let Some(k) = entries.keys().next().cloned()
        {
            total -= entries.remove(&k).map_or(0, |e| e.bytes);
        }
        entries.insert(key, entry);
    }
}

#[async_trait]
impl SchemaProvider for TidalSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .schema()
            .tables()
            .map(|t| t.kind.table_name().to_string())
            .collect();
        names.extend(
            [
                SIGNALS_TABLE,
                StateTable::State.name(),
                StateTable::Windows.name(),
                crate::social::AFFINITIES_TABLE,
                crate::cohort::COHORT_WINDOWS_TABLE,
                crate::cohort::COHORTS_TABLE,
                crate::stats::STATS_TABLE,
            ]
            .map(String::from),
        );
        names.extend(self.engine.schema().relationships().map(|r| r.name.clone()));
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.eq_ignore_ascii_case(SIGNALS_TABLE) {
            return Ok(Some(Arc::new(SignalsTable::new(self.engine.clone()))));
        }
        for t in [StateTable::State, StateTable::Windows] {
            if name.eq_ignore_ascii_case(t.name()) {
                return Ok(Some(Arc::new(SignalStateTable::new(
                    self.engine.clone(),
                    t,
                ))));
            }
        }
        if name.eq_ignore_ascii_case(crate::cohort::COHORT_WINDOWS_TABLE) {
            return Ok(Some(Arc::new(crate::cohort::CohortTable::windows(
                self.engine.clone(),
            ))));
        }
        if name.eq_ignore_ascii_case(crate::cohort::COHORTS_TABLE) {
            return Ok(Some(Arc::new(crate::cohort::CohortTable::catalogue(
                self.engine.clone(),
            ))));
        }
        if name.eq_ignore_ascii_case(crate::stats::STATS_TABLE) {
            return Ok(Some(Arc::new(crate::stats::StatsTable::new(
                self.stats.clone(),
            ))));
        }
        if name.eq_ignore_ascii_case(crate::social::AFFINITIES_TABLE) {
            return Ok(Some(Arc::new(crate::social::SocialTable::affinities(
                self.engine.clone(),
            ))));
        }
        if let Some(rel) = crate::social::relationship_table(&self.engine.schema(), name) {
            return Ok(Some(Arc::new(crate::social::SocialTable::edges(
                self.engine.clone(),
                &rel,
            ))));
        }
        let Ok(kind) = name.parse::<EntityKind>() else {
            return Ok(None);
        };
        if kind.table_name() != name.to_ascii_lowercase() {
            return Ok(None);
        }
        let schema = self.engine.schema();
        let Ok(def) = schema.table(kind) else {
            return Ok(None);
        };
        let mut table = EntityTable::new(self.engine.clone(), def.clone());
        table.cache = Some(self.cache.clone());
        table.order = ScanOrder::Id;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names()
            .iter()
            .any(|t| t == &name.to_ascii_lowercase())
    }
}

/// The event-history table's name.
pub const SIGNALS_TABLE: &str = "signals";

/// An entity table (`items`, `users`, `creators`) read from a consistent snapshot.
#[derive(Debug, Clone)]
pub struct EntityTable {
    engine: Arc<Engine>,
    def: TableDef,
    schema: SchemaRef,
    cache: Option<Arc<ScanCache>>,
    order: ScanOrder,
}

impl EntityTable {
    pub fn new(engine: Arc<Engine>, def: TableDef) -> EntityTable {
        let schema = table_schema(&def);
        EntityTable {
            engine,
            def,
            schema,
            cache: None,
            order: ScanOrder::Id,
        }
    }

    pub(crate) fn def(&self) -> &TableDef {
        &self.def
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The rows with these ids that exist (and pass the pushed-down id `filters`), in
    /// id order, projected, read by point lookups from a snapshot taken now.
    pub(crate) fn point_stream(
        &self,
        projection: Vec<usize>,
        ids: BTreeSet<u64>,
        filters: &[Expr],
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut bounds = IdBounds::all();
        for f in filters {
            bounds.apply(f);
        }
        bounds.restrict_points(ids);
        let schema = Arc::new(self.schema.project(&projection)?);
        let scan = EntityScan {
            view: self.engine.read(),
            def: self.def.clone(),
            schema,
            projection,
            bounds,
            limit: None,
            fill: None,
        };
        Ok(scan.execute(ctx))
    }

    /// This table with full scans served from the cache in `order`.
    pub fn with_order(&self, order: ScanOrder) -> EntityTable {
        EntityTable {
            order,
            ..self.clone()
        }
    }
}

/// The set of ids a conjunction of pushed-down filters can match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdBounds {
    lo: u64,
    hi: u64,
    /// `Some` when an `=` or `IN` restricts ids to a finite set.
    points: Option<BTreeSet<u64>>,
}

impl IdBounds {
    fn all() -> IdBounds {
        IdBounds {
            lo: 0,
            hi: u64::MAX,
            points: None,
        }
    }

    /// No id restriction: the scan reads the whole table.
    fn is_all(&self) -> bool {
        self.lo == 0 && self.hi == u64::MAX && self.points.is_none()
    }

    fn is_empty(&self) -> bool {
        self.lo > self.hi || self.points.as_ref().is_some_and(|p| p.is_empty())
    }

    /// The finite id set these bounds allow, if they restrict ids to one.
    fn exact_points(&self) -> Option<BTreeSet<u64>> {
        let p = self.points.as_ref()?;
        Some(
            p.iter()
                .copied()
                .filter(|v| (self.lo..=self.hi).contains(v))
                .collect(),
        )
    }

    /// The smallest id range holding every id these bounds allow (`lo > hi` if none).
    fn hull(&self) -> (u64, u64) {
        match self.exact_points() {
            Some(p) => match (p.first(), p.last()) {
                (Some(&a), Some(&b)) => (a, b),
                _ => (1, 0),
            },
            None => (self.lo, self.hi),
        }
    }

    fn restrict_points(&mut self, pts: BTreeSet<u64>) {
        self.points = Some(match self.points.take() {
            Some(old) => old.intersection(&pts).copied().collect(),
            None => pts,
        });
    }

    /// Narrows the bounds with one filter; returns whether the filter was understood.
    fn apply(&mut self, e: &Expr) -> bool {
        match e {
            // DataFusion rewrites a short `id IN (…)` as `id = a OR id = b …`. The bounds
            // only need to cover the rows (the filter is re-checked above the scan): the
            // union of two point sets, else the hull of the two ranges.
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => {
                let (mut l, mut r) = (IdBounds::all(), IdBounds::all());
                if !(l.apply(left) && r.apply(right)) {
                    return false;
                }
                match (l.exact_points(), r.exact_points()) {
                    (Some(a), Some(b)) => self.restrict_points(a.union(&b).copied().collect()),
                    _ => {
                        let (lo, hi) = (l.hull().0.min(r.hull().0), l.hull().1.max(r.hull().1));
                        if lo > hi {
                            self.restrict_points(BTreeSet::new());
                        } else {
                            self.lo = self.lo.max(lo);
                            self.hi = self.hi.min(hi);
                        }
                    }
                }
                true
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, v) = match (is_id(left), is_id(right), lit_i64(left), lit_i64(right)) {
                    (true, _, _, Some(v)) => (*op, v),
                    (_, true, Some(v), _) => match op.swap() {
                        Some(op) => (op, v),
                        None => return false,
                    },
                    _ => return false,
                };
                // Ids are never negative; clamp comparisons against negative literals.
                let nonneg = |v: i64| u64::try_from(v).ok();
                match op {
                    Operator::Eq => match nonneg(v) {
                        Some(v) => self.restrict_points(BTreeSet::from([v])),
                        None => self.restrict_points(BTreeSet::new()),
                    },
                    Operator::Gt => {
                        // `v` came from an i64, so `v + 1` cannot overflow.
                        if let Some(v) = nonneg(v) {
                            self.lo = self.lo.max(v + 1);
                        }
                    }
                    Operator::GtEq => {
                        if let Some(v) = nonneg(v) {
                            self.lo = self.lo.max(v);
                        }
                    }
                    Operator::Lt => match nonneg(v) {
                        Some(0) | None => self.restrict_points(BTreeSet::new()),
                        Some(v) => self.hi = self.hi.min(v - 1),
                    },
                    Operator::LtEq => match nonneg(v) {
                        Some(v) => self.hi = self.hi.min(v),
                        None => self.restrict_points(BTreeSet::new()),
                    },
                    _ => return false,
                }
                true
            }
            Expr::InList(list) if !list.negated && is_id(&list.expr) => {
                let mut pts = BTreeSet::new();
                for item in &list.list {
                    match lit_i64(item) {
                        Some(v) => {
                            if let Ok(v) = u64::try_from(v) {
                                pts.insert(v);
                            }
                        }
                        None => return false,
                    }
                }
                self.restrict_points(pts);
                true
            }
            Expr::Between(b) if !b.negated && is_id(&b.expr) => {
                match (lit_i64(&b.low), lit_i64(&b.high)) {
                    (Some(lo), Some(hi)) => {
                        self.lo = self.lo.max(u64::try_from(lo).unwrap_or(0));
                        match u64::try_from(hi) {
                            Ok(hi) => self.hi = self.hi.min(hi),
                            Err(_) => self.restrict_points(BTreeSet::new()),
                        }
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

fn is_id(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == "id")
}

fn lit_i64(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(v)) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

#[async_trait]
impl TableProvider for EntityTable {
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
        // Id predicates narrow the key range we read; DataFusion still re-checks them
        // (Inexact), which keeps results right for any combination of predicates.
        Ok(filters
            .iter()
            .map(|f| {
                if IdBounds::all().apply(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut bounds = IdBounds::all();
        for f in filters {
            bounds.apply(f);
        }
        let all: Vec<usize> = (0..self.def.columns.len()).collect();
        let projection = projection.unwrap_or(&all).clone();
        let schema = Arc::new(self.schema.project(&projection)?);
        // A limit is only safe to apply here when no filter remains to be evaluated
        // above the scan.
        let limit = if filters.is_empty() { limit } else { None };
        // The snapshot is taken while planning, so every scan of a statement reads
        // (nearly) the same state, however late its partition is executed.
        let view = self.engine.read();
        let mut fill = None;
        if let (Some(cache), Some(store_version), true) = (
            &self.cache,
            view.store().version(self.def.kind),
            bounds.is_all(),
        ) {
            let key = CacheKey {
                kind: self.def.kind,
                projection: projection.clone(),
                order: self.order,
            };
            let schema_version = view.schema().version;
            let hit = match cache.get(&key, store_version, schema_version) {
                Some(b) => {
                    cache
                        .counters
                        .hits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Some(b)
                }
                None => cache.patch(&key, &view, &self.def, &schema)?,
            };
            if hit.is_none() {
                cache
                    .counters
                    .misses
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(batches) = hit {
                // Two partitions, so the operators above use both cores.
                let half = batches.len().div_ceil(2);
                let parts: Vec<Vec<RecordBatch>> = batches
                    .chunks(half.max(1))
                    .map(<[RecordBatch]>::to_vec)
                    .collect();
                let parts = if parts.is_empty() {
                    vec![Vec::new()]
                } else {
                    parts
                };
                let exec = MemorySourceConfig::try_new_exec(&parts, schema.clone(), None)?;
                return Ok(match limit {
                    Some(l) => Arc::new(datafusion::physical_plan::limit::GlobalLimitExec::new(
                        Arc::new(datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(exec)),
                        0,
                        Some(l),
                    )),
                    None => exec,
                });
            }
            if limit.is_none() {
                fill = Some(Fill {
                    cache: cache.clone(),
                    key,
                    store_version,
                    schema_version,
                });
            }
        }
        let stream = EntityScan {
            view,
            def: self.def.clone(),
            schema: schema.clone(),
            projection,
            bounds,
            limit,
            fill,
        };
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![Arc::new(stream)],
            None,
            [],
            false,
            limit,
        )?))
    }
}

/// Batches of a scan queued ahead of the consumer: memory stays bounded by this many
/// batches of [`SCAN_BATCH_ROWS`] rows, whatever the table size.
const SCAN_QUEUE_BATCHES: usize = 2;

/// One scan of an entity table, streamed from a store snapshot on a blocking thread.
#[derive(Debug)]
struct EntityScan {
    view: ReadView,
    def: TableDef,
    schema: SchemaRef,
    projection: Vec<usize>,
    bounds: IdBounds,
    limit: Option<usize>,
    /// Where to keep the batches if the scan runs to completion.
    fill: Option<Fill>,
}

#[derive(Debug, Clone)]
struct Fill {
    cache: Arc<ScanCache>,
    key: CacheKey,
    store_version: u64,
    schema_version: u64,
}

impl EntityScan {
    /// Reads rows into batches and sends them; stops early when the consumer is gone
    /// (the query finished or was cancelled) or the limit is reached. Returns the
    /// batches to keep in the cache (with their size) when the scan was complete.
    fn produce(
        &self,
        tx: &Sender<Result<RecordBatch>>,
    ) -> Result<Option<(Vec<RecordBatch>, usize)>> {
        let store = self.view.store();
        let kind = self.def.kind;
        let mut builder = BatchBuilder::new(
            &self.def,
            &self.projection,
            self.schema.clone(),
            SCAN_BATCH_ROWS,
        );
        let mut rows = 0usize;
        // Batches kept for the cache (cheap: arrays are shared), and their size.
        let mut kept: Option<(Vec<RecordBatch>, usize)> =
            self.fill.as_ref().map(|_| (Vec::new(), 0));
        let mut completed = true;
        let mut send = |batch: RecordBatch| -> bool {
            if let Some((v, bytes)) = &mut kept {
                *bytes += batch.get_array_memory_size();
                if *bytes > SCAN_CACHE_BYTES_MAX / 2 {
                    kept = None;
                } else {
                    v.push(batch.clone());
                }
            }
            tx.blocking_send(Ok(batch)).is_ok()
        };
        // Returns false when the scan should stop.
        let mut push = |row: &tidal_core::Row, builder: &mut BatchBuilder| -> Result<bool> {
            builder.push(row)?;
            rows += 1;
            if builder.len() >= SCAN_BATCH_ROWS && !send(builder.finish()?) {
                completed = false;
                return Ok(false);
            }
            Ok(self.limit.is_none_or(|l| rows < l))
        };
        if self.bounds.is_empty() {
            return Ok(None);
        }
        match &self.bounds.points {
            Some(points) => {
                for &id in points.range(self.bounds.lo..=self.bounds.hi) {
                    if let Some(row) = store.get(kind, EntityId(id)).map_err(engine_err)?
                        && !push(&row, &mut builder)?
                    {
                        break;
                    }
                }
            }
            None => {
                for item in store.range(kind, EntityId(self.bounds.lo), EntityId(self.bounds.hi)) {
                    let (_, row) = item.map_err(engine_err)?;
                    if !push(&row, &mut builder)? {
                        break;
                    }
                }
            }
        }
        if !builder.is_empty() && !send(builder.finish()?) {
            completed = false;
        }
        Ok(if completed { kept } else { None })
    }

    /// Puts a complete scan into the cache, in the entry's order.
    fn fill(&self, batches: Vec<RecordBatch>, bytes: usize) -> Result<()> {
        let Some(fill) = &self.fill else {
            return Ok(());
        };
        let batches = match fill.key.order {
            ScanOrder::Id => batches,
            ScanOrder::Ledger => self.ledger_ordered(batches)?,
        };
        fill.cache.put(
            fill.key.clone(),
            CacheEntry {
                store_version: fill.store_version,
                schema_version: fill.schema_version,
                batches: Arc::new(batches),
                bytes,
            },
        );
        Ok(())
    }

    /// `batches` (in id order) re-sorted by ledger ordinal, entities without events
    /// last in id order, cut into [`SCAN_BATCH_ROWS`]-row batches. Entities that get
    /// their first event later get ordinals after all existing ones, so the order stays
    /// right for everything but them.
    fn ledger_ordered(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let Some(first) = batches.first() else {
            return Ok(batches);
        };
        let Some(id_col) = self.projection.iter().position(|&c| c == 0) else {
            return Ok(batches);
        };
        let all = concat_batches(&first.schema(), &batches)?;
        drop(batches);
        let ids: Vec<EntityId> = all
            .column(id_col)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.values().iter().map(|&v| EntityId(v as u64)).collect())
            .unwrap_or_default();
        let mut ords = Vec::with_capacity(ids.len());
        self.view
            .with_ledger(|l| l.ordinals_of(self.def.kind, &ids, &mut ords));
        let mut idx: Vec<u32> = (0..ords.len() as u32).collect();
        // Stable: rows without an ordinal (u32::MAX) keep their id order.
        idx.sort_by_key(|&r| ords[r as usize]);
        let sorted = take_record_batch(&all, &UInt32Array::from(idx))?;
        let mut out = Vec::with_capacity(sorted.num_rows().div_ceil(SCAN_BATCH_ROWS));
        let mut at = 0;
        while at < sorted.num_rows() {
            let len = SCAN_BATCH_ROWS.min(sorted.num_rows() - at);
            out.push(sorted.slice(at, len));
            at += len;
        }
        Ok(out)
    }
}

impl PartitionStream for EntityScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder =
            RecordBatchReceiverStreamBuilder::new(self.schema.clone(), SCAN_QUEUE_BATCHES);
        let tx = builder.tx();
        let scan = EntityScan {
            view: self.view.clone(),
            def: self.def.clone(),
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            bounds: self.bounds.clone(),
            limit: self.limit,
            fill: self.fill.clone(),
        };
        builder.spawn_blocking(move || {
            let kept = scan.produce(&tx)?;
            drop(tx);
            if let Some((batches, bytes)) = kept {
                // The consumer has every row, but its stream ends only with this task:
                // the re-sort into ledger order runs on its own blocking thread.
                let ordered = scan.fill.as_ref().map(|f| f.key.order) == Some(ScanOrder::Ledger);
                let fill = move || {
                    if let Err(e) = scan.fill(batches, bytes) {
                        tracing::warn!(error = %e, "scan cache fill failed");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) if ordered => drop(rt.spawn_blocking(fill)),
                    _ => fill(),
                }
            }
            Ok(())
        });
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn bounds(filters: &[Expr]) -> IdBounds {
        let mut b = IdBounds::all();
        for f in filters {
            assert!(b.apply(f), "{f} not understood");
        }
        b
    }

    #[test]
    fn id_filters_narrow_the_range() {
        let b = bounds(&[col("id").gt_eq(lit(10i64)), col("id").lt(lit(20i64))]);
        assert_eq!((b.lo, b.hi, b.points), (10, 19, None));
        let b = bounds(&[lit(5i64).lt(col("id"))]);
        assert_eq!(b.lo, 6);
        let b = bounds(&[col("id").in_list(vec![lit(3i64), lit(1i64), lit(-4i64)], false)]);
        assert_eq!(b.points, Some(BTreeSet::from([1, 3])));
        let b = bounds(&[
            col("id").between(lit(2i64), lit(4i64)),
            col("id").eq(lit(3i64)),
        ]);
        assert_eq!((b.lo, b.hi), (2, 4));
        assert_eq!(b.points, Some(BTreeSet::from([3])));
        assert!(bounds(&[col("id").lt(lit(0i64))]).is_empty());
        assert!(bounds(&[col("id").eq(lit(1i64)), col("id").eq(lit(2i64))]).is_empty());
        assert!(!IdBounds::all().apply(&col("title").eq(lit("x"))));
        assert!(!IdBounds::all().apply(&col("id").in_list(vec![lit(1i64)], true)));
    }

    #[test]
    fn id_disjunctions_narrow_to_a_superset() {
        // `id IN (1, 2, 3)` as DataFusion's simplifier leaves it.
        let or = col("id")
            .eq(lit(1i64))
            .or(col("id").eq(lit(2i64)))
            .or(col("id").eq(lit(3i64)));
        assert_eq!(bounds(&[or]).points, Some(BTreeSet::from([1, 2, 3])));
        // Points and a range: the hull.
        let b = bounds(&[col("id")
            .eq(lit(5i64))
            .or(col("id").between(lit(10i64), lit(12i64)))]);
        assert_eq!((b.lo, b.hi, b.points), (5, 12, None));
        // A point outside its own range drops out of the union.
        let b = bounds(&[
            col("id").gt(lit(0i64)),
            col("id").eq(lit(0i64)).or(col("id").eq(lit(7i64))),
        ]);
        assert_eq!(b.exact_points(), Some(BTreeSet::from([7])));
        // Anything not about ids makes the disjunction unusable.
        assert!(!IdBounds::all().apply(&col("id").eq(lit(1i64)).or(col("title").eq(lit("x")))));
    }
}
