//! The entity store: one fjall keyspace per entity kind, rows keyed by big-endian id.
//!
//! fjall is a materialized view of the WAL like everything else, so its own journal is
//! not fsynced per write. Every write batch also records the LSN it applies (key
//! `applied_lsn` in the `meta` keyspace) atomically with the rows, so after any crash
//! fjall holds a prefix of the log and replay resumes exactly after it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::collections::HashMap;
use tidal_core::codec::{Decoder, Encoder};

use roaring::RoaringTreemap;
use tidal_core::{EntityId, EntityKind, Row, Schema, SignalEvent, Value, decode_row, encode_row};
use tidal_wal::{CommittedTxn, Lsn, Op};

use crate::EngineError;
use crate::preference;
use crate::social::{self, AffinityEntry};

const APPLIED_LSN_KEY: &[u8] = b"applied_lsn";
/// Ids the change log remembers per kind. A reader whose cached rows are older than the
/// log reaches re-reads the whole table instead of patching.
pub const CHANGE_LOG_IDS_MAX: usize = 65_536;

/// Per kind, the ids written by recent commits, with the version each commit produced:
/// lets a reader holding rows derived from an older version patch them instead of
/// re-reading the table.
#[derive(Debug, Default)]
struct ChangeLog {
    /// `(version after the commit, ids it wrote)`, oldest first.
    entries: std::collections::VecDeque<(u64, Vec<EntityId>)>,
    ids: usize,
    /// Changes up to this version are no longer listed.
    forgotten_upto: u64,
}

impl ChangeLog {
    fn push(&mut self, version: u64, ids: Vec<EntityId>) {
        self.ids += ids.len();
        self.entries.push_back((version, ids));
        while self.ids > CHANGE_LOG_IDS_MAX
            && let Some((v, old)) = self.entries.pop_front()
        {
            self.ids -= old.len();
            self.forgotten_upto = v;
        }
    }

    /// Forgets everything up to `version` (a change too large to list).
    fn forget(&mut self, version: u64) {
        self.entries.clear();
        self.ids = 0;
        self.forgotten_upto = version;
    }

    fn since(&self, from: u64, to: u64) -> Option<Vec<EntityId>> {
        if from < self.forgotten_upto || from > to {
            return None;
        }
        let mut out: Vec<EntityId> = self
            .entries
            .iter()
            .filter(|(v, _)| *v > from && *v <= to)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}
/// Memory fjall may use for its block cache.
const STORE_CACHE_BYTES: u64 = 64 << 20;

#[derive(Clone)]
pub(crate) struct EntityStore {
    db: Database,
    meta: Keyspace,
    items: Keyspace,
    users: Keyspace,
    creators: Keyspace,
    /// Preference vectors by user id (see `preference.rs`).
    preferences: Keyspace,
    /// Relationship edges, in-degrees and affinities (see `social.rs`).
    edges: Keyspace,
    edges_in: Keyspace,
    affinities: Keyspace,
    /// Per kind, a sequence lock over the rows: odd while a batch touching the kind is
    /// being committed, bumped to the next even number after. A snapshot taken while
    /// the number stayed even and unchanged shows exactly the rows of that version, so
    /// readers may cache what they derive from it (see [`StoreSnapshot::version`]).
    versions: Arc<[AtomicU64; 3]>,
    changes: Arc<[parking_lot::Mutex<ChangeLog>; 3]>,
}

fn kind_slot(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Item => 0,
        EntityKind::User => 1,
        EntityKind::Creator => 2,
    }
}

impl std::fmt::Debug for EntityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityStore").finish_non_exhaustive()
    }
}

/// A consistent read view of all entity tables.
#[derive(Clone)]
pub struct StoreSnapshot {
    snap: fjall::Snapshot,
    store: EntityStore,
    versions: [Option<u64>; 3],
}

impl std::fmt::Debug for StoreSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSnapshot").finish_non_exhaustive()
    }
}

impl EntityStore {
    pub(crate) fn open(dir: &Path) -> Result<EntityStore, EngineError> {
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(STORE_CACHE_BYTES)
            .open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(EntityStore {
            meta: ks("meta")?,
            items: ks("items")?,
            users: ks("users")?,
            creators: ks("creators")?,
            preferences: ks("preferences")?,
            edges: ks("edges")?,
            edges_in: ks("edges_in")?,
            affinities: ks("affinities")?,
            db,
            versions: Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            changes: Arc::new(Default::default()),
        })
    }

    fn keyspace(&self, kind: EntityKind) -> &Keyspace {
        match kind {
            EntityKind::Item => &self.items,
            EntityKind::User => &self.users,
            EntityKind::Creator => &self.creators,
        }
    }

    /// The LSN of the last transaction whose entity writes are in the store.
    pub(crate) fn applied_lsn(&self) -> Result<Lsn, EngineError> {
        match self.meta.get(APPLIED_LSN_KEY)? {
            None => Ok(0),
            Some(v) => {
                let arr: [u8; 8] =
                    v.as_ref()
                        .try_into()
                        .map_err(|_| EngineError::CheckpointCorrupt {
                            path: "store/meta".into(),
                            reason: "applied_lsn is not 8 bytes".into(),
                        })?;
                Ok(u64::from_le_bytes(arr))
            }
        }
    }

    /// About how many rows `kind` has (for progress reports).
    pub(crate) fn approximate_len(&self, kind: EntityKind) -> usize {
        self.keyspace(kind).approximate_len()
    }

    pub(crate) fn contains(&self, kind: EntityKind, id: EntityId) -> Result<bool, EngineError> {
        Ok(self.keyspace(kind).contains_key(id.to_key())?)
    }

    /// Writes the entity ops of `txn` (if any) and the preference vectors its events
    /// move in one atomic fjall batch, together with the txn's LSN. `schema` is the
    /// schema after the txn's own changes.
    pub(crate) fn apply(&self, txn: &CommittedTxn, schema: &Schema) -> Result<(), EngineError> {
        let mut batch = self.db.batch().durability(None);
        let mut touched = false;
        let mut prefs = PreferenceMoves::new(schema);
        let mut affinity = AffinityMoves::new(schema);
        let track_items = prefs.is_some() || affinity.is_some();
        let mut items = TxnItems::default();
        let mut edges = EdgeChanges::default();
        let mut kinds = [false; 3];
        // Ids written per kind; `None` once a kind's change is too large to list.
        let mut written: [Option<Vec<EntityId>>; 3] = Default::default();
        let mut unlisted = [false; 3];
        let mut note = |kind: EntityKind, id: Option<EntityId>| {
            let k = kind_slot(kind);
            match id {
                Some(id) if !unlisted[k] => written[k].get_or_insert_with(Vec::new).push(id),
                _ => {
                    unlisted[k] = true;
                    written[k] = None;
                }
            }
        };
        let mut enc = Encoder::new();
        for op in &txn.ops {
            match op {
                Op::Signals(events) => {
                    if let Some(p) = prefs.as_mut() {
                        p.apply(self, &items, events)?;
                    }
                    if let Some(a) = affinity.as_mut() {
                        a.apply(self, &items, events)?;
                    }
                }
                Op::Insert { kind, id, row } | Op::Upsert { kind, id, row } => {
                    if *kind == EntityKind::Item && track_items {
                        items.rows.insert(*id, Some(row));
                    }
                    enc.buf.clear();
                    encode_row(row, &mut enc);
                    batch.insert(self.keyspace(*kind), id.to_key(), enc.buf.as_slice());
                    touched = true;
                    kinds[kind_slot(*kind)] = true;
                    note(*kind, Some(*id));
                }
                Op::Delete { kind, id } => {
                    if *kind == EntityKind::Item && track_items {
                        items.rows.insert(*id, None);
                    }
                    batch.remove(self.keyspace(*kind), id.to_key());
                    touched = true;
                    kinds[kind_slot(*kind)] = true;
                    note(*kind, Some(*id));
                }
                Op::Schema(tidal_core::SchemaChange::DropTable { kind }) => {
                    // Dropping a table forgets its rows. Rows are removed key by key in the
                    // same batch so the drop is atomic with the LSN.
                    for kv in self.keyspace(*kind).iter() {
                        batch.remove(self.keyspace(*kind), kv.key()?);
                    }
                    touched = true;
                    kinds[kind_slot(*kind)] = true;
                    note(*kind, None);
                    if *kind == EntityKind::Item {
                        items.rows.clear();
                        items.dropped = true;
                    }
                }
                Op::EdgeInsert {
                    rel,
                    src,
                    dst,
                    created_at,
                } if schema.relationship_by_id(*rel).is_some() => {
                    edges.insert(self, *rel, *src, *dst, *created_at)?;
                }
                Op::EdgeDelete { rel, src, dst } if schema.relationship_by_id(*rel).is_some() => {
                    edges.delete(self, *rel, *src, *dst)?;
                }
                Op::Schema(tidal_core::SchemaChange::DropRelationship { id, .. }) => {
                    // The edges go with the relationship, in the same batch as the LSN.
                    edges.drop_relationship(*id);
                    let lo = social::edge_key(*id, EntityId(0), EntityId(0));
                    let hi = social::edge_key(*id, EntityId(u64::MAX), EntityId(u64::MAX));
                    for kv in self.edges.range(lo..=hi) {
                        batch.remove(&self.edges, kv.key()?);
                    }
                    let lo = social::pair_key(*id, 0);
                    let hi = social::pair_key(*id, u64::MAX);
                    for kv in self.edges_in.range(lo..=hi) {
                        batch.remove(&self.edges_in, kv.key()?);
                    }
                    touched = true;
                }
                _ => {}
            }
        }
        for (key, v) in edges.edges {
            match v {
                Some(ts) => batch.insert(&self.edges, key, ts.to_le_bytes()),
                None => batch.remove(&self.edges, key),
            }
            touched = true;
        }
        for ((rel, dst), delta) in edges.in_degree {
            if delta == 0 {
                continue;
            }
            let key = social::pair_key(rel, dst);
            let old = match self.edges_in.get(key)? {
                Some(v) => social::le_u64(&v, "edges_in")?,
                None => 0,
            };
            let new = old.saturating_add_signed(delta);
            if new == 0 {
                batch.remove(&self.edges_in, key);
            } else {
                batch.insert(&self.edges_in, key, new.to_le_bytes());
            }
            touched = true;
        }
        if let Some(a) = affinity {
            for ((user, creator), entries) in a.pairs {
                batch.insert(
                    &self.affinities,
                    social::pair_key(user, creator),
                    social::encode_affinity(&entries),
                );
                touched = true;
            }
        }
        if let Some(p) = prefs {
            for (user, v) in p.users {
                match v {
                    Some(v) => {
                        batch.insert(&self.preferences, user.to_key(), preference::encode(&v))
                    }
                    None => batch.remove(&self.preferences, user.to_key()),
                }
                touched = true;
            }
        }
        if touched {
            batch.insert(&self.meta, APPLIED_LSN_KEY, txn.lsn.to_le_bytes());
            let bump = || {
                for (i, _) in kinds.iter().enumerate().filter(|(_, t)| **t) {
                    self.versions[i].fetch_add(1, Ordering::SeqCst);
                }
            };
            bump(); // odd: rows of these kinds are changing
            let r = batch.commit();
            // Logged before the version turns even, so a snapshot that sees the new
            // version also finds its ids (a failed commit only lists ids needlessly).
            for (k, ids) in written.into_iter().enumerate() {
                if !kinds[k] {
                    continue;
                }
                let version = self.versions[k].load(Ordering::SeqCst) + 1;
                let mut log = self.changes[k].lock();
                match ids {
                    Some(ids) if ids.len() <= CHANGE_LOG_IDS_MAX => log.push(version, ids),
                    _ => log.forget(version),
                }
            }
            bump(); // even again (also after a failed commit, which poisons the log)
            r?;
        }
        Ok(())
    }

    /// Makes everything written so far durable; returns the LSN now covered on disk.
    pub(crate) fn persist(&self) -> Result<Lsn, EngineError> {
        let lsn = self.applied_lsn()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(lsn)
    }

    /// The embedding of item `id` in the column preferences follow, as the store holds
    /// it now (on the writer thread: after every applied transaction).
    fn live_embedding(&self, id: EntityId, column: usize) -> Result<Option<Vec<f32>>, EngineError> {
        match self.items.get(id.to_key())? {
            Some(v) => Ok(embedding_of(&decode_value(&v)?, column)),
            None => Ok(None),
        }
    }

    /// The `creator_id` (column `column`) of item `id` as the store holds it now.
    fn live_creator(&self, id: EntityId, column: usize) -> Result<Option<u64>, EngineError> {
        match self.items.get(id.to_key())? {
            Some(v) => Ok(creator_of(&decode_value(&v)?, column)),
            None => Ok(None),
        }
    }

    fn live_affinity(&self, user: u64, creator: u64) -> Result<Vec<AffinityEntry>, EngineError> {
        match self.affinities.get(social::pair_key(user, creator))? {
            Some(v) => social::decode_affinity(&v),
            None => Ok(Vec::new()),
        }
    }

    fn live_preference(&self, user: EntityId) -> Result<Option<Vec<f32>>, EngineError> {
        self.preferences
            .get(user.to_key())?
            .map(|v| preference::decode(user, &v))
            .transpose()
    }

    pub(crate) fn snapshot(&self) -> StoreSnapshot {
        let before: [u64; 3] = std::array::from_fn(|i| self.versions[i].load(Ordering::SeqCst));
        let snap = self.db.snapshot();
        let versions = std::array::from_fn(|i| {
            let after = self.versions[i].load(Ordering::SeqCst);
            (before[i] == after && after.is_multiple_of(2)).then_some(after)
        });
        StoreSnapshot {
            snap,
            store: self.clone(),
            versions,
        }
    }
}

/// The moves one transaction makes to preference vectors, staged until its batch.
struct PreferenceMoves {
    /// Rate by signal, for the signals declared with PREFERENCE.
    rates: Vec<(tidal_core::SignalId, f64)>,
    /// Position of the items column preferences follow.
    column: usize,
    /// Vectors moved so far (`None`: cleared).
    users: HashMap<EntityId, Option<Vec<f32>>>,
}

/// Item rows written earlier in the transaction being applied: events read an item's
/// embedding and creator as the transaction has left them so far.
#[derive(Default)]
struct TxnItems<'a> {
    /// `None`: deleted.
    rows: HashMap<EntityId, Option<&'a Row>>,
    /// The transaction dropped the items table before (some of) its events.
    dropped: bool,
}

impl<'a> TxnItems<'a> {
    /// `f` of item `id`'s row as the transaction sees it; `live` when the transaction
    /// has not written it.
    fn read<T>(
        &self,
        id: EntityId,
        f: impl Fn(&Row) -> Option<T>,
        live: impl FnOnce() -> Result<Option<T>, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        match self.rows.get(&id) {
            Some(row) => Ok(row.and_then(f)),
            None if self.dropped => Ok(None),
            None => live(),
        }
    }
}

/// The affinity events of one transaction, staged until its batch.
struct AffinityMoves {
    /// Decay by signal, for the signals declared with AFFINITY.
    signals: Vec<(tidal_core::SignalId, tidal_core::DecaySpec)>,
    /// Position of items' `creator_id`.
    column: usize,
    /// The pairs touched so far, with all their entries.
    pairs: HashMap<(u64, u64), Vec<AffinityEntry>>,
}

impl AffinityMoves {
    /// `None` when no signal declares AFFINITY or items have no integer `creator_id`.
    fn new(schema: &Schema) -> Option<AffinityMoves> {
        let signals: Vec<_> = schema
            .signals()
            .filter(|s| s.affinity.is_some())
            .map(|s| (s.id, s.decay))
            .collect();
        if signals.is_empty() {
            return None;
        }
        let table = schema.table(EntityKind::Item).ok()?;
        let column = table.column_index("creator_id")?;
        if !matches!(
            table.columns[column].ty,
            tidal_core::ColumnType::BigInt | tidal_core::ColumnType::Int
        ) {
            return None;
        }
        Some(AffinityMoves {
            signals,
            column,
            pairs: HashMap::new(),
        })
    }

    fn apply(
        &mut self,
        store: &EntityStore,
        items: &TxnItems<'_>,
        events: &[SignalEvent],
    ) -> Result<(), EngineError> {
        for ev in events {
            let Some(user) = ev.user else { continue };
            let Some(&(_, decay)) = self.signals.iter().find(|(id, _)| *id == ev.signal) else {
                continue;
            };
            let column = self.column;
            let Some(creator) = items.read(
                ev.entity,
                |r| creator_of(r, column),
                || store.live_creator(ev.entity, column),
            )?
            else {
                continue;
            };
            let key = (user.0, creator);
            let entries = match self.pairs.get_mut(&key) {
                Some(e) => e,
                None => {
                    let live = store.live_affinity(user.0, creator)?;
                    self.pairs.entry(key).or_insert(live)
                }
            };
            social::add_event(entries, ev.signal, decay, ev.weight, ev.ts);
        }
        Ok(())
    }
}

/// The edge changes of one transaction: final state per edge and in-degree deltas.
#[derive(Default)]
struct EdgeChanges {
    /// `Some(created_at)`: present; `None`: removed.
    edges: HashMap<[u8; 24], Option<i64>>,
    in_degree: HashMap<(u64, u64), i64>,
}

impl EdgeChanges {
    fn exists(&self, store: &EntityStore, key: &[u8; 24]) -> Result<bool, EngineError> {
        match self.edges.get(key) {
            Some(v) => Ok(v.is_some()),
            None => Ok(store.edges.contains_key(key)?),
        }
    }

    fn insert(
        &mut self,
        store: &EntityStore,
        rel: u64,
        src: EntityId,
        dst: EntityId,
        created_at: tidal_core::Timestamp,
    ) -> Result<(), EngineError> {
        let key = social::edge_key(rel, src, dst);
        // A duplicate edge is the same edge: it keeps its first created_at.
        if !self.exists(store, &key)? {
            self.edges.insert(key, Some(created_at.0));
            *self.in_degree.entry((rel, dst.0)).or_default() += 1;
        }
        Ok(())
    }

    fn delete(
        &mut self,
        store: &EntityStore,
        rel: u64,
        src: EntityId,
        dst: EntityId,
    ) -> Result<(), EngineError> {
        let key = social::edge_key(rel, src, dst);
        if self.exists(store, &key)? {
            self.edges.insert(key, None);
            *self.in_degree.entry((rel, dst.0)).or_default() -= 1;
        }
        Ok(())
    }

    /// Forgets what this transaction staged for a relationship it then dropped.
    fn drop_relationship(&mut self, rel: u64) {
        self.edges
            .retain(|k, _| social::key_u64(k, 0, "edges").ok() != Some(rel));
        self.in_degree.retain(|(r, _), _| *r != rel);
    }
}

impl PreferenceMoves {
    /// `None` when no signal of `schema` moves preferences (or items have no vector
    /// column), so transactions pay nothing for the feature they do not use.
    fn new(schema: &Schema) -> Option<PreferenceMoves> {
        let rates: Vec<_> = schema
            .signals()
            .filter_map(|s| s.preference.map(|lr| (s.id, lr)))
            .collect();
        if rates.is_empty() {
            return None;
        }
        let (column, _) = schema.table(EntityKind::Item).ok()?.preference_column()?;
        Some(PreferenceMoves {
            rates,
            column,
            users: HashMap::new(),
        })
    }

    fn apply(
        &mut self,
        store: &EntityStore,
        items: &TxnItems<'_>,
        events: &[SignalEvent],
    ) -> Result<(), EngineError> {
        for ev in events {
            let Some(user) = ev.user else { continue };
            let Some(&(_, lr)) = self.rates.iter().find(|(id, _)| *id == ev.signal) else {
                continue;
            };
            let step = lr * ev.weight;
            let column = self.column;
            let e = items.read(
                ev.entity,
                |r| embedding_of(r, column),
                || store.live_embedding(ev.entity, column),
            )?;
            let Some(e) = e.filter(|e| preference::moves(e, step)) else {
                continue;
            };
            let p = match self.users.get(&user) {
                Some(p) => p.clone(),
                None => store.live_preference(user)?,
            };
            let next = preference::moved(p.as_deref(), &e, step);
            self.users.insert(user, next);
        }
        Ok(())
    }
}

fn creator_of(row: &Row, column: usize) -> Option<u64> {
    match row.get(column) {
        Some(Value::Int(c)) => u64::try_from(*c).ok(),
        _ => None,
    }
}

fn embedding_of(row: &Row, column: usize) -> Option<Vec<f32>> {
    match row.get(column) {
        Some(Value::Vector(v)) => Some(v.clone()),
        _ => None,
    }
}

fn decode_value(v: &[u8]) -> Result<Row, EngineError> {
    let mut d = Decoder::new(v);
    let row = decode_row(&mut d)?;
    d.finish()?;
    Ok(row)
}

impl StoreSnapshot {
    /// A number that identifies the rows of `kind` this snapshot sees: two snapshots
    /// with the same `Some` version see identical rows of that kind, so anything
    /// derived from one may be reused for the other. `None` when a write to the kind
    /// raced with taking the snapshot.
    pub fn version(&self, kind: EntityKind) -> Option<u64> {
        self.versions[kind_slot(kind)]
    }

    /// The ids of `kind` written (inserted, updated or deleted) after version `from` up
    /// to this snapshot's version, sorted; `None` when this snapshot has no version or
    /// the change log no longer reaches back to `from` (then re-read everything).
    pub fn changed_since(&self, kind: EntityKind, from: u64) -> Option<Vec<EntityId>> {
        let to = self.version(kind)?;
        self.store.changes[kind_slot(kind)].lock().since(from, to)
    }

    /// `user`'s preference vector, `None` before any move (SQL.md §7).
    pub fn preference(&self, user: EntityId) -> Result<Option<Vec<f32>>, EngineError> {
        self.snap
            .get(&self.store.preferences, user.to_key())?
            .map(|v| preference::decode(user, &v))
            .transpose()
    }

    /// The targets of `src`'s edges in relationship `rel` (its id).
    pub fn out_edges(&self, rel: u64, src: EntityId) -> Result<RoaringTreemap, EngineError> {
        let mut set = RoaringTreemap::new();
        for item in self.edges(rel, src, src) {
            set.insert(item?.1.0);
        }
        Ok(set)
    }

    /// Edges `(src, dst, created_at)` of relationship `rel` with `lo ≤ src ≤ hi`, in
    /// (src, dst) order.
    pub fn edges(
        &self,
        rel: u64,
        lo: EntityId,
        hi: EntityId,
    ) -> impl Iterator<Item = Result<(EntityId, EntityId, tidal_core::Timestamp), EngineError>> + '_
    {
        let from = social::edge_key(rel, lo, EntityId(0));
        let to = social::edge_key(rel, hi, EntityId(u64::MAX));
        self.snap.range(&self.store.edges, from..=to).map(|kv| {
            let (k, v) = kv.into_inner()?;
            let src = social::key_u64(&k, 8, "edges")?;
            let dst = social::key_u64(&k, 16, "edges")?;
            let ts = social::le_u64(&v, "edges")? as i64;
            Ok((EntityId(src), EntityId(dst), tidal_core::Timestamp(ts)))
        })
    }

    /// How many edges of relationship `rel` point at `dst` ("followers").
    pub fn in_degree(&self, rel: u64, dst: EntityId) -> Result<u64, EngineError> {
        match self
            .snap
            .get(&self.store.edges_in, social::pair_key(rel, dst.0))?
        {
            Some(v) => social::le_u64(&v, "edges_in"),
            None => Ok(0),
        }
    }

    /// The stored affinity state of one (user, creator) pair (empty without events).
    pub fn affinity_entries(
        &self,
        user: EntityId,
        creator: EntityId,
    ) -> Result<Vec<AffinityEntry>, EngineError> {
        match self
            .snap
            .get(&self.store.affinities, social::pair_key(user.0, creator.0))?
        {
            Some(v) => social::decode_affinity(&v),
            None => Ok(Vec::new()),
        }
    }

    /// Every pair with affinity state and users `lo ≤ user ≤ hi`, in (user, creator)
    /// order.
    pub fn affinity_pairs(
        &self,
        lo: EntityId,
        hi: EntityId,
    ) -> impl Iterator<Item = Result<(EntityId, EntityId, Vec<AffinityEntry>), EngineError>> + '_
    {
        let from = social::pair_key(lo.0, 0);
        let to = social::pair_key(hi.0, u64::MAX);
        self.snap
            .range(&self.store.affinities, from..=to)
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                let user = social::key_u64(&k, 0, "affinities")?;
                let creator = social::key_u64(&k, 8, "affinities")?;
                Ok((
                    EntityId(user),
                    EntityId(creator),
                    social::decode_affinity(&v)?,
                ))
            })
    }

    /// One row by id.
    pub fn get(&self, kind: EntityKind, id: EntityId) -> Result<Option<Row>, EngineError> {
        self.snap
            .get(self.store.keyspace(kind), id.to_key())?
            .map(|v| decode_value(&v))
            .transpose()
    }

    /// Rows with `lo ≤ id ≤ hi`, in id order.
    pub fn range(
        &self,
        kind: EntityKind,
        lo: EntityId,
        hi: EntityId,
    ) -> impl Iterator<Item = Result<(EntityId, Row), EngineError>> + '_ {
        self.snap
            .range(self.store.keyspace(kind), lo.to_key()..=hi.to_key())
            .map(move |kv| {
                let (k, v) = kv.into_inner()?;
                // `ok_or_else`: this runs per row; the error must cost nothing when unused.
                let id = EntityId::from_key(&k).ok_or_else(|| EngineError::CheckpointCorrupt {
                    path: format!("store/{}", kind.table_name()),
                    reason: "key is not 8 bytes".into(),
                })?;
                Ok((id, decode_value(&v)?))
            })
    }

    /// Every row in id order.
    pub fn scan(
        &self,
        kind: EntityKind,
    ) -> impl Iterator<Item = Result<(EntityId, Row), EngineError>> + '_ {
        self.range(kind, EntityId(0), EntityId(u64::MAX))
    }
}

impl EntityStore {
    /// Records that every transaction up to `lsn` is reflected in the store (called on
    /// the writer thread at a checkpoint, when nothing is in flight). Never moves back.
    pub(crate) fn mark_applied(&self, lsn: Lsn) -> Result<(), EngineError> {
        if lsn > self.applied_lsn()? {
            self.meta.insert(APPLIED_LSN_KEY, lsn.to_le_bytes())?;
        }
        Ok(())
    }
}
