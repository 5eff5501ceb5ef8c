//! Other languages' drivers and tools against the server: psycopg 3, pgvector-python,
//! and SQLAlchemy 2 + pandas (Python), node-postgres and pgjdbc. Each runs a check program from `tests/drivers/` (it exits non-zero on the
//! first mismatch) against a fresh server.
//!
//! A driver that is not installed is skipped with a message saying how to install it;
//! with `TIDAL_REQUIRE_CLIENTS=1` (set by `.ci/run`, which installs them) a missing
//! driver fails the test instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::start;

/// How long one check program may run before the test fails (they take seconds).
const DRIVER_CHECK_TIMEOUT_S: u64 = 120;

fn checks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Skips (returns false) or, under `TIDAL_REQUIRE_CLIENTS=1`, fails when `what` is
/// missing.
pub fn present(available: bool, what: &str, install: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("TIDAL_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        panic!("{what} is missing and TIDAL_REQUIRE_CLIENTS=1 ({install})");
    }
    eprintln!("skipped: {what} not installed ({install})");
    false
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where `.ci/run` installs the node-postgres package.
fn node_path() -> PathBuf {
    match std::env::var_os("TIDAL_NODE_PATH") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/tidal-drivers/node_modules"),
    }
}

fn pgjdbc_jar() -> PathBuf {
    std::env::var_os("TIDAL_PGJDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar"))
}

/// Runs `cmd` to completion and fails the test with its output unless it exits 0
/// within [`DRIVER_CHECK_TIMEOUT_S`] (a hung check is killed, not waited for).
async fn run_check(mut cmd: Command, name: &str) {
    let name = name.to_string();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(DRIVER_CHECK_TIMEOUT_S);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} did not finish within {DRIVER_CHECK_TIMEOUT_S} s:\n{}",
                    err.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, out.join().unwrap(), err.join().unwrap())
    })
    .await
    .unwrap();
    assert!(
        status.success(),
        "check failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    eprint!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg() {
    python_check(
        "psycopg_check.py",
        "psycopg",
        "psycopg 3",
        "pip install 'psycopg[binary]'",
    )
    .await;
}

/// pgvector-python's adapters (psycopg and asyncpg), unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector() {
    python_check(
        "pgvector_check.py",
        "psycopg, asyncpg, numpy, pgvector.psycopg, pgvector.asyncpg",
        "pgvector-python with psycopg and asyncpg",
        "pip install 'psycopg[binary]' asyncpg numpy pgvector",
    )
    .await;
}

/// Runs the Python check `script` against a fresh server, or skips it when `imports`
/// cannot be imported (`install` says how to get them).
async fn python_check(script: &str, imports: &str, what: &str, install: &str) {
    let ok = runs(Command::new("python3").args(["-c", &format!("import {imports}")]));
    if !present(ok, what, install) {
        return;
    }
    let server = start().await;
    let mut cmd = Command::new("python3");
    cmd.arg(checks_dir().join(script)).env(
        "TIDAL_URL",
        format!("postgresql://tidal@{}/tidal", server.addr),
    );
    run_check(cmd, script).await;
    server.stop().await;
}

/// SQLAlchemy 2 reflection, Core and ORM, and pandas' `read_sql` / `read_sql_table`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_pandas() {
    python_check(
        "sqlalchemy_check.py",
        "psycopg, sqlalchemy, pandas",
        "SQLAlchemy 2 and pandas",
        "pip install 'psycopg[binary]' 'sqlalchemy>=2,<3' pandas",
    )
    .await;
}

/// pgcli's start-up: its completion refresher's catalog queries and pgspecial's
/// `\l`, `\dt`, `\d`, `\dn`, `\df`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgcli() {
    python_check(
        "pgcli_check.py",
        "pgcli.pgexecute, pgspecial",
        "pgcli 4",
        "pip install 'pgcli>=4,<5'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg() {
    let ok = runs(
        Command::new("node")
            .args(["-e", "require('pg')"])
            .env("NODE_PATH", node_path()),
    );
    if !present(
        ok,
        "node-postgres",
        "npm install --prefix ~/.cache/tidal-drivers pg@8",
    ) {
        return;
    }
    let server = start().await;
    let mut cmd = Command::new("node");
    cmd.arg(checks_dir().join("node_pg_check.js"))
        .env("NODE_PATH", node_path())
        .env("TZ", "UTC")
        .env(
            "TIDAL_URL",
            format!("postgresql://tidal@{}/tidal", server.addr),
        );
    run_check(cmd, "node_pg_check.js").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() {
    let jar = pgjdbc_jar();
    let ok = jar.is_file() && runs(Command::new("javac").arg("-version"));
    if !present(
        ok,
        "pgjdbc and javac",
        "apt-get install libpostgresql-jdbc-java default-jdk-headless",
    ) {
        return;
    }
    let classes = tempfile::tempdir().unwrap();
    let compiled = Command::new("javac")
        .arg("-cp")
        .arg(&jar)
        .arg("-d")
        .arg(classes.path())
        .arg(checks_dir().join("JdbcCheck.java"))
        .output()
        .unwrap();
    assert!(
        compiled.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let server = start().await;
    let mut cp = std::ffi::OsString::from(classes.path());
    cp.push(":");
    cp.push(&jar);
    let mut cmd = Command::new("java");
    cmd.arg("-Duser.timezone=UTC")
        .arg("-cp")
        .arg(cp)
        .arg("JdbcCheck")
        .env(
            "TIDAL_JDBC_URL",
            format!(
                "jdbc:postgresql://{}:{}/tidal?user=tidal&connectTimeout=10",
                server.addr.ip(),
                server.addr.port()
            ),
        );
    run_check(cmd, "JdbcCheck").await;
    server.stop().await;
}
