"""Kotae replicas on one machine: a writer (`server.role = "all"`) and N replicas
(`"replica"`) of `kotae serve` sharing one data folder (the knowledge base and the uploads), one
Qdrant server and one PostgreSQL, behind a round-robin proxy, all on loopback. Started by
scripts/bench/replicas.sh, which provides the servers, the ingested knowledge base and the
environment (KOTAE_DATA_DIR, KOTAE_STATE_URL, KOTAE_QDRANT_URL, KOTAE_MODELS_DIR, KOTAE_CONFIG).

It measures, and exits 1 when one of these fails:
  1. searches and answers sent to the proxy are served by every replica (per-replica counts
     from each process's /metrics);
  2. a document uploaded through the proxy becomes searchable on every replica (time to each);
  3. a replica killed (SIGKILL) while it streams an answer: the client's stream ends without a
     `done` event, the other replicas go on serving, no stored conversation is lost;
  4. the writer killed during a 120-document upload: the replicas go on serving, what it
     committed stays searchable, the job is reported failed once its heartbeat is stale, and
     a retry after the writer's restart ingests the rest.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

ap = argparse.ArgumentParser()
ap.add_argument("--kotae", default="./target/debug/kotae")
ap.add_argument("--replicas", type=int, default=2)
ap.add_argument("--admin-key", required=True)
ap.add_argument("--logs", required=True)
a = ap.parse_args()

failures = []


def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def request(port, method, path, body=None, key=None, ctype="application/json", timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {}
    if body is not None:
        headers["content-type"] = ctype
        if ctype == "application/json":
            body = json.dumps(body)
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body, headers)
        r = conn.getresponse()
        text = r.read().decode()
    except (ConnectionError, OSError) as e:
        return 0, str(e)
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


class Proc:
    def __init__(self, name, role):
        self.name, self.role, self.port = name, role, free_port()
        self.start()

    def start(self):
        log = open(os.path.join(a.logs, f"{self.name}.log"), "a")
        env = {**os.environ, "KOTAE_ADDR": f"127.0.0.1:{self.port}", "KOTAE_ROLE": self.role}
        self.p = subprocess.Popen([a.kotae, "serve"], env=env, stdout=log, stderr=log)
        self.t0 = time.monotonic()

    def ready(self, limit=900):
        while time.monotonic() - self.t0 < limit:
            if self.p.poll() is not None:
                sys.exit(f"{self.name} exited: see {a.logs}/{self.name}.log")
            if request(self.port, "GET", "/readyz", timeout=5)[0] == 200:
                return time.monotonic() - self.t0
            time.sleep(0.5)
        sys.exit(f"{self.name} not ready after {limit} s")

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def metric(self, name, label):
        _, text = request(self.port, "GET", "/metrics")
        return sum(float(l.rsplit(" ", 1)[1]) for l in str(text).splitlines()
                   if l.startswith(name + "{") and label in l)


def multipart(files, groups):
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\ncontent-disposition: form-data; name="groups"\r\n\r\n{groups}\r\n']
    for name, text in files:
        parts.append(f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="{name}"\r\n'
                     f"content-type: text/markdown\r\n\r\n{text}\r\n")
    parts.append(f"--{boundary}--\r\n")
    return "".join(parts).encode(), f"multipart/form-data; boundary={boundary}"


def found(port, query, source):
    s, r = request(port, "POST", "/api/search", {"query": query, "top_k": 5})
    return s == 200 and any(h["source"] == source for h in r["hits"])


def job(port, jid):
    return request(port, "GET", f"/admin/api/jobs/{jid}", key=a.admin_key)[1]


writer = Proc("writer", "all")
replicas = [Proc(f"replica{i + 1}", "replica") for i in range(a.replicas)]
procs = [writer] + replicas
proxy_port = free_port()
proxy = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "round_robin.py"), str(proxy_port)]
                         + [str(p.port) for p in procs])
try:
    for p in procs:
        print(f"{p.name} ({p.role}) ready in {p.ready():.1f} s on port {p.port}", flush=True)
    golden = [json.loads(l) for l in open("evals/retrieval/golden.jsonl", encoding="utf-8") if l.strip()]
    questions = [g["query"] for g in golden if g["lang"] == "ja"][:15] + [g["query"] for g in golden if g["lang"] == "en"][:15]

    print("\n1. Searches and answers through the round-robin proxy")
    before = [p.metric("kotae_http_requests_total", 'route="/api/search"') for p in procs]
    t = time.monotonic()
    codes = [request(proxy_port, "POST", "/api/search", {"query": q, "top_k": 5})[0] for q in questions]
    took = time.monotonic() - t
    spread = [p.metric("kotae_http_requests_total", 'route="/api/search"') - b for p, b in zip(procs, before)]
    check(codes.count(200) == len(questions), f"{codes.count(200)}/{len(questions)} searches answered 200 ({took / len(questions) * 1000:.0f} ms each)")
    check(all(n > 0 for n in spread), "searches per process " + ", ".join(f"{p.name} {n:.0f}" for p, n in zip(procs, spread)))
    before = [p.metric("kotae_answers_total", "kind=") for p in procs]
    conversations = []
    for q in questions[:3] + questions[15:18]:
        s, r = request(proxy_port, "POST", "/api/chat", {"message": q, "stream": False}, key=a.admin_key)
        if s == 200:
            conversations.append(r["conversation_id"])
    spread = [p.metric("kotae_answers_total", "kind=") - b for p, b in zip(procs, before)]
    check(len(conversations) == 6, f"{len(conversations)}/6 answers")
    check(sum(n > 0 for n in spread) >= min(3, len(procs)), "answers per process " + ", ".join(f"{p.name} {n:.0f}" for p, n in zip(procs, spread)))

    print("\n2. An upload through the proxy, searchable on every replica")
    term = f"Zephyr{uuid.uuid4().hex[:6]}"
    body, ctype = multipart([("shuttle.md", f"# Shuttle bus\n\nThe {term} shuttle bus leaves the north gate every 20 minutes.\n")], "public")
    t = time.monotonic()
    s, r = request(proxy_port, "POST", "/admin/api/documents", body, key=a.admin_key, ctype=ctype)
    check(s == 202, f"upload accepted: {s}")
    jid = r["job"]
    seen = {}
    while len(seen) < len(procs) and time.monotonic() - t < 120:
        for p in procs:
            if p.name not in seen and found(p.port, f"{term} shuttle bus", "shuttle.md"):
                seen[p.name] = time.monotonic() - t
        time.sleep(0.05)
    j = job(writer.port, jid)
    check(j["status"] == "done", f"job {j['status']} (ran {j['finished_unix'] - j['created_unix']} s by its own clock)")
    check(len(seen) == len(procs), "upload → searchable: " + ", ".join(f"{n} {s:.2f} s" for n, s in seen.items()))

    print("\n3. A replica killed while it streams an answer")
    victim, other = replicas[0], (replicas[1] if len(replicas) > 1 else writer)
    conn = http.client.HTTPConnection("127.0.0.1", victim.port, timeout=600)
    conn.request("POST", "/api/chat", json.dumps({"message": questions[20]}),
                 {"content-type": "application/json", "authorization": f"Bearer {a.admin_key}"})
    resp = conn.getresponse()
    events, killed = [], False
    try:
        while line := resp.readline():
            line = line.decode().strip()
            if line.startswith("event:"):
                events.append(line[6:].strip())
                if events[-1] == "token" and not killed:
                    victim.kill()
                    killed = True
    except (ConnectionError, OSError, http.client.HTTPException):
        pass
    check(killed and "done" not in events, f"the stream ended without `done` after the kill ({len(events)} events)")
    codes = [request(proxy_port, "POST", "/api/search", {"query": q, "top_k": 5})[0] for q in questions[:12]]
    check(codes.count(200) == 12, f"{codes.count(200)}/12 searches through the proxy answered with one replica dead")
    kept = 0
    for cid in conversations:
        s, r = request(other.port, "GET", f"/api/conversations/{cid}", key=a.admin_key)
        kept += s == 200 and len(r["messages"]) == 2
    check(kept == len(conversations), f"{kept}/{len(conversations)} earlier conversations readable on {other.name}")
    victim.start()
    print(f"  {victim.name} restarted, ready in {victim.ready():.1f} s")

    print("\n4. The writer killed during a 120-document upload")
    kinds = ["projector", "whiteboard", "screen", "speakerphone", "camera", "sofa"]
    rooms = [(f"room-{i:03}.md", f"# Room {i}\n\n" + "\n\n".join(
        f"## {k.title()}\n\nRoom {i} on floor {i % 9 + 1} has a {k} (asset {i * 31 + j}); book it in the room app, "
        f"report a broken {k} to General Affairs, and leave the {k} as you found it for the next group of {4 + (i + j) % 7}."
        for j, k in enumerate(kinds)) + "\n") for i in range(120)]
    body, ctype = multipart(rooms, "public")
    s, r = request(replicas[-1].port, "POST", "/admin/api/documents", body, key=a.admin_key, ctype=ctype)
    jid = r["job"]
    while True:
        j = job(replicas[-1].port, jid)
        if (j.get("progress") or {}).get("files_ingested", 0) >= 32 or j["status"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    check(j["status"] == "running", f"the job is {j['status']} when the writer is killed")
    writer.kill()
    t_kill = time.monotonic()
    committed = (job(replicas[-1].port, jid).get("progress") or {}).get("files_ingested", 0)
    codes = [request(p.port, "POST", "/api/search", {"query": "Room 3 floor", "top_k": 5})[0] for p in replicas]
    check(codes.count(200) == len(replicas), "the replicas serve with the writer dead")
    writer.start()
    print(f"  writer restarted, ready in {writer.ready():.1f} s")
    while job(replicas[-1].port, jid)["status"] == "running" and time.monotonic() - t_kill < 300:
        time.sleep(1)
    j = job(replicas[-1].port, jid)
    check(j["status"] == "failed", f"the interrupted job is {j['status']} {time.monotonic() - t_kill:.0f} s after the kill: {str(j['report'])[:90]}")
    s, r = request(replicas[-1].port, "POST", f"/admin/api/jobs/{jid}/retry", key=a.admin_key)
    t = time.monotonic()
    while job(replicas[-1].port, r["job"])["status"] in ("queued", "running"):
        time.sleep(0.2)
    j = job(replicas[-1].port, r["job"])
    check(j["status"] == "done", f"the retry: {j['status']} in {time.monotonic() - t:.1f} s, {j['report'].get('files_ingested')} ingested, {j['report'].get('files_unchanged', '?')} unchanged (≥{committed} committed before the kill)")
    s, docs = request(replicas[0].port, "GET", "/admin/api/documents", key=a.admin_key)
    n = sum(d["source"].startswith("room-") for d in docs["documents"])
    check(n == 120, f"{n}/120 rooms listed on {replicas[0].name}")
finally:
    proxy.terminate()
    for p in procs:
        if p.p.poll() is None:
            p.p.terminate()
            p.p.wait()
print("\n" + ("all checks passed" if not failures else f"{len(failures)} checks FAILED"))
sys.exit(1 if failures else 0)
