//! SQL over a real engine: entity scans with id pushdown and the signal functions.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::util::pretty::pretty_format_batches;
use tidal_core::{
    ColumnDef, ColumnType, DecaySpec, EntityId, EntityKind, ErrorClass, ManualClock, SchemaChange,
    SignalDef, TableDef, Timestamp, Value, Window,
};
use tidal_engine::{Engine, EngineConfig};

use crate::{SqlError, SqlSession};

const T0: &str = "2026-11-20 12:00:00";

fn t0() -> Timestamp {
    Timestamp::parse(T0).unwrap()
}

fn setup() -> (tempfile::TempDir, SqlSession) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::now_system());
    let mut c = EngineConfig::new(dir.path()).with_clock(Arc::new(clock));
    c.checkpoint_wal_bytes = None;
    let engine = Arc::new(Engine::open(c).unwrap());
    let mut txn = engine.begin();
    let w = |s: &[&str]| {
        s.iter()
            .map(|w| Window::parse(w).unwrap())
            .collect::<Vec<_>>()
    };
    let view = SignalDef::new(
        "view",
        EntityKind::Item,
        DecaySpec::exponential("1 hour").unwrap(),
        w(&["1h", "24h"]),
    );
    txn.schema_change(SchemaChange::CreateSignal(view.unwrap()))
        .unwrap();
    let like = SignalDef::new("like", EntityKind::Item, DecaySpec::None, w(&["all"]));
    txn.schema_change(SchemaChange::CreateSignal(like.unwrap()))
        .unwrap();
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("title", ColumnType::Text),
        ColumnDef::new("score", ColumnType::Double),
        ColumnDef::new("tags", ColumnType::TextArray),
        ColumnDef::new("embedding", ColumnType::Vector(2)),
        ColumnDef::new("created_at", ColumnType::Timestamp),
    ];
    txn.schema_change(SchemaChange::CreateTable(
        TableDef::new(EntityKind::Item, cols, vec![]).unwrap(),
    ))
    .unwrap();
    txn.commit().unwrap();
    let mut txn = engine.begin();
    for id in 1..=20i64 {
        txn.upsert(
            EntityKind::Item,
            vec![
                Value::Int(id),
                Value::Text(format!("item {id}")),
                if id % 5 == 0 {
                    Value::Null
                } else {
                    Value::Double(id as f64 / 2.0)
                },
                Value::TextArray(vec!["a".into(), format!("t{id}")]),
                Value::Vector(vec![id as f32, 0.5]),
                Value::Timestamp(t0()),
            ],
        )
        .unwrap();
    }
    // Item 1: views 2 h and 1 h before T0 and at T0; item 2: one like of weight 3.
    for h in [2, 1, 0] {
        txn.signal(
            "view",
            EntityId(1),
            None,
            1.0,
            Some(Timestamp(t0().0 - h * 3_600_000_000)),
        )
        .unwrap();
    }
    txn.signal("like", EntityId(2), Some(EntityId(9)), 3.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    let sql = SqlSession::new(engine).unwrap();
    (dir, sql)
}

async fn query(sql: &SqlSession, q: &str) -> Vec<RecordBatch> {
    sql.sql(q).await.unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn f64s(batches: &[RecordBatch], col: usize) -> Vec<Option<f64>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(col)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    i64_column(batches, |_| 0)
}

/// The BIGINT column named `name` (RETRIEVE puts `id` after `rank`).
fn ids_named(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    i64_column(batches, |b| b.schema().index_of(name).unwrap())
}

fn i64_column(batches: &[RecordBatch], col: impl Fn(&RecordBatch) -> usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(col(b))
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test]
async fn entity_table_scans_with_typed_columns() {
    let (_dir, sql) = setup();
    let b = query(&sql, "SELECT id, title, score, tags, embedding, created_at FROM items WHERE id IN (5, 1) ORDER BY id").await;
    let text = pretty_format_batches(&b).unwrap().to_string();
    assert!(
        text.contains("| 1  | item 1 | 0.5   | [a, t1] | [1.0, 0.5]"),
        "{text}"
    );
    assert!(
        text.contains("| 5  | item 5 |       | [a, t5] | [5.0, 0.5]"),
        "{text}"
    );
    assert!(text.contains("2026-11-20T12:00:00"), "{text}");
    let titles = query(
        &sql,
        "SELECT title FROM items WHERE id BETWEEN 3 AND 4 ORDER BY id",
    )
    .await;
    let a = titles[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!((a.value(0), a.value(1)), ("item 3", "item 4"));
    assert_eq!(
        ids(&query(&sql, "SELECT id FROM items WHERE id > 17 ORDER BY id").await),
        vec![18, 19, 20]
    );
    assert_eq!(
        ids(&query(
            &sql,
            "SELECT id FROM items WHERE id = 7 AND title = 'item 7'"
        )
        .await),
        vec![7]
    );
    assert!(ids(&query(&sql, "SELECT id FROM items WHERE id = 7 AND id = 8").await).is_empty());
    assert!(ids(&query(&sql, "SELECT id FROM items WHERE id < 0").await).is_empty());
    let n = query(&sql, "SELECT count(*) FROM items WHERE score IS NULL").await;
    assert_eq!(
        n[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        4
    );
    assert_eq!(
        ids(&query(&sql, "SELECT id FROM items ORDER BY id LIMIT 3").await),
        vec![1, 2, 3]
    );
    // information_schema sees the entity tables.
    let t = query(
        &sql,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert!(
        pretty_format_batches(&t)
            .unwrap()
            .to_string()
            .contains("items")
    );
}

#[tokio::test]
async fn signal_functions_read_exact_values() {
    let (_dir, sql) = setup();
    let at = format!("TIMESTAMP '{T0}'");
    let q = format!(
        "SELECT id, decay('view', id, {at}), window_count('view', id, '1h', {at}), \
         window_count('view', id, '24h', {at}), velocity('view', id, '24h', {at}), \
         acceleration('view', id, '1h', {at}), signal_total('like', id), decay('like', id, {at}) \
         FROM items WHERE id <= 3 ORDER BY id"
    );
    let b = query(&sql, &q).await;
    // decay at T0 of events at T0-2h, T0-1h, T0 with a 1 h half-life: 1/4 + 1/2 + 1.
    assert_eq!(f64s(&b, 1)[0], Some(1.75));
    assert_eq!(
        f64s(&b, 2),
        vec![Some(1.0), Some(0.0), Some(0.0)],
        "1h window"
    );
    assert_eq!(
        f64s(&b, 3),
        vec![Some(3.0), Some(0.0), Some(0.0)],
        "24h window"
    );
    assert_eq!(f64s(&b, 4)[0], Some(3.0 / 24.0));
    // (at-1h, at] holds 1 event; (at-2h, at-1h] holds 1 (T0-1h); acceleration 0.
    assert_eq!(f64s(&b, 5)[0], Some(0.0));
    assert_eq!(f64s(&b, 6), vec![Some(0.0), Some(3.0), Some(0.0)]);
    assert_eq!(f64s(&b, 7)[1], Some(3.0), "DECAY NONE is the plain sum");
    // An hour later the score halves.
    let later = query(
        &sql,
        &format!("SELECT decay('view', 1, {at} + INTERVAL '1 hour')"),
    )
    .await;
    assert_eq!(f64s(&later, 0), vec![Some(0.875)]);
    let last = query(
        &sql,
        "SELECT last_signal_at('view', 1), last_signal_at('view', 2)",
    )
    .await;
    let text = pretty_format_batches(&last).unwrap().to_string();
    assert!(text.contains("2026-11-20T12:00:00"), "{text}");
    // NULL entity → NULL; an entity without events → 0.
    let b = query(
        &sql,
        "SELECT decay('view', NULL), decay('view', 999), signal_total('like', -1)",
    )
    .await;
    assert_eq!(
        (f64s(&b, 0)[0], f64s(&b, 1)[0], f64s(&b, 2)[0]),
        (None, Some(0.0), Some(0.0))
    );
}

#[tokio::test]
async fn default_at_is_one_instant_per_statement() {
    let (_dir, sql) = setup();
    // Without `at`, every call in the statement reads at the statement's start time.
    let b = query(
        &sql,
        "SELECT decay('view', id) - decay('view', id, now()) AS d FROM items WHERE id = 1",
    )
    .await;
    assert_eq!(f64s(&b, 0), vec![Some(0.0)]);
    // Also when every argument is a constant: the planner folds such calls before it
    // simplifies them, and must not read them at the folding instant (the engine's
    // clock, here a manual one behind the wall clock) instead of the statement start.
    let b = query(
        &sql,
        "SELECT decay('view', 1) - decay('view', 1, now()), \
         window_count('view', 1, '1h') - window_count('view', 1, '1h', now()), \
         velocity('view', 1, '1h') - velocity('view', 1, '1h', now()), \
         acceleration('view', 1, '1h') - acceleration('view', 1, '1h', now())",
    )
    .await;
    for col in 0..4 {
        assert_eq!(f64s(&b, col), vec![Some(0.0)], "column {col}");
    }
    let plan = query(&sql, "EXPLAIN SELECT decay('view', id) FROM items").await;
    let text = pretty_format_batches(&plan).unwrap().to_string();
    assert!(
        text.contains("decay(Utf8(\"view\"), items.id, TimestampMicrosecond("),
        "{text}"
    );
}

#[tokio::test]
async fn errors_are_typed() {
    let (_dir, sql) = setup();
    let class = |e: SqlError| e.class();
    let e = sql
        .sql("SELECT decay('nope', id) FROM items")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::UndefinedObject, "{e:?}");
    assert_eq!(class(e), ErrorClass::UndefinedObject);
    let e = sql
        .sql("SELECT window_count('view', id, '2h') FROM items")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no window 2h"), "{e}");
    assert_eq!(e.class(), ErrorClass::InvalidParameter);
    let e = sql
        .sql("SELECT velocity('like', id, 'all') FROM items")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidParameter);
    let e = sql
        .sql("SELECT decay(title, id) FROM items")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("constant string"), "{e}");
    let e = sql
        .sql("SELECT decay('view') FROM items")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("decay(signal, entity [, at])"),
        "{e}"
    );
    let e = sql.sql("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::UndefinedObject);
    assert!(sql.sql("CREATE TABLE t (a INT)").await.is_err());
    assert!(sql.sql("SELEC 1").await.unwrap_err().class() == ErrorClass::Syntax);
}

#[tokio::test]
async fn large_scans_stream_in_batches_and_stop_early() {
    let (_dir, sql) = setup();
    let engine = sql.engine().clone();
    let mut txn = engine.begin();
    for id in 100..30_100i64 {
        let row = vec![
            Value::Int(id),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ];
        txn.upsert(EntityKind::Item, row).unwrap();
    }
    txn.commit().unwrap();
    let n = query(&sql, "SELECT count(*), min(id), max(id) FROM items").await;
    let col = |i: usize| {
        n[0].column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!((col(0), col(1), col(2)), (30_020, 1, 30_099));
    // Several batches of SCAN_BATCH_ROWS come back, each bounded.
    let all = query(&sql, "SELECT id FROM items").await;
    assert!(all.len() >= 4 && all.iter().all(|b| b.num_rows() <= crate::SCAN_BATCH_ROWS));
    assert_eq!(
        ids(&query(&sql, "SELECT id FROM items LIMIT 3").await).len(),
        3
    );
    assert_eq!(
        ids(&query(
            &sql,
            "SELECT id FROM items WHERE id >= 30000 ORDER BY id DESC LIMIT 2"
        )
        .await),
        vec![30_099, 30_098]
    );
}

#[tokio::test]
async fn signal_ddl_through_sql() {
    let (_dir, sql) = setup();
    query(&sql, "CREATE SIGNAL skip ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('1h', '24h', '1h') MARKS hidden").await;
    let b = query(&sql, "SHOW SIGNALS").await;
    let text = pretty_format_batches(&b).unwrap().to_string();
    assert!(
        text.contains("| skip | items  | exponential | 86400.0           | 1h,1d   | hidden |"),
        "{text}"
    );
    assert!(text.contains("| like | items  | none        |"), "{text}");
    // The new signal is usable at once.
    let engine = sql.engine().clone();
    let mut txn = engine.begin();
    txn.signal("skip", EntityId(3), None, 2.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    let b = query(&sql, "SELECT signal_total('skip', 3)").await;
    assert_eq!(f64s(&b, 0), vec![Some(2.0)]);
    let e = sql
        .sql("CREATE SIGNAL skip ON items DECAY NONE")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidParameter, "{e}");
    // IF NOT EXISTS leaves the existing signal as it is, definition included.
    query(
        &sql,
        "CREATE SIGNAL IF NOT EXISTS skip ON items DECAY NONE WINDOWS ('7d')",
    )
    .await;
    let text = pretty_format_batches(&query(&sql, "SHOW SIGNALS").await)
        .unwrap()
        .to_string();
    assert!(text.contains("| skip | items  | exponential |"), "{text}");
    query(
        &sql,
        "create signal if not exists fresh on items decay none windows ('7d')",
    )
    .await;
    assert!(sql.engine().schema().signal("fresh").is_ok());
    let e = sql
        .sql("CREATE SIGNAL bad ON items DECAY NONE WINDOWS ('91d')")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Syntax, "{e}");
    let e = sql
        .sql("CREATE SIGNAL bad ON items DECAY EXPONENTIAL HALF_LIFE '0 s'")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidParameter, "{e}");
    query(&sql, "DROP SIGNAL skip").await;
    query(&sql, "DROP SIGNAL IF EXISTS skip").await;
    let e = sql.sql("DROP SIGNAL skip").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::UndefinedObject, "{e}");
    let e = sql.sql("SELECT signal_total('skip', 3)").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::UndefinedObject, "{e}");
}

#[tokio::test]
async fn entity_table_ddl_through_sql() {
    let (_dir, sql) = setup();
    query(
        &sql,
        "CREATE TABLE users (id BIGINT PRIMARY KEY, region TEXT, age INT, score DOUBLE PRECISION, \
         w REAL, active BOOLEAN, seen_at TIMESTAMP, langs TEXT[], pref VECTOR(4)) WITH (kind = 'user')",
    )
    .await;
    let def = sql
        .engine()
        .schema()
        .table(EntityKind::User)
        .unwrap()
        .clone();
    let types: Vec<ColumnType> = def.columns.iter().map(|c| c.ty).collect();
    use ColumnType::*;
    assert_eq!(
        types,
        vec![
            BigInt,
            Text,
            Int,
            Double,
            Real,
            Boolean,
            Timestamp,
            TextArray,
            Vector(4)
        ]
    );
    let b = query(&sql, "SELECT count(*) FROM users").await;
    assert_eq!(
        b[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        0
    );
    let class = |r: Result<Vec<RecordBatch>, SqlError>| r.unwrap_err().class();
    assert_eq!(
        class(
            sql.sql("CREATE TABLE users (id BIGINT) WITH (kind = 'user')")
                .await
        ),
        ErrorClass::DuplicateObject
    );
    // IF NOT EXISTS: the existing table stays as it is.
    query(
        &sql,
        "CREATE TABLE IF NOT EXISTS users (id BIGINT, other TEXT) WITH (kind = 'user')",
    )
    .await;
    assert_eq!(sql.engine().schema().table(EntityKind::User).unwrap(), &def);
    query(
        &sql,
        "CREATE TABLE IF NOT EXISTS creators (id BIGINT, name TEXT) WITH (kind = 'creator')",
    )
    .await;
    assert!(sql.engine().schema().table(EntityKind::Creator).is_ok());
    query(&sql, "DROP TABLE creators").await;
    assert_eq!(
        class(sql.sql("CREATE TABLE posts (id BIGINT)").await),
        ErrorClass::Syntax
    );
    assert_eq!(
        class(
            sql.sql("CREATE TABLE creators (id BIGINT, x JSON) WITH (kind = 'creator')")
                .await
        ),
        ErrorClass::InvalidParameter
    );
    assert_eq!(
        class(
            sql.sql("CREATE TABLE creators (name TEXT) WITH (kind = 'creator')")
                .await
        ),
        ErrorClass::InvalidParameter
    );
    assert_eq!(
        class(
            sql.sql("CREATE TABLE people (id BIGINT) WITH (kind = 'user')")
                .await
        ),
        ErrorClass::Syntax
    );
    query(&sql, "DROP TABLE users").await;
    query(&sql, "DROP TABLE IF EXISTS users").await;
    assert_eq!(
        class(sql.sql("DROP TABLE users").await),
        ErrorClass::UndefinedObject
    );
    assert_eq!(
        class(sql.sql("SELECT * FROM users").await),
        ErrorClass::UndefinedObject
    );
}

#[tokio::test]
async fn insert_into_signals_is_atomic_and_durable() {
    let (_dir, sql) = setup();
    let b = query(
        &sql,
        "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES \
         ('like', 42, 7, 1.0, '2026-11-20 10:00:00'), ('view', 42, 7, 1.0, '2026-11-20 10:00:01'), \
         ('like', 43, NULL, 2.5, '2026-11-20 10:00:02')",
    )
    .await;
    let count = |b: &[RecordBatch]| {
        b[0].column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(count(&b), 3);
    let t = query(
        &sql,
        "SELECT signal_total('like', 42), signal_total('like', 43), signal_total('view', 42)",
    )
    .await;
    assert_eq!(
        (f64s(&t, 0)[0], f64s(&t, 1)[0], f64s(&t, 2)[0]),
        (Some(1.0), Some(2.5), Some(1.0))
    );
    // Exact duplicates within the dedup window count once.
    let b = query(
        &sql,
        "INSERT INTO signals VALUES ('like', 42, 7, 1.0, '2026-11-20 10:00:00')",
    )
    .await;
    assert_eq!(count(&b), 0);
    // Defaults: weight 1.0, ts now; INSERT ... SELECT.
    let b = query(
        &sql,
        "INSERT INTO signals (signal, entity_id) SELECT 'like', id FROM items WHERE id <= 3",
    )
    .await;
    assert_eq!(count(&b), 3);
    let t = query(
        &sql,
        "SELECT signal_total('like', 1), window_count('like', 1, 'all')",
    )
    .await;
    assert_eq!((f64s(&t, 0)[0], f64s(&t, 1)[0]), (Some(1.0), Some(1.0)));
    // A bad row aborts the whole statement.
    let class = |r: Result<Vec<RecordBatch>, SqlError>| r.unwrap_err().class();
    let bad = [
        (
            "INSERT INTO signals VALUES ('like', 50, 1, 1.0, '2026-11-20 10:00:00'), ('nope', 50, 1, 1.0, '2026-11-20 10:00:00')",
            ErrorClass::UndefinedObject,
        ),
        (
            "INSERT INTO signals VALUES ('like', 50, 1, 1.0, '2026-11-20 10:00:00'), ('like', 50, 1, 'NaN'::double, '2026-11-20 10:00:00')",
            ErrorClass::InvalidParameter,
        ),
        (
            "INSERT INTO signals VALUES ('like', 50, 1, 1.0, '2026-11-20 10:00:00'), ('like', 50, 1, 1.0, '2999-01-01 00:00:00')",
            ErrorClass::InvalidParameter,
        ),
        (
            "INSERT INTO signals VALUES ('like', 50, 1, 1.0, '2026-11-20 10:00:00'), ('like', NULL, 1, 1.0, '2026-11-20 10:00:00')",
            ErrorClass::NotNull,
        ),
        (
            "INSERT INTO signals VALUES ('like', 50, 1, 1.0, 'not a time')",
            ErrorClass::DataException,
        ),
        (
            "INSERT INTO signals (signal, entity, ts) VALUES ('like', 50, '2026-11-20')",
            ErrorClass::UndefinedColumn,
        ),
        (
            "INSERT INTO signals (signal) VALUES ('like')",
            ErrorClass::DataException,
        ),
    ];
    for (q, expected) in bad {
        assert_eq!(class(sql.sql(q).await), expected, "{q}");
    }
    let t = query(&sql, "SELECT signal_total('like', 50)").await;
    assert_eq!(f64s(&t, 0), vec![Some(0.0)], "a failed INSERT applied rows");
}

#[tokio::test]
async fn insert_into_entity_tables_with_on_conflict() {
    let (_dir, sql) = setup();
    let count = |b: &[RecordBatch]| {
        b[0].column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0)
    };
    let b = query(
        &sql,
        "INSERT INTO items (id, title, tags, embedding, created_at) VALUES \
         (100, 'piano', '{a,\"b c\"}', '[0.5, 1.5]', '2026-11-25 10:00:00'), \
         (101, 'violin', NULL, NULL, NULL)",
    )
    .await;
    assert_eq!(count(&b), 2);
    let rows = query(&sql, "SELECT id, title, score, tags, embedding, created_at FROM items WHERE id >= 100 ORDER BY id").await;
    let text = pretty_format_batches(&rows).unwrap().to_string();
    assert!(
        text.contains("| 100 | piano  |       | [a, b c] | [0.5, 1.5] | 2026-11-25T10:00:00 |"),
        "{text}"
    );
    // INSERT ... SELECT, and a duplicate id fails the whole statement.
    let class = |r: Result<Vec<RecordBatch>, SqlError>| r.unwrap_err().class();
    assert_eq!(
        class(
            sql.sql("INSERT INTO items (id, title) VALUES (102, 'x'), (100, 'dup')")
                .await
        ),
        ErrorClass::UniqueViolation
    );
    assert!(
        ids(&query(&sql, "SELECT id FROM items WHERE id = 102").await).is_empty(),
        "partial insert applied"
    );
    // ON CONFLICT DO NOTHING skips; DO UPDATE changes only the named columns.
    let b = query(&sql, "INSERT INTO items (id, title) VALUES (100, 'organ'), (103, 'drum') ON CONFLICT (id) DO NOTHING").await;
    assert_eq!(count(&b), 1);
    let b = query(&sql, "INSERT INTO items (id, title, score) VALUES (100, 'organ', 9.5) ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title").await;
    assert_eq!(count(&b), 1);
    let rows = query(
        &sql,
        "SELECT id, title, score, embedding FROM items WHERE id = 100",
    )
    .await;
    let text = pretty_format_batches(&rows).unwrap().to_string();
    assert!(
        text.contains("| 100 | organ |       | [0.5, 1.5] |"),
        "{text}"
    );
    // Bad values: wrong vector dimension, NULL id, text into a number.
    assert_eq!(
        class(
            sql.sql("INSERT INTO items (id, embedding) VALUES (104, '[1,2,3]')")
                .await
        ),
        ErrorClass::DataException
    );
    assert_eq!(
        class(
            sql.sql("INSERT INTO items (id, title) VALUES (NULL, 'x')")
                .await
        ),
        ErrorClass::NotNull
    );
    assert_eq!(
        class(
            sql.sql("INSERT INTO items (id, score) VALUES (105, 'abc')")
                .await
        ),
        ErrorClass::DataException
    );
    assert_eq!(
        class(
            sql.sql("INSERT INTO items (id, nope) VALUES (106, 1)")
                .await
        ),
        ErrorClass::UndefinedColumn
    );
    assert_eq!(class(sql.sql("INSERT INTO items (id, title) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET title = 'x'").await), ErrorClass::Syntax);
    let b = query(
        &sql,
        "INSERT INTO items (id, title) SELECT id + 1000, title FROM items WHERE id <= 3",
    )
    .await;
    assert_eq!(count(&b), 3);
    assert_eq!(
        ids(&query(&sql, "SELECT id FROM items WHERE id > 1000 ORDER BY id").await),
        vec![1001, 1002, 1003]
    );
}

#[tokio::test]
async fn update_and_delete_with_where() {
    let (_dir, sql) = setup();
    let count = |b: &[RecordBatch]| {
        b[0].column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0)
    };
    let b = query(
        &sql,
        "UPDATE items SET title = upper(title), score = score * 10 WHERE id BETWEEN 2 AND 4",
    )
    .await;
    assert_eq!(count(&b), 3);
    let rows = query(
        &sql,
        "SELECT id, title, score FROM items WHERE id <= 5 ORDER BY id",
    )
    .await;
    let text = pretty_format_batches(&rows).unwrap().to_string();
    assert!(text.contains("| 1  | item 1 | 0.5   |"), "{text}");
    assert!(text.contains("| 3  | ITEM 3 | 15.0  |"), "{text}");
    assert!(text.contains("| 5  | item 5 |       |"), "{text}");
    // Signal functions work in WHERE: delete items without views.
    let b = query(
        &sql,
        "DELETE FROM items WHERE signal_total('view', id) = 0 AND id > 10",
    )
    .await;
    assert_eq!(count(&b), 10);
    assert_eq!(
        ids(&query(&sql, "SELECT id FROM items WHERE id > 8 ORDER BY id").await),
        vec![9, 10]
    );
    let b = query(
        &sql,
        "DELETE FROM items WHERE id IN (SELECT id FROM items WHERE id > 9)",
    )
    .await;
    assert_eq!(count(&b), 1, "IN (subquery) keeps its filter");
    // A failing value aborts the whole UPDATE.
    let e = sql
        .sql("UPDATE items SET embedding = '[1,2,3]' WHERE id < 5")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::DataException, "{e}");
    let e = sql
        .sql("UPDATE items SET id = 5 WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Syntax);
    let e = sql.sql("UPDATE items SET nope = 1").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::UndefinedColumn, "{e}");
    let b = query(&sql, "DELETE FROM items").await;
    assert_eq!(count(&b), 9);
}

#[tokio::test]
async fn scoring_functions_match_their_formulas() {
    let (_dir, sql) = setup();
    let b = query(
        &sql,
        "SELECT hot(110, 10, TIMESTAMP '2026-11-20 12:00:00'), wilson(80, 100), wilson(0, 0), \
         wilson(80, 100, 1.96), controversy(10, 5), controversy(10, 0), \
         hn(11, now() - INTERVAL '8 hours'), hn(11, now() - INTERVAL '8 hours', 1.0), \
         freshness(now() - INTERVAL '2 days', INTERVAL '1 day'), freshness(now(), '6 hours')",
    )
    .await;
    let v: Vec<f64> = (0..10).map(|i| f64s(&b, i)[0].unwrap()).collect();
    let secs = t0().0 as f64 / 1e6;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(
        close(v[0], 2.0 + (secs - 1_134_028_003.0) / 45_000.0),
        "hot {}",
        v[0]
    );
    let wilson = |u: f64, n: f64, z: f64| {
        let p = u / n;
        (p + z * z / (2.0 * n) - z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt())
            / (1.0 + z * z / n)
    };
    assert!(
        close(v[1], wilson(80.0, 100.0, 1.281551565545)),
        "wilson {}",
        v[1]
    );
    assert_eq!(v[2], 0.0);
    assert!(close(v[3], wilson(80.0, 100.0, 1.96)));
    assert!(close(v[4], 15f64.powf(0.5)));
    assert_eq!(v[5], 0.0);
    assert!(close(v[6], 10.0 / 10f64.powf(1.8)), "hn {}", v[6]);
    assert!(close(v[7], 1.0), "hn gravity 1: {}", v[7]);
    assert!(close(v[8], 0.25), "freshness {}", v[8]);
    assert!(close(v[9], 1.0));
    let e = sql
        .sql("SELECT freshness(now(), INTERVAL '0 days')")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidParameter, "{e}");
    let e = sql.sql("SELECT hot(1, 2)").await.unwrap_err();
    assert!(e.to_string().contains("hot(ups, downs, created_at)"), "{e}");
}

#[tokio::test]
async fn signal_state_tables_list_active_pairs() {
    let (_dir, sql) = setup();
    let b = query(
        &sql,
        "SELECT entity_id, signal, total, last_ts FROM signal_state ORDER BY signal, entity_id",
    )
    .await;
    let text = pretty_format_batches(&b).unwrap().to_string();
    assert!(
        text.contains("| 2         | like   | 3.0   | 2026-11-20T12:00:00 |"),
        "{text}"
    );
    assert!(
        text.contains("| 1         | view   | 3.0   | 2026-11-20T12:00:00 |"),
        "{text}"
    );
    assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    // `score` is decay at the statement's planning time, which DataFusion stamps
    // separately from the logical start time the function uses: they differ by the
    // planning time (milliseconds in a debug build).
    let b = query(
        &sql,
        "SELECT score, decay('view', 1) FROM signal_state WHERE signal = 'view'",
    )
    .await;
    let (score, decay) = (f64s(&b, 0)[0].unwrap(), f64s(&b, 1)[0].unwrap());
    assert!(
        (score - decay).abs() <= 1e-3 * decay.abs(),
        "{score} vs {decay}"
    );
    let b = query(
        &sql,
        "SELECT entity_id, window, count FROM signal_windows ORDER BY signal, entity_id, window",
    )
    .await;
    let text = pretty_format_batches(&b).unwrap().to_string();
    assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 3, "{text}");
    assert!(text.contains("| 2         | all    | 3.0   |"), "{text}");
    let b = query(
        &sql,
        "SELECT velocity, acceleration FROM signal_windows WHERE window = 'all'",
    )
    .await;
    assert_eq!((f64s(&b, 0), f64s(&b, 1)), (vec![None], vec![None]));
    let b = query(
        &sql,
        "SELECT count(*) FROM signal_state s JOIN items i ON i.id = s.entity_id",
    )
    .await;
    assert_eq!(
        b[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        2
    );
}

fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

#[tokio::test]
async fn signals_table_reads_memory_and_parquet_history_identically() {
    let (_dir, sql) = setup();
    let base = query(&sql, "SELECT count(*) FROM signals").await;
    let base = base[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let mut values = Vec::new();
    for i in 0..300i64 {
        let sig = if i % 3 == 0 { "like" } else { "view" };
        let user = if i % 7 == 0 {
            "NULL".to_string()
        } else {
            (i % 11).to_string()
        };
        values.push(format!(
            "('{sig}', {}, {user}, {}.5, TIMESTAMP '2026-11-{:02} {:02}:00:00')",
            i % 13,
            i % 4,
            18 + i % 3,
            i % 24
        ));
    }
    let insert = format!(
        "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES {}",
        values.join(", ")
    );
    query(&sql, &insert).await;
    let queries = [
        "SELECT count(*), sum(weight) FROM signals",
        "SELECT signal, entity_id, user_id, weight, ts FROM signals \
         WHERE signal = 'like' AND entity_id = 3 ORDER BY ts, user_id",
        "SELECT count(*) FROM signals WHERE user_id IS NULL",
        "SELECT count(*) FROM signals \
         WHERE ts >= TIMESTAMP '2026-11-19' AND ts < TIMESTAMP '2026-11-20'",
        "SELECT count(*) FROM signals WHERE ts BETWEEN '2026-11-20 05:00:00' AND '2026-11-20 09:00:00'",
        "SELECT entity_id, count(*) AS n FROM signals GROUP BY entity_id ORDER BY n DESC, entity_id LIMIT 3",
        "SELECT ts FROM signals ORDER BY ts LIMIT 2",
    ];
    let mut before = Vec::new();
    for q in queries {
        before.push(text(&query(&sql, q).await));
    }
    assert!(
        before[0].contains(&format!("| {} ", base + 300)),
        "{}",
        before[0]
    );
    assert!(before[3].contains("| 100 "), "{}", before[3]);

    // After a checkpoint the same rows come from Parquet files, one per UTC day.
    sql.engine().checkpoint().unwrap();
    let snap = sql.engine().read().history().unwrap();
    assert_eq!(snap.files.len(), 3);
    assert!(snap.batches.is_empty());
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&text(&query(&sql, q).await), b, "{q}");
    }
    // A ts range of one day reads one file.
    let plan = text(
        &query(
            &sql,
            "EXPLAIN SELECT count(*) FROM signals \
             WHERE ts >= TIMESTAMP '2026-11-19' AND ts < TIMESTAMP '2026-11-20'",
        )
        .await,
    );
    assert_eq!(plan.matches(".parquet").count(), 1, "{plan}");

    // New events join the history from memory; both sources are read together.
    query(
        &sql,
        "INSERT INTO signals (signal, entity_id, weight, ts) VALUES ('like', 3, 9, '2026-11-20 23:59:59')",
    )
    .await;
    let both = text(&query(&sql, "SELECT count(*), sum(weight) FROM signals").await);

    assert!(both.contains(&format!("| {} ", base + 301)), "{both}");
    let empty = query(&sql, "SELECT * FROM signals WHERE signal = 'nope'").await;
    assert_eq!(empty.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}

/// SQL.md §1 and §4 name the SQLSTATE of these errors: 42601 (syntax) or 22023 (bad
/// parameter). A duplicate signal name was 42710 and a window that does not parse, given
/// to a function, was 42601.
#[tokio::test]
async fn contract_errors_have_the_contract_sqlstate_class() {
    let (_dir, sql) = setup();
    let cases = [
        // §1: invalid definitions.
        (
            "CREATE SIGNAL view ON items DECAY NONE",
            ErrorClass::InvalidParameter,
        ),
        (
            "CREATE SIGNAL \"VIEW\" ON items DECAY NONE",
            ErrorClass::InvalidParameter,
        ),
        (
            "CREATE SIGNAL \"bad name\" ON items DECAY NONE",
            ErrorClass::Syntax,
        ),
        ("CREATE SIGNAL 1abc ON items DECAY NONE", ErrorClass::Syntax),
        (
            "CREATE SIGNAL s ON items DECAY EXPONENTIAL HALF_LIFE '0 seconds'",
            ErrorClass::InvalidParameter,
        ),
        (
            "CREATE SIGNAL s ON items DECAY EXPONENTIAL HALF_LIFE '-1 day'",
            ErrorClass::InvalidParameter,
        ),
        (
            "CREATE SIGNAL s ON items DECAY EXPONENTIAL HALF_LIFE '11 years'",
            ErrorClass::InvalidParameter,
        ),
        (
            "CREATE SIGNAL s ON items DECAY EXPONENTIAL HALF_LIFE 'soon'",
            ErrorClass::Syntax,
        ),
        (
            "CREATE SIGNAL s ON items DECAY NONE WINDOWS ('5s')",
            ErrorClass::Syntax,
        ),
        (
            "CREATE SIGNAL s ON items DECAY NONE WINDOWS ('91d')",
            ErrorClass::Syntax,
        ),
        (
            "CREATE SIGNAL s ON items DECAY NONE WINDOWS ('1.5h')",
            ErrorClass::Syntax,
        ),
        (
            "CREATE SIGNAL s ON posts DECAY NONE",
            ErrorClass::InvalidParameter,
        ),
        // §4: windows of the read functions.
        (
            "SELECT window_count('view', 1, '7d')",
            ErrorClass::InvalidParameter,
        ),
        (
            "SELECT window_count('view', 1, '5s')",
            ErrorClass::InvalidParameter,
        ),
        (
            "SELECT velocity('view', 1, 'abc')",
            ErrorClass::InvalidParameter,
        ),
        (
            "SELECT acceleration('view', id, '91d') FROM items",
            ErrorClass::InvalidParameter,
        ),
        (
            "SELECT velocity('like', 1, 'all')",
            ErrorClass::InvalidParameter,
        ),
        (
            "SELECT acceleration('like', 1, 'all')",
            ErrorClass::InvalidParameter,
        ),
    ];
    for (q, expected) in cases {
        let e = sql.sql(q).await.unwrap_err();
        assert_eq!(e.class(), expected, "{q}: {e}");
    }
    let e = sql
        .sql("SELECT window_count('view', 1, '5s')")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid window \"5s\"") && e.contains("declared windows are 1h, 1d"),
        "{e}"
    );
}

/// A value in a statement that cannot be cast or parsed is bad data (22000), not an
/// internal error; signal functions refuse a fractional entity and a numeric `at`
/// instead of reading entity 1 or the epoch; a number is not a timestamp on INSERT.
#[tokio::test]
async fn bad_values_are_data_errors_not_internal_ones() {
    let (_dir, sql) = setup();
    let cases = [
        ("SELECT CAST('x' AS BIGINT)", ErrorClass::DataException),
        (
            "SELECT decay('view', 1, 'garbage')",
            ErrorClass::DataException,
        ),
        ("SELECT decay('view', 'x')", ErrorClass::DataException),
        ("SELECT decay('view', 1.5)", ErrorClass::Syntax),
        ("SELECT decay('view', 1, 5)", ErrorClass::Syntax),
        (
            "INSERT INTO signals VALUES ('like', 1, 1, 1.0, 1700000000)",
            ErrorClass::DataException,
        ),
        (
            "INSERT INTO items (id, created_at) VALUES (100, 1.5)",
            ErrorClass::DataException,
        ),
    ];
    for (q, expected) in cases {
        let e = sql.sql(q).await.unwrap_err();
        assert_eq!(e.class(), expected, "{q}: {e}");
    }
    let e = sql.sql("SELECT decay('view', 1.5)").await.unwrap_err();
    assert!(
        e.to_string().contains("the entity must be a BIGINT id"),
        "{e}"
    );
    let e = sql.sql("SELECT decay('view', 1, 5)").await.unwrap_err();
    assert!(e.to_string().contains("`at` must be a TIMESTAMP"), "{e}");
    // Text, timestamps and dates are still accepted where they were.
    query(
        &sql,
        "SELECT decay('view', '1', '2026-11-20 12:00:00'), decay('view', 1, DATE '2026-11-20'), \
         decay('view', CAST(1 AS INT), TIMESTAMP '2026-11-20 12:00:00')",
    )
    .await;
    let b = query(&sql, "SELECT count(*) FROM items WHERE id = 100").await;
    assert_eq!(
        b[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        0
    );
}

#[tokio::test]
async fn explain_describes_tidal_statements_without_running_them() {
    let (_dir, sql) = setup();
    let before = text(&query(&sql, "SELECT count(*) FROM signals").await);
    let plan = text(
        &query(
            &sql,
            "EXPLAIN INSERT INTO signals (signal, entity_id) SELECT 'like', id FROM items WHERE id < 3",
        )
        .await,
    );
    assert!(
        plan.contains("InsertSignals: columns=[signal, entity_id]"),
        "{plan}"
    );
    assert!(plan.contains("source logical_plan"), "{plan}");
    assert!(plan.contains("source physical_plan"), "{plan}");
    assert_eq!(
        text(&query(&sql, "SELECT count(*) FROM signals").await),
        before,
        "EXPLAIN must not apply the write"
    );
    let plan = text(&query(&sql, "explain UPDATE items SET title = 'x' WHERE id = 1").await);
    assert!(plan.contains("Update: items columns=[title]"), "{plan}");
    let plan = text(
        &query(
            &sql,
            "EXPLAIN CREATE SIGNAL share ON items DECAY NONE WINDOWS ('all')",
        )
        .await,
    );
    assert!(plan.contains("CreateSignal: share ON items"), "{plan}");
    assert!(sql.engine().schema().signal("share").is_err());
    let e = sql
        .sql("EXPLAIN ANALYZE DELETE FROM items WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Syntax, "{e}");
    // Plain queries still get DataFusion's own EXPLAIN.
    let plan = text(&query(&sql, "EXPLAIN SELECT id FROM items").await);
    assert!(
        plan.contains("logical_plan") && !plan.contains("tidal_statement"),
        "{plan}"
    );
}

/// Full scans are served from the scan cache between writes, and every write to the
/// table is visible to the next scan.
#[tokio::test]
async fn scan_cache_never_serves_stale_rows() {
    let (_dir, sql) = setup();
    let scan = "SELECT id, title FROM items ORDER BY id";
    let text = |b: &[RecordBatch]| pretty_format_batches(b).unwrap().to_string();
    let first = text(&query(&sql, scan).await);
    // Filled by the first full scan: the next plan reads memory.
    let plan = text(&query(&sql, &format!("EXPLAIN {scan}")).await);
    assert!(plan.contains("DataSourceExec"), "{plan}");
    assert_eq!(text(&query(&sql, scan).await), first);
    query(&sql, "INSERT INTO items (id, title) VALUES (100, 'new')").await;
    let after_insert = text(&query(&sql, scan).await);
    assert!(after_insert.contains("| 100 | new"), "{after_insert}");
    query(&sql, "UPDATE items SET title = 'changed' WHERE id = 3").await;
    let after_update = text(&query(&sql, scan).await);
    assert!(after_update.contains("| 3   | changed"), "{after_update}");
    query(&sql, "DELETE FROM items WHERE id = 4").await;
    let after_delete = text(&query(&sql, scan).await);
    assert!(!after_delete.contains("| 4   |"), "{after_delete}");
    // Served from the cache again, and still the same rows.
    assert_eq!(text(&query(&sql, scan).await), after_delete);
    // Signals do not touch entity rows, so they leave the cache valid.
    query(
        &sql,
        "INSERT INTO signals (signal, entity_id) VALUES ('like', 3)",
    )
    .await;
    let plan = text(&query(&sql, &format!("EXPLAIN {scan}")).await);
    assert!(plan.contains("DataSourceExec"), "{plan}");
    assert_eq!(text(&query(&sql, scan).await), after_delete);
}

/// Signal reads over batches the memo has seen stay exact as entities get their first
/// events (new ordinals) and as ordinals are renumbered (a signal dropped).
#[tokio::test]
async fn remembered_ordinals_follow_new_entities_and_renumbering() {
    let (_dir, sql) = setup();
    let rows: Vec<String> = (1000..4000).map(|id| format!("({id}, 't')")).collect();
    query(
        &sql,
        &format!("INSERT INTO items (id, title) VALUES {}", rows.join(", ")),
    )
    .await;
    query(
        &sql,
        "CREATE SIGNAL extra ON items DECAY NONE WINDOWS ('all')",
    )
    .await;
    let q = "SELECT id, signal_total('like', id) AS l, signal_total('extra', id) AS e FROM items ORDER BY id";
    let check = |batches: Vec<RecordBatch>, want: &dyn Fn(i64) -> (f64, f64)| {
        let ids = ids(&batches);
        let (l, e) = (f64s(&batches, 1), f64s(&batches, 2));
        assert_eq!(ids.len(), 3020);
        for (k, id) in ids.iter().enumerate() {
            assert_eq!((l[k].unwrap(), e[k].unwrap()), want(*id), "id {id}");
        }
    };
    // Item 2 has 3 likes from setup; everything else 0.
    let base = |id: i64| (if id == 2 { 3.0 } else { 0.0 }, 0.0);
    check(query(&sql, q).await, &base);
    check(query(&sql, q).await, &base);
    // First events for new entities, spread over the batches.
    let events: Vec<String> = (1000..4000)
        .step_by(97)
        .map(|id| format!("('like', {id}, 1.0), ('extra', {id}, 2.0)"))
        .collect();
    query(
        &sql,
        &format!(
            "INSERT INTO signals (signal, entity_id, weight) VALUES {}",
            events.join(", ")
        ),
    )
    .await;
    let after = |id: i64| {
        if id >= 1000 && (id - 1000) % 97 == 0 {
            (1.0, 2.0)
        } else {
            base(id)
        }
    };
    check(query(&sql, q).await, &after);
    // Many new entities at once (more than the patch threshold): recomputed.
    let events: Vec<String> = (1000..4000)
        .map(|id| format!("('extra', {id}, 1.0)"))
        .collect();
    query(
        &sql,
        &format!(
            "INSERT INTO signals (signal, entity_id, weight) VALUES {}",
            events.join(", ")
        ),
    )
    .await;
    let more = |id: i64| {
        let (l, e) = after(id);
        (l, if id >= 1000 { e + 1.0 } else { e })
    };
    check(query(&sql, q).await, &more);
    // Dropping a signal renumbers ordinals.
    query(&sql, "DROP SIGNAL view").await;
    check(query(&sql, q).await, &more);
}

/// A VALUES list of plain literals is used without planning, and means exactly what the
/// planned path (any other source) makes of the same values.
#[tokio::test]
async fn literal_values_match_the_planned_path() {
    let fast = "('like', 11, 7, 2, TIMESTAMP '2026-11-20 10:00:00'), \
                ('like', 12, NULL, 0.5, CAST('2026-11-20 10:00:01' AS TIMESTAMP)), \
                ('view', 13, -0, 1e0, TIMESTAMP '2026-11-20 10:00:02'), \
                ('view', 14, 3, -1.5, NULL)";
    let stmt =
        format!("INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES {fast}");
    match crate::parse_tidal_statement(&stmt).unwrap() {
        Some(crate::TidalStatement::InsertSignals { values, .. }) => {
            assert_eq!(values.map(|b| b.num_rows()), Some(4))
        }
        other => panic!("{other:?}"),
    }
    // Not plain literals: planned by DataFusion.
    for planned in [
        "INSERT INTO signals (signal, entity_id) VALUES ('like', 1 + 1)",
        "INSERT INTO signals (signal, entity_id) VALUES ('like', 1), ('like', '2')",
        "INSERT INTO signals (signal, entity_id) VALUES ('like', 99999999999999999999)",
        "INSERT INTO signals (signal, entity_id) SELECT 'like', 1",
    ] {
        match crate::parse_tidal_statement(planned).unwrap() {
            Some(crate::TidalStatement::InsertSignals { values, .. }) => {
                assert!(values.is_none(), "{planned}")
            }
            other => panic!("{other:?}"),
        }
    }
    let (_d1, a) = setup();
    let (_d2, b) = setup();
    query(&a, &stmt).await;
    query(
        &b,
        &format!(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) \
             SELECT * FROM (VALUES {fast})"
        ),
    )
    .await;
    let q = "SELECT signal, entity_id, user_id, weight, ts FROM signals \
             WHERE entity_id > 10 AND entity_id < 14 ORDER BY entity_id";
    let text = |b: &[RecordBatch]| pretty_format_batches(b).unwrap().to_string();
    let (x, y) = (text(&query(&a, q).await), text(&query(&b, q).await));
    assert_eq!(x, y);
    assert_eq!(x.lines().count(), 7, "{x}");
    // Item 14's NULL ts means "now": compare the rest.
    let q = "SELECT signal, user_id, weight FROM signals WHERE entity_id = 14";
    assert_eq!(text(&query(&a, q).await), text(&query(&b, q).await));
    // Errors are the same too: a NULL entity, a negative id, an unknown signal.
    for (bad, values) in [
        ("signal, entity_id", "('like', NULL)"),
        ("signal, entity_id", "('like', -3)"),
        ("signal, entity_id", "('nope', 3)"),
    ] {
        let fast = a
            .sql(&format!("INSERT INTO signals ({bad}) VALUES {values}"))
            .await
            .unwrap_err();
        let planned = a
            .sql(&format!(
                "INSERT INTO signals ({bad}) SELECT * FROM (VALUES {values})"
            ))
            .await
            .unwrap_err();
        assert_eq!(fast.to_string(), planned.to_string());
        assert_eq!(fast.class(), planned.class());
    }
}

#[tokio::test]
async fn ledger_ordered_scans_are_cached_in_ordinal_order() {
    let (_dir, sql) = setup();
    // Items 1 and 2 got ordinals 0 and 1 in setup; 15 and 7 get the next two.
    let mut txn = sql.engine().begin();
    txn.signal("like", EntityId(15), None, 1.0, Some(t0()))
        .unwrap();
    txn.signal("view", EntityId(7), None, 1.0, Some(t0()))
        .unwrap();
    txn.commit().unwrap();
    let items = sql.context().table_provider("items").await.unwrap();
    let table = items
        .downcast_ref::<crate::EntityTable>()
        .expect("items is an EntityTable");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table(
        "ordered",
        Arc::new(table.with_order(crate::provider::ScanOrder::Ledger)),
    )
    .unwrap();
    let by_id: Vec<i64> = (1..=20).collect();
    let mut want = vec![1, 2, 15, 7];
    want.extend(by_id.iter().copied().filter(|i| ![1, 2, 15, 7].contains(i)));
    // The first scan reads the store (id order) and fills the cache in the background.
    let mut seen = Vec::new();
    for _ in 0..500 {
        let b = ctx.sql("SELECT id FROM ordered").await.unwrap();
        seen = ids(&b.collect().await.unwrap());
        if seen != by_id {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen, want);
    // The id-ordered scan of the same table is a separate cache entry.
    let b = query(&sql, "SELECT id FROM items").await;
    assert_eq!(ids(&b), by_id);
    // RETRIEVE reads the ordered rows and still ranks by score, ties by id.
    query(
        &sql,
        "CREATE PROFILE p ON items (SCORE signal_total('like') + window_count('view', '24h'))",
    )
    .await;
    let b = query(
        &sql,
        &format!("RETRIEVE items USING PROFILE p LIMIT 4 AT '{T0}'"),
    )
    .await;
    assert_eq!(ids_named(&b, "id"), vec![1, 2, 7, 15]);
}

/// The scan cache's patch count of `sql`'s schema.
fn scan_cache_patches(sql: &SqlSession) -> u64 {
    let schema = sql
        .context()
        .catalog(crate::CATALOG_NAME)
        .and_then(|c| c.schema(crate::SCHEMA_NAME))
        .unwrap();
    schema
        .downcast_ref::<crate::TidalSchema>()
        .unwrap()
        .scan_cache_patches()
}

#[tokio::test]
async fn cached_scans_are_patched_with_the_rows_written_since() {
    let (_dir, sql) = setup();
    // The model of `items (id, title)`.
    let mut model: std::collections::BTreeMap<i64, String> =
        (1..=20).map(|i| (i, format!("item {i}"))).collect();
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let read = |b: &[RecordBatch]| -> Vec<(i64, String)> {
        b.iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let t = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                (0..b.num_rows())
                    .map(|i| (ids.value(i), t.value(i).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let before = scan_cache_patches(&sql);
    for round in 0..40 {
        match next(5) {
            0 => {
                let id = next(30) as i64 + 1;
                let t = format!("updated {round}");
                query(
                    &sql,
                    &format!("UPDATE items SET title = '{t}' WHERE id = {id}"),
                )
                .await;
                if let Some(v) = model.get_mut(&id) {
                    *v = t;
                }
            }
            1 => {
                let id = next(30) as i64 + 1;
                query(&sql, &format!("DELETE FROM items WHERE id = {id}")).await;
                model.remove(&id);
            }
            2 => {
                let id = next(30) as i64 + 1;
                let t = format!("new {round}");
                query(
                    &sql,
                    &format!(
                        "INSERT INTO items (id, title) VALUES ({id}, '{t}') \
                         ON CONFLICT (id) DO UPDATE SET title = excluded.title"
                    ),
                )
                .await;
                model.insert(id, t);
            }
            3 => {
                // More rows than a patch takes: the next scan re-reads the table.
                let lo = 1_000 + round * 10_000;
                query(
                    &sql,
                    &format!(
                        "INSERT INTO items (id, title) SELECT value, 'bulk' \
                         FROM generate_series({lo}, {})",
                        lo + 4_999
                    ),
                )
                .await;
                model.extend((lo..lo + 5_000).map(|i| (i as i64, "bulk".to_string())));
            }
            _ => {}
        }
        let want: Vec<(i64, String)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut got = read(&query(&sql, "SELECT id, title FROM items").await);
        got.sort();
        assert_eq!(got.len(), want.len(), "round {round}");
        assert!(
            got == want,
            "round {round}: cached scan differs from the model"
        );
    }
    assert!(
        scan_cache_patches(&sql) > before + 10,
        "small writes should patch the cached scan, not re-read it"
    );
}

/// `tidal_stats` value of one metric (by exposed name and labels).
async fn stat(sql: &SqlSession, metric: &str, labels: &str) -> Option<f64> {
    let q = format!(
        "SELECT value FROM tidal_stats WHERE metric = '{metric}' AND labels = '{}'",
        labels.replace('\'', "''")
    );
    f64s(&query(sql, &q).await, 0).first().copied().flatten()
}

#[tokio::test]
async fn tidal_stats_shows_engine_cache_and_added_figures() {
    let (_dir, sql) = setup();
    let hits = stat(&sql, "tidal_scan_cache_hits_total", "").await.unwrap();
    let misses = stat(&sql, "tidal_scan_cache_misses_total", "")
        .await
        .unwrap();
    query(&sql, "SELECT count(title) FROM items").await;
    query(&sql, "SELECT count(title) FROM items").await;
    assert_eq!(
        stat(&sql, "tidal_scan_cache_misses_total", "").await,
        Some(misses + 1.0),
        "the first scan reads the store"
    );
    assert_eq!(
        stat(&sql, "tidal_scan_cache_hits_total", "").await,
        Some(hits + 1.0),
        "the second is served from the cache"
    );
    // Two transactions in setup: the schema and the rows with their events.
    assert_eq!(stat(&sql, "tidal_wal_commits_total", "").await, Some(2.0));
    let ledger = stat(&sql, "tidal_memory_bytes", r#"part="ledger""#).await;
    assert!(ledger.is_some_and(|b| b > 0.0), "{ledger:?}");

    // Histograms carry their sum and quantiles; other kinds leave them NULL.
    let b = query(
        &sql,
        "SELECT kind, value, sum, p50, p99, max FROM tidal_stats \
         WHERE metric IN ('tidal_wal_fsync_seconds', 'tidal_wal_commits_total') ORDER BY metric",
    )
    .await;
    let kinds = b[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(kinds.value(0), "counter");
    assert_eq!(kinds.value(1), "histogram");
    assert_eq!(f64s(&b, 2)[0], None);
    let (count, p50, p99, max) = (
        f64s(&b, 1)[1],
        f64s(&b, 3)[1],
        f64s(&b, 4)[1],
        f64s(&b, 5)[1],
    );
    assert!(count.unwrap() >= 1.0);
    assert!(
        p50.unwrap() > 0.0 && p50 <= p99 && p99 <= max,
        "{p50:?} {p99:?} {max:?}"
    );

    sql.add_metrics_source(Arc::new(|| {
        vec![tidal_core::metrics::Metric::counter("test_things", "Things.", 7).label("k", "v")]
    }))
    .unwrap();
    assert_eq!(stat(&sql, "test_things_total", r#"k="v""#).await, Some(7.0));
}
