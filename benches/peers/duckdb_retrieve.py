#!/usr/bin/env python3
"""DuckDB peer of `RETRIEVE items USING PROFILE trending LIMIT 50` (retrieve_bench.sh).

The same items and events as tidalDB and PostgreSQL (the CSV that `loadgen --workload
rank-setup --export-dir <dir>` writes), the same SQL as the PostgreSQL peer
(`retrieve_postgres.sql`) adapted to DuckDB, aggregating the raw events at query time:

    score = velocity('view', '1h') + 2 * velocity('like', '24h') - decay('skip')
    velocity(s, W) = sum of weight over (at - W, at] / hours(W)
    decay(s)       = sum of weight * 2^(-(at - ts) / half_life) over ts <= at

and diversity (at most 2 items per creator_id) as row_number() per creator.

    python3 benches/peers/duckdb_retrieve.py <dir> [--runs N] [--threads T] [--out CSV]
        [--compare NAME=CSV ...]

The data is loaded once into in-memory tables (not part of any figure). The query runs
--warmup times, then --runs measured times (and so does a variant restricted to items
with events in the window); p50/p99 are nearest-rank percentiles of the
wall time of execute + fetchall, as in loadgen. --compare checks DuckDB's top 50 against
other systems' results (CSV with `id` and `score` columns, in rank order).
"""

import argparse
import csv
import json
import math
import os
import time

import duckdb

SQL = """
WITH win AS (
    SELECT entity_id,
           sum(weight) FILTER (WHERE signal = 'view'
                                 AND ts > TIMESTAMP '@AT@' - INTERVAL '1 hour') AS view_1h,
           sum(weight) FILTER (WHERE signal = 'like') AS like_24h
    FROM events
    WHERE signal IN ('view', 'like')
      AND ts > TIMESTAMP '@AT@' - INTERVAL '24 hours'
      AND ts <= TIMESTAMP '@AT@'
    GROUP BY entity_id
), skip AS (
    SELECT entity_id,
           sum(weight * exp((epoch_us(ts) - @AT_US@) * @SKIP_LAMBDA_US@)) AS skip_decay
    FROM events
    WHERE signal = 'skip' AND ts <= TIMESTAMP '@AT@'
    GROUP BY entity_id
), scored AS (
    SELECT i.id, i.creator_id, i.created_at, i.category,
           coalesce(win.view_1h, 0) / 1.0 + 2 * coalesce(win.like_24h, 0) / 24.0
               - coalesce(skip.skip_decay, 0) AS score
    FROM items i
    LEFT JOIN win ON win.entity_id = i.id
    LEFT JOIN skip ON skip.entity_id = i.id
), diverse AS (
    SELECT *, row_number() OVER (PARTITION BY creator_id ORDER BY score DESC, id) AS nth
    FROM scored
)
SELECT id, score, creator_id, created_at, category
FROM diverse
WHERE nth <= 2
ORDER BY score DESC, id
LIMIT 50
"""


def percentile(sorted_vals, p):
    # Nearest rank, rounding half away from zero like Rust's f64::round (loadgen).
    idx = int(math.floor(p / 100.0 * (len(sorted_vals) - 1) + 0.5))
    return sorted_vals[min(idx, len(sorted_vals) - 1)]


def read_result(path):
    with open(path, newline="") as f:
        return [(int(r["id"]), float(r["score"])) for r in csv.DictReader(f)]


def compare(name, got, want, want_name):
    got_ids = [r[0] for r in got]
    want_ids = [r[0] for r in want]
    same_rank = sum(1 for a, b in zip(got_ids, want_ids) if a == b)
    overlap = len(set(got_ids) & set(want_ids))
    want_s = dict(want)
    rel = max(
        (abs(s - want_s[i]) / max(abs(want_s[i]), 1e-300) for i, s in got if i in want_s),
        default=float("nan"),
    )
    first = next((k for k, (a, b) in enumerate(zip(got_ids, want_ids)) if a != b), None)
    where = "" if first is None else f"; first difference at rank {first + 1}"
    return (
        f"{name} vs {want_name}: {len(got)}/{len(want)} rows, {same_rank} same id at the same "
        f"rank, {overlap} ids in common, max relative score difference {rel:.1e}{where}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="directory written by loadgen rank-setup --export-dir")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", help="write DuckDB's result here (CSV)")
    ap.add_argument("--compare", nargs="*", default=[], metavar="NAME=CSV")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "meta.json")) as f:
        meta = json.load(f)
    sql = (
        SQL.replace("@AT@", meta["at"])
        .replace("@AT_US@", str(meta["at_us"]))
        .replace("@SKIP_LAMBDA_US@", repr(math.log(2.0) / meta["skip_half_life_us"]))
        .strip()
    )

    con = duckdb.connect()  # in memory
    con.execute(f"SET threads = {args.threads}")
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    t = time.perf_counter()
    items = os.path.join(args.dir, "items.csv")
    events = os.path.join(args.dir, "events.csv")
    con.execute(
        "CREATE TABLE items AS SELECT * FROM read_csv(?, header = true, columns = {"
        "'id': 'BIGINT', 'creator_id': 'BIGINT', 'created_at': 'TIMESTAMP', 'category': 'VARCHAR'})",
        [items],
    )
    # `signal` as an ENUM (a closed set, like tidal's signal ids; faster than VARCHAR).
    con.execute("CREATE TYPE signal_name AS ENUM ('view', 'like', 'skip')")
    con.execute(
        "CREATE TABLE events AS SELECT signal::signal_name AS signal, entity_id, user_id, "
        "weight, ts FROM read_csv(?, header = true, columns = {'signal': 'VARCHAR', "
        "'entity_id': 'BIGINT', 'user_id': 'BIGINT', 'weight': 'DOUBLE', 'ts': 'TIMESTAMP'})",
        [events],
    )
    load_s = time.perf_counter() - t
    n_items = con.execute("SELECT count(*) FROM items").fetchone()[0]
    n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    print(
        f"duckdb {duckdb.__version__}, threads={threads}, {n_items} items, {n_events} events "
        f"loaded from CSV in {load_s:.1f} s (not part of any figure); at = {meta['at']} UTC"
    )

    # The same SQL as PostgreSQL's, and the variant whose candidates are only the items
    # with view/like events in the 24 h window (the same top 50 whenever at least 50
    # items with a positive score survive the diversity rule; checked below).
    variants = {
        "duckdb": sql,
        "duckdb_candidates": sql.replace("LEFT JOIN win ON", "JOIN win ON"),
    }
    results = {}
    for label, q in variants.items():
        res = None
        for _ in range(args.warmup):
            res = con.execute(q).fetchall()
        ms = []
        for _ in range(args.runs):
            t = time.perf_counter()
            res = con.execute(q).fetchall()
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        mean = sum(ms) / len(ms)
        load1 = open("/proc/loadavg").read().split()[0]
        print(
            f"{label}: {args.runs} runs after {args.warmup} warm-up runs; latency p50 "
            f"{p50:.2f} ms, p99 {p99:.2f} ms, mean {mean:.2f} ms, min {ms[0]:.2f} ms, "
            f"max {ms[-1]:.2f} ms; {len(res)} rows; load average {load1}"
        )
        print(
            f"RESULT dialect=duckdb workload=query label={label} clients=1 protocol=in-process "
            f"runs={args.runs} p50_ms={p50:.3f} p99_ms={p99:.3f} mean_ms={mean:.3f} "
            f"min_ms={ms[0]:.3f} max_ms={ms[-1]:.3f} rows={len(res)} load1={load1}"
        )
        results[label] = [(int(r[0]), float(r[1])) for r in res]
    res = con.execute(sql).fetchall()
    got = results["duckdb"]
    print(compare("duckdb_candidates", results["duckdb_candidates"], got, "duckdb"))
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "score", "creator_id", "created_at", "category"])
            for r in res:
                w.writerow([r[0], repr(r[1]), r[2], r[3], r[4]])

    # How much the diversity rule changes the top 50 (it should bind), and how many
    # items it leaves to choose from (the peers' row_number() form equals tidal's greedy
    # rule only when at least LIMIT items survive it).
    no_div = con.execute(
        sql.replace("WHERE nth <= 2", "WHERE true")
    ).fetchall()
    dropped = len({r[0] for r in no_div} - {r[0] for r in res})
    survivors = con.execute(
        sql.split("SELECT id, score, creator_id, created_at, category\nFROM diverse")[0]
        + "SELECT count(*) FILTER (WHERE nth <= 2), count(*) FILTER (WHERE score > 0 AND nth <= 2) FROM diverse"
    ).fetchone()
    print(
        f"diversity: {dropped} of the 50 best-scored items are replaced by max_per_creator 2; "
        f"{survivors[0]} items survive it ({survivors[1]} of them with score > 0), so the fill "
        f"rule does not apply"
    )
    for spec in args.compare:
        name, path = spec.split("=", 1)
        if os.path.exists(path):
            print(compare("duckdb", got, read_result(path), name))
        else:
            print(f"duckdb vs {name}: {path} missing")
    names = [s.split("=", 1) for s in args.compare]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            (a, pa), (b, pb) = names[i], names[j]
            if os.path.exists(pa) and os.path.exists(pb):
                print(compare(a, read_result(pa), read_result(pb), b))
    print()
    print("DuckDB SQL:")
    print(sql)


if __name__ == "__main__":
    main()
