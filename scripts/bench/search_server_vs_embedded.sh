#!/usr/bin/env bash
# Search latency and HNSW recall with vectors in a Qdrant server against the embedded engine,
# on the same synthetic corpus (`kotae-bench search`), alternating, ROUNDS times each; prints
# the medians side by side and their ratio. Starts ../shared/bin/qdrant (or $KOTAE_QDRANT_BIN)
# on free loopback ports for the run.
#   scripts/bench/search_server_vs_embedded.sh [ROUNDS=2] [CHUNKS=100000] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-2}"; CHUNKS="${2:-100000}"; THREADS="${3:-2}"
BENCH="${KOTAE_BENCH:-./target/debug/kotae-bench}"
[ -x "$BENCH" ] || cargo build -p kotae --bin kotae-bench
. scripts/lib/servers.sh
DIR="$(mktemp -d)"
trap 'stop_servers; rm -rf "$DIR"' EXIT
start_qdrant "$DIR/qdrant" || { echo "no Qdrant server at ${KOTAE_QDRANT_BIN:-../shared/bin/qdrant}" >&2; exit 1; }
GRPC="$QDRANT_GRPC"
for r in $(seq 1 "$ROUNDS"); do
  "$BENCH" --threads "$THREADS" search --chunks "$CHUNKS" --kb-dir "$DIR/kb-embedded" 2>/dev/null >"$DIR/embedded.$r"
  "$BENCH" --threads "$THREADS" search --chunks "$CHUNKS" --kb-dir "$DIR/kb-server" --qdrant-url "http://127.0.0.1:$GRPC" 2>/dev/null >"$DIR/server.$r"
done
python3 - "$DIR" "$ROUNDS" <<'PY'
import re, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def figures(path):
    t = open(path).read()
    out = {}
    for mode in ("bm25", "dense", "hybrid"):
        m = re.search(rf"^{mode}\s+p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms", t, re.M)
        out[f"{mode} p50 ms"], out[f"{mode} p99 ms"] = float(m[1]), float(m[2])
    m = re.search(r"recall@10 vs exact: ([\d.]+).*ann p50 ([\d.]+) ms, exact p50 ([\d.]+) ms", t)
    out["dense recall@10"], out["ann p50 ms"], out["exact p50 ms"] = float(m[1]), float(m[2]), float(m[3])
    return out, t.splitlines()[0]
emb = [figures(f"{d}/embedded.{r}") for r in range(1, rounds + 1)]
srv = [figures(f"{d}/server.{r}") for r in range(1, rounds + 1)]
print(emb[0][1]); print(srv[0][1])
print(f"{'median of ' + str(rounds) + ' rounds':<20} {'embedded':>10} {'server':>10} {'server/embedded':>16}")
for k in emb[0][0]:
    a = statistics.median(e[0][k] for e in emb); b = statistics.median(s[0][k] for s in srv)
    print(f"{k:<20} {a:>10.3f} {b:>10.3f} {b / a:>15.2f}x")
PY
