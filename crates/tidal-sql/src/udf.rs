//! Signal functions as vectorized scalar UDFs: `decay`, `window_count`, `velocity`,
//! `acceleration`, `signal_total`, `last_signal_at` (SQL.md §4).
//!
//! Each call gathers a whole Arrow array of entity ids through the ledger's batch
//! readers under one shared lock. When `at` is omitted, the planner's simplifier fills in
//! the statement's start time, so every row of a statement is read at one instant.
//!
//! A call starts *unbound* and volatile: DataFusion folds constant calls (all arguments
//! literals, as in `SELECT decay('like', 42)`) before it asks the function to simplify
//! itself, and folding a call without `at` would read it at whatever instant the folding
//! happens to run. `simplify` binds the call — fills in `at` and swaps in a stable
//! instance — after which folding it is safe.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use tidal_core::{CoreError, EntityId, SignalDef, SignalId, Timestamp, Window};
use tidal_engine::{Engine, ReadView};
use tidal_ledger::Ledger;

use crate::error::{bad_arg, engine_err};

/// Which signal read a UDF performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalFn {
    Decay,
    WindowCount,
    Velocity,
    Acceleration,
    Total,
    Last,
}

impl SignalFn {
    pub const ALL: [SignalFn; 6] = [
        SignalFn::Decay,
        SignalFn::WindowCount,
        SignalFn::Velocity,
        SignalFn::Acceleration,
        SignalFn::Total,
        SignalFn::Last,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SignalFn::Decay => "decay",
            SignalFn::WindowCount => "window_count",
            SignalFn::Velocity => "velocity",
            SignalFn::Acceleration => "acceleration",
            SignalFn::Total => "signal_total",
            SignalFn::Last => "last_signal_at",
        }
    }

    pub(crate) fn has_window(self) -> bool {
        matches!(
            self,
            SignalFn::WindowCount | SignalFn::Velocity | SignalFn::Acceleration
        )
    }

    pub(crate) fn has_at(self) -> bool {
        !matches!(self, SignalFn::Total | SignalFn::Last)
    }

    /// Arguments without and with the optional `at`.
    pub(crate) fn arity(self) -> (usize, usize) {
        let base = if self.has_window() { 3 } else { 2 };
        (base, if self.has_at() { base + 1 } else { base })
    }

    pub(crate) fn usage(self) -> &'static str {
        match self {
            SignalFn::Decay => "decay(signal, entity [, at])",
            SignalFn::WindowCount => "window_count(signal, entity, window [, at])",
            SignalFn::Velocity => "velocity(signal, entity, window [, at])",
            SignalFn::Acceleration => "acceleration(signal, entity, window [, at])",
            SignalFn::Total => "signal_total(signal, entity)",
            SignalFn::Last => "last_signal_at(signal, entity)",
        }
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// One signal function bound to an engine.
#[derive(Debug)]
pub struct SignalUdf {
    f: SignalFn,
    engine: Arc<Engine>,
    /// The instant the call reads at is settled: given by the caller or filled in by
    /// `simplify` (always, for the functions without `at`). Bound calls are stable,
    /// unbound ones volatile so that constant folding leaves them to `simplify`.
    bound: bool,
    signature: Signature,
    memo: Arc<OrdinalMemo>,
}

impl SignalUdf {
    /// The function as registered: unbound until the planner simplifies the call.
    pub fn new(f: SignalFn, engine: Arc<Engine>) -> SignalUdf {
        SignalUdf::with_binding(f, engine, !f.has_at(), Arc::default())
    }

    fn with_binding(
        f: SignalFn,
        engine: Arc<Engine>,
        bound: bool,
        memo: Arc<OrdinalMemo>,
    ) -> SignalUdf {
        let volatility = if bound {
            Volatility::Stable
        } else {
            Volatility::Volatile
        };
        SignalUdf {
            f,
            engine,
            bound,
            signature: Signature::user_defined(volatility),
            memo,
        }
    }

    /// All six functions, ready to register.
    pub fn all(engine: &Arc<Engine>) -> Vec<ScalarUDF> {
        // One memo for the six functions: calls over the same batch share lookups.
        let memo: Arc<OrdinalMemo> = Arc::default();
        SignalFn::ALL
            .iter()
            .map(|f| {
                ScalarUDF::new_from_impl(SignalUdf::with_binding(
                    *f,
                    engine.clone(),
                    !f.has_at(),
                    memo.clone(),
                ))
            })
            // WITHIN COHORT's reads share the memo: a cohort read maps the same ordinals.
            .chain(crate::cohort::CohortSignalUdf::pair(engine, &memo))
            .collect()
    }
}

impl PartialEq for SignalUdf {
    fn eq(&self, other: &Self) -> bool {
        self.f == other.f && self.bound == other.bound && Arc::ptr_eq(&self.engine, &other.engine)
    }
}

impl Eq for SignalUdf {}

impl Hash for SignalUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.f.hash(state);
        self.bound.hash(state);
        Arc::as_ptr(&self.engine).hash(state);
    }
}

/// A constant string argument (signal name or window).
fn const_str(f: SignalFn, what: &str, v: &ColumnarValue) -> Result<String> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s.clone()),
        _ => Err(bad_arg(
            f.name(),
            format!("the {what} must be a constant string ({})", f.usage()),
        )),
    }
}

impl ScalarUDFImpl for SignalUdf {
    fn name(&self) -> &str {
        self.f.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (min, max) = self.f.arity();
        if arg_types.len() < min || arg_types.len() > max {
            return Err(bad_arg(
                self.f.name(),
                format!(
                    "takes {min}{} arguments: {}",
                    if max > min {
                        format!(" or {max}")
                    } else {
                        String::new()
                    },
                    self.f.usage()
                ),
            ));
        }
        // PostgreSQL would not call a BIGINT/TIMESTAMP function with a fraction or a
        // number: without these checks 1.5 would read entity 1 and 5 the instant 5 µs
        // after the epoch. (Text is converted, as PostgreSQL converts an untyped literal.)
        let text = |t: &DataType| {
            matches!(
                t,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
            )
        };
        if !(arg_types[1].is_integer() || text(&arg_types[1])) {
            return Err(bad_arg(
                self.f.name(),
                format!(
                    "the entity must be a BIGINT id, not {} ({})",
                    arg_types[1],
                    self.f.usage()
                ),
            ));
        }
        let mut out = vec![DataType::Utf8, DataType::Int64];
        if self.f.has_window() {
            out.push(DataType::Utf8);
        }
        if arg_types.len() == max && self.f.has_at() {
            let at = &arg_types[max - 1];
            if !(text(at)
                || matches!(
                    at,
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                ))
            {
                return Err(bad_arg(
                    self.f.name(),
                    format!("`at` must be a TIMESTAMP, not {at} ({})", self.f.usage()),
                ));
            }
            out.push(ts_type());
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.f {
            SignalFn::Last => ts_type(),
            _ => DataType::Float64,
        })
    }

    fn simplify(&self, mut args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if self.bound {
            return Ok(ExprSimplifyResult::Original(args));
        }
        let (min, _) = self.f.arity();
        if args.len() == min {
            // Fix `at` to the statement's start so every row sees the same instant.
            let Some(start) = info.query_execution_start_time() else {
                return Ok(ExprSimplifyResult::Original(args));
            };
            let us = start.timestamp_micros();
            args.push(lit(ScalarValue::TimestampMicrosecond(Some(us), None)));
        }
        Ok(ExprSimplifyResult::Simplified(Expr::ScalarFunction(
            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(SignalUdf::with_binding(
                    self.f,
                    self.engine.clone(),
                    true,
                    self.memo.clone(),
                ))),
                args,
            ),
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let f = self.f;
        let n = args.number_rows;
        let name = const_str(f, "signal name", &args.args[0])?;
        let view = self.engine.read();
        let def = view.signal(&name).map_err(engine_err)?.clone();
        let window = if f.has_window() {
            let text = const_str(f, "window", &args.args[2])?;
            // Not a window at all is a bad argument (22023) like an undeclared one.
            let w = Window::parse(&text).map_err(|e| {
                bad_arg(
                    f.name(),
                    format!("{e}; declared windows are {}", def.windows_text()),
                )
            })?;
            if w == Window::All && f != SignalFn::WindowCount {
                return Err(engine_err(CoreError::AllWindowNotAllowed {
                    what: f.name(),
                }));
            }
            def.require_window(w).map_err(engine_err)?;
            Some(w)
        } else {
            None
        };
        let entities = args.args[1].to_array(n)?;
        let entities = entities
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad_arg(f.name(), "the entity must be a BIGINT id"))?;
        let at_arg = if f.has_at() {
            args.args.get(if f.has_window() { 3 } else { 2 })
        } else {
            None
        };
        let at = match at_arg {
            None => At::One(self.engine.now()),
            Some(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(t), _))) => {
                At::One(Timestamp(*t))
            }
            Some(ColumnarValue::Scalar(s)) if s.is_null() => At::Null,
            Some(v) => {
                let a = v.to_array(n)?;
                let a = a
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| bad_arg(f.name(), "`at` must be a TIMESTAMP"))?
                    .clone();
                At::Many(a)
            }
        };
        let out = evaluate(f, &view, &def, window, entities, &at, &self.memo)?;
        Ok(ColumnarValue::Array(out))
    }
}

/// The instant(s) a call reads at.
enum At {
    One(Timestamp),
    Many(TimestampMicrosecondArray),
    Null,
}

fn evaluate(
    f: SignalFn,
    view: &ReadView,
    def: &SignalDef,
    window: Option<Window>,
    entities: &Int64Array,
    at: &At,
    memo: &OrdinalMemo,
) -> Result<ArrayRef> {
    let n = entities.len();
    // Negative ids cannot exist; they read as an entity without events.
    let ids: Vec<EntityId> = entities
        .iter()
        .map(|v| EntityId(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(u64::MAX)))
        .collect();
    let null_at = |i: usize| match at {
        At::Null => true,
        At::Many(a) => a.is_null(i),
        At::One(_) => false,
    };
    let nulls = |i: usize| entities.is_null(i) || null_at(i);
    if f == SignalFn::Last {
        let mut out = Vec::with_capacity(n);
        view.with_ledger(|l| {
            let ords = memo.ordinals(l, def.kind, entities, &ids);
            l.last_ords(def.id, &ords, &mut out)
        });
        let arr: TimestampMicrosecondArray = out
            .iter()
            .enumerate()
            .map(|(i, t)| if nulls(i) { None } else { t.map(|t| t.0) })
            .collect();
        return Ok(Arc::new(arr));
    }
    let mut out: Vec<f64> = Vec::with_capacity(n);
    let w = window.unwrap_or(Window::All);
    if matches!(f, SignalFn::WindowCount | SignalFn::Velocity) {
        view.prepare_window_sums();
    }
    match at {
        At::One(t) => view.with_ledger(|l| {
            let ords = memo.ordinals(l, def.kind, entities, &ids);
            read_ords(l, f, def.id, w, &ords, *t, &mut out)
        }),
        At::Null => out.resize(n, 0.0),
        // Per-row instants: no single-lock gather, but still one lock per call.
        At::Many(a) => view.with_ledger(|l| {
            let mut one = Vec::with_capacity(1);
            for (i, id) in ids.iter().enumerate() {
                let t = Timestamp(if a.is_null(i) { 0 } else { a.value(i) });
                read_batch(l, f, def.id, w, std::slice::from_ref(id), t, &mut one);
                out.push(one.first().copied().unwrap_or(0.0));
            }
        }),
    }
    if let At::One(_) = at {
        // NULL exactly where the entity is NULL: reuse its null buffer, no per-row pass.
        return Ok(Arc::new(Float64Array::new(
            out.into(),
            entities.nulls().cloned(),
        )));
    }
    let arr: Float64Array = out
        .iter()
        .enumerate()
        .map(|(i, v)| if nulls(i) { None } else { Some(*v) })
        .collect();
    Ok(Arc::new(arr))
}

pub(crate) fn read_ords(
    l: &Ledger,
    f: SignalFn,
    sig: SignalId,
    w: Window,
    ords: &[u32],
    at: Timestamp,
    out: &mut Vec<f64>,
) {
    match f {
        SignalFn::Decay => l.decay_ords(sig, ords, at, out),
        SignalFn::WindowCount => l.window_count_ords(sig, ords, w, at, out),
        SignalFn::Velocity => l.velocity_ords(sig, ords, w, at, out),
        SignalFn::Acceleration => l.acceleration_ords(sig, ords, w, at, out),
        SignalFn::Total | SignalFn::Last => l.total_ords(sig, ords, out),
    }
}

/// Id arrays at least this long are remembered by [`OrdinalMemo`].
const ORDINAL_MEMO_LEN_MIN: usize = 1_024;
/// Ids the memo remembers in each of its two generations.
const ORDINAL_MEMO_IDS_MAX: usize = 4 << 20;

/// Ledger ordinals of id arrays seen before. The scan cache hands every query the same
/// Arrow buffers, and a profile calls several signal functions over each batch: both
/// find the ordinals here instead of hashing every id again. An entry is valid while
/// the ledger's ordinal generation is unchanged; new entities (ordinals appended since)
/// are patched in. An entry keeps its id buffer alive, so the buffer's address — the
/// key — cannot be reused by other data while the entry exists. Two generations of
/// entries, each bounded by [`ORDINAL_MEMO_IDS_MAX`] ids, approximate LRU.
#[derive(Debug, Default)]
pub(crate) struct OrdinalMemo {
    inner: parking_lot::Mutex<MemoGenerations>,
}

#[derive(Debug, Default)]
struct MemoGenerations {
    young: HashMap<MemoKey, MemoEntry>,
    young_ids: usize,
    old: HashMap<MemoKey, MemoEntry>,
}

type MemoKey = (usize, usize, tidal_core::EntityKind);

#[derive(Debug, Clone)]
struct MemoEntry {
    _ids: datafusion::arrow::buffer::ScalarBuffer<i64>,
    generation: u64,
    /// Ordinals the kind had when `ords` was last brought up to date.
    count: usize,
    sorted: bool,
    /// Ids in the array without an ordinal then: only those can gain one later.
    missing: usize,
    ords: Arc<Vec<u32>>,
}

impl OrdinalMemo {
    pub(crate) fn ordinals(
        &self,
        l: &Ledger,
        kind: tidal_core::EntityKind,
        arr: &Int64Array,
        ids: &[EntityId],
    ) -> Arc<Vec<u32>> {
        let compute = || {
            let mut v = Vec::with_capacity(ids.len());
            l.ordinals_of(kind, ids, &mut v);
            v
        };
        if arr.len() < ORDINAL_MEMO_LEN_MIN || arr.null_count() > 0 {
            return Arc::new(compute());
        }
        let generation = l.generation();
        let entities = l.entities(kind);
        let count = entities.len();
        let key = (arr.values().as_ptr() as usize, arr.len(), kind);
        let found = {
            let mut g = self.inner.lock();
            match g.young.get(&key).cloned() {
                Some(e) => Some(e),
                None => g.old.remove(&key).inspect(|e| {
                    g.young_ids += e.ords.len();
                    g.young.insert(key, e.clone());
                }),
            }
        };
        let mut entry = match found {
            Some(e) if e.generation == generation && e.count == count => return e.ords,
            // Every id had an ordinal: entities that got one since are not in here.
            Some(e) if e.generation == generation && e.missing == 0 => e,
            // A few entities got their first event since: place them by binary search.
            Some(mut e)
                if e.generation == generation
                    && e.sorted
                    && e.count < count
                    && count - e.count <= ids.len() / 8 =>
            {
                let values = arr.values();
                let ords = Arc::make_mut(&mut e.ords);
                for (k, id) in entities[e.count..count].iter().enumerate() {
                    if let Ok(v) = i64::try_from(id.0)
                        && let Ok(pos) = values.binary_search(&v)
                    {
                        ords[pos] = (e.count + k) as u32;
                        e.missing = e.missing.saturating_sub(1);
                    }
                }
                e.count = count;
                e
            }
            _ => {
                let ords = compute();
                MemoEntry {
                    _ids: arr.values().clone(),
                    generation,
                    count,
                    sorted: arr.values().windows(2).all(|w| w[0] < w[1]),
                    missing: ords.iter().filter(|&&o| o == u32::MAX).count(),
                    ords: Arc::new(ords),
                }
            }
        };
        entry.count = count;
        let ords = entry.ords.clone();
        let mut g = self.inner.lock();
        if !g.young.contains_key(&key) && g.young_ids + ords.len() > ORDINAL_MEMO_IDS_MAX {
            g.old = std::mem::take(&mut g.young);
            g.young_ids = 0;
        }
        if g.young.insert(key, entry).is_none() {
            g.young_ids += ords.len();
        }
        ords
    }
}

fn read_batch(
    l: &Ledger,
    f: SignalFn,
    sig: SignalId,
    w: Window,
    ids: &[EntityId],
    at: Timestamp,
    out: &mut Vec<f64>,
) {
    match f {
        SignalFn::Decay => l.decay_batch(sig, ids, at, out),
        SignalFn::WindowCount => l.window_count_batch(sig, ids, w, at, out),
        SignalFn::Velocity => l.velocity_batch(sig, ids, w, at, out),
        SignalFn::Acceleration => l.acceleration_batch(sig, ids, w, at, out),
        SignalFn::Total | SignalFn::Last => l.total_batch(sig, ids, out),
    }
}
