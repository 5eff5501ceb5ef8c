//! RETRIEVE against a brute-force reference ranking over random data: score, GATE,
//! FILTER, WHERE, tie-break by id, per-user marks and the diversity fill rule; and
//! rank_profile against the same scores.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use rand::{Rng, SeedableRng};
use tidal_engine::{Engine, EngineConfig};

use crate::SqlSession;

/// One random world: items with creators and categories, like/view/hide events.
struct World {
    /// id → (creator, category)
    items: BTreeMap<i64, (Option<i64>, &'static str)>,
    likes: HashMap<i64, i64>,
    views: HashMap<i64, i64>,
    /// (user, item) pairs with a positive view (seen) / hide (hidden) event.
    seen: HashSet<(i64, i64)>,
    hidden: HashSet<(i64, i64)>,
    /// (user, creator) edges of the relationships `follows` and `blocks`.
    follows: HashSet<(i64, i64)>,
    blocks: HashSet<(i64, i64)>,
}

const CATEGORIES: [&str; 3] = ["music", "talk", "spam"];

async fn build(rng: &mut impl Rng) -> (tempfile::TempDir, SqlSession, World) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = EngineConfig::new(dir.path());
    c.checkpoint_wal_bytes = None;
    let engine = Arc::new(Engine::open(c).unwrap());
    let sql = SqlSession::new(engine).unwrap();
    for s in [
        "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, category TEXT) WITH (kind = 'item')",
        "CREATE SIGNAL view ON items DECAY NONE WINDOWS ('all') MARKS seen",
        "CREATE SIGNAL like ON items DECAY NONE WINDOWS ('all')",
        "CREATE SIGNAL hide ON items DECAY NONE WINDOWS ('all') MARKS hidden",
        "CREATE RELATIONSHIP follows FROM users TO creators",
        "CREATE RELATIONSHIP blocks FROM users TO creators",
    ] {
        sql.sql(s).await.unwrap();
    }
    let mut w = World {
        items: BTreeMap::new(),
        likes: HashMap::new(),
        views: HashMap::new(),
        seen: HashSet::new(),
        hidden: HashSet::new(),
        follows: HashSet::new(),
        blocks: HashSet::new(),
    };
    let n_items = rng.random_range(1..60i64);
    let n_creators = rng.random_range(1..8i64);
    let mut values = Vec::new();
    for id in 1..=n_items {
        let creator = (rng.random_range(0..10) > 0).then(|| rng.random_range(0..n_creators));
        let cat = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
        w.items.insert(id, (creator, cat));
        values.push(format!(
            "({id}, {}, '{cat}')",
            creator.map_or("NULL".to_string(), |c| c.to_string())
        ));
    }
    sql.sql(&format!("INSERT INTO items VALUES {}", values.join(", ")))
        .await
        .unwrap();
    // Edges, some to creators no item has, some inserted twice, some deleted again.
    for (name, set) in [("follows", &mut w.follows), ("blocks", &mut w.blocks)] {
        let mut edges = Vec::new();
        for _ in 0..rng.random_range(0..12) {
            let e = (
                rng.random_range(1..5i64),
                rng.random_range(0..n_creators + 2),
            );
            set.insert(e);
            edges.push(format!("({}, {})", e.0, e.1));
        }
        if !edges.is_empty() {
            edges.push(edges[0].clone());
            sql.sql(&format!(
                "INSERT INTO {name} (src, dst) VALUES {}",
                edges.join(", ")
            ))
            .await
            .unwrap();
        }
        if let Some(&(u, c)) = set.iter().next()
            && rng.random_bool(0.5)
        {
            set.remove(&(u, c));
            sql.sql(&format!("DELETE FROM {name} WHERE src = {u} AND dst = {c}"))
                .await
                .unwrap();
        }
    }
    let mut events = Vec::new();
    for _ in 0..rng.random_range(0..200) {
        let item = rng.random_range(1..=n_items + 3); // a few events of unknown items
        let user = rng.random_range(1..5i64);
        let (signal, weight) = match rng.random_range(0..3) {
            0 => ("like", rng.random_range(1..3i64)),
            1 => ("view", rng.random_range(1..4i64)),
            _ => ("hide", 1),
        };
        match signal {
            "like" => *w.likes.entry(item).or_default() += weight,
            "view" => {
                *w.views.entry(item).or_default() += weight;
                w.seen.insert((user, item));
            }
            _ => {
                w.hidden.insert((user, item));
            }
        }
        // Distinct instants: identical events in one statement are deduplicated.
        let n = events.len();
        events.push(format!(
            "('{signal}', {item}, {user}, {weight}.0, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{n} seconds')"
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
    (dir, sql, w)
}

/// The contract's ranking, computed directly.
#[allow(clippy::too_many_arguments)]
fn reference(
    w: &World,
    coef: i64,
    gate: Option<i64>,
    no_spam: bool,
    only_creator: Option<i64>,
    user_filter: Option<(i64, bool, bool)>,
    rel: Option<(i64, &str, bool)>,
    max_per: Option<usize>,
    limit: usize,
) -> Vec<(i64, f64)> {
    let mut cands: Vec<(i64, f64, Option<i64>)> = Vec::new();
    for (&id, &(creator, cat)) in &w.items {
        let likes = w.likes.get(&id).copied().unwrap_or(0);
        let views = w.views.get(&id).copied().unwrap_or(0);
        if gate.is_some_and(|g| views < g) || (no_spam && cat == "spam") {
            continue;
        }
        if only_creator.is_some() && creator != only_creator {
            continue;
        }
        if let Some((user, unseen, not_hidden)) = user_filter
            && ((unseen && w.seen.contains(&(user, id)))
                || (not_hidden && w.hidden.contains(&(user, id))))
        {
            continue;
        }
        // A relationship term tests the creator; an item without one is in no set.
        if let Some((user, name, want)) = rel {
            let set = if name == "follows" {
                &w.follows
            } else {
                &w.blocks
            };
            let member = creator.is_some_and(|c| set.contains(&(user, c)));
            if member != want {
                continue;
            }
        }
        cands.push((id, (coef * likes + views) as f64, creator));
    }
    cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let Some(n) = max_per else {
        return cands.iter().take(limit).map(|c| (c.0, c.1)).collect();
    };
    let mut per: HashMap<i64, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for c in &cands {
        if out.len() == limit {
            break;
        }
        match c.2 {
            Some(cr) if per.get(&cr).copied().unwrap_or(0) >= n => skipped.push((c.0, c.1)),
            Some(cr) => {
                *per.entry(cr).or_default() += 1;
                out.push((c.0, c.1));
            }
            None => out.push((c.0, c.1)),
        }
    }
    for s in skipped {
        if out.len() == limit {
            break;
        }
        out.push(s);
    }
    out
}

fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64, f64)> {
    let mut out = Vec::new();
    for b in batches {
        let rank = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let id = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let score = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((rank.value(i), id.value(i), score.value(i)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_matches_a_brute_force_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x71da1);
    for case in 0..40 {
        let (_dir, sql, w) = build(&mut rng).await;
        for q in 0..6 {
            let coef = rng.random_range(0..4i64);
            let gate = (rng.random_range(0..3) == 0).then(|| rng.random_range(0..4i64));
            let no_spam = rng.random_bool(0.5);
            let mut clauses = vec![format!(
                "SCORE {coef} * signal_total('like') + window_count('view', 'all')"
            )];
            if let Some(g) = gate {
                clauses.push(format!("GATE window_count('view', 'all') >= {g}"));
            }
            if no_spam {
                clauses.push("FILTER category <> 'spam'".to_string());
            }
            let profile_div = (rng.random_range(0..3) == 0).then(|| rng.random_range(1..4usize));
            if let Some(n) = profile_div {
                clauses.push(format!("DIVERSITY max_per_creator {n}"));
            }
            sql.sql(&format!(
                "CREATE OR REPLACE PROFILE p ON items ({})",
                clauses.join(", ")
            ))
            .await
            .unwrap();
            let only_creator = (rng.random_range(0..4) == 0).then(|| rng.random_range(0..3i64));
            let user = rng.random_range(1..5i64);
            let user_filter = match rng.random_range(0..4) {
                0 => Some((user, true, false)),
                1 => Some((user, false, true)),
                2 => Some((user, true, true)),
                _ => None,
            };
            let rel = match rng.random_range(0..5) {
                0 => Some((user, "follows", true)),
                1 => Some((user, "follows", false)),
                2 => Some((user, "blocks", false)),
                _ => None,
            };
            let stmt_div = (rng.random_range(0..3) == 0).then(|| rng.random_range(1..4usize));
            let limit = rng.random_range(0..25usize);
            let mut stmt = "RETRIEVE items".to_string();
            if user_filter.is_some() || rel.is_some() {
                stmt += &format!(" FOR USER {user}");
            }
            stmt += " USING PROFILE p";
            if let Some(c) = only_creator {
                stmt += &format!(" WHERE creator_id = {c}");
            }
            match user_filter {
                Some((_, true, false)) => stmt += " FILTER unseen",
                Some((_, false, true)) => stmt += " FILTER not hidden",
                Some((_, true, true)) => stmt += " FILTER unseen, not hidden",
                _ => {}
            }
            if let Some((_, name, want)) = rel {
                let term = if want {
                    name.to_string()
                } else {
                    format!("not {name}")
                };
                stmt += &if user_filter.is_some() {
                    format!(", {term}")
                } else {
                    format!(" FILTER {term}")
                };
            }
            if let Some(n) = stmt_div {
                stmt += &format!(" DIVERSITY max_per_creator {n}");
            }
            stmt += &format!(" LIMIT {limit}");
            let got = rows(
                &sql.sql(&stmt)
                    .await
                    .unwrap_or_else(|e| panic!("{stmt}: {e}")),
            );
            let want = reference(
                &w,
                coef,
                gate,
                no_spam,
                only_creator,
                user_filter,
                rel,
                stmt_div.or(profile_div),
                limit,
            );
            let got_pairs: Vec<(i64, f64)> = got.iter().map(|r| (r.1, r.2)).collect();
            assert_eq!(got_pairs, want, "case {case}.{q}: {stmt}");
            let ranks: Vec<i64> = got.iter().map(|r| r.0).collect();
            assert_eq!(ranks, (1..=got.len() as i64).collect::<Vec<_>>(), "{stmt}");
            // rank_profile orders the same way when nothing is user-specific.
            if user_filter.is_none()
                && rel.is_none()
                && only_creator.is_none()
                && stmt_div.or(profile_div).is_none()
            {
                let q = format!(
                    "SELECT id, rank_profile('p', id) s FROM items ORDER BY s DESC, id LIMIT {limit}"
                );
                let b = sql.sql(&q).await.unwrap();
                let mut via_fn = Vec::new();
                for b in &b {
                    let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    let s = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
                    for i in 0..b.num_rows() {
                        if s.is_valid(i) && s.value(i).is_finite() {
                            via_fn.push((id.value(i), s.value(i)));
                        }
                    }
                }
                assert_eq!(via_fn, want, "{q}");
            }
        }
    }
}

/// The plan says which sets FILTER tests, that affinity() is bound to the user's pairs,
/// and that EXPLORE replaced the ranking (with its slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_filters_affinity_and_exploration() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (_dir, sql, _w) = build(&mut rng).await;
    for s in [
        "CREATE SIGNAL tip ON items DECAY NONE WINDOWS ('all') AFFINITY 0.5",
        "INSERT INTO signals (signal, entity_id, user_id) VALUES ('tip', 1, 2)",
        "CREATE PROFILE fy ON items (SCORE signal_total('like') + affinity())",
    ] {
        sql.sql(s).await.unwrap();
    }
    let plan = |q: &'static str| {
        let sql = &sql;
        async move {
            let batches = sql.sql(&format!("EXPLAIN {q}")).await.unwrap();
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        }
    };
    let p = plan("RETRIEVE items FOR USER 2 USING PROFILE fy FILTER follows, not blocks, unseen EXPLORE 0.2 LIMIT 10").await;
    for want in [
        // Keeping terms filter the scan; removing terms mask the scored candidates.
        "Filter: edge_of[user 2 follows](items.creator_id)",
        "Mask: NOT edge_of[user 2 blocks](creator_id), NOT marked_by[user 2 seen](id)",
        "MaskExec: NOT edge_of[user 2 blocks](creator_id)",
        "user_affinity(items.creator_id",
        "Explore: limit=10, max_per_creator=none, fraction=0.2, slots=2 at ranks [5, 10], user=2",
    ] {
        assert!(p.contains(want), "no {want:?} in\n{p}");
    }
    // Without FOR USER affinity() is the constant 0, and without EXPLORE it is a Rank.
    let p = plan("RETRIEVE items USING PROFILE fy LIMIT 10").await;
    assert!(
        !p.contains("user_affinity") && p.contains("Rank: limit=10"),
        "{p}"
    );
}
