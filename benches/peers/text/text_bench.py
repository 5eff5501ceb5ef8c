#!/usr/bin/env python3
"""Helpers of benches/peers/text/search_bench.sh (text SEARCH vs raw tantivy, issue 13).

Subcommands (each prints human-readable lines on stderr and, where it measures
something, one JSON object as the last line on stdout):

  prep     --csv BASE.csv --docs N --out-dir D [--seed S] [--queries Q] [--chunk-mb M]
           Builds the N-document corpus from make_corpus.py's CSV (one copy of the
           Debian descriptions, ~64k documents) and writes it as COPY text-format TSV
           chunks D/items_NNN.tsv (id, creator_id, title, body; each chunk < M MiB, so
           under tidal serve's 256 MiB per COPY), plus D/queries.txt.
           Copy r = 0 of the base corpus is written as is (ids 1..n); copy r >= 1 keeps
           the titles in order but gives title k the body of document perm_r(k) (a seeded
           permutation per copy), with ids r*n + k. So, unlike make_corpus.py --repeat,
           the copies are not identical documents (fewer exact score ties in top-10s),
           while the vocabulary, term frequencies and length distribution stay those of
           the real descriptions. The corpus is the first N documents of that sequence.
           Queries: Q (default 60) queries of 1-3 words (40/35/25 %), every word drawn
           from the base corpus vocabulary (lowercase [a-z]{3,20}, tokenised like
           tantivy's "default" analyzer) from one of three document-frequency bands:
           common (the 300 most frequent words), medium (ranks 300-3000) and rare
           (ranks 3000-30000, at least 3 documents), chosen with probability
           30/45/25 %. Seeded; the same file is used by both systems.

  tantivy  --dir D [--runs R] [--heap-mb 32]
           Raw tantivy (PyPI tantivy 0.27 = tantivy crate 0.27, the version tidal-index
           uses) on the same TSV chunks: schema id (i64 indexed+fast), title and body
           (tokenizer "default", positions, not stored). Documents are built before the
           clock starts; timed: add_document for all + the final commit(), one writer
           with one indexing thread and a 32 MiB arena (as tidal-index). Merges are then
           waited for (not timed). Search: parse_query(q, ["title", "body"]) outside the
           clock; one warm-up pass over all queries, then R round-robin passes of
           searcher.search(q, 10) (count=True, the binding's default, which counts every
           match and so cannot prune) and, interleaved per pass, count=False (top-10 only,
           block-max pruning allowed: the same work as tidal's SEARCH ... LIMIT 10);
           nearest-rank p50/p99 over all samples. Also each query's match count and top-10 (id, score).

  wire     --url URL --queries Q --template T [--runs R] [--pid PID] [--label L]
           One connection (psycopg 3's libpq connection, simple protocol through
           pgconn.exec_, so the client adds a few microseconds per statement). T is the SQL
           with {q} for the quoted query text. One warm-up pass over all queries (whose
           result rows are kept: top-10 ids), then R round-robin passes; p50/p99/mean.
           Then SELECT 1 on the same connection (warm-up + max(1000, R*queries) runs).
           --ref-sql S (repeatable): S timed the same way, 1000 runs, for reference.
           With --pid, the server's CPU seconds (utime+stime from /proc/PID/stat) over the
           measured SEARCH passes, divided by their count.

  events   --docs N --events E --at TS --out-dir D [--seed S] [--hours 48]
           E signal events over the HOURS before AT, in time order: view/like/skip
           75/20/5 %, items zipf(1.0) over a seeded random permutation of ids 1..N, users
           uniform in 1..100000, weight 1. Written as COPY text TSV chunks
           D/events_NNN.tsv (signal, entity_id, user_id, weight, ts).

  compare  TANTIVY.json TIDAL.json
           Compares each query's top-10 of both systems up to ties: ids at the same rank
           must match, except within a run of equal scores (|a-b| <= 1e-4 relative),
           where the sets of ids must overlap as far as the shorter run allows, and the
           last tie group may be cut differently by the two systems.
"""

import argparse
import bisect
import csv
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time

TOKEN = re.compile(r"[^\W_]+", re.UNICODE)  # tantivy SimpleTokenizer: alphanumeric runs
WORD = re.compile(r"^[a-z]{3,20}$")
STOP = {"and", "or", "not", "the"}  # never as query words ("the" kept out: trivial)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def percentile(sorted_vals, p):
    idx = int(math.floor(p / 100.0 * (len(sorted_vals) - 1) + 0.5))
    return sorted_vals[min(idx, len(sorted_vals) - 1)]


def tsv_escape(s):
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


_UNESC = re.compile(r"\\(.)")
_UNMAP = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def tsv_unescape(s):
    if "\\" not in s:
        return s
    return _UNESC.sub(lambda m: _UNMAP.get(m.group(1), m.group(1)), s)


# --- prep ------------------------------------------------------------------------------
def cmd_prep(a):
    csv.field_size_limit(sys.maxsize)
    base = []
    with open(a.csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            base.append((int(r["creator_id"]), r["title"], r["body"]))
    n = len(base)
    os.makedirs(a.out_dir, exist_ok=True)
    rng = random.Random(a.seed)
    limit = a.chunk_mb << 20
    chunk, out, size, written = 0, None, 0, 0

    def new_chunk():
        nonlocal chunk, out, size
        if out:
            out.close()
        out = open(os.path.join(a.out_dir, f"items_{chunk:03d}.tsv"), "w", encoding="utf-8")
        chunk += 1
        size = 0

    new_chunk()
    r = 0
    while written < a.docs:
        perm = list(range(n))
        if r > 0:
            rng.shuffle(perm)
        for k in range(n):
            if written >= a.docs:
                break
            cid, title, _ = base[k]
            body = base[perm[k]][2]
            line = f"{r * n + k + 1}\t{cid}\t{tsv_escape(title)}\t{tsv_escape(body)}\n"
            b = len(line.encode("utf-8"))
            if size + b > limit:
                new_chunk()
            out.write(line)
            size += b
            written += 1
        r += 1
    out.close()
    log(f"prep: {written} documents from {n} base documents ({r} copies), {chunk} chunk(s) in {a.out_dir}")

    # Vocabulary and document frequencies over the base corpus.
    df = {}
    for _, title, body in base:
        for w in set(t.lower() for t in TOKEN.findall(title + " " + body)):
            df[w] = df.get(w, 0) + 1
    vocab = sorted((w for w in df if WORD.match(w) and w not in STOP),
                   key=lambda w: (-df[w], w))
    bands = {
        "common": vocab[:300],
        "medium": vocab[300:3000],
        "rare": [w for w in vocab[3000:30000] if df[w] >= 3],
    }
    qrng = random.Random(a.seed + 1)
    queries, seen = [], set()
    while len(queries) < a.queries:
        k = qrng.choices([1, 2, 3], [40, 35, 25])[0]
        words = []
        for _ in range(k):
            band = qrng.choices(["common", "medium", "rare"], [30, 45, 25])[0]
            words.append(qrng.choice(bands[band]))
        q = " ".join(words)
        if len(set(words)) == k and q not in seen:
            seen.add(q)
            queries.append(q)
    with open(os.path.join(a.out_dir, "queries.txt"), "w") as f:
        for q in queries:
            f.write(q + "\n")
    log(f"prep: {len(queries)} queries; vocabulary {len(vocab)} words; "
        f"band df ranges: common {df[bands['common'][-1]]}-{df[bands['common'][0]]}, "
        f"medium {df[bands['medium'][-1]]}-{df[bands['medium'][0]]}, "
        f"rare {df[bands['rare'][-1]]}-{df[bands['rare'][0]]} (of {n} base docs)")
    print(json.dumps({"docs": written, "base_docs": n, "chunks": chunk,
                      "queries": len(queries)}))


def read_chunks(d, prefix):
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.startswith(prefix) and f.endswith(".tsv"))


def read_queries(path):
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


# --- tantivy ---------------------------------------------------------------------------
def cmd_tantivy(a):
    import tantivy
    try:
        from importlib.metadata import version
        pypi = version("tantivy")
    except Exception:
        pypi = None
    queries = read_queries(os.path.join(a.dir, "queries.txt"))
    t = time.perf_counter()
    rows = []
    for p in read_chunks(a.dir, "items_"):
        with open(p, encoding="utf-8") as f:
            for line in f:
                i, _, ti, b = line.rstrip("\n").split("\t")
                rows.append((int(i), tsv_unescape(ti), tsv_unescape(b)))
    read_s = time.perf_counter() - t
    sb = tantivy.SchemaBuilder()
    sb.add_integer_field("id", stored=True, indexed=True, fast=True)
    sb.add_text_field("title", stored=False, tokenizer_name="default", index_option="position")
    sb.add_text_field("body", stored=False, tokenizer_name="default", index_option="position")
    schema = sb.build()
    t = time.perf_counter()
    docs = [tantivy.Document(id=i, title=ti, body=b) for i, ti, b in rows]
    build_s = time.perf_counter() - t
    n = len(rows)
    del rows
    path = tempfile.mkdtemp(prefix="raw-tantivy-", dir=a.tmp)
    try:
        index = tantivy.Index(schema, path=path)
        writer = index.writer(heap_size=a.heap_mb << 20, num_threads=1)
        c0 = os.times()
        t = time.perf_counter()
        for d in docs:
            writer.add_document(d)
        t_add = time.perf_counter()
        writer.commit()
        index_s = time.perf_counter() - t
        commit_s = time.perf_counter() - t_add
        c1 = os.times()
        t = time.perf_counter()
        writer.wait_merging_threads()
        merge_s = time.perf_counter() - t
        del docs
        index.reload()
        searcher = index.searcher()
        assert searcher.num_docs == n, (searcher.num_docs, n)
        segments = searcher.num_segments
        parsed = [index.parse_query(q, ["title", "body"]) for q in queries]
        results = []
        for q, pq in zip(queries, parsed):  # the warm-up pass
            r = searcher.search(pq, 10, count=True)
            ids = searcher.fast_field_values("id", [addr for _, addr in r.hits])
            results.append({"query": q, "count": r.count, "ids": [int(x) for x in ids],
                            "scores": [float(s) for s, _ in r.hits]})
        for pq in parsed:  # warm-up pass without counting
            searcher.search(pq, 10, count=False)
        lat, lat_nc = [], []
        per_q = [[] for _ in queries]
        per_q_nc = [[] for _ in queries]
        for _ in range(a.runs):
            for j, pq in enumerate(parsed):
                t0 = time.perf_counter_ns()
                searcher.search(pq, 10, count=True)
                dt = (time.perf_counter_ns() - t0) / 1000.0
                lat.append(dt)
                per_q[j].append(dt)
            for j, pq in enumerate(parsed):
                t0 = time.perf_counter_ns()
                searcher.search(pq, 10, count=False)
                dt = (time.perf_counter_ns() - t0) / 1000.0
                lat_nc.append(dt)
                per_q_nc[j].append(dt)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    lat.sort()
    lat_nc.sort()
    for j, r in enumerate(results):
        per_q[j].sort()
        per_q_nc[j].sort()
        r["p50_us"] = round(percentile(per_q[j], 50), 1)
        r["nocount_p50_us"] = round(percentile(per_q_nc[j], 50), 1)
    cpu_s = (c1.user + c1.system) - (c0.user + c0.system)
    log(f"tantivy {pypi}: {n} docs read in {read_s:.1f} s, Documents built in {build_s:.1f} s (untimed)")
    log(f"tantivy: indexed in {index_s:.2f} s incl. commit {commit_s:.2f} s -> {n / index_s:,.0f} docs/s "
        f"(process CPU {cpu_s:.1f} s); merges after {merge_s:.1f} s; {segments} segments")
    log(f"tantivy: search top-10 over {len(queries)} queries x {a.runs}: p50 {percentile(lat, 50):.1f} us, "
        f"p99 {percentile(lat, 99):.1f} us; count=False: p50 {percentile(lat_nc, 50):.1f} us, "
        f"p99 {percentile(lat_nc, 99):.1f} us")
    print(json.dumps({
        "system": "raw_tantivy", "tantivy_pypi": pypi, "docs": n, "index_s": round(index_s, 3),
        "commit_s": round(commit_s, 3), "docs_per_s": round(n / index_s, 1),
        "index_cpu_s": round(cpu_s, 2), "merge_wait_s": round(merge_s, 2), "segments": segments,
        "runs": len(lat), "p50_us": round(percentile(lat, 50), 1),
        "p99_us": round(percentile(lat, 99), 1), "mean_us": round(sum(lat) / len(lat), 1),
        "nocount_p50_us": round(percentile(lat_nc, 50), 1),
        "nocount_p99_us": round(percentile(lat_nc, 99), 1),
        "nocount_mean_us": round(sum(lat_nc) / len(lat_nc), 1),
        "results": results}))


# --- wire ------------------------------------------------------------------------------
def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmd_wire(a):
    import psycopg
    from psycopg.pq import ExecStatus
    queries = read_queries(a.queries)
    conn = psycopg.connect(a.url, autocommit=True)
    pg = conn.pgconn
    stmts = [a.template.replace("{q}", "'" + q.replace("'", "''") + "'").encode() for q in queries]

    def run(sql):
        res = pg.exec_(sql)
        if res.status != ExecStatus.TUPLES_OK:
            raise RuntimeError(f"{sql[:200]!r}: {res.error_message.decode(errors='replace')}")
        return res

    results = []
    t_first = None
    for q, s in zip(queries, stmts):  # warm-up pass, rows kept
        t0 = time.perf_counter()
        res = run(s)
        if t_first is None:
            t_first = time.perf_counter() - t0
        cols = [res.fname(c).decode() for c in range(res.nfields)]
        ci = cols.index("id") if "id" in cols else None
        cr = cols.index("relevance") if "relevance" in cols else None
        cs = cols.index("score") if "score" in cols else None
        ids = [int(res.get_value(r, ci)) for r in range(res.ntuples)] if ci is not None else []
        rel = [float(res.get_value(r, cr)) for r in range(res.ntuples)] if cr is not None else []
        sc = [float(res.get_value(r, cs)) for r in range(res.ntuples)] if cs is not None else []
        results.append({"query": q, "ids": ids, "scores": rel, "fused": sc})
    if a.count_template:
        for r in results:
            res = run(a.count_template.replace("{q}", "'" + r["query"].replace("'", "''") + "'").encode())
            r["count"] = int(res.get_value(0, 0))
    lat = []
    per_q = [[] for _ in queries]
    c0 = proc_cpu_s(a.pid) if a.pid else None
    w0 = time.perf_counter()
    for _ in range(a.runs):
        for j, s in enumerate(stmts):
            t0 = time.perf_counter_ns()
            run(s)
            dt = (time.perf_counter_ns() - t0) / 1000.0
            lat.append(dt)
            per_q[j].append(dt)
    wall = time.perf_counter() - w0
    c1 = proc_cpu_s(a.pid) if a.pid else None
    one = b"SELECT 1"
    for _ in range(200):
        run(one)
    n1 = max(1000, len(lat))
    l1 = []
    for _ in range(n1):
        t0 = time.perf_counter_ns()
        run(one)
        l1.append((time.perf_counter_ns() - t0) / 1000.0)
    ref = {}
    for rs in a.ref_sql or []:
        b = rs.encode()
        for _ in range(50):
            run(b)
        lr = []
        for _ in range(1000):
            t0 = time.perf_counter_ns()
            run(b)
            lr.append((time.perf_counter_ns() - t0) / 1000.0)
        lr.sort()
        ref[rs] = {"p50_us": round(percentile(lr, 50), 1), "p99_us": round(percentile(lr, 99), 1)}
        log(f"wire {a.label}: reference {rs!r}: p50 {ref[rs]['p50_us']} us p99 {ref[rs]['p99_us']} us")
    conn.close()
    lat.sort()
    l1.sort()
    for j, r in enumerate(results):
        per_q[j].sort()
        r["p50_us"] = round(percentile(per_q[j], 50), 1)
    cpu_per = None if c0 is None else (c1 - c0) / len(lat)
    out = {"system": "tidal", "label": a.label, "runs": len(lat),
           "first_statement_s": round(t_first, 4),
           "p50_us": round(percentile(lat, 50), 1), "p99_us": round(percentile(lat, 99), 1),
           "mean_us": round(sum(lat) / len(lat), 1), "qps": round(len(lat) / wall, 1),
           "select1_p50_us": round(percentile(l1, 50), 1),
           "select1_p99_us": round(percentile(l1, 99), 1),
           "server_cpu_us_per_op": None if cpu_per is None else round(cpu_per * 1e6, 1),
           "reference": ref, "results": results}
    log(f"wire {a.label}: {len(lat)} runs p50 {out['p50_us']} us p99 {out['p99_us']} us "
        f"mean {out['mean_us']} us; SELECT 1 p50 {out['select1_p50_us']} us; "
        f"server CPU/op {out['server_cpu_us_per_op']} us; first statement {t_first * 1000:.1f} ms")
    print(json.dumps(out))


# --- events ----------------------------------------------------------------------------
def cmd_events(a):
    rng = random.Random(a.seed)
    ids = list(range(1, a.docs + 1))
    rng.shuffle(ids)  # popularity rank -> item id
    cum, s = [], 0.0
    for k in range(1, a.docs + 1):
        s += 1.0 / k
        cum.append(s)
    import calendar
    at_s = calendar.timegm(time.strptime(a.at, "%Y-%m-%d %H:%M:%S"))
    span = a.hours * 3600
    offs = sorted(rng.randrange(span) for _ in range(a.events))
    os.makedirs(a.out_dir, exist_ok=True)
    per_chunk = a.chunk_rows
    chunk = 0
    sigs = rng.choices(["view", "like", "skip"], [75, 20, 5], k=a.events)
    total = cum[-1]
    ranks = [bisect.bisect_left(cum, rng.random() * total) for _ in range(a.events)]
    ts_cache = {}
    for start in range(0, a.events, per_chunk):
        with open(os.path.join(a.out_dir, f"events_{chunk:03d}.tsv"), "w") as f:
            lines = []
            for i in range(start, min(start + per_chunk, a.events)):
                t = at_s - span + offs[i]
                ts = ts_cache.get(t)
                if ts is None:
                    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
                    ts_cache[t] = ts
                lines.append(f"{sigs[i]}\t{ids[min(ranks[i], a.docs - 1)]}\t{rng.randint(1, 100000)}\t1\t{ts}\n")
            f.writelines(lines)
        chunk += 1
    log(f"events: {a.events} events over {a.hours} h before {a.at} for {a.docs} items, {chunk} chunk(s)")
    print(json.dumps({"events": a.events, "chunks": chunk}))


# --- compare ---------------------------------------------------------------------------
def close(x, y):
    return abs(x - y) <= 1e-4 * max(1.0, abs(x), abs(y))


def groups(ids, scores):
    out = []
    for i, s in zip(ids, scores):
        if out and close(out[-1][0], s):
            out[-1][1].add(i)
        else:
            out.append([s, {i}])
    return out


def cmd_compare(a):
    t = {r["query"]: r for r in json.loads(open(a.tantivy).read().strip().splitlines()[-1])["results"]}
    w = {r["query"]: r for r in json.loads(open(a.tidal).read().strip().splitlines()[-1])["results"]}
    same, tie_only, differ, count_diff = 0, 0, [], []
    for q, tr in t.items():
        wr = w.get(q)
        if wr is None:
            continue
        if "count" in wr and wr["count"] != tr["count"]:
            count_diff.append((q, tr["count"], wr["count"]))
        if tr["ids"] == wr["ids"]:
            same += 1
            continue
        ok = len(tr["ids"]) == len(wr["ids"])
        gt, gw = groups(tr["ids"], tr["scores"]), groups(wr["ids"], wr["scores"])
        if ok and len(gt) == len(gw):
            for j, ((st, it), (sw, iw)) in enumerate(zip(gt, gw)):
                if not close(st, sw) or len(it) != len(iw):
                    ok = False
                    break
                if j < len(gt) - 1 and it != iw:
                    ok = False
                    break
        else:
            ok = False
        if ok:
            tie_only += 1
        else:
            differ.append(q)
    log(f"compare: {same} queries with identical top-10 ids, {tie_only} identical up to ties, "
        f"{len(differ)} different; {len(count_diff)} match-count differences")
    for q in differ[:5]:
        log(f"  differs: {q!r}\n    tantivy {list(zip(t[q]['ids'], [round(s, 4) for s in t[q]['scores']]))}"
            f"\n    tidal   {list(zip(w[q]['ids'], [round(s, 4) for s in w[q]['scores']]))}")
    for q, ct, cw in count_diff[:5]:
        log(f"  count differs: {q!r} tantivy {ct} tidal {cw}")
    print(json.dumps({"identical": same, "identical_up_to_ties": tie_only, "different": len(differ),
                      "different_queries": differ, "count_differences": count_diff}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--csv", required=True)
    p.add_argument("--docs", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--queries", type=int, default=60)
    p.add_argument("--chunk-mb", type=int, default=200)
    p = sub.add_parser("tantivy")
    p.add_argument("--dir", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--heap-mb", type=int, default=32)
    p.add_argument("--tmp", default=None)
    p = sub.add_parser("wire")
    p.add_argument("--url", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--count-template")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--pid", type=int)
    p.add_argument("--label", default="search")
    p.add_argument("--ref-sql", action="append",
                   help="also time this statement (1000 runs) for reference; repeatable")
    p = sub.add_parser("events")
    p.add_argument("--docs", type=int, required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--at", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--hours", type=int, default=48)
    p.add_argument("--chunk-rows", type=int, default=1_000_000)
    p = sub.add_parser("compare")
    p.add_argument("tantivy")
    p.add_argument("tidal")
    a = ap.parse_args()
    {"prep": cmd_prep, "tantivy": cmd_tantivy, "wire": cmd_wire, "events": cmd_events,
     "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    main()
