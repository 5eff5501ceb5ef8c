//! The `.slt` suites under `sql/` again, this time through the wire (the in-process run
//! is in the `tidal` crate's e2e binary), each file against a fresh server, over the
//! simple and the extended protocol.
//!
//! Values arrive in PostgreSQL's text form (`1` for a float 1.0, `{a,b}` for arrays,
//! `2026-01-01 10:00:00`), the expected files use Arrow's display form (`1.0`, `[a, b]`,
//! `2026-01-01T10:00:00`); the validator compares the two by value: the same tokens, with
//! numbers compared numerically.

use std::path::PathBuf;

use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Normalizer, Runner};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common;

#[derive(Debug)]
struct WireError(String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn wire_err(e: tokio_postgres::Error) -> WireError {
    match e.as_db_error() {
        Some(db) => WireError(format!("{} (SQLSTATE {})", db.message(), db.code().code())),
        None => WireError(e.to_string()),
    }
}

struct WireDb {
    client: Client,
    extended: bool,
}

fn cell(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(s) => s.to_string(),
    }
}

/// One binary-format value as text.
fn typed_cell(row: &tokio_postgres::Row, i: usize) -> Result<String, WireError> {
    use tokio_postgres::types::Type;
    let ty = row.columns()[i].type_().clone();
    let err = |e: tokio_postgres::Error| WireError(format!("decoding column {i} ({ty}): {e}"));
    let text = |v: Option<String>| cell(v.as_deref());
    Ok(match ty {
        Type::BOOL => text(
            row.try_get::<_, Option<bool>>(i)
                .map_err(err)?
                .map(|b| b.to_string()),
        ),
        Type::INT2 => text(
            row.try_get::<_, Option<i16>>(i)
                .map_err(err)?
                .map(|v| v.to_string()),
        ),
        Type::INT4 => text(
            row.try_get::<_, Option<i32>>(i)
                .map_err(err)?
                .map(|v| v.to_string()),
        ),
        Type::INT8 => text(
            row.try_get::<_, Option<i64>>(i)
                .map_err(err)?
                .map(|v| v.to_string()),
        ),
        Type::FLOAT4 => text(
            row.try_get::<_, Option<f32>>(i)
                .map_err(err)?
                .map(|v| v.to_string()),
        ),
        Type::FLOAT8 => text(
            row.try_get::<_, Option<f64>>(i)
                .map_err(err)?
                .map(|v| v.to_string()),
        ),
        Type::TEXT | Type::VARCHAR => cell(row.try_get::<_, Option<&str>>(i).map_err(err)?),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => text(
            row.try_get::<_, Option<std::time::SystemTime>>(i)
                .map_err(err)?
                .map(|t| {
                    let us = match t.duration_since(std::time::UNIX_EPOCH) {
                        Ok(d) => d.as_micros() as i64,
                        Err(e) => -(e.duration().as_micros() as i64),
                    };
                    tidal::Timestamp(us).to_string()
                }),
        ),
        Type::TEXT_ARRAY => text(
            row.try_get::<_, Option<Vec<Option<String>>>>(i)
                .map_err(err)?
                .map(|v| {
                    let items: Vec<String> =
                        v.into_iter().map(|x| x.unwrap_or("NULL".into())).collect();
                    format!("[{}]", items.join(", "))
                }),
        ),
        ref other if other.name() == "vector" => text(
            row.try_get::<_, Option<crate::common::PgVector>>(i)
                .map_err(err)?
                .map(|v| {
                    let items: Vec<String> = v.0.iter().map(|x| x.to_string()).collect();
                    format!("[{}]", items.join(", "))
                }),
        ),
        other => {
            return Err(WireError(format!(
                "the wire slt runner cannot decode {other}"
            )));
        }
    })
}

#[async_trait::async_trait]
impl AsyncDB for WireDb {
    type Error = WireError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        if self.extended {
            // Parse/Describe/Bind/Execute with binary results, decoded by type.
            let stmt = self.client.prepare(sql).await.map_err(wire_err)?;
            if stmt.columns().is_empty() {
                let n = self.client.execute(&stmt, &[]).await.map_err(wire_err)?;
                return Ok(DBOutput::StatementComplete(n));
            }
            let width = stmt.columns().len();
            let mut rows = Vec::new();
            for row in self.client.query(&stmt, &[]).await.map_err(wire_err)? {
                rows.push(
                    (0..width)
                        .map(|i| typed_cell(&row, i))
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
            return Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; width],
                rows,
            });
        }
        let mut rows = Vec::new();
        let mut width = 0;
        let mut count = None;
        for m in self.client.simple_query(sql).await.map_err(wire_err)? {
            match m {
                SimpleQueryMessage::Row(r) => {
                    width = r.len();
                    rows.push((0..r.len()).map(|i| cell(r.get(i))).collect::<Vec<_>>());
                }
                SimpleQueryMessage::RowDescription(cols) => width = cols.len(),
                SimpleQueryMessage::CommandComplete(n) => count = Some(n),
                _ => {}
            }
        }
        if width == 0 && rows.is_empty() {
            return Ok(DBOutput::StatementComplete(count.unwrap_or(0)));
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tidal-wire"
    }
}

/// Splits a result into comparable tokens: `T` between date and time becomes a space,
/// brackets, braces, quotes and commas separate tokens.
fn tokens(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut norm = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        let between_digits = i > 0
            && i + 1 < chars.len()
            && chars[i - 1].is_ascii_digit()
            && chars[i + 1].is_ascii_digit();
        if c == 'T' && between_digits {
            norm.push(' ');
        } else {
            norm.push(c);
        }
    }
    norm.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '{' | '}' | '"'))
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

fn same_token(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    // PostgreSQL's text form of a BOOLEAN is t / f.
    if matches!(
        (a, b),
        ("t", "true") | ("true", "t") | ("f", "false") | ("false", "f")
    ) {
        return true;
    }
    let num = |s: &str| match s {
        "NaN" => Some(f64::NAN),
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok(),
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => {
            x == y || (x.is_nan() && y.is_nan()) || ((x - y).abs() <= 1e-12 * x.abs().max(y.abs()))
        }
        _ => false,
    }
}

fn by_value(_n: Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    let got: Vec<String> = actual
        .iter()
        .flat_map(|r| r.iter().flat_map(|c| tokens(c)))
        .collect();
    let want: Vec<String> = expected.iter().flat_map(|l| tokens(l)).collect();
    got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| same_token(a, b))
}

async fn run_all(extended: bool) {
    let root = manifest_dir().join("../../sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        // TIDAL_SLT=name runs only sql/name.slt (while writing one).
        .filter(|p| {
            std::env::var("TIDAL_SLT")
                .ok()
                .is_none_or(|only| p.file_stem().is_some_and(|s| s == only.as_str()))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files under {}", root.display());
    for file in files {
        let server = common::start().await;
        let addr = server.addr;
        let mut runner = Runner::new(move || async move {
            let client = common::try_connect(addr, tidal_server::USER, None)
                .await
                .map_err(wire_err)?;
            Ok::<_, WireError>(WireDb { client, extended })
        });
        runner.with_validator(by_value);
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{} (extended = {extended}): {e}", file.display());
        }
        drop(server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_suites_pass_over_the_simple_protocol() {
    run_all(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_suites_pass_over_the_extended_protocol() {
    run_all(true).await;
}

#[test]
fn value_comparison_is_by_value() {
    let n: Normalizer = |s| s.clone();
    assert!(by_value(
        n,
        &[vec![
            "1".into(),
            "{a,\"b c\"}".into(),
            "2026-01-01 10:00:00".into()
        ]],
        &["1.0 [a, b c] 2026-01-01T10:00:00".into()]
    ));
    assert!(!by_value(n, &[vec!["1.5".into()]], &["1.0".into()]));
    assert!(!by_value(n, &[vec!["a".into(), "b".into()]], &["a".into()]));
}

/// The crate's directory, read when the test runs (cargo sets `CARGO_MANIFEST_DIR` for
/// it): a test binary reused from another checkout through a shared target directory
/// must still find this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
