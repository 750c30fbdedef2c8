#!/usr/bin/env bash
# LoRA training throughput and peak memory, kotae vs Hugging Face PEFT + PyTorch, run
# alternately (this machine is noisy) on the same weights, sequences, batches and settings.
#   scripts/bench/lora_vs_peft.sh [rounds] [threads] [python]
set -euo pipefail
cd "$(dirname "$0")/../.."
# The build measured: target/debug (what README's commands run) unless KOTAE_BENCH names another
# (KOTAE_BENCH=target/release/kotae-bench); kotae-bench says which build it is on stderr.
BENCH="${KOTAE_BENCH:-./target/debug/kotae-bench}"
ROUNDS="${1:-3}"; THREADS="${2:-2}"; PY="${3:-python3}"
MODEL_DIR="${KOTAE_DATA_DIR:-kotae-data}/models/smollm2-135m-instruct"
mkdir -p target/bench
for r in $(seq "$ROUNDS"); do
  "$BENCH" --threads "$THREADS" lora --steps 10 --out target/bench/lora-batches.json | tail -1
  "$PY" scripts/bench/peft_baseline.py "$MODEL_DIR" SmolLM2-135M-Instruct.Q4_1.gguf target/bench/lora-batches.json --threads "$THREADS" 2>/dev/null | tail -1
done | tee target/bench/lora_vs_peft.txt
python3 - <<'PY'
import re, statistics
rows = open("target/bench/lora_vs_peft.txt").read().splitlines()
def med(prefix, key):
    v = [float(re.search(key + r"=([\d.]+)", l).group(1)) for l in rows if l.startswith(prefix)]
    return statistics.median(v)
k, p = med("kotae", "median_tokens_per_s"), med("peft", "median_tokens_per_s")
km, pm = med("kotae", "peak_rss_mib"), med("peft", "peak_rss_mib")
print(f"median over rounds: kotae {k:.1f} tok/s, {km:.0f} MiB; peft {p:.1f} tok/s, {pm:.0f} MiB; speed ratio {k/p:.2f}, memory ratio {km/pm:.2f}")
PY
