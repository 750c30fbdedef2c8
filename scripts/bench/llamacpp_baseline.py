"""llama.cpp peer for `kotae-bench generate`: the same GGUF, the same rendered prompt, greedy.

    python scripts/bench/llamacpp_baseline.py MODEL.gguf PROMPT.txt --threads 1 --decode 64 --repeats 3

Prints prompt processing tok/s, decode tok/s and time to first token (medians), measured the
same way as kotae-bench: prompt rate = prompt tokens / time to first token, decode rate =
(tokens - 1) / time after the first token.
"""
import argparse
import statistics
import time

from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prompt")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--decode", type=int, default=64)
ap.add_argument("--repeats", type=int, default=3)
a = ap.parse_args()

prompt = open(a.prompt, encoding="utf-8").read()
llm = Llama(model_path=a.model, n_ctx=4096, n_threads=a.threads, n_threads_batch=a.threads, n_batch=512, verbose=False)
n_prompt = len(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
pp, tg, ttft = [], [], []
for _ in range(a.repeats):
    llm.reset()
    t0 = time.perf_counter()
    first = None
    n = 0
    for _chunk in llm.create_completion(prompt, max_tokens=a.decode, temperature=0.0, stream=True):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    pp.append(n_prompt / (first - t0))
    tg.append((n - 1) / max(end - first, 1e-9))
    ttft.append((first - t0) * 1e3)
    print(f"  prompt {n_prompt} tok {pp[-1]:.1f} tok/s, decode {n} tok {tg[-1]:.1f} tok/s, ttft {ttft[-1]:.0f} ms")
print(
    f"llama.cpp threads={a.threads} prompt_tokens={n_prompt}: prompt {statistics.median(pp):.1f} tok/s, "
    f"decode {statistics.median(tg):.1f} tok/s, ttft {statistics.median(ttft):.0f} ms (medians of {a.repeats})"
)
