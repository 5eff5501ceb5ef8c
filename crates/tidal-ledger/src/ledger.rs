//! [`Ledger`]: the signal ledger as the engine sees it.

use std::collections::HashMap;
use std::fmt;

use tidal_core::codec::{Decoder, Encoder};
use tidal_core::{
    CoreError, DecaySpec, EntityId, EntityKind, SignalDef, SignalEvent, SignalId, Timestamp, Window,
};

use crate::memory::hash_map_bytes;
use crate::ordinals::{IdBuildHasher, OrdinalMap};
use crate::signal::{NO_EVENT_TS, SignalState, WindowRead};

/// Per (entity, signal): a decayed score, a total and the newest event time (the hot
/// tier), and bucketed weights for the declared windows (the warm tier). See the crate
/// documentation for the read semantics and their precision.
#[derive(Clone, Default)]
pub struct Ledger {
    pub(crate) signals: HashMap<u32, SignalState, IdBuildHasher>,
    /// Indexed by [`kind_index`].
    pub(crate) ordinals: [OrdinalMap; 3],
    generation: u64,
}

#[inline]
pub(crate) fn kind_index(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Item => 0,
        EntityKind::User => 1,
        EntityKind::Creator => 2,
    }
}

/// Read-only views of one signal's hot columns, indexed by entity ordinal (see
/// [`Ledger::ordinal`] and [`Ledger::entities`]). Ordinals at or beyond the columns'
/// length, and ordinals whose `last_ts` is [`NO_EVENT_TS`], have no event.
///
/// For an ordinal with events, `decay(at)` for `at ≥ last_ts` is
/// `score · decay.factor(at − score_ts)`: one multiply-`exp` per entity, which is what
/// a vectorized pass over a whole catalogue computes.
#[derive(Debug, Clone, Copy)]
pub struct HotColumns<'a> {
    pub kind: EntityKind,
    pub decay: DecaySpec,
    /// Decayed score as of `score_ts` (for `DECAY NONE`: the sum of weights).
    pub score: &'a [f64],
    /// The time `score` is expressed at. It always equals `last_ts` (the score moves to
    /// each newer event), so both names view the same column.
    pub score_ts: &'a [i64],
    /// Σ of all weights.
    pub total: &'a [f64],
    /// Newest event time in microseconds, [`NO_EVENT_TS`] for none.
    pub last_ts: &'a [i64],
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("signals", &self.signals.len())
            .field(
                "entities",
                &self.ordinals.iter().map(OrdinalMap::len).sum::<usize>(),
            )
            .field("active_pairs", &self.active_pairs())
            .field("generation", &self.generation)
            .finish()
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub(crate) fn from_parts(
        signals: HashMap<u32, SignalState, IdBuildHasher>,
        ordinals: [OrdinalMap; 3],
    ) -> Ledger {
        Ledger {
            signals,
            ordinals,
            generation: 0,
        }
    }

    /// Registers a signal. Defining an id again with the same kind, decay and bucket
    /// layout (as after a restore) keeps its state and takes the new definition's name;
    /// any other change starts the signal over, empty.
    pub fn define(&mut self, def: &SignalDef) {
        if let Some(s) = self.signals.get_mut(&def.id.0) {
            let fresh = SignalState::new(def.clone());
            if s.def.kind == def.kind && s.def.decay == def.decay && s.layout == fresh.layout {
                s.def = def.clone();
                // The windows may differ within the same layout.
                s.window_sums = fresh.window_sums;
                s.rebuild_window_sums();
                return;
            }
            self.drop_signal(def.id);
        }
        self.signals.insert(def.id.0, SignalState::new(def.clone()));
    }

    /// Forgets a signal and frees its memory, including the ordinals of entities that
    /// no remaining signal of the kind has events for (which renumbers the kind's
    /// ordinals and bumps [`Ledger::generation`]).
    pub fn drop_signal(&mut self, id: SignalId) {
        let Some(s) = self.signals.remove(&id.0) else {
            return;
        };
        self.compact_kind(s.def.kind);
        self.signals.shrink_to_fit();
    }

    /// Renumbers a kind's ordinals densely over the entities that still have events.
    fn compact_kind(&mut self, kind: EntityKind) {
        let k = kind_index(kind);
        let mut alive = vec![false; self.ordinals[k].len()];
        for s in self.signals.values().filter(|s| s.def.kind == kind) {
            for (a, &t) in alive.iter_mut().zip(&s.last_ts) {
                *a |= t != NO_EVENT_TS;
            }
        }
        if alive.iter().all(|&a| a) {
            return;
        }
        let remap = self.ordinals[k].retain(&alive);
        for s in self.signals.values_mut().filter(|s| s.def.kind == kind) {
            s.remap(&remap);
        }
        self.generation += 1;
    }

    /// Whether `id` is a defined signal.
    pub fn is_defined(&self, id: SignalId) -> bool {
        self.signals.contains_key(&id.0)
    }

    /// Records one event, in any order (backdated events are accounted at their own
    /// time). Events of an unknown signal and non-finite weights are ignored.
    #[inline]
    pub fn apply(&mut self, ev: &SignalEvent) {
        if !ev.weight.is_finite() {
            return;
        }
        let Some(s) = self.signals.get_mut(&ev.signal.0) else {
            return;
        };
        let Some(ord) = self.ordinals[kind_index(s.def.kind)].get_or_insert(ev.entity) else {
            return;
        };
        s.apply(ord, ev.ts.0, ev.weight);
    }

    /// [`Ledger::apply`] for each event in order.
    pub fn apply_all(&mut self, events: &[SignalEvent]) {
        for ev in events {
            self.apply(ev);
        }
    }

    /// The signal's state and the entity's ordinal, if it has events for it.
    #[inline]
    fn pair(&self, sig: SignalId, e: EntityId) -> Option<(&SignalState, usize)> {
        let s = self.signals.get(&sig.0)?;
        pair_in(self, s, e).map(|i| (s, i))
    }

    /// Σ wᵢ · 2^(−(at − tsᵢ)/half_life) over events with tsᵢ ≤ at (Σ wᵢ for `DECAY NONE`).
    pub fn decay(&self, sig: SignalId, e: EntityId, at: Timestamp) -> f64 {
        self.pair(sig, e).map_or(0.0, |(s, i)| s.decay(i, at.0))
    }

    /// Σ wᵢ over events with tsᵢ in (at − window, at], read from buckets (see the crate
    /// docs); `'all'` is Σ wᵢ over tsᵢ ≤ at. An undeclared finite window is answered
    /// from the tier of its bucket width if the signal has one, else 0.
    pub fn window_count(&self, sig: SignalId, e: EntityId, window: Window, at: Timestamp) -> f64 {
        self.pair(sig, e)
            .map_or(0.0, |(s, i)| s.window_count(i, window, at.0))
    }

    /// `window_count` per hour of window; 0 for `'all'`.
    pub fn velocity(&self, sig: SignalId, e: EntityId, window: Window, at: Timestamp) -> f64 {
        let Some(hours) = window.hours() else {
            return 0.0;
        };
        self.window_count(sig, e, window, at) / hours
    }

    /// Velocity over (at − W, at] minus velocity over (at − 2W, at − W]; 0 for `'all'`.
    pub fn acceleration(&self, sig: SignalId, e: EntityId, window: Window, at: Timestamp) -> f64 {
        self.pair(sig, e)
            .map_or(0.0, |(s, i)| s.acceleration(i, window, at.0))
    }

    /// Σ wᵢ over all events.
    pub fn total(&self, sig: SignalId, e: EntityId) -> f64 {
        self.pair(sig, e).map_or(0.0, |(s, i)| s.total[i])
    }

    /// The newest event time.
    pub fn last(&self, sig: SignalId, e: EntityId) -> Option<Timestamp> {
        self.pair(sig, e).map(|(s, i)| Timestamp(s.last_ts[i]))
    }

    /// Ordinals of `ids` in `kind` (`u32::MAX` for an entity without events), for the
    /// `*_ords` readers: a caller that reads several signals of one kind, or the same ids
    /// again while [`Ledger::generation`] is unchanged, looks each id up once.
    pub fn ordinals_of(&self, kind: EntityKind, ids: &[EntityId], out: &mut Vec<u32>) {
        let map = &self.ordinals[kind_index(kind)];
        out.clear();
        out.extend(ids.iter().map(|&e| map.get(e).unwrap_or(u32::MAX)));
    }

    /// Like the `*_batch` readers, but over ordinals from [`Ledger::ordinals_of`] (or
    /// [`Ledger::entities`]) of the signal's kind; `u32::MAX` and ordinals past the end
    /// read `zero`.
    fn gather_ords<T: Copy>(
        &self,
        sig: SignalId,
        ords: &[u32],
        out: &mut Vec<T>,
        zero: T,
        f: impl Fn(&SignalState, usize) -> T,
    ) {
        out.clear();
        let Some(s) = self.signals.get(&sig.0) else {
            out.resize(ords.len(), zero);
            return;
        };
        out.reserve(ords.len());
        out.extend(ords.iter().map(|&o| {
            let i = o as usize;
            if s.is_active(i) { f(s, i) } else { zero }
        }));
    }

    /// [`Ledger::decay_batch`] over ordinals.
    pub fn decay_ords(&self, sig: SignalId, ords: &[u32], at: Timestamp, out: &mut Vec<f64>) {
        self.gather_ords(sig, ords, out, 0.0, |s, i| s.decay(i, at.0));
    }

    /// [`Ledger::window_count_batch`] over ordinals.
    pub fn window_count_ords(
        &self,
        sig: SignalId,
        ords: &[u32],
        window: Window,
        at: Timestamp,
        out: &mut Vec<f64>,
    ) {
        match self.signals.get(&sig.0) {
            Some(s) => s.gather_window(s.window_read(window, at.0), ords, 1.0, out),
            None => {
                out.clear();
                out.resize(ords.len(), 0.0);
            }
        }
    }

    /// [`Ledger::velocity_batch`] over ordinals.
    pub fn velocity_ords(
        &self,
        sig: SignalId,
        ords: &[u32],
        window: Window,
        at: Timestamp,
        out: &mut Vec<f64>,
    ) {
        let Some(hours) = window.hours() else {
            out.clear();
            out.resize(ords.len(), 0.0);
            return;
        };
        match self.signals.get(&sig.0) {
            Some(s) => s.gather_window(s.window_read(window, at.0), ords, hours, out),
            None => {
                out.clear();
                out.resize(ords.len(), 0.0);
            }
        }
    }

    /// [`Ledger::acceleration_batch`] over ordinals.
    pub fn acceleration_ords(
        &self,
        sig: SignalId,
        ords: &[u32],
        window: Window,
        at: Timestamp,
        out: &mut Vec<f64>,
    ) {
        let (r, hours) = (self.window_read(sig, window, at), window.hours());
        self.gather_ords(sig, ords, out, 0.0, |s, i| {
            hours.map_or(0.0, |h| s.acceleration_with(i, r, h))
        });
    }

    /// The entity-independent part of a window read of `sig` (any value for an unknown
    /// signal: `gather_ords` then reads nothing).
    fn window_read(&self, sig: SignalId, window: Window, at: Timestamp) -> WindowRead {
        self.signals
            .get(&sig.0)
            .map_or(WindowRead::Unserved, |s| s.window_read(window, at.0))
    }

    /// [`Ledger::total_batch`] over ordinals.
    pub fn total_ords(&self, sig: SignalId, ords: &[u32], out: &mut Vec<f64>) {
        self.gather_ords(sig, ords, out, 0.0, |s, i| s.total[i]);
    }

    /// [`Ledger::last_batch`] over ordinals.
    pub fn last_ords(&self, sig: SignalId, ords: &[u32], out: &mut Vec<Option<Timestamp>>) {
        self.gather_ords(sig, ords, out, None, |s, i| Some(Timestamp(s.last_ts[i])));
    }

    /// Ordinals of `ids` in the kind of `sig` (all `u32::MAX` for an unknown signal).
    fn ords_for(&self, sig: SignalId, ids: &[EntityId]) -> Vec<u32> {
        let mut ords = Vec::with_capacity(ids.len());
        match self.signals.get(&sig.0) {
            Some(s) => self.ordinals_of(s.def.kind, ids, &mut ords),
            None => ords.resize(ids.len(), u32::MAX),
        }
        ords
    }

    /// [`Ledger::decay`] for many entities: `out[j]` is the value for `ids[j]`.
    pub fn decay_batch(&self, sig: SignalId, ids: &[EntityId], at: Timestamp, out: &mut Vec<f64>) {
        self.decay_ords(sig, &self.ords_for(sig, ids), at, out);
    }

    /// [`Ledger::window_count`] for many entities.
    pub fn window_count_batch(
        &self,
        sig: SignalId,
        ids: &[EntityId],
        window: Window,
        at: Timestamp,
        out: &mut Vec<f64>,
    ) {
        self.window_count_ords(sig, &self.ords_for(sig, ids), window, at, out);
    }

    /// [`Ledger::velocity`] for many entities.
    pub fn velocity_batch(
        &self,
        sig: SignalId,
        ids: &[EntityId],
        window: Window,
        at: Timestamp,
        out: &mut Vec<f64>,
    ) {
        self.velocity_ords(sig, &self.ords_for(sig, ids), window, at, out);
    }

    /// [`Ledger::acceleration`] for many entities.
    pub fn acceleration_batch(
        &self,
        sig: SignalId,
        ids: &[EntityId],
        window: Window,
        at: Timestamp,
        out: &mut Vec<f64>,
    ) {
        self.acceleration_ords(sig, &self.ords_for(sig, ids), window, at, out);
    }

    /// [`Ledger::total`] for many entities.
    pub fn total_batch(&self, sig: SignalId, ids: &[EntityId], out: &mut Vec<f64>) {
        self.total_ords(sig, &self.ords_for(sig, ids), out);
    }

    /// [`Ledger::last`] for many entities.
    pub fn last_batch(&self, sig: SignalId, ids: &[EntityId], out: &mut Vec<Option<Timestamp>>) {
        self.last_ords(sig, &self.ords_for(sig, ids), out);
    }

    /// `decay` at `at` for every ordinal of the signal's kind: `out[ord]`, with
    /// `out.len() == entities(kind).len()` (0 for ordinals without events). Empty for
    /// an unknown signal.
    pub fn decay_dense(&self, sig: SignalId, at: Timestamp, out: &mut Vec<f64>) {
        out.clear();
        let Some(s) = self.signals.get(&sig.0) else {
            return;
        };
        let n = self.ordinals[kind_index(s.def.kind)].len();
        out.reserve(n);
        out.extend((0..n).map(|i| {
            if s.is_active(i) {
                s.decay(i, at.0)
            } else {
                0.0
            }
        }));
    }

    /// The entity's ordinal within its kind, assigned at its first event of any signal
    /// of that kind. Ordinals are dense and stable until [`Ledger::generation`] changes
    /// (only `drop_signal` and `define` of a changed signal renumber them).
    #[inline]
    pub fn ordinal(&self, kind: EntityKind, id: EntityId) -> Option<u32> {
        self.ordinals[kind_index(kind)].get(id)
    }

    /// Entity ids of a kind in ordinal order.
    pub fn entities(&self, kind: EntityKind) -> &[EntityId] {
        self.ordinals[kind_index(kind)].ids()
    }

    /// Counts ordinal renumberings; ordinals cached by a reader stay valid while it is
    /// unchanged.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The kind a signal is about.
    pub fn signal_kind(&self, sig: SignalId) -> Option<EntityKind> {
        self.signals.get(&sig.0).map(|s| s.def.kind)
    }

    /// The signal's hot columns, ordinal-indexed.
    pub fn columns(&self, sig: SignalId) -> Option<HotColumns<'_>> {
        let s = self.signals.get(&sig.0)?;
        Some(HotColumns {
            kind: s.def.kind,
            decay: s.def.decay,
            score: &s.score,
            score_ts: &s.last_ts,
            total: &s.total,
            last_ts: &s.last_ts,
        })
    }

    /// Frees warm buckets that no read at an `at ≥ horizon` looks at: those older than
    /// twice the largest window of their tier before `horizon`. Pairs left without
    /// buckets free their warm storage entirely, so memory follows recent activity even
    /// for entities that went quiet. Reads at `at < horizon` lose precision afterwards
    /// (window sums and `decay`/`'all'` before the newest event count only what remains).
    pub fn expire(&mut self, horizon: Timestamp) {
        for s in self.signals.values_mut() {
            s.expire(horizon.0);
        }
    }

    /// Whether a bulk window read asked for window sums a signal does not keep yet.
    pub fn window_sums_wanted(&self) -> bool {
        self.signals.values().any(|s| s.sums_wanted.get())
    }

    /// Builds (and from now on maintains) the window sums bulk reads asked for: one pass
    /// over the signal's active pairs. See `window_sums.rs`.
    pub fn enable_wanted_window_sums(&mut self) {
        for s in self.signals.values_mut() {
            if s.sums_wanted.get() {
                s.enable_window_sums();
            }
        }
    }

    /// Encodes the whole ledger for a checkpoint (see `checkpoint.rs` for the format).
    pub fn encode(&self, e: &mut Encoder) {
        crate::checkpoint::encode(self, e);
    }

    /// Decodes a ledger written by [`Ledger::encode`]. Every count and value is checked
    /// and the checksum verified; bad bytes give [`CoreError::Decode`], never a panic.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Ledger, CoreError> {
        crate::checkpoint::decode(d)
    }

    /// An estimate of the heap and inline bytes the ledger holds, counting capacities,
    /// hash-map buckets and a per-allocation overhead. Walks every warm pair: O(pairs).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Ledger>()
            + hash_map_bytes(&self.signals)
            + self
                .ordinals
                .iter()
                .map(OrdinalMap::memory_bytes)
                .sum::<usize>()
            + self
                .signals
                .values()
                .map(SignalState::memory_bytes)
                .sum::<usize>()
    }

    /// Number of (entity, signal) pairs with at least one event.
    pub fn active_pairs(&self) -> usize {
        self.signals.values().map(|s| s.active).sum()
    }
}

#[inline]
fn pair_in(l: &Ledger, s: &SignalState, e: EntityId) -> Option<usize> {
    let i = l.ordinals[kind_index(s.def.kind)].get(e)? as usize;
    s.is_active(i).then_some(i)
}
