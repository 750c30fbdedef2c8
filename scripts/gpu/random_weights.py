"""Fills a folder written by `kotae-bench shape-folder` with random weights of the model's
shapes (Hugging Face's own initialisation, seeded), so that training throughput can be measured
where the real weights cannot be copied to. Throughput depends on shapes, not values.

    python scripts/gpu/random_weights.py target/gpu/qwen-shape
"""
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

d = sys.argv[1]
torch.manual_seed(0)
cfg = AutoConfig.from_pretrained(d)
# transformers 4.56 renamed torch_dtype to dtype.
new_kw = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
model = AutoModelForCausalLM.from_config(cfg, **{"dtype" if new_kw else "torch_dtype": torch.bfloat16})
# save_pretrained would rewrite config.json; keep the one kotae wrote.
from safetensors.torch import save_file
state = {k: v.contiguous() for k, v in model.state_dict().items()}
if cfg.tie_word_embeddings:
    state.pop("lm_head.weight", None)
save_file(state, f"{d}/model.safetensors", metadata={"format": "pt"})
print(f"{d}: {sum(v.numel() for v in state.values()) / 1e6:.0f}M random parameters (bf16)")
