"""Hugging Face PEFT + PyTorch (CPU) peer for `kotae-bench lora`: the same GGUF weights
(dequantized by transformers), the same tokenized sequences and the same batches (written by
`kotae-bench lora --out`), the same LoRA settings and optimizer.

    python scripts/bench/peft_baseline.py kotae-data/models/smollm2-135m-instruct \
        SmolLM2-135M-Instruct.Q4_1.gguf target/bench/lora-batches.json --threads 2
"""
import argparse, json, resource, statistics, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("gguf_file")
ap.add_argument("batches")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--r", type=int, default=8)
ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(42)
data = json.load(open(a.batches))
model = AutoModelForCausalLM.from_pretrained(a.model_dir, gguf_file=a.gguf_file, torch_dtype=torch.float32)
cfg = LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.05, target_modules=a.targets.split(","), task_type="CAUSAL_LM")
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
pad = data["pad"]
rates = []
for batch in data["batches"]:
    seqs = [data["seqs"][i] for i in batch]
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.tensor([s["ids"] + [pad] * (n - len(s["ids"])) for s in seqs])
    labels = torch.tensor([[t if k else -100 for t, k in zip(s["ids"], s["train"])] + [-100] * (n - len(s["ids"])) for s in seqs])
    real = sum(len(s["ids"]) for s in seqs)
    t = time.perf_counter()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()
    rates.append(real / (time.perf_counter() - t))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"peft lora torch={torch.__version__} threads={a.threads} steps={len(rates)} trainable={trainable} median_tokens_per_s={statistics.median(rates[1:]):.1f} peak_rss_mib={peak:.0f}")
