//! SQLSTATEs over the wire; the connection survives every error; failed statements
//! apply nothing.

use crate::common::{code, expect_code, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlstates_over_the_wire() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    c.batch_execute("INSERT INTO items (id, title) VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();

    // (statement, SQLSTATE), each through the simple and the extended protocol.
    let cases: &[(&str, &str)] = &[
        ("SELEC 1", "42601"),
        ("SELECT * FROM nope", "42P01"),
        ("SELECT nope FROM items", "42703"),
        ("INSERT INTO items (id, nope) VALUES (5, 1)", "42703"),
        ("SELECT window_count('like', 1, '1h')", "22023"), // window not declared on like
        ("SELECT window_count('like', 1, '5s')", "22023"), // not a window at all
        ("SELECT velocity('like', 1, 'all')", "22023"),
        (
            "CREATE SIGNAL bad ON items DECAY EXPONENTIAL HALF_LIFE '0 seconds' WINDOWS ('all')",
            "22023",
        ),
        (
            "CREATE SIGNAL bad ON items DECAY EXPONENTIAL HALF_LIFE '11 years' WINDOWS ('all')",
            "22023",
        ),
        (
            "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('all')",
            "22023",
        ),
        (
            "CREATE SIGNAL bad ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('7x')",
            "42601",
        ),
        ("INSERT INTO items (id, title) VALUES (1, 'again')", "23505"),
        ("SELECT 1 / 0", "22012"),
        ("SELECT id / 0 FROM items", "22012"),
        ("SELECT decay('nope', 1)", "42704"),
        (
            "INSERT INTO signals (signal, entity_id) VALUES ('nope', 1)",
            "42704",
        ),
        ("DROP SIGNAL nope", "42704"),
        (
            "INSERT INTO signals (signal, entity_id, weight) VALUES ('like', 1, 'NaN'::double)",
            "22023",
        ),
        ("INSERT INTO items (id, title) VALUES (NULL, 'x')", "23502"),
        (
            "INSERT INTO items (id, embedding) VALUES (9, '[1,2]')",
            "22000",
        ),
        // SQL-level prepared statements would be shared by all connections.
        ("PREPARE q AS SELECT id FROM items WHERE id = $1", "0A000"),
        ("EXECUTE q(1)", "0A000"),
        ("DEALLOCATE q", "26000"),
        // A table's text fields are fixed at CREATE; there is no ALTER TABLE.
        ("ALTER TABLE items ADD COLUMN summary TEXT", "0A000"),
        ("SELECT * FROM search('items', 'piano')", "22023"),
        ("SEARCH items QUERY 'piano' FUSION rrf", "42601"),
    ];
    for (sql, expected) in cases {
        let r = c.simple_query(sql).await;
        match r {
            Ok(v) => panic!(
                "simple: {sql}: expected {expected}, got {} messages",
                v.len()
            ),
            Err(e) => assert_eq!(code(&e), *expected, "simple: {sql}: {e:?}"),
        }
        let r = c.query(*sql, &[]).await;
        match r {
            Ok(v) => panic!("extended: {sql}: expected {expected}, got {} rows", v.len()),
            Err(e) => assert_eq!(code(&e), *expected, "extended: {sql}: {e:?}"),
        }
        // The connection keeps working after every error.
        let one: i32 = c.query_one("SELECT 1::INT", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "after {sql}");
    }

    // Errors carry a readable message naming the problem.
    let msg = expect_code(c.query("SELECT decay('nope', 1)", &[]).await, "42704");
    assert!(msg.contains("nope"), "{msg}");
    let msg = expect_code(c.query("SELECT * FROM nope", &[]).await, "42P01");
    assert!(msg.contains("nope"), "{msg}");

    // Errors at prepare time (Parse) and at execution with bound parameters.
    expect_code(c.prepare("SELEC $1").await, "42601");
    expect_code(
        c.prepare("SELECT nope FROM items WHERE id = $1").await,
        "42703",
    );
    expect_code(
        c.execute(
            "INSERT INTO items (id, title) VALUES ($1, $2)",
            &[&2i64, &"dup"],
        )
        .await,
        "23505",
    );
    expect_code(
        c.query("SELECT decay($1, id) FROM items", &[&"nope"]).await,
        "42704",
    );
    expect_code(c.prepare("SELECT 1; SELECT 2").await, "42601");

    // Nothing of the failed statements was applied.
    let rows = c
        .query("SELECT id, title FROM items ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, "one".to_string()), (2, "two".to_string())]);
    let names: Vec<String> = c
        .query("SHOW SIGNALS", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("name"))
        .collect();
    assert_eq!(names, vec!["like".to_string(), "view".into()]);
    let events: i64 = c
        .query_one("SELECT count(*) FROM signals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_multi_row_insert_applies_nothing() {
    let server = start().await;
    let c = server.connect_with_schema().await;
    c.batch_execute("INSERT INTO items (id, title) VALUES (1, 'one')")
        .await
        .unwrap();

    // The duplicate is the last row: the rows before it must not be applied.
    let r = c
        .execute(
            "INSERT INTO items (id, title) VALUES (10, 'a'), (11, 'b'), (1, 'dup')",
            &[],
        )
        .await;
    expect_code(r, "23505");
    // Duplicate inside the statement itself.
    let r = c
        .execute(
            "INSERT INTO items (id, title) VALUES ($1, 'a'), ($1, 'b')",
            &[&20i64],
        )
        .await;
    expect_code(r, "23505");
    // A bad vector in the last row.
    let r = c
        .execute(
            "INSERT INTO items (id, embedding) VALUES (30, '[1,2,3]'), (31, '[1,2]')",
            &[],
        )
        .await;
    expect_code(r, "22000");
    let ids = crate::common::item_ids(&c).await;
    assert_eq!(ids, vec![1]);

    // Signals: one unknown signal or one NaN weight rejects the whole statement.
    let r = c
        .execute(
            "INSERT INTO signals (signal, entity_id, user_id, weight) \
             VALUES ('like', 1, 1, 1.0), ('like', 1, 2, 1.0), ('nope', 1, 3, 1.0)",
            &[],
        )
        .await;
    expect_code(r, "42704");
    let r = c
        .execute(
            "INSERT INTO signals (signal, entity_id, user_id, weight) VALUES \
             ($1, 1, 1, 1.0), ($1, 1, 2, $2)",
            &[&"like", &f64::NAN],
        )
        .await;
    expect_code(r, "22023");
    let r = c
        .execute(
            "INSERT INTO signals (signal, entity_id, ts) VALUES ('like', 1, now()), \
             ('like', 1, now() + INTERVAL '1 hour')",
            &[],
        )
        .await;
    expect_code(r, "22023");
    let row = c
        .query_one(
            "SELECT signal_total('like', 1), (SELECT count(*) FROM signals)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 0.0);
    assert_eq!(row.get::<_, i64>(1), 0);

    // A good multi-row statement afterwards applies every row.
    let n = c
        .execute(
            "INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', 1, 1), ('like', 1, 2)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let total: f64 = c
        .query_one("SELECT signal_total('like', 1)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2.0);
    server.stop().await;
}
