"""Retrieval performance on the HPO corpus, as ratios against a named reference, in one run.

1. BM25 index build time and queries/second (one query per call, and one batched call) for bm25s against
   rank-bm25 (BM25Okapi): the same corpus, the same MedicalTokenizer tokens, the same queries, the same k.
   Queries are HPO-Dx dev questions when that build is available, else phenotype lists sampled from disease
   documents of the corpus (seeded). Also the top-10 overlap of the two (their IDF formulas differ slightly).
2. Service latency p50/p99 and throughput at 1, 8 and 32 concurrent clients on loopback: `medr1 serve-retriever`
   in a subprocess on 127.0.0.1, client threads with one httpx connection each, one query per request, topk 5;
   each level is bounded in requests and seconds.
3. Load: 32 clients x 200 requests; reports errors (anything but HTTP 200 with a well-formed answer).
4. Scale-out: N client processes x M concurrent rollouts, each request a batch of queries (GRPO batch sizes),
   against the service with 1 and 2 uvicorn workers (`serve-retriever --workers`); queries/s per cell.

    python bench/retrieval.py                       # a few minutes on a laptop
    python bench/retrieval.py --queries 50 --load-requests 50 --skip-dense
    python bench/retrieval.py --scale-only               # just the workers x client processes table
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ queries


def corpus_queries(docs, n: int, seed: int = 0) -> tuple[list[str], str]:
    """Phenotype lists of random disease documents (3-8 findings each), as a stand-in for vignettes."""
    rng = random.Random(seed)
    diseases = [d for d in docs if d.text.startswith("Phenotypic features:")]
    out = []
    for d in rng.sample(diseases, min(n, len(diseases))):
        line = d.text.split("\n", 1)[0][len("Phenotypic features:"):]
        feats = [re.sub(r"\s*\(.*?\)\s*$", "", f).strip(" .") for f in line.split(";")]
        feats = [f for f in feats if f]
        rng.shuffle(feats)
        out.append(", ".join(feats[: rng.randint(3, 8)]))
    return out, f"{len(out)} phenotype lists sampled from disease documents (seed {seed})"


def load_queries(docs, n: int) -> tuple[list[str], str]:
    try:
        from medr1.data.sources import load_questions

        questions = load_questions("hpo-dx:dev", limit=n).questions
        if questions:
            return [q.question for q in questions], f"{len(questions)} HPO-Dx dev questions (question text)"
    except Exception as exc:  # the HPO-Dx build is another module; the bench still runs without it
        log(f"HPO-Dx dev not available ({type(exc).__name__}: {exc}); using corpus-derived queries")
    return corpus_queries(docs, n)


# ------------------------------------------------------------------------------------------------ bm25s vs rank-bm25


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_bm25(docs, queries: list[str], k: int, rank_budget_s: float) -> dict:
    import bm25s
    from rank_bm25 import BM25Okapi

    from medr1.retrieval.bm25 import BM25Params, BM25Retriever, MedicalTokenizer

    tok = MedicalTokenizer()
    corpus_tokens, t_tok = timed(lambda: tok.tokenize_many([d.contents for d in docs]))
    log(f"tokenized {len(docs)} documents in {t_tok:.2f} s")

    def build_bm25s():
        model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        model.index(corpus_tokens, show_progress=False)
        return model

    model, t_bm25s = timed(build_bm25s)
    rank, t_rank = timed(lambda: BM25Okapi(corpus_tokens, k1=1.5, b=0.75))
    ours = BM25Retriever(model, docs, BM25Params())
    log(f"index build: bm25s {t_bm25s:.2f} s, rank-bm25 {t_rank:.2f} s")

    def rank_search(q: str) -> list[int]:
        scores = rank.get_scores(tok.tokenize(q))
        top = np.argpartition(-scores, k)[:k]
        return [int(i) for i in top[np.argsort(-scores[top], kind="stable")] if scores[i] > 0]

    # rank-bm25 is slow: it gets a time budget and both libraries are then compared on the queries it finished.
    rank_results, start = [], time.perf_counter()
    for q in queries:
        rank_results.append(rank_search(q))
        if time.perf_counter() - start > rank_budget_s:
            break
    t_rank_q = time.perf_counter() - start
    same = queries[: len(rank_results)]
    log(f"rank-bm25: {len(same)} queries in {t_rank_q:.2f} s")

    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        single = [ours.search_indices([q], k)[0] for q in same]
    t_single = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        batched = ours.search_indices(same, k)
    t_batch = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for q in same:
        rank_search(q)
    t_rank_batch = time.perf_counter() - start  # rank-bm25 has no multi-query call: a loop is its batch

    overlap = statistics.mean(
        len({d for d, _ in a} & set(b)) / max(1, min(len(a), len(b), k)) for a, b in zip(single, rank_results)
    ) if same else float("nan")
    assert [[d for d, _ in r] for r in single] == [[d for d, _ in r] for r in batched]
    n = len(same)
    return {
        "docs": len(docs), "queries": n, "k": k, "tokenize_s": t_tok,
        "build_bm25s_s": t_bm25s, "build_rank_s": t_rank,
        "single_qps_bm25s": n / t_single, "single_qps_rank": n / t_rank_q,
        "batch_qps_bm25s": n / t_batch, "batch_qps_rank": n / t_rank_batch,
        "top10_overlap": overlap,
    }


# ------------------------------------------------------------------------------------------------ service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "medr1.cli", "serve-retriever", "--index", str(index_dir), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_clients(url: str, queries: list[str], clients: int, per_client: int, max_seconds: float) -> dict:
    """`clients` threads each send up to `per_client` one-query requests; stops early at `max_seconds`."""
    import httpx

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    deadline = [0.0]

    def worker(c: int) -> None:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            for i in range(per_client):
                if time.perf_counter() > deadline[0]:
                    break
                q = queries[(c * per_client + i) % len(queries)]
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/retrieve", json={"queries": [q], "topk": 5, "return_scores": True})
                    ok = r.status_code == 200 and len(r.json()["result"]) == 1
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:100]}"
                except Exception as exc:  # counted, never raised: the load test reports them
                    err = f"{type(exc).__name__}: {exc}"
                latencies[c].append(time.perf_counter() - t0)
                if err:
                    with lock:
                        errors.append(err)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    flat = sorted(x for row in latencies for x in row)
    return {
        "clients": clients, "requests": len(flat), "errors": len(errors), "first_errors": errors[:3],
        "wall_s": wall, "rps": len(flat) / wall,
        "p50_ms": 1000 * float(np.percentile(flat, 50)), "p99_ms": 1000 * float(np.percentile(flat, 99)),
        "max_ms": 1000 * flat[-1],
    }


def _client_process(args: tuple) -> tuple[int, int, float]:
    """One rollout worker process: `threads` concurrent rollouts, each sending `batch` queries per request (what
    one GRPO micro-step of that many trajectories asks at once) until `seconds` pass; (queries, errors, wall)."""
    url, queries, threads, batch, seconds, offset = args
    import httpx

    counts = [0] * threads
    errors = [0] * threads

    def rollout(t: int) -> None:
        with httpx.Client(timeout=60) as http:
            i = offset + t
            while time.perf_counter() < stop:
                qs = [queries[(i + j) % len(queries)] for j in range(batch)]
                i += batch * threads
                try:
                    r = http.post(url + "/retrieve", json={"queries": qs, "topk": 3})
                    ok = r.status_code == 200 and len(r.json()["result"]) == batch
                except Exception:
                    ok = False
                counts[t] += batch if ok else 0
                errors[t] += 0 if ok else 1

    start = time.perf_counter()
    stop = start + seconds
    pool = [threading.Thread(target=rollout, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(counts), sum(errors), time.perf_counter() - start


def scale_out(index_dir: Path, queries: list[str], workers_list: list[int], procs_list: list[int], threads: int,
              batch: int, seconds: float) -> list[dict]:
    """Queries/s of N client processes x M rollouts for each server worker count (one server per count)."""
    from multiprocessing import get_context

    rows = []
    for workers in workers_list:
        proc, url = start_server(index_dir, workers)
        try:
            _client_process((url, queries, 2, batch, 3.0, 0))  # warm-up: every worker pages the index in
            for procs in procs_list:
                with get_context("spawn").Pool(procs) as pool:
                    parts = pool.map(_client_process, [(url, queries, threads, batch, seconds, 7919 * p)
                                                       for p in range(procs)])
                done, errors = sum(p[0] for p in parts), sum(p[1] for p in parts)
                wall = max(p[2] for p in parts)
                rows.append({"server_workers": workers, "client_processes": procs, "rollouts": procs * threads,
                             "batch": batch, "queries": done, "errors": errors, "qps": done / wall})
                log(f"workers {workers}, {procs} x {threads} rollouts: {done / wall:.0f} queries/s")
        finally:
            stop_server(proc)
    return rows


# ------------------------------------------------------------------------------------------------ output


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200, help="queries for the BM25 comparison")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rank-budget", type=float, default=30.0, help="seconds rank-bm25 may spend on queries")
    ap.add_argument("--level-requests", type=int, default=400, help="requests per concurrency level (all clients)")
    ap.add_argument("--level-seconds", type=float, default=20.0)
    ap.add_argument("--load-clients", type=int, default=32)
    ap.add_argument("--load-requests", type=int, default=200, help="requests per client in the load test")
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--scale-only", action="store_true", help="only the workers x client-processes table")
    ap.add_argument("--scale-workers", default="1,2", help="server worker counts for the scale-out table")
    ap.add_argument("--scale-procs", default="1,2,4", help="client process counts for the scale-out table")
    ap.add_argument("--scale-threads", type=int, default=4, help="concurrent rollouts per client process")
    ap.add_argument("--scale-batch", type=int, default=8, help="queries per request (a GRPO micro-step's rollouts)")
    ap.add_argument("--scale-seconds", type=float, default=8.0)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    from medr1.corpus import ensure_corpus, load_documents
    from medr1.retrieval import ensure_default_index

    corpus_dir = ensure_corpus("hpo")
    docs = load_documents(corpus_dir)
    queries, qdesc = load_queries(docs, args.queries)
    log(f"corpus: {len(docs)} documents ({corpus_dir}); queries: {qdesc}")
    print(f"machine: {os.cpu_count()} CPUs visible; corpus: HPO, {len(docs)} documents; queries: {qdesc}")

    if args.scale_only:
        print_scale(args, queries, {"queries": qdesc})
        return
    bm = bench_bm25(docs, queries, args.k, args.rank_budget)
    print(f"\nBM25: bm25s vs rank-bm25 (BM25Okapi), same tokens, {bm['queries']} queries, k={bm['k']} "
          f"(tokenization {bm['tokenize_s']:.2f} s, shared, not in the build times)")
    print(table([
        ["measure", "bm25s", "rank-bm25", "bm25s speed-up"],
        ["index build (s)", f"{bm['build_bm25s_s']:.2f}", f"{bm['build_rank_s']:.2f}",
         f"{bm['build_rank_s'] / bm['build_bm25s_s']:.2f}x"],
        ["queries/s, one query per call", f"{bm['single_qps_bm25s']:.1f}", f"{bm['single_qps_rank']:.1f}",
         f"{bm['single_qps_bm25s'] / bm['single_qps_rank']:.1f}x"],
        ["queries/s, one batched call", f"{bm['batch_qps_bm25s']:.1f}", f"{bm['batch_qps_rank']:.1f}",
         f"{bm['batch_qps_bm25s'] / bm['batch_qps_rank']:.1f}x"],
    ]))
    print(f"top-{bm['k']} overlap bm25s vs rank-bm25: {bm['top10_overlap']:.3f} (IDF formulas differ slightly)")
    print("(bm25s precomputes every document's term scores at build time, so its build is the slower one; that "
          "work is what makes its queries fast)")
    results = {"bm25": bm, "queries": qdesc}

    if not args.skip_service:
        index_dir = ensure_default_index()
        proc, url = start_server(index_dir)
        try:
            run_clients(url, queries, 2, 10, 10)  # warm-up (page in the memory-mapped index)
            levels = []
            for c in (1, 8, 32):
                per_client = max(1, args.level_requests // c)
                levels.append(run_clients(url, queries, c, per_client, args.level_seconds))
                log(f"{c} clients: {levels[-1]['requests']} requests")
            load = run_clients(url, queries, args.load_clients, args.load_requests, 600)
            health = json.loads(__import__("httpx").get(url + "/health").text)
        finally:
            stop_server(proc)
        print(f"\nService latency on loopback (medr1 serve-retriever, bm25 over {len(docs)} documents, one query "
              f"per request, topk 5; each level bounded to {args.level_requests} requests / {args.level_seconds:.0f} s)")
        rows = [["clients", "requests", "errors", "req/s", "p50 ms", "p99 ms", "max ms"]]
        for r in levels:
            rows.append([str(r["clients"]), str(r["requests"]), str(r["errors"]), f"{r['rps']:.1f}",
                         f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}"])
        print(table(rows))
        base = levels[0]
        print("throughput vs 1 client: " + ", ".join(f"{r['clients']} clients {r['rps'] / base['rps']:.2f}x"
                                                     for r in levels[1:]))
        print(f"\nLoad: {load['clients']} clients x {args.load_requests} requests = {load['requests']} requests in "
              f"{load['wall_s']:.1f} s ({load['rps']:.1f} req/s), p50 {load['p50_ms']:.1f} ms, p99 "
              f"{load['p99_ms']:.1f} ms, errors: {load['errors']}")
        if load["errors"]:
            print("first errors: " + "; ".join(load["first_errors"]))
        print(f"server counters: {health['requests']} answered, {health['bad_requests']} bad requests, "
              f"{health['errors']} server errors")
        results.update(levels=levels, load=load)
        print_scale(args, queries, results)
        return
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_scale(args: argparse.Namespace, queries: list[str], results: dict) -> None:
    from medr1.retrieval import ensure_default_index

    rows = scale_out(ensure_default_index(), queries, [int(x) for x in args.scale_workers.split(",")],
                     [int(x) for x in args.scale_procs.split(",")], args.scale_threads, args.scale_batch,
                     args.scale_seconds)
    print(f"\nScale-out: N client processes x {args.scale_threads} concurrent rollouts, {args.scale_batch} queries "
          f"per request, {args.scale_seconds:.0f} s per cell, on the same {os.cpu_count()} CPUs as the server")
    table_rows = [["server workers", "client processes", "rollouts", "queries/s", "errors", "vs 1 worker"]]
    base = {r["client_processes"]: r["qps"] for r in rows if r["server_workers"] == rows[0]["server_workers"]}
    for r in rows:
        table_rows.append([str(r["server_workers"]), str(r["client_processes"]), str(r["rollouts"]),
                           f"{r['qps']:.0f}", str(r["errors"]), f"{r['qps'] / base[r['client_processes']]:.2f}x"])
    print(table(table_rows))
    results["scale_out"] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
