//! Preference vectors over the wire, killed with SIGKILL: a stream of like/skip events
//! (and item re-embeddings between them) from a tokio-postgres client; after every
//! restart each user's `preference(u)` equals the formula's model over the acknowledged
//! statements (plus the one in flight, all or nothing), and the next SUGGEST — served
//! by a cosine HNSW index — ranks by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::common::{PgVector, Proc, connect};

const CYCLES: u64 = 8;
const ITEMS: i64 = 60;
const USERS: i64 = 5;
const DIMS: usize = 4;

const SETUP: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, embedding VECTOR(4)) \
                     WITH (kind = 'item'); \
                     CREATE INDEX items_cos ON items USING hnsw (embedding vector_cosine_ops); \
                     CREATE SIGNAL like ON items DECAY NONE WINDOWS ('all') PREFERENCE 0.1; \
                     CREATE SIGNAL skip ON items DECAY NONE WINDOWS ('all') PREFERENCE -0.05";

/// splitmix64: deterministic pseudo-random numbers from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The embedding of version `v` of an item: small integers and halves, exact in f32.
fn embedding(id: i64, v: u64) -> Vec<f32> {
    (0..DIMS as u64)
        .map(|j| (mix((id as u64) << 20 ^ v << 8 ^ j) % 9) as f32 / 2.0 - 2.0)
        .collect()
}

fn text(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", parts.join(","))
}

/// One statement of the stream.
#[derive(Debug, Clone)]
enum Write {
    /// `(signal, item, user, weight)` rows of one INSERT.
    Events(Vec<(&'static str, i64, i64, f64)>),
    /// The item's embedding becomes version `v`.
    Reembed(i64, u64),
}

#[derive(Default, Clone)]
struct Acked {
    done: Vec<Write>,
    in_flight: Option<Write>,
}

/// The model: item embeddings and user vectors after `writes`.
fn model(writes: &[Write]) -> HashMap<i64, Vec<f32>> {
    let mut items: HashMap<i64, Vec<f32>> = (0..ITEMS).map(|i| (i, embedding(i, 0))).collect();
    let mut users: HashMap<i64, Vec<f32>> = HashMap::new();
    for w in writes {
        match w {
            Write::Reembed(id, v) => {
                items.insert(*id, embedding(*id, *v));
            }
            Write::Events(events) => {
                for (signal, item, user, weight) in events {
                    let lr = if *signal == "like" { 0.1 } else { -0.05 };
                    let e = &items[item];
                    let ne = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                    if ne == 0.0 {
                        continue;
                    }
                    let base: Vec<f64> = match users.get(user) {
                        Some(p) => p.iter().map(|x| f64::from(*x)).collect(),
                        None => vec![0.0; DIMS],
                    };
                    let v: Vec<f64> = base
                        .iter()
                        .zip(e)
                        .map(|(b, x)| b + lr * weight * f64::from(*x) / ne)
                        .collect();
                    let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                    if nv == 0.0 {
                        users.remove(user);
                    } else {
                        users.insert(*user, v.iter().map(|x| (x / nv) as f32).collect());
                    }
                }
            }
        }
    }
    users
}

async fn stream(c: Client, cycle: u64, acked: Arc<Mutex<Acked>>) {
    for k in 0u64.. {
        let r = mix(cycle << 32 | k);
        let w = if r.is_multiple_of(7) {
            Write::Reembed((r >> 8) as i64 % ITEMS, cycle << 32 | k)
        } else {
            Write::Events(
                (0..1 + r % 4)
                    .map(|j| {
                        let s = mix(r ^ j);
                        let signal = if s.is_multiple_of(4) { "skip" } else { "like" };
                        let weight = [1.0, 2.0, 0.5][(s >> 4) as usize % 3];
                        (
                            signal,
                            (s >> 8) as i64 % ITEMS,
                            (s >> 20) as i64 % USERS,
                            weight,
                        )
                    })
                    .collect(),
            )
        };
        let sql = match &w {
            Write::Reembed(id, v) => format!(
                "UPDATE items SET embedding = '{}' WHERE id = {id}",
                text(&embedding(*id, *v))
            ),
            Write::Events(events) => {
                // Distinct timestamps, so deduplication keeps every event.
                let rows: Vec<String> = events
                    .iter()
                    .enumerate()
                    .map(|(j, (s, i, u, w))| {
                        format!(
                            "('{s}', {i}, {u}, {w:?}, now() - INTERVAL '{} microseconds')",
                            cycle * 1_000_000 + k * 10 + j as u64
                        )
                    })
                    .collect();
                format!(
                    "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES {}",
                    rows.join(", ")
                )
            }
        };
        acked.lock().unwrap().in_flight = Some(w.clone());
        if c.execute(&sql, &[]).await.is_err() {
            return;
        }
        let mut a = acked.lock().unwrap();
        a.done.push(w);
        a.in_flight = None;
    }
}

async fn preferences(c: &Client) -> HashMap<i64, Vec<f32>> {
    let mut out = HashMap::new();
    for u in 0..USERS {
        let row = c.query_one("SELECT preference($1)", &[&u]).await.unwrap();
        if let Some(PgVector(v)) = row.get::<_, Option<PgVector>>(0) {
            out.insert(u, v);
        }
    }
    out
}

fn same(got: &HashMap<i64, Vec<f32>>, want: &HashMap<i64, Vec<f32>>) -> bool {
    got.len() == want.len()
        && got.iter().all(|(u, g)| {
            want.get(u).is_some_and(|w| {
                g.len() == w.len() && g.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-5)
            })
        })
}

/// The model's cosine similarity of `p` to each item's current embedding, by id
/// (-inf for a zero embedding).
fn similarities(writes: &[Write], p: &[f32]) -> HashMap<i64, f64> {
    let mut items: HashMap<i64, Vec<f32>> = (0..ITEMS).map(|i| (i, embedding(i, 0))).collect();
    for w in writes {
        if let Write::Reembed(id, v) = w {
            items.insert(*id, embedding(*id, *v));
        }
    }
    let cos = |e: &[f32]| {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (x, y) in e.iter().zip(p) {
            ab += f64::from(*x) * f64::from(*y);
            aa += f64::from(*x).powi(2);
            bb += f64::from(*y).powi(2);
        }
        if aa == 0.0 {
            f64::NEG_INFINITY
        } else {
            ab / (aa.sqrt() * bb.sqrt())
        }
    };
    items.iter().map(|(i, e)| (*i, cos(e))).collect()
}

#[test]
fn preference_vectors_survive_sigkill_during_a_stream_of_likes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("tidal.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut applied_in_flight = 0;
    for cycle in 0..=CYCLES {
        let mut proc = Proc::spawn(&data, &log);
        rt.block_on(async {
            let c = connect(proc.addr).await;
            if cycle == 0 {
                c.batch_execute(SETUP).await.unwrap();
                let values: Vec<String> = (0..ITEMS)
                    .map(|i| format!("({i}, '{}')", text(&embedding(i, 0))))
                    .collect();
                c.batch_execute(&format!("INSERT INTO items VALUES {}", values.join(", ")))
                    .await
                    .unwrap();
            } else {
                let known = acked.lock().unwrap().clone();
                let got = preferences(&c).await;
                let without = model(&known.done);
                let mut with = known.done.clone();
                with.extend(known.in_flight.clone());
                let with = model(&with);
                // Whether the statement in flight at the kill applied: a re-embedding
                // by the item's row (it need not move any vector yet), events by the
                // vectors.
                let applied = match &known.in_flight {
                    Some(Write::Reembed(id, v)) => {
                        let row = c
                            .query_one("SELECT embedding FROM items WHERE id = $1", &[id])
                            .await
                            .unwrap();
                        row.get::<_, PgVector>(0).0 == embedding(*id, *v)
                    }
                    _ => !same(&got, &without),
                };
                let want = if applied { &with } else { &without };
                assert!(
                    same(&got, want),
                    "cycle {cycle}: preferences {got:?}\nwant {want:?} (in flight {:?}, \
                     applied: {applied})",
                    known.in_flight
                );
                let done = {
                    let mut a = acked.lock().unwrap();
                    if applied && let Some(w) = a.in_flight.take() {
                        applied_in_flight += 1;
                        a.done.push(w);
                    }
                    a.done.clone()
                };
                // The next SUGGEST ranks by the recovered vector.
                for (u, p) in if applied { &with } else { &without } {
                    let row = c
                        .query_one("SUGGEST items FOR USER $1 LIMIT 1", &[u])
                        .await
                        .unwrap();
                    let got: f64 = row.get("similarity");
                    let id: i64 = row.get("id");
                    let sims = similarities(&done, p);
                    // The similarity is the exact one of the row returned, which is
                    // among the nearest (the index is approximate: usearch loses a
                    // row now and then after updates, see tidal-engine's churn test).
                    assert!(
                        (got - sims[&id]).abs() < 1e-5,
                        "cycle {cycle}: user {u}: item {id} similarity {got} vs {}",
                        sims[&id]
                    );
                    let mut all: Vec<f64> = sims.values().copied().collect();
                    all.sort_by(|a, b| b.total_cmp(a));
                    assert!(
                        got >= all[4] - 1e-5,
                        "cycle {cycle}: user {u}: {got} is not among the 5 nearest {:?}",
                        &all[..5]
                    );
                }
            }
            if cycle == CYCLES {
                return;
            }
            acked.lock().unwrap().in_flight = None;
            let writer = tokio::spawn(stream(c, cycle, acked.clone()));
            let wait = 200 + (cycle * 7919 % 13) * 50;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            proc.kill9();
            writer.await.unwrap();
        });
    }
    let a = acked.lock().unwrap();
    assert!(
        a.done.len() as u64 >= CYCLES * 5,
        "too little was written: {}",
        a.done.len()
    );
    eprintln!(
        "{} statements acknowledged over {CYCLES} kills ({applied_in_flight} in-flight applied)",
        a.done.len()
    );
}
