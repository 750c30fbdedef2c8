"""Check a Kotae LoRA run against Hugging Face PEFT: PEFT loads `adapter/` onto the base
(the same GGUF, dequantized by transformers), and its logits equal those of Kotae's merged
model (`merged/`, loaded by transformers) on a few sequences.

    python scripts/bench/peft_check.py kotae-data/models/smollm2-135m-instruct SmolLM2-135M-Instruct.Q4_1.gguf RUN_DIR
"""
import argparse, json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("gguf_file")
ap.add_argument("run_dir")
a = ap.parse_args()
torch.set_num_threads(2)
base = AutoModelForCausalLM.from_pretrained(a.model_dir, gguf_file=a.gguf_file, torch_dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(f"{a.run_dir}/merged")
texts = ["How do I book a meeting room?", "VPNに接続できません。どうすればいいですか？", "What is the API rate limit?"]
ids = [torch.tensor([tok(t)["input_ids"]]) for t in texts]
with torch.no_grad():
    before = [base(i).logits for i in ids]
    peft = PeftModel.from_pretrained(base, f"{a.run_dir}/adapter")
    peft.eval()
    with_adapter = [peft(i).logits for i in ids]
    merged = AutoModelForCausalLM.from_pretrained(f"{a.run_dir}/merged", torch_dtype=torch.float32)
    ours = [merged(i).logits for i in ids]
diff = max((p - o).abs().max().item() for p, o in zip(with_adapter, ours))
moved = max((p - b).abs().max().item() for p, b in zip(with_adapter, before))
cfg = json.load(open(f"{a.run_dir}/adapter/adapter_config.json"))
print(f"PEFT loaded the adapter (r={cfg['r']}, targets={cfg['target_modules']}); max |logit(PEFT base+adapter) - logit(kotae merged)| = {diff:.2e}; the adapter moves logits by up to {moved:.2f}")
assert diff < 1e-3, diff
assert moved > 1e-3, "the adapter changed nothing"
