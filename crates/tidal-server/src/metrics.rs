//! The server's own figures (statements by kind with latency, errors by SQLSTATE,
//! connections) and the `/metrics` HTTP endpoint that exposes them with the engine's
//! and the SQL layer's, in Prometheus or OpenMetrics text (encoded by
//! `prometheus-client`).
//!
//! The figures are per process (one server per process in production): tests that run
//! several servers in one process see their sum, and compare differences.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tidal_core::metrics::{Histogram, LATENCY_BOUNDS_MICROS, Metric, MetricValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bytes of an HTTP request head the endpoint reads before answering 431.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// Time a scraper has to send its request and read the answer.
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Scrapes answered at once; more get 503 at once.
pub const METRICS_CONNECTIONS_MAX: usize = 4;

/// What a statement is, for `tidal_statements_seconds{kind=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementKind {
    Select,
    Explain,
    Show,
    Insert,
    Update,
    Delete,
    Retrieve,
    Search,
    Suggest,
    Copy,
    Ddl,
    Transaction,
    Session,
    Cursor,
    Other,
}

impl StatementKind {
    const ALL: [StatementKind; 15] = [
        StatementKind::Select,
        StatementKind::Explain,
        StatementKind::Show,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Retrieve,
        StatementKind::Search,
        StatementKind::Suggest,
        StatementKind::Copy,
        StatementKind::Ddl,
        StatementKind::Transaction,
        StatementKind::Session,
        StatementKind::Cursor,
        StatementKind::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Explain => "explain",
            StatementKind::Show => "show",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Retrieve => "retrieve",
            StatementKind::Search => "search",
            StatementKind::Suggest => "suggest",
            StatementKind::Copy => "copy",
            StatementKind::Ddl => "ddl",
            StatementKind::Transaction => "transaction",
            StatementKind::Session => "session",
            StatementKind::Cursor => "cursor",
            StatementKind::Other => "other",
        }
    }

    /// The kind of a statement, from its first keyword (after comments and
    /// parentheses).
    pub fn of(sql: &str) -> StatementKind {
        let mut rest = sql;
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
            if let Some(r) = rest.strip_prefix("--") {
                rest = r.split_once('\n').map_or("", |(_, r)| r);
            } else if let Some(r) = rest.strip_prefix("/*") {
                rest = r.split_once("*/").map_or("", |(_, r)| r);
            } else {
                break;
            }
        }
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .take(12)
            .collect::<String>()
            .to_ascii_lowercase();
        match word.as_str() {
            "select" | "with" | "values" | "table" => StatementKind::Select,
            "explain" => StatementKind::Explain,
            "show" => StatementKind::Show,
            "insert" => StatementKind::Insert,
            "update" => StatementKind::Update,
            "delete" => StatementKind::Delete,
            "retrieve" => StatementKind::Retrieve,
            "search" => StatementKind::Search,
            "suggest" => StatementKind::Suggest,
            "copy" => StatementKind::Copy,
            "create" | "drop" | "alter" => StatementKind::Ddl,
            "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint"
            | "release" => StatementKind::Transaction,
            "set" | "reset" | "discard" | "deallocate" | "prepare" | "listen" | "unlisten" => {
                StatementKind::Session
            }
            "declare" | "fetch" | "close" | "move" => StatementKind::Cursor,
            _ => StatementKind::Other,
        }
    }
}

/// The server's counters; one per process ([`METRICS`]).
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    /// Latency of each kind of statement, from receipt to its last row sent.
    statements: Vec<Histogram>,
    /// Errors sent, by SQLSTATE. The codes are the `&'static str`s of
    /// `ServerError::sqlstate`, so the map is bounded by the code.
    errors: parking_lot::Mutex<BTreeMap<&'static str, u64>>,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_active: AtomicI64,
    scrapes: AtomicU64,
}

pub(crate) static METRICS: LazyLock<ServerMetrics> = LazyLock::new(|| ServerMetrics {
    statements: StatementKind::ALL
        .iter()
        .map(|_| Histogram::new(LATENCY_BOUNDS_MICROS))
        .collect(),
    errors: Default::default(),
    connections_accepted: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
    connections_active: AtomicI64::new(0),
    scrapes: AtomicU64::new(0),
});

impl ServerMetrics {
    pub fn error(&self, sqlstate: &'static str) {
        *self.errors.lock().entry(sqlstate).or_insert(0) += 1;
    }

    pub fn accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection holding a slot opened (`+1`) or closed (`-1`).
    pub fn active(&self, delta: i64) {
        self.connections_active.fetch_add(delta, Ordering::Relaxed);
    }

    /// The figures, as [`Metric`]s.
    pub fn collect(&self) -> Vec<Metric> {
        let mut out = Vec::with_capacity(StatementKind::ALL.len() + 8);
        for (kind, h) in StatementKind::ALL.iter().zip(&self.statements) {
            out.push(
                Metric::histogram(
                    "tidal_statements_seconds",
                    "Statement latency by kind, from receipt to the last row sent (failed ones included).",
                    h.snapshot(1e6),
                )
                .label("kind", kind.label()),
            );
        }
        for (state, n) in self.errors.lock().iter() {
            out.push(
                Metric::counter("tidal_errors", "Errors sent to clients, by SQLSTATE.", *n)
                    .label("sqlstate", *state),
            );
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.extend([
            Metric::counter(
                "tidal_connections_accepted",
                "Client connections accepted (TCP).",
                get(&self.connections_accepted),
            ),
            Metric::counter(
                "tidal_connections_refused",
                "Client connections refused for the connection limit (53300).",
                get(&self.connections_refused),
            ),
            Metric::gauge(
                "tidal_connections_active",
                "Client connections open within the connection limit.",
                self.connections_active.load(Ordering::Relaxed) as f64,
            ),
            Metric::counter(
                "tidal_metrics_scrapes",
                "Requests answered by the /metrics endpoint.",
                get(&self.scrapes),
            ),
        ]);
        out
    }
}

/// Times one statement; records its latency when dropped (after its last row, when
/// it travels with the result stream).
#[derive(Debug)]
pub(crate) struct StatementTimer {
    kind: StatementKind,
    started: Instant,
}

impl StatementTimer {
    pub fn start(sql: &str) -> StatementTimer {
        StatementTimer {
            kind: StatementKind::of(sql),
            started: Instant::now(),
        }
    }
}

impl Drop for StatementTimer {
    fn drop(&mut self) {
        let i = StatementKind::ALL
            .iter()
            .position(|k| *k == self.kind)
            .unwrap_or(StatementKind::ALL.len() - 1);
        METRICS.statements[i].observe_duration(self.started.elapsed());
    }
}

/// Our metrics as a `prometheus-client` collector: families in order of first
/// appearance, each with its descriptor once.
#[derive(Debug)]
struct Snapshot(Vec<Metric>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut order: Vec<&'static str> = Vec::new();
        let mut families: HashMap<&'static str, Vec<&Metric>> = HashMap::new();
        for m in &self.0 {
            families
                .entry(m.name)
                .or_insert_with(|| {
                    order.push(m.name);
                    Vec::new()
                })
                .push(m);
        }
        for name in order {
            let members = &families[name];
            let first = members[0];
            let ty = match first.value {
                MetricValue::Counter(_) => MetricType::Counter,
                MetricValue::Gauge(_) => MetricType::Gauge,
                MetricValue::Histogram(_) => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(name, first.help, None, ty)?;
            for m in members {
                let labels: Vec<(&str, &str)> =
                    m.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut e = family.encode_family(&labels)?;
                match &m.value {
                    MetricValue::Counter(n) if ty == MetricType::Counter => {
                        e.encode_counter::<NoLabelSet, u64, u64>(n, None)?
                    }
                    MetricValue::Gauge(g) if ty == MetricType::Gauge => e.encode_gauge(g)?,
                    MetricValue::Histogram(h) if ty == MetricType::Histogram => {
                        let buckets: Vec<(f64, u64)> = h
                            .counts
                            .iter()
                            .enumerate()
                            .map(|(i, &n)| (h.bounds.get(i).copied().unwrap_or(f64::INFINITY), n))
                            .collect();
                        // The count from the buckets, so `_count` equals the `+Inf`
                        // bucket even while values are being recorded.
                        let count = h.counts.iter().sum();
                        e.encode_histogram::<NoLabelSet>(h.sum, count, &buckets, None)?
                    }
                    // A family whose members disagree on the type: a bug of the
                    // source; leave the member out rather than emit an invalid scrape.
                    _ => tracing::warn!(metric = name, "metric family of mixed types"),
                }
            }
        }
        Ok(())
    }
}

/// The text exposition of `metrics`: OpenMetrics when `openmetrics`, else Prometheus'
/// text format 0.0.4. Returns the body and its content type.
pub fn encode(
    metrics: Vec<Metric>,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(metrics)));
    let mut body = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, &registry)?;
        Ok((
            body,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)?;
        Ok((
            body,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ))
    }
}

/// What the endpoint serves.
pub type Source = Arc<dyn Fn() -> Vec<Metric> + Send + Sync>;

/// Answers `GET /metrics` on `listener` until the task is dropped. Each request gets
/// [`METRICS_REQUEST_TIMEOUT_MS`]; at most [`METRICS_CONNECTIONS_MAX`] at once.
pub async fn serve(listener: TcpListener, source: Source) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS),
                    respond(
                        &mut socket,
                        "503 Service Unavailable",
                        "text/plain",
                        "busy\n",
                    ),
                )
                .await;
            });
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS);
            if tokio::time::timeout(timeout, answer(&mut socket, &source))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "metrics request timed out");
            }
            drop(slot);
        });
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(socket: &mut TcpStream, source: &Source) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() >= METRICS_REQUEST_BYTES_MAX {
            break false;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    if !complete {
        let _ = respond(
            socket,
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n",
        )
        .await;
        return;
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let (method, target) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let r = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            METRICS.scrapes.fetch_add(1, Ordering::Relaxed);
            let source = source.clone();
            // The sources take locks (the ledger's for its size): off the runtime.
            let encoded = tokio::task::spawn_blocking(move || encode(source(), openmetrics)).await;
            match encoded {
                Ok(Ok((body, content_type))) => {
                    let body = if method == "HEAD" { "" } else { &body };
                    respond(socket, "200 OK", content_type, body).await
                }
                _ => {
                    respond(
                        socket,
                        "500 Internal Server Error",
                        "text/plain",
                        "encoding failed\n",
                    )
                    .await
                }
            }
        }
        ("GET" | "HEAD", "/") => {
            respond(
                socket,
                "200 OK",
                "text/plain",
                "tidalDB: metrics at /metrics\n",
            )
            .await
        }
        ("GET" | "HEAD", _) => respond(socket, "404 Not Found", "text/plain", "not found\n").await,
        _ => {
            respond(
                socket,
                "405 Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n",
            )
            .await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "metrics response not sent");
    }
}

async fn respond(
    socket: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_kinds_come_from_the_first_keyword() {
        for (sql, kind) in [
            ("select 1", StatementKind::Select),
            ("  -- c\n/* x */ (SELECT 1)", StatementKind::Select),
            (
                "WITH t AS (SELECT 1) SELECT * FROM t",
                StatementKind::Select,
            ),
            ("RETRIEVE items USING p", StatementKind::Retrieve),
            ("insert into signals values (1)", StatementKind::Insert),
            ("CREATE SIGNAL x", StatementKind::Ddl),
            ("commit", StatementKind::Transaction),
            ("SET x = 1", StatementKind::Session),
            ("FETCH 10 FROM c", StatementKind::Cursor),
            ("", StatementKind::Other),
            ("-- only a comment", StatementKind::Other),
            ("vacuum", StatementKind::Other),
        ] {
            assert_eq!(StatementKind::of(sql), kind, "{sql:?}");
        }
    }

    #[test]
    fn exposition_is_grouped_by_family_with_counters_suffixed() {
        let h = Histogram::new(&[10, 100]);
        h.observe(5);
        h.observe(50);
        h.observe(5_000);
        let metrics = vec![
            Metric::counter("t_errors", "Errors.", 2).label("sqlstate", "42P01"),
            Metric::gauge("t_level", "Level.", 1.5),
            Metric::counter("t_errors", "Errors.", 3).label("sqlstate", "22\"x"),
            Metric::histogram("t_seconds", "Latency.", h.snapshot(1e6)),
        ];
        let (text, ty) = encode(metrics.clone(), false).unwrap();
        assert!(ty.starts_with("text/plain; version=0.0.4"));
        assert_eq!(
            text.matches("# TYPE t_errors_total counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("t_errors_total{sqlstate=\"42P01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_errors_total{sqlstate=\"22\\\"x\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("t_level 1.5\n"), "{text}");
        assert!(
            text.contains("t_seconds_bucket{le=\"0.0001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_count 3\n"), "{text}");
        let (om, ty) = encode(metrics, true).unwrap();
        assert!(ty.starts_with("application/openmetrics-text"));
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
