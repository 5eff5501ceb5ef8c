#!/usr/bin/env python3
"""DuckDB peer for `benches/query.rs`: the same ranking queries over the same data.

tidalDB keeps decayed scores and window buckets up to date at ingest and reads them per
item; DuckDB has no such state, so here every query aggregates the raw events table
(entity_id, signal, weight, ts) at query time. The decay formula, half-lives, windows
and the instant "now" are tidalDB's:

    decay(s, e, now)        = sum of weight * 2^(-(now - ts) / half_life) over ts <= now
    window_count(s, e, 24h) = sum of weight over now - 24h < ts <= now

Usage (after `TIDAL_QUERY_EXPORT=<dir> cargo bench -p tidal-benches --bench query`):

    python3 -m venv ~/.cache/tidal-bench-venv
    ~/.cache/tidal-bench-venv/bin/pip install duckdb
    ~/.cache/tidal-bench-venv/bin/python benches/peers/duckdb_query.py <dir> [--runs N] [--threads T]

The data is loaded once into in-memory DuckDB tables (load time is printed and not
part of any query figure). Each query runs 3 warm-up times, then N measured times; p50
and p99 are nearest-rank percentiles, as in the Rust harness. Results are checked
against tidalDB's own top 50 (`reference.csv`, read at the same instant).
"""

import argparse
import csv
import json
import math
import os
import time

import duckdb

WARMUP = 3


def percentile(sorted_vals, p):
    # Nearest rank, rounding half away from zero like Rust's f64::round.
    idx = int(math.floor(p / 100.0 * (len(sorted_vals) - 1) + 0.5))
    return sorted_vals[min(idx, len(sorted_vals) - 1)]


def queries(meta):
    now = meta["now_us"]
    # tidalDB's factor is exp(-dt * lambda) with lambda = ln 2 / half_life.
    lam_like = repr(math.log(2.0) / meta["like_half_life_us"])
    lam_view = repr(math.log(2.0) / meta["view_half_life_us"])
    day = 86_400_000_000
    ts_now = f"make_timestamp({now})"
    age = f"({now} - epoch_us(ts))"
    like_decay = f"weight * exp(-{age} * {lam_like})"
    view_decay = f"weight * exp(-{age} * {lam_view})"
    like_agg = (
        f"SELECT entity_id, sum({like_decay}) AS s FROM events "
        f"WHERE signal = 'like' AND ts <= {ts_now} GROUP BY entity_id"
    )
    # One sum per item: the three terms are linear in the events, so this equals
    # decay(like) + 0.1 * decay(view) - 0.01 * window_count(view, 24h) and needs one
    # exp() per event (faster than three FILTERed sums).
    q2_agg = (
        "SELECT entity_id, sum(CASE signal WHEN 'like' "
        f"THEN {like_decay} "
        f"WHEN 'view' THEN 0.1 * {view_decay} - CASE WHEN ts > make_timestamp({now - day}) "
        "THEN 0.01 * weight ELSE 0 END ELSE 0 END) AS s "
        f"FROM events WHERE ts <= {ts_now} GROUP BY entity_id"
    )
    return {
        # Same semantics as tidalDB's Q1: every item, 0 for items without events.
        "q1": f"WITH d AS ({like_agg}) SELECT i.id, coalesce(d.s, 0) AS s "
        "FROM items i LEFT JOIN d ON d.entity_id = i.id ORDER BY s DESC, i.id LIMIT 50",
        # Cheaper, equal here: only items with events can rank (scores are positive).
        "q1_events_only": f"{like_agg} ORDER BY s DESC, entity_id LIMIT 50",
        "q2": f"WITH a AS ({q2_agg}) SELECT i.id, coalesce(a.s, 0) AS s "
        "FROM items i LEFT JOIN a ON a.entity_id = i.id ORDER BY s DESC, i.id LIMIT 50",
        "q2_events_only": f"{q2_agg} ORDER BY s DESC, entity_id LIMIT 50",
        "sum": f"WITH d AS ({like_agg}) SELECT sum(coalesce(d.s, 0)) "
        "FROM items i LEFT JOIN d ON d.entity_id = i.id",
        "sum_events_only": f"SELECT sum({like_decay}) FROM events "
        f"WHERE signal = 'like' AND ts <= {ts_now}",
    }


def timed(con, sql, runs):
    res = None
    for _ in range(WARMUP):
        res = con.execute(sql).fetchall()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        res = con.execute(sql).fetchall()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return ms, res


def load_reference(path):
    ref = {"q1": [], "q2": [], "sum": []}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ref[row["query"]].append((int(row["id"]), float(row["score"])))
    return ref


def compare(name, got, want):
    """Top-50 agreement with tidalDB's result read at the same instant."""
    got_ids = [r[0] for r in got]
    want_ids = [r[0] for r in want]
    same = sum(1 for a, b in zip(got_ids, want_ids) if a == b)
    overlap = len(set(got_ids) & set(want_ids))
    want_s = dict(want)
    rel = max(
        (abs(s - want_s[i]) / max(abs(want_s[i]), 1e-300) for i, s in got if i in want_s),
        default=float("nan"),
    )
    return f"{name}: {same}/50 same rank, {overlap}/50 same ids, max rel diff {rel:.1e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="directory written by TIDAL_QUERY_EXPORT")
    ap.add_argument("--runs", type=int, default=None, help="default: meta.json runs")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    with open(os.path.join(args.dir, "meta.json")) as f:
        meta = json.load(f)
    runs = args.runs or meta["runs"]

    con = duckdb.connect()  # in memory
    con.execute(f"SET threads = {args.threads}")
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    t = time.perf_counter()
    items = os.path.join(args.dir, "items.parquet")
    events = os.path.join(args.dir, "events.parquet")
    con.execute(f"CREATE TABLE items AS SELECT * FROM read_parquet('{items}')")
    # `signal` as an ENUM (a closed set, like tidalDB's signal ids): about 2x faster
    # filters and CASEs than VARCHAR here.
    con.execute("CREATE TYPE signal_name AS ENUM ('like', 'view')")
    con.execute(
        "CREATE TABLE events AS SELECT entity_id, signal::signal_name AS signal, weight, ts "
        f"FROM read_parquet('{events}')"
    )
    load_s = time.perf_counter() - t
    n_items = con.execute("SELECT count(*) FROM items").fetchone()[0]
    n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    print(
        f"duckdb {duckdb.__version__}, threads={threads}, {n_items} items, {n_events} events "
        f"loaded from Parquet in {load_s:.1f} s (not part of any figure); "
        f"now = {meta['now']} UTC; {runs} measured runs after {WARMUP} warm-up runs"
    )

    qs = queries(meta)
    ref = load_reference(os.path.join(args.dir, "reference.csv"))
    labels = {
        "q1": "Q1 like decay top 50 (items LEFT JOIN agg)",
        "q1_events_only": "Q1 like decay top 50 (events only)",
        "q2": "Q2 3-signal top 50 (items LEFT JOIN agg)",
        "q2_events_only": "Q2 3-signal top 50 (events only)",
        "sum": "sum of like decay over all items (join)",
        "sum_events_only": "sum of like decay (events only)",
    }
    print()
    print(f"| {'query':<44} | runs | {'p50 ms':>9} | {'p99 ms':>9} | {'min ms':>9} | {'max ms':>9} | notes")
    print(f"|{'-' * 46}|------|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|------")
    checks = []
    for key, sql in qs.items():
        ms, res = timed(con, sql, runs)
        p50 = percentile(ms, 50)
        note = ""
        if key.startswith("sum"):
            got, want = res[0][0], ref["sum"][0][1]
            note = f"{p50 * 1e6 / n_items:.1f} ns per item row; rel diff vs tidalDB {abs(got - want) / want:.1e}"
        else:
            checks.append(compare(key, res, ref[key.split("_")[0]]))
        print(
            f"| {labels[key]:<44} | {runs:>4} | {p50:>9.2f} | {percentile(ms, 99):>9.2f} | "
            f"{ms[0]:>9.2f} | {ms[-1]:>9.2f} | {note}"
        )
    print()
    print("Agreement with tidalDB's top 50 at the same instant (window counts in tidalDB are")
    print("bucketed, so Q2 can differ in the last digits):")
    for c in checks:
        print("  " + c)
    print()
    for key in ("q1", "q2"):
        print(f"{key} SQL:\n  {qs[key]}\n")


if __name__ == "__main__":
    main()
