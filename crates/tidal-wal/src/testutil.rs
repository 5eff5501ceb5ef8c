//! Test helpers: a model applier that records what it is given, and event builders.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tidal_core::{EntityId, EntityKind, ManualClock, SignalEvent, SignalId, Timestamp, Value};

use crate::{Applier, CommittedTxn, Lsn, Op, Wal, WalOptions};

/// 2023-11-14 22:13:20 UTC.
pub(crate) const T0: i64 = 1_700_000_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TestError {
    #[error("duplicate key {0}")]
    DuplicateKey(u64),
    #[error("apply refused entity {0}")]
    ApplyRefused(u64),
}

/// Every transaction applied, shared with the test.
pub(crate) type Applied = Arc<Mutex<Vec<CommittedTxn>>>;

/// A small model of the engine: `Insert` must not hit an existing or pending id, and
/// applied transactions are recorded.
#[derive(Debug, Default)]
pub(crate) struct TestApplier {
    pub applied: Applied,
    keys: BTreeSet<u64>,
    pending: BTreeSet<u64>,
    applied_through: Lsn,
    /// `apply` fails for a transaction deleting this id.
    pub fail_apply_on_delete: Option<u64>,
    pub batches_done: usize,
}

impl TestApplier {
    pub(crate) fn new() -> (TestApplier, Applied) {
        let a = TestApplier::default();
        let applied = Arc::clone(&a.applied);
        (a, applied)
    }
}

impl Applier for TestApplier {
    type Error = TestError;

    fn prepare(&mut self, ops: &[Op]) -> Result<(), TestError> {
        let mut new = BTreeSet::new();
        for op in ops {
            if let Op::Insert { id, .. } = op
                && (self.keys.contains(&id.0) || self.pending.contains(&id.0) || !new.insert(id.0))
            {
                return Err(TestError::DuplicateKey(id.0));
            }
        }
        self.pending.extend(new);
        Ok(())
    }

    fn apply(&mut self, txn: &CommittedTxn) -> Result<(), TestError> {
        if txn.lsn <= self.applied_through {
            return Ok(());
        }
        for op in &txn.ops {
            match op {
                Op::Insert { id, .. } => {
                    self.keys.insert(id.0);
                }
                Op::Delete { id, .. } if Some(id.0) == self.fail_apply_on_delete => {
                    return Err(TestError::ApplyRefused(id.0));
                }
                Op::Delete { id, .. } => {
                    self.keys.remove(&id.0);
                }
                _ => {}
            }
        }
        self.applied_through = txn.lsn;
        self.applied.lock().unwrap().push(txn.clone());
        Ok(())
    }

    fn batch_done(&mut self) {
        self.pending.clear();
        self.batches_done += 1;
    }
}

pub(crate) fn clock() -> ManualClock {
    ManualClock::new(Timestamp(T0))
}

pub(crate) fn options(dir: &Path, clock: &ManualClock) -> WalOptions {
    WalOptions::new(dir, Arc::new(clock.clone()))
}

/// Opens a log with a fresh [`TestApplier`].
pub(crate) fn open(opts: WalOptions) -> (Wal<TestApplier>, Applied) {
    let (a, applied) = TestApplier::new();
    (Wal::open(opts, a).unwrap(), applied)
}

/// Opens a log and returns what recovery replayed, or the error.
pub(crate) fn replay(opts: WalOptions) -> Result<Vec<CommittedTxn>, crate::WalError> {
    let (a, applied) = TestApplier::new();
    let wal = Wal::open(opts, a)?;
    wal.close()?;
    Ok(applied.lock().unwrap().clone())
}

pub(crate) fn ev(entity: u64, ts: i64) -> SignalEvent {
    SignalEvent {
        signal: SignalId(1),
        entity: EntityId(entity),
        user: Some(EntityId(1_000 + entity % 7)),
        weight: 1.0,
        ts: Timestamp(ts),
    }
}

pub(crate) fn signals(events: &[SignalEvent]) -> Op {
    Op::Signals(events.to_vec())
}

pub(crate) fn insert(id: u64) -> Op {
    Op::Insert {
        kind: EntityKind::Item,
        id: EntityId(id),
        row: vec![Value::Int(id as i64), Value::Text(format!("item {id}"))],
    }
}

/// A transaction of a few ops, distinct for each `i`.
pub(crate) fn txn(i: u64) -> Vec<Op> {
    vec![
        signals(&[ev(i, T0 - 1), ev(i + 1, T0 - 2), ev(i + 2, T0 - 3)]),
        Op::Upsert {
            kind: EntityKind::User,
            id: EntityId(i),
            row: vec![Value::Int(i as i64)],
        },
    ]
}

/// Segment files of `dir` in order.
pub(crate) fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    crate::segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}
