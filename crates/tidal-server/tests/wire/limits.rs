//! Connection limit, statement timeout, cancel requests, many concurrent clients.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::common::{code, connect, start, start_with, try_connect};

/// A query that runs for minutes: a 10¹² row cross join that no statistics can
/// answer.
const SLOW: &str = "SELECT max(a.value * b.value + a.value) FROM generate_series(1, 1000000) a \
                    CROSS JOIN generate_series(1, 1000000) b";

/// Runs `SLOW` and returns its error; fails (instead of hanging) if the server does not
/// stop it within 20 s.
async fn slow_query_error(c: &tokio_postgres::Client, simple: bool) -> tokio_postgres::Error {
    let run = async {
        if simple {
            c.simple_query(SLOW).await.map(|_| ())
        } else {
            c.query(SLOW, &[]).await.map(|_| ())
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(())) => panic!("the slow query finished"),
        Ok(Err(e)) => e,
        Err(_) => panic!("the server did not stop the slow query within 20 s"),
    }
}

/// After a slow query was stopped, the server must answer quickly again (the query's
/// work really stopped, not just its result stream).
async fn assert_responsive(c: &tokio_postgres::Client) {
    let started = Instant::now();
    let q = c.query_one("SELECT count(*) FROM generate_series(1, 1000)", &[]);
    let n: i64 = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("no answer within 10 s after the slow query was stopped")
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a trivial query took {:?} after the slow one was stopped",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections() {
    let server = start_with(|c| c.max_connections = 2).await;
    let a = server.connect().await;
    let b = server.connect().await;
    let err = match try_connect(server.addr, "tidal", None).await {
        Ok(_) => panic!("a third connection was accepted with max_connections = 2"),
        Err(e) => e,
    };
    assert_eq!(code(&err), "53300", "{err:?}");
    // The two admitted connections work.
    for c in [&a, &b] {
        let v: i32 = c.query_one("SELECT 7::INT", &[]).await.unwrap().get(0);
        assert_eq!(v, 7);
    }
    // Closing one frees its slot (the server notices the close asynchronously).
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        match try_connect(server.addr, "tidal", None).await {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(code(&e), "53300", "{e:?}");
                assert!(Instant::now() < deadline, "slot not freed after 10 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let v: i32 = c.query_one("SELECT 8::INT", &[]).await.unwrap().get(0);
    assert_eq!(v, 8);
    drop((b, c));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout() {
    let server = start().await;
    let c = server.connect().await;
    c.batch_execute("SET statement_timeout = '50ms'")
        .await
        .unwrap();
    let started = Instant::now();
    let err = slow_query_error(&c, false).await;
    assert_eq!(code(&err), "57014", "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout took {:?}",
        started.elapsed()
    );
    // Same through the simple protocol.
    let err = slow_query_error(&c, true).await;
    assert_eq!(code(&err), "57014", "{err:?}");
    // The connection is still usable, and fast statements are unaffected.
    assert_responsive(&c).await;
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    let v: i32 = c.query_one("SELECT 3::INT", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_default_statement_timeout() {
    let server = start_with(|c| c.statement_timeout = Some(Duration::from_millis(100))).await;
    let c = server.connect().await;
    let err = slow_query_error(&c, false).await;
    assert_eq!(code(&err), "57014", "{err:?}");
    // A client may lift it for its own session.
    c.batch_execute("SET statement_timeout TO 0").await.unwrap();
    let t: String = c
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "0");
    assert_responsive(&c).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request() {
    let server = start().await;
    let c = server.connect().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        let r = c.query(SLOW, &[]).await;
        (r.map(|rows| rows.len()), c)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !slow.is_finished(),
        "the slow query finished before the cancel"
    );
    token.cancel_query(NoTls).await.unwrap();
    let (r, c) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the cancelled query did not end within 10 s")
        .unwrap();
    let err = r.unwrap_err();
    assert_eq!(code(&err), "57014", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_responsive(&c).await;

    // A cancel aimed at another, idle connection touches neither this connection nor
    // that connection's next statement.
    let other = server.connect().await;
    other.cancel_token().cancel_query(NoTls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for client in [&c, &other] {
        let v: i64 = client
            .query_one("SELECT count(*) FROM generate_series(1, 100000)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 100000);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_clients() {
    const CLIENTS: i64 = 64;
    const ROUNDS: i64 = 5;
    let server = start().await;
    server
        .connect()
        .await
        .batch_execute(
            "CREATE SIGNAL view ON items DECAY NONE WINDOWS ('all');
             CREATE TABLE items (id BIGINT PRIMARY KEY, owner BIGINT) WITH (kind = 'item')",
        )
        .await
        .unwrap();
    let addr = server.addr;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let c = connect(addr).await;
            let ins = c
                .prepare(
                    "INSERT INTO signals (signal, entity_id, user_id, weight) \
                     VALUES ('view', $1, $2, 1.0), ('view', $1, $2, 2.0)",
                )
                .await
                .unwrap();
            c.execute("INSERT INTO items (id, owner) VALUES ($1, $1)", &[&client])
                .await
                .unwrap();
            for round in 0..ROUNDS {
                // Every client writes its own entity and a shared one (id 1000).
                let n = c.execute(&ins, &[&client, &round]).await.unwrap();
                assert_eq!(n, 2);
                let n = c
                    .execute(&ins, &[&1000i64, &(client * 100 + round)])
                    .await
                    .unwrap();
                assert_eq!(n, 2);
                // Read your own writes.
                let total: f64 = c
                    .query_one("SELECT signal_total('view', $1)", &[&client])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(total, 3.0 * (round + 1) as f64);
                let events: i64 = c
                    .query_one(
                        "SELECT count(*) FROM signals WHERE entity_id = $1",
                        &[&client],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(events, 2 * (round + 1));
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a client did not finish within 60 s")
            .unwrap();
    }
    let c = server.connect().await;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM signals) AS events, \
                    (SELECT count(*) FROM items) AS items, \
                    signal_total('view', 1000) AS shared_total, \
                    (SELECT count(*) FROM signals WHERE entity_id = 1000) AS shared_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), CLIENTS * ROUNDS * 4);
    assert_eq!(row.get::<_, i64>(1), CLIENTS);
    assert_eq!(row.get::<_, f64>(2), (CLIENTS * ROUNDS * 3) as f64);
    assert_eq!(row.get::<_, i64>(3), CLIENTS * ROUNDS * 2);
    let per_client: Vec<(i64, f64)> = c
        .query(
            "SELECT id, signal_total('view', id) FROM items ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, f64)> = (0..CLIENTS).map(|i| (i, (ROUNDS * 3) as f64)).collect();
    assert_eq!(per_client, expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_fails_the_query_not_the_server() {
    let server = start_with(|c| c.memory_limit_bytes = 8 << 20).await;
    let c = server.connect().await;
    // Aggregating 20 M values into one array cannot spill: over the pool it must fail
    // with 53200, and the server must keep serving.
    let err = c
        .simple_query("SELECT cardinality(array_agg(value)) FROM generate_series(1, 20000000)")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "53200", "{err}");
    assert_responsive(&c).await;
    server.stop().await;
}
