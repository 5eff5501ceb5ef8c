//! Relationships and affinity in SQL (SQL.md §8): the edge tables, the `affinities`
//! state table, `affinity(user, creator [, at])`, `in_degree(relationship, dst)`, and
//! what `affinity()` inside a profile binds to.
//!
//! Each relationship is a table `(src, dst, created_at)` read from the statement's
//! store snapshot; `src = n` and `src IN (…)` read just those users' key ranges (the
//! predicate stays in the plan, so the pushdown is only an optimisation).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, Int64Array, Int64Builder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, TableProviderFilterPushDown, Volatility, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use tidal_core::{DecaySpec, EntityId, RelationshipDef, Schema as TidalSchema, Timestamp};
use tidal_engine::{AffinityEntry, Engine, EngineError, ReadView};

use crate::SqlError;
use crate::error::{bad_arg, engine_err};

/// Rows per batch of an edge or affinity scan.
const SOCIAL_BATCH_ROWS: usize = 8_192;
/// Batches a scan's producer may run ahead of its consumer.
const SOCIAL_SCAN_QUEUE_BATCHES: usize = 2;
/// Largest `src IN (…)` / `user_id IN (…)` list read as separate key ranges.
const SOCIAL_POINT_KEYS_MAX: usize = 4_096;
/// The name of the affinity state table.
pub const AFFINITIES_TABLE: &str = "affinities";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// The ids an `col = n` / `col IN (…)` conjunct restricts a scan to (sorted), if any.
fn key_points(filters: &[Expr], column: &str) -> Option<Vec<u64>> {
    let mut out: Option<BTreeSet<u64>> = None;
    for f in filters {
        let Some(ids) = points_of(f, column) else {
            continue;
        };
        out = Some(match out {
            None => ids,
            Some(prev) => prev.intersection(&ids).copied().collect(),
        });
    }
    out.map(|s| s.into_iter().collect())
}

fn literal_id(e: &Expr) -> Option<Option<u64>> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int64(Some(n)) => Some(u64::try_from(*n).ok()),
            ScalarValue::Int32(Some(n)) => Some(u64::try_from(*n).ok()),
            ScalarValue::UInt64(Some(n)) => Some(Some(*n)),
            _ => None,
        },
        Expr::Cast(c) => literal_id(&c.expr),
        _ => None,
    }
}

fn is_column(e: &Expr, column: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == column,
        Expr::Cast(c) => is_column(&c.expr, column),
        _ => false,
    }
}

/// A negative id matches nothing: it contributes no point but still restricts.
fn points_of(e: &Expr, column: &str) -> Option<BTreeSet<u64>> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let v = if is_column(left, column) {
                literal_id(right)?
            } else if is_column(right, column) {
                literal_id(left)?
            } else {
                return None;
            };
            Some(v.into_iter().collect())
        }
        Expr::InList(l) if !l.negated && is_column(&l.expr, column) => {
            if l.list.len() > SOCIAL_POINT_KEYS_MAX {
                return None;
            }
            let mut out = BTreeSet::new();
            for v in &l.list {
                if let Some(id) = literal_id(v)? {
                    out.insert(id);
                }
            }
            Some(out)
        }
        _ => None,
    }
}

fn pushdown(filters: &[&Expr], column: &str) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            if points_of(f, column).is_some() {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Unsupported
            }
        })
        .collect()
}

/// A relationship's edge table, or the `affinities` state table: both read key
/// ranges of the statement's store snapshot on a blocking thread.
#[derive(Debug)]
pub(crate) struct SocialTable {
    engine: Arc<Engine>,
    what: Scan,
    schema: SchemaRef,
}

impl SocialTable {
    /// The edge table of relationship `rel`.
    pub(crate) fn edges(engine: Arc<Engine>, rel: &RelationshipDef) -> SocialTable {
        SocialTable {
            engine,
            what: Scan::Edges(rel.id),
            schema: edge_schema(),
        }
    }

    /// `affinities(user_id, creator_id, weight)`: every pair with events, its weight at
    /// the statement's instant.
    pub(crate) fn affinities(engine: Arc<Engine>) -> SocialTable {
        SocialTable {
            engine,
            what: Scan::Affinities,
            schema: Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Int64, false),
                Field::new("creator_id", DataType::Int64, false),
                Field::new("weight", DataType::Float64, false),
            ])),
        }
    }

    /// The column whose `=` / `IN` predicates narrow the scan to key ranges.
    fn key_column(&self) -> &'static str {
        match self.what {
            Scan::Edges(_) => "src",
            Scan::Affinities => "user_id",
        }
    }
}

/// `(src BIGINT, dst BIGINT, created_at TIMESTAMP)`, none NULL.
pub fn edge_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, false),
        Field::new("dst", DataType::Int64, false),
        Field::new("created_at", ts_type(), false),
    ]))
}

#[async_trait]
impl TableProvider for SocialTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        match self.what {
            Scan::Edges(_) => TableType::Base,
            Scan::Affinities => TableType::View,
        }
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(pushdown(filters, self.key_column()))
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Affinity weights are read at the statement's instant.
        let at = state
            .execution_props()
            .query_execution_start_time
            .map_or_else(|| self.engine.now(), |t| Timestamp(t.timestamp_micros()));
        let part = SocialScan {
            view: self.engine.read(),
            what: self.what,
            points: key_points(filters, self.key_column()),
            schema: self.schema.clone(),
            at,
        };
        Ok(Arc::new(StreamingTableExec::try_new(
            self.schema.clone(),
            vec![Arc::new(part)],
            projection,
            Vec::new(),
            false,
            limit,
        )?))
    }
}

#[derive(Debug, Clone, Copy)]
enum Scan {
    Edges(u64),
    Affinities,
}

/// One scan of edges or affinities over a snapshot, produced on a blocking thread.
struct SocialScan {
    view: ReadView,
    what: Scan,
    /// Only these keys (sorted), when the WHERE clause names them.
    points: Option<Vec<u64>>,
    schema: SchemaRef,
    /// The instant affinity weights are read at.
    at: Timestamp,
}

impl fmt::Debug for SocialScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocialScan")
            .field("what", &self.what)
            .field("points", &self.points.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl PartitionStream for SocialScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(SOCIAL_SCAN_QUEUE_BATCHES);
        let view = self.view.clone();
        let what = self.what;
        let points = self.points.clone();
        let schema = self.schema.clone();
        let at = self.at;
        tokio::task::spawn_blocking(move || {
            let r = produce(&view, what, points.as_deref(), &schema, at, &tx);
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// Key ranges to read: one per point, or everything.
fn ranges(points: Option<&[u64]>) -> Vec<(EntityId, EntityId)> {
    match points {
        Some(p) => p.iter().map(|&k| (EntityId(k), EntityId(k))).collect(),
        None => vec![(EntityId(0), EntityId(u64::MAX))],
    }
}

fn produce(
    view: &ReadView,
    what: Scan,
    points: Option<&[u64]>,
    schema: &SchemaRef,
    at: Timestamp,
    tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
) -> Result<()> {
    let store = view.store();
    let mut a = Int64Builder::with_capacity(SOCIAL_BATCH_ROWS);
    let mut b = Int64Builder::with_capacity(SOCIAL_BATCH_ROWS);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(SOCIAL_BATCH_ROWS);
    let mut w = Float64Builder::with_capacity(SOCIAL_BATCH_ROWS);
    let mut rows = 0usize;
    // Returns false when the consumer has gone.
    let flush = |a: &mut Int64Builder,
                 b: &mut Int64Builder,
                 ts: &mut TimestampMicrosecondBuilder,
                 w: &mut Float64Builder|
     -> Result<bool> {
        let third: ArrayRef = match what {
            Scan::Edges(_) => Arc::new(ts.finish()),
            Scan::Affinities => Arc::new(w.finish()),
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(a.finish()), Arc::new(b.finish()), third],
        )?;
        Ok(tx.blocking_send(Ok(batch)).is_ok())
    };
    for (lo, hi) in ranges(points) {
        match what {
            Scan::Edges(rel) => {
                for e in store.edges(rel, lo, hi) {
                    let (src, dst, created) = e.map_err(engine_err)?;
                    a.append_value(src.0 as i64);
                    b.append_value(dst.0 as i64);
                    ts.append_value(created.0);
                    rows += 1;
                    if rows.is_multiple_of(SOCIAL_BATCH_ROWS)
                        && !flush(&mut a, &mut b, &mut ts, &mut w)?
                    {
                        return Ok(());
                    }
                }
            }
            Scan::Affinities => {
                for p in store.affinity_pairs(lo, hi) {
                    let (user, creator, entries) = p.map_err(engine_err)?;
                    a.append_value(user.0 as i64);
                    b.append_value(creator.0 as i64);
                    w.append_value(tidal_engine::affinity_value(&entries, view.schema(), at));
                    rows += 1;
                    if rows.is_multiple_of(SOCIAL_BATCH_ROWS)
                        && !flush(&mut a, &mut b, &mut ts, &mut w)?
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
    if !rows.is_multiple_of(SOCIAL_BATCH_ROWS) {
        flush(&mut a, &mut b, &mut ts, &mut w)?;
    }
    Ok(())
}

fn ids_of(v: &ColumnarValue, n: usize, what: &str) -> Result<Int64Array> {
    let a = v.to_array(n)?;
    let a = datafusion::arrow::compute::cast(&a, &DataType::Int64)?;
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal(format!("{what}: ids are not BIGINT")))
}

fn timestamps_of(v: &ColumnarValue, n: usize) -> Result<TimestampMicrosecondArray> {
    let a = v.to_array(n)?;
    let a = datafusion::arrow::compute::cast(&a, &ts_type())?;
    a.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("affinity: `at` is not a TIMESTAMP".into()))
}

/// `affinity(user, creator [, at])`. Starts unbound and volatile, like the signal
/// functions (udf.rs): `simplify` fills in the statement's instant, then it is stable.
#[derive(Debug)]
pub struct AffinityUdf {
    engine: Arc<Engine>,
    bound: bool,
    signature: Signature,
}

impl AffinityUdf {
    pub fn new(engine: Arc<Engine>) -> AffinityUdf {
        AffinityUdf::with_binding(engine, false)
    }
    fn with_binding(engine: Arc<Engine>, bound: bool) -> AffinityUdf {
        AffinityUdf {
            engine,
            bound,
            signature: Signature::user_defined(if bound {
                Volatility::Stable
            } else {
                Volatility::Volatile
            }),
        }
    }
}

impl PartialEq for AffinityUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine) && self.bound == other.bound
    }
}
impl Eq for AffinityUdf {}
impl Hash for AffinityUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.engine).hash(state);
        self.bound.hash(state);
    }
}

const AFFINITY_USAGE: &str = "affinity(user BIGINT, creator BIGINT [, at TIMESTAMP])";

impl ScalarUDFImpl for AffinityUdf {
    fn name(&self) -> &str {
        "affinity"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let id = |t: &DataType| t.is_integer() || *t == DataType::Null;
        match args {
            [u, c] if id(u) && id(c) => Ok(vec![DataType::Int64, DataType::Int64]),
            [u, c, at]
                if id(u)
                    && id(c)
                    && matches!(
                        at,
                        DataType::Timestamp(..)
                            | DataType::Date32
                            | DataType::Utf8
                            | DataType::Null
                    ) =>
            {
                Ok(vec![DataType::Int64, DataType::Int64, ts_type()])
            }
            [] => Err(bad_arg(
                "affinity",
                format!(
                    "affinity() without arguments is only for profiles (the FOR USER user and \
                     the row's creator); elsewhere write {AFFINITY_USAGE}"
                ),
            )),
            _ => Err(bad_arg("affinity", format!("takes {AFFINITY_USAGE}"))),
        }
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
        Ok(ExprSimplifyResult::Simplified(Expr::ScalarFunction(
            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(AffinityUdf::with_binding(
                    self.engine.clone(),
                    true,
                ))),
                args,
            ),
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let view = self.engine.read();
        let users = ids_of(&args.args[0], n, "affinity")?;
        let creators = ids_of(&args.args[1], n, "affinity")?;
        let at = match args.args.get(2) {
            Some(a) => Some(timestamps_of(a, n)?),
            None => None,
        };
        let now = self.engine.now();
        let mut out = Float64Builder::with_capacity(n);
        for i in 0..n {
            let (Some(u), Some(c)) = (
                users.is_valid(i).then(|| users.value(i)),
                creators.is_valid(i).then(|| creators.value(i)),
            ) else {
                out.append_null();
                continue;
            };
            let t = match &at {
                Some(a) if a.is_null(i) => {
                    out.append_null();
                    continue;
                }
                Some(a) => Timestamp(a.value(i)),
                None => now,
            };
            // A negative id has no pairs: 0, as for a pair without events.
            let v = match (EntityId::from_i64(u), EntityId::from_i64(c)) {
                (Some(u), Some(c)) => view.affinity(u, c, t).map_err(engine_err)?,
                _ => 0.0,
            };
            out.append_value(v);
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(
            if args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)))
            {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            } else {
                ColumnarValue::Array(array)
            },
        )
    }
}

/// `in_degree(relationship, dst)`: how many edges of the relationship point at `dst`
/// (a creator's followers), as of the statement's snapshot.
#[derive(Debug)]
pub struct InDegreeUdf {
    engine: Arc<Engine>,
    signature: Signature,
}

impl InDegreeUdf {
    pub fn new(engine: Arc<Engine>) -> InDegreeUdf {
        InDegreeUdf {
            engine,
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

impl PartialEq for InDegreeUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine)
    }
}
impl Eq for InDegreeUdf {}
impl Hash for InDegreeUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.engine).hash(state);
    }
}

impl ScalarUDFImpl for InDegreeUdf {
    fn name(&self) -> &str {
        "in_degree"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8, t]
                if t.is_integer() || *t == DataType::Null =>
            {
                Ok(vec![DataType::Utf8, DataType::Int64])
            }
            _ => Err(bad_arg(
                "in_degree",
                "takes in_degree(relationship TEXT, dst BIGINT), e.g. in_degree('follows', creator_id)",
            )),
        }
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let name = match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s.clone(),
            _ => {
                return Err(bad_arg(
                    "in_degree",
                    "the relationship must be a quoted name such as 'follows'",
                ));
            }
        };
        let view = self.engine.read();
        let rel = view
            .schema()
            .relationship(&name)
            .map_err(|e| engine_err(EngineError::Core(e)))?
            .id;
        let dst = ids_of(&args.args[1], n, "in_degree")?;
        let mut out = Int64Builder::with_capacity(n);
        for d in dst.iter() {
            match d {
                None => out.append_null(),
                Some(d) => match EntityId::from_i64(d) {
                    Some(d) => {
                        out.append_value(view.store().in_degree(rel, d).map_err(engine_err)? as i64)
                    }
                    None => out.append_value(0),
                },
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(match &args.args[1] {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            }
            _ => ColumnarValue::Array(array),
        })
    }
}

/// A user's affinity state, captured when a statement is planned: per creator, the
/// `(δ, decay, t_ref, score)` of each AFFINITY signal the schema declares.
#[derive(Debug, Default)]
pub(crate) struct UserAffinity {
    pairs: HashMap<u64, Vec<(f64, DecaySpec, AffinityEntry)>>,
    /// The creators with pairs, as a bitmap: most rows' creators have none.
    dense: Option<crate::retrieve::DenseIds>,
    /// The values at the last instant asked for (one statement reads at one instant).
    at: parking_lot::Mutex<Option<(i64, Arc<CreatorValues>)>>,
}

/// Affinity by creator at one instant, sorted by creator. Rows reach it only past the
/// creator filter (`UserAffinity::dense`), which stays in L1; a plain array indexed by
/// creator was measured slower (random probes of a 400 KB array under a zipfian
/// catalogue, where the creators with pairs own many rows).
#[derive(Debug)]
struct CreatorValues(Vec<(u64, f64)>);

impl CreatorValues {
    fn of(mut pairs: Vec<(u64, f64)>) -> CreatorValues {
        pairs.sort_unstable_by_key(|p| p.0);
        CreatorValues(pairs)
    }

    #[inline]
    fn get(&self, c: u64) -> f64 {
        self.0
            .binary_search_by_key(&c, |x| x.0)
            .map_or(0.0, |i| self.0[i].1)
    }
}

impl UserAffinity {
    /// `user`'s pairs as of `view`; `None` when there are none.
    pub(crate) fn read(
        view: &ReadView,
        user: EntityId,
    ) -> Result<Option<Arc<UserAffinity>>, SqlError> {
        let schema = view.schema();
        let mut pairs: HashMap<u64, Vec<(f64, DecaySpec, AffinityEntry)>> = HashMap::new();
        for p in view.store().affinity_pairs(user, user) {
            let (_, creator, entries) = p?;
            for e in entries {
                let Some(def) = schema.signal_by_id(e.signal) else {
                    continue;
                };
                let Some(delta) = def.affinity else { continue };
                pairs
                    .entry(creator.0)
                    .or_default()
                    .push((delta, def.decay, e));
            }
        }
        if pairs.is_empty() {
            return Ok(None);
        }
        let mut set = tidal_engine::roaring::RoaringTreemap::new();
        set.extend(pairs.keys().copied());
        Ok(Some(Arc::new(UserAffinity {
            dense: crate::retrieve::DenseIds::of(&set),
            pairs,
            at: parking_lot::Mutex::new(None),
        })))
    }

    /// The affinity per creator at `at`.
    fn values(&self, at: i64) -> Arc<CreatorValues> {
        let mut cached = self.at.lock();
        if let Some((t, v)) = cached.as_ref()
            && *t == at
        {
            return v.clone();
        }
        let v = Arc::new(CreatorValues::of(
            self.pairs
                .iter()
                .map(|(c, es)| {
                    (
                        *c,
                        es.iter().map(|(d, decay, e)| d * e.at(*decay, at)).sum(),
                    )
                })
                .collect(),
        ));
        *cached = Some((at, v.clone()));
        v
    }
}

/// The name `affinity()` in a profile binds to; [`bind_user_affinity`] swaps in an
/// instance holding the statement's [`UserAffinity`].
pub(crate) const USER_AFFINITY_FUNCTION: &str = "user_affinity";

/// `user_affinity(creator_id, at)`: the FOR USER user's affinity for the row's creator,
/// from the state captured at planning — one bit test (and, for the few creators with
/// pairs, one map lookup) per row, no store reads. The registered instance has no
/// state: called directly it is an error, as the function exists only for profiles.
#[derive(Debug)]
pub struct UserAffinityUdf {
    state: Option<Arc<UserAffinity>>,
    signature: Signature,
}

impl Default for UserAffinityUdf {
    fn default() -> Self {
        UserAffinityUdf {
            state: None,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl PartialEq for UserAffinityUdf {
    fn eq(&self, other: &Self) -> bool {
        match (&self.state, &other.state) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}
impl Eq for UserAffinityUdf {}
impl Hash for UserAffinityUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        USER_AFFINITY_FUNCTION.hash(state);
        self.state.as_ref().map(Arc::as_ptr).hash(state);
    }
}

impl ScalarUDFImpl for UserAffinityUdf {
    fn name(&self) -> &str {
        USER_AFFINITY_FUNCTION
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [c, _] if c.is_integer() || *c == DataType::Null => {
                Ok(vec![DataType::Int64, ts_type()])
            }
            _ => Err(bad_arg(
                "user_affinity",
                "takes user_affinity(creator BIGINT, at TIMESTAMP); a profile's affinity() binds it",
            )),
        }
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let Some(state) = &self.state else {
            return Err(bad_arg(
                "user_affinity",
                "user_affinity() is what a profile's affinity() becomes for the statement's FOR \
                 USER user; call affinity(user, creator) instead",
            ));
        };
        let ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(at), _)) = &args.args[1]
        else {
            return Err(bad_arg(
                "user_affinity",
                "the instant must be a constant (the statement's)",
            ));
        };
        let values = state.values(*at);
        let creators = ids_of(&args.args[0], n, "user_affinity")?;
        // Ids are non-negative, so a negative value (read as a huge u64) has no pair.
        let value = |c: i64| -> f64 {
            let c = c as u64;
            if state.dense.as_ref().is_some_and(|d| !d.contains(c)) {
                return 0.0;
            }
            values.get(c)
        };
        let raw = creators.values();
        let out: Vec<f64> = match creators.nulls() {
            None => raw.iter().map(|&c| value(c)).collect(),
            // A row without a creator has no affinity: 0 (NULL would void the score).
            Some(nulls) => raw
                .iter()
                .enumerate()
                .map(|(i, &c)| if nulls.is_valid(i) { value(c) } else { 0.0 })
                .collect(),
        };
        let out = Float64Array::from(out);
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `plan` with every `user_affinity(…)` call holding `state` (see [`UserAffinityUdf`]).
pub(crate) fn bind_user_affinity(
    plan: datafusion::logical_expr::LogicalPlan,
    state: &Arc<UserAffinity>,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let udf = Arc::new(ScalarUDF::new_from_impl(UserAffinityUdf {
        state: Some(state.clone()),
        signature: Signature::user_defined(Volatility::Immutable),
    }));
    let plan = plan.transform_up(|node| {
        node.map_expressions(|e| {
            e.transform_up(|e| match e {
                Expr::ScalarFunction(f) if f.func.name() == USER_AFFINITY_FUNCTION => {
                    Ok(Transformed::yes(Expr::ScalarFunction(
                        datafusion::logical_expr::expr::ScalarFunction::new_udf(
                            udf.clone(),
                            f.args,
                        ),
                    )))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    })?;
    Ok(plan.data)
}

/// Whether a profile clause calls `affinity()` (the binding needs the user's state).
pub(crate) fn mentions_affinity(text: &str) -> bool {
    text.to_ascii_lowercase().contains("affinity")
}

/// The relationship a catalog name stands for, if any.
pub(crate) fn relationship_table(schema: &TidalSchema, name: &str) -> Option<RelationshipDef> {
    schema.relationship(name).ok().cloned()
}
