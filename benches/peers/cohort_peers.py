#!/usr/bin/env python3
"""Redis and DuckDB peers of "the 50 most viewed items of the last 24 hours among users
of region R" (cohort_bench.sh), on the CSV `loadgen --workload rank-setup --cohorts
--export-dir <dir>` writes (items.csv, events.csv, users.csv, meta.json).

tidalDB answers it with `RETRIEVE items USING PROFILE views24 WITHIN COHORT region = R`
(views24: SCORE window_count('view', '24h'); cohort state kept as events arrive).

* Redis, the way a Redis user keeps per-segment trending: one sorted set per (hour,
  cohort value), one ZINCRBY per event per cohort key (region, age_group and the pair),
  and at query time ZUNIONSTORE over the 24 hour keys of the region, then ZREVRANGE.
  Ingest is timed (pipelined, 10,000 commands per round trip) and the memory the keys
  take is read from INFO.
* DuckDB: the raw events joined to the users table at query time (in memory).

    python3 benches/peers/cohort_peers.py <dir> --region r00 [--runs N]
        [--redis-port P] [--out-redis CSV] [--out-duckdb CSV] [--compare NAME=CSV ...]

p50/p99 are nearest-rank percentiles of the wall time per query (client included), as
in loadgen.
"""

import argparse
import csv
import json
import math
import os
import time

import duckdb
import redis

# Nearest-rank percentiles and the result comparison of the RETRIEVE peer.
from duckdb_retrieve import compare, percentile, read_result

HOUR_US = 3_600_000_000


def timed(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    lat = []
    out = None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        lat.append((time.perf_counter() - t) * 1e3)
    lat.sort()
    return out, percentile(lat, 50), percentile(lat, 99)


def ts_us(text):
    # 'YYYY-MM-DD HH:MM:SS[.ffffff]' (UTC) -> µs since the epoch, without datetime's cost.
    import calendar

    date, clock = text.split(" ")
    y, mo, d = (int(x) for x in date.split("-"))
    hms, _, frac = clock.partition(".")
    h, mi, s = (int(x) for x in hms.split(":"))
    us = int((frac + "000000")[:6]) if frac else 0
    return (calendar.timegm((y, mo, d, h, mi, s)) * 1_000_000) + us


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "score"])
        w.writerows(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--region", default="r00")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out-redis")
    ap.add_argument("--out-duckdb")
    ap.add_argument("--compare", nargs="*", default=[], metavar="NAME=CSV")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "meta.json")) as f:
        meta = json.load(f)
    at_us = meta["at_us"]
    hour_at = at_us // HOUR_US
    results = {}

    # --- Redis ---------------------------------------------------------------------
    users = {}
    with open(os.path.join(args.dir, "users.csv"), newline="") as f:
        next(f)
        for line in f:
            u, r, a = line.rstrip("\n").split(",")
            users[int(u)] = (r, a)
    r = redis.Redis(port=args.redis_port)
    r.flushall()
    mem0 = r.info("memory")["used_memory"]
    pipe = r.pipeline(transaction=False)
    pending = 0
    views = 0
    t = time.perf_counter()
    with open(os.path.join(args.dir, "events.csv"), newline="") as f:
        next(f)
        for line in f:
            signal, item, user, _w, ts = line.rstrip("\n").split(",")
            if signal != "view":
                continue
            ra = users.get(int(user))
            if ra is None:
                continue
            h = ts_us(ts) // HOUR_US
            views += 1
            pipe.zincrby(f"v:{h}:region:{ra[0]}", 1, item)
            pipe.zincrby(f"v:{h}:age:{ra[1]}", 1, item)
            pipe.zincrby(f"v:{h}:ra:{ra[0]}:{ra[1]}", 1, item)
            pending += 3
            if pending >= 10_000:
                pipe.execute()
                pending = 0
    pipe.execute()
    load_s = time.perf_counter() - t
    mem1 = r.info("memory")["used_memory"]
    keys = r.dbsize()
    members = 0
    for k in r.scan_iter(count=1000):
        members += r.zcard(k)
    print(
        f"redis {r.info('server')['redis_version']}: {views} view events -> {3 * views} ZINCRBY "
        f"in {load_s:.1f} s ({3 * views / load_s:.0f} cmd/s, {views / load_s:.0f} events/s, "
        f"client-bound: one Python client); {keys} keys, {members} (key, item) members, "
        f"{(mem1 - mem0) / 2**20:.1f} MiB used_memory, {(mem1 - mem0) / max(members, 1):.1f} B per member"
    )
    hour_keys = [f"v:{h}:region:{args.region}" for h in range(hour_at - 23, hour_at + 1)]

    def redis_query():
        p = r.pipeline(transaction=True)
        p.zunionstore("tmp:q", hour_keys)
        p.zrevrange("tmp:q", 0, 49, withscores=True)
        p.delete("tmp:q")
        return p.execute()[1]

    out, p50, p99 = timed(redis_query, args.runs)
    # ZREVRANGE ties order by member descending (as strings); the contract is id ascending.
    got = sorted(((int(m), s) for m, s in out), key=lambda x: (-x[1], x[0]))
    results["redis"] = got
    print(f"RESULT system=redis workload=cohort_top50 region={args.region} runs={args.runs} p50_ms={p50:.3f} p99_ms={p99:.3f} load_s={load_s:.1f} events={views} mem_bytes={mem1 - mem0} members={members}")
    if args.out_redis:
        write_csv(args.out_redis, got)
    r.flushall()

    # --- DuckDB --------------------------------------------------------------------
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    t = time.perf_counter()
    con.execute("CREATE TYPE signal_name AS ENUM ('view', 'like', 'skip')")
    con.execute(
        "CREATE TABLE events AS SELECT signal::signal_name AS signal, entity_id, user_id, "
        "weight, ts FROM read_csv(?, header = true, columns = {'signal': 'VARCHAR', "
        "'entity_id': 'BIGINT', 'user_id': 'BIGINT', 'weight': 'DOUBLE', 'ts': 'TIMESTAMP'})",
        [os.path.join(args.dir, "events.csv")],
    )
    con.execute(
        "CREATE TABLE users AS SELECT * FROM read_csv(?, header = true, columns = {"
        "'id': 'BIGINT', 'region': 'VARCHAR', 'age_group': 'VARCHAR'})",
        [os.path.join(args.dir, "users.csv")],
    )
    print(f"duckdb {duckdb.__version__}: loaded in {time.perf_counter() - t:.1f} s (not part of any figure)")
    # tidal's 24 h window is read from hour buckets ending at AT (the last µs of an
    # hour): (AT - 24 h, AT] exactly.
    sql = f"""
        SELECT e.entity_id AS id, sum(e.weight) AS score
        FROM events e JOIN users u ON u.id = e.user_id
        WHERE e.signal = 'view' AND u.region = '{args.region}'
          AND e.ts > TIMESTAMP '{meta['at']}' - INTERVAL '24 hours' AND e.ts <= TIMESTAMP '{meta['at']}'
        GROUP BY e.entity_id ORDER BY score DESC, id LIMIT 50
    """
    out, p50, p99 = timed(lambda: con.execute(sql).fetchall(), args.runs)
    results["duckdb"] = [(int(i), float(s)) for i, s in out]
    print(f"RESULT system=duckdb workload=cohort_top50 region={args.region} runs={args.runs} p50_ms={p50:.3f} p99_ms={p99:.3f} threads={args.threads}")
    if args.out_duckdb:
        write_csv(args.out_duckdb, results["duckdb"])

    print(compare("redis", results["redis"], results["duckdb"], "duckdb"))
    for spec in args.compare:
        name, path = spec.split("=", 1)
        other = read_result(path)
        print(compare(name, other, results["duckdb"], "duckdb"))


if __name__ == "__main__":
    main()
