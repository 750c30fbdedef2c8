#!/usr/bin/env bash
# The GPU check, one short run on a machine with an NVIDIA GPU:
# 1. the GPU tests (kotae-adapt: CUDA logits equal the CPU's; a bf16 run trains);
# 2. LoRA training throughput and GPU memory, kotae vs Hugging Face PEFT + PyTorch on the same
#    GPU, the same weights, batches and settings, for Qwen2.5 0.5B and SmolLM2-135M, f32 and bf16:
#    ROUNDS (default 2) alternating rounds, medians and ratios in a table at the end, and kotae
#    with candle's composed ops (its training before graph_ops) once each.
# It runs the programs that scripts/gpu/build.sh left in target/gpu.tar.xz, built where no GPU
# is; the weights there are random, of the real shapes (random_weights.py), since the real ones
# cannot be copied to such a machine. Without them it builds here with cargo and nvcc and uses
# the installed models.
# PROFILE=1 first shows where a step's time goes on Qwen, f32 and bf16: kotae's spans
# (kotae-bench lora --profile), PEFT's kernels (torch.profiler) and, where nsys is installed,
# kotae's kernels (PROFILE_PEFT=0: kotae's spans only). ROUNDS=0 skips the table.
#   ROUNDS=2 [PROFILE=1] scripts/gpu/check.sh [steps]
set -uo pipefail
cd "$(dirname "$0")/../.."
STEPS="${1:-12}"
LOG="${OUT:-target/gpu}"
mkdir -p "$LOG"
[ -f target/gpu.tar.xz ] && [ ! -d target/gpu/bin ] && tar -C target -xJf target/gpu.tar.xz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ -x target/gpu/bin/kotae-bench ]; then
  BIN=$PWD/target/gpu/bin
  lib=$(python3 -c 'import nvidia.cu13 as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null ||
    dirname "$(find /opt /usr -name libcublas.so.13 2>/dev/null | head -1)")
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  MODELS=(target/gpu/qwen2.5-coder-0.5b-instruct target/gpu/smollm2-135m-instruct)
  for m in "${MODELS[@]}"; do python3 scripts/gpu/random_weights.py "$m"; done
  (cd crates/kotae-adapt && "$BIN/adapt-it" cuda --test-threads=1)
else
  cargo build --features cuda -p kotae --bin kotae-bench || exit 1
  BIN=$PWD/target/debug
  MODELS=(qwen2.5-coder-0.5b-instruct smollm2-135m-instruct)
  cargo test --features cuda -p kotae-adapt --test it -- cuda --test-threads=1
fi
echo "tests: exit $?"
# Peak GPU memory of one command, read the same way for both (nvidia-smi, every 100 ms).
peak() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$LOG/mem.txt" &
  local smi=$!
  "$@"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  echo "  peak GPU memory (nvidia-smi): $(sort -n "$LOG/mem.txt" | tail -1) MiB"
  return $rc
}
# Each (model, dtype): ROUNDS alternating rounds of kotae and PEFT on the same batches, then one
# run of kotae with candle's composed ops (--graph-ops false: how kotae trained before). Every
# line goes to $LOG/results.txt; the summary prints medians and ratios.
ROUNDS="${ROUNDS:-2}"
if [ "${PROFILE:-0}" = 1 ]; then
  m=${MODELS[0]}; name=$(basename "$m")
  dir=$m; [ -d "$m" ] || dir="${KOTAE_DATA_DIR:-kotae-data}/models/$m"
  gguf=""; [ -d "$m" ] || gguf=$(basename "$(ls "$dir"/*.gguf | head -1)")
  for dt in f32 bf16; do
    echo "== profile $name $dt: kotae"
    "$BIN/kotae-bench" --threads 4 lora --base "$m" --device cuda --dtype "$dt" --steps 6 --batch 8 --max-len 256 \
      --profile --out "$LOG/batches-$name.json" 2>&1 | grep -v "^\s*$" | tail -24
    [ "${PROFILE_PEFT:-1}" = 1 ] || continue
    echo "== profile $name $dt: PEFT"
    python3 scripts/bench/peft_baseline.py "$dir" "$gguf" "$LOG/batches-$name.json" --device cuda --dtype "$dt" \
      --threads 4 --profile 3 2>&1 | grep -v "^\s*$" | tail -40
    if command -v nsys > /dev/null; then
      echo "== nsys $name $dt: kotae's kernels"
      nsys profile -o "$LOG/kotae-$dt" --force-overwrite true "$BIN/kotae-bench" --threads 4 lora --base "$m" \
        --device cuda --dtype "$dt" --steps 4 --batch 8 --max-len 256 > /dev/null 2>&1
      nsys stats -r cuda_gpu_kern_sum "$LOG/kotae-$dt.nsys-rep" 2>/dev/null | cut -c1-200 | head -30
      rm -f "$LOG"/kotae-"$dt".*
    fi
  done
fi
[ "$ROUNDS" = 0 ] && exit 0
: > "$LOG/results.txt"
record() { # tool model dtype -- command...
  local tool=$1 model=$2 dt=$3; shift 4
  local out; out=$(peak "$@" 2>&1 | grep -v "^\s*$" | tail -3)
  echo "$out"
  local rate mem
  rate=$(echo "$out" | grep -oE "median_tokens_per_s=[0-9.]+" | cut -d= -f2)
  mem=$(echo "$out" | grep -oE "peak GPU memory \(nvidia-smi\): [0-9]+" | grep -oE "[0-9]+$")
  echo "$tool $model $dt ${rate:-nan} ${mem:-nan}" >> "$LOG/results.txt"
}
for m in "${MODELS[@]}"; do
  name=$(basename "$m")
  dir=$m; [ -d "$m" ] || dir="${KOTAE_DATA_DIR:-kotae-data}/models/$m"
  gguf=""; [ -d "$m" ] || gguf=$(basename "$(ls "$dir"/*.gguf | head -1)")
  for dt in f32 bf16; do
    for round in $(seq "$ROUNDS"); do
      echo "== $name $dt round $round"
      record kotae "$name" "$dt" -- "$BIN/kotae-bench" --threads 4 lora --base "$m" --device cuda --dtype "$dt" \
        --steps "$STEPS" --batch 8 --max-len 256 --out "$LOG/batches-$name.json"
      record peft "$name" "$dt" -- python3 scripts/bench/peft_baseline.py "$dir" "$gguf" "$LOG/batches-$name.json" \
        --device cuda --dtype "$dt" --threads 4
    done
    echo "== $name $dt candle's composed ops"
    record kotae-composed "$name" "$dt" -- "$BIN/kotae-bench" --threads 4 lora --base "$m" --device cuda --dtype "$dt" \
      --steps "$STEPS" --batch 8 --max-len 256 --graph-ops false
  done
done
python3 - "$LOG/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def med(tool, m, dt, i):
    v = [float(r[i]) for r in rows if r[:3] == [tool, m, dt] and r[i] != "nan"]
    return statistics.median(v) if v else float("nan")
print("| model | dtype | kotae tok/s | PEFT tok/s | ratio | kotae peak MiB | PEFT peak MiB | ratio | composed ops: tok/s, MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for m, dt in dict.fromkeys((r[1], r[2]) for r in rows):
    k, p, c = (med(t, m, dt, 3) for t in ("kotae", "peft", "kotae-composed"))
    km, pm, cm = (med(t, m, dt, 4) for t in ("kotae", "peft", "kotae-composed"))
    print(f"| {m} | {dt} | {k:.0f} | {p:.0f} | {k / p:.2f}x | {km:.0f} | {pm:.0f} | {km / pm:.2f}x | {c:.0f}, {cm:.0f} |")
PY
