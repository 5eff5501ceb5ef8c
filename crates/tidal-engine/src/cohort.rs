//! Cohort state (SQL.md §9): for every signal declared `COHORTS (...)`, per value of
//! each dimension, the same state the global ledger keeps — decayed score, total,
//! newest event, bucketed windows — over the events of the users with that value.
//!
//! # What counts where
//!
//! The materializer keeps its own copy of the users' values of every column some
//! signal's cohorts read ("tracked columns"), dictionary-encoded, fed from the users
//! rows of the log in LSN order. An event with a user is counted, for each dimension,
//! in the cohort of that user's values *at the event's position in the log*: a later
//! `UPDATE users` moves where later events count and never re-files earlier ones.
//! Events without a user, of a user without a row, or whose user has NULL in a column
//! of the dimension count only globally. A composite dimension's cohort is the tuple
//! of its columns' values (an exact conjunction).
//!
//! Each cohort is a [`tidal_ledger::Ledger`] holding the one signal — the same
//! structure, math and precision as global state, with its own dense ordinals, so a
//! cohort holds state only for the entities that have events in it.
//!
//! # Why a copy of the users' values
//!
//! Replay after a crash starts at the checkpoint, while the entity store may already
//! hold later user writes; reading a user's *current* row during replay would file an
//! event by a value the user only got afterwards. The copy is checkpointed with the
//! cohort state and advanced by the same log, so replay files every event exactly as
//! the first application did. The one moment the copy is read from the store is when
//! a signal with cohorts is created (its columns start being tracked): that read is
//! exact in normal operation (the store then holds exactly the log up to the DDL);
//! the engine checkpoints right after such a DDL, so a replay crossing it is limited
//! to a crash in between (see `docs/architecture.md`, "Cohorts").
//!
//! # Reading over a whole catalogue
//!
//! Ranking reads global ordinals (from the ordinal memo) for each batch. A cohort's
//! ordinals differ, so [`CohortRead::map_ords`] translates them through a dense
//! global-ordinal → cohort-ordinal array, built once per cohort and patched as either
//! side grows (only new entities are looked up). Up to [`COHORT_INVERSE_MAPS_MAX`] such
//! arrays are cached; each costs 4 bytes per entity of the kind with events.
//!
//! Checkpoint section `"cohorts"`: `[version u32 = 1]`, the tracked columns with their
//! dictionaries, the users' codes sorted by id, then per signal (sorted by id) per
//! dimension the cohorts sorted by key, each an encoded ledger. Decoding checks every
//! count, code and order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{
    COHORT_VALUES_MAX, CohortDim, CoreError, EntityId, EntityKind, Row, Schema, SchemaChange,
    SignalDef, SignalId, Value,
};
use tidal_ledger::{IdBuildHasher, Ledger};
use tidal_wal::{CommittedTxn, Op};

use crate::EngineError;
use crate::registry::Materializer;
use crate::store::EntityStore;

/// Checkpoint section name of the cohort materializer.
pub(crate) const COHORTS_SECTION: &str = "cohorts";
/// Version of the section's encoding; bumped on any change to it.
const COHORTS_FORMAT_VERSION: u32 = 1;
/// Global → cohort ordinal arrays kept between reads (4 bytes per entity each).
pub const COHORT_INVERSE_MAPS_MAX: usize = 16;
/// The code of NULL (and of a value past the dictionary limit) in a user's codes.
const NULL_CODE: u16 = u16::MAX;
const _: () = assert!(COHORT_VALUES_MAX < NULL_CODE as usize);

/// One tracked users column and its dictionary (codes are positions in `values`).
#[derive(Debug, Clone, PartialEq)]
struct ColumnDict {
    name: String,
    values: Vec<String>,
    codes: HashMap<String, u16>,
}

impl ColumnDict {
    fn new(name: String) -> ColumnDict {
        ColumnDict {
            name,
            values: Vec::new(),
            codes: HashMap::new(),
        }
    }

    /// The value's code, interned if new; NULL past the dictionary limit (which
    /// `check_user_row` refuses before anything is logged).
    fn intern(&mut self, v: Option<String>) -> u16 {
        let Some(v) = v else { return NULL_CODE };
        if let Some(&c) = self.codes.get(&v) {
            return c;
        }
        if self.values.len() >= COHORT_VALUES_MAX {
            tracing::warn!(column = %self.name, "cohort dictionary full; value counted globally only");
            return NULL_CODE;
        }
        let c = self.values.len() as u16;
        self.codes.insert(v.clone(), c);
        self.values.push(v);
        c
    }
}

/// The cohort key of a dimension: its columns' codes, 16 bits each, in column order.
fn pack(codes: impl Iterator<Item = u16>) -> Option<u64> {
    let mut key = 0u64;
    for (i, c) in codes.enumerate() {
        if c == NULL_CODE {
            return None;
        }
        key |= u64::from(c) << (16 * i);
    }
    Some(key)
}

/// A user's codes for a dimension's columns (NULL for a column it does not track, which
/// `retrack` never leaves).
fn code_of<'a>(codes: &'a [u16], cols: &'a [usize]) -> impl Iterator<Item = u16> + 'a {
    cols.iter()
        .map(|&c| codes.get(c).copied().unwrap_or(NULL_CODE))
}

/// One dimension of one signal: its cohorts by key.
#[derive(Debug, Clone)]
struct DimCohorts {
    dim: CohortDim,
    /// Positions of the dimension's columns in [`Cohorts::columns`].
    cols: Vec<usize>,
    /// Keyed by packed codes with the ledger's id hasher: this lookup runs per event per
    /// dimension, where SipHash cost a measurable share of ingest.
    by_key: HashMap<u64, Ledger, IdBuildHasher>,
}

#[derive(Debug, Clone)]
struct SignalCohorts {
    def: SignalDef,
    dims: Vec<DimCohorts>,
}

/// The cohort state. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Cohorts {
    /// Tracked users columns, sorted by name.
    columns: Vec<ColumnDict>,
    /// Per user with a row: a code per tracked column.
    users: HashMap<EntityId, Box<[u16]>, IdBuildHasher>,
    signals: BTreeMap<SignalId, SignalCohorts>,
}

/// The text form of a users value as a cohort value (`'US'`, `25`, `true`).
pub fn cohort_value_text(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One cohort's state, as listed by [`Cohorts::each_cohort`].
#[derive(Debug, Clone, Copy)]
pub struct CohortEntry<'a> {
    pub signal: &'a SignalDef,
    pub dimension: &'a CohortDim,
    /// Position of the dimension in the signal's COHORTS.
    pub dim_index: usize,
    /// The dimension's values in column order.
    pub key: u64,
    pub ledger: &'a Ledger,
}

/// Per (signal, dimension) figures for the `cohorts` view.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortStats {
    pub signal: String,
    pub dimension: String,
    /// Cohorts with state (values, or value tuples, whose users sent events).
    pub values: usize,
    /// (entity, cohort) pairs with at least one event.
    pub active_pairs: usize,
    /// Estimated heap bytes of the cohorts' ledgers.
    pub bytes: usize,
}

impl Cohorts {
    /// The signal's cohort dimensions, if it declares any.
    pub fn dims(&self, sig: SignalId) -> Option<&[CohortDim]> {
        let s = self.signals.get(&sig)?;
        Some(&s.def.cohorts)
    }

    /// The key of the cohort where dimension `dim` of `sig` has `values` (in the
    /// dimension's column order). `None` when a value never occurred: that cohort is
    /// empty.
    pub fn key(&self, sig: SignalId, dim: usize, values: &[&str]) -> Option<u64> {
        let d = self.signals.get(&sig)?.dims.get(dim)?;
        if values.len() != d.cols.len() {
            return None;
        }
        let codes: Option<Vec<u16>> = d
            .cols
            .iter()
            .zip(values)
            .map(|(&c, v)| self.columns[c].codes.get(*v).copied())
            .collect();
        pack(codes?.into_iter())
    }

    /// The state of one cohort (`None`: no event in it yet).
    pub fn ledger(&self, sig: SignalId, dim: usize, key: u64) -> Option<&Ledger> {
        self.signals.get(&sig)?.dims.get(dim)?.by_key.get(&key)
    }

    /// The values of a cohort key of dimension `dim`, in column order.
    pub fn values_of(&self, sig: SignalId, dim: usize, key: u64) -> Vec<String> {
        let Some(d) = self.signals.get(&sig).and_then(|s| s.dims.get(dim)) else {
            return Vec::new();
        };
        d.cols
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let code = ((key >> (16 * i)) & 0xffff) as usize;
                self.columns[c]
                    .values
                    .get(code)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every cohort with state, by signal id, dimension and key.
    pub fn each_cohort(&self) -> Vec<CohortEntry<'_>> {
        let mut out = Vec::new();
        for s in self.signals.values() {
            for (i, d) in s.dims.iter().enumerate() {
                let mut keys: Vec<&u64> = d.by_key.keys().collect();
                keys.sort_unstable();
                for k in keys {
                    out.push(CohortEntry {
                        signal: &s.def,
                        dimension: &d.dim,
                        dim_index: i,
                        key: *k,
                        ledger: &d.by_key[k],
                    });
                }
            }
        }
        out
    }

    /// Figures per (signal, dimension), for the `cohorts` view.
    pub fn stats(&self) -> Vec<CohortStats> {
        let mut out = Vec::new();
        for s in self.signals.values() {
            for d in &s.dims {
                out.push(CohortStats {
                    signal: s.def.name.clone(),
                    dimension: d.dim.name(),
                    values: d.by_key.len(),
                    active_pairs: d.by_key.values().map(Ledger::active_pairs).sum(),
                    bytes: d.by_key.values().map(Ledger::memory_bytes).sum(),
                });
            }
        }
        out
    }

    /// Tracked users columns, sorted.
    pub fn tracked_columns(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
    }

    /// Positions of the tracked columns in the users table's rows (`None`: the table or
    /// the column is gone, which schema checks prevent while cohorts exist).
    fn row_positions(&self, schema: &Schema) -> Vec<Option<usize>> {
        let table = schema.table(EntityKind::User).ok();
        self.columns
            .iter()
            .map(|c| table.and_then(|t| t.column_index(&c.name)))
            .collect()
    }

    fn set_user(&mut self, id: EntityId, row: &Row, positions: &[Option<usize>]) {
        let codes: Box<[u16]> = self
            .columns
            .iter_mut()
            .zip(positions)
            .map(|(c, p)| c.intern(p.and_then(|p| row.get(p)).and_then(cohort_value_text)))
            .collect();
        self.users.insert(id, codes);
    }

    fn apply_event(&mut self, ev: &tidal_core::SignalEvent) {
        let Some(user) = ev.user else { return };
        let Some(s) = self.signals.get_mut(&ev.signal) else {
            return;
        };
        let Some(codes) = self.users.get(&user) else {
            return;
        };
        for d in &mut s.dims {
            let Some(key) = pack(code_of(codes, &d.cols)) else {
                continue;
            };
            let l = d.by_key.entry(key).or_insert_with(|| {
                let mut l = Ledger::new();
                l.define(&s.def);
                l
            });
            // A bulk window read asked for sums this cohort does not keep yet.
            if l.window_sums_wanted() {
                l.enable_wanted_window_sums();
            }
            l.apply(ev);
        }
    }

    /// Recomputes the tracked columns from the signals; columns that become tracked
    /// are read from `store` (see the module docs), the rest keep their codes.
    fn retrack(&mut self, schema: &Schema, store: &EntityStore) -> Result<(), EngineError> {
        let want: BTreeSet<String> = self
            .signals
            .values()
            .flat_map(|s| s.def.cohort_columns())
            .map(str::to_string)
            .collect();
        let have: BTreeSet<String> = self.columns.iter().map(|c| c.name.clone()).collect();
        if want != have {
            let old = std::mem::take(&mut self.columns);
            let old_users = std::mem::take(&mut self.users);
            let mut keep: Vec<Option<usize>> = Vec::new();
            for name in &want {
                let i = old.iter().position(|c| &c.name == name);
                keep.push(i);
                self.columns.push(match i {
                    Some(i) => old[i].clone(),
                    None => ColumnDict::new(name.clone()),
                });
            }
            let fresh: Vec<usize> = (0..want.len()).filter(|&i| keep[i].is_none()).collect();
            // Users known before keep their codes for columns tracked before.
            for (id, codes) in old_users {
                let next: Box<[u16]> = keep
                    .iter()
                    .map(|k| k.map_or(NULL_CODE, |i| codes[i]))
                    .collect();
                self.users.insert(id, next);
            }
            if !fresh.is_empty() && schema.table(EntityKind::User).is_ok() {
                let positions = self.row_positions(schema);
                let snap = store.snapshot();
                let width = self.columns.len();
                for item in snap.scan(EntityKind::User) {
                    let (id, row) = item?;
                    let codes = self
                        .users
                        .entry(id)
                        .or_insert_with(|| vec![NULL_CODE; width].into_boxed_slice());
                    for &i in &fresh {
                        let v = positions[i]
                            .and_then(|p| row.get(p))
                            .and_then(cohort_value_text);
                        codes[i] = self.columns[i].intern(v);
                    }
                }
            }
            if self.columns.is_empty() {
                self.users = HashMap::default();
            }
        }
        // Positions of each dimension's columns.
        for s in self.signals.values_mut() {
            for d in &mut s.dims {
                d.cols = d
                    .dim
                    .columns
                    .iter()
                    .map(|c| {
                        self.columns
                            .binary_search_by(|x| x.name.as_str().cmp(c))
                            .unwrap_or(usize::MAX)
                    })
                    .collect();
            }
        }
        Ok(())
    }

    fn encode(&self, e: &mut Encoder) {
        e.u32(COHORTS_FORMAT_VERSION);
        e.u32(self.columns.len() as u32);
        for c in &self.columns {
            e.str(&c.name);
            e.u32(c.values.len() as u32);
            for v in &c.values {
                e.str(v);
            }
        }
        let mut users: Vec<(&EntityId, &Box<[u16]>)> = self.users.iter().collect();
        users.sort_unstable_by_key(|(id, _)| **id);
        e.u64(users.len() as u64);
        for (id, codes) in users {
            e.u64(id.0);
            for &c in codes.iter() {
                e.u32(u32::from(c));
            }
        }
        e.u32(self.signals.len() as u32);
        for s in self.signals.values() {
            s.def.encode(e);
            for d in &s.dims {
                let mut keys: Vec<&u64> = d.by_key.keys().collect();
                keys.sort_unstable();
                e.u64(keys.len() as u64);
                for k in keys {
                    e.u64(*k);
                    d.by_key[k].encode(e);
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Cohorts, EngineError> {
        let mut d = Decoder::new(bytes);
        let version = d.u32()?;
        if version != COHORTS_FORMAT_VERSION {
            return Err(corrupt(format!("unsupported format version {version}")));
        }
        let mut out = Cohorts::default();
        let ncols = d.u32()? as usize;
        if ncols > tidal_core::schema::TABLE_COLUMNS_MAX {
            return Err(corrupt("too many tracked columns".into()));
        }
        for _ in 0..ncols {
            let mut c = ColumnDict::new(d.str()?.to_string());
            if out.columns.last().is_some_and(|p| p.name >= c.name) {
                return Err(corrupt("tracked columns out of order".into()));
            }
            let n = d.u32()? as usize;
            if n > COHORT_VALUES_MAX {
                return Err(corrupt(format!("column {} has {n} values", c.name)));
            }
            for i in 0..n {
                let v = d.str()?.to_string();
                if c.codes.insert(v.clone(), i as u16).is_some() {
                    return Err(corrupt(format!("column {} repeats a value", c.name)));
                }
                c.values.push(v);
            }
            out.columns.push(c);
        }
        let nusers = d.u64()?;
        if nusers.saturating_mul(8) > d.remaining() as u64 {
            return Err(corrupt("user count exceeds the section".into()));
        }
        let mut prev = None;
        for _ in 0..nusers {
            let id = EntityId(d.u64()?);
            if prev.is_some_and(|p| p >= id) {
                return Err(corrupt("users out of order".into()));
            }
            prev = Some(id);
            let mut codes = Vec::with_capacity(ncols);
            for c in &out.columns {
                let code = d.u32()?;
                if code != u32::from(NULL_CODE) && code as usize >= c.values.len() {
                    return Err(corrupt(format!("user {} has a bad code", id.0)));
                }
                codes.push(code as u16);
            }
            out.users.insert(id, codes.into_boxed_slice());
        }
        let nsig = d.u32()? as usize;
        if nsig > tidal_core::schema::SIGNALS_MAX {
            return Err(corrupt("too many signals".into()));
        }
        for _ in 0..nsig {
            let def = SignalDef::decode(&mut d)?;
            if def.cohorts.is_empty() || out.signals.contains_key(&def.id) {
                return Err(corrupt(format!("bad entry for signal {}", def.name)));
            }
            let mut dims = Vec::new();
            for dim in &def.cohorts {
                let cols = dim
                    .columns
                    .iter()
                    .map(|c| {
                        out.column_index(c)
                            .ok_or_else(|| corrupt(format!("column {c} is not tracked")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let n = d.u64()?;
                let mut by_key = HashMap::default();
                let mut prev = None;
                for _ in 0..n {
                    let k = d.u64()?;
                    if prev.is_some_and(|p| p >= k) {
                        return Err(corrupt("cohorts out of order".into()));
                    }
                    prev = Some(k);
                    let l = Ledger::decode(&mut d)?;
                    if !l.is_defined(def.id) {
                        return Err(corrupt("a cohort's ledger lacks its signal".into()));
                    }
                    by_key.insert(k, l);
                }
                dims.push(DimCohorts {
                    dim: dim.clone(),
                    cols,
                    by_key,
                });
            }
            out.signals.insert(def.id, SignalCohorts { def, dims });
        }
        d.finish()?;
        Ok(out)
    }
}

fn corrupt(reason: String) -> EngineError {
    EngineError::CheckpointSection {
        section: COHORTS_SECTION,
        reason,
    }
}

/// A cached global-ordinal → cohort-ordinal array of one cohort.
#[derive(Debug, Clone)]
struct Inverse {
    global_generation: u64,
    cohort_generation: u64,
    /// Cohort ordinals placed so far.
    cohort_len: usize,
    map: Vec<u32>,
}

type InverseKey = (SignalId, usize, u64);

/// The cohort state as a materializer. See the module docs.
#[derive(Debug)]
pub(crate) struct CohortMaterializer {
    state: RwLock<Cohorts>,
    store: EntityStore,
    inverses: Mutex<Vec<(InverseKey, Arc<Inverse>)>>,
    /// Values staged by transactions prepared but not yet applied, per column.
    pending: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl CohortMaterializer {
    pub(crate) fn new(store: EntityStore) -> CohortMaterializer {
        CohortMaterializer {
            state: RwLock::new(Cohorts::default()),
            store,
            inverses: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` with shared access to the cohort state.
    pub(crate) fn read<R>(&self, global: &Ledger, f: impl FnOnce(&CohortRead<'_>) -> R) -> R {
        let state = self.state.read();
        f(&CohortRead {
            state: &state,
            global,
            inverses: &self.inverses,
        })
    }

    /// Refuses, before anything is logged, ops that would push a tracked column's
    /// dictionary past [`COHORT_VALUES_MAX`] — a users row with a new value, or a new
    /// signal whose columns already hold too many — and stages the new values.
    pub(crate) fn check(&self, ops: &[Op], schema: &Schema) -> Result<(), EngineError> {
        let state = self.state.read();
        let mut staged: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut pending = self.pending.lock();
        let table = schema.table(EntityKind::User).ok();
        for op in ops {
            match op {
                Op::Insert {
                    kind: EntityKind::User,
                    row,
                    ..
                }
                | Op::Upsert {
                    kind: EntityKind::User,
                    row,
                    ..
                } => {
                    for c in &state.columns {
                        let Some(v) = table
                            .and_then(|t| t.column_index(&c.name))
                            .and_then(|p| row.get(p))
                            .and_then(cohort_value_text)
                        else {
                            continue;
                        };
                        if c.codes.contains_key(&v) {
                            continue;
                        }
                        let before = pending.get(&c.name).map_or(0, BTreeSet::len);
                        let s = staged.entry(c.name.clone()).or_default();
                        let known = pending.get(&c.name).is_some_and(|p| p.contains(&v));
                        if !known && !s.contains(&v) {
                            if c.values.len() + before + s.len() >= COHORT_VALUES_MAX {
                                return Err(CoreError::CohortValuesExceeded {
                                    column: c.name.clone(),
                                    value: v,
                                    max: COHORT_VALUES_MAX,
                                }
                                .into());
                            }
                            s.insert(v);
                        }
                    }
                }
                Op::Schema(SchemaChange::CreateSignal(def)) if !def.cohorts.is_empty() => {
                    let fresh: Vec<&str> = def
                        .cohort_columns()
                        .into_iter()
                        .filter(|c| state.column_index(c).is_none())
                        .collect();
                    let (Some(t), false) = (table, fresh.is_empty()) else {
                        continue;
                    };
                    let positions: Vec<Option<usize>> =
                        fresh.iter().map(|c| t.column_index(c)).collect();
                    let mut distinct: Vec<BTreeSet<String>> = vec![BTreeSet::new(); fresh.len()];
                    let snap = self.store.snapshot();
                    for item in snap.scan(EntityKind::User) {
                        let (_, row) = item?;
                        for (i, p) in positions.iter().enumerate() {
                            if let Some(v) = p.and_then(|p| row.get(p)).and_then(cohort_value_text)
                            {
                                distinct[i].insert(v);
                                if distinct[i].len() > COHORT_VALUES_MAX {
                                    return Err(CoreError::CohortValuesExceeded {
                                        column: fresh[i].to_string(),
                                        value: distinct[i]
                                            .iter()
                                            .next_back()
                                            .cloned()
                                            .unwrap_or_default(),
                                        max: COHORT_VALUES_MAX,
                                    }
                                    .into());
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for (c, s) in staged {
            pending.entry(c).or_default().extend(s);
        }
        Ok(())
    }

    /// Refuses an `ALTER SIGNAL … ADD COHORTS` that cannot be built exactly: one that
    /// shares its transaction with events (the backfill reads the history, which would
    /// already hold them), or whose signal's history no longer sums to its state.
    pub(crate) fn check_alter(
        &self,
        ops: &[Op],
        history: &crate::history::History,
        ledger: &Ledger,
        schema: &Schema,
    ) -> Result<(), EngineError> {
        let alters: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Schema(SchemaChange::AlterSignalCohorts { name, .. }) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        if alters.is_empty() {
            return Ok(());
        }
        let bad = |signal: &str, reason: String| -> EngineError {
            CoreError::BadCohorts {
                signal: signal.to_string(),
                reason,
            }
            .into()
        };
        if ops.iter().any(|op| matches!(op, Op::Signals(_))) {
            return Err(bad(
                alters[0],
                "ALTER SIGNAL … ADD COHORTS builds the new cohorts from the event history: \
                 run it in a transaction without events"
                    .into(),
            ));
        }
        let snap = history.snapshot()?;
        for name in alters {
            let def = schema.signal(name)?;
            let (mut sum, mut scale) = (0.0f64, 0.0f64);
            snap.for_each_event(
                name,
                |_, _, w, _| {
                    sum += w;
                    scale += w.abs();
                },
                |_, _| {},
            )?;
            let state: f64 = ledger.columns(def.id).map_or(0.0, |c| {
                c.total
                    .iter()
                    .zip(c.last_ts)
                    .filter(|(_, t)| **t != tidal_ledger::NO_EVENT_TS)
                    .map(|(w, _)| *w)
                    .sum()
            });
            if (sum - state).abs() > 1e-9 * scale.max(1.0) {
                return Err(bad(
                    name,
                    format!(
                        "the event history no longer holds every event of the signal (its \
                         state sums {state}, the history {sum}), so cohort state cannot be \
                         built from it; create a new signal with COHORTS instead"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Builds the dimensions an `ALTER SIGNAL … ADD COHORTS` in `txn` added from the
    /// history (which holds exactly the events before it: the ALTER shares its
    /// transaction with none), filing each event by its user's values now — the log
    /// does not say where users were before the cohort existed. Progress is logged.
    pub(crate) fn backfill(
        &self,
        txn: &CommittedTxn,
        history: &crate::history::History,
    ) -> Result<(), EngineError> {
        for op in &txn.ops {
            let Op::Schema(SchemaChange::AlterSignalCohorts { name, id, add }) = op else {
                continue;
            };
            let snap = history.snapshot()?;
            let mut state = self.state.write();
            let Some(s) = state.signals.get(id) else {
                continue;
            };
            let first = s.dims.len() - add.len().min(s.dims.len());
            let started = std::time::Instant::now();
            let mut last_log = started;
            let Cohorts { users, signals, .. } = &mut *state;
            let Some(s) = signals.get_mut(id) else {
                continue;
            };
            let def = s.def.clone();
            let n = snap.for_each_event(
                name,
                |entity, user, weight, ts| {
                    let Some(codes) = user.and_then(|u| users.get(&EntityId(u))) else {
                        return;
                    };
                    let ev = tidal_core::SignalEvent {
                        signal: def.id,
                        entity: EntityId(entity),
                        user: user.map(EntityId),
                        weight,
                        ts: tidal_core::Timestamp(ts),
                    };
                    for d in &mut s.dims[first..] {
                        let Some(key) = pack(code_of(codes, &d.cols)) else {
                            continue;
                        };
                        d.by_key
                            .entry(key)
                            .or_insert_with(|| {
                                let mut l = Ledger::new();
                                l.define(&def);
                                l
                            })
                            .apply(&ev);
                    }
                },
                |done, of| {
                    if last_log.elapsed().as_secs() >= 2 || done == of {
                        last_log = std::time::Instant::now();
                        let secs = started.elapsed().as_secs_f64();
                        let eta = if done > 0 { secs * (of - done) as f64 / done as f64 } else { 0.0 };
                        tracing::info!(
                            signal = %name,
                            "cohort backfill: {done}/{of} history parts in {secs:.1} s, ETA {eta:.0} s"
                        );
                    }
                },
            )?;
            tracing::info!(
                signal = %name,
                events = n,
                "cohort backfill done in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Builds the window sums a bulk read of `sig`'s cohorts asked for (as
    /// `ReadView::prepare_window_sums` does for the global ledger), so a catalogue-wide
    /// window read does not walk buckets until the next event arrives.
    pub(crate) fn prepare_window_sums(&self, sig: SignalId) {
        let wanted = |c: &Cohorts| {
            c.signals.get(&sig).is_some_and(|s| {
                s.dims
                    .iter()
                    .any(|d| d.by_key.values().any(Ledger::window_sums_wanted))
            })
        };
        if !wanted(&self.state.read()) {
            return;
        }
        let mut state = self.state.write();
        if let Some(s) = state.signals.get_mut(&sig) {
            for d in &mut s.dims {
                for l in d.by_key.values_mut() {
                    if l.window_sums_wanted() {
                        l.enable_wanted_window_sums();
                    }
                }
            }
        }
    }

    /// Forgets staged values (the batch was applied or abandoned).
    pub(crate) fn batch_done(&self) {
        self.pending.lock().clear();
    }
}

impl Materializer for CohortMaterializer {
    fn name(&self) -> &'static str {
        COHORTS_SECTION
    }

    fn apply(&self, txn: &CommittedTxn, schema: &Schema) -> Result<(), EngineError> {
        let mut state = None;
        let mut positions: Option<Vec<Option<usize>>> = None;
        for op in &txn.ops {
            match op {
                Op::Signals(events) => {
                    // Without cohorts the writer never takes this lock for events.
                    if state.is_none() && self.state.read().signals.is_empty() {
                        continue;
                    }
                    let s = state.get_or_insert_with(|| self.state.write());
                    events.iter().for_each(|e| s.apply_event(e));
                }
                Op::Insert {
                    kind: EntityKind::User,
                    id,
                    row,
                }
                | Op::Upsert {
                    kind: EntityKind::User,
                    id,
                    row,
                } => {
                    if state.is_none() && self.state.read().columns.is_empty() {
                        continue;
                    }
                    let s = state.get_or_insert_with(|| self.state.write());
                    if s.columns.is_empty() {
                        continue;
                    }
                    let p = positions.get_or_insert_with(|| s.row_positions(schema));
                    s.set_user(*id, row, p);
                }
                Op::Delete {
                    kind: EntityKind::User,
                    id,
                } => {
                    if state.is_none() && self.state.read().columns.is_empty() {
                        continue;
                    }
                    let s = state.get_or_insert_with(|| self.state.write());
                    s.users.remove(id);
                }
                Op::Schema(SchemaChange::CreateSignal(def)) if !def.cohorts.is_empty() => {
                    let s = state.get_or_insert_with(|| self.state.write());
                    s.signals.insert(
                        def.id,
                        SignalCohorts {
                            def: def.clone(),
                            dims: def
                                .cohorts
                                .iter()
                                .map(|d| DimCohorts {
                                    dim: d.clone(),
                                    cols: Vec::new(),
                                    by_key: HashMap::default(),
                                })
                                .collect(),
                        },
                    );
                    s.retrack(schema, &self.store)?;
                    positions = None;
                }
                Op::Schema(SchemaChange::AlterSignalCohorts { id, add, .. }) => {
                    // Empty dimensions now; `backfill` fills them from the history.
                    let Some(def) = schema.signal_by_id(*id) else {
                        continue;
                    };
                    let s = state.get_or_insert_with(|| self.state.write());
                    let entry = s.signals.entry(*id).or_insert_with(|| SignalCohorts {
                        def: def.clone(),
                        dims: Vec::new(),
                    });
                    entry.def = def.clone();
                    for d in add {
                        entry.dims.push(DimCohorts {
                            dim: d.clone(),
                            cols: Vec::new(),
                            by_key: HashMap::default(),
                        });
                    }
                    // Existing cohort ledgers keep their state; the definition they
                    // hold differs only in its cohorts.
                    s.retrack(schema, &self.store)?;
                    positions = None;
                }
                Op::Schema(SchemaChange::DropSignal { id, .. }) => {
                    let s = state.get_or_insert_with(|| self.state.write());
                    if s.signals.remove(id).is_some() {
                        s.retrack(schema, &self.store)?;
                        positions = None;
                        self.inverses.lock().retain(|(k, _)| k.0 != *id);
                    }
                }
                Op::Schema(SchemaChange::DropTable {
                    kind: EntityKind::User,
                }) => {
                    // Refused while cohorts exist; without them nothing is tracked.
                    let s = state.get_or_insert_with(|| self.state.write());
                    s.users = HashMap::default();
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let mut e = Encoder::new();
        self.state.read().encode(&mut e);
        Ok(e.into_inner())
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), EngineError> {
        let c = Cohorts::decode(bytes)?;
        *self.state.write() = c;
        self.inverses.lock().clear();
        Ok(())
    }
}

/// Shared access to the cohort state next to the global ledger, for vectorized reads.
#[derive(Debug)]
pub struct CohortRead<'a> {
    pub state: &'a Cohorts,
    global: &'a Ledger,
    inverses: &'a Mutex<Vec<(InverseKey, Arc<Inverse>)>>,
}

impl CohortRead<'_> {
    /// The global ledger, locked with the cohorts.
    pub fn global(&self) -> &Ledger {
        self.global
    }

    /// Cohort ordinals for `global_ords` (global ledger ordinals of `kind`, `u32::MAX`
    /// for none) in cohort `(sig, dim, key)`: `u32::MAX` where the entity has no event
    /// in the cohort. One array lookup per id; see the module docs.
    pub fn map_ords(
        &self,
        sig: SignalId,
        dim: usize,
        key: u64,
        kind: EntityKind,
        global_ords: &[u32],
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let Some(cohort) = self.state.ledger(sig, dim, key) else {
            out.resize(global_ords.len(), u32::MAX);
            return;
        };
        let inv = self.inverse((sig, dim, key), cohort, kind);
        out.extend(global_ords.iter().map(|&g| {
            if g == u32::MAX {
                u32::MAX
            } else {
                inv.map.get(g as usize).copied().unwrap_or(u32::MAX)
            }
        }));
    }

    fn inverse(&self, key: InverseKey, cohort: &Ledger, kind: EntityKind) -> Arc<Inverse> {
        let global_generation = self.global.generation();
        let global_len = self.global.entities(kind).len();
        let cohort_ids = cohort.entities(kind);
        let cached = {
            let mut g = self.inverses.lock();
            let pos = g.iter().position(|(k, _)| *k == key);
            pos.map(|p| {
                // Most recently used last.
                let e = g.remove(p);
                let arc = e.1.clone();
                g.push(e);
                arc
            })
        };
        let mut inv = match cached {
            Some(i)
                if i.global_generation == global_generation
                    && i.cohort_generation == cohort.generation()
                    && i.map.len() == global_len
                    && i.cohort_len == cohort_ids.len() =>
            {
                return i;
            }
            Some(i)
                if i.global_generation == global_generation
                    && i.cohort_generation == cohort.generation() =>
            {
                i
            }
            _ => Arc::new(Inverse {
                global_generation,
                cohort_generation: cohort.generation(),
                cohort_len: 0,
                map: Vec::new(),
            }),
        };
        {
            let i = Arc::make_mut(&mut inv);
            i.map.resize(global_len, u32::MAX);
            for (c, id) in cohort_ids.iter().enumerate().skip(i.cohort_len) {
                if let Some(g) = self.global.ordinal(kind, *id)
                    && let Some(slot) = i.map.get_mut(g as usize)
                {
                    *slot = c as u32;
                }
            }
            i.cohort_len = cohort_ids.len();
        }
        let mut g = self.inverses.lock();
        g.retain(|(k, _)| *k != key);
        if g.len() >= COHORT_INVERSE_MAPS_MAX {
            g.remove(0);
        }
        g.push((key, inv.clone()));
        inv
    }
}
