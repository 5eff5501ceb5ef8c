//! The three layers of trending on one random data set, each against a reference
//! ranking computed from the events: global RETRIEVE, RETRIEVE WITHIN COHORT (one
//! dimension exact, a composite exact, an undeclared pair by the independence
//! estimate) and SEARCH WITHIN COHORT; and EXPLAIN saying which read a plan does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::util::pretty::pretty_format_batches;
use rand::{Rng, SeedableRng};
use tidal_engine::{Engine, EngineConfig};

use crate::SqlSession;

const REGIONS: [&str; 3] = ["US", "DE", "FR"];
const AGES: [&str; 2] = ["18-24", "25-34"];
const WORDS: [&str; 3] = ["piano", "guitar", "drums"];

/// An event's `(region, age, weight)` at the time it was sent.
type Sent = (Option<usize>, Option<usize>, f64);

/// Per (signal, item): every event sent.
#[derive(Default)]
struct World {
    titles: BTreeMap<i64, String>,
    events: HashMap<(&'static str, i64), Vec<Sent>>,
}

impl World {
    /// Σ weights of `signal` on `item` from users matching `region` / `age` (None: any).
    fn sum(
        &self,
        signal: &'static str,
        item: i64,
        region: Option<usize>,
        age: Option<usize>,
    ) -> f64 {
        self.events.get(&(signal, item)).map_or(0.0, |v| {
            v.iter()
                .filter(|e| region.is_none_or(|r| e.0 == Some(r)))
                .filter(|e| age.is_none_or(|a| e.1 == Some(a)))
                .fold(0.0, |acc, e| acc + e.2)
        })
    }

    /// The profile's score `signal_total('view') + 2 * signal_total('like')` in a scope.
    fn score(&self, item: i64, scope: Scope) -> f64 {
        let read = |s: &'static str| -> f64 {
            match scope {
                Scope::Global => self.sum(s, item, None, None),
                Scope::Region(r) => self.sum(s, item, Some(r), None),
                Scope::Both(r, a) => self.sum(s, item, Some(r), Some(a)),
                Scope::Estimate(r, a) => {
                    let g = self.sum(s, item, None, None);
                    // The engine's order of operations: 1 · x(a) · x(b) / x(global).
                    let mut x = 1.0;
                    x *= self.sum(s, item, Some(r), None);
                    x *= self.sum(s, item, None, Some(a));
                    if g == 0.0 { 0.0 } else { x / g }
                }
            }
        };
        read("view") + 2.0 * read("like")
    }

    fn ranking(&self, scope: Scope, word: Option<&str>, limit: usize) -> Vec<(i64, f64)> {
        let mut v: Vec<(i64, f64)> = self
            .titles
            .iter()
            .filter(|(_, t)| word.is_none_or(|w| t.split(' ').any(|x| x == w)))
            .map(|(&id, _)| (id, self.score(id, scope)))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(limit);
        v
    }
}

#[derive(Debug, Clone, Copy)]
enum Scope {
    Global,
    Region(usize),
    /// The composite `(region, age_group)`, declared in the odd cases.
    Both(usize, usize),
    /// The same pair undeclared: the independence estimate.
    Estimate(usize, usize),
}

async fn build(rng: &mut impl Rng, composite: bool) -> (tempfile::TempDir, SqlSession, World) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = EngineConfig::new(dir.path());
    c.checkpoint_wal_bytes = None;
    let sql = SqlSession::new(Arc::new(Engine::open(c).unwrap())).unwrap();
    let dims = if composite {
        "(region, age_group, (region, age_group))"
    } else {
        "(region, age_group)"
    };
    for s in [
        "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT) WITH (kind = 'item', text_fields = 'title')".to_string(),
        "CREATE TABLE users (id BIGINT PRIMARY KEY, region TEXT, age_group TEXT) WITH (kind = 'user')".to_string(),
        format!("CREATE SIGNAL view ON items DECAY NONE WINDOWS ('all') COHORTS {dims}"),
        format!("CREATE SIGNAL like ON items DECAY NONE WINDOWS ('all') COHORTS {dims}"),
        "CREATE PROFILE trending ON items (SCORE signal_total('view') + 2 * signal_total('like'))".to_string(),
    ] {
        sql.sql(&s).await.unwrap();
    }
    let mut w = World::default();
    let n_items = rng.random_range(1..40i64);
    let mut values = Vec::new();
    for id in 1..=n_items {
        let t = format!(
            "{} {}",
            WORDS[rng.random_range(0..3)],
            WORDS[rng.random_range(0..3)]
        );
        values.push(format!("({id}, '{t}')"));
        w.titles.insert(id, t);
    }
    sql.sql(&format!("INSERT INTO items VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let n_users = 8i64;
    let mut users: HashMap<i64, (Option<usize>, Option<usize>)> = HashMap::new();
    let mut n = 0;
    for round in 0..3 {
        // Users (re)write their rows between rounds of events: later events count in
        // the new cohorts, earlier ones stay where they were.
        let mut rows = Vec::new();
        for u in 0..n_users {
            if round > 0 && rng.random_bool(0.6) {
                continue;
            }
            let r = rng.random_bool(0.85).then(|| rng.random_range(0..3usize));
            let a = rng.random_bool(0.85).then(|| rng.random_range(0..2usize));
            users.insert(u, (r, a));
            let text = |v: Option<&str>| v.map_or("NULL".to_string(), |s| format!("'{s}'"));
            rows.push(format!(
                "({u}, {}, {})",
                text(r.map(|r| REGIONS[r])),
                text(a.map(|a| AGES[a]))
            ));
        }
        if !rows.is_empty() {
            sql.sql(&format!(
                "INSERT INTO users VALUES {} ON CONFLICT (id) DO UPDATE SET region = excluded.region, age_group = excluded.age_group",
                rows.join(", ")
            ))
            .await
            .unwrap();
        }
        let mut events = Vec::new();
        for _ in 0..rng.random_range(0..150) {
            let item = rng.random_range(1..=n_items);
            // User 9 has no row; some events have no user.
            let user = match rng.random_range(0..10) {
                0 => None,
                1 => Some(9),
                _ => Some(rng.random_range(0..n_users)),
            };
            let signal = if rng.random_bool(0.7) { "view" } else { "like" };
            let weight = rng.random_range(1..4) as f64;
            let (r, a) = user
                .and_then(|u| users.get(&u).copied())
                .unwrap_or((None, None));
            w.events
                .entry((signal, item))
                .or_default()
                .push((r, a, weight));
            n += 1;
            events.push(format!(
                "('{signal}', {item}, {}, {weight}, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{n} seconds')",
                user.map_or("NULL".to_string(), |u| u.to_string())
            ));
        }
        if !events.is_empty() {
            sql.sql(&format!(
                "INSERT INTO signals (signal, entity_id, user_id, weight, ts) VALUES {}",
                events.join(", ")
            ))
            .await
            .unwrap();
        }
    }
    (dir, sql, w)
}

fn ids_scores(batches: &[RecordBatch]) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column_by_name("id").unwrap();
        let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
        let score = b.column_by_name("score").unwrap();
        let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((id.value(i), score.value(i)));
        }
    }
    out
}

async fn run(sql: &SqlSession, q: &str) -> Vec<(i64, f64)> {
    let df = sql.sql(q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    ids_scores(&df)
}

fn same(got: &[(i64, f64)], want: &[(i64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0 == w.0 && (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_layers_of_trending_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0407);
    for case in 0..24 {
        let composite = case % 2 == 1;
        let (_dir, sql, w) = build(&mut rng, composite).await;
        for _ in 0..4 {
            let limit = rng.random_range(1..15usize);
            let r = rng.random_range(0..3usize);
            let a = rng.random_range(0..2usize);
            let word = WORDS[rng.random_range(0..3)];
            let what = format!("case {case}");
            // 1. Global trending.
            let got = run(
                &sql,
                &format!("RETRIEVE items USING PROFILE trending LIMIT {limit}"),
            )
            .await;
            same(
                &got,
                &w.ranking(Scope::Global, None, limit),
                &format!("{what} global"),
            );
            // 2. Trending within one dimension.
            let got = run(
                &sql,
                &format!("RETRIEVE items USING PROFILE trending WITHIN COHORT region = '{}' LIMIT {limit}", REGIONS[r]),
            )
            .await;
            same(
                &got,
                &w.ranking(Scope::Region(r), None, limit),
                &format!("{what} region"),
            );
            // 2b. A pair: exact with the composite declared, else the estimate.
            let scope = if composite {
                Scope::Both(r, a)
            } else {
                Scope::Estimate(r, a)
            };
            let got = run(
                &sql,
                &format!(
                    "RETRIEVE items USING PROFILE trending WITHIN COHORT age_group = '{}' AND region = '{}' LIMIT {limit}",
                    AGES[a], REGIONS[r]
                ),
            )
            .await;
            same(
                &got,
                &w.ranking(scope, None, limit),
                &format!("{what} pair {scope:?}"),
            );
            // 3. Search within the cohort (the profile's score alone orders the matches).
            let got = run(
                &sql,
                &format!(
                    "SEARCH items QUERY '{word}' USING PROFILE trending WITHIN COHORT region = '{}' FUSION linear (0, 1) LIMIT {limit}",
                    REGIONS[r]
                ),
            )
            .await;
            same(
                &got,
                &w.ranking(Scope::Region(r), Some(word), limit),
                &format!("{what} search {word}"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_exact_or_estimated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (_dir, sql, _) = build(&mut rng, false).await;
    let plan = |q: String| {
        let sql = &sql;
        async move {
            let df = sql.sql(&format!("EXPLAIN {q}")).await.unwrap();
            pretty_format_batches(&df).unwrap().to_string()
        }
    };
    let exact =
        plan("RETRIEVE items USING PROFILE trending WITHIN COHORT region = 'US' LIMIT 5".into())
            .await;
    assert!(
        exact.contains("cohort_signal(Utf8(\"signal_total\"), Utf8(\"view\")"),
        "{exact}"
    );
    assert!(exact.contains("region=2:US"), "{exact}");
    assert!(!exact.contains("cohort_estimate"), "{exact}");
    let est = plan(
        "RETRIEVE items USING PROFILE trending WITHIN COHORT region = 'US' AND age_group = '18-24' LIMIT 5".into(),
    )
    .await;
    assert!(est.contains("cohort_estimate("), "{est}");
    let global = plan("RETRIEVE items USING PROFILE trending LIMIT 5".into()).await;
    assert!(!global.contains("cohort_"), "{global}");
}
