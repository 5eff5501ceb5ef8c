//! `pg_catalog` and `information_schema`: psql's describe commands and the metadata
//! queries drivers send, over the wire. The psql test is skipped, with a message,
//! where psql is missing; the others replay psql's queries through tokio-postgres.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio_postgres::SimpleQueryMessage;

use crate::common::start;

/// psql 15's query for `\d items`' columns (with `-E`), as sent.
const DESCRIBE_COLUMNS: &str = "SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = 'items'::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;";

/// psql's `\dt`.
const LIST_TABLES: &str = "SELECT n.nspname as \"Schema\",
  c.relname as \"Name\",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as \"Type\",
  pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;";

/// psql's lookup of `\d items`.
const FIND_RELATION: &str = "SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;";

/// psql's policy footer of `\d items`: planned although its table is always empty.
const POLICIES: &str = "SELECT pol.polname, pol.polpermissive,
  CASE WHEN pol.polroles = '{0}' THEN NULL ELSE pg_catalog.array_to_string(array(select rolname from pg_catalog.pg_roles where oid = any (pol.polroles) order by 1),',') END,
  pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
  pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),
  CASE pol.polcmd
    WHEN 'r' THEN 'SELECT'
    WHEN 'a' THEN 'INSERT'
    WHEN 'w' THEN 'UPDATE'
    WHEN 'd' THEN 'DELETE'
    END AS cmd
FROM pg_catalog.pg_policy pol
WHERE pol.polrelid = '16384' ORDER BY 1;";

/// Rows of a simple query as text (NULL → "NULL"), and its column count.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}\nfailed: {e:?}"));
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    out
}

fn strs(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_catalog_queries_plan_and_answer() {
    let server = start().await;
    let client = server.connect_with_schema().await;

    assert_eq!(
        rows(&client, LIST_TABLES).await,
        strs(&[
            &["public", "items", "table", "tidal"],
            &["public", "signals", "table", "tidal"],
        ])
    );
    assert_eq!(
        rows(&client, FIND_RELATION).await,
        strs(&[&["16384", "public", "items"]])
    );
    let columns: Vec<Vec<String>> = rows(&client, DESCRIBE_COLUMNS)
        .await
        .into_iter()
        .map(|r| vec![r[0].clone(), r[1].clone(), r[3].clone(), r[2].clone()])
        .collect();
    assert_eq!(
        columns,
        strs(&[
            &["id", "bigint", "t", "NULL"],
            &["title", "text", "f", "NULL"],
            &["score", "double precision", "f", "NULL"],
            &["created_at", "timestamp without time zone", "f", "NULL"],
            &["tags", "text[]", "f", "NULL"],
            &["flag", "boolean", "f", "NULL"],
            &["rating", "real", "f", "NULL"],
            &["rank", "integer", "f", "NULL"],
            &["embedding", "vector(3)", "f", "NULL"],
        ])
    );
    assert!(rows(&client, POLICIES).await.is_empty());

    // The primary key, as psql's index footer reads it.
    let indexes = rows(
        &client,
        "SELECT c2.relname, i.indisprimary, pg_catalog.pg_get_indexdef(i.indexrelid, 0, true),
           pg_catalog.pg_get_constraintdef(con.oid, true), contype
         FROM pg_catalog.pg_class c, pg_catalog.pg_class c2, pg_catalog.pg_index i
           LEFT JOIN pg_catalog.pg_constraint con ON (conrelid = i.indrelid AND conindid = i.indexrelid AND contype IN ('p','u','x'))
         WHERE c.oid = '16384' AND c.oid = i.indrelid AND i.indexrelid = c2.oid
         ORDER BY i.indisprimary DESC, c2.relname;",
    )
    .await;
    assert_eq!(
        indexes,
        strs(&[&[
            "items_pkey",
            "t",
            "CREATE UNIQUE INDEX items_pkey ON public.items USING btree (id)",
            "PRIMARY KEY (id)",
            "p",
        ]])
    );

    // DDL shows up in the next query.
    client
        .batch_execute(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NULL) WITH (kind = 'user')",
        )
        .await
        .unwrap();
    let names: Vec<String> = rows(&client, LIST_TABLES)
        .await
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(names, ["items", "signals", "users"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_metadata_queries() {
    let server = start().await;
    let client = server.connect_with_schema().await;

    assert_eq!(
        rows(&client, "SHOW TRANSACTION ISOLATION LEVEL").await,
        strs(&[&["read committed"]])
    );
    assert_eq!(
        rows(
            &client,
            "SELECT current_setting('server_version_num'), pg_catalog.current_setting('TimeZone')"
        )
        .await,
        strs(&[&["150000", "UTC"]])
    );
    assert_eq!(
        rows(
            &client,
            "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'standard_conforming_strings'"
        )
        .await,
        strs(&[&["on"]])
    );
    assert_eq!(
        rows(&client, "SELECT current_user, session_user").await,
        strs(&[&["tidal", "tidal"]])
    );
    assert_eq!(
        rows(
            &client,
            "SELECT datname, pg_catalog.pg_encoding_to_char(encoding) FROM pg_database"
        )
        .await,
        strs(&[&["tidal", "UTF8"]])
    );
    // pgjdbc's type lookup.
    assert_eq!(
        rows(
            &client,
            "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid \
             FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns \
             join ( select s.r, (current_schemas(false))[s.r] as nspname from generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r \
             using ( nspname ) ) as sp ON sp.nspoid = typnamespace WHERE pg_type.oid = 1009 ORDER BY sp.r, pg_type.oid DESC LIMIT 1"
        )
        .await,
        strs(&[&["t", "b", "_text", "1009"]])
    );
    // GUI tools: `c.oid, c.*` and a regclass literal.
    let tables = rows(
        &client,
        "SELECT c.oid,c.*,d.description FROM pg_catalog.pg_class c \
         LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass \
         WHERE c.relnamespace=2200 AND c.relkind not in ('i','I','c') ORDER BY c.oid",
    )
    .await;
    let names: Vec<&str> = tables.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        names,
        [
            "items",
            "signals",
            "signal_state",
            "signal_windows",
            "affinities",
            "cohort_windows",
            "cohorts",
            "tidal_stats"
        ]
    );
    assert_eq!(
        rows(
            &client,
            "SELECT 'items'::regclass::oid AS o, 16384::regclass AS n, 'int8'::regtype AS t"
        )
        .await,
        strs(&[&["16384", "items", "20"]])
    );

    // Extended protocol: the rewrite applies to Parse as well.
    let typed = client
        .query(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1::pg_catalog.regclass AND a.attnum > 0 ORDER BY a.attnum",
            &[&"items"],
        )
        .await
        .unwrap();
    assert_eq!(typed.len(), 9);
    assert_eq!(typed[8].get::<_, &str>(1), "vector(3)");

    // `::regtype[]` maps OIDs to type names element-wise (pgcli's function list).
    assert_eq!(
        rows(
            &client,
            "SELECT array_to_string(make_array(20, 25, 1009)::regtype[]::text[], ',')"
        )
        .await,
        strs(&[&["bigint,text,text[]"]])
    );

    // information_schema lists the tables of `public`.
    assert_eq!(
        rows(
            &client,
            "SELECT table_name, table_type FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY table_name"
        )
        .await,
        strs(&[
            &["affinities", "VIEW"],
            &["cohort_windows", "VIEW"],
            &["cohorts", "VIEW"],
            &["items", "BASE TABLE"],
            &["signal_state", "VIEW"],
            &["signal_windows", "VIEW"],
            &["signals", "BASE TABLE"],
            &["tidal_stats", "VIEW"],
        ])
    );
    let columns = rows(
        &client,
        "SELECT column_name, is_nullable FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'items' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(columns.len(), 9);
    assert_eq!(columns[0], ["id", "NO"]);
    server.stop().await;
}

use crate::common::psql_available;

/// Runs `psql -X` with one `-c` per command; returns (success, stdout, stderr).
async fn psql(addr: SocketAddr, commands: &[&str]) -> (bool, String, String) {
    let url = format!("postgresql://tidal@{}:{}/tidal", addr.ip(), addr.port());
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("psql");
        cmd.arg("-X").arg("-v").arg("ON_ERROR_STOP=1").arg(url);
        for c in &commands {
            cmd.arg("-c").arg(c);
        }
        let out = cmd
            .stdin(Stdio::null())
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PAGER", "")
            .env("PSQL_PAGER", "")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_commands() {
    if !psql_available() {
        eprintln!("skipped: psql not installed (apt-get install postgresql-client)");
        return;
    }
    let server = start().await;
    let _client = server.connect_with_schema().await;
    let (ok, out, err) = psql(server.addr, &["\\dt", "\\d items"]).await;
    assert!(ok, "psql failed: {err}\n{out}");
    let expected = "        List of relations
 Schema |  Name   | Type  | Owner 
--------+---------+-------+-------
 public | items   | table | tidal
 public | signals | table | tidal
(2 rows)

                           Table \"public.items\"
   Column   |            Type             | Collation | Nullable | Default 
------------+-----------------------------+-----------+----------+---------
 id         | bigint                      |           | not null | 
 title      | text                        |           |          | 
 score      | double precision            |           |          | 
 created_at | timestamp without time zone |           |          | 
 tags       | text[]                      |           |          | 
 flag       | boolean                     |           |          | 
 rating     | real                        |           |          | 
 rank       | integer                     |           |          | 
 embedding  | vector(3)                   |           |          | 
Indexes:
    \"items_pkey\" PRIMARY KEY, btree (id)

";
    assert_eq!(out, expected, "stderr: {err}");

    // The rest must run without errors and show what they list.
    for (command, needles) in [
        ("\\d+ items", &["Access method: heap", "| extended |"][..]),
        ("\\dt+", &["items", "permanent", "heap"][..]),
        ("\\d", &["signal_state", "view"][..]),
        (
            "\\d signal_windows",
            &["View \"public.signal_windows\""][..],
        ),
        ("\\di", &["items_pkey"][..]),
        ("\\l", &["tidal", "UTF8"][..]),
        ("\\dn", &["public"][..]),
        (
            "\\df",
            &["signal_total", "signal text, entity bigint", "window_count"][..],
        ),
        ("\\du", &["tidal", "Superuser"][..]),
        ("\\dT", &["vector"][..]),
        ("\\d pg_catalog.pg_class", &["relname", "name"][..]),
    ] {
        let (ok, out, err) = psql(server.addr, &[command]).await;
        assert!(ok, "{command}: {err}\n{out}");
        for n in needles {
            assert!(out.contains(n), "{command}: no {n:?} in\n{out}");
        }
    }
    let (ok, out, err) = psql(server.addr, &["\\d nope"]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("Did not find any relation named \"nope\""),
        "{err}"
    );
    server.stop().await;
}
