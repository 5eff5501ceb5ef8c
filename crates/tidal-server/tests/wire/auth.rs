//! Authentication: SCRAM-SHA-256 with a configured password; loopback-only user
//! `tidal` without one.

use crate::common::{code, start, start_with, try_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_via_scram() {
    let server = start_with(|c| c.password = Some("s3cret pass".into())).await;
    for (user, password, expected) in [
        ("tidal", Some("wrong"), "28P01"),
        ("tidal", Some("s3cret pas"), "28P01"),
        ("tidal", Some("s3cret pass "), "28P01"),
        ("tidal", Some(""), "28P01"),
        // The only role is tidal: another user is refused before the password.
        ("someone", Some("s3cret pass"), "28000"),
    ] {
        match try_connect(server.addr, user, password).await {
            Ok(_) => panic!("{user}/{password:?} was accepted"),
            Err(e) => assert_eq!(code(&e), expected, "{user}/{password:?}: {e:?}"),
        }
    }
    // No password at all: the client cannot answer the SCRAM challenge.
    assert!(try_connect(server.addr, "tidal", None).await.is_err());

    let c = try_connect(server.addr, "tidal", Some("s3cret pass"))
        .await
        .expect("the right password is accepted");
    c.batch_execute(
        "CREATE SIGNAL like ON items DECAY NONE WINDOWS ('all');
         INSERT INTO signals (signal, entity_id) VALUES ('like', 5)",
    )
    .await
    .unwrap();
    let total: f64 = c
        .query_one("SELECT signal_total('like', $1)", &[&5i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1.0);
    // Cancel requests work on an authenticated connection too (pid/secret issued by
    // the SASL path).
    let token = c.cancel_token();
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    let slow = tokio::spawn(async move {
        c.query(
            "SELECT max(a.value * b.value) FROM generate_series(1, 1000000) a \
             CROSS JOIN generate_series(1, 1000000) b",
            &[],
        )
        .await
        .map(|r| r.len())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), slow)
        .await
        .expect("the cancelled query did not end")
        .unwrap();
    assert_eq!(code(&r.unwrap_err()), "57014");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_password_only_user_tidal() {
    let server = start().await;
    for user in ["postgres", "Tidal", "root"] {
        match try_connect(server.addr, user, None).await {
            Ok(_) => panic!("user {user} was accepted"),
            Err(e) => assert_eq!(code(&e), "28000", "{user}: {e:?}"),
        }
    }
    // User tidal from loopback needs no password (and a supplied one is not asked for).
    let c = try_connect(server.addr, "tidal", Some("anything"))
        .await
        .unwrap();
    let v: i32 = c.query_one("SELECT 1::INT", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
    server.stop().await;
}
