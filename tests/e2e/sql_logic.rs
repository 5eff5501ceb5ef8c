//! The `.slt` suites under `sql/`, run in process against a fresh database per file.
//! (The same files are meant to run through the wire later, with another `AsyncDB`.)

use std::path::PathBuf;
use std::sync::Arc;

use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tidal::Database;
use tidal::datafusion::arrow::array::{Array, UInt64Array};
use tidal::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

struct TidalDb {
    db: Arc<Database>,
}

#[async_trait::async_trait]
impl AsyncDB for TidalDb {
    type Error = tidal::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, tidal::Error> {
        let batches = self.db.sql(sql).await?;
        let Some(first) = batches.first() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        let schema = first.schema();
        let is_write = schema.fields().len() == 1
            && schema.field(0).name() == "count"
            && !sql.trim_start().to_ascii_lowercase().starts_with("select");
        if is_write && let Some(n) = first.column(0).as_any().downcast_ref::<UInt64Array>() {
            return Ok(DBOutput::StatementComplete(n.value(0)));
        }
        let opts = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &batches {
            let fmts: Vec<ArrayFormatter<'_>> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    tidal::Error::Sql(tidal::SqlError::from(
                        tidal::datafusion::error::DataFusionError::from(e),
                    ))
                })?;
            for r in 0..b.num_rows() {
                // An empty string would vanish in the runner's whitespace-normalized
                // comparison; print it as sqllogictest's usual "(empty)".
                rows.push(
                    fmts.iter()
                        .map(|f| match f.value(r).to_string() {
                            s if s.is_empty() => "(empty)".to_string(),
                            s => s,
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; schema.fields().len()],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tidal-embedded"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_suites_pass_in_process() {
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
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::open(dir.path()).unwrap());
        let mut runner = Runner::new(move || {
            let db = db.clone();
            async move { Ok::<_, tidal::Error>(TidalDb { db }) }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
    }
}

/// The crate's directory, read when the test runs (cargo sets `CARGO_MANIFEST_DIR` for
/// it): a test binary reused from another checkout through a shared target directory
/// must still find this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
