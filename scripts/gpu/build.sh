#!/usr/bin/env bash
# Builds the GPU check (scripts/gpu/check.sh) where there is no GPU and no CUDA installation,
# for a GPU machine that has the NVIDIA driver and CUDA 13 libraries but no Rust toolchain:
# - CUDA 13's compiler, headers and libraries come from NVIDIA's PyPI wheels (into target/cuda13);
# - the driver library (libcuda, present only where a GPU is) is replaced at link time by a stub
#   that defines its symbols; the real one is loaded at run time;
# - kernels are compiled for CUDA_COMPUTE_CAP (default 90: H100/H200).
# Output: target/gpu.tar.xz (~35 MB), packing target/gpu/: the programs, stripped, and weightless
# Hugging Face folders of the two generators (`kotae-bench shape-folder`, which reads the
# installed GGUF files: `kotae models fetch` them first), for check.sh to run from.
#   scripts/gpu/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CUDA="$PWD/target/cuda13"
if [ ! -x "$CUDA/bin/nvcc" ]; then
  mkdir -p target/cuda-wheels "$CUDA"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d target/cuda-wheels \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.*" "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.0.*"
  tmp=$(mktemp -d)
  for w in target/cuda-wheels/*.whl; do unzip -q -o "$w" -d "$tmp"; done
  cp -a "$tmp"/nvidia/cu13/. "$CUDA"/
  rm -rf "$tmp"
  (cd "$CUDA/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done && ln -sf libcurand.so.10 libcurand.so)
  # Link-time stand-in for the driver: every cu* function cudarc declares, empty.
  sys=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*/cudarc-0.19.*/src/driver/sys/mod.rs' | head -1)
  grep -oE "^\s+(pub )?fn cu[A-Za-z0-9_]*\(" "$sys" | grep -oE "cu[A-Za-z0-9_]+" | sort -u |
    sed 's/.*/void &(void) {}/' > target/cuda13/cuda_stub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/libcuda.so" target/cuda13/cuda_stub.c
  ln -sf libcuda.so "$CUDA/lib/libcuda.so.1"
fi
export CUDA_PATH="$CUDA" CUDA_HOME="$CUDA" PATH="$CUDA/bin:$PATH" CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cargo build --features cuda -p kotae --bin kotae-bench
test_bin=$(cargo test --features cuda -p kotae-adapt --test it --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it": print(m["executable"])' | tail -1)
rm -rf target/gpu && mkdir -p target/gpu/bin
strip -o target/gpu/bin/kotae-bench target/debug/kotae-bench
strip -o target/gpu/bin/adapt-it "$test_bin"
for m in qwen2.5-coder-0.5b-instruct smollm2-135m-instruct; do
  LD_LIBRARY_PATH="$CUDA/lib" ./target/debug/kotae-bench shape-folder --base "$m" --out "target/gpu/$m"
done
# One compressed file to copy (the programs hold the CUDA kernels: ~200 MB, ~35 MB packed).
tar -C target -cf - gpu | xz -T0 -6 > target/gpu.tar.xz
du -sh target/gpu/* target/gpu.tar.xz
