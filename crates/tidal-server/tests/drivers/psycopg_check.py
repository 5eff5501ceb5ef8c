"""psycopg 3 against `tidal serve`: typed parameters (as psycopg dumps them), text and
binary results decoded to native Python values, COPY in and out, transactions, errors
with their SQLSTATE classes, and a connection that stays usable after an error.

Run by the wire test `drivers::psycopg` with TIDAL_URL set; exits non-zero on the first
mismatch.
"""

import datetime as dt
import os
import sys

import psycopg
from psycopg import errors

URL = os.environ["TIDAL_URL"]
TS = dt.datetime(2025, 11, 24, 16, 0, 0, 123456)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def expect_error(conn, sql, params, sqlstate, cls=None):
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        eq(e.sqlstate, sqlstate, f"SQLSTATE of {sql!r}")
        if cls is not None and not isinstance(e, cls):
            raise AssertionError(f"{sql!r} raised {type(e).__name__}, want {cls.__name__}")
        return
    raise AssertionError(f"{sql!r} did not fail")


def main():
    with psycopg.connect(URL, autocommit=True) as conn:
        eq(conn.info.server_version, 150000, "server_version")
        eq(conn.info.encoding, "utf-8", "client encoding")
        eq(conn.execute("SELECT current_database()").fetchone()[0], "tidal", "current_database")
        conn.execute(
            "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '7 days' "
            "WINDOWS ('24h', 'all')"
        )
        conn.execute(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT, score DOUBLE, "
            "rating REAL, rank INT, flag BOOLEAN, created_at TIMESTAMP, tags TEXT[], "
            "embedding VECTOR(3)) WITH (kind = 'item')"
        )

        # Parameters as psycopg dumps them: small ints as int2, floats as float8,
        # str as unknown, datetime as timestamp, list[str] as text[].
        tags = ["plain", "b c", 'quo"te', "com,ma", "", "NULL", "back\\slash", "ünï"]
        cur = conn.execute(
            "INSERT INTO items (id, title, score, rating, rank, flag, created_at, tags, "
            "embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (1, "it's ü", 0.25, 2.5, -42, True, TS, tags, "[0.5, 1, -2.25]"),
        )
        eq(cur.rowcount, 1, "INSERT rowcount")
        conn.execute(
            "INSERT INTO items (id, title, score, rating, rank, flag, created_at, tags, "
            "embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (2, None, None, None, None, None, None, None, None),
        )
        # Parameters in binary (%b): int8, float8, bool, timestamp.
        conn.execute(
            "INSERT INTO items (id, title, score, flag, created_at) VALUES (%b, %b, %b, %b, %b)",
            (3_000_000_000, "big", -1.5e300, False, dt.datetime(1999, 12, 31, 23, 59, 59)),
        )
        with conn.cursor() as c:
            c.executemany(
                "INSERT INTO items (id, title) VALUES (%s, %s)",
                [(10 + i, f"many {i}") for i in range(5)],
            )

        query = (
            "SELECT id, title, score, rating, rank, flag, created_at, tags, embedding "
            "FROM items WHERE id IN (1, 2, 3000000000) ORDER BY id"
        )
        want = [
            (1, "it's ü", 0.25, 2.5, -42, True, TS, tags, "[0.5,1,-2.25]"),
            (2, None, None, None, None, None, None, None, None),
            (3_000_000_000, "big", -1.5e300, None, None, False,
             dt.datetime(1999, 12, 31, 23, 59, 59), None, None),
        ]
        # Without pgvector's adapter a vector comes back as psycopg gives any type it
        # does not know: its text form, or pgvector's binary form as bytes.
        import struct
        vector_binary = struct.pack(">hh3f", 3, 0, 0.5, 1.0, -2.25)
        for binary in (False, True):
            with conn.cursor(binary=binary) as c:
                rows = c.execute(query).fetchall()
                if binary:
                    rows = [r[:-1] + ((bytes(r[-1]) if r[-1] is not None else None),) for r in rows]
                    want_here = [w[:-1] + ((vector_binary if w[-1] else None),) for w in want]
                else:
                    want_here = want
                eq(rows, want_here, f"rows (binary={binary})")
                eq(
                    [d.name for d in c.description],
                    ["id", "title", "score", "rating", "rank", "flag", "created_at", "tags",
                     "embedding"],
                    "column names",
                )
                eq(
                    [d.type_code for d in c.description],
                    [20, 25, 701, 700, 23, 16, 1114, 1009, 16000],
                    "column type OIDs",
                )

        # Parameters in WHERE, each type.
        def ids(sql, params):
            return [r[0] for r in conn.execute(sql, params).fetchall()]

        eq(ids("SELECT id FROM items WHERE flag = %s ORDER BY id", (False,)), [3_000_000_000],
           "bool parameter")
        eq(ids("SELECT id FROM items WHERE rank = %s", (-42,)), [1], "int parameter")
        eq(ids("SELECT id FROM items WHERE created_at = %s", (TS,)), [1], "timestamp parameter")
        eq(ids("SELECT id FROM items WHERE title = %s", ("it's ü",)), [1], "text parameter")
        eq(ids("SELECT id FROM items WHERE id BETWEEN %s AND %s ORDER BY id", (10, 12)),
           [10, 11, 12], "range parameters")
        eq(ids("SELECT id FROM items WHERE id = %b", (3_000_000_000,)), [3_000_000_000],
           "binary int8 parameter")
        # Python lists go as text-format arrays (OID 1009 / 1016): pgcli's
        # `relkind = ANY(%s)` shape.
        eq(ids("SELECT id FROM items WHERE title = ANY(%s) ORDER BY id", (["it's ü", "zz"],)),
           [1], "text[] parameter with ANY")
        eq(ids("SELECT id FROM items WHERE id = ANY(%s) ORDER BY id", ([10, 12, 99999],)),
           [10, 12], "int8[] parameter with ANY")
        eq(conn.execute("SELECT %s::text[]", (['a,b', 'c"d', ''],)).fetchone()[0],
           ['a,b', 'c"d', ''], "text[] parameter round trip")

        # Values of types that only arise from expressions.
        row = conn.execute(
            "SELECT DATE '2024-02-29', CAST(7 AS SMALLINT), 1.5::numeric(10,2), "
            "CAST(ARRAY[1, 2, 3] AS INT[]), 'x'::bytea, TIMESTAMPTZ '2024-01-02 03:04:05+02'"
        ).fetchone()
        eq(row[0], dt.date(2024, 2, 29), "date")
        eq(row[1], 7, "int2")
        eq(str(row[2]), "1.50", "numeric")
        eq(row[3], [1, 2, 3], "int array")
        eq(bytes(row[4]), b"x", "bytea")
        # One time zone, UTC: a value with an offset becomes a TIMESTAMP in UTC
        # (docs/sql.md), so psycopg returns a naive datetime.
        eq(row[5], dt.datetime(2024, 1, 2, 1, 4, 5), "timestamptz literal")

        # Signals with timestamps, then an aggregate over them.
        for i in range(3):
            conn.execute(
                "INSERT INTO signals (signal, entity_id, user_id, weight, ts) "
                "VALUES (%s, %s, %s, %s, %s)",
                ("like", 1, 100 + i, 1.0, TS + dt.timedelta(seconds=i)),
            )
        eq(
            conn.execute("SELECT count(*) FROM signals WHERE signal = 'like'").fetchone()[0],
            3,
            "signal count",
        )

        # COPY in (rows written by psycopg, text format) and out.
        with conn.cursor() as c:
            with c.copy("COPY items (id, title, score, flag) FROM STDIN") as cp:
                for i in range(100, 200):
                    cp.write_row((i, f"copied\t{i}", i / 4, i % 2 == 0))
            eq(c.rowcount, 100, "COPY FROM rowcount")
            got = []
            with c.copy("COPY (SELECT id, title FROM items WHERE id BETWEEN 100 AND 102 "
                        "ORDER BY id) TO STDOUT") as cp:
                for r in cp.rows():
                    got.append(r)
            eq(got, [("100", "copied\t100"), ("101", "copied\t101"), ("102", "copied\t102")],
               "COPY TO rows")
        # A bad COPY applies nothing.
        try:
            with conn.cursor() as c:
                with c.copy("COPY items (id, title) FROM STDIN") as cp:
                    cp.write_row((300, "ok"))
                    cp.write_row(("not a number", "bad"))
            raise AssertionError("a bad COPY succeeded")
        except psycopg.Error as e:
            eq(e.sqlstate[:2], "22", "bad COPY SQLSTATE class")
        eq(ids("SELECT id FROM items WHERE id = 300", ()), [], "bad COPY applied nothing")

        # Errors keep the connection usable.
        expect_error(conn, "SELEC 1", (), "42601", errors.SyntaxError)
        expect_error(conn, "SELECT * FROM nope", (), "42P01", errors.UndefinedTable)
        expect_error(conn, "SELECT nope FROM items", (), "42703", errors.UndefinedColumn)
        expect_error(conn, "SELECT 1 / 0", (), "22012", errors.DivisionByZero)
        eq(conn.execute("SELECT 1").fetchone()[0], 1, "usable after errors")

    # Transactions (psycopg's default: every statement inside BEGIN until commit).
    with psycopg.connect(URL) as conn:
        conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (500, "rolled back"))
        conn.rollback()
        conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (501, "committed"))
        conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (502, "committed"))
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (503, "block"))
        eq(
            [r[0] for r in conn.execute(
                "SELECT id FROM items WHERE id BETWEEN 500 AND 503 ORDER BY id").fetchall()],
            [501, 502, 503],
            "transaction outcomes",
        )
        conn.commit()

    # Statements psycopg prepares (prepare_threshold 0: at once) and deallocates when
    # its cache of prepared_max statements overflows: DEALLOCATE "_pg3_n".
    with psycopg.connect(URL, autocommit=True, prepare_threshold=0) as conn:
        conn.prepared_max = 2
        for i in range(6):
            got = conn.execute(f"SELECT id FROM items WHERE id = %s AND {i} = {i}", (1,))
            eq(got.fetchall(), [(1,)], f"prepared statement {i}")
        eq(conn.execute("SELECT id FROM items WHERE id = %s AND 0 = 0", (1,)).fetchall(),
           [(1,)], "re-prepared after DEALLOCATE")

    # Nested transaction blocks are savepoints: the inner one fails and is rolled back
    # alone, the outer one commits.
    with psycopg.connect(URL) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (600, "outer"))
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (601, "inner"))
                    conn.execute("SELECT 1 / 0")
            except errors.DivisionByZero:
                pass
            conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (602, "outer"))
        eq(
            [r[0] for r in conn.execute(
                "SELECT id FROM items WHERE id BETWEEN 600 AND 602 ORDER BY id").fetchall()],
            [600, 602],
            "savepoint outcomes",
        )
        conn.commit()

    # The transaction status in ReadyForQuery follows the block: aborted after an
    # error, open again after ROLLBACK TO SAVEPOINT, idle after COMMIT.
    from psycopg.pq import TransactionStatus as TxStatus
    with psycopg.connect(URL) as conn:
        conn.execute("SAVEPOINT a")
        eq(conn.info.transaction_status, TxStatus.INTRANS, "status in a block")
        try:
            conn.execute("SELECT 1 / 0")
        except errors.DivisionByZero:
            pass
        eq(conn.info.transaction_status, TxStatus.INERROR, "status after an error")
        conn.execute("ROLLBACK TO SAVEPOINT a")
        eq(conn.info.transaction_status, TxStatus.INTRANS, "status after ROLLBACK TO")
        conn.execute("INSERT INTO items (id, title) VALUES (%s, %s)", (700, "after"))
        conn.commit()
        eq(conn.info.transaction_status, TxStatus.IDLE, "status after COMMIT")
        eq(conn.execute("SELECT count(*) FROM items WHERE id = 700").fetchone()[0], 1,
           "write after ROLLBACK TO committed")
        conn.rollback()

    # A server-side cursor (DECLARE … CURSOR, then FETCH FORWARD itersize), with a
    # parameter, read in pieces.
    with psycopg.connect(URL) as conn:
        with conn.cursor(name="pages") as c:
            c.itersize = 7
            c.execute("SELECT id FROM items WHERE id BETWEEN %s AND 199 ORDER BY id", (100,))
            eq([r[0] for r in c], list(range(100, 200)), "server-side cursor rows")
        conn.commit()

    print("psycopg: ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 — report any failure with its type
        print(f"psycopg check failed: {type(e).__name__}: {e}", file=sys.stderr)
        raise
