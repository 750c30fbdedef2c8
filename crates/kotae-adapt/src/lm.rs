//! A causal language model (Llama family, Qwen2) written for training: every operation on
//! the training path is composed from candle ops that have a backward pass (candle's fused
//! softmax, RMSNorm and rotary kernels have none), with LoRA adapters on chosen linear layers
//! and optionally whole layers unfrozen.
//!
//! Weights live under their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, …)
//! in the Hugging Face layout, whichever file they came from: a GGUF file is dequantized and
//! the Llama query/key rows, which llama.cpp permutes for its interleaved rotary embedding,
//! are put back in order. Exports go back to either layout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, Var};
use kotae_models::chat::PromptFormat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Shape and constants of a decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl LmConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// `config.json` of the Hugging Face model class.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (class, extra) = match self.arch {
            Arch::Llama => ("LlamaForCausalLM", serde_json::json!({"attention_bias": false, "mlp_bias": false})),
            Arch::Qwen2 => (
                "Qwen2ForCausalLM",
                serde_json::json!({"use_sliding_window": false, "sliding_window": self.max_position_embeddings, "max_window_layers": self.num_layers}),
            ),
        };
        let mut v = serde_json::json!({
            "architectures": [class],
            "model_type": self.arch.as_str(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    fn from_hf_json(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let arch = match v["model_type"].as_str().unwrap_or_default() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(Error::invalid(path, format!("model_type '{other}' is not supported (llama, qwen2)"))),
        };
        let n = |k: &str| -> Result<usize> {
            v[k].as_u64().map(|x| x as usize).ok_or_else(|| Error::invalid(path, format!("config.json lacks {k}")))
        };
        let heads = n("num_attention_heads")?;
        Ok(Self {
            arch,
            vocab_size: n("vocab_size")?,
            hidden_size: n("hidden_size")?,
            intermediate_size: n("intermediate_size")?,
            num_layers: n("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: v["num_key_value_heads"].as_u64().map(|x| x as usize).unwrap_or(heads),
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
            max_position_embeddings: n("max_position_embeddings").unwrap_or(2048),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_id: v["eos_token_id"].as_u64().map(|x| x as u32),
        })
    }
}

/// Where the base weights came from (exports reuse it).
#[derive(Debug, Clone)]
pub enum BaseSource {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

/// Frozen pretrained weights with their tokenizer and chat template.
pub struct BaseModel {
    pub config: LmConfig,
    /// Hugging Face names and layout.
    pub weights: HashMap<String, Tensor>,
    pub format: PromptFormat,
    pub source: BaseSource,
}

/// GGUF tensor name → Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let m = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{m}.{kind}"))
}

/// Hugging Face name → GGUF tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let m = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{m}.{kind}"))
}

/// llama.cpp stores Llama query/key rows of each head as (pairs, 2) instead of (2, half):
/// `reverse` turns its order back into Hugging Face's, otherwise the other way.
pub fn permute_qk(w: &Tensor, heads: usize, reverse: bool) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = out / heads;
    let t = if reverse {
        w.reshape((heads, hd / 2, 2, rest))?.transpose(1, 2)?
    } else {
        w.reshape((heads, 2, hd / 2, rest))?.transpose(1, 2)?
    };
    Ok(t.contiguous()?.reshape(dims)?)
}

impl BaseModel {
    /// A GGUF file (dequantized to f32) or a Hugging Face–style folder.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path, device)
        } else {
            Self::from_gguf(path, device)
        }
    }

    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let c = gguf_file::Content::read(&mut f).map_err(|e| Error::invalid(path, e.to_string()))?;
        let md = |k: &str| c.metadata.get(k);
        let arch_s = md("general.architecture").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
        let arch = match arch_s.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::invalid(path, format!("architecture '{other}' is not supported (llama, qwen2)")))
            }
        };
        let u = |k: &str| -> Result<usize> {
            md(&format!("{arch_s}.{k}"))
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .ok_or_else(|| Error::invalid(path, format!("GGUF metadata lacks {arch_s}.{k}")))
        };
        let fl =
            |k: &str, d: f64| md(&format!("{arch_s}.{k}")).and_then(|v| v.to_f32().ok()).map(f64::from).unwrap_or(d);
        let heads = u("attention.head_count")?;
        let mut weights = HashMap::new();
        for name in c.tensor_infos.keys() {
            let Some(hf) = hf_name(name) else { continue };
            let q = c.tensor(&mut f, name, &Device::Cpu)?;
            weights.insert(hf, q.dequantize(&Device::Cpu)?);
        }
        let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
        if arch == Arch::Llama {
            for (name, w) in weights.iter_mut() {
                if name.ends_with("self_attn.q_proj.weight") {
                    *w = permute_qk(w, heads, true)?;
                } else if name.ends_with("self_attn.k_proj.weight") {
                    *w = permute_qk(w, kv_heads, true)?;
                }
            }
        }
        let embed =
            weights.get("model.embed_tokens.weight").ok_or_else(|| Error::invalid(path, "no token_embd.weight"))?;
        let (vocab_size, hidden_size) = embed.dims2()?;
        let tok = kotae_models::gguf_tokenizer::from_gguf(&c, path)?;
        let config = LmConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            rms_norm_eps: fl("attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta: fl("rope.freq_base", 10_000.0),
            max_position_embeddings: u("context_length").unwrap_or(2048),
            tie_word_embeddings: !weights.contains_key("lm_head.weight"),
            bos_token_id: tok.bos_id,
            eos_token_id: tok.eos_id,
        };
        let format = PromptFormat::new(
            tok.tokenizer,
            tok.chat_template.as_deref(),
            tok.bos_id,
            tok.eos_id,
            config.max_position_embeddings,
            &path.display().to_string(),
        )?;
        let weights = to_device(weights, device)?;
        Ok(Self { config, weights, format, source: BaseSource::Gguf(path.to_path_buf()) })
    }

    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg_json, format) = kotae_models::generate::read_hf_folder(dir)?;
        let mut config = LmConfig::from_hf_json(&cfg_json, &dir.join("config.json"))?;
        config.bos_token_id = format.bos_id().or(config.bos_token_id);
        config.eos_token_id = format.eos_id().or(config.eos_token_id);
        let weights = kotae_models::generate::load_safetensors_dir(dir, device)?;
        Ok(Self { config, weights, format, source: BaseSource::HfDir(dir.to_path_buf()) })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.weights.get(name).ok_or_else(|| Error::Config(format!("the base model has no tensor {name}")))
    }
}

fn to_device(w: HashMap<String, Tensor>, device: &Device) -> Result<HashMap<String, Tensor>> {
    if device.is_cpu() {
        return Ok(w);
    }
    w.into_iter().map(|(k, v)| Ok((k, v.to_device(device)?))).collect()
}

/// Linear layers LoRA may target, by their Hugging Face short names.
pub const LINEAR_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn module_path(layer: usize, short: &str) -> String {
    let group = if ["gate_proj", "up_proj", "down_proj"].contains(&short) { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{group}.{short}")
}

/// LoRA settings (PEFT's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    /// Decoder layers whose weights are trained in full (besides the adapters).
    pub unfreeze_layers: Vec<usize>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            unfreeze_layers: Vec::new(),
        }
    }
}

impl LoraConfig {
    pub fn validate(&self, cfg: &LmConfig) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Config("LoRA rank r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("LoRA dropout {} must be in [0, 1)", self.dropout)));
        }
        for m in &self.target_modules {
            if !LINEAR_MODULES.contains(&m.as_str()) {
                return Err(Error::Config(format!(
                    "unknown target module '{m}'; choose from {}",
                    LINEAR_MODULES.join(", ")
                )));
            }
        }
        if let Some(l) = self.unfreeze_layers.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(Error::Config(format!("cannot unfreeze layer {l}: the model has {} layers", cfg.num_layers)));
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// One adapter: `W x + scale · B A x`, `A: [r, in]`, `B: [out, r]`.
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

/// A base model with trainable adapters and unfrozen weights.
pub struct TrainableLm {
    pub base: BaseModel,
    pub lora_cfg: LoraConfig,
    /// Module path (`model.layers.0.self_attn.q_proj`) → adapter.
    pub lora: BTreeMap<String, LoraPair>,
    /// Unfrozen weights by name (they shadow the base weights).
    pub full: BTreeMap<String, Var>,
    /// Compute dtype of the base weights and activations (f32 on CPU).
    pub dtype: DType,
    /// Attention of a batch's sequences padded into one `[b, heads, t, t]` product, rather
    /// than one sequence at a time over the packed rows. The default on GPUs, where the cost
    /// of a step is the number of kernel launches (and allocations), not the arithmetic; on the
    /// CPU the packed form saves the padding's work and uses the fused ops.
    pub batched_attention: bool,
    /// Train with [`crate::graph_ops`]: frozen matmuls without weight gradients, attention
    /// recomputed in the backward pass, fused RMSNorm and cross-entropy, byte dropout masks.
    /// The default on CUDA, where candle's composed ops kept 1.4–1.7× PEFT's GPU memory; the
    /// CPU has its own fused kernels (`crate::ops`). Dropout masks then come from the device's
    /// generator, not from the training seed.
    pub graph_ops: bool,
    /// The causal mask of [`crate::graph_ops::attention`] for the longest sequence so far
    /// (shorter ones take its top-left corner), made once rather than in every layer.
    mask: std::sync::Mutex<Option<Tensor>>,
    device: Device,
    cos: Tensor,
    sin: Tensor,
}

/// What `forward` may randomize (LoRA dropout), from a seeded generator so that a resumed run
/// draws the same masks.
pub struct Dropout<'a> {
    pub rng: &'a mut StdRng,
}

/// Where packed rows go in a padded `[b, t_max]` layout and back.
struct Padding {
    batch: usize,
    t_max: usize,
    /// `[b·t_max]`: the packed row each padded position reads (its sequence's last row past
    /// the end).
    gather: Tensor,
    /// `[n]`: the padded position of each packed row.
    scatter: Tensor,
}

impl Padding {
    fn new(lens: &[usize], device: &Device) -> Result<Self> {
        if lens.contains(&0) {
            return Err(Error::Config("an empty sequence in a batch".into()));
        }
        let t_max = lens.iter().copied().max().unwrap_or(0);
        let (mut gather, mut scatter) = (Vec::with_capacity(lens.len() * t_max), Vec::new());
        let mut off = 0;
        for (s, &len) in lens.iter().enumerate() {
            for p in 0..t_max {
                gather.push((off + p.min(len - 1)) as u32);
            }
            scatter.extend((0..len).map(|p| (s * t_max + p) as u32));
            off += len;
        }
        let (g, n) = (gather.len(), scatter.len());
        Ok(Self {
            batch: lens.len(),
            t_max,
            gather: Tensor::from_vec(gather, g, device)?,
            scatter: Tensor::from_vec(scatter, n, device)?,
        })
    }
}

impl TrainableLm {
    /// Adapters initialised as PEFT does (A Kaiming-uniform, B zero: the model starts equal to
    /// the base), from `seed`.
    pub fn new(base: BaseModel, lora_cfg: LoraConfig, dtype: DType, seed: u64) -> Result<Self> {
        lora_cfg.validate(&base.config)?;
        let device = base.weights.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut lora = BTreeMap::new();
        for layer in 0..base.config.num_layers {
            for short in &lora_cfg.target_modules {
                let path = module_path(layer, short);
                let w = base.get(&format!("{path}.weight"))?;
                let (out, inp) = w.dims2()?;
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..lora_cfg.r * inp).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (lora_cfg.r, inp), &device)?)?;
                let b = Var::zeros((out, lora_cfg.r), DType::F32, &device)?;
                lora.insert(path, LoraPair { a, b });
            }
        }
        let mut full = BTreeMap::new();
        for &layer in &lora_cfg.unfreeze_layers {
            let prefix = format!("model.layers.{layer}.");
            let mut names: Vec<&String> = base.weights.keys().filter(|k| k.starts_with(&prefix)).collect();
            names.sort();
            for n in names {
                full.insert(n.clone(), Var::from_tensor(&base.weights[n].to_dtype(DType::F32)?)?);
            }
        }
        let mut base = base;
        if dtype != DType::F32 {
            for w in base.weights.values_mut() {
                *w = w.to_dtype(dtype)?;
            }
        }
        let cfg = &base.config;
        let hd = cfg.head_dim();
        let max = cfg.max_position_embeddings.min(8192);
        let inv: Vec<f32> =
            (0..hd / 2).map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32)).collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), &device)?;
        let t = Tensor::arange(0u32, max as u32, &device)?.to_dtype(DType::F32)?.reshape((max, 1))?;
        let freqs = t.matmul(&inv)?;
        let cos = freqs.cos()?.to_dtype(dtype)?;
        let sin = freqs.sin()?.to_dtype(dtype)?;
        let batched_attention = !device.is_cpu();
        let graph_ops = device.is_cuda();
        let mask = Default::default();
        Ok(Self { base, lora_cfg, lora, full, dtype, batched_attention, graph_ops, mask, device, cos, sin })
    }

    pub fn config(&self) -> &LmConfig {
        &self.base.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every trainable tensor by a stable name (`lora.<module>.A|B`, `full.<weight>`).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (m, p) in &self.lora {
            v.push((format!("lora.{m}.A"), p.a.clone()));
            v.push((format!("lora.{m}.B"), p.b.clone()));
        }
        for (n, w) in &self.full {
            v.push((format!("full.{n}"), w.clone()));
        }
        v
    }

    pub fn trainable_parameters(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn weight(&self, name: &str) -> Result<Tensor> {
        if let Some(v) = self.full.get(name) {
            return Ok(v.as_tensor().to_dtype(self.dtype)?);
        }
        Ok(self.base.get(name)?.clone())
    }

    fn opt_weight(&self, name: &str) -> Result<Option<Tensor>> {
        if self.full.contains_key(name) || self.base.weights.contains_key(name) {
            Ok(Some(self.weight(name)?))
        } else {
            Ok(None)
        }
    }

    /// `x · Wᵀ`, through [`FrozenLinear`] when `W` is frozen and the op can run there.
    fn matmul_t(&self, x: &Tensor, w: &Tensor, frozen: bool) -> Result<Tensor> {
        if frozen && self.graph_ops {
            return Ok(crate::graph_ops::frozen_matmul_t(x, w)?);
        }
        if frozen && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            return Ok(x.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })?);
        }
        Ok(x.matmul(&w.t()?)?)
    }

    /// `x: [n, in]` through a linear layer with its adapter.
    fn linear(&self, path: &str, x: &Tensor, dropout: &mut Option<Dropout>) -> Result<Tensor> {
        let wname = format!("{path}.weight");
        let w = self.weight(&wname)?;
        let frozen = !self.full.contains_key(&wname);
        if let (Some(p), true, true) = (self.lora.get(path), frozen, self.graph_ops) {
            let _p = crate::profile::span(&self.device, "fwd:lora-linear");
            let bias = self.opt_weight(&format!("{path}.bias"))?;
            let p_drop = self.lora_cfg.dropout as f32;
            let drop = dropout.as_ref().map(|_| p_drop);
            let adapter = (p.a.as_tensor(), p.b.as_tensor(), self.lora_cfg.scale());
            return Ok(crate::graph_ops::lora_linear(x, &w, bias.as_ref(), adapter, drop)?);
        }
        let mm = crate::profile::span(&self.device, "fwd:matmul");
        let mut y = self.matmul_t(x, &w, frozen)?;
        drop(mm);
        if let Some(b) = self.opt_weight(&format!("{path}.bias"))? {
            let _p = crate::profile::span(&self.device, "fwd:bias");
            y = y.broadcast_add(&b)?;
        }
        if let Some(p) = self.lora.get(path) {
            let _p = crate::profile::span(&self.device, "fwd:lora");
            let p_drop = self.lora_cfg.dropout;
            let xd = match dropout {
                Some(_) if p_drop > 0.0 && self.graph_ops => crate::graph_ops::dropout(x, p_drop as f32)?,
                Some(d) if p_drop > 0.0 => crate::ops::dropout(x, p_drop as f32, d.rng.random::<u64>())?,
                _ => x.clone(),
            };
            let a = p.a.as_tensor().to_dtype(self.dtype)?;
            let b = p.b.as_tensor().to_dtype(self.dtype)?;
            let delta = xd.matmul(&a.t()?)?.matmul(&b.t()?)?;
            y = (y + (delta * self.lora_cfg.scale())?)?;
        }
        Ok(y)
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.weight(name)?;
        let eps = self.base.config.rms_norm_eps as f32;
        let _p = crate::profile::span(&self.device, "fwd:rms-norm");
        if self.graph_ops {
            return Ok(crate::graph_ops::rms_norm(x, &w, eps)?);
        }
        Ok(crate::ops::rms_norm(x, &w, eps)?)
    }

    /// Final hidden states `[b, t, hidden]` of token ids `[b, t]` (rows of equal length).
    pub fn hidden(&self, ids: &Tensor, dropout: Option<Dropout>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?.to_vec1::<u32>()?;
        Ok(self.hidden_packed(&flat, &vec![t; b], dropout)?.reshape((b, t, self.base.config.hidden_size))?)
    }

    /// Final hidden states `[Σ lens, hidden]` of sequences packed end to end (no padding):
    /// projections, MLPs and norms run on all tokens at once, attention per sequence (causal,
    /// positions from 0).
    pub fn hidden_packed(&self, ids: &[u32], lens: &[usize], mut dropout: Option<Dropout>) -> Result<Tensor> {
        let cfg = &self.base.config;
        let n: usize = lens.iter().sum();
        if n != ids.len() || n == 0 {
            return Err(Error::Config(format!("{} token ids for sequence lengths summing to {n}", ids.len())));
        }
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim());
        let embed = self.weight("model.embed_tokens.weight")?;
        // The embedding table is frozen: nothing flows back into it.
        let ids = Tensor::from_slice(ids, n, &self.device)?;
        let mut h = embed.index_select(&ids, 0)?.detach(); // [n, hidden]
        let scale = 1.0 / (hd as f64).sqrt();
        let pads = if self.batched_attention { Some(Padding::new(lens, &self.device)?) } else { None };
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let x = self.rms_norm(&h, &format!("{p}.input_layernorm.weight"))?;
            let q = self.linear(&format!("{p}.self_attn.q_proj"), &x, &mut dropout)?;
            let k = self.linear(&format!("{p}.self_attn.k_proj"), &x, &mut dropout)?;
            let v = self.linear(&format!("{p}.self_attn.v_proj"), &x, &mut dropout)?;
            let att = crate::profile::span(&self.device, "fwd:attention");
            let o = if self.batched_attention {
                self.attention_padded(&q, &k, &v, pads.as_ref().expect("padding indices"), scale)?
            } else {
                let mut outs = Vec::with_capacity(lens.len());
                let mut off = 0;
                for &t in lens {
                    let heads = |x: &Tensor, k: usize| -> Result<Tensor> {
                        Ok(x.narrow(0, off, t)?.reshape((1, t, k, hd))?.transpose(1, 2)?.contiguous()?)
                    };
                    outs.push(self.attend(heads(&q, nh)?, heads(&k, nkv)?, heads(&v, nkv)?, scale)?);
                    off += t;
                }
                if outs.len() == 1 {
                    outs.remove(0)
                } else {
                    Tensor::cat(&outs, 0)?
                }
            };
            drop(att);
            let o = self.linear(&format!("{p}.self_attn.o_proj"), &o, &mut dropout)?;
            let res = crate::profile::span(&self.device, "fwd:residual");
            h = (h + o)?;
            drop(res);
            let x = self.rms_norm(&h, &format!("{p}.post_attention_layernorm.weight"))?;
            let gate = self.linear(&format!("{p}.mlp.gate_proj"), &x, &mut dropout)?;
            let up = self.linear(&format!("{p}.mlp.up_proj"), &x, &mut dropout)?;
            let act = crate::profile::span(&self.device, "fwd:silu*up");
            let gu = (gate.silu()? * up)?;
            drop(act);
            let m = self.linear(&format!("{p}.mlp.down_proj"), &gu, &mut dropout)?;
            let _res = crate::profile::span(&self.device, "fwd:residual");
            h = (h + m)?;
        }
        self.rms_norm(&h, "model.norm.weight")
    }

    /// Causal attention of `[b, heads, t, hd]` queries and `[b, kv_heads, t, hd]` keys and
    /// values (before the rotary embedding) → `[b·t, heads·hd]`.
    fn attend(&self, q: Tensor, k: Tensor, v: Tensor, scale: f64) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        if self.graph_ops {
            let mask = self.causal_mask(t)?;
            let o = crate::graph_ops::attention(&q, &k, &v, (&self.cos, &self.sin), &mask, scale)?;
            return Ok(o.transpose(1, 2)?.reshape((b * t, nh * hd))?);
        }
        let nkv = k.dim(1)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let qs = crate::ops::rope(&q, &cos, &sin)?;
        let ks = crate::ops::rope(&k, &cos, &sin)?;
        let (ks, vs) = if nkv == nh {
            (ks, v)
        } else {
            let rep = nh / nkv;
            let r = |x: Tensor| -> Result<Tensor> {
                Ok(x.unsqueeze(2)?.broadcast_as((b, nkv, rep, t, hd))?.reshape((b, nh, t, hd))?)
            };
            (r(ks)?, r(v)?)
        };
        let att = crate::ops::causal_softmax(&qs.matmul(&ks.t()?)?, scale)?;
        Ok(att.matmul(&vs)?.transpose(1, 2)?.reshape((b * t, nh * hd))?)
    }

    fn causal_mask(&self, t: usize) -> Result<Tensor> {
        let mut mask = self.mask.lock().map_err(|_| Error::Config("mask cache poisoned".into()))?;
        let m = match mask.as_ref() {
            Some(m) if m.dim(0)? >= t => m.clone(),
            _ => {
                let m = crate::graph_ops::causal_mask(t, self.dtype, &self.device)?;
                *mask = Some(m.clone());
                m
            }
        };
        Ok(m.narrow(0, 0, t)?.narrow(1, 0, t)?)
    }

    /// Causal attention of packed rows `q [n, heads·hd]`, `k`, `v [n, kv_heads·hd]`: the
    /// sequences gathered into `[b, heads, t_max, hd]` (padding rows repeat a real row; being
    /// after every real position, the causal mask hides them), one batched product, and the
    /// real rows gathered back. Gathers are `index_select`, whose gradient scatters back.
    fn attention_padded(&self, q: &Tensor, k: &Tensor, v: &Tensor, pads: &Padding, scale: f64) -> Result<Tensor> {
        let cfg = &self.base.config;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim());
        let (b, t) = (pads.batch, pads.t_max);
        let pad = |x: &Tensor, heads: usize| -> Result<Tensor> {
            Ok(x.index_select(&pads.gather, 0)?.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let o = self.attend(pad(q, nh)?, pad(k, nkv)?, pad(v, nkv)?, scale)?;
        Ok(o.index_select(&pads.scatter, 0)?)
    }

    /// Logits of chosen rows of flattened hidden states `[n, hidden]` → `[n, vocab]` (f32).
    pub fn logits(&self, hidden_rows: &Tensor) -> Result<Tensor> {
        Ok(self.matmul_t(hidden_rows, &self.head()?, true)?.to_dtype(DType::F32)?)
    }

    /// The output projection (the embedding table when they are tied).
    fn head(&self) -> Result<Tensor> {
        match self.opt_weight("lm_head.weight")? {
            Some(w) if !self.base.config.tie_word_embeddings => Ok(w),
            _ => self.weight("model.embed_tokens.weight"),
        }
    }

    /// Mean cross-entropy of the labelled positions of a batch, and how many there were.
    /// `labels[b][t]` is the token expected after position `t`, or `None`.
    pub fn loss(&self, batch: &Batch, dropout: Option<Dropout>) -> Result<(Tensor, usize)> {
        let (pos, tgt): (Vec<u32>, Vec<u32>) =
            batch.labels.iter().enumerate().filter_map(|(i, l)| l.map(|l| (i as u32, l))).unzip();
        if pos.is_empty() {
            return Err(Error::Config("a batch without answer tokens".into()));
        }
        let n = pos.len();
        // Copied before the forward pass is queued: a copy from the host to a GPU waits for it.
        let pos = Tensor::from_vec(pos, n, &self.device)?;
        let tgt = Tensor::from_vec(tgt, n, &self.device)?;
        let h = self.hidden_packed(&batch.ids, &batch.lens, dropout)?;
        let _p = crate::profile::span(&self.device, "fwd:head+loss");
        let rows = h.index_select(&pos, 0)?;
        if self.graph_ops {
            // The loss upcasts inside: no f32 copy of bf16 logits kept for the backward pass.
            let logits = self.matmul_t(&rows, &self.head()?, true)?;
            return Ok((crate::graph_ops::cross_entropy(&logits, &tgt)?, n));
        }
        let logits = self.logits(&rows)?;
        Ok((candle_nn::loss::cross_entropy(&logits, &tgt)?, n))
    }

    /// Base weights with the adapters and unfrozen weights folded in (f32).
    pub fn merged_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, w) in &self.base.weights {
            let w = match self.full.get(name) {
                Some(v) => v.as_tensor().clone(),
                None => w.to_dtype(DType::F32)?,
            };
            out.insert(name.clone(), w);
        }
        let s = self.lora_cfg.scale();
        for (m, p) in &self.lora {
            let name = format!("{m}.weight");
            let w = out.get(&name).ok_or_else(|| Error::Config(format!("no weight {name}")))?;
            let delta = (p.b.as_tensor().matmul(p.a.as_tensor())? * s)?;
            let merged = (w + delta)?;
            out.insert(name, merged);
        }
        Ok(out)
    }

    /// Replace trainable values (adapter read back, checkpoint restored).
    pub fn set_trainable(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.trainable() {
            let t = values.get(&name).ok_or_else(|| Error::Config(format!("missing tensor {name}")))?;
            if t.dims() != var.dims() {
                return Err(Error::Config(format!(
                    "tensor {name} has shape {:?}, the model expects {:?} (different base model or LoRA settings?)",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_device(&self.device)?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

/// `x · Wᵀ` for a frozen `W` (CPU, f32). candle's matmul backward computes and keeps the
/// gradient of both operands, i.e. a weight-sized gradient for every frozen matrix of the
/// model at every step; this op gives back only `∂x = ∂y · W`.
struct FrozenLinear {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(v) = storage else {
            candle_core::bail!("frozen-linear: f32 input expected");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear: contiguous input expected");
        };
        let x = Tensor::from_slice(&v[a..b], layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        Ok((candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// Sequences packed end to end (no padding) with their next-token labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub lens: Vec<usize>,
    pub ids: Vec<u32>,
    /// Per token: the expected next token where the loss counts.
    pub labels: Vec<Option<u32>>,
}

impl Batch {
    /// The label of position `t` of a sequence is its token `t + 1` when that token counts.
    pub fn new(seqs: &[&crate::data::Tokenized]) -> Self {
        let mut b = Self { lens: Vec::new(), ids: Vec::new(), labels: Vec::new() };
        for s in seqs.iter().filter(|s| !s.ids.is_empty()) {
            b.lens.push(s.ids.len());
            b.ids.extend_from_slice(&s.ids);
            b.labels.extend((0..s.ids.len()).map(|t| s.train.get(t + 1).filter(|k| **k).map(|_| s.ids[t + 1])));
        }
        b
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|l| l.is_some()).count()
    }
}
