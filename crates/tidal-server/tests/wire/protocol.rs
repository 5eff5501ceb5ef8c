//! Extended protocol with typed parameters and binary results, prepared statements,
//! type round trips, the simple protocol with several statements, empty queries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::Type;

use crate::common::{SCHEMA, code, start};

/// 2025-11-24 16:00:00.123456 UTC.
fn fixed_ts() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Flattens simple-query results: `complete N` per statement, `row a|b|NULL` per row.
fn simple(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(format!("complete {n}")),
            SimpleQueryMessage::Row(r) => Some(format!(
                "row {}",
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_parameters_and_binary_results() {
    let server = start().await;
    let c = server.connect_with_schema().await;

    let n = c
        .execute(
            "INSERT INTO items (id, title, score, created_at) VALUES ($1, $2, $3, $4)",
            &[&1i64, &"t", &1.5f64, &fixed_ts()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "execute returns the inserted row count");

    let now = SystemTime::now();
    let ts1 = now - Duration::from_secs(3600);
    let ts2 = now - Duration::from_secs(2 * 3600);
    let insert_signal =
        "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES ($1, $2, $3, $4, $5)";
    let n = c
        .execute(insert_signal, &[&"like", &1i64, &7i64, &2.0f64, &ts1])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // user_id NULL
    let n = c
        .execute(
            insert_signal,
            &[&"like", &1i64, &None::<i64>, &1.0f64, &ts2],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Two rows in one statement.
    let n = c
        .execute(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) \
             VALUES ($1, $2, $3, $4, $5), ($1, $6, $3, $4, $5)",
            &[&"view", &1i64, &8i64, &1.0f64, &ts1, &2i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);

    let rows = c
        .query(
            "SELECT id, decay('like', id) FROM items WHERE id = $1",
            &[&1i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].columns()[0].type_(), &Type::INT8);
    assert_eq!(rows[0].columns()[1].type_(), &Type::FLOAT8);
    let id: i64 = rows[0].get(0);
    let decay: f64 = rows[0].get(1);
    assert_eq!(id, 1);
    // 2·2^(−1h/14d) + 1·2^(−2h/14d); the statement runs a moment after `now`.
    let half_life = 14.0 * 86_400.0;
    let expected = 2.0 * (-3600.0f64 / half_life).exp2() + (-7200.0f64 / half_life).exp2();
    assert!(close(decay, expected, 1e-5), "decay {decay} vs {expected}");

    let row = c
        .query_one(
            "SELECT signal_total('like', id), window_count('like', id, '24h'), \
                    signal_total('view', id), last_signal_at('like', id) \
             FROM items WHERE id = $1",
            &[&1i64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 3.0);
    assert_eq!(row.get::<_, f64>(1), 3.0);
    assert_eq!(row.get::<_, f64>(2), 1.0);
    let last: SystemTime = row.get(3);
    let diff = last.duration_since(ts1).unwrap_or_else(|e| e.duration());
    assert!(
        diff < Duration::from_micros(1),
        "last_signal_at {last:?} vs {ts1:?}"
    );

    // Parameters as function arguments and under casts are typed from the signal
    // functions' signatures and the cast targets (DataFusion leaves them open).
    let stmt = c
        .prepare(
            "SELECT decay($1, $2, $3), window_count($1, $2, $4, $3), signal_total('like', $2), \
                    $5::BIGINT * 2",
        )
        .await
        .unwrap();
    assert_eq!(
        stmt.params(),
        &[
            Type::TEXT,
            Type::INT8,
            Type::TIMESTAMP,
            Type::TEXT,
            Type::INT8
        ]
    );
    let row = c
        .query_one(&stmt, &[&"like", &1i64, &now, &"24h", &21i64])
        .await
        .unwrap();
    let at_now = 2.0 * (-3600.0f64 / half_life).exp2() + (-7200.0f64 / half_life).exp2();
    assert!(close(row.get::<_, f64>(0), at_now, 1e-9));
    assert_eq!(row.get::<_, f64>(1), 3.0);
    assert_eq!(row.get::<_, f64>(2), 3.0);
    assert_eq!(row.get::<_, i64>(3), 42);

    // The events are in the history with their user ids (NULL kept).
    let rows = c
        .query(
            "SELECT user_id, weight FROM signals WHERE signal = $1 AND entity_id = $2 ORDER BY ts",
            &[&"like", &1i64],
        )
        .await
        .unwrap();
    let got: Vec<(Option<i64>, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(None, 1.0), (Some(7), 2.0)]);

    let row = c
        .query_one(
            "SELECT title, score, created_at FROM items WHERE id = $1",
            &[&1i64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "t");
    assert_eq!(row.get::<_, f64>(1), 1.5);
    assert_eq!(row.get::<_, SystemTime>(2), fixed_ts());

    let count: i64 = c
        .query_one("SELECT count(*) FROM signals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 4);

    // UPDATE / DELETE with parameters report their row counts.
    c.execute("INSERT INTO items (id) VALUES (2), (3), (4)", &[])
        .await
        .unwrap();
    let n = c
        .execute(
            "UPDATE items SET title = $1 WHERE id >= $2",
            &[&"upd", &2i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let n = c
        .execute("DELETE FROM items WHERE id > $1", &[&3i64])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let titles: Vec<(i64, Option<String>)> = c
        .query("SELECT id, title FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        titles,
        vec![
            (1, Some("t".into())),
            (2, Some("upd".into())),
            (3, Some("upd".into()))
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_reused() {
    let server = start().await;
    let c = server.connect_with_schema().await;

    let ins = c
        .prepare("INSERT INTO items (id, title, rank) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    assert_eq!(ins.params(), &[Type::INT8, Type::TEXT, Type::INT4]);
    assert!(ins.columns().is_empty());
    for i in 1..=25i64 {
        let n = c
            .execute(&ins, &[&i, &format!("item {i}"), &(i as i32 * -10)])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    let sel = c
        .prepare("SELECT title, rank FROM items WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(sel.params(), &[Type::INT8]);
    let cols: Vec<(&str, &Type)> = sel
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_()))
        .collect();
    assert_eq!(cols, vec![("title", &Type::TEXT), ("rank", &Type::INT4)]);
    for i in (1..=25i64).rev() {
        let row = c.query_one(&sel, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, String>("title"), format!("item {i}"));
        assert_eq!(row.get::<_, i32>("rank"), i as i32 * -10);
    }
    // No row for an absent id; the statement keeps working afterwards.
    assert!(c.query_opt(&sel, &[&999i64]).await.unwrap().is_none());

    let range = c
        .prepare("SELECT id FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id DESC")
        .await
        .unwrap();
    for (lo, hi) in [(5i64, 9i64), (20, 30), (26, 40)] {
        let ids: Vec<i64> = c
            .query(&range, &[&lo, &hi])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected: Vec<i64> = (lo..=hi.min(25)).rev().collect();
        assert_eq!(ids, expected);
    }

    // A prepared statement sees rows written after it was prepared.
    let count = c.prepare("SELECT count(*) FROM items").await.unwrap();
    assert_eq!(c.query_one(&count, &[]).await.unwrap().get::<_, i64>(0), 25);
    c.execute(&ins, &[&26i64, &"late", &0i32]).await.unwrap();
    assert_eq!(c.query_one(&count, &[]).await.unwrap().get::<_, i64>(0), 26);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_round_trip() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    let tags: Vec<String> = [
        "plain",
        "b c",
        "quo\"te",
        "com,ma",
        "",
        "NULL",
        "back\\slash",
        "{brace}",
        "ünï",
    ]
    .map(String::from)
    .to_vec();
    let n = c
        .execute(
            "INSERT INTO items (id, title, tags, flag, rating, rank, created_at, embedding) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &1i64,
                &"it's ü",
                &tags,
                &true,
                &2.5f32,
                &-42i32,
                &fixed_ts(),
                &crate::common::PgVector(vec![0.5, 1.0, -2.25]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Explicit NULL parameters.
    c.execute(
        "INSERT INTO items (id, title, tags, flag, rating, rank, created_at, embedding) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &2i64,
            &None::<&str>,
            &None::<Vec<String>>,
            &None::<bool>,
            &None::<f32>,
            &None::<i32>,
            &None::<SystemTime>,
            &None::<crate::common::PgVector>,
        ],
    )
    .await
    .unwrap();
    // Literal values through the simple protocol, and a row with only an id.
    c.batch_execute(
        "INSERT INTO items (id, tags, flag, rating, embedding) \
         VALUES (3, '{x,\"y z\"}', false, -0.125, '[1,2,3]'); \
         INSERT INTO items (id) VALUES (4)",
    )
    .await
    .unwrap();

    let rows = c
        .query(
            "SELECT id, title, tags, flag, rating, rank, created_at, embedding FROM items ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    let types: Vec<&Type> = rows[0].columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types[..7],
        vec![
            &Type::INT8,
            &Type::TEXT,
            &Type::TEXT_ARRAY,
            &Type::BOOL,
            &Type::FLOAT4,
            &Type::INT4,
            &Type::TIMESTAMP,
        ]
    );
    assert_eq!((types[7].name(), types[7].oid()), ("vector", 16_000));
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(1), "it's ü");
    assert_eq!(r.get::<_, Vec<String>>(2), tags);
    assert!(r.get::<_, bool>(3));
    assert_eq!(r.get::<_, f32>(4), 2.5);
    assert_eq!(r.get::<_, i32>(5), -42);
    assert_eq!(r.get::<_, SystemTime>(6), fixed_ts());
    assert_eq!(
        r.get::<_, crate::common::PgVector>(7),
        crate::common::PgVector(vec![0.5, 1.0, -2.25])
    );
    for (i, r) in [&rows[1], &rows[3]].into_iter().enumerate() {
        assert!(r.get::<_, Option<String>>(1).is_none(), "row {i}");
        assert!(r.get::<_, Option<Vec<String>>>(2).is_none());
        assert!(r.get::<_, Option<bool>>(3).is_none());
        assert!(r.get::<_, Option<f32>>(4).is_none());
        assert!(r.get::<_, Option<i32>>(5).is_none());
        assert!(r.get::<_, Option<SystemTime>>(6).is_none());
        assert!(r.get::<_, Option<crate::common::PgVector>>(7).is_none());
    }
    let r = &rows[2];
    assert_eq!(
        r.get::<_, Vec<String>>(2),
        vec!["x".to_string(), "y z".into()]
    );
    assert!(!r.get::<_, bool>(3));
    assert_eq!(r.get::<_, f32>(4), -0.125);
    assert_eq!(
        r.get::<_, crate::common::PgVector>(7),
        crate::common::PgVector(vec![1.0, 2.0, 3.0])
    );

    // The same values in text format (simple protocol).
    let msgs = c
        .simple_query(
            "SELECT id, title, tags, flag, rating, rank, created_at, embedding FROM items ORDER BY id",
        )
        .await
        .unwrap();
    assert_eq!(
        simple(&msgs),
        vec![
            "row 1|it's ü|{plain,\"b c\",\"quo\\\"te\",\"com,ma\",\"\",\"NULL\",\"back\\\\slash\",\"{brace}\",ünï}|t|2.5|-42|2025-11-24 16:00:00.123456|[0.5,1,-2.25]",
            "row 2|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
            "row 3|NULL|{x,\"y z\"}|f|-0.125|NULL|NULL|[1,2,3]",
            "row 4|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
            "complete 4",
        ]
    );

    // Parameters compared against each type, in a WHERE clause.
    let ids = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
    };
    let q = |sql: &'static str| sql;
    assert_eq!(
        ids(c
            .query(
                q("SELECT id FROM items WHERE flag = $1 ORDER BY id"),
                &[&false]
            )
            .await
            .unwrap()),
        vec![3]
    );
    assert_eq!(
        ids(c
            .query(q("SELECT id FROM items WHERE rank = $1"), &[&-42i32])
            .await
            .unwrap()),
        vec![1]
    );
    assert_eq!(
        ids(c
            .query(
                q("SELECT id FROM items WHERE created_at = $1"),
                &[&fixed_ts()]
            )
            .await
            .unwrap()),
        vec![1]
    );
    assert_eq!(
        ids(c
            .query(q("SELECT id FROM items WHERE title = $1"), &[&"it's ü"])
            .await
            .unwrap()),
        vec![1]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_runs_statements_in_order() {
    let server = start().await;
    let c = server.connect().await;
    let msgs = c
        .simple_query(&format!(
            "{SCHEMA}; INSERT INTO items (id, title) VALUES (1, 'a'), (2, 'b;c'), (3, E'it\\'s'); \
             SELECT id, title FROM items ORDER BY id; \
             UPDATE items SET title = 'z''s' WHERE id = 1; \
             SELECT title FROM items WHERE id = 1; SELECT count(*) AS n FROM items"
        ))
        .await
        .unwrap();
    assert_eq!(
        simple(&msgs),
        vec![
            "complete 0", // CREATE SIGNAL like
            "complete 0", // CREATE SIGNAL view
            "complete 0", // CREATE TABLE
            "complete 3",
            "row 1|a",
            "row 2|b;c",
            "row 3|it's",
            "complete 3",
            "complete 1",
            "row z's",
            "complete 1",
            "row 3",
            "complete 1",
        ]
    );

    // An error stops the rest of the string; the statements before it have committed
    // (each statement is its own transaction in tidalDB).
    let err = c
        .simple_query(
            "INSERT INTO items (id, title) VALUES (10, 'x'); \
             SELEC oops; \
             INSERT INTO items (id, title) VALUES (11, 'y')",
        )
        .await
        .unwrap_err();
    assert_eq!(crate::common::code(&err), "42601", "{err:?}");
    let ids = crate::common::item_ids(&c).await;
    assert_eq!(ids, vec![1, 2, 3, 10], "11 must not run after the error");

    // A failing SELECT in the middle also stops the rest.
    let err = c
        .simple_query("SELECT 1; SELECT nope FROM items; INSERT INTO items (id) VALUES (12)")
        .await
        .unwrap_err();
    assert_eq!(crate::common::code(&err), "42703", "{err:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE id = 12", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // Empty queries: one EmptyQueryResponse (tokio-postgres reports it as
    // CommandComplete(0)) and nothing else.
    assert_eq!(
        simple(&c.simple_query("").await.unwrap()),
        vec!["complete 0"]
    );
    assert_eq!(
        simple(&c.simple_query(" ;  ; -- nothing\n").await.unwrap()),
        vec!["complete 0"]
    );
    c.batch_execute("").await.unwrap();
    assert!(c.query("", &[]).await.unwrap().is_empty());
    assert_eq!(c.execute("", &[]).await.unwrap(), 0);
    // Still usable.
    let msgs = c.simple_query("SELECT 41 + 1").await.unwrap();
    assert_eq!(simple(&msgs), vec!["row 42", "complete 1"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_and_catalog_functions() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    let v: String = c.query_one("SELECT version()", &[]).await.unwrap().get(0);
    assert!(v.contains("tidalDB"), "{v}");
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "tidal");

    c.batch_execute("SET statement_timeout = '2s'")
        .await
        .unwrap();
    let t: String = c
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "2000ms");
    c.batch_execute("RESET statement_timeout").await.unwrap();
    let msgs = c.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(simple(&msgs), vec!["row 0", "complete 1"]);
    c.batch_execute("SET application_name = 'wire-test'")
        .await
        .unwrap();
    let msgs = c.simple_query("SHOW application_name").await.unwrap();
    assert_eq!(simple(&msgs), vec!["row wire-test", "complete 1"]);

    // SHOW SIGNALS through the extended protocol (described before it runs).
    let rows = c.query("SHOW SIGNALS", &[]).await.unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get("name")).collect();
    assert_eq!(names, vec!["like".to_string(), "view".into()]);

    // Transaction blocks: writes are queued and applied at COMMIT, dropped at ROLLBACK.
    use crate::common::item_ids as ids;
    c.batch_execute("BEGIN").await.unwrap();
    let n = c
        .execute("INSERT INTO items (id) VALUES ($1)", &[&1i64])
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        ids(&c).await.is_empty(),
        "ROLLBACK must discard the block's writes"
    );

    c.batch_execute("BEGIN; INSERT INTO items (id) VALUES (1)")
        .await
        .unwrap();
    c.execute("INSERT INTO items (id) VALUES ($1)", &[&2i64])
        .await
        .unwrap();
    c.execute(
        "INSERT INTO signals (signal, entity_id) VALUES ($1, $2)",
        &[&"like", &2i64],
    )
    .await
    .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(ids(&c).await, vec![1, 2]);
    let total: f64 = c
        .query_one("SELECT signal_total('like', 2)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1.0);

    // A failed statement aborts the block (25P02) until it ends; nothing is applied.
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO items (id) VALUES (3)", &[])
        .await
        .unwrap();
    crate::common::expect_code(
        c.execute("INSERT INTO items (id) VALUES (1)", &[]).await,
        "23505",
    );
    crate::common::expect_code(c.query("SELECT 1", &[]).await, "25P02");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        ids(&c).await,
        vec![1, 2],
        "an aborted block applies nothing"
    );
    server.stop().await;
}

/// One event for `prepared_signal_inserts_match_the_generic_path`.
#[derive(Debug, Clone, Copy)]
struct Ev {
    signal: Option<&'static str>,
    entity: Option<i64>,
    user: Option<i64>,
    weight: Option<f64>,
    /// Microseconds since the Unix epoch.
    ts: Option<i64>,
}

impl Ev {
    /// The same event as a SQL text INSERT (the generic path), for entity `entity`.
    fn sql(&self, entity: Option<i64>) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "NULL".into());
        format!(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES ({}, {}, {}, {}, {})",
            opt(self.signal.map(|s| format!("'{s}'"))),
            opt(entity.map(|e| e.to_string())),
            opt(self.user.map(|u| u.to_string())),
            opt(self.weight.map(|w| format!("CAST('{w:?}' AS DOUBLE)"))),
            opt(self
                .ts
                .map(|t| format!("CAST('{}' AS TIMESTAMP)", tidal::Timestamp(t)))),
        )
    }

    fn time(&self) -> Option<SystemTime> {
        self.ts.map(|t| match u64::try_from(t) {
            Ok(t) => UNIX_EPOCH + Duration::from_micros(t),
            Err(_) => UNIX_EPOCH - Duration::from_micros(t.unsigned_abs()),
        })
    }
}

/// A prepared one-event `INSERT INTO signals` skips SQL (the server's fast path); it
/// must give exactly what the generic path gives for the same event sent as SQL text:
/// the same rows, counts and duplicates, and the same SQLSTATE for every bad event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_signal_inserts_match_the_generic_path() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    let sql =
        "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES ($1, $2, $3, $4, $5)";
    let wide = c.prepare(sql).await.unwrap();
    assert_eq!(
        wide.params(),
        &[
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::FLOAT8,
            Type::TIMESTAMP
        ]
    );
    let narrow = c
        .prepare_typed(
            sql,
            &[
                Type::VARCHAR,
                Type::INT4,
                Type::INT4,
                Type::FLOAT4,
                Type::TIMESTAMPTZ,
            ],
        )
        .await
        .unwrap();
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let hour = 3_600_000_000i64;
    let ok = |signal, user, weight, ts| Ev {
        signal: Some(signal),
        entity: Some(0),
        user,
        weight: Some(weight),
        ts,
    };
    let good = [
        ok("like", Some(7), 2.5, Some(now_us - hour)),
        ok("view", None, 1.0, Some(now_us - 2 * hour + 17)),
        ok("like", Some(0), -1.0, Some(now_us - 30 * hour)),
        ok("view", Some(9), 0.0, None),
    ];
    for (k, ev) in good.iter().enumerate() {
        let (fast, generic) = (100 + k as i64, 200 + k as i64);
        for stmt in [&wide, &narrow] {
            let narrow = std::ptr::eq(stmt, &narrow);
            let n = if narrow {
                c.execute(
                    stmt,
                    &[
                        &ev.signal,
                        &Some(fast as i32),
                        &ev.user.map(|u| u as i32),
                        &ev.weight.map(|w| w as f32),
                        &ev.time(),
                    ],
                )
                .await
            } else {
                c.execute(
                    stmt,
                    &[&ev.signal, &Some(fast), &ev.user, &ev.weight, &ev.time()],
                )
                .await
            };
            // The first of the two identical events counts; the second is a duplicate
            // (unless its ts defaults to the clock, which moved).
            let expect = if narrow && ev.ts.is_some() { 0 } else { 1 };
            assert_eq!(n.unwrap(), expect, "{ev:?} narrow={narrow}");
        }
        let rows = c.simple_query(&ev.sql(Some(generic))).await.unwrap();
        assert_eq!(simple(&rows), vec!["complete 1"], "{ev:?}");
        let rows = c.simple_query(&ev.sql(Some(generic))).await.unwrap();
        let expect = if ev.ts.is_some() {
            "complete 0"
        } else {
            "complete 1"
        };
        assert_eq!(simple(&rows), vec![expect], "{ev:?}");

        let stored = |e: i64| {
            let c = &c;
            async move {
                let rows = c
                    .query(
                        "SELECT signal, user_id, weight, ts FROM signals WHERE entity_id = $1 \
                         ORDER BY ts",
                        &[&e],
                    )
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| {
                        let ts: SystemTime = r.get(3);
                        (
                            r.get::<_, String>(0),
                            r.get::<_, Option<i64>>(1),
                            r.get::<_, f64>(2),
                            ts,
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        let (f, g) = (stored(fast).await, stored(generic).await);
        assert_eq!(f.len(), g.len(), "{ev:?}: {f:?} vs {g:?}");
        for (a, b) in f.iter().zip(&g) {
            assert_eq!((&a.0, a.1, a.2), (&b.0, b.1, b.2), "{ev:?}");
            match ev.time() {
                Some(t) => assert_eq!((a.3, b.3), (t, t), "{ev:?}"),
                // Defaulted to the server clock: close to now.
                None => {
                    let age = SystemTime::now().duration_since(a.3).unwrap_or_default();
                    assert!(age < Duration::from_secs(60), "{a:?}");
                }
            }
        }
    }

    // Bad events: the same SQLSTATE either way, and nothing applied.
    let before = c
        .query_one("SELECT count(*) FROM signals", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    let bad = [
        Ev {
            signal: None,
            ..ok("like", None, 1.0, None)
        },
        Ev {
            entity: None,
            ..ok("like", None, 1.0, None)
        },
        Ev {
            entity: Some(-4),
            ..ok("like", None, 1.0, None)
        },
        Ev {
            weight: None,
            ..ok("like", None, 1.0, None)
        },
        ok("nope", None, 1.0, None),
        ok("like", Some(-3), 1.0, None),
        ok("like", None, f64::NAN, None),
        ok("like", None, f64::INFINITY, None),
        ok("like", None, 1.0, Some(now_us + 48 * hour)),
        // Before DataFusion's nanosecond TIMESTAMP range (1677-09-21).
        ok("like", None, 1.0, Some(-9_300_000_000_000_000)),
    ];
    for ev in bad {
        let fast = c
            .execute(
                &wide,
                &[&ev.signal, &ev.entity, &ev.user, &ev.weight, &ev.time()],
            )
            .await;
        let generic = c.simple_query(&ev.sql(ev.entity)).await;
        let (Err(f), Err(g)) = (&fast, &generic) else {
            panic!("{ev:?}: expected errors, got {fast:?} and {generic:?}");
        };
        assert_eq!(code(f), code(g), "{ev:?}: {f:?} vs {g:?}");
    }
    let after = c
        .query_one("SELECT count(*) FROM signals", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(after, before);

    // Several rows in one statement: one transaction, all rows or none.
    let multi = c
        .prepare(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) \
             VALUES ($1, $2, $3, $4, $5), ($1, $6, NULL, $8, $5), ($9, $7, $3, $4, NULL)",
        )
        .await
        .unwrap();
    // The same with a literal among parameters in one column (the generic path types
    // such a column itself).
    let mixed = c
        .prepare(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) \
             VALUES ($1, $2, $3, $4, $5), ($1, $6, NULL, 0.5, $5), ('view', $7, $3, $4, NULL)",
        )
        .await
        .unwrap();
    let ts = UNIX_EPOCH + Duration::from_micros((now_us - hour) as u64);
    let n = c
        .execute(
            &multi,
            &[
                &"like",
                &400i64,
                &Some(3i64),
                &2.0f64,
                &ts,
                &401i64,
                &402i64,
                &0.5f64,
                &"view",
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let n = c
        .execute(
            &mixed,
            &[
                &"like",
                &600i64,
                &Some(3i64),
                &2.0f64,
                &ts,
                &601i64,
                &602i64,
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let generic = format!(
        "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES \
         ('like', 500, 3, 2.0, CAST('{t}' AS TIMESTAMP)), ('like', 501, NULL, 0.5, CAST('{t}' AS TIMESTAMP)), \
         ('view', 502, 3, 2.0, NULL)",
        t = tidal::Timestamp(now_us - hour)
    );
    assert_eq!(
        simple(&c.simple_query(&generic).await.unwrap()),
        vec!["complete 3"]
    );
    let rows = |lo: i64| {
        let c = &c;
        async move {
            c.query(
                "SELECT signal, entity_id - $1, user_id, weight, ts = $2 FROM signals \
                 WHERE entity_id BETWEEN $1 AND $1 + 2 ORDER BY entity_id",
                &[&lo, &ts],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, Option<i64>>(2),
                    r.get::<_, f64>(3),
                    r.get::<_, Option<bool>>(4),
                )
            })
            .collect::<Vec<_>>()
        }
    };
    let (f, g) = (rows(400).await, rows(500).await);
    assert_eq!(f, g);
    assert_eq!(rows(600).await, g);
    assert_eq!(f.len(), 3);
    // A bad third row fails the statement, with the generic path's SQLSTATE, and the
    // first two rows are not applied.
    let fast = c
        .execute(
            &multi,
            &[
                &"like",
                &410i64,
                &Some(3i64),
                &2.0f64,
                &ts,
                &411i64,
                &-412i64,
                &0.5f64,
                &"view",
            ],
        )
        .await;
    let generic = c
        .simple_query(
            "INSERT INTO signals (signal, entity_id) VALUES ('like', 510), ('like', 511), ('view', -512)",
        )
        .await;
    let (Err(fe), Err(ge)) = (&fast, &generic) else {
        panic!("expected errors, got {fast:?} and {generic:?}");
    };
    assert_eq!(code(fe), code(ge), "{fe:?} vs {ge:?}");
    assert!(rows(410).await.is_empty());
    assert!(rows(510).await.is_empty());

    // Inside a transaction block the event joins the block.
    let ev = ok("like", Some(1), 1.0, Some(now_us - hour));
    for (end, kept) in [("ROLLBACK", 0i64), ("COMMIT", 1)] {
        c.batch_execute("BEGIN").await.unwrap();
        c.execute(
            &wide,
            &[&ev.signal, &Some(300i64), &ev.user, &ev.weight, &ev.time()],
        )
        .await
        .unwrap();
        c.batch_execute(end).await.unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM signals WHERE entity_id = 300", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, kept, "{end}");
    }
    server.stop().await;
}

/// Every column of a row as text, decoded by its wire type (binary results).
fn cells(row: &tokio_postgres::Row) -> Vec<String> {
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_().clone();
            match ty {
                Type::INT8 => format!("{:?}", row.get::<_, Option<i64>>(i)),
                Type::INT4 => format!("{:?}", row.get::<_, Option<i32>>(i)),
                Type::FLOAT8 => format!("{:?}", row.get::<_, Option<f64>>(i)),
                Type::FLOAT4 => format!("{:?}", row.get::<_, Option<f32>>(i)),
                Type::BOOL => format!("{:?}", row.get::<_, Option<bool>>(i)),
                Type::TEXT | Type::VARCHAR => format!("{:?}", row.get::<_, Option<String>>(i)),
                Type::TIMESTAMP => format!("{:?}", row.get::<_, Option<SystemTime>>(i)),
                Type::TEXT_ARRAY => format!("{:?}", row.get::<_, Option<Vec<String>>>(i)),
                Type::FLOAT4_ARRAY => format!("{:?}", row.get::<_, Option<Vec<f32>>>(i)),
                ref other if other.name() == "vector" => {
                    format!("{:?}", row.get::<_, Option<crate::common::PgVector>>(i))
                }
                other => panic!("column {i}: no decoder for {other}"),
            }
        })
        .collect()
}

/// A prepared point read by id (`SELECT … FROM items WHERE id = $1`) skips query
/// planning at Execute (the server's fast path); it must return exactly what the same
/// query returns through DataFusion: columns, types, values, NULLs, no row for a
/// missing, negative or NULL id — and follow schema changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_point_reads_match_the_generic_path() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    c.batch_execute(
        "INSERT INTO items (id, title, score, created_at, tags, flag, rating, rank, embedding) VALUES
           (1, 'one', 1.5, '2026-11-25 10:00:00.25', ARRAY['a', 'b'], true, 2.5, -3, '[1, 2.5, 3]'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (0, 'zero', 0.0, '1999-12-31 23:59:59', ARRAY[]::TEXT[], false, 0.0, 0, '[0, 0, 0]')",
    )
    .await
    .unwrap();
    // Each fast-path shape, and a twin the fast path does not take (`AND true`, `LIMIT`,
    // an alias) that DataFusion answers.
    let pairs = [
        (
            "SELECT * FROM items WHERE id = $1",
            "SELECT * FROM items WHERE id = $1 AND true",
        ),
        (
            "SELECT title, id, embedding, tags FROM items WHERE $1 = id",
            "SELECT title, id, embedding, tags FROM items WHERE id = $1 LIMIT 5",
        ),
        (
            "select RANK as r, Score, created_at, flag, rating from ITEMS where ID = $1",
            "SELECT rank AS r, score, created_at, flag, rating FROM items AS t WHERE t.id = $1",
        ),
    ];
    for (fast, generic) in pairs {
        let f = c.prepare(fast).await.unwrap();
        let g = c.prepare(generic).await.unwrap();
        let shape = |s: &tokio_postgres::Statement| {
            s.columns()
                .iter()
                .map(|c| format!("{} {}", c.name(), c.type_()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&f), shape(&g), "{fast}");
        for id in [Some(0i64), Some(1), Some(2), Some(3), Some(-1), None] {
            let fr = c.query(&f, &[&id]).await.unwrap();
            let gr = c.query(&g, &[&id]).await.unwrap();
            assert_eq!(
                fr.iter().map(cells).collect::<Vec<_>>(),
                gr.iter().map(cells).collect::<Vec<_>>(),
                "{fast} with id {id:?}"
            );
            let expect = usize::from(matches!(id, Some(0..=2)));
            assert_eq!(fr.len(), expect, "{fast} with id {id:?}");
        }
        // A narrower declared parameter type works the same.
        let f4 = c.prepare_typed(fast, &[Type::INT4]).await.unwrap();
        let rows = c.query(&f4, &[&1i32]).await.unwrap();
        let want = c.query(&g, &[&1i64]).await.unwrap();
        assert_eq!(
            rows.iter().map(cells).collect::<Vec<_>>(),
            want.iter().map(cells).collect::<Vec<_>>()
        );
    }
    // Ranges of ids (fast up to FAST_READ_IDS_MAX ids wide), against twins with LIMIT.
    let sorted = |rows: Vec<tokio_postgres::Row>| {
        let mut v: Vec<Vec<String>> = rows.iter().map(cells).collect();
        v.sort();
        v
    };
    for (fast, generic, params) in [
        (
            "SELECT id, title, tags FROM items WHERE id BETWEEN $1 AND $1 + 2",
            "SELECT id, title, tags FROM items WHERE id BETWEEN $1 AND $1 + 2 LIMIT 100",
            vec![
                vec![Some(-5i64)],
                vec![Some(-1)],
                vec![Some(0)],
                vec![Some(1)],
                vec![Some(2)],
                vec![None],
            ],
        ),
        (
            "SELECT * FROM items WHERE id BETWEEN $2 - 1 AND $1",
            "SELECT * FROM items WHERE id BETWEEN $2 - 1 AND $1 LIMIT 100",
            vec![
                vec![Some(2i64), Some(1)],
                vec![Some(1), Some(3)],
                vec![Some(20_000), Some(0)],
                vec![Some(i64::MAX), Some(1)],
                vec![None, Some(1)],
            ],
        ),
    ] {
        let f = c.prepare(fast).await.unwrap();
        let g = c.prepare(generic).await.unwrap();
        for p in params {
            let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = p
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let fr = c.query(&f, &args).await.unwrap();
            let gr = c.query(&g, &args).await.unwrap();
            assert_eq!(sorted(fr), sorted(gr), "{fast} with {p:?}");
        }
    }
    let f = c
        .prepare("SELECT id FROM items WHERE id BETWEEN $1 AND $1 + 2")
        .await
        .unwrap();
    let ids: Vec<i64> = c
        .query(&f, &[&0i64])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![0, 1, 2]);

    // Writes are seen at once.
    let f = c
        .prepare("SELECT title FROM items WHERE id = $1")
        .await
        .unwrap();
    assert!(c.query(&f, &[&5i64]).await.unwrap().is_empty());
    c.batch_execute("INSERT INTO items (id, title) VALUES (5, 'five')")
        .await
        .unwrap();
    let row = c.query_one(&f, &[&5i64]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "five");
    c.batch_execute("DELETE FROM items WHERE id = 5")
        .await
        .unwrap();
    assert!(c.query(&f, &[&5i64]).await.unwrap().is_empty());

    // After the table is dropped and created again with other columns, the prepared
    // statement answers from the new table, as the generic path does.
    c.batch_execute(
        "DROP TABLE items;
         CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT) WITH (kind = 'item');
         INSERT INTO items (id, title) VALUES (1, 'new one');",
    )
    .await
    .unwrap();
    let fresh = c.query_one(&f, &[&1i64]).await.unwrap();
    assert_eq!(fresh.get::<_, String>(0), "new one");
    server.stop().await;
}

/// DECLARE / FETCH / MOVE / CLOSE: a result read in pieces, forward only, over both
/// protocols; cursors close with their block unless WITH HOLD; the errors PostgreSQL
/// gives for unknown, duplicate and misplaced cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_read_a_result_in_pieces() {
    let server = start().await;
    let mut c = server.connect_with_schema().await;
    // More rows than one batch of the scan, so FETCHes cross batch boundaries.
    let values: Vec<String> = (1..=20_000).map(|i| format!("({i}, 'item {i}')")).collect();
    c.batch_execute(&format!(
        "INSERT INTO items (id, title) VALUES {}",
        values.join(", ")
    ))
    .await
    .unwrap();
    let ids = |rows: &[tokio_postgres::Row]| rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();

    // Outside a block only WITH HOLD cursors exist.
    let r = c
        .batch_execute("DECLARE c CURSOR FOR SELECT id FROM items ORDER BY id")
        .await;
    assert_eq!(code(&r.unwrap_err()), "25P01");

    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("DECLARE c NO SCROLL CURSOR FOR SELECT id, title FROM items ORDER BY id")
        .await
        .unwrap();
    // Simple protocol: text rows and the FETCH tag.
    let msgs = c.simple_query("FETCH 3 FROM c").await.unwrap();
    assert_eq!(
        simple(&msgs),
        vec!["row 1|item 1", "row 2|item 2", "row 3|item 3", "complete 3"]
    );
    // Extended protocol: FETCH is described with the cursor's columns (binary here).
    let rows = c.query("FETCH FORWARD 5 IN c", &[]).await.unwrap();
    assert_eq!(ids(&rows), vec![4, 5, 6, 7, 8]);
    assert_eq!(rows[0].get::<_, String>(1), "item 4");
    assert_eq!(c.execute("MOVE 10000 c", &[]).await.unwrap(), 10_000);
    let rows = c.query("FETCH NEXT FROM c", &[]).await.unwrap();
    assert_eq!(ids(&rows), vec![10_009]);
    let rows = c.query("FETCH ALL FROM c", &[]).await.unwrap();
    assert_eq!(ids(&rows), (10_010..=20_000).collect::<Vec<_>>());
    assert!(c.query("FETCH 10 FROM c", &[]).await.unwrap().is_empty());
    assert_eq!(c.execute("MOVE ALL IN c", &[]).await.unwrap(), 0);

    // Parameters of the query are the DECLARE's; a second cursor beside the first.
    c.execute(
        "DECLARE \"Big\" CURSOR FOR SELECT id FROM items WHERE id > $1 ORDER BY id",
        &[&19_990i64],
    )
    .await
    .unwrap();
    let rows = c.query("FETCH 4 FROM \"Big\"", &[]).await.unwrap();
    assert_eq!(ids(&rows), vec![19_991, 19_992, 19_993, 19_994]);
    // Names are folded unless quoted.
    assert_eq!(
        code(&c.query("FETCH 1 FROM big", &[]).await.unwrap_err()),
        "34000"
    );
    c.batch_execute("ROLLBACK").await.unwrap();

    // Errors: unknown, duplicate, not a query, backwards; a failed block refuses FETCH.
    c.batch_execute("BEGIN; DECLARE d CURSOR FOR SELECT id FROM items")
        .await
        .unwrap();
    for (sql, state) in [
        ("FETCH 1 FROM nope", "34000"),
        ("CLOSE nope", "34000"),
        ("DECLARE d CURSOR FOR SELECT 1", "42P03"),
        (
            "DECLARE e CURSOR FOR INSERT INTO items (id) VALUES (99999)",
            "42601",
        ),
        ("FETCH BACKWARD 1 FROM d", "55000"),
        ("DECLARE e SCROLL CURSOR FOR SELECT 1", "0A000"),
    ] {
        let r = c.batch_execute(sql).await;
        assert_eq!(code(&r.unwrap_err()), state, "{sql}");
        assert_eq!(
            code(&c.batch_execute("FETCH 1 FROM d").await.unwrap_err()),
            "25P02"
        );
        c.batch_execute("ROLLBACK; BEGIN; DECLARE d CURSOR FOR SELECT id FROM items")
            .await
            .unwrap();
    }
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE id = 99999", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "DECLARE of a write applied it");

    // COMMIT closes cursors of the block; WITH HOLD ones stay until CLOSE.
    c.batch_execute(
        "BEGIN; DECLARE gone CURSOR FOR SELECT 1; \
         DECLARE kept CURSOR WITH HOLD FOR SELECT id FROM items ORDER BY id; COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(
        code(&c.query("FETCH 1 FROM gone", &[]).await.unwrap_err()),
        "34000"
    );
    assert_eq!(
        ids(&c.query("FETCH 2 FROM kept", &[]).await.unwrap()),
        vec![1, 2]
    );

    // A portal suspended by Execute's row limit holds its cursor: another FETCH of
    // the same cursor is refused instead of waiting forever.
    let tx = c.transaction().await.unwrap();
    let fetch = tx.prepare("FETCH ALL FROM kept").await.unwrap();
    let portal = tx.bind(&fetch, &[]).await.unwrap();
    let first = tx.query_portal(&portal, 5).await.unwrap();
    assert_eq!(ids(&first), vec![3, 4, 5, 6, 7]);
    let r = tx.query("FETCH 1 FROM kept", &[]).await;
    assert_eq!(code(&r.unwrap_err()), "55006");
    drop(tx); // rolls back; a WITH HOLD cursor stays
    // The portal ended with its transaction (as in PostgreSQL), and with it its hold on
    // the cursor, which reads on from where that FETCH stopped taking rows (PostgreSQL
    // runs a FETCH to completion, so its ALL would have consumed the rest).
    let r = c
        .transaction()
        .await
        .unwrap()
        .query_portal(&portal, 5)
        .await;
    assert_eq!(code(&r.unwrap_err()), "26000");
    let next = ids(&c.query("FETCH 1 FROM kept", &[]).await.unwrap());
    assert!(next.len() <= 1 && next.iter().all(|&id| id > 7), "{next:?}");
    drop(portal);
    c.batch_execute("CLOSE kept").await.unwrap();
    assert_eq!(
        code(&c.query("FETCH 1 FROM kept", &[]).await.unwrap_err()),
        "34000"
    );
    c.batch_execute("CLOSE ALL").await.unwrap();
    server.stop().await;
}

/// SAVEPOINT / RELEASE / ROLLBACK TO: part of a block undone, including after a failed
/// statement (which adds nothing, even the rows it had added before failing), nested
/// savepoints, and PostgreSQL's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_undo_part_of_a_block() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    use crate::common::item_ids as ids;
    async fn likes(c: &tokio_postgres::Client) -> i64 {
        c.query_one("SELECT count(*) FROM signals WHERE signal = 'like'", &[])
            .await
            .unwrap()
            .get(0)
    }
    let fails = |r: Result<(), tokio_postgres::Error>, state: &str| {
        assert_eq!(code(&r.unwrap_err()), state);
    };

    c.batch_execute(
        "BEGIN; INSERT INTO items (id) VALUES (1); SAVEPOINT a; \
         INSERT INTO items (id) VALUES (2); ROLLBACK TO SAVEPOINT a; \
         INSERT INTO items (id) VALUES (3); RELEASE SAVEPOINT a; COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(ids(&c).await, vec![1, 3]);

    // A failed statement: the block is aborted until ROLLBACK TO, which restores it as
    // of the savepoint; the failed INSERT's first row (added before its second row
    // failed) is not applied.
    c.batch_execute(
        "BEGIN; INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', 1, 1)",
    )
    .await
    .unwrap();
    c.batch_execute("SAVEPOINT \"Before\"").await.unwrap();
    let r = c
        .execute(
            "INSERT INTO signals (signal, entity_id, user_id, weight) VALUES \
             ('like', 1, 2, 1.0), ('like', 1, 3, $1)",
            &[&f64::NAN],
        )
        .await;
    assert_eq!(code(&r.unwrap_err()), "22023");
    fails(c.batch_execute("SELECT 1").await, "25P02");
    fails(c.batch_execute("SAVEPOINT x").await, "25P02");
    fails(c.batch_execute("ROLLBACK TO before").await, "3B001"); // quoted name
    fails(c.batch_execute("SELECT 1").await, "25P02"); // still aborted
    c.batch_execute("ROLLBACK TO \"Before\"").await.unwrap();
    c.batch_execute("INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', 1, 4)")
        .await
        .unwrap();
    // A failed statement inside a block with a savepoint, outside its rows: the same
    // for entity rows (23505 against committed rows).
    fails(
        c.batch_execute("INSERT INTO items (id) VALUES (1)").await,
        "23505",
    );
    c.batch_execute("ROLLBACK TO \"Before\"; COMMIT")
        .await
        .unwrap();
    assert_eq!(likes(&c).await, 1, "only the first INSERT survives");

    // Nested: rolling back to an outer savepoint drops the inner ones; RELEASE of an
    // outer one releases the inner ones too.
    c.batch_execute(
        "BEGIN; SAVEPOINT a; INSERT INTO items (id) VALUES (10); SAVEPOINT b; \
         INSERT INTO items (id) VALUES (11); ROLLBACK TO a",
    )
    .await
    .unwrap();
    fails(c.batch_execute("RELEASE b").await, "3B001");
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute(
        "BEGIN; SAVEPOINT a; SAVEPOINT b; INSERT INTO items (id) VALUES (12); \
         RELEASE a; COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(ids(&c).await, vec![1, 3, 12]);
    // A name used twice: the newest one counts.
    c.batch_execute(
        "BEGIN; SAVEPOINT s; INSERT INTO items (id) VALUES (13); SAVEPOINT s; \
         INSERT INTO items (id) VALUES (14); ROLLBACK TO s; COMMIT",
    )
    .await
    .unwrap();
    assert_eq!(ids(&c).await, vec![1, 3, 12, 13]);

    // An error in a protocol step (here Parse) aborts the block like a failed
    // statement; in an aborted block only its end or ROLLBACK TO is accepted.
    c.batch_execute("BEGIN; SAVEPOINT p; INSERT INTO items (id) VALUES (20)")
        .await
        .unwrap();
    assert_eq!(code(&c.prepare("SELEC 1").await.unwrap_err()), "42601");
    for sql in [
        "SELECT 1",
        "SHOW search_path",
        "SET search_path = x",
        "BEGIN",
    ] {
        fails(c.batch_execute(sql).await, "25P02");
    }
    c.batch_execute("ROLLBACK TO p; INSERT INTO items (id) VALUES (21); COMMIT")
        .await
        .unwrap();
    assert_eq!(ids(&c).await, vec![1, 3, 12, 13, 21]);

    for sql in ["SAVEPOINT a", "RELEASE a", "ROLLBACK TO a"] {
        fails(c.batch_execute(sql).await, "25P01");
    }
    fails(c.batch_execute("BEGIN; RELEASE nope").await, "3B001");
    c.batch_execute("ROLLBACK").await.unwrap();
    server.stop().await;
}

/// `DEALLOCATE name | ALL` forgets prepared statements (what psycopg sends for the ones
/// it prepared; the named form is exercised by the psycopg check, whose statement names
/// are known).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_forgets_prepared_statements() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    let a = c.prepare("SELECT 1::BIGINT").await.unwrap();
    let b = c.prepare("SELECT 2::BIGINT").await.unwrap();
    assert_eq!(c.query_one(&a, &[]).await.unwrap().get::<_, i64>(0), 1);
    c.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_eq!(code(&c.query_one(&a, &[]).await.unwrap_err()), "26000");
    assert_eq!(code(&c.query_one(&b, &[]).await.unwrap_err()), "26000");
    assert_eq!(
        code(&c.batch_execute("DEALLOCATE nope").await.unwrap_err()),
        "26000"
    );
    // Over the extended protocol too.
    let d = c.prepare("SELECT 3::BIGINT").await.unwrap();
    c.execute("DEALLOCATE PREPARE ALL", &[]).await.unwrap();
    assert_eq!(code(&c.query_one(&d, &[]).await.unwrap_err()), "26000");
    assert_eq!(
        c.query_one("SELECT 4::BIGINT", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        4
    );
    server.stop().await;
}

/// Cursors follow the block's outcome as in PostgreSQL: a WITH HOLD cursor outlives
/// its block only if the block commits; ROLLBACK TO SAVEPOINT closes the cursors
/// declared after the savepoint; DISCARD ALL closes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_follow_the_block_outcome() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    c.batch_execute("INSERT INTO items (id) VALUES (1), (2), (3)")
        .await
        .unwrap();
    let gone = |r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>| {
        assert_eq!(code(&r.unwrap_err()), "34000");
    };
    // Rolled back (explicitly, by COMMIT of an aborted block, by a failing COMMIT):
    // the held cursor goes with the block.
    c.batch_execute("BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT id FROM items; ROLLBACK")
        .await
        .unwrap();
    gone(c.query("FETCH 1 FROM h", &[]).await);
    c.batch_execute("BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT id FROM items")
        .await
        .unwrap();
    assert!(c.batch_execute("SELECT 1 / 0").await.is_err());
    c.batch_execute("COMMIT").await.unwrap();
    gone(c.query("FETCH 1 FROM h", &[]).await);
    c.batch_execute(
        "BEGIN; INSERT INTO items (id) VALUES (9); DECLARE h CURSOR WITH HOLD FOR SELECT 1",
    )
    .await
    .unwrap();
    let other = server.connect().await;
    other
        .batch_execute("INSERT INTO items (id) VALUES (9)")
        .await
        .unwrap();
    assert_eq!(code(&c.batch_execute("COMMIT").await.unwrap_err()), "23505");
    gone(c.query("FETCH 1 FROM h", &[]).await);
    // A held cursor declared before the block, or in a committed one, survives it.
    c.batch_execute(
        "DECLARE outer_h CURSOR WITH HOLD FOR SELECT id FROM items ORDER BY id; \
         BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT id FROM items ORDER BY id; COMMIT; \
         BEGIN; ROLLBACK",
    )
    .await
    .unwrap();
    assert_eq!(c.query("FETCH 1 FROM outer_h", &[]).await.unwrap().len(), 1);
    assert_eq!(c.query("FETCH 1 FROM h", &[]).await.unwrap().len(), 1);

    // ROLLBACK TO closes the cursors declared after the savepoint, not before.
    c.batch_execute(
        "BEGIN; DECLARE a CURSOR FOR SELECT 1; SAVEPOINT s; DECLARE b CURSOR FOR SELECT 2; \
         ROLLBACK TO s",
    )
    .await
    .unwrap();
    gone(c.query("FETCH 1 FROM b", &[]).await);
    c.batch_execute("ROLLBACK TO s").await.unwrap();
    assert_eq!(c.query("FETCH 1 FROM a", &[]).await.unwrap().len(), 1);
    c.batch_execute("DECLARE b CURSOR FOR SELECT 2; COMMIT")
        .await
        .unwrap();

    // DISCARD ALL: refused in a block; outside, closes every cursor.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        code(&c.batch_execute("DISCARD ALL").await.unwrap_err()),
        "25001"
    );
    c.batch_execute("ROLLBACK; DISCARD ALL").await.unwrap();
    gone(c.query("FETCH 1 FROM outer_h", &[]).await);
    gone(c.query("FETCH 1 FROM h", &[]).await);
    server.stop().await;
}
