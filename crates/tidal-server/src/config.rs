//! Server settings and limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ServerError;

/// Where `tidal serve` listens by default (loopback only).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:5433";
/// The data directory `tidal serve` uses by default.
pub const DATA_DIR_DEFAULT: &str = "./tidal-data";
/// Concurrent client connections by default; one more gets SQLSTATE 53300.
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;
/// Largest statement text accepted (pgwire itself caps a message at 1 GiB).
pub const QUERY_BYTES_MAX: usize = 64 << 20;
/// PBKDF2 rounds for SCRAM-SHA-256 (PostgreSQL's default).
pub const SCRAM_ITERATIONS: usize = 4096;
/// How long shutdown waits for running statements before closing connections.
pub const SHUTDOWN_DRAIN_MS: u64 = 30_000;
/// Memory all running queries may hold together by default.
pub const QUERY_MEMORY_BYTES_DEFAULT: usize = 2 << 30;

/// Everything `tidal serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `None`: no password; only loopback clients are accepted.
    pub password: Option<String>,
    /// PEM certificate chain and private key; both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    /// Default per-statement timeout for queries (`None` = no limit); clients may
    /// change it with `SET statement_timeout`.
    pub statement_timeout: Option<Duration>,
    pub memory_limit_bytes: usize,
    /// Where to serve Prometheus `/metrics` over HTTP (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// Defaults: `./tidal-data`, `127.0.0.1:5433`, no password, no TLS.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            password: None,
            tls: None,
            max_connections: CONNECTIONS_MAX_DEFAULT,
            statement_timeout: None,
            memory_limit_bytes: QUERY_MEMORY_BYTES_DEFAULT,
            metrics_listen: None,
        }
    }
}

/// A PostgreSQL-style duration: `500ms`, `5s`, `2min`, `1h`, or a bare number of
/// milliseconds; `0` means no limit.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, ServerError> {
    let t = text.trim().trim_matches('\'').trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        ServerError::Config(format!(
            "invalid duration {text:?} (use e.g. 500ms, 5s, 2min)"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => n,
        "s" | "sec" | "secs" | "second" | "seconds" => n * 1e3,
        "min" | "mins" | "minute" | "minutes" => n * 60e3,
        "h" | "hour" | "hours" => n * 3_600e3,
        _ => return Err(bad()),
    };
    if !ms.is_finite() || !(0.0..=365.0 * 86_400e3).contains(&ms) {
        return Err(bad());
    }
    Ok((ms > 0.0).then(|| Duration::from_micros((ms * 1e3) as u64)))
}

/// A byte size: `4GiB`, `512MiB`, `100MB`, `65536`.
pub fn parse_bytes(text: &str) -> Result<usize, ServerError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || ServerError::Config(format!("invalid size {text:?} (use e.g. 512MiB, 4GiB)"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if bytes < (1 << 20) {
        return Err(ServerError::Config(format!(
            "memory limit {text:?} is below 1 MiB"
        )));
    }
    usize::try_from(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("5s").unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("250").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("'2min'").unwrap(),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_duration("0").unwrap(), None);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(parse_bytes("12").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
