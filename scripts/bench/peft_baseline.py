"""Hugging Face PEFT + PyTorch peer for `kotae-bench lora`: the same weights (a GGUF file
dequantized by transformers, or a Hugging Face folder: pass "" as gguf_file), the same tokenized
sequences and the same batches (written by `kotae-bench lora --out`), the same LoRA settings
and optimizer, on the CPU or a GPU.

    python scripts/bench/peft_baseline.py kotae-data/models/smollm2-135m-instruct \
        SmolLM2-135M-Instruct.Q4_1.gguf target/bench/lora-batches.json --threads 2
    python scripts/bench/peft_baseline.py target/gpu/qwen-shape "" batches.json --device cuda --dtype bf16
"""
import argparse, json, resource, statistics, time

import torch
from peft import LoraConfig, get_peft_model
import transformers
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("gguf_file")
ap.add_argument("batches")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--r", type=int, default=8)
ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
ap.add_argument("--device", default="cpu")
ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
ap.add_argument("--profile", type=int, default=0, help="then profile this many more steps (torch.profiler): the kernels' time")
a = ap.parse_args()
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
cuda = a.device.startswith("cuda")
def sync():
    if cuda:
        torch.cuda.synchronize()
torch.set_num_threads(a.threads)
torch.manual_seed(42)
data = json.load(open(a.batches))
kw = {"gguf_file": a.gguf_file} if a.gguf_file else {}
# transformers 4.56 renamed torch_dtype to dtype (an unknown keyword is silently ignored).
new_kw = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
kw["dtype" if new_kw else "torch_dtype"] = dtype
model = AutoModelForCausalLM.from_pretrained(a.model_dir, **kw).to(a.device)
cfg = LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.05, target_modules=a.targets.split(","), task_type="CAUSAL_LM")
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
pad = data["pad"]
rates = []
def step(batch):
    seqs = [data["seqs"][i] for i in batch]
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.tensor([s["ids"] + [pad] * (n - len(s["ids"])) for s in seqs], device=a.device)
    labels = torch.tensor([[t if k else -100 for t, k in zip(s["ids"], s["train"])] + [-100] * (n - len(s["ids"])) for s in seqs], device=a.device)
    real = sum(len(s["ids"]) for s in seqs)
    sync()
    t = time.perf_counter()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()
    sync()
    return real / (time.perf_counter() - t)
for batch in data["batches"]:
    rates.append(step(batch))
if a.profile:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for batch in data["batches"][: a.profile]:
            step(batch)
    ka = prof.key_averages()
    key = "self_cpu_time_total"
    if cuda:
        key = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    print(f"torch.profiler, {a.profile} steps, sorted by {key}:")
    print(ka.table(sort_by=key, row_limit=30, max_name_column_width=70))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
gpu = f" gpu_peak_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else ""
print(f"peft lora torch={torch.__version__} device={a.device} dtype={a.dtype} threads={a.threads} steps={len(rates)} trainable={trainable} median_tokens_per_s={statistics.median(rates[1:]):.1f} peak_rss_mib={peak:.0f}{gpu}")
