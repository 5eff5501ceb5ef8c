//! psql (libpq) against the server. Skipped, with a message, where psql is missing
//! (failed instead under `TIDAL_REQUIRE_CLIENTS=1`).

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use crate::common::{connect, start, start_with};

use crate::common::psql_available;

macro_rules! require_psql {
    () => {
        if !crate::drivers::present(
            psql_available(),
            "psql",
            "apt-get install postgresql-client",
        ) {
            return;
        }
    };
}

/// Runs psql with `args` after the connection URL; `stdin` is fed to it.
async fn psql(url: String, password: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_string();
    let password = password.map(String::from);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("psql");
        cmd.arg("-X")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg(url)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGTZ", "UTC")
            .env("PAGER", "")
            .env("PSQL_PAGER", "");
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn url(addr: SocketAddr) -> String {
    format!("postgresql://tidal@{}:{}/tidal", addr.ip(), addr.port())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_create_insert_select() {
    require_psql!();
    let server = start().await;
    let out = psql(
        url(server.addr),
        None,
        &[
            "-c",
            "CREATE SIGNAL like ON items DECAY NONE WINDOWS ('24h', 'all')",
            "-c",
            "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT, tags TEXT[]) WITH (kind = 'item')",
            "-c",
            "INSERT INTO items (id, title, tags) VALUES (1, 'piano', '{a,\"b c\"}'), (2, 'organ', NULL), (3, 'it''s', '{}')",
            "-c",
            "INSERT INTO signals (signal, entity_id, user_id, weight) VALUES ('like', 1, 7, 2.5), ('like', 2, NULL, 1)",
            "-c",
            "SELECT id, title, tags, signal_total('like', id) AS likes FROM items ORDER BY id",
        ],
        "",
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}\n{stdout}",
        text(&out.stderr)
    );
    let expected = "\
CREATE SIGNAL
CREATE TABLE
INSERT 0 3
INSERT 0 2
 id | title |   tags    | likes 
----+-------+-----------+-------
  1 | piano | {a,\"b c\"} |   2.5
  2 | organ |           |     1
  3 | it's  | {}        |     0
(3 rows)

";
    assert_eq!(stdout, expected, "stderr: {}", text(&out.stderr));

    // FETCH_COUNT: psql reads the result through a cursor, two rows per FETCH.
    let out = psql(
        url(server.addr),
        None,
        &[
            "-A",
            "-t",
            "-v",
            "FETCH_COUNT=2",
            "-c",
            "SELECT id, title FROM items ORDER BY id",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1|piano\n2|organ\n3|it's\n");

    // Unaligned, tuples only, several statements in one -c (one simple query).
    let out = psql(
        url(server.addr),
        None,
        &[
            "-A",
            "-t",
            "-F",
            ",",
            "-c",
            "SELECT count(*) FROM items; SELECT id, window_count('like', id, '24h') FROM items WHERE id <= 2 ORDER BY id",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // psql prints only the last result of a multi-statement -c before version 15's
    // SHOW_ALL_RESULTS; 15 prints all of them.
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with("1,2.5\n2,1\n"), "{stdout:?}");

    // A script on stdin, statement by statement; psql's own quoting of a semicolon.
    let out = psql(
        url(server.addr),
        None,
        &["-A", "-t", "-q", "-f", "-"],
        "INSERT INTO items (id, title) VALUES (4, 'semi;colon');\n\
         UPDATE items SET title = upper(title) WHERE id = 4;\n\
         SELECT title FROM items WHERE id = 4;\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "SEMI;COLON\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_errors_stop_the_script() {
    require_psql!();
    let server = start().await;
    connect(server.addr)
        .await
        .batch_execute(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT) WITH (kind = 'item')",
        )
        .await
        .unwrap();
    let out = psql(
        url(server.addr),
        None,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "INSERT INTO items (id) VALUES (1)",
            "-c",
            "SELECT nope FROM items",
            "-c",
            "INSERT INTO items (id) VALUES (2)",
        ],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "psql should stop at the error");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ERROR:  42703"), "{stderr}");
    let ids = crate::common::item_ids(&connect(server.addr).await).await;
    assert_eq!(ids, vec![1], "psql must not run statements after the error");
    server.stop().await;
}

/// psql's ON_ERROR_ROLLBACK wraps each statement of a block in a savepoint and rolls
/// back to it when the statement fails, deciding by the transaction status the server
/// reports: the failed statement is undone, the rest of the block commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_on_error_rollback_uses_savepoints() {
    require_psql!();
    let server = start().await;
    connect(server.addr)
        .await
        .batch_execute("CREATE TABLE items (id BIGINT PRIMARY KEY) WITH (kind = 'item')")
        .await
        .unwrap();
    let script = "\\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO items (id) VALUES (50);
SELECT 1 / 0;
INSERT INTO items (id) VALUES (51);
COMMIT;
";
    let out = psql(url(server.addr), None, &["-v", "ON_ERROR_STOP=0"], script).await;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("division by zero") || stderr.contains("Divide by zero"),
        "{stderr}"
    );
    let ids = crate::common::item_ids(&connect(server.addr).await).await;
    assert_eq!(
        ids,
        vec![50, 51],
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_password() {
    require_psql!();
    let server = start_with(|c| c.password = Some("pw-123".into())).await;
    let out = psql(
        url(server.addr),
        Some("pw-123"),
        &["-A", "-t", "-c", "SELECT 40 + 2"],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42\n");
    let out = psql(url(server.addr), Some("nope"), &["-c", "SELECT 1"], "").await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a wrong password is a connection failure"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .to_ascii_lowercase()
            .contains("password authentication failed"),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_and_copy() {
    require_psql!();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=localhost")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: openssl not available to make a test certificate");
        return;
    }
    let server = start_with(|c| c.tls = Some((cert.clone(), key.clone()))).await;
    let tls_url = format!("{}?sslmode=require", url(server.addr));
    let out = psql(
        tls_url.clone(),
        None,
        &["-A", "-t", "-c", "SELECT 'encrypted'"],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "encrypted\n");

    // \copy in and out (the client reads and writes the files), over TLS.
    let csv = certs.path().join("items.csv");
    std::fs::write(&csv, "id,title\n1,\"a, quoted\"\n2,\n").unwrap();
    let out_csv = certs.path().join("out.csv");
    let script = format!(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT) WITH (kind = 'item');\n\
         \\copy items FROM '{}' WITH (FORMAT csv, HEADER true)\n\
         \\copy (SELECT id, title FROM items ORDER BY id) TO '{}' WITH (FORMAT csv)\n",
        csv.display(),
        out_csv.display()
    );
    let out = psql(tls_url, None, &["-q"], &script).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&out_csv).unwrap(),
        "1,\"a, quoted\"\n2,\n"
    );
    // A bad row names its line and applies nothing.
    std::fs::write(&csv, "id,title\n3,ok\nx,bad\n").unwrap();
    let script = format!(
        "\\copy items FROM '{}' WITH (FORMAT csv, HEADER true)\n",
        csv.display()
    );
    let out = psql(
        url(server.addr),
        None,
        &["-v", "VERBOSITY=verbose"],
        &script,
    )
    .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("22P02") && stderr.contains("COPY line 3"),
        "{stderr}"
    );
    let c = connect(server.addr).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_warnings_as_notices() {
    require_psql!();
    let server = start().await;
    let out = psql(url(server.addr), None, &["-c", "COMMIT"], "").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("WARNING:  there is no transaction in progress"),
        "{stderr}"
    );
    let out = psql(url(server.addr), None, &[], "BEGIN;\nBEGIN;\nROLLBACK;\n").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("WARNING:  there is already a transaction in progress"),
        "{stderr}"
    );
    // IF [NOT] EXISTS says what it skipped, as PostgreSQL does.
    let script = "CREATE TABLE items (id BIGINT PRIMARY KEY) WITH (kind = 'item');
CREATE TABLE IF NOT EXISTS items (id BIGINT PRIMARY KEY) WITH (kind = 'item');
DROP SIGNAL IF EXISTS nope;
";
    let out = psql(url(server.addr), None, &[], script).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("NOTICE:  relation \"items\" already exists, skipping"),
        "{stderr}"
    );
    assert!(
        stderr.contains("NOTICE:  signal \"nope\" does not exist, skipping"),
        "{stderr}"
    );
    server.stop().await;
}
