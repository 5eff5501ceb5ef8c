//! Bad input gets a typed error and applies nothing.

use std::sync::Arc;

use tidal::{
    ColumnDef, ColumnType, Config, CoreError, Database, DecaySpec, EngineError, EntityKind, Error,
    ErrorClass, Event, ManualClock, SignalDef, TableDef, Timestamp, Value, Window,
};

fn open(dir: &std::path::Path, clock: &ManualClock) -> Database {
    let mut c = Config::new(dir).with_clock(Arc::new(clock.clone()));
    c.checkpoint_wal_bytes = None;
    Database::open_with(c).unwrap()
}

fn core_err(e: Error) -> CoreError {
    match e {
        Error::Engine(EngineError::Core(c)) => c,
        other => panic!("expected a core error, got {other:?}"),
    }
}

#[test]
fn invalid_schema_definitions_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::parse("2026-11-25 10:00:00").unwrap());
    let db = open(dir.path(), &clock);
    let w = Window::parse("1h").unwrap();
    db.create_signal(SignalDef::new("like", EntityKind::Item, DecaySpec::None, [w]).unwrap())
        .unwrap();
    let dup =
        db.create_signal(SignalDef::new("like", EntityKind::Item, DecaySpec::None, [w]).unwrap());
    let e = core_err(dup.unwrap_err());
    assert_eq!(
        e,
        CoreError::DuplicateSignal {
            name: "like".into()
        }
    );
    // SQL.md §1: an invalid definition, 42601/22023 (not 42710).
    assert_eq!(e.class(), ErrorClass::InvalidParameter);
    assert!(matches!(
        SignalDef::new("bad name", EntityKind::Item, DecaySpec::None, [w]),
        Err(CoreError::BadIdentifier { .. })
    ));
    assert!(matches!(
        DecaySpec::exponential("0 seconds"),
        Err(CoreError::HalfLifeOutOfRange { .. })
    ));
    assert!(matches!(
        DecaySpec::exponential("-3 days"),
        Err(CoreError::HalfLifeOutOfRange { .. })
    ));
    assert!(matches!(
        Window::parse("91d"),
        Err(CoreError::BadWindow { .. })
    ));
    assert!(matches!(
        Window::parse("1w"),
        Err(CoreError::BadWindow { .. })
    ));
    let no_id = TableDef::new(
        EntityKind::Item,
        vec![ColumnDef::new("title", ColumnType::Text)],
        vec![],
    );
    assert!(matches!(no_id, Err(CoreError::BadColumn { .. })));
    // Nothing was added by the failures.
    assert_eq!(db.schema().signals().count(), 1);
}

#[test]
fn bad_events_abort_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::parse("2026-11-25 10:00:00").unwrap();
    let clock = ManualClock::new(now);
    let db = open(dir.path(), &clock);
    let w = Window::parse("24h").unwrap();
    db.create_signal(
        SignalDef::new(
            "view",
            EntityKind::Item,
            DecaySpec::exponential("7 days").unwrap(),
            [w, Window::All],
        )
        .unwrap(),
    )
    .unwrap();
    let good = Event {
        signal: "view",
        entity: 1,
        user: Some(9),
        weight: 1.0,
        ts: Some(now),
    };
    type Case<'a> = (Event<'a>, fn(&CoreError) -> bool);
    let cases: Vec<Case<'_>> = vec![
        (
            Event {
                signal: "nope",
                ..good
            },
            |e| matches!(e, CoreError::UnknownSignal { .. }),
        ),
        (
            Event {
                weight: f64::NAN,
                ..good
            },
            |e| matches!(e, CoreError::NonFiniteWeight { .. }),
        ),
        (
            Event {
                weight: f64::INFINITY,
                ..good
            },
            |e| matches!(e, CoreError::NonFiniteWeight { .. }),
        ),
        (
            Event {
                weight: f64::NEG_INFINITY,
                ..good
            },
            |e| matches!(e, CoreError::NonFiniteWeight { .. }),
        ),
        (
            Event {
                ts: Some(Timestamp(now.0 + 5 * 60_000_000 + 1)),
                ..good
            },
            |e| matches!(e, CoreError::FutureTimestamp { .. }),
        ),
    ];
    for (bad, check) in cases {
        let batch = [
            good,
            Event { entity: 2, ..good },
            bad,
            Event { entity: 3, ..good },
        ];
        let err = core_err(db.signals(&batch).unwrap_err());
        assert!(check(&err), "unexpected error {err:?}");
        for e in 1..=3 {
            assert_eq!(
                db.signal_total("view", e).unwrap(),
                0.0,
                "event applied from a failed batch"
            );
        }
    }
    // Exactly 5 minutes ahead is allowed.
    db.signal(
        "view",
        1,
        None,
        1.0,
        Some(Timestamp(now.0 + 5 * 60_000_000)),
    )
    .unwrap();
    assert_eq!(db.signal_total("view", 1).unwrap(), 1.0);
    // Reading with an undeclared window or 'all' for velocity is an error.
    assert!(matches!(
        core_err(db.window_count("view", 1, "1h", None).unwrap_err()),
        CoreError::UndeclaredWindow { .. }
    ));
    assert!(matches!(
        core_err(db.velocity("view", 1, "all", None).unwrap_err()),
        CoreError::AllWindowNotAllowed { .. }
    ));
    assert!(matches!(
        core_err(db.decay("nope", 1, None).unwrap_err()),
        CoreError::UnknownSignal { .. }
    ));
    // Unknown entities read 0, not an error.
    assert_eq!(db.decay("view", 999, None).unwrap(), 0.0);
    assert_eq!(db.last_signal_at("view", 999).unwrap(), None);
}

#[test]
fn bad_rows_abort_the_whole_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::parse("2026-11-25 10:00:00").unwrap());
    let db = open(dir.path(), &clock);
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("embedding", ColumnType::Vector(3)),
    ];
    db.create_table(TableDef::new(EntityKind::Item, cols, vec![]).unwrap())
        .unwrap();
    db.insert(
        EntityKind::Item,
        vec![Value::Int(1), Value::Vector(vec![0.1, 0.2, 0.3])],
    )
    .unwrap();
    // Duplicate id without upsert: rejected at commit, and the other row of the same
    // statement is not applied either.
    let mut txn = db.engine().begin();
    txn.insert(EntityKind::Item, vec![Value::Int(2), Value::Null])
        .unwrap();
    txn.insert(EntityKind::Item, vec![Value::Int(1), Value::Null])
        .unwrap();
    let err = txn.commit().unwrap_err();
    assert!(matches!(err, EngineError::DuplicateKey { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::UniqueViolation);
    assert!(db.get(EntityKind::Item, 2).unwrap().is_none());
    // Wrong vector dimension and NULL id are rejected before anything is written.
    assert!(
        db.insert(
            EntityKind::Item,
            vec![Value::Int(3), Value::Vector(vec![0.1])]
        )
        .is_err()
    );
    let null_id = db
        .insert(EntityKind::Item, vec![Value::Null, Value::Null])
        .unwrap_err();
    assert!(matches!(null_id, Error::Engine(EngineError::NullId { .. })));
    assert_eq!(null_id.class(), ErrorClass::NotNull);
    // Later writes still work.
    db.upsert(EntityKind::Item, vec![Value::Int(1), Value::Null])
        .unwrap();
    assert_eq!(
        db.get(EntityKind::Item, 1).unwrap(),
        Some(vec![Value::Int(1), Value::Null])
    );
}
