#!/usr/bin/env bash
# What README's commands run (target/debug: the dev profile, whose dependencies and hot crates
# are fully optimized) against a release build, side by side, alternating: embedding
# (multilingual-e5-small, ~230-token passages) and generation (SmolLM2-135M and Qwen2.5 0.5B,
# ~1k-token prompt) at 1 and 2 threads. Prints medians and dev/release ratios.
#   cargo build --release -p kotae --bins   # once (~35 minutes on 2 cores)
#   scripts/bench/build_profiles.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
OUT=target/bench/build_profiles.txt
mkdir -p target/bench
for b in debug release; do
  [ -x "target/$b/kotae-bench" ] || { echo "target/$b/kotae-bench is missing: build it first" >&2; exit 2; }
done
grep -m1 "model name" /proc/cpuinfo | sed 's/^.*: /cpu: /'
: > "$OUT"
for t in 1 2; do
  for r in $(seq "$ROUNDS"); do
    for b in debug release; do
      "./target/$b/kotae-bench" --threads "$t" embed 2>/dev/null | tail -1 | sed "s/^/$b threads=$t /"
      for m in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct; do
        "./target/$b/kotae-bench" --threads "$t" generate --model "$m" --decode 32 --repeats 1 2>/dev/null \
          | tail -1 | sed "s/^/$b threads=$t $m /"
      done
    done
  done
done | tee "$OUT"
python3 - "$OUT" <<'PY'
import re, statistics, sys
rows = open(sys.argv[1]).read().splitlines()
def med(b, t, what, key):
    v = [float(m.group(1)) for l in rows if l.startswith(f"{b} threads={t} ") and what in l
         for m in [re.search(key + r"[= ]([\d.]+)", l)] if m]
    return statistics.median(v) if v else float("nan")
for t in (1, 2):
    d, r = med("debug", t, "embed model", "median_passages_per_s"), med("release", t, "embed model", "median_passages_per_s")
    print(f"threads={t} embed: dev {d:.2f} vs release {r:.2f} passages/s ({d/r:.2f}x)")
    for m in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        for key in ("prompt", "decode"):
            d, r = med("debug", t, m, key), med("release", t, m, key)
            print(f"threads={t} {m} {key}: dev {d:.1f} vs release {r:.1f} tok/s ({d/r:.2f}x)")
PY
