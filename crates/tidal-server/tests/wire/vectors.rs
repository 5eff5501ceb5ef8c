//! Vector search over the wire: an HNSW index comes back complete after SIGKILL during
//! bulk COPY of vectors (every acknowledged row is found by its own vector through the
//! index, deleted rows are not, a statement in flight applied all or nothing), without
//! a rebuild; EXPLAIN says the index is used.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::{Proc, connect, psql_copy};

const CYCLES: u64 = 20;
const COPY_ROWS: i64 = 300;
const DIMS: usize = 8;

const SETUP: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, embedding VECTOR(8)) \
                     WITH (kind = 'item'); \
                     CREATE INDEX items_embedding_idx ON items USING hnsw (embedding vector_l2_ops)";

/// A pseudo-random vector per id (splitmix64 of each component's index), in the text
/// form the server stores exactly.
fn vector(id: i64) -> String {
    let parts: Vec<String> = (0..DIMS as u64)
        .map(|j| {
            let mut z = (id as u64).wrapping_mul(DIMS as u64).wrapping_add(j);
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            format!("{:?}", (z % 20_000) as f32 / 10_000.0 - 1.0)
        })
        .collect();
    format!("[{}]", parts.join(","))
}

fn batch_ids(cycle: u64, b: u64) -> std::ops::Range<i64> {
    let lo = ((cycle * 10_000 + b) as i64) * COPY_ROWS;
    lo..lo + COPY_ROWS
}

fn copy_text(ids: std::ops::Range<i64>) -> String {
    let mut s = String::from("COPY items (id, embedding) FROM STDIN;\n");
    for id in ids {
        s.push_str(&format!("{id}\t{}\n", vector(id)));
    }
    s.push_str("\\.\n");
    s
}

#[derive(Default, Clone)]
struct Acked {
    copied: Vec<std::ops::Range<i64>>,
    deleted: Vec<std::ops::Range<i64>>,
    in_flight: Option<(&'static str, std::ops::Range<i64>)>,
}

async fn ingest(c: Client, addr: SocketAddr, cycle: u64, acked: Arc<Mutex<Acked>>) {
    for b in 0.. {
        let range = batch_ids(cycle, b);
        acked.lock().unwrap().in_flight = Some(("copy", range.clone()));
        if !psql_copy(addr, copy_text(range.clone())).await {
            return;
        }
        {
            let mut a = acked.lock().unwrap();
            a.copied.push(range.clone());
            a.in_flight = None;
        }
        if b % 2 == 1 {
            let r = batch_ids(cycle, b - 1);
            let r = r.start..r.start + COPY_ROWS / 5;
            acked.lock().unwrap().in_flight = Some(("delete", r.clone()));
            let sql = format!(
                "DELETE FROM items WHERE id >= {} AND id < {}",
                r.start, r.end
            );
            if c.execute(&sql, &[]).await.is_err() {
                return;
            }
            let mut a = acked.lock().unwrap();
            a.deleted.push(r);
            a.in_flight = None;
        }
    }
}

async fn rows(c: &Client, sql: &str) -> Vec<Vec<String>> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

const NEAREST: &str = "SELECT id FROM items ORDER BY embedding <-> '{}' LIMIT 1";

/// The id the index finds nearest to `id`'s vector.
async fn nearest(c: &Client, id: i64) -> Option<i64> {
    rows(c, &NEAREST.replace("{}", &vector(id)))
        .await
        .first()
        .map(|r| r[0].parse().unwrap())
}

/// After a restart: every acknowledged row is found through the index by its own
/// vector, deleted ones are not; returns whether the in-flight statement applied.
async fn verify(c: &Client, acked: &Acked, cycle: u64) -> bool {
    let table: BTreeSet<i64> = rows(c, "SELECT id FROM items")
        .await
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    let deleted: BTreeSet<i64> = acked.deleted.iter().flat_map(|r| r.clone()).collect();
    let deleting = match &acked.in_flight {
        Some(("delete", r)) => r.clone(),
        _ => 0..0,
    };
    let mut sample = Vec::new();
    for r in &acked.copied {
        for id in r.clone().filter(|id| !deleting.contains(id)) {
            assert_eq!(
                table.contains(&id),
                !deleted.contains(&id),
                "cycle {cycle}: acknowledged row {id}"
            );
            // The first, middle and last row of each batch.
            if id == r.start || id == r.start + COPY_ROWS / 2 || id == r.end - 1 {
                sample.push(id);
            }
        }
    }
    // Through the index.
    for id in sample {
        let got = nearest(c, id).await;
        if deleted.contains(&id) {
            assert_ne!(
                got,
                Some(id),
                "cycle {cycle}: deleted row {id} still indexed"
            );
        } else {
            assert_eq!(
                got,
                Some(id),
                "cycle {cycle}: row {id} not found by its vector"
            );
        }
    }
    let mut applied = false;
    if let Some((what, r)) = &acked.in_flight {
        let n = r.clone().filter(|id| table.contains(id)).count() as i64;
        let all = r.end - r.start;
        assert!(
            n == 0 || n == all,
            "cycle {cycle}: half a {what} ({n} of {all})"
        );
        applied = if *what == "copy" { n == all } else { n == 0 };
        // The in-flight rows are in the index exactly when they are in the table.
        let probe = r.end - 1;
        let indexed = nearest(c, probe).await == Some(probe);
        assert_eq!(
            indexed,
            table.contains(&probe),
            "cycle {cycle}: in-flight {what}"
        );
    }
    applied
}

#[test]
fn copy_of_vectors_survives_sigkill_without_a_rebuild() {
    let psql = Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::drivers::present(psql, "psql", "apt-get install postgresql-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("tidal.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    for cycle in 0..=CYCLES {
        let mut proc = Proc::spawn(&data, &log);
        rt.block_on(async {
            let c = connect(proc.addr).await;
            if cycle == 0 {
                c.batch_execute(SETUP).await.unwrap();
                let plan = rows(
                    &c,
                    &format!("EXPLAIN {}", NEAREST.replace("{}", &vector(1))),
                )
                .await
                .concat()
                .join("\n");
                assert!(plan.contains("HnswIndexScan"), "{plan}");
            } else {
                let known = acked.lock().unwrap().clone();
                if verify(&c, &known, cycle).await {
                    let mut a = acked.lock().unwrap();
                    match a.in_flight.clone() {
                        Some(("delete", r)) => a.deleted.push(r),
                        Some((_, r)) => a.copied.push(r),
                        None => {}
                    }
                }
            }
            if cycle == CYCLES {
                return;
            }
            acked.lock().unwrap().in_flight = None;
            let writer = tokio::spawn(ingest(c, proc.addr, cycle, acked.clone()));
            let wait = 150 + (cycle * 7919 % 23) * 40;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            proc.kill9();
            writer.await.unwrap();
        });
    }
    let started = Instant::now();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log_text.contains("rebuilding the vector index"),
        "a restart after SIGKILL rebuilt the vector index:\n{log_text}"
    );
    let a = acked.lock().unwrap();
    assert!(
        a.copied.len() as u64 >= CYCLES,
        "too little was written: {}",
        a.copied.len()
    );
    assert!(!a.deleted.is_empty());
    eprintln!(
        "{} vector COPY batches acknowledged over {CYCLES} kills (log checked in {} ms)",
        a.copied.len(),
        started.elapsed().as_millis()
    );
}

/// The prepared nearest-neighbour fast path (`SELECT … ORDER BY embedding <=> $1 LIMIT
/// k`) returns what the planned statement returns — ids, distances, vectors — for
/// binary and text parameters, at every ef_search, and falls back to the planned path
/// (exact search, pgvector's errors) when the index is gone or the vector is bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_nearest_neighbour_fast_path_equals_the_planned_query() {
    use crate::common::{PgVector, expect_code, start};
    let server = start().await;
    let c = server.connect().await;
    c.batch_execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT, embedding VECTOR(8)) \
         WITH (kind = 'item'); \
         CREATE INDEX items_cos ON items USING hnsw (embedding vector_cosine_ops)",
    )
    .await
    .unwrap();
    let values: Vec<String> = (0..600)
        .map(|i| format!("({i}, 't{i}', '{}')", vector(i)))
        .collect();
    c.batch_execute(&format!("INSERT INTO items VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let fast = c
        .prepare("SELECT id, title, embedding <=> $1 AS d, embedding FROM items ORDER BY embedding <=> $1 LIMIT 10")
        .await
        .unwrap();
    let text = c
        .prepare_typed(
            "SELECT id, title, embedding <=> $1 AS d, embedding FROM items ORDER BY embedding <=> $1 LIMIT 10",
            &[tokio_postgres::types::Type::TEXT],
        )
        .await
        .unwrap();
    type Row = (i64, String, f64, PgVector);
    let rows = |r: Vec<tokio_postgres::Row>| -> Vec<Row> {
        r.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    for ef in [10, 40, 200] {
        c.batch_execute(&format!("SET hnsw.ef_search = {ef}"))
            .await
            .unwrap();
        for q in [3i64, 77, 599, 1234] {
            let qv = vector(q);
            let parsed: Vec<f32> = qv
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|x| x.parse().unwrap())
                .collect();
            let got = rows(c.query(&fast, &[&PgVector(parsed.clone())]).await.unwrap());
            let got_text = rows(c.query(&text, &[&qv]).await.unwrap());
            // The planned statement: the same query inside a transaction block, where
            // no fast path runs.
            c.batch_execute("BEGIN").await.unwrap();
            let planned = rows(c.query(&fast, &[&PgVector(parsed)]).await.unwrap());
            c.batch_execute("COMMIT").await.unwrap();
            assert_eq!(got.len(), 10);
            for (a, b) in [(&got, &planned), (&got_text, &planned)] {
                let ids = |v: &Vec<Row>| v.iter().map(|r| r.0).collect::<Vec<_>>();
                // Same rows (ties in distance may order differently).
                let mut x = ids(a);
                let mut y = ids(b);
                x.sort_unstable();
                y.sort_unstable();
                assert_eq!(x, y, "ef {ef}, query {q}");
                for r in a.iter() {
                    let p = b.iter().find(|p| p.0 == r.0).unwrap();
                    assert_eq!(r, p, "ef {ef}, query {q}: row {}", r.0);
                }
                assert!(a.windows(2).all(|w| w[0].2 <= w[1].2), "nearest first");
            }
            if q < 600 {
                assert_eq!(got[0].0, q, "a row is its own nearest neighbour");
            }
        }
    }
    // A wrong dimension is pgvector's error, from the planned path.
    expect_code(c.query(&fast, &[&PgVector(vec![1.0, 2.0])]).await, "22000");
    // Without the index the same statement is exact.
    c.batch_execute("DROP INDEX items_cos").await.unwrap();
    let got = rows(c.query(&fast, &[&PgVector(vec![1.0; 8])]).await.unwrap());
    let exact = rows(
        c.query(
            "SELECT id, title, embedding <=> $1 AS d, embedding FROM items \
             ORDER BY embedding <=> $1, id LIMIT 10",
            &[&PgVector(vec![1.0; 8])],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        got.iter().map(|r| r.2).collect::<Vec<_>>(),
        exact.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    server.stop().await;
}
