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
