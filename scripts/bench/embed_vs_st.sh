#!/usr/bin/env bash
# Embedding throughput of multilingual-e5-small, kotae (int8 and candle f32 encoders) vs
# sentence-transformers (PyTorch CPU) on the same weights and passages, run alternately (this
# machine is noisy) at 1 and 2 threads; prints medians and ratios.
#   scripts/bench/embed_vs_st.sh [rounds] [python with sentence-transformers]
set -euo pipefail
cd "$(dirname "$0")/../.."
# The build measured: target/debug (what README's commands run) unless KOTAE_BENCH names another
# (KOTAE_BENCH=target/release/kotae-bench); kotae-bench says which build it is on stderr.
BENCH="${KOTAE_BENCH:-./target/debug/kotae-bench}"
ROUNDS="${1:-2}"; PY="${2:-python3}"
OUT=target/bench/embed_vs_st.txt
mkdir -p target/bench
[ -d target/bench/e5-hf ] || "$BENCH" export-e5 target/bench/e5-hf
: > "$OUT"
for t in 1 2; do
  for r in $(seq "$ROUNDS"); do
    for e in int8 candle; do
      KOTAE_EMBED_ENGINE=$e "$BENCH" --threads "$t" embed --out target/bench/passages.json 2>/dev/null \
        | tail -1 | sed "s/^/kotae-$e threads=$t /"
    done
    "$PY" scripts/bench/st_baseline.py target/bench/e5-hf target/bench/passages.json --threads "$t" 2>/dev/null \
      | tail -1 | sed "s/^/st threads=$t /"
  done
done | tee "$OUT"
python3 - "$OUT" <<'PY'
import re, statistics, sys
rows = open(sys.argv[1]).read().splitlines()
def med(who, t):
    return statistics.median(float(re.search(r"median_passages_per_s=([\d.]+)", l).group(1))
                             for l in rows if l.startswith(f"{who} threads={t} "))
for t in (1, 2):
    st = med("st", t)
    for e in ("int8", "candle"):
        k = med(f"kotae-{e}", t)
        print(f"threads={t}: kotae {e} {k:.2f} passages/s vs sentence-transformers {st:.2f} ({k/st:.2f}x)")
PY
