//! Engine scenarios that need the whole engine but no child process.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tidal_core::{
    ColumnDef, ColumnType, DecaySpec, EntityId, EntityKind, ManualClock, Mark, SchemaChange,
    SignalDef, SignalId, TableDef, Timestamp, Value, Window,
};

use crate::{Engine, EngineConfig, EngineError};

const MINUTE_US: i64 = 60_000_000;

fn t0() -> Timestamp {
    Timestamp::parse("2026-11-25 10:00:00").unwrap()
}

fn config(dir: &std::path::Path, clock: &ManualClock) -> EngineConfig {
    let mut c = EngineConfig::new(dir).with_clock(Arc::new(clock.clone()));
    c.checkpoint_wal_bytes = None;
    c.wal_segment_bytes = 16 << 10;
    c
}

fn open(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    Engine::open(config(dir, clock)).unwrap()
}

fn setup(engine: &Engine) {
    let mut txn = engine.begin();
    let w = [Window::parse("1h").unwrap(), Window::All];
    let def = SignalDef::new(
        "view",
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        w,
    );
    txn.schema_change(SchemaChange::CreateSignal(def.unwrap()))
        .unwrap();
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("title", ColumnType::Text),
    ];
    let table = TableDef::new(EntityKind::Item, cols, vec![]).unwrap();
    txn.schema_change(SchemaChange::CreateTable(table)).unwrap();
    txn.commit().unwrap();
}

fn row(id: i64, title: &str) -> Vec<Value> {
    vec![Value::Int(id), Value::Text(title.into())]
}

#[test]
fn exact_duplicates_are_counted_once_even_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let ts = Some(t0());
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), Some(EntityId(7)), 1.0, ts)
        .unwrap();
    txn.signal("view", EntityId(1), Some(EntityId(7)), 1.0, ts)
        .unwrap();
    txn.signal("view", EntityId(1), Some(EntityId(8)), 1.0, ts)
        .unwrap();
    let out = txn.commit().unwrap();
    assert_eq!((out.events_accepted, out.events_duplicate), (2, 1));
    drop(engine);

    clock.advance_micros(30_000_000);
    let engine = open(dir.path(), &clock);
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), Some(EntityId(7)), 1.0, ts)
        .unwrap();
    assert_eq!(
        txn.commit().unwrap().events_duplicate,
        1,
        "dedup forgot across restart"
    );
    assert_eq!(engine.read().total("view", EntityId(1)).unwrap(), 2.0);

    // Past the 60 s window the same event counts again.
    clock.advance_micros(61_000_000);
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), Some(EntityId(7)), 1.0, ts)
        .unwrap();
    assert_eq!(txn.commit().unwrap().events_accepted, 1);
    assert_eq!(engine.read().total("view", EntityId(1)).unwrap(), 3.0);
}

#[test]
fn concurrent_inserts_of_one_id_admit_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = Arc::new(open(dir.path(), &clock));
    setup(&engine);
    for id in 0..20 {
        let results: Vec<Result<_, EngineError>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6)
                .map(|t| {
                    let engine = engine.clone();
                    s.spawn(move || {
                        let mut txn = engine.begin();
                        txn.insert(EntityKind::Item, row(id, &format!("writer {t}")))?;
                        txn.commit()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "id {id}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(_) | Err(EngineError::DuplicateKey { .. })))
        );
    }
}

/// `commit_async` applies exactly what `commit` would: the same outcome, the same
/// all-or-nothing rejection, the same refusal once closed; DDL commits inline.
#[test]
fn async_commits_apply_like_blocking_ones() {
    use futures::executor::block_on;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let mut txn = engine.begin();
    txn.insert(EntityKind::Item, row(1, "one")).unwrap();
    txn.signal("view", EntityId(1), Some(EntityId(7)), 2.0, Some(t0()))
        .unwrap();
    txn.signal("view", EntityId(1), Some(EntityId(7)), 2.0, Some(t0()))
        .unwrap();
    let pending = txn.commit_async();
    let out = block_on(pending).unwrap();
    assert_eq!(
        (out.events_accepted, out.events_duplicate, out.rows),
        (1, 1, 1)
    );
    assert_eq!(engine.read().total("view", EntityId(1)).unwrap(), 2.0);

    // A rejected transaction applies none of its ops, signals included.
    let mut txn = engine.begin();
    txn.signal("view", EntityId(2), None, 1.0, Some(t0()))
        .unwrap();
    txn.insert(EntityKind::Item, row(1, "again")).unwrap();
    let r = block_on(txn.commit_async());
    assert!(matches!(r, Err(EngineError::DuplicateKey { .. })), "{r:?}");
    assert_eq!(engine.read().total("view", EntityId(2)).unwrap(), 0.0);

    // Submitted, then the waiter is dropped: the transaction still commits.
    let mut txn = engine.begin();
    txn.signal("view", EntityId(3), None, 1.0, Some(t0()))
        .unwrap();
    drop(txn.commit_async());
    let mut txn = engine.begin();
    txn.signal("view", EntityId(4), None, 1.0, Some(t0()))
        .unwrap();
    block_on(txn.commit_async()).unwrap();
    assert_eq!(engine.read().total("view", EntityId(3)).unwrap(), 1.0);

    // A schema change commits through the same call.
    let mut txn = engine.begin();
    let def = SignalDef::new(
        "like",
        EntityKind::Item,
        DecaySpec::exponential("1 day").unwrap(),
        [Window::All],
    );
    txn.schema_change(SchemaChange::CreateSignal(def.unwrap()))
        .unwrap();
    block_on(txn.commit_async()).unwrap();
    assert!(engine.schema().signal("like").is_ok());

    engine.shutdown().unwrap();
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), None, 1.0, None).unwrap();
    assert!(matches!(
        block_on(txn.commit_async()),
        Err(EngineError::Closed)
    ));
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(engine.read().total("view", EntityId(1)).unwrap(), 2.0);
    assert_eq!(engine.read().total("view", EntityId(3)).unwrap(), 1.0);
    assert_eq!(engine.read().total("view", EntityId(2)).unwrap(), 0.0);
}

#[test]
fn checkpoint_retires_wal_and_restart_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    for i in 0..200 {
        let mut txn = engine.begin();
        txn.upsert(EntityKind::Item, row(i, "x")).unwrap();
        for u in 0..20 {
            txn.signal(
                "view",
                EntityId(i as u64 % 10),
                Some(EntityId(u)),
                1.0,
                Some(Timestamp(t0().0 - i)),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    let segments = || {
        std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    };
    let before = segments();
    assert!(before > 3, "expected several segments, got {before}");
    // Retirement waits until the newest arrival in a segment is older than the dedup window.
    clock.advance_micros(2 * MINUTE_US);
    engine.begin().commit().unwrap();
    let stats = engine.checkpoint().unwrap();
    assert!(stats.wal_segments_deleted > 0, "{stats:?}");
    assert!(segments() < before);
    let total = engine.read().total("view", EntityId(3)).unwrap();
    let decay = engine.read().decay("view", EntityId(3), t0()).unwrap();
    // More writes after the checkpoint; state after reopen must include them.
    let mut txn = engine.begin();
    txn.signal("view", EntityId(3), None, 2.0, Some(t0()))
        .unwrap();
    txn.delete(EntityKind::Item, EntityId(5)).unwrap();
    txn.commit().unwrap();
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(
        engine.read().total("view", EntityId(3)).unwrap(),
        total + 2.0
    );
    let d2 = engine.read().decay("view", EntityId(3), t0()).unwrap();
    assert!((d2 - (decay + 2.0)).abs() < 1e-9 * d2);
    assert!(
        engine
            .read()
            .get(EntityKind::Item, EntityId(5))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        engine.read().get(EntityKind::Item, EntityId(6)).unwrap(),
        Some(row(6, "x"))
    );
    let n = engine.read().store().scan(EntityKind::Item).count();
    assert_eq!(n, 199);
}

#[test]
fn dropped_signal_ids_are_not_reused_and_state_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), None, 5.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    let old = engine.schema().signal("view").unwrap().id;
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::DropSignal {
        name: "VIEW".into(),
        id: SignalId(0),
    })
    .unwrap();
    txn.commit().unwrap();
    let mut txn = engine.begin();
    assert!(matches!(
        txn.signal("view", EntityId(1), None, 1.0, None),
        Err(EngineError::Core(_))
    ));
    let def = SignalDef::new("view", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    txn.commit().unwrap();
    assert_ne!(engine.schema().signal("view").unwrap().id, old);
    assert_eq!(engine.read().total("view", EntityId(1)).unwrap(), 0.0);
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_ne!(engine.schema().signal("view").unwrap().id, old);
    assert_eq!(engine.read().total("view", EntityId(1)).unwrap(), 0.0);
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let _engine = open(dir.path(), &clock);
    let mut c = EngineConfig::new(dir.path());
    c.checkpoint_wal_bytes = None;
    assert!(matches!(Engine::open(c), Err(EngineError::Locked { .. })));
}

#[test]
fn writes_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    engine.shutdown().unwrap();
    engine.shutdown().unwrap();
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), None, 1.0, None).unwrap();
    assert!(matches!(txn.commit(), Err(EngineError::Closed)));
}

/// All history rows (files read back with the parquet crate, plus memory), as sortable
/// tuples.
fn history_rows(engine: &Engine) -> Vec<(String, i64, Option<i64>, u64, i64)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
    let snap = engine.read().history().unwrap();
    let mut batches = snap.batches.clone();
    for f in &snap.files {
        let file = std::fs::File::open(&f.path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            assert_eq!(b.schema(), crate::history_schema());
            // Every row of a file is on the file's day.
            let ts = b.column(4).as_primitive::<TimestampMicrosecondType>();
            assert!(
                ts.values()
                    .iter()
                    .all(|t| t.div_euclid(86_400_000_000) == f.day)
            );
            batches.push(b);
        }
    }
    let mut out = Vec::new();
    for b in batches {
        let sig = b.column(0).as_string::<i32>();
        let ent = b.column(1).as_primitive::<Int64Type>();
        let user = b.column(2).as_primitive::<Int64Type>();
        let w = b.column(3).as_primitive::<Float64Type>();
        let ts = b.column(4).as_primitive::<TimestampMicrosecondType>();
        for i in 0..b.num_rows() {
            out.push((
                sig.value(i).to_string(),
                ent.value(i),
                user.is_valid(i).then(|| user.value(i)),
                w.value(i).to_bits(),
                ts.value(i),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn history_flushes_by_day_at_checkpoint_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let day_us = 24 * 60 * MINUTE_US;
    let mut expected = Vec::new();
    // Three UTC days of events, some without a user, in several transactions.
    for batch in 0..3 {
        let mut txn = engine.begin();
        for i in 0..1_000i64 {
            let ts = t0().saturating_sub((i % 3) * day_us + batch * MINUTE_US + i);
            let user = (i % 4 != 0).then_some(EntityId(i as u64 % 17));
            txn.signal(
                "view",
                EntityId(i as u64 % 50),
                user,
                1.0 + i as f64,
                Some(ts),
            )
            .unwrap();
            expected.push((
                "view".to_string(),
                i % 50,
                user.map(|u| u.0 as i64),
                (1.0 + i as f64).to_bits(),
                ts.0,
            ));
        }
        txn.commit().unwrap();
    }
    expected.sort();
    let snap = engine.read().history().unwrap();
    assert!(snap.files.is_empty());
    assert_eq!(history_rows(&engine), expected);

    let stats = engine.checkpoint().unwrap();
    let snap = engine.read().history().unwrap();
    assert_eq!(snap.files.len(), 3, "one file per UTC day");
    assert!(snap.batches.is_empty());
    assert!(snap.files.iter().all(|f| f.hi == stats.lsn));
    assert_eq!(history_rows(&engine), expected);

    // More events after the flush stay in memory; a restart replays exactly those.
    let mut txn = engine.begin();
    txn.signal("view", EntityId(99), None, 2.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    expected.push(("view".into(), 99, None, 2.0f64.to_bits(), t0().0));
    expected.sort();
    assert_eq!(history_rows(&engine), expected);
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(history_rows(&engine), expected);
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(history_rows(&engine), expected);
}

#[test]
fn history_keeps_dropped_signal_names_and_deletes_unpublished_files() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let mut txn = engine.begin();
    txn.signal("view", EntityId(1), None, 1.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    engine.checkpoint().unwrap();
    let mut txn = engine.begin();
    txn.signal("view", EntityId(2), None, 1.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    let mut txn = engine.begin();
    let id = engine.schema().signal("view").unwrap().id;
    txn.schema_change(SchemaChange::DropSignal {
        name: "view".into(),
        id,
    })
    .unwrap();
    txn.commit().unwrap();
    let expected = history_rows(&engine);
    assert_eq!(expected.len(), 2);
    assert!(expected.iter().all(|r| r.0 == "view"));
    let files = engine.read().history().unwrap().files;
    drop(engine);

    // A file a crashed flush wrote beyond FLUSHED must not be read (its events come back
    // from the WAL instead).
    let orphan = files[0]
        .path
        .with_file_name(format!("{:020}-{:020}.parquet", 0, u64::MAX / 2));
    std::fs::copy(&files[0].path, &orphan).unwrap();
    let engine = open(dir.path(), &clock);
    assert!(!orphan.exists());
    assert_eq!(history_rows(&engine), expected);
}

#[test]
fn suspended_transactions_resume_commit_atomically_or_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    // Two "statements" of one transaction, detached in between.
    let mut txn = engine.begin();
    txn.upsert(EntityKind::Item, row(1, "a")).unwrap();
    let pending = txn.suspend();
    assert!(
        engine
            .read()
            .get(EntityKind::Item, EntityId(1))
            .unwrap()
            .is_none()
    );
    let mut txn = engine.resume(pending).unwrap();
    txn.signal("view", EntityId(1), None, 1.0, Some(t0()))
        .unwrap();
    let def = SignalDef::new("like", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    // Validated against the transaction's own schema change.
    txn.signal("like", EntityId(1), None, 2.0, Some(t0()))
        .unwrap();
    let pending = txn.suspend();
    assert!(
        engine.schema().signal("like").is_err(),
        "nothing visible before commit"
    );
    let out = engine.resume(pending).unwrap().commit().unwrap();
    assert_eq!((out.rows, out.events_accepted), (1, 2));
    let view = engine.read();
    assert!(view.get(EntityKind::Item, EntityId(1)).unwrap().is_some());
    assert_eq!(view.total("like", EntityId(1)).unwrap(), 2.0);

    // A schema change by someone else while detached: the transaction conflicts.
    let mut txn = engine.begin();
    txn.upsert(EntityKind::Item, row(2, "b")).unwrap();
    let pending = txn.suspend();
    let mut other = engine.begin();
    let def = SignalDef::new("share", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    other
        .schema_change(SchemaChange::CreateSignal(def))
        .unwrap();
    other.commit().unwrap();
    let err = engine.resume(pending).unwrap_err();
    assert!(matches!(err, EngineError::Conflict { .. }), "{err}");
    assert_eq!(err.class(), tidal_core::ErrorClass::Conflict);
    assert!(
        engine
            .read()
            .get(EntityKind::Item, EntityId(2))
            .unwrap()
            .is_none()
    );
    // An empty pending transaction never conflicts.
    let empty = engine.begin().suspend();
    assert!(empty.is_empty());
    engine.resume(empty).unwrap().commit().unwrap();
}

/// A WAL that ends before the checkpoint or the entity store (transactions lost from
/// the log) refuses to open: new transactions would reuse the lost LSNs and be skipped
/// as already applied.
#[test]
fn a_log_behind_its_checkpoint_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let mut txn = engine.begin();
    txn.upsert(EntityKind::Item, row(1, "a")).unwrap();
    txn.commit().unwrap();
    engine.checkpoint().unwrap();
    engine.shutdown().unwrap();
    drop(engine);
    // The log is lost (a new empty one is created at open).
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    match Engine::open(config(dir.path(), &clock)) {
        Err(EngineError::LogBehindState { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened with a log behind its state"),
    }
}

#[test]
fn rollback_to_a_mark_drops_exactly_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let mut txn = engine.begin();
    txn.upsert(EntityKind::Item, row(1, "a")).unwrap();
    txn.signal("view", EntityId(1), None, 1.0, Some(t0()))
        .unwrap();
    let mut pending = txn.suspend();
    let mark = pending.mark();
    // Events after the mark are appended to the same batch of events as the one
    // before it; a row and a schema change come after them.
    let mut txn = engine.resume(pending).unwrap();
    txn.signal("view", EntityId(1), None, 10.0, Some(t0()))
        .unwrap();
    txn.upsert(EntityKind::Item, row(2, "b")).unwrap();
    let def = SignalDef::new("like", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    txn.signal("like", EntityId(1), None, 5.0, Some(t0()))
        .unwrap();
    pending = txn.suspend();
    assert!(pending.changes_schema());
    pending.rollback_to(&mark);
    assert!(
        !pending.changes_schema(),
        "the schema change was rolled back"
    );
    let mut txn = engine.resume(pending).unwrap();
    // The transaction's schema is the one at the mark again.
    assert!(
        txn.signal("like", EntityId(1), None, 1.0, Some(t0()))
            .is_err()
    );
    let mut pending = txn.suspend();
    // Rolling back to the same mark twice is fine.
    pending.rollback_to(&mark);
    let out = engine.resume(pending).unwrap().commit().unwrap();
    assert_eq!((out.rows, out.events_accepted), (1, 1));
    let view = engine.read();
    assert_eq!(view.total("view", EntityId(1)).unwrap(), 1.0);
    assert!(view.get(EntityKind::Item, EntityId(2)).unwrap().is_none());
    assert!(engine.schema().signal("like").is_err());
    // A mark taken before another session's schema change, and a schema change of
    // ours that rebased onto it, rolled back: the transaction is back on the old
    // schema, so operations validated against it must conflict, not commit.
    let pending = engine.begin().suspend();
    let before = pending.mark();
    let mut other = engine.begin();
    other
        .schema_change(SchemaChange::DropSignal {
            name: "view".into(),
            id: SignalId(0),
        })
        .unwrap();
    other.commit().unwrap();
    let mut txn = engine.resume(pending).unwrap();
    let def = SignalDef::new("share", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    let mut pending = txn.suspend();
    pending.rollback_to(&before);
    let mut txn = engine.resume(pending).unwrap();
    txn.signal("view", EntityId(1), None, 1.0, Some(t0()))
        .unwrap();
    let err = engine.resume(txn.suspend()).unwrap_err();
    assert!(matches!(err, EngineError::Conflict { .. }), "{err}");

    let pending = engine.begin().suspend();
    let empty = pending.mark();
    let mut txn = engine.resume(pending).unwrap();
    txn.upsert(EntityKind::Item, row(3, "c")).unwrap();
    let mut pending = txn.suspend();
    pending.rollback_to(&empty);
    assert!(pending.is_empty());
}

// ---- Mark bitmaps (`CREATE SIGNAL … MARKS seen|liked|hidden`) ----

/// Creates `view` and `impression` (both `MARKS seen`), `like` (`MARKS liked`) and
/// `click` (no marks).
fn setup_marks(engine: &Engine) {
    let mut txn = engine.begin();
    for (name, mark) in [
        ("view", Some(Mark::Seen)),
        ("impression", Some(Mark::Seen)),
        ("like", Some(Mark::Liked)),
        ("click", None),
    ] {
        let mut def = SignalDef::new(name, EntityKind::Item, DecaySpec::None, [Window::All]);
        if let Some(m) = mark {
            def = def.map(|d| d.with_marks(m));
        }
        txn.schema_change(SchemaChange::CreateSignal(def.unwrap()))
            .unwrap();
    }
    txn.commit().unwrap();
}

/// Commits one event per `(signal, entity, user, weight)`, each with its own timestamp
/// so that none is dropped as a duplicate.
fn mark_events(engine: &Engine, events: &[(&str, u64, Option<u64>, f64)]) {
    let mut txn = engine.begin();
    for (i, (signal, entity, user, weight)) in events.iter().enumerate() {
        let ts = Some(Timestamp(txn.now().0 - i as i64));
        txn.signal(signal, EntityId(*entity), user.map(EntityId), *weight, ts)
            .unwrap();
    }
    txn.commit().unwrap();
}

fn marked(engine: &Engine, user: u64, mark: Mark) -> Vec<u64> {
    engine.read().marked(EntityId(user), mark).iter().collect()
}

fn drop_signal(engine: &Engine, name: &str) {
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::DropSignal {
        name: name.into(),
        id: SignalId(0),
    })
    .unwrap();
    txn.commit().unwrap();
}

#[test]
fn marks_set_on_positive_weight_and_clear_on_negative() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup_marks(&engine);
    mark_events(
        &engine,
        &[
            ("like", 10, Some(1), 1.0),
            ("like", 11, Some(1), 0.5),
            ("like", 12, Some(1), 1.0),
            ("like", 10, Some(2), 1.0),
        ],
    );
    assert_eq!(marked(&engine, 1, Mark::Liked), [10, 11, 12]);
    assert_eq!(marked(&engine, 2, Mark::Liked), [10]);
    // An "unlike" clears; a zero weight changes nothing; clearing an unset bit is a no-op.
    mark_events(
        &engine,
        &[
            ("like", 11, Some(1), -1.0),
            ("like", 12, Some(1), 0.0),
            ("like", 13, Some(1), -1.0),
        ],
    );
    assert_eq!(marked(&engine, 1, Mark::Liked), [10, 12]);
    assert_eq!(marked(&engine, 2, Mark::Liked), [10]);
    let view = engine.read();
    assert!(view.is_marked(EntityId(1), Mark::Liked, EntityId(12)));
    assert!(!view.is_marked(EntityId(1), Mark::Liked, EntityId(11)));
    assert!(!view.is_marked(EntityId(1), Mark::Seen, EntityId(10)));
    assert!(marked(&engine, 1, Mark::Seen).is_empty());
    assert!(marked(&engine, 99, Mark::Liked).is_empty());
    // Ids beyond 32 bits are kept exactly.
    mark_events(&engine, &[("like", u64::MAX >> 1, Some(1), 1.0)]);
    assert!(
        engine
            .read()
            .is_marked(EntityId(1), Mark::Liked, EntityId(u64::MAX >> 1))
    );
}

#[test]
fn marks_need_a_user_and_a_marking_signal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup_marks(&engine);
    mark_events(
        &engine,
        &[
            ("view", 10, None, 1.0),
            ("click", 11, Some(1), 1.0),
            ("view", 12, Some(1), 1.0),
        ],
    );
    assert_eq!(marked(&engine, 1, Mark::Seen), [12]);
    for mark in [Mark::Liked, Mark::Hidden] {
        assert!(marked(&engine, 1, mark).is_empty());
    }
    // The signals still count for the ledger.
    assert_eq!(engine.read().total("view", EntityId(10)).unwrap(), 1.0);
    assert_eq!(engine.read().total("click", EntityId(11)).unwrap(), 1.0);
}

#[test]
fn marks_union_over_signals_with_the_same_mark() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup_marks(&engine);
    mark_events(
        &engine,
        &[
            ("view", 10, Some(1), 1.0),
            ("impression", 11, Some(1), 1.0),
            ("impression", 10, Some(1), 1.0),
            ("like", 12, Some(1), 1.0),
        ],
    );
    assert_eq!(marked(&engine, 1, Mark::Seen), [10, 11]);
    // Each signal keeps its own bits: clearing through one leaves the other's.
    mark_events(&engine, &[("view", 10, Some(1), -1.0)]);
    assert_eq!(marked(&engine, 1, Mark::Seen), [10, 11]);
    mark_events(&engine, &[("impression", 10, Some(1), -1.0)]);
    assert_eq!(marked(&engine, 1, Mark::Seen), [11]);
    assert_eq!(marked(&engine, 1, Mark::Liked), [12]);
}

#[test]
fn drop_signal_removes_only_its_marks() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup_marks(&engine);
    mark_events(
        &engine,
        &[("view", 10, Some(1), 1.0), ("impression", 11, Some(1), 1.0)],
    );
    let before = engine.read();
    drop_signal(&engine, "view");
    assert_eq!(marked(&engine, 1, Mark::Seen), [11]);
    // A view taken before the drop still names `view`, whose bits are gone.
    assert_eq!(
        before
            .marked(EntityId(1), Mark::Seen)
            .iter()
            .collect::<Vec<_>>(),
        [11]
    );
    // (A view holds the entity store open; it must go before the engine is reopened.)
    drop(before);
    // Re-created under the same name it is a new signal that starts empty; a signal
    // created and written in one transaction marks at once.
    let mut txn = engine.begin();
    let def = SignalDef::new("view", EntityKind::Item, DecaySpec::None, [Window::All]);
    txn.schema_change(SchemaChange::CreateSignal(
        def.unwrap().with_marks(Mark::Hidden),
    ))
    .unwrap();
    txn.signal("view", EntityId(20), Some(EntityId(1)), 1.0, None)
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(marked(&engine, 1, Mark::Seen), [11]);
    assert_eq!(marked(&engine, 1, Mark::Hidden), [20]);
    // Events and the drop of their signal in one transaction leave nothing behind.
    let mut txn = engine.begin();
    txn.signal("impression", EntityId(12), Some(EntityId(1)), 1.0, None)
        .unwrap();
    txn.schema_change(SchemaChange::DropSignal {
        name: "impression".into(),
        id: SignalId(0),
    })
    .unwrap();
    txn.commit().unwrap();
    assert!(marked(&engine, 1, Mark::Seen).is_empty());
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert!(marked(&engine, 1, Mark::Seen).is_empty());
    assert_eq!(marked(&engine, 1, Mark::Hidden), [20]);
}

/// Copies a data directory while its engine is open: every commit is fsynced, so the
/// copy is what a crash at this point leaves behind.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The reference model: the set of marked entities per (signal name, user). Dropping
/// a signal forgets its name's sets.
type MarksModel = HashMap<(&'static str, u64), HashSet<u64>>;

const MARK_SIGNALS: [(&str, Option<Mark>); 4] = [
    ("view", Some(Mark::Seen)),
    ("impression", Some(Mark::Seen)),
    ("like", Some(Mark::Liked)),
    ("click", None),
];
const MARK_USERS: u64 = 6;

fn model_marked(model: &MarksModel, user: u64, mark: Mark) -> Vec<u64> {
    let mut out: Vec<u64> = MARK_SIGNALS
        .iter()
        .filter(|(_, m)| *m == Some(mark))
        .filter_map(|(s, _)| model.get(&(*s, user)))
        .flatten()
        .copied()
        .collect::<HashSet<u64>>()
        .into_iter()
        .collect();
    out.sort_unstable();
    out
}

/// Every user's marks, by mark, as the engine reports them.
fn all_marks(engine: &Engine) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for user in 0..=MARK_USERS {
        for mark in [Mark::Seen, Mark::Liked, Mark::Hidden] {
            out.push(marked(engine, user, mark));
        }
    }
    out
}

fn all_model_marks(model: &MarksModel) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for user in 0..=MARK_USERS {
        for mark in [Mark::Seen, Mark::Liked, Mark::Hidden] {
            out.push(model_marked(model, user, mark));
        }
    }
    out
}

/// Commits `txns` transactions of random events (and, now and then, a drop and
/// re-create of `impression`) to the engine and the model alike.
fn random_mark_txns(engine: &Engine, model: &mut MarksModel, rng: &mut u64, txns: usize) {
    let mut next = || {
        // xorshift64: deterministic, and enough for picking events.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    for _ in 0..txns {
        if next() % 8 == 0 {
            drop_signal(engine, "impression");
            model.retain(|(s, _), _| *s != "impression");
            let mut txn = engine.begin();
            let def = SignalDef::new(
                "impression",
                EntityKind::Item,
                DecaySpec::None,
                [Window::All],
            );
            txn.schema_change(SchemaChange::CreateSignal(
                def.unwrap().with_marks(Mark::Seen),
            ))
            .unwrap();
            txn.commit().unwrap();
        }
        let mut events = Vec::new();
        for _ in 0..(next() % 40) {
            let (signal, mark) = MARK_SIGNALS[(next() % 4) as usize];
            // Entities in two 32-bit blocks, so treemaps hold more than one bitmap.
            let entity = (next() % 30) + ((next() % 2) << 32);
            let user = (next() % 8 != 0).then(|| next() % MARK_USERS);
            let weight = [1.0, 2.5, -1.0, 0.0][(next() % 4) as usize];
            events.push((signal, entity, user, weight));
            if let (Some(_), Some(u)) = (mark, user) {
                let set = model.entry((signal, u)).or_default();
                if weight > 0.0 {
                    set.insert(entity);
                } else if weight < 0.0 {
                    set.remove(&entity);
                }
            }
        }
        mark_events(engine, &events);
    }
}

#[test]
fn marks_survive_restart_through_wal_replay_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup_marks(&engine);
    let mut model = MarksModel::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    random_mark_txns(&engine, &mut model, &mut rng, 60);
    let state = all_marks(&engine);
    assert_eq!(state, all_model_marks(&model));
    assert!(state.iter().map(Vec::len).sum::<usize>() > 50, "{state:?}");

    // A crash image with no checkpoint: everything comes back by WAL replay.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let replayed = open(crashed.path(), &clock);
    assert_eq!(all_marks(&replayed), state);
    drop(replayed);

    // A checkpoint, then more writes: the copy restores the checkpoint's marks section
    // and replays the tail.
    engine.checkpoint().unwrap();
    random_mark_txns(&engine, &mut model, &mut rng, 30);
    let state = all_marks(&engine);
    assert_eq!(state, all_model_marks(&model));
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let replayed = open(crashed.path(), &clock);
    assert_eq!(all_marks(&replayed), state);
    drop(replayed);

    // Clean shutdown checkpoints everything: the reopen reads marks from it alone.
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(all_marks(&engine), state);
    random_mark_txns(&engine, &mut model, &mut rng, 10);
    assert_eq!(all_marks(&engine), all_model_marks(&model));
}

fn text_setup(engine: &Engine) {
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("title", ColumnType::Text),
    ];
    let table = TableDef::new(EntityKind::Item, cols, vec!["title".into()]).unwrap();
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::CreateTable(table)).unwrap();
    txn.commit().unwrap();
}

fn search(engine: &Engine, q: &str) -> Vec<u64> {
    let text = engine.read().text(EntityKind::Item).unwrap();
    let snap = text.index.snapshot_blocking().unwrap();
    let mut ids: Vec<u64> = snap
        .all(&snap.parse(q).unwrap())
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn text_index_follows_every_write_and_survives_reopen_and_loss() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    text_setup(&engine);
    let mut txn = engine.begin();
    for (id, title) in [(1, "piano lesson"), (2, "guitar lesson"), (3, "piano jazz")] {
        txn.insert(EntityKind::Item, row(id, title)).unwrap();
    }
    txn.commit().unwrap();
    assert_eq!(search(&engine, "piano"), [1, 3]);
    let mut txn = engine.begin();
    txn.upsert(EntityKind::Item, row(1, "organ lesson"))
        .unwrap();
    txn.delete(EntityKind::Item, EntityId(3)).unwrap();
    txn.commit().unwrap();
    assert_eq!(search(&engine, "piano"), Vec::<u64>::new());
    assert_eq!(search(&engine, "lesson"), [1, 2]);
    assert!(matches!(
        engine.read().text(EntityKind::User),
        Err(EngineError::Core(_))
    ));

    // A checkpoint keeps the log the index needs; reopening replays only what follows.
    engine.checkpoint().unwrap();
    let mut txn = engine.begin();
    txn.insert(EntityKind::Item, row(4, "piano again")).unwrap();
    txn.commit().unwrap();
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(search(&engine, "piano"), [4]);
    assert_eq!(search(&engine, "lesson"), [1, 2]);
    drop(engine);

    // A lost index directory is rebuilt from the entity store.
    let text_dir = dir.path().join("text");
    for e in std::fs::read_dir(&text_dir).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let engine = open(dir.path(), &clock);
    assert_eq!(search(&engine, "piano"), [4]);
    assert_eq!(search(&engine, "organ"), [1]);

    // Dropping the table removes its index; a new table starts empty.
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::DropTable {
        kind: EntityKind::Item,
    })
    .unwrap();
    txn.commit().unwrap();
    assert_eq!(std::fs::read_dir(&text_dir).unwrap().count(), 0);
    text_setup(&engine);
    assert_eq!(search(&engine, "piano"), Vec::<u64>::new());
    let mut txn = engine.begin();
    txn.insert(EntityKind::Item, row(9, "piano")).unwrap();
    txn.commit().unwrap();
    assert_eq!(search(&engine, "piano"), [9]);
}

fn vector_setup(engine: &Engine) {
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("v", ColumnType::Vector(3)),
    ];
    let table = TableDef::new(EntityKind::Item, cols, vec![]).unwrap();
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::CreateTable(table)).unwrap();
    txn.commit().unwrap();
}

fn vrow(id: i64, v: Option<[f32; 3]>) -> Vec<Value> {
    vec![
        Value::Int(id),
        v.map_or(Value::Null, |v| Value::Vector(v.to_vec())),
    ]
}

fn create_index(engine: &Engine, name: &str) {
    let def = tidal_core::VectorIndexDef {
        name: name.into(),
        kind: EntityKind::Item,
        column: "v".into(),
        metric: tidal_core::VectorMetric::L2,
        m: 16,
        ef_construction: 64,
        id: 0,
    };
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::CreateIndex(def)).unwrap();
    txn.commit().unwrap();
}

/// Ids in the index nearest to `q` (all of them, for these small tables), sorted.
fn nearest(engine: &Engine, q: [f32; 3]) -> Vec<u64> {
    let idx = engine.read().vector_index("items_v").unwrap();
    let mut ids = idx.index.search(&q, 100).unwrap();
    ids.sort_unstable();
    ids
}

#[test]
fn vector_index_builds_follows_every_write_and_survives_crash_reopen_and_loss() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    vector_setup(&engine);
    let mut txn = engine.begin();
    for (id, v) in [(1, [1.0, 0.0, 0.0]), (2, [0.0, 1.0, 0.0])] {
        txn.insert(EntityKind::Item, vrow(id, Some(v))).unwrap();
    }
    txn.insert(EntityKind::Item, vrow(3, None)).unwrap();
    txn.commit().unwrap();
    // Built from the rows already there; NULL vectors are not indexed.
    create_index(&engine, "items_v");
    assert_eq!(nearest(&engine, [1.0, 0.0, 0.0]), [1, 2]);
    let mut txn = engine.begin();
    txn.upsert(EntityKind::Item, vrow(3, Some([0.0, 0.0, 1.0])))
        .unwrap();
    txn.upsert(EntityKind::Item, vrow(1, None)).unwrap();
    txn.insert(EntityKind::Item, vrow(4, Some([5.0, 5.0, 5.0])))
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(nearest(&engine, [1.0, 0.0, 0.0]), [2, 3, 4]);
    let dup = engine.begin();
    let mut dup = dup;
    let err = dup
        .schema_change(SchemaChange::CreateIndex(tidal_core::VectorIndexDef {
            name: "ITEMS_V".into(),
            kind: EntityKind::Item,
            column: "v".into(),
            metric: tidal_core::VectorMetric::Cosine,
            m: 16,
            ef_construction: 64,
            id: 0,
        }))
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    drop(dup);

    // A checkpoint saves the index; what follows is replayed after a crash.
    engine.checkpoint().unwrap();
    let mut txn = engine.begin();
    txn.delete(EntityKind::Item, EntityId(2)).unwrap();
    txn.insert(EntityKind::Item, vrow(5, Some([0.0, 2.0, 0.0])))
        .unwrap();
    txn.commit().unwrap();
    let want = vec![3, 4, 5];
    assert_eq!(nearest(&engine, [0.0, 1.0, 0.0]), want);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let replayed = open(crashed.path(), &clock);
    assert_eq!(nearest(&replayed, [0.0, 1.0, 0.0]), want);
    drop(replayed);
    drop(engine);
    let engine = open(dir.path(), &clock);
    assert_eq!(nearest(&engine, [0.0, 1.0, 0.0]), want);
    drop(engine);

    // A damaged index file is rebuilt from the entity store.
    let vdir = dir.path().join("vector");
    for e in std::fs::read_dir(&vdir).unwrap() {
        let p = e.unwrap().path();
        for f in std::fs::read_dir(&p).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "usearch") {
                std::fs::write(&f, b"garbage").unwrap();
            }
        }
    }
    let engine = open(dir.path(), &clock);
    assert_eq!(nearest(&engine, [0.0, 1.0, 0.0]), want);

    // DROP INDEX removes its files; DROP TABLE takes its indexes with it.
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::DropIndex {
        name: "items_v".into(),
    })
    .unwrap();
    txn.commit().unwrap();
    assert!(engine.read().vector_index("items_v").is_none());
    assert_eq!(std::fs::read_dir(&vdir).unwrap().count(), 0);
    create_index(&engine, "items_v");
    assert_eq!(nearest(&engine, [0.0, 1.0, 0.0]), want);
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::DropTable {
        kind: EntityKind::Item,
    })
    .unwrap();
    txn.commit().unwrap();
    assert!(engine.read().vector_index("items_v").is_none());
    assert!(engine.schema().indexes().next().is_none());
    assert_eq!(std::fs::read_dir(&vdir).unwrap().count(), 0);
}

/// An independent model of SQL.md §7's preference formula: f64 arithmetic, stored as
/// f32 after every move like the engine does.
fn model_move(p: Option<&Vec<f32>>, e: &[f32], step: f64) -> Option<Vec<f32>> {
    let ne = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if ne == 0.0 || step == 0.0 {
        return p.cloned();
    }
    let base: Vec<f64> = match p {
        Some(p) if p.len() == e.len() => p.iter().map(|x| f64::from(*x)).collect(),
        _ => vec![0.0; e.len()],
    };
    let v: Vec<f64> = base
        .iter()
        .zip(e)
        .map(|(b, x)| b + step * f64::from(*x) / ne)
        .collect();
    let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    (nv > 0.0).then(|| v.iter().map(|x| (x / nv) as f32).collect())
}

fn preference_setup(engine: &Engine) {
    vector_setup(engine);
    let mut txn = engine.begin();
    for (name, lr) in [("like", Some(0.1)), ("skip", Some(-0.05)), ("view", None)] {
        let def = SignalDef::new(name, EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
        let def = match lr {
            Some(lr) => def.with_preference(lr).unwrap(),
            None => def,
        };
        txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    }
    txn.commit().unwrap();
}

fn preferences(engine: &Engine, users: u64) -> Vec<Option<Vec<f32>>> {
    let view = engine.read();
    (0..users)
        .map(|u| view.preference(EntityId(u)).unwrap())
        .collect()
}

fn assert_close(got: &[Option<Vec<f32>>], want: &[Option<Vec<f32>>]) {
    assert_eq!(got.len(), want.len());
    for (u, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                assert_eq!(g.len(), w.len(), "user {u}");
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() <= 1e-6, "user {u}: {g:?} vs model {w:?}");
                }
            }
            _ => panic!("user {u}: {g:?} vs model {w:?}"),
        }
    }
}

/// One step of the preference scenario.
#[derive(Debug, Clone)]
enum PrefStep {
    /// `(signal index, item, user, weight)` in one transaction.
    Events(Vec<(usize, i64, Option<u64>, f64)>),
    /// The item's embedding changes (or goes NULL) and, in the same transaction, an
    /// event on it sees the new one.
    Reembed(i64, Option<[f32; 3]>, u64),
    Checkpoint,
}

fn pref_step() -> impl proptest::strategy::Strategy<Value = PrefStep> {
    use proptest::prelude::*;
    let component = -4i32..=4;
    let vector = prop::array::uniform3(component).prop_map(|a| a.map(|x| x as f32));
    prop_oneof![
        6 => prop::collection::vec(
            (
                0usize..3,
                0i64..8,
                prop::option::weighted(0.9, 0u64..4),
                prop_oneof![Just(1.0), Just(-1.0), Just(2.5), -3.0f64..3.0],
            ),
            1..6
        )
        .prop_map(PrefStep::Events),
        2 => (0i64..8, prop::option::weighted(0.8, vector), 0u64..4)
            .prop_map(|(i, v, u)| PrefStep::Reembed(i, v, u)),
        1 => Just(PrefStep::Checkpoint),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Preference vectors equal the formula's model over random like/skip/view events
    /// (items re-embedded between them), and come back the same from a crash copy
    /// taken mid-run (replay after the last checkpoint) and from a reopen.
    #[test]
    fn preference_vectors_follow_the_formula_and_survive_crash_reopen(
        steps in proptest::collection::vec(pref_step(), 1..30)
    ) {
        const USERS: u64 = 4;
        const RATES: [Option<f64>; 3] = [Some(0.1), Some(-0.05), None];
        const NAMES: [&str; 3] = ["like", "skip", "view"];
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(t0());
        let engine = open(dir.path(), &clock);
        preference_setup(&engine);
        // Items 0..6 start with an embedding; 6 has NULL; 7 does not exist.
        let mut items: HashMap<i64, Option<Vec<f32>>> = HashMap::new();
        let mut txn = engine.begin();
        for id in 0..7i64 {
            let v = (id < 6).then_some([id as f32 + 1.0, (id % 3) as f32 - 1.0, 0.5]);
            txn.insert(EntityKind::Item, vrow(id, v)).unwrap();
            items.insert(id, v.map(|v| v.to_vec()));
        }
        txn.commit().unwrap();
        let mut model: Vec<Option<Vec<f32>>> = vec![None; USERS as usize];
        let apply = |model: &mut Vec<Option<Vec<f32>>>,
                         items: &HashMap<i64, Option<Vec<f32>>>,
                         (s, item, user, w): (usize, i64, Option<u64>, f64)| {
            let (Some(u), Some(lr)) = (user, RATES[s]) else { return };
            let Some(Some(e)) = items.get(&item) else { return };
            let slot = &mut model[u as usize];
            *slot = model_move(slot.as_ref(), e, lr * w);
        };
        let mut ts = t0().0 - 10_000_000;
        let mut crashed = None;
        for (i, step) in steps.iter().enumerate() {
            let mut txn = engine.begin();
            match step {
                PrefStep::Events(events) => {
                    for &(s, item, user, w) in events {
                        ts += 1; // distinct, so deduplication keeps every event
                        txn.signal(NAMES[s], EntityId(item as u64), user.map(EntityId), w,
                                   Some(Timestamp(ts))).unwrap();
                        apply(&mut model, &items, (s, item, user, w));
                    }
                }
                PrefStep::Reembed(item, v, user) => {
                    txn.upsert(EntityKind::Item, vrow(*item, *v)).unwrap();
                    items.insert(*item, v.map(|v| v.to_vec()));
                    ts += 1;
                    txn.signal("like", EntityId(*item as u64), Some(EntityId(*user)), 1.0,
                               Some(Timestamp(ts))).unwrap();
                    apply(&mut model, &items, (0, *item, Some(*user), 1.0));
                }
                PrefStep::Checkpoint => {
                    engine.checkpoint().unwrap();
                }
            }
            if !txn.is_empty() {
                txn.commit().unwrap();
            } else {
                drop(txn);
            }
            assert_close(&preferences(&engine, USERS), &model);
            if i == steps.len() / 2 {
                let copy = tempfile::tempdir().unwrap();
                copy_dir(dir.path(), copy.path());
                crashed = Some((copy, model.clone()));
            }
        }
        if let Some((copy, want)) = crashed {
            let replayed = open(copy.path(), &clock);
            assert_close(&preferences(&replayed, USERS), &want);
        }
        drop(engine);
        let engine = open(dir.path(), &clock);
        assert_close(&preferences(&engine, USERS), &model);
    }
}

// --- relationships and affinity (SQL.md §8) ------------------------------------------

const SOCIAL_RELS: [&str; 2] = ["follows", "blocks"];
/// (name, half-life in seconds (None: no decay), AFFINITY δ).
const SOCIAL_SIGNALS: [(&str, Option<i64>, Option<f64>); 3] = [
    ("like", Some(3_600), Some(0.5)),
    ("watch", None, Some(0.1)),
    ("view", Some(600), None),
];

fn social_setup(engine: &Engine) {
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("creator_id", ColumnType::BigInt),
    ];
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::CreateTable(
        TableDef::new(EntityKind::Item, cols, Vec::new()).unwrap(),
    ))
    .unwrap();
    for (name, hl, delta) in SOCIAL_SIGNALS {
        let decay = match hl {
            Some(s) => DecaySpec::exponential_micros(s * 1_000_000).unwrap(),
            None => DecaySpec::None,
        };
        let mut def = SignalDef::new(name, EntityKind::Item, decay, [Window::All]).unwrap();
        if let Some(d) = delta {
            def = def.with_affinity(d).unwrap();
        }
        txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    }
    for name in SOCIAL_RELS {
        txn.schema_change(SchemaChange::CreateRelationship(
            tidal_core::RelationshipDef {
                name: name.into(),
                from: EntityKind::User,
                to: EntityKind::Creator,
                id: 0,
            },
        ))
        .unwrap();
    }
    txn.commit().unwrap();
}

fn creator_row(id: i64, creator: Option<i64>) -> Vec<Value> {
    vec![Value::Int(id), creator.map_or(Value::Null, Value::Int)]
}

/// One step of the social scenario.
#[derive(Debug, Clone)]
enum SocialStep {
    /// `(relationship, src, dst, created_at offset s, insert?)` in one transaction.
    Edges(Vec<(usize, u64, u64, i64, bool)>),
    /// `(signal, item, user, weight, seconds before t0)`: out of order and backdated.
    Events(Vec<(usize, i64, Option<u64>, f64, i64)>),
    /// The item moves to another creator (or none); later events count for the new one.
    Recreate(i64, Option<i64>),
    /// Drop a relationship and create it again: its edges are gone.
    Reset(usize),
    Checkpoint,
}

fn social_step() -> impl proptest::strategy::Strategy<Value = SocialStep> {
    use proptest::prelude::*;
    prop_oneof![
        4 => prop::collection::vec(
            (0usize..2, 0u64..4, 0u64..6, 0i64..1000, prop::bool::weighted(0.7)),
            1..8
        )
        .prop_map(SocialStep::Edges),
        5 => prop::collection::vec(
            (
                0usize..3,
                0i64..8,
                prop::option::weighted(0.9, 0u64..4),
                prop_oneof![Just(1.0), Just(-1.0), Just(2.5), -3.0f64..3.0],
                0i64..20_000,
            ),
            1..8
        )
        .prop_map(SocialStep::Events),
        1 => (0i64..7, prop::option::weighted(0.8, 0i64..4))
            .prop_map(|(i, c)| SocialStep::Recreate(i, c)),
        1 => (0usize..2).prop_map(SocialStep::Reset),
        1 => Just(SocialStep::Checkpoint),
    ]
}

/// The model's state: edges by relationship (first created_at wins), and every
/// affinity event as `(user, creator at the event, signal, weight, ts)`.
#[derive(Debug, Clone, Default)]
struct SocialModel {
    edges: [std::collections::BTreeMap<(u64, u64), i64>; 2],
    events: Vec<(u64, u64, usize, f64, i64)>,
}

impl SocialModel {
    fn affinity(&self, user: u64, creator: u64, at: i64) -> (f64, f64) {
        let (mut sum, mut scale) = (0.0, 0.0);
        for &(u, c, s, w, ts) in &self.events {
            if u != user || c != creator {
                continue;
            }
            let (_, hl, delta) = SOCIAL_SIGNALS[s];
            let Some(delta) = delta else { continue };
            let f = hl.map_or(1.0, |h| 2f64.powf(-((at - ts) as f64) / (h as f64 * 1e6)));
            sum += delta * w * f;
            scale += (delta * w * f).abs();
        }
        (sum, scale)
    }
}

fn check_social(engine: &Engine, model: &SocialModel, at: Timestamp) {
    let view = engine.read();
    for (r, name) in SOCIAL_RELS.iter().enumerate() {
        let rel = view.schema().relationship(name).unwrap().id;
        let all: Vec<(u64, u64, i64)> = view
            .store()
            .edges(rel, EntityId(0), EntityId(u64::MAX))
            .map(|e| {
                let (s, d, t) = e.unwrap();
                (s.0, d.0, t.0)
            })
            .collect();
        let want: Vec<(u64, u64, i64)> = model.edges[r]
            .iter()
            .map(|(&(s, d), &t)| (s, d, t))
            .collect();
        assert_eq!(all, want, "edges of {name}");
        for src in 0..4u64 {
            let got: Vec<u64> = view
                .out_edges(name, EntityId(src))
                .unwrap()
                .iter()
                .collect();
            let want: Vec<u64> = model.edges[r]
                .keys()
                .filter(|(s, _)| *s == src)
                .map(|(_, d)| *d)
                .collect();
            assert_eq!(got, want, "{name} of user {src}");
        }
        for dst in 0..6u64 {
            let want = model.edges[r].keys().filter(|(_, d)| *d == dst).count() as u64;
            assert_eq!(
                view.store().in_degree(rel, EntityId(dst)).unwrap(),
                want,
                "in-degree of {dst} in {name}"
            );
        }
    }
    for user in 0..4u64 {
        for creator in 0..4u64 {
            let got = view
                .affinity(EntityId(user), EntityId(creator), at)
                .unwrap();
            let (want, scale) = model.affinity(user, creator, at.0);
            assert!(
                (got - want).abs() <= 1e-9 * scale.max(1e-300),
                "affinity({user}, {creator}) = {got}, model {want}"
            );
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Edges equal a set model (duplicates one edge, first created_at kept, deletes,
    /// drop and re-create) and affinity equals the event-list formula to 1e-9 over
    /// out-of-order and backdated events with items changing creator; both come back
    /// the same from a crash copy taken mid-run and from a reopen.
    #[test]
    fn edges_and_affinity_equal_their_models_and_survive_crash_reopen(
        steps in proptest::collection::vec(social_step(), 1..30)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(t0());
        let engine = open(dir.path(), &clock);
        social_setup(&engine);
        // Items 0..6 by creator id % 3; 6 has no creator; 7 does not exist.
        let mut creators: HashMap<i64, Option<i64>> = HashMap::new();
        let mut txn = engine.begin();
        for id in 0..7i64 {
            let c = (id < 6).then_some(id % 3);
            txn.insert(EntityKind::Item, creator_row(id, c)).unwrap();
            creators.insert(id, c);
        }
        txn.commit().unwrap();
        let mut model = SocialModel::default();
        let mut unique = 0i64;
        let mut crashed = None;
        for (i, step) in steps.iter().enumerate() {
            let mut txn = engine.begin();
            match step {
                SocialStep::Edges(edges) => {
                    // Within one transaction the first op on an edge decides, as in the
                    // engine: later duplicates do nothing, a delete removes it.
                    for &(r, src, dst, off, insert) in edges {
                        let ts = t0().0 - off * 1_000_000;
                        if insert {
                            txn.edge_insert(SOCIAL_RELS[r], EntityId(src), EntityId(dst), Some(Timestamp(ts))).unwrap();
                            model.edges[r].entry((src, dst)).or_insert(ts);
                        } else {
                            txn.edge_delete(SOCIAL_RELS[r], EntityId(src), EntityId(dst)).unwrap();
                            model.edges[r].remove(&(src, dst));
                        }
                    }
                }
                SocialStep::Events(events) => {
                    for &(s, item, user, w, back) in events {
                        unique += 1; // distinct, so deduplication keeps every event
                        let ts = t0().0 - back * 1_000_000 - unique;
                        txn.signal(SOCIAL_SIGNALS[s].0, EntityId(item as u64), user.map(EntityId), w,
                                   Some(Timestamp(ts))).unwrap();
                        if let (Some(u), Some(Some(c))) = (user, creators.get(&item)) {
                            model.events.push((u, *c as u64, s, w, ts));
                        }
                    }
                }
                SocialStep::Recreate(item, c) => {
                    txn.upsert(EntityKind::Item, creator_row(*item, *c)).unwrap();
                    creators.insert(*item, *c);
                    // An event in the same transaction sees the new creator.
                    unique += 1;
                    let ts = t0().0 - unique;
                    txn.signal("like", EntityId(*item as u64), Some(EntityId(1)), 1.0, Some(Timestamp(ts))).unwrap();
                    if let Some(c) = c {
                        model.events.push((1, *c as u64, 0, 1.0, ts));
                    }
                }
                SocialStep::Reset(r) => {
                    txn.schema_change(SchemaChange::DropRelationship { name: SOCIAL_RELS[*r].into(), id: 0 }).unwrap();
                    txn.schema_change(SchemaChange::CreateRelationship(tidal_core::RelationshipDef {
                        name: SOCIAL_RELS[*r].into(),
                        from: EntityKind::User,
                        to: EntityKind::Creator,
                        id: 0,
                    })).unwrap();
                    model.edges[*r].clear();
                }
                SocialStep::Checkpoint => {
                    engine.checkpoint().unwrap();
                }
            }
            if !txn.is_empty() {
                txn.commit().unwrap();
            } else {
                drop(txn);
            }
            check_social(&engine, &model, t0());
            if i == steps.len() / 2 {
                let copy = tempfile::tempdir().unwrap();
                copy_dir(dir.path(), copy.path());
                crashed = Some((copy, model.clone()));
            }
        }
        if let Some((copy, want)) = crashed {
            let replayed = open(copy.path(), &clock);
            check_social(&replayed, &want, t0());
        }
        drop(engine);
        let engine = open(dir.path(), &clock);
        check_social(&engine, &model, t0());
    }
}

// --- cohorts ---------------------------------------------------------------------

const COHORT_REGIONS: [&str; 3] = ["US", "DE", "FR"];
const COHORT_AGES: [&str; 2] = ["18-24", "25-34"];

/// A users table (region, age) and `view` (1 h half-life, windows 1h/24h) with
/// COHORTS (region, age, (region, age)).
fn cohort_setup(engine: &Engine) {
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("region", ColumnType::Text),
        ColumnDef::new("age", ColumnType::Text),
    ];
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::CreateTable(
        TableDef::new(EntityKind::User, cols, Vec::new()).unwrap(),
    ))
    .unwrap();
    txn.commit().unwrap();
    let mut txn = engine.begin();
    let def = SignalDef::new(
        "view",
        EntityKind::Item,
        DecaySpec::exponential("1 hour").unwrap(),
        [Window::parse("1h").unwrap(), Window::parse("24h").unwrap()],
    )
    .unwrap()
    .with_cohorts(vec![
        tidal_core::CohortDim::new(vec!["region".into()]),
        tidal_core::CohortDim::new(vec!["age".into()]),
        tidal_core::CohortDim::new(vec!["region".into(), "age".into()]),
    ])
    .unwrap();
    txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    txn.commit().unwrap();
}

fn user_row(id: u64, region: Option<usize>, age: Option<usize>) -> Vec<Value> {
    let text = |v: Option<&str>| v.map_or(Value::Null, |s| Value::Text(s.into()));
    vec![
        Value::Int(id as i64),
        text(region.map(|r| COHORT_REGIONS[r])),
        text(age.map(|a| COHORT_AGES[a])),
    ]
}

#[derive(Debug, Clone)]
enum CohortStep {
    /// `(item, user, weight, seconds back)`.
    Events(Vec<(u64, Option<u64>, f64, i64)>),
    /// Upsert a user's row (and, in the same transaction, one event by them).
    SetUser(u64, Option<usize>, Option<usize>),
    DeleteUser(u64),
    Checkpoint,
}

fn cohort_step() -> impl proptest::strategy::Strategy<Value = CohortStep> {
    use proptest::prelude::*;
    prop_oneof![
        5 => prop::collection::vec(
            (
                0u64..5,
                prop::option::weighted(0.9, 0u64..6),
                prop_oneof![Just(1.0), Just(2.0), -2.0f64..3.0],
                0i64..40_000,
            ),
            1..10
        )
        .prop_map(CohortStep::Events),
        2 => (0u64..6, prop::option::weighted(0.8, 0usize..3), prop::option::weighted(0.8, 0usize..2))
            .prop_map(|(u, r, a)| CohortStep::SetUser(u, r, a)),
        1 => (0u64..6).prop_map(CohortStep::DeleteUser),
        1 => Just(CohortStep::Checkpoint),
    ]
}

/// `(item, region at the event, age at the event, weight, ts)`.
type CohortEvent = (u64, Option<usize>, Option<usize>, f64, i64);

/// Every event with its user's cohorts at the time.
#[derive(Debug, Clone, Default)]
struct CohortModel {
    events: Vec<CohortEvent>,
}

/// `(dimension index, values, the cohort's (item, weight, ts) events)`.
type ModelCohort<'a> = (usize, Vec<&'a str>, Vec<(u64, f64, i64)>);

/// The cohort state equals, for every dimension and value, a ledger fed exactly the
/// model's events of that cohort (same structure, so equal to the last bit), and its
/// decay equals the event-list formula to 1e-9.
fn check_cohorts(engine: &Engine, model: &CohortModel, at: Timestamp) {
    let view = engine.read();
    let def = view.signal("view").unwrap().clone();
    let windows = [Window::parse("1h").unwrap(), Window::parse("24h").unwrap()];
    // (dimension index, values) → the cohort's events.
    let mut cohorts: Vec<ModelCohort<'_>> = Vec::new();
    for (r, region) in COHORT_REGIONS.iter().enumerate() {
        let ev = model.events.iter().filter(|e| e.1 == Some(r));
        cohorts.push((0, vec![region], ev.map(|e| (e.0, e.3, e.4)).collect()));
        for (a, age) in COHORT_AGES.iter().enumerate() {
            let ev = model
                .events
                .iter()
                .filter(|e| e.1 == Some(r) && e.2 == Some(a));
            cohorts.push((2, vec![region, age], ev.map(|e| (e.0, e.3, e.4)).collect()));
        }
    }
    for (a, age) in COHORT_AGES.iter().enumerate() {
        let ev = model.events.iter().filter(|e| e.2 == Some(a));
        cohorts.push((1, vec![age], ev.map(|e| (e.0, e.3, e.4)).collect()));
    }
    view.with_cohorts(|r| {
        for (dim, values, events) in &cohorts {
            let mut reference = tidal_ledger::Ledger::new();
            reference.define(&def);
            for &(item, w, ts) in events {
                reference.apply(&tidal_core::SignalEvent {
                    signal: def.id,
                    entity: EntityId(item),
                    user: None,
                    weight: w,
                    ts: Timestamp(ts),
                });
            }
            let got = r
                .state
                .key(def.id, *dim, values)
                .and_then(|k| r.state.ledger(def.id, *dim, k));
            for item in 0..5u64 {
                let e = EntityId(item);
                let mine: Vec<&(u64, f64, i64)> = events.iter().filter(|x| x.0 == item).collect();
                let (decay, total, last) = match got {
                    Some(l) => (
                        l.decay(def.id, e, at),
                        l.total(def.id, e),
                        l.last(def.id, e),
                    ),
                    None => (0.0, 0.0, None),
                };
                assert_eq!(
                    decay.to_bits(),
                    reference.decay(def.id, e, at).to_bits(),
                    "{values:?} item {item}"
                );
                assert_eq!(
                    total.to_bits(),
                    reference.total(def.id, e).to_bits(),
                    "{values:?} item {item}"
                );
                assert_eq!(last, reference.last(def.id, e), "{values:?} item {item}");
                for w in windows {
                    let got_w = got.map_or(0.0, |l| l.window_count(def.id, e, w, at));
                    assert_eq!(
                        got_w.to_bits(),
                        reference.window_count(def.id, e, w, at).to_bits()
                    );
                }
                let formula: f64 = mine
                    .iter()
                    .map(|&&(_, w, ts)| w * 2f64.powf(-((at.0 - ts) as f64) / 3.6e9))
                    .sum();
                let scale: f64 = mine
                    .iter()
                    .map(|&&(_, w, ts)| w.abs() * 2f64.powf(-((at.0 - ts) as f64) / 3.6e9))
                    .sum();
                assert!(
                    (decay - formula).abs() <= 1e-9 * scale.max(1e-300),
                    "{values:?} item {item}: {decay} vs {formula}"
                );
            }
        }
    });
}

mod cohort_props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Cohort state equals the event-list model with users' attributes changing
        /// over time (a user's later events count in their new cohort, earlier ones
        /// stay), for single dimensions and the composite; the same from a crash copy
        /// taken mid-run and after a reopen.
        #[test]
        fn cohort_state_equals_the_event_model_and_survives_crash_reopen(
            steps in proptest::collection::vec(cohort_step(), 1..30)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(t0());
            let engine = open(dir.path(), &clock);
            cohort_setup(&engine);
            let mut users: HashMap<u64, (Option<usize>, Option<usize>)> = HashMap::new();
            let mut model = CohortModel::default();
            let mut unique = 0i64;
            let mut crashed = None;
            for (i, step) in steps.iter().enumerate() {
                let mut txn = engine.begin();
                let mut event = |txn: &mut crate::WriteTxn<'_>, users: &HashMap<u64, (Option<usize>, Option<usize>)>,
                                 item: u64, user: Option<u64>, w: f64, back: i64| {
                    unique += 1; // distinct, so deduplication keeps every event
                    let ts = t0().0 - back * 1_000_000 - unique;
                    txn.signal("view", EntityId(item), user.map(EntityId), w, Some(Timestamp(ts))).unwrap();
                    if let Some((r, a)) = user.and_then(|u| users.get(&u)) {
                        model.events.push((item, *r, *a, w, ts));
                    }
                };
                match step {
                    CohortStep::Events(events) => {
                        for &(item, user, w, back) in events {
                            event(&mut txn, &users, item, user, w, back);
                        }
                    }
                    CohortStep::SetUser(u, r, a) => {
                        txn.upsert(EntityKind::User, user_row(*u, *r, *a)).unwrap();
                        users.insert(*u, (*r, *a));
                        // The same transaction's later event sees the new values.
                        event(&mut txn, &users, *u % 5, Some(*u), 1.0, 10);
                    }
                    CohortStep::DeleteUser(u) => {
                        txn.delete(EntityKind::User, EntityId(*u)).unwrap();
                        users.remove(u);
                    }
                    CohortStep::Checkpoint => {
                        engine.checkpoint().unwrap();
                    }
                }
                if !txn.is_empty() {
                    txn.commit().unwrap();
                } else {
                    drop(txn);
                }
                check_cohorts(&engine, &model, t0());
                if i == steps.len() / 2 {
                    let copy = tempfile::tempdir().unwrap();
                    copy_dir(dir.path(), copy.path());
                    crashed = Some((copy, model.clone()));
                }
            }
            if let Some((copy, want)) = crashed {
                let replayed = open(copy.path(), &clock);
                check_cohorts(&replayed, &want, t0());
            }
            drop(engine);
            let engine = open(dir.path(), &clock);
            check_cohorts(&engine, &model, t0());
        }
    }
}

/// `ALTER SIGNAL … ADD COHORTS` builds the new cohorts from the history — Parquet files
/// and memory alike — filing each past event by its user's region at the ALTER; later
/// events count as they arrive; a crash copy taken right after the ALTER and a reopen
/// give the same state; an ALTER sharing its transaction with events is refused whole.
#[test]
fn add_cohorts_backfills_from_the_history_and_survives_crash() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("region", ColumnType::Text),
        ColumnDef::new("age", ColumnType::Text),
    ];
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::CreateTable(
        TableDef::new(EntityKind::User, cols, Vec::new()).unwrap(),
    ))
    .unwrap();
    let def = SignalDef::new("tap", EntityKind::Item, DecaySpec::None, [Window::All]).unwrap();
    txn.schema_change(SchemaChange::CreateSignal(def)).unwrap();
    txn.commit().unwrap();
    let mut n = 0i64;
    let mut events = |engine: &Engine, users: &[(u64, Option<usize>)]| {
        let mut txn = engine.begin();
        for &(u, r) in users {
            txn.upsert(EntityKind::User, user_row(u, r, None)).unwrap();
        }
        for k in 0..30u64 {
            n += 1;
            let ts = Timestamp(t0().0 - n * 1_000_000);
            txn.signal(
                "tap",
                EntityId(k % 4),
                Some(EntityId(k % 5)),
                1.0 + (k % 3) as f64,
                Some(ts),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    };
    events(
        &engine,
        &[(0, Some(0)), (1, Some(1)), (2, Some(0)), (3, None)],
    );
    engine.checkpoint().unwrap(); // these events go to Parquet files
    events(&engine, &[(0, Some(2)), (3, Some(1))]); // these stay in memory
    // Where every past event counts: by its user's region now (user 4 has no row).
    let now: HashMap<u64, usize> = HashMap::from([(0, 2), (1, 1), (2, 0), (3, 1)]);
    let mut want: HashMap<(usize, u64), f64> = HashMap::new();
    for m in 1..=60i64 {
        let k = ((m - 1) % 30) as u64;
        if let Some(&r) = now.get(&(k % 5)) {
            *want.entry((r, k % 4)).or_default() += 1.0 + (k % 3) as f64;
        }
    }
    let add = vec![tidal_core::CohortDim::new(vec!["region".into()])];
    // Not with events in the same transaction.
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::AlterSignalCohorts {
        name: "tap".into(),
        id: SignalId(0),
        add: add.clone(),
    })
    .unwrap();
    txn.signal("tap", EntityId(1), Some(EntityId(1)), 1.0, Some(t0()))
        .unwrap();
    let err = txn.commit().unwrap_err();
    assert!(
        err.to_string()
            .contains("run it in a transaction without events"),
        "{err}"
    );
    assert!(engine.schema().signal("tap").unwrap().cohorts.is_empty());
    let mut txn = engine.begin();
    txn.schema_change(SchemaChange::AlterSignalCohorts {
        name: "tap".into(),
        id: SignalId(0),
        add,
    })
    .unwrap();
    txn.commit().unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let check = |engine: &Engine, extra: f64| {
        let view = engine.read();
        let def = view.signal("tap").unwrap().clone();
        assert_eq!(def.cohorts.len(), 1);
        view.with_cohorts(|c| {
            for (r, region) in COHORT_REGIONS.iter().enumerate() {
                for item in 0..4u64 {
                    let mut w = want.get(&(r, item)).copied().unwrap_or(0.0);
                    if r == 1 && item == 1 {
                        w += extra;
                    }
                    let got = c
                        .state
                        .key(def.id, 0, &[region])
                        .and_then(|k| c.state.ledger(def.id, 0, k))
                        .map_or(0.0, |l| l.total(def.id, EntityId(item)));
                    assert_eq!(got, w, "{region} item {item}");
                }
            }
        });
    };
    check(&engine, 0.0);
    // A later event by user 1 (region DE) counts there.
    let mut txn = engine.begin();
    txn.signal("tap", EntityId(1), Some(EntityId(1)), 5.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    check(&engine, 5.0);
    drop(engine);
    check(&open(dir.path(), &clock), 5.0);
    check(&open(copy.path(), &clock), 0.0);
}

fn metric<'a>(
    metrics: &'a [tidal_core::metrics::Metric],
    name: &str,
) -> &'a tidal_core::metrics::MetricValue {
    &metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .value
}

#[test]
fn metrics_count_commits_fsyncs_checkpoints_and_replay() {
    use tidal_core::metrics::MetricValue::{Counter, Gauge, Histogram};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = open(dir.path(), &clock);
    setup(&engine);
    let mut last = 0;
    for i in 0..5u64 {
        let mut txn = engine.begin();
        txn.signal("view", EntityId(i + 1), None, 1.0, None)
            .unwrap();
        last = txn.commit().unwrap().lsn;
    }
    let m = engine.metrics();
    let Counter(commits) = metric(&m, "tidal_wal_commits") else {
        panic!("commits is not a counter")
    };
    let Counter(batches) = metric(&m, "tidal_wal_batches") else {
        panic!("batches is not a counter")
    };
    assert_eq!(*commits, 6, "one schema transaction and five signal writes");
    let Histogram(fsync) = metric(&m, "tidal_wal_fsync_seconds") else {
        panic!("fsync is not a histogram")
    };
    assert_eq!(fsync.count, *batches, "one fsync per batch");
    assert!(fsync.sum > 0.0);
    let Histogram(sizes) = metric(&m, "tidal_wal_batch_transactions") else {
        panic!("batch sizes is not a histogram")
    };
    assert_eq!(sizes.sum as u64, *commits);
    assert_eq!(metric(&m, "tidal_wal_last_lsn"), &Gauge(last as f64));
    let ledger = m
        .iter()
        .find(|x| x.name == "tidal_memory_bytes" && x.labels == [("part", "ledger".into())])
        .unwrap();
    assert!(matches!(ledger.value, Gauge(b) if b > 0.0));

    let stats = engine.checkpoint().unwrap();
    let m = engine.metrics();
    let Histogram(ckpt) = metric(&m, "tidal_checkpoint_seconds") else {
        panic!("checkpoint is not a histogram")
    };
    assert_eq!(ckpt.count, 1);
    assert_eq!(
        metric(&m, "tidal_checkpoint_last_bytes"),
        &Gauge(stats.bytes as f64)
    );
    assert_eq!(metric(&m, "tidal_checkpoint_failures"), &Counter(0));

    // Two more writes after the checkpoint are what the next open replays.
    for i in 0..2u64 {
        let mut txn = engine.begin();
        txn.signal("view", EntityId(i + 1), None, 1.0, None)
            .unwrap();
        txn.commit().unwrap();
    }
    // A copy of the live directory is what a kill -9 leaves: no shutdown checkpoint.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let reopened = open(crashed.path(), &clock);
    let m = reopened.metrics();
    // Everything in the retained segments is read; what the checkpoint covers is skipped.
    assert!(
        matches!(metric(&m, "tidal_recovery_read_transactions"), Gauge(n) if *n >= 2.0),
        "{m:?}"
    );
    assert!(matches!(metric(&m, "tidal_recovery_seconds"), Gauge(s) if *s > 0.0));
    assert_eq!(
        metric(&m, "tidal_wal_commits"),
        &Counter(0),
        "counters start at open"
    );
}
