#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (one short run): build with `cuda`, run the GPU tests, and
# the LoRA training benchmark of Qwen2.5 0.5B and SmolLM2 on the GPU (tokens/s, memory).
# Needs the CUDA toolkit (nvcc) and the test models (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
export KOTAE_DATA_DIR="${KOTAE_DATA_DIR:-$PWD/.cache/test-data}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cargo build --features cuda -p kotae --bins
cargo test --features cuda -p kotae-adapt --test it -- --test-threads=1
for m in qwen2.5-0.5b-instruct smollm2-135m-instruct; do
  for dt in f32 bf16; do
    ./target/debug/kotae-bench --threads 4 lora --base "$m" --device cuda --dtype "$dt" --steps 12 --batch 8 --max-len 256
  done
done
