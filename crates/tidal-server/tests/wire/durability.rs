//! The real `tidal` binary: acknowledged writes survive SIGKILL; SIGTERM shuts down
//! cleanly (exit 0) and loses nothing.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::{Proc, connect, expect_code};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes schema, rows and events through the wire; every call is acknowledged.
async fn write_workload(c: &Client) {
    c.batch_execute(
        "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '14 days' WINDOWS ('24h', 'all');
         CREATE SIGNAL view ON items DECAY NONE WINDOWS ('all');
         CREATE SIGNAL gone ON items DECAY NONE WINDOWS ('all');
         DROP SIGNAL gone;
         CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT, tags TEXT[], embedding VECTOR(2))
             WITH (kind = 'item')",
    )
    .await
    .unwrap();
    let ins = c
        .prepare("INSERT INTO items (id, title, tags, embedding) VALUES ($1, $2, $3, $4)")
        .await
        .unwrap();
    for id in 1..=40i64 {
        let tags = vec![format!("t{}", id % 3), "x y".to_string()];
        let n = c
            .execute(
                &ins,
                &[
                    &id,
                    &format!("item {id}"),
                    &tags,
                    &crate::common::PgVector(vec![id as f32, -0.5]),
                ],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let sig = c
        .prepare("INSERT INTO signals (signal, entity_id, user_id, weight) VALUES ($1, $2, $3, $4)")
        .await
        .unwrap();
    for i in 0..120i64 {
        let signal = if i % 3 == 0 { "view" } else { "like" };
        let n = c
            .execute(
                &sig,
                &[&signal, &(i % 40 + 1), &(i / 40), &(1.0 + (i % 5) as f64)],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    // Backdated events, several in one statement.
    let n = c
        .execute(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES \
             ('like', 1, NULL, 0.5, '2025-01-01 00:00:00'), ('view', 2, 9, 2.0, '2025-06-01 12:00:00')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        c.execute("UPDATE items SET title = 'renamed' WHERE id <= 5", &[])
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        c.execute("DELETE FROM items WHERE id > 35", &[])
            .await
            .unwrap(),
        5
    );
}

/// Everything a client can see, as text (simple protocol), for before/after checks.
async fn snapshot(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SHOW SIGNALS",
        "SELECT id, title, tags, embedding, signal_total('like', id), signal_total('view', id), \
                last_signal_at('like', id) FROM items ORDER BY id",
        "SELECT signal, entity_id, user_id, weight, ts FROM signals \
         ORDER BY ts, signal, entity_id, user_id, weight",
    ] {
        for m in c.simple_query(sql).await.unwrap() {
            if let SimpleQueryMessage::Row(r) = m {
                out.push(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
        out.push("--".into());
    }
    out
}

fn sanity(snap: &[String]) {
    // 2 signals + separator, 35 items + separator, 122 events + separator.
    assert_eq!(snap.len(), 2 + 1 + 35 + 1 + 122 + 1, "{snap:#?}");
    assert!(snap[0].starts_with("like|"), "{}", snap[0]);
    assert!(snap[1].starts_with("view|"), "{}", snap[1]);
    assert!(
        snap[3].starts_with("1|renamed|{t1,\"x y\"}|[1,-0.5]|"),
        "{}",
        snap[3]
    );
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("tidal.log");
    let rt = runtime();

    let mut proc = Proc::spawn(&data, &log);
    let before = rt.block_on(async {
        let c = connect(proc.addr).await;
        write_workload(&c).await;
        snapshot(&c).await
    });
    sanity(&before);
    proc.kill9();

    let proc = Proc::spawn(&data, &log);
    rt.block_on(async {
        let c = connect(proc.addr).await;
        let after = snapshot(&c).await;
        assert_eq!(after, before, "state after SIGKILL + restart differs");
        // The recovered primary-key index still refuses duplicates, and new writes work.
        expect_code(
            c.execute("INSERT INTO items (id) VALUES (1)", &[]).await,
            "23505",
        );
        assert_eq!(
            c.execute(
                "INSERT INTO signals (signal, entity_id) VALUES ('view', 1)",
                &[]
            )
            .await
            .unwrap(),
            1
        );
        // The dropped signal stays dropped.
        expect_code(c.query("SELECT decay('gone', 1)", &[]).await, "42704");
    });
}

#[test]
fn sigterm_exits_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("tidal.log");
    let rt = runtime();

    let mut proc = Proc::spawn(&data, &log);
    let (before, idle) = rt.block_on(async {
        let c = connect(proc.addr).await;
        write_workload(&c).await;
        let snap = snapshot(&c).await;
        (snap, c)
    });
    sanity(&before);
    // SIGTERM with a client still connected (idle).
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(proc.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = proc.wait_exit(Duration::from_secs(40));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        exit.success(),
        "tidal exited with {exit:?}; log:\n{log_text}"
    );
    assert!(
        log_text.contains("checkpointed and closed"),
        "no clean-shutdown line in the log:\n{log_text}"
    );
    rt.block_on(async {
        // The idle client's connection was closed by the server.
        assert!(idle.simple_query("SELECT 1").await.is_err());
    });

    let mut proc = Proc::spawn(&data, &log);
    rt.block_on(async {
        let c = connect(proc.addr).await;
        assert_eq!(
            snapshot(&c).await,
            before,
            "state after SIGTERM + restart differs"
        );
    });
    // A second clean stop right after recovery also exits 0.
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(proc.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(proc.wait_exit(Duration::from_secs(40)).success());
}
