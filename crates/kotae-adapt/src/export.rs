//! What a fine-tuning run leaves behind: the adapter in Hugging Face PEFT's layout, and the
//! merged model as a Hugging Face folder and as a quantized GGUF file, both servable by
//! `kotae serve`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use kotae_models::chat::PromptFormat;

use crate::lm::{gguf_name, permute_qk, Arch, BaseSource, LmConfig, TrainableLm};
use crate::{Error, Result};

/// PEFT's prefix for the tensors of a causal LM's adapter.
const PEFT_PREFIX: &str = "base_model.model.";

/// The PEFT tensor names of the adapter of module `path` (`model.layers.0.self_attn.q_proj`).
pub fn peft_names(path: &str) -> (String, String) {
    (format!("{PEFT_PREFIX}{path}.lora_A.weight"), format!("{PEFT_PREFIX}{path}.lora_B.weight"))
}

/// `adapter_config.json` (the fields PEFT's `LoraConfig` reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    pub task_type: String,
    pub base_model_name_or_path: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub bias: String,
    pub fan_in_fan_out: bool,
    pub inference_mode: bool,
    pub init_lora_weights: bool,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub modules_to_save: Option<Vec<String>>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub revision: Option<String>,
}

/// Write `adapter_model.safetensors` + `adapter_config.json`; weights of unfrozen layers go to
/// `unfrozen_weights.safetensors` under their model names (PEFT has no slot for them).
pub fn save_adapter(model: &TrainableLm, dir: &Path, base_name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (path, p) in &model.lora {
        let (a, b) = peft_names(path);
        map.insert(a, p.a.as_tensor().to_device(&Device::Cpu)?);
        map.insert(b, p.b.as_tensor().to_device(&Device::Cpu)?);
    }
    candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors"))?;
    if !model.full.is_empty() {
        let full: HashMap<String, Tensor> = model
            .full
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&full, dir.join("unfrozen_weights.safetensors"))?;
    }
    let cfg = PeftConfig {
        peft_type: "LORA".into(),
        task_type: "CAUSAL_LM".into(),
        base_model_name_or_path: base_name.into(),
        r: model.lora_cfg.r,
        lora_alpha: model.lora_cfg.alpha,
        lora_dropout: model.lora_cfg.dropout,
        target_modules: model.lora_cfg.target_modules.clone(),
        bias: "none".into(),
        fan_in_fan_out: false,
        inference_mode: true,
        init_lora_weights: true,
        use_rslora: false,
        use_dora: false,
        modules_to_save: None,
        layers_to_transform: None,
        revision: None,
    };
    let p = dir.join("adapter_config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&cfg)?).map_err(|e| Error::io(&p, e))
}

/// Read an adapter written by [`save_adapter`] (or by PEFT) into `model`, whose LoRA settings
/// must match.
pub fn load_adapter(model: &TrainableLm, dir: &Path) -> Result<PeftConfig> {
    let cp = dir.join("adapter_config.json");
    let cfg: PeftConfig = serde_json::from_str(&std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?)?;
    if cfg.r != model.lora_cfg.r || cfg.target_modules != model.lora_cfg.target_modules {
        return Err(Error::Config(format!(
            "the adapter in {} has r={} on {:?}; the model was set up with r={} on {:?}",
            dir.display(),
            cfg.r,
            cfg.target_modules,
            model.lora_cfg.r,
            model.lora_cfg.target_modules
        )));
    }
    let map = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), model.device())?;
    let mut values = HashMap::new();
    for path in model.lora.keys() {
        let (a, b) = peft_names(path);
        let get = |k: &str| {
            // PEFT writes names without the adapter name; some versions keep `.default`.
            map.get(k)
                .or_else(|| map.get(&k.replace(".weight", ".default.weight")))
                .cloned()
                .ok_or_else(|| Error::Config(format!("the adapter lacks {k}")))
        };
        values.insert(format!("lora.{path}.A"), get(&a)?);
        values.insert(format!("lora.{path}.B"), get(&b)?);
    }
    let full_path = dir.join("unfrozen_weights.safetensors");
    if full_path.exists() {
        for (n, t) in candle_core::safetensors::load(&full_path, model.device())? {
            values.insert(format!("full.{n}"), t);
        }
    }
    model.set_trainable(&values)?;
    Ok(cfg)
}

/// The merged model as a Hugging Face folder (config.json, tokenizer.json,
/// tokenizer_config.json with the chat template, model.safetensors in f32).
pub fn save_merged_hf(model: &TrainableLm, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = model.config();
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    for (n, t) in model.merged_weights()? {
        if cfg.tie_word_embeddings && n == "lm_head.weight" {
            continue;
        }
        weights.insert(n, t.to_device(&Device::Cpu)?);
    }
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))?;
    save_hf_metadata(cfg, &model.base.format, dir)
}

/// What a Hugging Face folder holds besides the weights: config.json, tokenizer.json and
/// tokenizer_config.json (chat template, special tokens).
pub fn save_hf_metadata(cfg: &LmConfig, fmt: &PromptFormat, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v)?).map_err(|e| Error::io(&p, e))
    };
    write("config.json", &cfg.to_hf_json())?;
    let (bos, eos) = fmt.special_tokens();
    write(
        "tokenizer_config.json",
        &serde_json::json!({
            "chat_template": fmt.chat_template(),
            "bos_token": if bos.is_empty() { serde_json::Value::Null } else { bos.into() },
            "eos_token": if eos.is_empty() { serde_json::Value::Null } else { eos.into() },
            "model_max_length": cfg.max_position_embeddings,
        }),
    )?;
    fmt.tokenizer()
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| Error::Config(format!("cannot write tokenizer.json: {e}")))?;
    Ok(())
}

/// The merged model as a GGUF file, matrices in Q8_0 (norms and rows whose width is not a
/// multiple of 32 stay f32), metadata (tokenizer, chat template) copied from the base GGUF.
pub fn save_merged_gguf(model: &TrainableLm, path: &Path) -> Result<()> {
    let BaseSource::Gguf(base_path) = &model.base.source else {
        return Err(Error::Config(
            "a GGUF export needs a GGUF base model (its tokenizer metadata is copied); use the Hugging Face folder"
                .into(),
        ));
    };
    let mut f = std::fs::File::open(base_path).map_err(|e| Error::io(base_path, e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| Error::invalid(base_path, e.to_string()))?;
    let cfg = model.config();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, w) in model.merged_weights()? {
        let Some(g) = gguf_name(&name) else { continue };
        if cfg.tie_word_embeddings && name == "lm_head.weight" {
            continue;
        }
        let mut w = w.to_device(&Device::Cpu)?;
        if cfg.arch == Arch::Llama {
            if name.ends_with("self_attn.q_proj.weight") {
                w = permute_qk(&w, cfg.num_heads, false)?;
            } else if name.ends_with("self_attn.k_proj.weight") {
                w = permute_qk(&w, cfg.num_kv_heads, false)?;
            }
        }
        let quantize = w.rank() == 2 && w.dim(1)? % 32 == 0;
        let q = QTensor::quantize(&w, if quantize { GgmlDType::Q8_0 } else { GgmlDType::F32 })?;
        tensors.push((g, q));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let md: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let tmp = path.with_extension("gguf.tmp");
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    gguf_file::write(&mut out, &md, &tr)?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
