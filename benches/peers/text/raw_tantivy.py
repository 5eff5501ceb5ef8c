#!/usr/bin/env python3
"""Raw-tantivy peer for tidalDB's SEARCH: the same documents, indexed and queried by
tantivy itself through its Python binding (PyPI `tantivy`, which wraps the tantivy
crate; 0.27.0 wraps tantivy 0.27, the version tidal-index uses).

Schema (close to tidal-index's own, see crates/tidal-index/src/text.rs):

    id     i64, indexed + fast + stored
    title  text, tokenizer "default", positions (index_option "position"), not stored
    body   text, likewise

tidal-index additionally keeps a u64 length fast field per text field for its live BM25
statistics; that is not reproduced here.

Indexing: one writer with one indexing thread and a 32 MiB arena by default, as
tidal-index uses (`writer_with_num_threads(1, 32 MiB)`): `index.writer(heap_size=...,
num_threads=1)`. The CSV is read and the tantivy Documents are built before the clock
starts (their build time is printed separately); the timed part is add_document for every
document plus the final commit(). Background merges are then waited for
(wait_merging_threads, timed separately, not in docs/s) so searches run on a settled index.

Searching: a fixed list of 20 queries in tantivy's query language over title and body
(OR between terms, the parser's default; "..." phrases; +required terms). Each query is
warmed up WARMUP times, then run --runs times (default 50) as
`searcher.search(query, 10)` (top 10; count=True, the binding's default, so every match
is also counted; --no-count turns that off). The query is parsed with
`index.parse_query(q, ["title", "body"])` outside the timed loop; a second pass times
parse + search together. p50/p99 are nearest-rank percentiles over all runs of all queries
(20 x 50 = 1000 samples), in microseconds. Timings include the Python call overhead of
the binding (a few microseconds).

Usage:

    pip install tantivy            # or into a venv, e.g. ~/.cache/tidal-bench-venv
    python3 benches/peers/text/make_corpus.py --out /tmp/debian.csv
    python3 benches/peers/text/raw_tantivy.py --csv /tmp/debian.csv \\
        --queries-out /tmp/queries.txt [--results-out /tmp/top10.jsonl]

The last line printed is one JSON object with every figure, for other scripts.
The machine has 2 cores shared with other work: figures are noisy; compare runs made
back to back.
"""

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time

import tantivy

try:
    from importlib.metadata import version as _pkg_version
    TANTIVY_PYPI = _pkg_version("tantivy")
except Exception:  # not installed as a distribution
    TANTIVY_PYPI = None
TANTIVY_CRATE = getattr(tantivy, "__version__", None)  # e.g. 'tantivy v0.27.0, index_format v7'

WARMUP = 5

# Realistic searches over Debian package descriptions: single words, OR pairs and
# triples, quoted phrases and +required terms.
QUERIES = [
    "library",
    "python library",
    '"command line"',
    "audio +plugin",
    "documentation",
    "web server",
    '"shared library"',
    "perl module",
    "kernel",
    "+gtk theme",
    "image processing",
    '"development files"',
    "haskell",
    "database +client",
    "network monitoring tool",
    "rust crate",
    '"text editor"',
    "font",
    "game +multiplayer",
    "java xml parser",
]


def percentile(sorted_vals, p):
    # Nearest rank, rounding half away from zero (as benches/peers/duckdb_query.py).
    idx = int(math.floor(p / 100.0 * (len(sorted_vals) - 1) + 0.5))
    return sorted_vals[min(idx, len(sorted_vals) - 1)]


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", required=True, help="corpus CSV (id,creator_id,title,body,category)")
    ap.add_argument("--queries-out", help="write the query list here, one per line")
    ap.add_argument("--results-out", help="write each query's match count and top-10 ids (JSON lines)")
    ap.add_argument("--runs", type=int, default=50, help="measured runs per query")
    ap.add_argument("--heap-mb", type=int, default=32, help="writer arena in MiB (min ~15)")
    ap.add_argument("--no-count", action="store_true", help="search(..., count=False)")
    ap.add_argument("--index-dir", help="build the index here (must not exist) and keep it")
    args = ap.parse_args()

    if args.queries_out:
        with open(args.queries_out, "w", encoding="utf-8") as f:
            for q in QUERIES:
                f.write(q + "\n")

    # --- load -----------------------------------------------------------------------
    csv.field_size_limit(sys.maxsize)
    t = time.perf_counter()
    rows = []
    with open(args.csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append((int(r["id"]), r["title"], r["body"]))
    csv_s = time.perf_counter() - t
    text_bytes = sum(len(ti.encode()) + len(b.encode()) for _, ti, b in rows)

    sb = tantivy.SchemaBuilder()
    sb.add_integer_field("id", stored=True, indexed=True, fast=True)
    sb.add_text_field("title", stored=False, tokenizer_name="default", index_option="position")
    sb.add_text_field("body", stored=False, tokenizer_name="default", index_option="position")
    schema = sb.build()

    t = time.perf_counter()
    docs = [tantivy.Document(id=i, title=ti, body=b) for i, ti, b in rows]
    build_s = time.perf_counter() - t

    if args.index_dir:
        os.makedirs(args.index_dir)
        path, cleanup = args.index_dir, False
    else:
        path, cleanup = tempfile.mkdtemp(prefix="raw-tantivy-"), True
    try:
        index = tantivy.Index(schema, path=path)
        writer = index.writer(heap_size=args.heap_mb << 20, num_threads=1)

        # --- index (timed: add_document for all + final commit) ------------------------
        t = time.perf_counter()
        for d in docs:
            writer.add_document(d)
        t_added = time.perf_counter()
        writer.commit()
        index_s = time.perf_counter() - t
        commit_s = time.perf_counter() - t_added
        t = time.perf_counter()
        writer.wait_merging_threads()
        merge_s = time.perf_counter() - t
        del docs

        index.reload()
        searcher = index.searcher()
        n = searcher.num_docs
        if n != len(rows):
            sys.exit(f"index has {n} documents, CSV has {len(rows)}")
        segments = searcher.num_segments
        index_bytes = dir_bytes(path)

        # --- search ------------------------------------------------------------------
        count = not args.no_count
        fields = ["title", "body"]
        parsed = [index.parse_query(q, fields) for q in QUERIES]
        results = []
        for q, pq in zip(QUERIES, parsed):
            r = searcher.search(pq, 10, count=True)
            ids = searcher.fast_field_values("id", [a for _, a in r.hits])
            results.append({"query": q, "count": r.count, "top10_ids": ids,
                            "top10_scores": [round(s, 4) for s, _ in r.hits]})

        per_query = []
        all_search, all_parse = [], []
        for q, pq in zip(QUERIES, parsed):
            for _ in range(WARMUP):
                searcher.search(pq, 10, count=count)
            lat = []
            for _ in range(args.runs):
                t0 = time.perf_counter_ns()
                searcher.search(pq, 10, count=count)
                lat.append((time.perf_counter_ns() - t0) / 1000.0)
            lat_p = []
            for _ in range(args.runs):
                t0 = time.perf_counter_ns()
                searcher.search(index.parse_query(q, fields), 10, count=count)
                lat_p.append((time.perf_counter_ns() - t0) / 1000.0)
            all_search += lat
            all_parse += lat_p
            lat.sort()
            lat_p.sort()
            per_query.append((q, percentile(lat, 50), percentile(lat, 99),
                              percentile(lat_p, 50)))
    finally:
        if cleanup:
            shutil.rmtree(path, ignore_errors=True)

    if args.results_out:
        with open(args.results_out, "w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")

    all_search.sort()
    all_parse.sort()
    counts = {r["query"]: r["count"] for r in results}

    print(f"tantivy (PyPI) {TANTIVY_PYPI} [{TANTIVY_CRATE}]; corpus {args.csv}: "
          f"{n} docs, {os.path.getsize(args.csv) / 1e6:.1f} MB CSV, "
          f"{text_bytes / 1e6:.1f} MB title+body text")
    print(f"load CSV {csv_s:.2f} s; build Documents {build_s:.2f} s (not timed below)")
    print(f"index: {index_s:.2f} s incl. commit ({commit_s:.2f} s) -> {n / index_s:,.0f} docs/s, "
          f"{text_bytes / 1e6 / index_s:.1f} MB/s; heap {args.heap_mb} MiB, 1 thread")
    print(f"merges after commit {merge_s:.2f} s (not in docs/s); {segments} segment(s), "
          f"index {index_bytes / 1e6:.1f} MB on disk")
    print(f"search top 10, count={count}, {WARMUP} warm-up + {args.runs} runs per query:")
    print(f"  {'query':<26} {'matches':>8} {'p50 us':>9} {'p99 us':>9} {'p50+parse':>10}")
    for q, p50, p99, pp50 in per_query:
        print(f"  {q:<26} {counts[q]:>8} {p50:>9.1f} {p99:>9.1f} {pp50:>10.1f}")
    s50, s99 = percentile(all_search, 50), percentile(all_search, 99)
    p50, p99 = percentile(all_parse, 50), percentile(all_parse, 99)
    print(f"  {'ALL (' + str(len(all_search)) + ' runs)':<26} {'':>8} {s50:>9.1f} {s99:>9.1f} {p50:>10.1f}"
          f"   (p99 incl. parse {p99:.1f})")
    out = {
        "peer": "raw_tantivy",
        "tantivy_pypi": TANTIVY_PYPI,
        "tantivy_crate": TANTIVY_CRATE,
        "csv": args.csv,
        "docs": n,
        "csv_bytes": os.path.getsize(args.csv),
        "text_bytes": text_bytes,
        "heap_mb": args.heap_mb,
        "index_threads": 1,
        "index_s": round(index_s, 3),
        "commit_s": round(commit_s, 3),
        "index_docs_per_s": round(n / index_s, 1),
        "merge_wait_s": round(merge_s, 3),
        "segments": segments,
        "index_bytes": index_bytes,
        "queries": len(QUERIES),
        "runs_per_query": args.runs,
        "count": count,
        "search_p50_us": round(s50, 1),
        "search_p99_us": round(s99, 1),
        "search_parse_p50_us": round(p50, 1),
        "search_parse_p99_us": round(p99, 1),
        "per_query": [{"query": q, "matches": counts[q], "p50_us": round(a, 1),
                       "p99_us": round(b, 1), "parse_p50_us": round(c, 1)}
                      for q, a, b, c in per_query],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
