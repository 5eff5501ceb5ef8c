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
