//! tidalDB's PostgreSQL wire front end (`tidal serve`), built on `pgwire`.
//!
//! Every connection is a tokio task. Queries stream from DataFusion to the socket
//! batch by batch (bounded memory), under the statement timeout and cancel requests;
//! writes wait for the WAL's group commit without holding a thread, so concurrent
//! clients share one fsync. Prepared `INSERT INTO signals … VALUES` and prepared
//! point reads by id skip SQL at Execute (`fastpath`).
//! Errors become ErrorResponses with a SQLSTATE in exactly one place
//! ([`ServerError::sqlstate`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), tidal_server::ServerError> {
//! use tidal_server::{Server, ServerConfig};
//! let server = Server::bind(ServerConfig::new("./tidal-data")).await?;
//! println!("listening on {}", server.local_addr()?);
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod catalog;
mod config;
mod copy;
mod cursor;
mod encode;
mod error;
mod fastpath;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod metrics;
mod params;
mod sqltext;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidal::Database;
use tidal::datafusion::arrow::datatypes::DataType;
use tidal::datafusion::common::ScalarValue;
use tidal::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use tidal_sql::SqlSession;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

pub use config::{
    CONNECTIONS_MAX_DEFAULT, DATA_DIR_DEFAULT, LISTEN_DEFAULT, QUERY_BYTES_MAX,
    QUERY_MEMORY_BYTES_DEFAULT, SCRAM_ITERATIONS, SHUTDOWN_DRAIN_MS, ServerConfig, parse_bytes,
    parse_duration,
};
pub use error::ServerError;
pub use handler::USER;

use handler::{Conn, Handlers, ScramSecret, Shared};

/// A bound server: the database is open and the port is listening.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    db: Arc<Database>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    connections: Arc<Semaphore>,
    metrics: Option<TcpListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens (recovering if needed) the database and binds the listen address.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let started = Instant::now();
        tracing::info!(dir = %config.data_dir.display(), "opening database (replaying the WAL if needed)");
        let dir = config.data_dir.clone();
        let db = tokio::task::spawn_blocking(move || Database::open(dir))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "database open"
        );
        let db = Arc::new(db);
        let session = SqlSession::with_memory_limit(db.engine_arc(), config.memory_limit_bytes)?;
        register_functions(&session);
        session.add_metrics_source(Arc::new(|| metrics::METRICS.collect()))?;
        let listener = TcpListener::bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let scram = config.password.as_ref().map(|p| {
            let salt: [u8; 16] = rand::random();
            Arc::new(ScramSecret {
                salted: pgwire::api::auth::sasl::scram::gen_salted_password(
                    p,
                    &salt,
                    SCRAM_ITERATIONS,
                ),
                salt: salt.to_vec(),
            })
        });
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let shared = Arc::new(Shared {
            session,
            config,
            cancels: Default::default(),
            running: AtomicUsize::new(0),
            running_done: Notify::new(),
            shutting_down: AtomicBool::new(false),
            next_pid: AtomicI32::new(1 + (rand::random::<u16>() as i32)),
            scram,
        });
        Ok(Server {
            listener,
            shared,
            db,
            tls,
            connections,
            metrics,
        })
    }

    /// The bound `/metrics` address, when metrics are served.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        Ok(match &self.metrics {
            Some(l) => Some(l.local_addr()?),
            None => None,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets running statements
    /// finish (up to [`SHUTDOWN_DRAIN_MS`]), closes connections, checkpoints and closes
    /// the database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let mut tasks = JoinSet::new();
        let metrics_task = self.metrics.map(|listener| {
            let session = self.shared.session.clone();
            tokio::spawn(metrics::serve(
                listener,
                Arc::new(move || session.metrics()),
            ))
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    let permit = self.connections.clone().try_acquire_owned().ok();
                    metrics::METRICS.accepted();
                    if permit.is_none() {
                        metrics::METRICS.refused();
                    }
                    let conn = Conn::new(self.shared.clone(), permit);
                    let tls = self.tls.clone();
                    tasks.spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, Arc::new(Handlers(conn))).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: no new connections; waiting for running statements");
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let drain = async {
            loop {
                let notified = self.shared.running_done.notified();
                if self.shared.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), drain)
            .await
            .is_err()
        {
            tracing::warn!("statements still running after the drain period; closing anyway");
        }
        tasks.shutdown().await;
        if let Some(t) = metrics_task {
            t.abort();
        }
        drop(self.listener);
        let db = self.db;
        tokio::task::spawn_blocking(move || db.shutdown())
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        tracing::info!("checkpointed and closed");
        Ok(())
    }
}

/// `version()`, `current_database()`, `current_schema()` as clients expect them.
fn register_functions(session: &SqlSession) {
    let constant = |name: &str, value: String| {
        create_udf(
            name,
            vec![],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(move |_args: &[ColumnarValue]| {
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                    value.clone(),
                ))))
            }),
        )
    };
    let ctx = session.context();
    ctx.register_udf(constant(
        "version",
        format!(
            "PostgreSQL 15.0 (tidalDB {}) on Apache DataFusion",
            env!("CARGO_PKG_VERSION")
        ),
    ));
    ctx.register_udf(constant("current_database", "tidal".into()));
    ctx.register_udf(constant("current_schema", "public".into()));
    catalog::register(session);
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<pgwire::tokio::TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ServerError::Config(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cannot read TLS certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("bad TLS certificate", cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("cannot read TLS key", key, &e))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Config(format!("TLS certificate/key rejected: {e}")))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}
