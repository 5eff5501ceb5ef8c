//! `/metrics` over HTTP and the `tidal_stats` table over the wire.
//!
//! Server figures are per process and other tests run servers in this process too, so
//! the assertions compare a figure before and after, and only for growth.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{SCHEMA, start_with};

/// Sends `request` as is and returns the status line and the body.
async fn http(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the metrics endpoint did not close the connection")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, head.to_string(), body.to_string())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body
}

/// The value of the sample `series` (name with labels, as exposed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_endpoint_counts_statements_errors_and_commits() {
    let server = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = server.metrics.expect("metrics address");
    let client = server.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();

    let before = scrape(addr).await;
    let selects = sample(&before, r#"tidal_statements_seconds_count{kind="select"}"#).unwrap();
    let inserts = sample(&before, r#"tidal_statements_seconds_count{kind="insert"}"#).unwrap();
    let undefined = sample(&before, r#"tidal_errors_total{sqlstate="42P01"}"#).unwrap_or(0.0);
    let commits = sample(&before, "tidal_wal_commits_total").unwrap();
    let active = sample(&before, "tidal_connections_active").unwrap();
    assert!(active >= 1.0, "this test's connection is open");

    client
        .batch_execute(
            "INSERT INTO items (id, title) VALUES (1, 'a'), (2, 'b');
             INSERT INTO signals (signal, entity_id, weight) VALUES ('like', 1, 1.0);",
        )
        .await
        .unwrap();
    for _ in 0..3 {
        client.query("SELECT id FROM items", &[]).await.unwrap();
    }
    let err = client
        .query("SELECT * FROM nowhere", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");

    let after = scrape(addr).await;
    let grew = |series: &str, from: f64, by: f64| {
        let now = sample(&after, series).unwrap_or_else(|| panic!("no {series} in\n{after}"));
        assert!(now >= from + by, "{series}: {from} → {now}, expected +{by}");
    };
    // The failing SELECT fails at Parse, before it is a statement that runs.
    grew(
        r#"tidal_statements_seconds_count{kind="select"}"#,
        selects,
        3.0,
    );
    grew(
        r#"tidal_statements_seconds_count{kind="insert"}"#,
        inserts,
        2.0,
    );
    grew(r#"tidal_errors_total{sqlstate="42P01"}"#, undefined, 1.0);
    // This server's engine: exactly its two writes since the first scrape.
    assert_eq!(
        sample(&after, "tidal_wal_commits_total"),
        Some(commits + 2.0)
    );
    // Every family is described once, histograms end with +Inf and their count.
    assert_eq!(
        after
            .matches("# TYPE tidal_statements_seconds histogram\n")
            .count(),
        1
    );
    let inf = sample(&after, r#"tidal_wal_fsync_seconds_bucket{le="+Inf"}"#).unwrap();
    assert_eq!(sample(&after, "tidal_wal_fsync_seconds_count"), Some(inf));
    assert!(
        inf >= 3.0,
        "at least the schema and the two inserts were synced"
    );
    assert!(sample(&after, r#"tidal_memory_bytes{part="ledger"}"#).unwrap() > 0.0);

    // The same figures as a table, for psql users.
    let rows = client
        .query(
            "SELECT labels, value, p50, p99 FROM tidal_stats \
             WHERE metric = 'tidal_statements_seconds' AND labels = 'kind=\"select\"'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let count: f64 = rows[0].get(1);
    let (p50, p99): (Option<f64>, Option<f64>) = (rows[0].get(2), rows[0].get(3));
    assert!(count >= selects + 3.0);
    assert!(p50.unwrap() > 0.0 && p50 <= p99, "{p50:?} {p99:?}");
    let errors: Vec<String> = client
        .query(
            "SELECT labels FROM tidal_stats WHERE metric = 'tidal_errors_total'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        errors.contains(&r#"sqlstate="42P01""#.to_string()),
        "{errors:?}"
    );
}

#[tokio::test]
async fn metrics_endpoint_answers_bad_requests_and_openmetrics() {
    let server = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = server.metrics.unwrap();
    let (status, _, _) = http(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    let (status, _, _) = http(addr, &huge).await;
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    let (status, head, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"));
    let (status, _, body) = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));

    // A client that connects and says nothing holds a slot only until the timeout;
    // meanwhile the others are answered.
    let _stalled: Vec<TcpStream> = futures::future::join_all(
        (0..2).map(|_| async { TcpStream::connect(addr).await.unwrap() }),
    )
    .await;
    scrape(addr).await;
    // And the database itself is untouched by all this.
    let client = server.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
}
