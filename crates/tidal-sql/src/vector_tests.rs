//! Exact nearest-neighbour search against a brute-force model: for random vectors
//! (small integer components, so f32 and f64 sums are both exact) every metric's
//! `ORDER BY distance, id LIMIT k`, with and without a WHERE filter, returns the
//! model's ids; cosine distances equal the model's to 1e-6.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array};
use rand::{Rng, SeedableRng};
use tidal_engine::{Engine, EngineConfig};

use crate::SqlSession;

/// A model distance between two vectors.
type Distance = fn(&[f64], &[f64]) -> f64;

fn text(v: &[i32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(","))
}

fn ids(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            a.values().to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_search_equals_brute_force_for_every_metric() {
    for seed in 0..16u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(EngineConfig::new(dir.path())).unwrap());
        let sql = SqlSession::new(engine).unwrap();
        let dims = rng.random_range(1..6usize);
        sql.sql(&format!(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, category TEXT, embedding VECTOR({dims})) \
             WITH (kind = 'item')"
        ))
        .await
        .unwrap();
        let n = rng.random_range(1..40i64);
        let mut rows: Vec<(i64, bool, Option<Vec<i32>>)> = Vec::new();
        let mut values = Vec::new();
        for id in 1..=n {
            let v = (rng.random_range(0..8) > 0).then(|| {
                (0..dims)
                    .map(|_| rng.random_range(-3..=3))
                    .collect::<Vec<i32>>()
            });
            let a = rng.random_bool(0.5);
            values.push(format!(
                "({id}, '{}', {})",
                if a { "a" } else { "b" },
                v.as_ref()
                    .map_or("NULL".to_string(), |v| format!("'{}'", text(v)))
            ));
            rows.push((id, a, v));
        }
        sql.sql(&format!("INSERT INTO items VALUES {}", values.join(", ")))
            .await
            .unwrap();
        let q: Vec<i32> = (0..dims).map(|_| rng.random_range(-3..=3)).collect();
        let qt = text(&q);
        let f = |v: &[i32]| v.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>();
        let metrics: [(&str, Distance); 4] = [
            ("<->", |a, b| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f64>()
                    .sqrt()
            }),
            ("<#>", |a, b| {
                -a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>()
            }),
            ("l1", |a, b| {
                a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
            }),
            ("ip", |a, b| a.iter().zip(b).map(|(x, y)| x * y).sum()),
        ];
        for (op, dist) in metrics {
            for filtered in [false, true] {
                let k = rng.random_range(1..=(n as usize + 2));
                let expr = match op {
                    "l1" => format!("l1_distance(embedding, '{qt}')"),
                    "ip" => format!("inner_product(embedding, '{qt}')"),
                    _ => format!("embedding {op} '{qt}'"),
                };
                let got = ids(&sql
                    .sql(&format!(
                        "SELECT id FROM items {} ORDER BY {expr}, id LIMIT {k}",
                        if filtered { "WHERE category = 'a'" } else { "" }
                    ))
                    .await
                    .unwrap());
                // The model: NULL vectors last (ascending order), ties by id.
                let mut model: Vec<(Option<f64>, i64)> = rows
                    .iter()
                    .filter(|(_, a, _)| !filtered || *a)
                    .map(|(id, _, v)| (v.as_ref().map(|v| dist(&f(v), &f(&q))), *id))
                    .collect();
                model.sort_by(|x, y| match (x.0, y.0) {
                    (Some(a), Some(b)) => a.total_cmp(&b).then(x.1.cmp(&y.1)),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => x.1.cmp(&y.1),
                });
                let want: Vec<i64> = model.iter().take(k).map(|m| m.1).collect();
                assert_eq!(got, want, "seed {seed}, {expr}, filtered {filtered}");
            }
        }
        // Cosine: the values, against the f64 model.
        let b = sql
            .sql(&format!(
                "SELECT id, embedding <=> '{qt}' FROM items ORDER BY id"
            ))
            .await
            .unwrap();
        let mut i = 0;
        for batch in &b {
            let d = batch
                .column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            for r in 0..batch.num_rows() {
                let want = rows[i].2.as_ref().map(|v| {
                    let (a, b) = (f(v), f(&q));
                    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                    let na: f64 = a.iter().map(|x| x * x).sum();
                    let nb: f64 = b.iter().map(|x| x * x).sum();
                    let s = dot / (na * nb).sqrt();
                    if s.is_nan() {
                        f64::NAN
                    } else {
                        1.0 - s.clamp(-1.0, 1.0)
                    }
                });
                match want {
                    None => assert!(d.is_null(r), "seed {seed}: row {}", rows[i].0),
                    Some(w) if w.is_nan() => assert!(d.value(r).is_nan()),
                    Some(w) => assert!(
                        (d.value(r) - w).abs() < 1e-6,
                        "seed {seed}: row {}: {} vs {w}",
                        rows[i].0,
                        d.value(r)
                    ),
                }
                i += 1;
            }
        }
        assert_eq!(i, rows.len());
    }
}

/// The plan's text (EXPLAIN's plan column, all rows).
async fn explain(sql: &SqlSession, query: &str) -> String {
    let batches = sql.sql(&format!("EXPLAIN {query}")).await.unwrap();
    let mut out = String::new();
    for b in &batches {
        let plans = b
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        for i in 0..plans.len() {
            out.push_str(plans.value(i));
            out.push('\n');
        }
    }
    out
}

/// `n` vectors of `d` dims around 20 centres along 8 hidden directions (embeddings have
/// a low intrinsic dimension), as text, from shared centres so queries land near data.
fn clustered(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut shared = rand::rngs::StdRng::seed_from_u64(0);
    let centres: Vec<Vec<f32>> = (0..20)
        .map(|_| (0..d).map(|_| shared.random_range(-1.0..1.0)).collect())
        .collect();
    let basis: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..d).map(|_| shared.random_range(-0.5..0.5)).collect())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut v = centres[i % centres.len()].clone();
            for b in &basis {
                let z: f32 = rng.random_range(-1.0..1.0);
                for (x, y) in v.iter_mut().zip(b) {
                    *x += z * y;
                }
            }
            v
        })
        .collect()
}

fn vtext(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", parts.join(","))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    1.0 - ab / (aa.sqrt() * bb.sqrt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_search_is_planned_recalls_and_filters_inside_the_search() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(EngineConfig::new(dir.path())).unwrap());
    let sql = SqlSession::new(engine).unwrap();
    let d = 32;
    sql.sql(&format!(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, bucket INT, embedding VECTOR({d})) \
         WITH (kind = 'item')"
    ))
    .await
    .unwrap();
    let n = 4000usize;
    let data = clustered(n, d, 1);
    for chunk in data.chunks(500).enumerate() {
        let (c, rows) = chunk;
        let values: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let id = c * 500 + i;
                format!("({id}, {}, '{}')", id % 200, vtext(v))
            })
            .collect();
        sql.sql(&format!("INSERT INTO items VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
    sql.sql("CREATE INDEX items_cos ON items USING hnsw (embedding vector_cosine_ops)")
        .await
        .unwrap();

    let q = vtext(&clustered(1, d, 99)[0]);
    let ann = format!("SELECT id FROM items ORDER BY embedding <=> '{q}' LIMIT 10");
    let plan = explain(&sql, &ann).await;
    assert!(plan.contains("HnswIndexScan: index=items_cos"), "{plan}");
    // The forms a driver's parameter takes (the server binds `$1` as a CAST) and
    // explicit casts are served by the index too.
    for form in [
        format!("CAST('{q}' AS vector)"),
        format!("CAST('{q}' AS vector({d}))"),
        format!("'{q}'::vector"),
    ] {
        let query = format!("SELECT id FROM items ORDER BY embedding <=> {form} LIMIT 10");
        let plan = explain(&sql, &query).await;
        assert!(
            plan.contains("HnswIndexScan: index=items_cos"),
            "{form}:\n{plan}"
        );
    }
    // Other metrics, other orders and non-constant queries stay exact.
    for exact in [
        format!("SELECT id FROM items ORDER BY embedding <-> '{q}' LIMIT 10"),
        format!("SELECT id FROM items ORDER BY embedding <=> '{q}' DESC LIMIT 10"),
        format!("SELECT id FROM items ORDER BY embedding <=> '{q}'"),
        "SELECT a.id FROM items a, items b WHERE a.id = b.id ORDER BY a.embedding <=> b.embedding LIMIT 3".to_string(),
    ] {
        let plan = explain(&sql, &exact).await;
        assert!(!plan.contains("HnswIndexScan"), "{exact}:\n{plan}");
    }
    let filtered = format!(
        "SELECT id, embedding <=> '{q}' AS d FROM items WHERE bucket < 20 ORDER BY d LIMIT 10"
    );
    let plan = explain(&sql, &filtered).await;
    assert!(
        plan.contains("HnswIndexScan") && plan.contains("filter inside the search"),
        "{plan}"
    );

    // Recall against brute force, unfiltered and at 10 % and 0.5 % selectivity.
    let queries = clustered(30, d, 7);
    for (filter, keep) in [
        (
            "TRUE",
            Box::new(|_: usize| true) as Box<dyn Fn(usize) -> bool>,
        ),
        ("bucket < 20", Box::new(|i: usize| i % 200 < 20)),
        ("bucket = 7", Box::new(|i: usize| i % 200 == 7)),
    ] {
        let mut recall = 0.0;
        for qv in &queries {
            let got = ids(&sql
                .sql(&format!(
                    "SELECT id FROM items WHERE {filter} ORDER BY embedding <=> '{}' LIMIT 10",
                    vtext(qv)
                ))
                .await
                .unwrap());
            assert_eq!(got.len(), 10, "{filter}: k rows pass, k rows come back");
            assert!(got.iter().all(|id| keep(*id as usize)), "{filter}: {got:?}");
            let mut all: Vec<(f64, usize)> = data
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(i, v)| (cosine(v, qv), i))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            let want: Vec<i64> = all.iter().take(10).map(|(_, i)| *i as i64).collect();
            recall += got.iter().filter(|g| want.contains(g)).count() as f64 / 10.0;
        }
        let recall = recall / queries.len() as f64;
        assert!(recall >= 0.9, "{filter}: recall@10 {recall}");
        if filter == "TRUE" {
            assert!(
                recall >= 0.95,
                "recall@10 at the default ef_search: {recall}"
            );
        }
    }

    // Fresh on return, and the exact distances come back.
    let far = vtext(
        &(0..d)
            .map(|i| if i == 3 { -7.0 } else { 0.0 })
            .collect::<Vec<f32>>(),
    );
    sql.sql(&format!("INSERT INTO items VALUES (100000, 1, '{far}')"))
        .await
        .unwrap();
    let got = sql
        .sql(&format!(
            "SELECT id, embedding <=> '{far}' AS d FROM items ORDER BY d LIMIT 1"
        ))
        .await
        .unwrap();
    assert_eq!(ids(&got), [100000]);
    let dist = got[0]
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .value(0);
    assert!(dist.abs() < 1e-6, "{dist}");
}

/// SQL.md §7's preference formula, independently: f64 arithmetic, f32 storage.
fn model_move(p: &mut Option<Vec<f32>>, e: &[f32], step: f64) {
    let ne = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let base: Vec<f64> = match p {
        Some(p) => p.iter().map(|x| f64::from(*x)).collect(),
        None => vec![0.0; e.len()],
    };
    let v: Vec<f64> = base
        .iter()
        .zip(e)
        .map(|(b, x)| b + step * f64::from(*x) / ne)
        .collect();
    let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    *p = Some(v.iter().map(|x| (x / nv) as f32).collect());
}

fn floats(batches: &[datafusion::arrow::array::RecordBatch], column: usize) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(column)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            a.values().to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggest_ranks_by_the_preference_vector_exactly_and_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(EngineConfig::new(dir.path())).unwrap());
    let sql = SqlSession::new(engine).unwrap();
    let d = 32;
    sql.sql(&format!(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, bucket INT, \
         embedding VECTOR({d})) WITH (kind = 'item')"
    ))
    .await
    .unwrap();
    for s in [
        "CREATE SIGNAL like ON items DECAY NONE WINDOWS ('all') MARKS liked PREFERENCE 0.1",
        "CREATE SIGNAL skip ON items DECAY NONE WINDOWS ('all') PREFERENCE -0.05",
    ] {
        sql.sql(s).await.unwrap();
    }
    let n = 3000usize;
    let data = clustered(n, d, 3);
    for (c, rows) in data.chunks(500).enumerate() {
        let values: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let id = c * 500 + i;
                format!("({id}, {}, {}, '{}')", id % 50, id % 200, vtext(v))
            })
            .collect();
        sql.sql(&format!("INSERT INTO items VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }

    // User 1 likes and skips a random sequence of items (weights vary); the stored
    // vector equals the model's.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut model = None;
    let mut liked = std::collections::HashSet::new();
    for k in 0..40 {
        let item = rng.random_range(0..n);
        let (signal, lr) = if k % 4 == 3 {
            ("skip", -0.05)
        } else {
            ("like", 0.1)
        };
        let weight: f64 = rng.random_range(0.5..3.0);
        sql.sql(&format!(
            "INSERT INTO signals (signal, entity_id, user_id, weight, ts) \
             VALUES ('{signal}', {item}, 1, {weight}, now() - INTERVAL '{k} seconds')"
        ))
        .await
        .unwrap();
        if signal == "like" {
            liked.insert(item);
        }
        model_move(&mut model, &data[item], lr * weight);
    }
    let p = model.unwrap();
    let got = sql
        .sql(&format!(
            "SELECT l2_distance(preference(1), '{}')",
            vtext(&p)
        ))
        .await
        .unwrap();
    assert!(floats(&got, 0)[0] < 1e-6, "preference(1) vs model: {got:?}");

    // Exact without an index: the brute-force top 10 among unliked rows of bucket < 100.
    let keep = |i: usize| i % 200 < 100 && !liked.contains(&i);
    let mut all: Vec<(f64, usize)> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, v)| (cosine(v, &p), i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let want: Vec<i64> = all.iter().take(10).map(|(_, i)| *i as i64).collect();
    let q = "SUGGEST items FOR USER 1 WHERE bucket < 100 FILTER not liked LIMIT 10";
    let rows = sql.sql(q).await.unwrap();
    let exact: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            let a = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            a.values().to_vec()
        })
        .collect();
    assert_eq!(exact, want);
    // similarity = 1 − the model's cosine distance; score = similarity.
    for ((s, sc), (d, _)) in floats(&rows, 3).iter().zip(floats(&rows, 2)).zip(&all) {
        assert!((s - (1.0 - d)).abs() < 1e-5 && *s == sc, "{s} vs {d}");
    }
    let plan = explain(&sql, q).await;
    assert!(
        plan.contains("exact scan") && !plan.contains("HnswIndexScan"),
        "{plan}"
    );

    // Through a cosine index: the filter inside the search, recall ≥ 0.9.
    sql.sql("CREATE INDEX items_cos ON items USING hnsw (embedding vector_cosine_ops)")
        .await
        .unwrap();
    let plan = explain(&sql, q).await;
    assert!(
        plan.contains("HNSW index") && plan.contains("HnswIndexScan: index=items_cos"),
        "{plan}"
    );
    // Ranks are 1..=10.
    assert_eq!(
        ids(&sql.sql(q).await.unwrap()),
        (1..=10).collect::<Vec<i64>>()
    );
    let rows = sql.sql(q).await.unwrap();
    let via_index: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            let a = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            a.values().to_vec()
        })
        .collect();
    assert!(via_index.iter().all(|id| keep(*id as usize)));
    let recall = via_index.iter().filter(|g| want.contains(g)).count() as f64 / 10.0;
    assert!(recall >= 0.9, "recall@10 through the index: {recall}");

    // A profile re-ranks the candidates (fused plan, with diversity).
    sql.sql("CREATE PROFILE sim ON items (SCORE similarity())")
        .await
        .unwrap();
    let fused = "SUGGEST items FOR USER 1 USING PROFILE sim DIVERSITY max_per_creator 1 LIMIT 10";
    let plan = explain(&sql, fused).await;
    assert!(plan.contains("suggest_nearest[user 1 nearest"), "{plan}");
    let rows = sql.sql(fused).await.unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 10);

    // The feedback loop: one heavy like moves the next SUGGEST toward its item.
    let target = (0..n)
        .find(|i| !liked.contains(i) && *i % 200 >= 100)
        .unwrap();
    sql.sql("INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', 7, 2)")
        .await
        .unwrap();
    let first = |rows: &[datafusion::arrow::array::RecordBatch]| {
        rows[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    let rows = sql.sql("SUGGEST items FOR USER 2 LIMIT 1").await.unwrap();
    assert_eq!(first(&rows), 7);
    sql.sql(&format!(
        "INSERT INTO signals (signal, entity_id, user_id, weight) VALUES ('like', {target}, 2, 1000)"
    ))
    .await
    .unwrap();
    let rows = sql.sql("SUGGEST items FOR USER 2 LIMIT 1").await.unwrap();
    assert_eq!(first(&rows) as usize, target);
}
