#!/usr/bin/env bash
# Ingestion at scale: a corpus of N documents (default 10,000) generated from knowledge/
# (`kotae-bench corpus`: manuals of many offices and years in Markdown, HTML and text, and
# inquiry logs), ingested into a fresh knowledge base with the real embedder, then ingested
# again unchanged. Prints documents/s, chunks/s, peak memory, and the re-ingest's time as a
# share of the first.
#   scripts/bench/ingest_scale.sh [docs] [build: debug|release]
# Models come from $KOTAE_MODELS_DIR (default: ./kotae-data/models, as scripts/demo.sh left them).
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCS="${1:-10000}"; BUILD="${2:-debug}"
K=./target/$BUILD/kotae; B=./target/$BUILD/kotae-bench
OUT=target/bench/ingest_scale
export KOTAE_MODELS_DIR="${KOTAE_MODELS_DIR:-$PWD/kotae-data/models}"
export KOTAE_DATA_DIR="$OUT/data"
rm -rf "$OUT"; mkdir -p "$OUT"
"$B" corpus "$OUT/corpus" --docs "$DOCS" 2>/dev/null | tee "$OUT/corpus.txt"
grep -m1 "model name" /proc/cpuinfo | sed 's/^.*: /cpu: /'
echo "build: $BUILD; threads: $(nproc)"
run() {
  local t0 t1
  t0=$(date +%s.%N)
  "$K" ingest "$OUT/corpus" --groups public > "$OUT/$1.txt"
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$OUT/$1.wall"
  cat "$OUT/$1.txt" | head -3
}
echo "== first ingest"; run first
echo "== again, unchanged"; run again
python3 - "$OUT" <<'PY'
import re, sys
out = sys.argv[1]
def wall(n):
    a, b = map(float, open(f"{out}/{n}.wall").read().split())
    return b - a
first, again = wall("first"), wall("again")
t = open(f"{out}/first.txt").read()
files, chunks = map(int, re.search(r"ingested (\d+) file\(s\).*?(\d+) chunks written", t).groups())
peak = re.search(r"peak memory (\d+) MiB", t)
peak2 = re.search(r"peak memory (\d+) MiB", open(f"{out}/again.txt").read())
print(f"first: {files} documents, {chunks} chunks in {first:.1f} s: {files/first:.2f} documents/s, "
      f"{chunks/first:.2f} chunks/s; peak memory {peak.group(1) if peak else '?'} MiB")
print(f"again (unchanged): {again:.2f} s = {100*again/first:.2f}% of the first; "
      f"peak memory {peak2.group(1) if peak2 else '?'} MiB")
PY
