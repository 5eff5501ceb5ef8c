//! SQL through the embedded facade: entity tables and signal functions.

use tidal::datafusion::arrow::array::{Array, Float64Array, Int64Array};
use tidal::{
    ColumnDef, ColumnType, Database, DecaySpec, EntityKind, SignalDef, TableDef, Timestamp, Value,
    Window,
};

#[tokio::test]
async fn select_ranks_items_by_signal_functions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let windows = [Window::parse("24h").unwrap(), Window::All];
    db.create_signal(
        SignalDef::new(
            "like",
            EntityKind::Item,
            DecaySpec::exponential("14 days").unwrap(),
            windows,
        )
        .unwrap(),
    )
    .unwrap();
    let cols = vec![
        ColumnDef::new("id", ColumnType::BigInt),
        ColumnDef::new("creator_id", ColumnType::BigInt),
        ColumnDef::new("title", ColumnType::Text),
    ];
    db.create_table(TableDef::new(EntityKind::Item, cols, vec!["title".into()]).unwrap())
        .unwrap();
    for id in 1..=100u64 {
        db.upsert(
            EntityKind::Item,
            vec![
                Value::Int(id as i64),
                Value::Int((id % 7) as i64),
                Value::Text(format!("t{id}")),
            ],
        )
        .unwrap();
    }
    let now = db.now();
    let events: Vec<tidal::Event<'_>> = (1..=100u64)
        .flat_map(|id| {
            (0..id % 10).map(move |k| tidal::Event {
                signal: "like",
                entity: id,
                user: Some(k),
                weight: 1.0,
                ts: Some(Timestamp(now.0 - 1_000_000)),
            })
        })
        .collect();
    db.signals(&events).unwrap();

    let b = db
        .sql("SELECT id, window_count('like', id, '24h') AS n FROM items ORDER BY n DESC, id LIMIT 5")
        .await
        .unwrap();
    let ids: Vec<i64> = b
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, vec![9, 19, 29, 39, 49]);
    let n = b[0]
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(n.value(0), 9.0);

    // Standard SQL keeps working on top: aggregates, grouping, CTEs.
    let b = db
        .sql("WITH s AS (SELECT creator_id, signal_total('like', id) AS t FROM items) SELECT creator_id, sum(t) FROM s GROUP BY creator_id ORDER BY creator_id")
        .await
        .unwrap();
    let total: f64 = b
        .iter()
        .map(|b| {
            let a = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
            (0..a.len()).map(|i| a.value(i)).sum::<f64>()
        })
        .sum();
    assert_eq!(total, events.len() as f64);

    // The DataFusion context is available for direct use.
    let ctx = db.session().unwrap();
    let df = ctx.sql("SELECT count(*) FROM items").await.unwrap();
    let c = df.collect().await.unwrap();
    assert_eq!(
        c[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        100
    );
}

#[tokio::test]
async fn sql_stream_yields_batches_and_runs_writes() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let mut s = db
        .sql_stream("CREATE TABLE items (id BIGINT PRIMARY KEY, n INT) WITH (kind = 'item')")
        .await
        .unwrap();
    while let Some(b) = s.next().await {
        b.unwrap();
    }
    // A write returns its count row through the stream, and is applied before it.
    let mut s = db
        .sql_stream(
            "INSERT INTO items (id, n) SELECT value, value % 10 FROM generate_series(1, 50000)",
        )
        .await
        .unwrap();
    let first = s.next().await.unwrap().unwrap();
    let count = first
        .column(0)
        .as_any()
        .downcast_ref::<tidal::datafusion::arrow::array::UInt64Array>()
        .unwrap();
    assert_eq!(count.value(0), 50_000);
    assert!(s.next().await.is_none());
    // A large scan arrives in several bounded batches.
    let mut s = db.sql_stream("SELECT id, n FROM items").await.unwrap();
    let (mut batches, mut rows) = (0, 0);
    while let Some(b) = s.next().await {
        let b = b.unwrap();
        assert!(b.num_rows() <= tidal::SCAN_BATCH_ROWS);
        batches += 1;
        rows += b.num_rows();
    }
    assert_eq!(rows, 50_000);
    assert!(batches >= 50_000 / tidal::SCAN_BATCH_ROWS, "{batches}");
    // Errors surface from the call, not as a panic.
    assert!(db.sql_stream("SELECT nope FROM items").await.is_err());
}
