#!/usr/bin/env bash
# The GPU check, one short run on a machine with an NVIDIA GPU:
# 1. the GPU tests (kotae-adapt: CUDA logits equal the CPU's; a bf16 run trains);
# 2. LoRA training throughput and GPU memory, kotae vs Hugging Face PEFT + PyTorch on the same
#    GPU, the same weights, batches and settings, for Qwen2.5 0.5B and SmolLM2-135M, f32 and bf16.
# It runs the programs that scripts/gpu/build.sh left in target/gpu.tar.xz, built where no GPU
# is; the weights there are random, of the real shapes (random_weights.py), since the real ones
# cannot be copied to such a machine. Without them it builds here with cargo and nvcc and uses
# the installed models.
#   scripts/gpu/check.sh [steps]
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
for m in "${MODELS[@]}"; do
  for dt in f32 bf16; do
    name=$(basename "$m")
    peak "$BIN/kotae-bench" --threads 4 lora --base "$m" --device cuda --dtype "$dt" --steps "$STEPS" \
      --batch 8 --max-len 256 --out "$LOG/batches-$name.json" 2>&1 | grep -v "^\s*$" | tail -3
    dir=$m; [ -d "$m" ] || dir="${KOTAE_DATA_DIR:-kotae-data}/models/$m"
    gguf=""; [ -d "$m" ] || gguf=$(basename "$(ls "$dir"/*.gguf | head -1)")
    peak python3 scripts/bench/peft_baseline.py "$dir" "$gguf" "$LOG/batches-$name.json" --device cuda \
      --dtype "$dt" --threads 4 2>&1 | tail -2
  done
done
