"""pgvector-python against `tidal serve`, unchanged: `register_vector` finds the
`vector` type for psycopg 3 (text and binary formats) and asyncpg (binary), vectors go
in as parameters and come back as pgvector's `Vector`/numpy values, distances and
errors match pgvector's.

Run by the wire test `drivers::pgvector` with TIDAL_URL set; exits non-zero on the
first mismatch.
"""

import asyncio
import math
import os

import asyncpg
import numpy as np
import psycopg
from pgvector.asyncpg import register_vector as register_asyncpg
from pgvector.psycopg import register_vector

URL = os.environ["TIDAL_URL"]


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def close(got, want, what, tol=1e-6):
    if not math.isclose(got, want, rel_tol=tol, abs_tol=tol):
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def as_list(v):
    return [float(x) for x in (v.to_numpy() if hasattr(v, "to_numpy") else v)]


def psycopg_checks():
    conn = psycopg.connect(URL, autocommit=True)
    conn.execute("DROP TABLE IF EXISTS items")
    conn.execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, embedding VECTOR(3)) "
        "WITH (kind = 'item')"
    )
    register_vector(conn)
    rows = [(1, [1, 2, 3]), (2, [1, 1, 1]), (3, [3, 2, 1]), (4, [-1, 0, 0.5])]
    for i, v in rows:
        conn.execute(
            "INSERT INTO items (id, embedding) VALUES (%s, %s)", (i, np.array(v))
        )
    q = np.array([1.0, 1.0, 1.0])
    got = conn.execute(
        "SELECT id, embedding, embedding <-> %s AS d FROM items "
        "ORDER BY embedding <-> %s, id LIMIT 3",
        (q, q),
    ).fetchall()
    eq([r[0] for r in got], [2, 1, 3], "text-format L2 order")
    eq(as_list(got[1][1]), [1.0, 2.0, 3.0], "text-format vector result")
    close(got[1][2], math.sqrt(5), "L2 distance")

    with conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT id, embedding, embedding <=> %s AS d FROM items "
            "ORDER BY embedding <=> %s, id LIMIT 2",
            (q, q),
        )
        got = cur.fetchall()
        eq(got[0][0], 2, "binary-format cosine order")
        eq(as_list(got[0][1]), [1.0, 1.0, 1.0], "binary-format vector result")
        close(got[0][2], 0.0, "cosine distance to itself")
        cur.execute(
            "INSERT INTO items (id, embedding) VALUES (%s, %s)",
            (5, np.array([0.25, -2.5, 1e-3], dtype=np.float32)),
        )
        cur.execute("SELECT embedding FROM items WHERE id = 5")
        eq(
            as_list(cur.fetchone()[0]),
            [0.25, -2.5, float(np.float32(1e-3))],
            "binary vector parameter round trip",
        )
        cur.execute("SELECT embedding <#> %s FROM items WHERE id = 1", (q,))
        close(cur.fetchone()[0], -6.0, "negative inner product")

    # An unsized vector literal comes back as a vector too.
    v = conn.execute("SELECT '[1,2.5]'::vector").fetchone()[0]
    eq(as_list(v), [1.0, 2.5], "unsized vector result")
    eq(
        conn.execute("SELECT vector_dims(%s)", (np.array([1, 2, 3, 4]),)).fetchone()[0],
        4,
        "vector_dims of a parameter",
    )

    # pgvector's errors and SQLSTATEs; nothing applied.
    for sql, params, state in [
        ("INSERT INTO items (id, embedding) VALUES (%s, %s)", (9, np.array([1, 2])), "22000"),
        ("INSERT INTO items (id, embedding) VALUES (%s, %s)", (9, "[1,2"), "22P02"),
        ("INSERT INTO items (id, embedding) VALUES (%s, %s)", (9, "[1,NaN,3]"), "22000"),
    ]:
        try:
            conn.execute(sql, params)
        except psycopg.Error as e:
            eq(e.sqlstate, state, f"SQLSTATE of {params[1]!r}")
        else:
            raise AssertionError(f"{params[1]!r} was accepted")
    eq(conn.execute("SELECT count(*) FROM items WHERE id = 9").fetchone()[0], 0, "no row applied")
    conn.close()


async def asyncpg_checks():
    conn = await asyncpg.connect(URL)
    await register_asyncpg(conn)
    q = np.array([1.0, 2.0, 3.0])
    got = await conn.fetch(
        "SELECT id, embedding FROM items ORDER BY embedding <=> $1, id LIMIT 2", q
    )
    eq([r["id"] for r in got], [1, 2], "asyncpg cosine order")
    eq(as_list(got[0]["embedding"]), [1.0, 2.0, 3.0], "asyncpg vector result")
    await conn.execute(
        "INSERT INTO items (id, embedding) VALUES ($1, $2)", 6, np.array([0.5, 0.5, 0.5])
    )
    row = await conn.fetchrow("SELECT embedding, l2_distance(embedding, $1) AS d FROM items WHERE id = 6", q)
    eq(as_list(row["embedding"]), [0.5, 0.5, 0.5], "asyncpg vector parameter round trip")
    close(row["d"], math.sqrt(0.25 + 2.25 + 6.25), "asyncpg l2_distance")
    try:
        await conn.execute("INSERT INTO items (id, embedding) VALUES ($1, $2)", 7, np.array([1.0]))
    except asyncpg.PostgresError as e:
        eq(e.sqlstate, "22000", "asyncpg dimension error")
    else:
        raise AssertionError("a 1-d vector went into VECTOR(3)")

    # Preference vectors: one like moves the user's vector before the INSERT returns;
    # preference() comes back as a vector, SUGGEST takes its clauses as parameters.
    await conn.execute("DROP SIGNAL IF EXISTS like")
    await conn.execute(
        "CREATE SIGNAL like ON items DECAY NONE WINDOWS ('all') MARKS liked PREFERENCE 0.1"
    )
    eq(await conn.fetchval("SELECT preference(42)"), None, "no vector before any move")
    await conn.execute(
        "INSERT INTO signals (signal, entity_id, user_id) VALUES ('like', $1, $2)", 3, 42
    )
    p = as_list(await conn.fetchval("SELECT preference($1)", 42))
    n = math.sqrt(14)
    for got, want in zip(p, [3 / n, 2 / n, 1 / n]):
        close(got, want, "preference after one like")
    got = await conn.fetch(
        "SUGGEST items FOR USER $1 WHERE id <> 6 FILTER not liked LIMIT $2", 42, 2
    )
    eq([r["id"] for r in got], [2, 1], "SUGGEST order (nearest unliked to [3,2,1])")
    eq(list(got[0].keys())[:4], ["rank", "id", "score", "similarity"], "SUGGEST columns")
    close(got[0]["similarity"], 6 / math.sqrt(42), "similarity of [1,1,1]", tol=1e-5)
    close(got[1]["similarity"], 10 / 14, "similarity of [1,2,3]", tol=1e-5)
    eq(as_list(got[1]["embedding"]), [1.0, 2.0, 3.0], "SUGGEST vector column")
    await conn.close()


psycopg_checks()
asyncio.run(asyncpg_checks())
print("pgvector checks passed")
