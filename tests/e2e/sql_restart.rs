//! Schema, entities and signals created purely through SQL survive SIGKILL and read
//! back identically through SQL (history included).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use tidal::{Config, Database};

use crate::child;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.checkpoint_wal_bytes = None;
    c.wal_segment_bytes = 32 << 10;
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const SCHEMA: &[&str] = &[
    "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '7 days' WINDOWS ('1h', '24h', '7d') MARKS seen",
    "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '14 days' WINDOWS ('24h', '7d', 'all') MARKS liked",
    "CREATE SIGNAL follow ON creators DECAY NONE WINDOWS ('all')",
    "CREATE SIGNAL gone ON items DECAY NONE WINDOWS ('all')",
    "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, created_at TIMESTAMP, \
     title TEXT, body TEXT, n INT, score DOUBLE, r REAL, hidden BOOLEAN, tags TEXT[], \
     embedding VECTOR(3)) WITH (kind = 'item', text_fields = 'title,body')",
    "CREATE TABLE creators (id BIGINT PRIMARY KEY, name TEXT) WITH (kind = 'creator')",
    "CREATE TABLE users (id BIGINT PRIMARY KEY, region TEXT) WITH (kind = 'user')",
];

/// Statements after the schema; a checkpoint is taken after the first half so state
/// comes back from checkpoint + Parquet history + WAL replay together.
fn workload() -> Vec<String> {
    let mut out = Vec::new();
    for c in 0..5 {
        out.push(format!(
            "INSERT INTO creators (id, name) VALUES ({c}, 'creator {c}')"
        ));
    }
    for batch in 0..8 {
        let rows: Vec<String> = (0..25)
            .map(|i| {
                let id = batch * 25 + i;
                format!(
                    "({id}, {}, TIMESTAMP '2026-11-{:02} 08:00:00', 'title {id}', 'body', {}, {}.25, {}.5, {}, \
                     ARRAY['t{}', 'x'], '[{id}, 0.5, -1]')",
                    id % 5,
                    1 + id % 20,
                    id % 7,
                    id,
                    id % 3,
                    id % 2 == 0,
                    id % 4
                )
            })
            .collect();
        out.push(format!(
            "INSERT INTO items (id, creator_id, created_at, title, body, n, score, r, hidden, tags, embedding) VALUES {}",
            rows.join(", ")
        ));
        let events: Vec<String> = (0..60)
            .map(|i| {
                let sig = ["view", "like", "gone"][(i % 3) as usize];
                let user = if i % 5 == 0 {
                    "NULL".into()
                } else {
                    (i % 9).to_string()
                };
                format!(
                    "('{sig}', {}, {user}, {}, TIMESTAMP '2026-11-{:02} {:02}:{:02}:00')",
                    (batch * 31 + i * 7) % 200,
                    1 + i % 3,
                    15 + (i + batch) % 5,
                    i % 24,
                    batch
                )
            })
            .collect();
        out.push(format!(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES {}",
            events.join(", ")
        ));
        out.push(format!(
            "INSERT INTO signals (signal, entity_id, weight, ts) VALUES ('follow', {}, 1, '2026-11-19 00:00:00')",
            batch % 5
        ));
        out.push(format!(
            "UPDATE items SET title = 'edited {batch}', score = score * 2 WHERE id % 10 = {batch}"
        ));
        out.push(format!(
            "INSERT INTO items (id, title) VALUES ({}, 'upserted') \
             ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title",
            batch * 3
        ));
        out.push(format!("DELETE FROM items WHERE id = {}", batch * 11 + 1));
        if batch == 2 {
            out.push(
                "CREATE PROFILE trend ON items (SCORE decay('like') + window_count('view', '7d'), \
                 GATE signal_total('like') >= 0)"
                    .into(),
            );
            out.push("CREATE PROFILE doomed ON items (SCORE decay('view'))".into());
        }
        if batch == 4 {
            out.push("CHECKPOINT".into());
        }
        if batch == 6 {
            // Version 2, after the checkpoint: comes back from WAL replay.
            out.push(
                "CREATE OR REPLACE PROFILE trend ON items (SCORE 2 * decay('like') + \
                 window_count('view', '7d'), FILTER n <> 3, RECENCY HALF_LIFE '30 days', \
                 DIVERSITY max_per_creator 2)"
                    .into(),
            );
            out.push("DROP PROFILE doomed".into());
            // Negative weights clear marks.
            out.push(
                "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES \
                 ('view', 7, 7, -1, '2026-11-19 00:00:00'), ('like', 14, 7, -1, '2026-11-19 00:00:01')"
                    .into(),
            );
        }
    }
    out.push("INSERT INTO users (id, region) VALUES (1, 'eu'), (2, 'us')".into());
    out.push("DROP SIGNAL gone".into());
    out.push("INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', 5, 1)".into());
    out
}

/// Everything visible through SQL, at fixed instants, as text.
fn dump(db: &Database) -> String {
    let at = "TIMESTAMP '2026-11-20 00:00:00'";
    let queries = [
        "SHOW SIGNALS".to_string(),
        "SELECT * FROM items ORDER BY id".to_string(),
        "SELECT * FROM creators ORDER BY id".to_string(),
        "SELECT * FROM users ORDER BY id".to_string(),
        format!(
            "SELECT id, decay('view', id, {at}) AS v, decay('like', id, {at}) AS l, \
             window_count('view', id, '24h', {at}) AS w, velocity('view', id, '7d', {at}) AS vel, \
             acceleration('like', id, '24h', {at}) AS acc, signal_total('like', id) AS t, \
             last_signal_at('view', id) AS last FROM items ORDER BY id"
        ),
        format!(
            "SELECT id, signal_total('follow', id), decay('follow', id, {at}) FROM creators ORDER BY id"
        ),
        // ts defaults to arrival time for the last event; leave it out of the dump.
        "SELECT signal, entity_id, user_id, weight, ts FROM signals \
         WHERE ts < TIMESTAMP '2026-11-25' ORDER BY signal, entity_id, ts, user_id, weight"
            .to_string(),
        "SELECT signal, count(*), sum(weight) FROM signals GROUP BY signal ORDER BY signal"
            .to_string(),
        "SELECT entity_id, signal, total, last_ts FROM signal_state ORDER BY signal, entity_id"
            .to_string(),
        "SHOW PROFILES".to_string(),
        "RETRIEVE items USING PROFILE trend LIMIT 30 AT '2026-11-20 00:00:00'".to_string(),
        format!(
            "SELECT id, rank_profile('trend', id, {at}) AS s FROM items ORDER BY s DESC, id LIMIT 40"
        ),
    ]
    .into_iter()
    .chain((1..9).flat_map(|u| {
        [
            format!(
                "RETRIEVE items FOR USER {u} USING PROFILE trend FILTER unseen LIMIT 40 \
                 AT '2026-11-20 00:00:00'"
            ),
            format!(
                "RETRIEVE items FOR USER {u} USING PROFILE trend FILTER liked LIMIT 40 \
                 AT '2026-11-20 00:00:00'"
            ),
        ]
    }));
    let rt = rt();
    let mut out = String::new();
    for q in queries {
        let batches = rt
            .block_on(db.sql(&q))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        out.push_str(&q);
        out.push('\n');
        out.push_str(
            &tidal::datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string(),
        );
        out.push('\n');
    }
    out
}

#[test]
#[ignore = "child process entry point for sql_restart::sql_state_survives_sigkill"]
fn sql_child() {
    if child::role().as_deref() != Some("sql") {
        return;
    }
    let dir = std::env::var(child::DIR_VAR).unwrap();
    let db = Database::open_with(config(Path::new(&dir))).unwrap();
    let rt = rt();
    for s in SCHEMA {
        rt.block_on(db.sql(s))
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    for s in workload() {
        if s == "CHECKPOINT" {
            db.checkpoint().unwrap();
            continue;
        }
        rt.block_on(db.sql(&s))
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let path = Path::new(&dir).join("expected.txt");
    std::fs::write(&path, dump(&db)).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    println!("TIDAL-CHILD-DONE");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn sql_state_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = child::spawn("sql_restart::sql_child", "sql", dir.path(), &[]);
    let stdout = proc.stdout.take().unwrap();
    let done = BufReader::new(stdout)
        .lines()
        .any(|l| l.unwrap().trim_end().ends_with("TIDAL-CHILD-DONE"));
    child::kill9(&mut proc);
    assert!(done, "child exited before finishing its workload");
    let expected = std::fs::read_to_string(dir.path().join("expected.txt")).unwrap();
    // The dump is substantial: every table and the history have rows.
    assert!(expected.lines().count() > 600, "{expected}");
    assert!(
        expected.contains("| gone   |"),
        "dropped signal's events stay in history"
    );
    assert!(expected.contains("DIVERSITY max_per_creator 2") && !expected.contains("doomed"));
    let db = Database::open_with(config(dir.path())).unwrap();
    assert_eq!(dump(&db), expected);
    // Again after a clean shutdown: now everything comes from checkpoint + Parquet.
    db.shutdown().unwrap();
    drop(db);
    let db = Database::open_with(config(dir.path())).unwrap();
    assert_eq!(db.engine().read().history().unwrap().batches.len(), 0);
    assert_eq!(dump(&db), expected);
}
