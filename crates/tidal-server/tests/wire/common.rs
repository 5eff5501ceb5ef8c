//! Starting servers (in process or as the real binary) and connecting to them.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tidal_server::{Server, ServerConfig, ServerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

/// The schema most tests use.
pub const SCHEMA: &str = "
    CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '14 days' WINDOWS ('24h', '7d', 'all');
    CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '7 days' WINDOWS ('1h', '24h');
    CREATE TABLE items (
        id BIGINT PRIMARY KEY, title TEXT, score DOUBLE, created_at TIMESTAMP,
        tags TEXT[], flag BOOLEAN, rating REAL, rank INT, embedding VECTOR(3)
    ) WITH (kind = 'item');
";

/// A server running in this process on 127.0.0.1:<free port>, on its own tokio
/// runtime: a server whose workers are all busy cannot also stall the test's clients
/// and timers, so such a regression fails a test instead of hanging it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The `/metrics` address, when the config asked for one.
    pub metrics: Option<SocketAddr>,
    _dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    adjust(&mut config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-server")
        .enable_all()
        .build()
        .unwrap();
    let (addr_tx, addr_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = runtime.spawn(async move {
        let server = Server::bind(config).await?;
        let _ = addr_tx.send((server.local_addr()?, server.metrics_addr()?));
        server
            .run(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    let (addr, metrics) = match addr_rx.await {
        Ok(addrs) => addrs,
        Err(_) => panic!("the server did not start: {:?}", task.await),
    };
    TestServer {
        addr,
        metrics,
        _dir: dir,
        stop: Some(stop_tx),
        task: Some(task),
        runtime: Some(runtime),
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub fn config(addr: SocketAddr, user: &str, password: Option<&str>) -> Config {
    let mut c = Config::new();
    c.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname("tidal")
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        c.password(p);
    }
    c
}

/// Connects and drives the connection on its own task.
pub async fn try_connect(
    addr: SocketAddr,
    user: &str,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = config(addr, user, password).connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn connect(addr: SocketAddr) -> Client {
    try_connect(addr, "tidal", None).await.unwrap()
}

impl TestServer {
    pub async fn connect(&self) -> Client {
        connect(self.addr).await
    }

    /// Connects and creates [`SCHEMA`].
    pub async fn connect_with_schema(&self) -> Client {
        let c = self.connect().await;
        c.batch_execute(SCHEMA).await.unwrap();
        c
    }

    /// Graceful shutdown; the run future must finish cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        let result = tokio::time::timeout(Duration::from_secs(40), task)
            .await
            .expect("server did not shut down within 40 s")
            .expect("server task panicked");
        result.expect("server run returned an error");
    }
}

/// The ids in `items`, in order.
pub async fn item_ids(c: &Client) -> Vec<i64> {
    c.query("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The SQLSTATE of a failed call ("none" if the error has none, e.g. I/O).
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| format!("none ({e})"), |c| c.code().to_string())
}

/// Asserts that `r` failed with SQLSTATE `expected`; returns the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
    expected: &str,
) -> String {
    match r {
        Ok(v) => panic!("expected SQLSTATE {expected}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(code(&e), expected, "wrong SQLSTATE for error: {e:?}");
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default()
        }
    }
}

/// The real `tidal` binary serving a data directory.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `tidal serve --data-dir dir --listen 127.0.0.1:0` and waits for its
    /// "tidalDB listening on ADDR" line.
    pub fn spawn(dir: &Path, log: &Path) -> Proc {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidal"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env_remove("TIDAL_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the tidal binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stdout so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("tidalDB listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("bad listen address in stdout"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tidal serve did not report its address; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        Proc {
            child,
            addr,
            log: log.to_path_buf(),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for exit (up to `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tidal did not exit within {limit:?}; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// pgvector's `vector` for tokio-postgres, in its binary form (int16 dimensions, int16
/// unused, float4s; big-endian) — what the pgvector crate does, without the dependency.
#[derive(Debug, Clone, PartialEq)]
pub struct PgVector(pub Vec<f32>);

impl<'a> tokio_postgres::types::FromSql<'a> for PgVector {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if raw.len() < 4 {
            return Err("truncated vector".into());
        }
        let dims = i16::from_be_bytes([raw[0], raw[1]]) as usize;
        if raw.len() != 4 + 4 * dims {
            return Err(format!("a vector of {dims} dimensions in {} bytes", raw.len()).into());
        }
        Ok(PgVector(
            raw[4..]
                .chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "vector"
    }
}

impl tokio_postgres::types::ToSql for PgVector {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i16(i16::try_from(self.0.len())?);
        out.put_i16(0);
        for v in &self.0 {
            out.put_f32(*v);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "vector"
    }

    tokio_postgres::types::to_sql_checked!();
}

/// One COPY script through psql (the simple protocol, as libpq clients send it):
/// whether it was acknowledged. A server killed mid-COPY closes the pipe: not
/// acknowledged.
/// Whether `psql` runs here.
pub fn psql_available() -> bool {
    Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub async fn psql_copy(addr: SocketAddr, script: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let child = Command::new("psql")
            .arg("-X")
            .args(["-v", "ON_ERROR_STOP=1", "-q"])
            .arg(format!("postgresql://tidal@{addr}/tidal?sslmode=disable"))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return false };
        if let Some(mut stdin) = child.stdin.take() {
            // A server killed mid-COPY closes the pipe's reader: not acknowledged.
            let _ = stdin.write_all(script.as_bytes());
        }
        child.wait().is_ok_and(|s| s.success())
    })
    .await
    .unwrap_or(false)
}
