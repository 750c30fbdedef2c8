"""sentence-transformers (PyTorch CPU) peer for `kotae-bench embed`: same model weights (exported
by `kotae-bench export-e5`), same passages (written by `kotae-bench embed --out`), same batch size.

    python scripts/bench/st_baseline.py target/bench/e5-hf target/bench/passages.json --threads 1
"""
import argparse, json, statistics, time

import torch
from sentence_transformers import SentenceTransformer

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("passages")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--repeats", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(a.threads)
model = SentenceTransformer(a.model_dir, device="cpu")
passages = ["passage: " + p for p in json.load(open(a.passages, encoding="utf-8"))]
model.encode(passages[: a.batch], batch_size=a.batch)
rates = []
for _ in range(a.repeats):
    t = time.perf_counter()
    model.encode(passages, batch_size=a.batch, normalize_embeddings=True)
    rates.append(len(passages) / (time.perf_counter() - t))
print(f"sentence-transformers torch={torch.__version__} threads={a.threads} passages={len(passages)} batch={a.batch} median_passages_per_s={statistics.median(rates):.2f}")
