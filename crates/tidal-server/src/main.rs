//! `tidal`: the tidalDB server binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tidal_server::{
    CONNECTIONS_MAX_DEFAULT, DATA_DIR_DEFAULT, LISTEN_DEFAULT, Server, ServerConfig, USER,
    parse_bytes, parse_duration,
};

#[derive(Parser)]
#[command(
    name = "tidal",
    version,
    about = "tidalDB: a database for personalized content ranking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the PostgreSQL wire protocol (psql, psycopg, JDBC, node-postgres, ...).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, default_value = DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// File holding the password for user `tidal` (SCRAM-SHA-256). Without a password
    /// (here or in TIDAL_PASSWORD), only loopback clients are accepted.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Maximum concurrent client connections (one more gets SQLSTATE 53300).
    #[arg(long, default_value_t = CONNECTIONS_MAX_DEFAULT)]
    max_connections: usize,
    /// Default statement timeout for queries, e.g. 30s or 500ms (0 = none).
    #[arg(long, default_value = "0")]
    statement_timeout: String,
    /// Memory all running queries may use together, e.g. 2GiB (over it: SQLSTATE 53200).
    #[arg(long, default_value = "2GiB")]
    memory_limit: String,
    /// Serve Prometheus metrics over HTTP at this address, e.g. 127.0.0.1:9187
    /// (GET /metrics). Off by default.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let password = match (&args.password_file, std::env::var("TIDAL_PASSWORD")) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --password-file {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        (None, Ok(p)) if !p.is_empty() => Some(p),
        _ => None,
    };
    if password.as_deref() == Some("") {
        anyhow::bail!("the password file is empty");
    }
    let mut config = ServerConfig::new(&args.data_dir);
    config.listen = args.listen;
    config.tls = args.tls_cert.zip(args.tls_key);
    config.max_connections = args.max_connections.max(1);
    config.statement_timeout = parse_duration(&args.statement_timeout)?;
    config.memory_limit_bytes = parse_bytes(&args.memory_limit)?;
    config.metrics_listen = args.metrics_listen;
    let has_password = password.is_some();
    config.password = password;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tidal-worker")
        .build()?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, "listening");
        let host = addr.ip();
        let port = addr.port();
        println!("tidalDB listening on {addr}");
        if let Some(m) = server.metrics_addr()? {
            tracing::info!(addr = %m, "serving metrics");
            println!("metrics: http://{m}/metrics");
        }
        if has_password {
            println!(
                "connect: psql \"postgresql://{USER}@{host}:{port}/tidal\"   (password required)"
            );
        } else {
            println!("connect: psql \"postgresql://{USER}@{host}:{port}/tidal\"");
        }
        server.run(shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
