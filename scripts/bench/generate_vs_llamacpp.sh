#!/usr/bin/env bash
# Generation speed, kotae vs llama.cpp (llama-cpp-python) on the same GGUF files and the same
# rendered ~1,000-token RAG prompt, run alternately (this machine is noisy), for both
# generators at 1 and 2 threads; prints medians and ratios.
#   scripts/bench/generate_vs_llamacpp.sh [rounds] [python with llama_cpp]
set -euo pipefail
cd "$(dirname "$0")/../.."
# The build measured: target/debug (what README's commands run) unless KOTAE_BENCH names another
# (KOTAE_BENCH=target/release/kotae-bench); kotae-bench says which build it is on stderr.
BENCH="${KOTAE_BENCH:-./target/debug/kotae-bench}"
ROUNDS="${1:-2}"; PY="${2:-python3}"
MODELS="${KOTAE_DATA_DIR:-kotae-data}/models"
OUT=target/bench/generate_vs_llamacpp.txt
mkdir -p target/bench
: > "$OUT"
for spec in "smollm2-135m-instruct:SmolLM2-135M-Instruct.Q4_1.gguf" "qwen2.5-coder-0.5b-instruct:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"; do
  name="${spec%%:*}"; file="${spec#*:}"
  for t in 1 2; do
    for r in $(seq "$ROUNDS"); do
      "$BENCH" --threads "$t" generate --model "$name" --decode 64 --repeats 2 \
        --out "target/bench/prompt-$name.txt" 2>/dev/null | tail -1 | sed "s/^/kotae $name /"
      "$PY" scripts/bench/llamacpp_baseline.py "$MODELS/$name/$file" "target/bench/prompt-$name.txt" \
        --threads "$t" --decode 64 --repeats 2 2>/dev/null | tail -1 | sed "s/^/llama.cpp $name /"
    done
  done
done | tee "$OUT"
python3 - "$OUT" <<'PY'
import re, statistics, sys
rows = open(sys.argv[1]).read().splitlines()
def med(who, name, t, key):
    v = [float(re.search(key + r" ([\d.]+)", l).group(1)) for l in rows
         if l.startswith(f"{who} {name} ") and f"threads={t} " in l]
    return statistics.median(v)
for name in sorted({l.split()[1] for l in rows}):
    for t in (1, 2):
        k = [med("kotae", name, t, k) for k in ("prompt", "decode", "ttft")]
        l = [med("llama.cpp", name, t, k) for k in ("prompt", "decode", "ttft")]
        print(f"{name} threads={t}: prompt {k[0]:.1f} vs {l[0]:.1f} tok/s ({k[0]/l[0]:.2f}x), "
              f"decode {k[1]:.1f} vs {l[1]:.1f} ({k[1]/l[1]:.2f}x), ttft {k[2]:.0f} vs {l[2]:.0f} ms")
PY
