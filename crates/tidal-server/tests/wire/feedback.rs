//! The feedback loop (issue 15): one `like` with a user moves every state it touches —
//! the item's decay score and windows, the user's liked mark, the user → creator
//! affinity and the user's preference vector — before its INSERT returns, so the very
//! next RETRIEVE / SUGGEST (on any connection) reflects each; and after kill -9 during
//! a stream of likes, every one of those states equals a model of the acknowledged
//! statements (plus the one in flight, all or nothing).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::common::{PgVector, Proc, connect};

const CYCLES: u64 = 6;
const ITEMS: i64 = 40;
const CREATORS: i64 = 5;
const USERS: i64 = 4;
/// The like's half-life, in hours.
const HALF_LIFE_H: f64 = 24.0;
/// δ of `AFFINITY`.
const DELTA: f64 = 0.5;

const SETUP: &str = "\
    CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, embedding VECTOR(3)) \
        WITH (kind = 'item'); \
    CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('1h', '24h') \
        MARKS liked PREFERENCE 0.5 AFFINITY 0.5; \
    CREATE PROFILE by_id ON items (SCORE 1.0 * id); \
    CREATE PROFILE fy ON items (SCORE 0.4 * similarity() + 0.3 * affinity() + velocity('like', '1h'))";

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Item embeddings: small integers, exact in f32, never all zero.
fn embedding(id: i64) -> [f32; 3] {
    let m = mix(id as u64);
    [
        (m % 5) as f32 + 1.0,
        ((m >> 8) % 5) as f32 - 2.0,
        ((m >> 16) % 5) as f32 - 2.0,
    ]
}

fn creator(id: i64) -> i64 {
    id % CREATORS
}

fn text(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", parts.join(","))
}

async fn setup(c: &Client) {
    c.batch_execute(SETUP).await.unwrap();
    let values: Vec<String> = (0..ITEMS)
        .map(|i| format!("({i}, {}, '{}')", creator(i), text(&embedding(i))))
        .collect();
    c.batch_execute(&format!("INSERT INTO items VALUES {}", values.join(", ")))
        .await
        .unwrap();
}

#[test]
fn one_like_moves_every_state_before_its_insert_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("tidal.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut proc = Proc::spawn(&data, &log);
    rt.block_on(async {
        let c = connect(proc.addr).await;
        let other = connect(proc.addr).await;
        setup(&c).await;
        let before = c
            .query_one(
                "SELECT decay('like', 12), window_count('like', 12, '1h'), affinity(7, 2), \
                 preference(7) IS NULL",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(before.get::<_, f64>(0), 0.0);
        assert_eq!(before.get::<_, f64>(1), 0.0);
        assert_eq!(before.get::<_, f64>(2), 0.0);
        assert!(before.get::<_, bool>(3));
        let liked = c
            .query(
                "RETRIEVE items FOR USER 7 USING PROFILE by_id FILTER liked LIMIT 10",
                &[],
            )
            .await
            .unwrap();
        assert!(liked.is_empty());

        // One like of item 12 (creator 2) by user 7.
        let n = c
            .execute(
                "INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', 12, 7)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);

        // The very next statements, on another connection, see every state moved.
        let after = other
            .query_one(
                "SELECT decay('like', 12), window_count('like', 12, '1h'), \
                 velocity('like', 12, '1h'), affinity(7, 2), affinity(7, 3), preference(7)",
                &[],
            )
            .await
            .unwrap();
        let decay: f64 = after.get(0);
        assert!(decay > 0.999 && decay <= 1.0, "decay {decay}");
        assert_eq!(after.get::<_, f64>(1), 1.0);
        assert_eq!(after.get::<_, f64>(2), 1.0);
        let aff: f64 = after.get(3);
        assert!(aff > DELTA * 0.999 && aff <= DELTA, "affinity {aff}");
        assert_eq!(after.get::<_, f64>(4), 0.0);
        let p: PgVector = after.get(5);
        let e = embedding(12);
        let ne = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (a, b) in p.0.iter().zip(e) {
            assert!((a - b / ne).abs() < 1e-6, "preference {:?} vs {e:?}", p.0);
        }
        let liked = other
            .query(
                "RETRIEVE items FOR USER 7 USING PROFILE by_id FILTER liked LIMIT 10",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            liked
                .iter()
                .map(|r| r.get::<_, i64>("id"))
                .collect::<Vec<_>>(),
            [12]
        );
        let unliked = other
            .query(
                "RETRIEVE items FOR USER 7 USING PROFILE by_id FILTER not liked LIMIT 100",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(unliked.len() as i64, ITEMS - 1);
        // SUGGEST ranks by the moved vector: the item liked is the nearest to it.
        let s = other
            .query_one("SUGGEST items FOR USER 7 LIMIT 1", &[])
            .await
            .unwrap();
        assert_eq!(s.get::<_, i64>("id"), 12);
        assert!((s.get::<_, f64>("similarity") - 1.0).abs() < 1e-6);
        // The "for you" profile: item 12 leads (similarity, affinity and velocity), and
        // the other items of creator 2 outrank those of creators without affinity and
        // with the same similarity.
        let fy = other
            .query("RETRIEVE items FOR USER 7 USING PROFILE fy LIMIT 1", &[])
            .await
            .unwrap();
        assert_eq!(fy[0].get::<_, i64>("id"), 12);
        let scores = other
            .query(
                "SELECT id, rank_profile('fy', id) FROM items WHERE id IN (12, 17)",
                &[],
            )
            .await
            .unwrap();
        // rank_profile has no FOR USER: similarity() and affinity() read 0 there.
        for r in &scores {
            let s: f64 = r.get(1);
            let id: i64 = r.get(0);
            let want = if id == 12 { 1.0 } else { 0.0 };
            assert!((s - want).abs() < 1e-9, "rank_profile(fy, {id}) = {s}");
        }
    });
    proc.kill9();
}

/// One acknowledged INSERT: `(item, user)` likes at distinct instants `ts_us`.
#[derive(Debug, Clone)]
struct Likes(Vec<(i64, i64, i64)>);

#[derive(Default, Clone)]
struct Acked {
    done: Vec<Likes>,
    in_flight: Option<Likes>,
}

/// Every state the likes move, as the model computes it.
#[derive(Debug, Default, PartialEq)]
struct States {
    totals: HashMap<i64, f64>,
    liked: HashMap<i64, BTreeSet<i64>>,
    /// (user, creator) → affinity at `AT_US`.
    affinity: HashMap<(i64, i64), f64>,
    preference: HashMap<i64, Vec<f32>>,
}

/// The instant affinities are compared at (after every event).
const AT: &str = "2026-06-01 00:00:00";
const AT_US: i64 = 1_780_272_000_000_000;
/// Events are spread over the day before AT.
const BASE_US: i64 = AT_US - 86_400_000_000;

fn model(writes: &[Likes]) -> States {
    let mut s = States::default();
    let mut pref64: HashMap<i64, Vec<f64>> = HashMap::new();
    for w in writes {
        for &(item, user, ts) in &w.0 {
            *s.totals.entry(item).or_default() += 1.0;
            s.liked.entry(user).or_default().insert(item);
            let hours = (AT_US - ts) as f64 / 3.6e9;
            *s.affinity.entry((user, creator(item))).or_default() +=
                DELTA * 2f64.powf(-hours / HALF_LIFE_H);
            let e = embedding(item);
            let ne = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let base = pref64.get(&user).cloned().unwrap_or_else(|| vec![0.0; 3]);
            let v: Vec<f64> = base
                .iter()
                .zip(e)
                .map(|(b, x)| b + 0.5 * f64::from(x) / ne)
                .collect();
            let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            // Stored as f32 after every move, as the engine does.
            let stored: Vec<f64> = v.iter().map(|x| f64::from((x / nv) as f32)).collect();
            pref64.insert(user, stored);
        }
    }
    s.preference = pref64
        .into_iter()
        .map(|(u, v)| (u, v.iter().map(|x| *x as f32).collect()))
        .collect();
    s
}

async fn observe(c: &Client) -> States {
    let mut s = States::default();
    for r in c
        .query(
            "SELECT entity_id, total FROM signal_state WHERE signal = 'like'",
            &[],
        )
        .await
        .unwrap()
    {
        s.totals.insert(r.get(0), r.get(1));
    }
    for u in 0..USERS {
        let rows = c
            .query(
                "RETRIEVE items FOR USER $1 USING PROFILE by_id FILTER liked LIMIT 1000",
                &[&u],
            )
            .await
            .unwrap();
        if !rows.is_empty() {
            s.liked
                .insert(u, rows.iter().map(|r| r.get::<_, i64>("id")).collect());
        }
        for cr in 0..CREATORS {
            let a: f64 = c
                .query_one(
                    &format!("SELECT affinity($1, $2, TIMESTAMP '{AT}')"),
                    &[&u, &cr],
                )
                .await
                .unwrap()
                .get(0);
            if a != 0.0 {
                s.affinity.insert((u, cr), a);
            }
        }
        let p: Option<PgVector> = c
            .query_one("SELECT preference($1)", &[&u])
            .await
            .unwrap()
            .get(0);
        if let Some(p) = p {
            s.preference.insert(u, p.0);
        }
    }
    s
}

fn same(got: &States, want: &States) -> bool {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    got.totals == want.totals
        && got.liked == want.liked
        && got.affinity.len() == want.affinity.len()
        && got
            .affinity
            .iter()
            .all(|(k, a)| want.affinity.get(k).is_some_and(|b| close(*a, *b)))
        && got.preference.len() == want.preference.len()
        && got.preference.iter().all(|(u, p)| {
            want.preference
                .get(u)
                .is_some_and(|q| p.iter().zip(q).all(|(a, b)| (a - b).abs() <= 1e-5))
        })
}

async fn stream(c: Client, cycle: u64, acked: Arc<Mutex<Acked>>) {
    for k in 0u64.. {
        let r = mix(cycle << 32 | k);
        let likes = Likes(
            (0..1 + r % 3)
                .map(|j| {
                    let s = mix(r ^ j);
                    // Distinct instants (deduplication would fold identical events),
                    // out of order within the day before AT.
                    let ts = BASE_US + (s % 80_000_000_000) as i64 + j as i64;
                    ((s >> 40) as i64 % ITEMS, (s >> 50) as i64 % USERS, ts)
                })
                .collect(),
        );
        let rows: Vec<String> = likes
            .0
            .iter()
            .map(|(i, u, ts)| format!("('like', {i}, {u}, 1.0, to_timestamp_micros({ts}))"))
            .collect();
        let sql = format!(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES {}",
            rows.join(", ")
        );
        acked.lock().unwrap().in_flight = Some(likes.clone());
        if c.execute(&sql, &[]).await.is_err() {
            return;
        }
        let mut a = acked.lock().unwrap();
        a.done.push(likes);
        a.in_flight = None;
    }
}

#[test]
fn every_state_a_like_moves_survives_sigkill() {
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
                setup(&c).await;
            } else {
                let known = acked.lock().unwrap().clone();
                let got = observe(&c).await;
                let without = model(&known.done);
                let mut all = known.done.clone();
                all.extend(known.in_flight.clone());
                let with = model(&all);
                let applied = same(&got, &with) && !same(&got, &without);
                assert!(
                    same(&got, &without) || applied,
                    "cycle {cycle}: the states after restart match neither the acknowledged \
                     writes nor them plus the one in flight ({:?})\ngot {got:?}\nwithout {without:?}",
                    known.in_flight
                );
                if applied {
                    applied_in_flight += 1;
                    let mut a = acked.lock().unwrap();
                    if let Some(w) = a.in_flight.take() {
                        a.done.push(w);
                    }
                }
                // The next RETRIEVE ranks by the recovered affinity: for each user with
                // affinities, the top item of a profile scoring affinity() alone is by
                // a creator of the largest affinity.
                let want = if applied { &with } else { &without };
                for u in 0..USERS {
                    let best = (0..CREATORS)
                        .map(|cr| want.affinity.get(&(u, cr)).copied().unwrap_or(0.0))
                        .fold(f64::NEG_INFINITY, f64::max);
                    if best <= 0.0 {
                        continue;
                    }
                    let row = c
                        .query_one(
                            &format!(
                                "RETRIEVE items FOR USER $1 USING PROFILE aff LIMIT 1 AT '{AT}'"
                            ),
                            &[&u],
                        )
                        .await
                        .unwrap();
                    let id: i64 = row.get("id");
                    let a = want.affinity.get(&(u, creator(id))).copied().unwrap_or(0.0);
                    assert!(
                        (a - best).abs() <= 1e-9 * best,
                        "cycle {cycle}: user {u}: item {id}'s creator has affinity {a}, \
                         the best is {best}"
                    );
                }
            }
            if cycle == 0 {
                c.batch_execute("CREATE PROFILE aff ON items (SCORE affinity())")
                    .await
                    .unwrap();
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

/// `COPY follows (src, dst) FROM STDIN` text for edges `(u, c)` with `u` in `users`.
fn edges_copy(users: std::ops::Range<i64>, per_user: i64) -> (String, BTreeSet<(i64, i64)>) {
    let mut s = String::from("COPY follows (src, dst) FROM STDIN (FORMAT csv);\n");
    let mut set = BTreeSet::new();
    for u in users {
        for k in 0..per_user {
            let c = (mix((u as u64) << 20 | k as u64) % 1000) as i64;
            set.insert((u, c));
            s.push_str(&format!("{u},{c}\n"));
        }
    }
    s.push_str("\\.\n");
    (s, set)
}

async fn edge_count(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM follows", &[])
        .await
        .unwrap()
        .get(0)
}

/// Edges loaded with psql's COPY are all there after kill -9; a COPY killed midway
/// is all or nothing; FILTER and in_degree read the recovered edges.
#[test]
fn edges_copied_with_psql_survive_sigkill() {
    if !crate::drivers::present(
        crate::common::psql_available(),
        "psql",
        "apt-get install postgresql-client",
    ) {
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
    let (small, small_set) = edges_copy(0..50, 40);
    let (big, big_set) = edges_copy(50..5050, 40);
    let mut proc = Proc::spawn(&data, &log);
    let killed_mid_copy = rt.block_on(async {
        let c = connect(proc.addr).await;
        setup(&c).await;
        c.batch_execute("CREATE RELATIONSHIP follows FROM users TO creators")
            .await
            .unwrap();
        assert!(crate::common::psql_copy(proc.addr, small).await);
        assert_eq!(edge_count(&c).await, small_set.len() as i64);
        let addr = proc.addr;
        let copy = tokio::spawn(crate::common::psql_copy(addr, big));
        tokio::time::sleep(Duration::from_millis(150)).await;
        proc.kill9();
        !copy.await.unwrap()
    });
    let mut proc = Proc::spawn(&data, &log);
    rt.block_on(async {
        let c = connect(proc.addr).await;
        let n = edge_count(&c).await;
        let all: BTreeSet<(i64, i64)> = small_set.union(&big_set).copied().collect();
        let want = if n == small_set.len() as i64 {
            &small_set
        } else {
            assert!(
                !killed_mid_copy || n == all.len() as i64,
                "a COPY applied in part: {n} edges"
            );
            &all
        };
        assert_eq!(n, want.len() as i64);
        for u in [0i64, 7, 49, 50, 3000] {
            let got: BTreeSet<i64> = c
                .query("SELECT dst FROM follows WHERE src = $1", &[&u])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let model: BTreeSet<i64> = want.iter().filter(|e| e.0 == u).map(|e| e.1).collect();
            assert_eq!(got, model, "user {u}");
            // FILTER follows keeps the items of the creators followed (creators 0..5).
            let kept: BTreeSet<i64> = c
                .query(
                    "RETRIEVE items FOR USER $1 USING PROFILE by_id FILTER follows LIMIT 100",
                    &[&u],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i64>("id"))
                .collect();
            let model: BTreeSet<i64> = (0..ITEMS)
                .filter(|i| want.contains(&(u, creator(*i))))
                .collect();
            assert_eq!(kept, model, "FILTER follows for user {u}");
        }
        for cr in [0i64, 3, 999] {
            let got: i64 = c
                .query_one("SELECT in_degree('follows', $1)", &[&cr])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                got,
                want.iter().filter(|e| e.1 == cr).count() as i64,
                "creator {cr}"
            );
        }
    });
    proc.kill9();
}
