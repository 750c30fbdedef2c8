"""Bounded load against a running `kotae serve`: /api/search and /api/chat at several
concurrencies, over a fixed question set (the first N Japanese and English golden questions).

    python scripts/bench/load.py http://127.0.0.1:8080 --concurrency 1,4,16 --requests 32

For each endpoint and concurrency: throughput, latency p50/p99 (whole response), for chat the
time to first token p50/p95 (first `token` event, or the final event of an answer that needs no
generation), and the counts of 200 / 429 / 503 / other. Standard library only.
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("--concurrency", default="1,4,16")
ap.add_argument("--requests", type=int, default=32, help="requests per endpoint and concurrency")
ap.add_argument("--questions", default="evals/retrieval/golden.jsonl")
ap.add_argument("--per-lang", type=int, default=8)
ap.add_argument("--endpoints", default="search,chat")
ap.add_argument("--max-tokens-note", default="")
a = ap.parse_args()

qs = [json.loads(l) for l in open(a.questions, encoding="utf-8") if l.strip()]
questions = [q["query"] for q in qs if q["lang"] == "ja"][: a.per_lang] + [q["query"] for q in qs if q["lang"] == "en"][: a.per_lang]
u = urllib.parse.urlparse(a.base)


def one(endpoint, question):
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {"query": question, "top_k": 5} if endpoint == "search" else {"message": question}
    t0 = time.perf_counter()
    conn.request("POST", f"/api/{endpoint}", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    ttft = None
    if r.status == 200 and endpoint == "chat":
        while True:
            line = r.readline()
            if not line:
                break
            if ttft is None and (line.startswith(b"event: token") or line.startswith(b"event: done")):
                ttft = time.perf_counter() - t0
    else:
        r.read()
    total = time.perf_counter() - t0
    conn.close()
    return r.status, total, ttft


def level(endpoint, conc, n):
    results = []
    lock = threading.Lock()
    idx = iter(range(n))

    def worker():
        while True:
            with lock:
                i = next(idx, None)
            if i is None:
                return
            res = one(endpoint, questions[i % len(questions)])
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    lat = sorted(r[1] * 1e3 for r in ok)
    ttft = sorted(r[2] * 1e3 for r in ok if r[2] is not None)
    pct = lambda v, p: v[min(len(v) - 1, int(round((len(v) - 1) * p)))] if v else float("nan")
    codes = {}
    for r in results:
        codes[r[0]] = codes.get(r[0], 0) + 1
    line = (
        f"{endpoint:<6} c={conc:<3} n={n:<4} ok/s={len(ok) / wall:7.2f}  p50={pct(lat, .5):8.0f} ms  p99={pct(lat, .99):8.0f} ms"
    )
    if endpoint == "chat":
        line += f"  ttft p50={pct(ttft, .5):7.0f} ms p95={pct(ttft, .95):7.0f} ms"
    line += f"  200={codes.get(200, 0)} 429={codes.get(429, 0)} 503={codes.get(503, 0)} other={sum(v for k, v in codes.items() if k not in (200, 429, 503))}"
    print(line, flush=True)


for ep in a.endpoints.split(","):
    for c in [int(x) for x in a.concurrency.split(",")]:
        level(ep, c, a.requests if ep == "search" else max(c, min(a.requests, 2 * c if c > 1 else a.requests)))
