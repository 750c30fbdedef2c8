//! Text generation: the [`Generator`] trait and its candle implementation for the Llama family
//! (SmolLM2) and Qwen2 (Qwen2.5), from quantized GGUF files or plain safetensors checkpoints.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use serde::{Deserialize, Serialize};

use crate::chat::{PromptFormat, StopMatcher, TextStream};
use crate::{Error, Result};

/// Sampling and length settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy (deterministic).
    pub temperature: f64,
    pub top_p: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables the penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
    pub max_tokens: usize,
    /// Extra stop strings (the model's end-of-turn tokens always stop).
    pub stop: Vec<String>,
    /// Forbid Han characters that Japanese does not use (set for Japanese answers).
    pub japanese_kanji_only: bool,
    /// Never repeat a run of this many characters of the generated text (0: off); a token
    /// that would is replaced by the next best one.
    pub no_repeat_chars: usize,
    /// The answer may not open with `[`: a model that starts by copying a source's header
    /// (`[1] manual.md — section`) would end at once on that header's stop string, and a bare
    /// citation marker opens nothing (the next best token is taken instead).
    pub no_leading_bracket: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 0.9,
            top_k: 0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 42,
            max_tokens: 512,
            stop: Vec::new(),
            japanese_kanji_only: false,
            no_repeat_chars: 0,
            no_leading_bracket: false,
        }
    }
}

impl SamplingParams {
    fn sampling(&self) -> Sampling {
        let t = self.temperature;
        if t <= 1e-7 {
            return Sampling::ArgMax;
        }
        let p = self.top_p;
        match (self.top_k, p > 0.0 && p < 1.0) {
            (0, false) => Sampling::All { temperature: t },
            (0, true) => Sampling::TopP { p, temperature: t },
            (k, false) => Sampling::TopK { k, temperature: t },
            (k, true) => Sampling::TopKThenTopP { k, p, temperature: t },
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The consumer stopped listening (client disconnected).
    Cancelled,
}

/// What a finished generation produced, with its timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt processing (prefill), milliseconds.
    pub prompt_ms: f64,
    /// From the start of the call to the first sampled token.
    pub first_token_ms: f64,
    /// Decoding after the first token.
    pub decode_ms: f64,
}

impl Generation {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prompt_ms / 1e3).max(1e-9)
    }
    pub fn decode_tokens_per_s(&self) -> f64 {
        (self.completion_tokens.saturating_sub(1)) as f64 / (self.decode_ms / 1e3).max(1e-9)
    }
}

/// A language model that continues a prompt.
///
/// `generate` needs `&mut self` (the KV cache): a generator lives on one worker thread.
/// `format` is shared with request threads, which render and measure prompts.
pub trait Generator: Send {
    /// Catalog or directory name of the model.
    fn name(&self) -> &str;
    /// Tokenizer, chat template, stop tokens and context length.
    fn format(&self) -> Arc<PromptFormat>;
    /// Continue `prompt` (already rendered with the chat template). `on_text` receives each
    /// new piece of text and returns `false` to cancel.
    fn generate(
        &mut self,
        prompt: &str,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation>;
    /// This generator as one whose generations advance a token at a time (and can be
    /// interleaved), if it is one.
    fn stepwise(&mut self) -> Option<&mut dyn Stepwise> {
        None
    }
}

/// Where generation runs and how the prompt is fed.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub name: String,
    pub device: Device,
    /// Prompt tokens per forward pass during prefill.
    pub prefill_chunk: usize,
    /// What runs a GGUF model's weights.
    pub engine: GgufEngine,
}

/// What runs a GGUF model's weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GgufEngine {
    /// Int8 on the CPU, candle on other devices.
    #[default]
    Auto,
    /// Kotae's int8 kernels ([`crate::int8`]); CPU only.
    Int8,
    /// candle-transformers' quantized models.
    Candle,
}

impl std::str::FromStr for GgufEngine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(GgufEngine::Auto),
            "int8" => Ok(GgufEngine::Int8),
            "candle" => Ok(GgufEngine::Candle),
            other => Err(format!("unknown GGUF engine '{other}': use auto, int8 or candle")),
        }
    }
}

impl GgufEngine {
    fn resolve(self, device: &Device, path: &Path) -> Result<Self> {
        let e = match self {
            GgufEngine::Auto if device.is_cpu() => GgufEngine::Int8,
            GgufEngine::Auto => GgufEngine::Candle,
            e => e,
        };
        if e == GgufEngine::Int8 && !device.is_cpu() {
            return Err(Error::invalid(path, "the int8 engine runs on the CPU only; use the candle engine on a GPU"));
        }
        Ok(e)
    }
}

enum Weights {
    Int8(Box<crate::int8::Int8Lm>),
    QLlama(quantized_llama::ModelWeights),
    QQwen2(quantized_qwen2::ModelWeights),
    Llama(Box<llama::Llama>, Box<llama::Cache>, llama::Config),
    Qwen2(Box<qwen2::ModelForCausalLM>),
}

impl Weights {
    /// Logits of the last position, `[vocab]`.
    fn forward(&mut self, ids: &Tensor, pos: usize, device: &Device) -> Result<Tensor> {
        let logits = match self {
            Weights::Int8(m) => m.forward(&ids.flatten_all()?.to_vec1::<u32>()?, pos)?,
            Weights::QLlama(m) => m.forward(ids, pos)?,
            Weights::QQwen2(m) => m.forward(ids, pos)?,
            Weights::Llama(m, cache, _) => m.forward(ids, pos, cache)?,
            Weights::Qwen2(m) => m.forward(ids, pos)?,
        };
        let _ = device;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    fn reset(&mut self, device: &Device) -> Result<()> {
        match self {
            Weights::Int8(m) => m.clear_kv_cache(),
            Weights::QLlama(m) => m.clear_kv_cache(),
            Weights::QQwen2(m) => m.clear_kv_cache(),
            Weights::Llama(_, cache, cfg) => **cache = llama::Cache::new(true, DType::F32, cfg, device)?,
            Weights::Qwen2(m) => m.clear_kv_cache(),
        }
        Ok(())
    }

    /// Whether prefill may be split into chunks (the safetensors Llama cache only supports
    /// one prompt pass).
    fn chunked_prefill(&self) -> bool {
        !matches!(self, Weights::Llama(..))
    }
}

/// A candle-transformers model with its prompt format.
pub struct CandleGenerator {
    name: String,
    weights: Weights,
    format: Arc<PromptFormat>,
    device: Device,
    prefill_chunk: usize,
    /// Which generation's sequence is in the model's cache, and the caches of the others
    /// (interleaved generations, int8 runtime only).
    loaded: Option<u64>,
    parked: std::collections::HashMap<u64, crate::int8::KvState>,
    next_id: u64,
}

impl CandleGenerator {
    fn assemble(weights: Weights, format: PromptFormat, opts: &GeneratorOptions) -> Self {
        Self {
            name: opts.name.clone(),
            weights,
            format: Arc::new(format),
            device: opts.device.clone(),
            prefill_chunk: opts.prefill_chunk.max(1),
            loaded: None,
            parked: Default::default(),
            next_id: 0,
        }
    }

    /// Load a GGUF file (architecture `llama` or `qwen2`); the tokenizer and chat template
    /// come from its metadata. The weights run on the engine `opts.engine` picks.
    pub fn from_gguf(path: &Path, opts: &GeneratorOptions) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut f).map_err(|e| Error::invalid(path, e.to_string()))?;
        let arch =
            content.metadata.get("general.architecture").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
        let ctx_key = format!("{arch}.context_length");
        let context_length = content.metadata.get(&ctx_key).and_then(|v| v.to_u32().ok()).unwrap_or(2048) as usize;
        let tok = crate::gguf_tokenizer::from_gguf(&content, path)?;
        let format = PromptFormat::new(
            tok.tokenizer,
            tok.chat_template.as_deref(),
            tok.bos_id,
            tok.eos_id,
            context_length.min(quantized_llama::MAX_SEQ_LEN),
            &path.display().to_string(),
        )?;
        if opts.engine.resolve(&opts.device, path)? == GgufEngine::Int8 {
            let t0 = Instant::now();
            let model = crate::int8::Int8Lm::from_gguf(&content, &mut f, path)?;
            tracing::info!(
                ms = t0.elapsed().as_millis() as u64,
                mib = model.size_bytes() >> 20,
                "weights re-encoded for the int8 kernels"
            );
            return Ok(Self::assemble(Weights::Int8(Box::new(model)), format, opts));
        }
        let weights = match (arch.as_str(), requantize(&content, &mut f, path)?) {
            ("llama", None) => {
                Weights::QLlama(quantized_llama::ModelWeights::from_gguf(content, &mut f, &opts.device)?)
            }
            ("qwen2", None) => {
                Weights::QQwen2(quantized_qwen2::ModelWeights::from_gguf(content, &mut f, &opts.device)?)
            }
            ("llama", Some((c, mut r))) => {
                Weights::QLlama(quantized_llama::ModelWeights::from_gguf(c, &mut r, &opts.device)?)
            }
            ("qwen2", Some((c, mut r))) => {
                Weights::QQwen2(quantized_qwen2::ModelWeights::from_gguf(c, &mut r, &opts.device)?)
            }
            (other, _) => {
                return Err(Error::invalid(path, format!("architecture '{other}' is not supported (llama, qwen2)")))
            }
        };
        Ok(Self::assemble(weights, format, opts))
    }

    /// Load a Hugging Face–style folder: `config.json` (`model_type` llama or qwen2),
    /// `tokenizer.json`, `tokenizer_config.json` (chat template) and `*.safetensors`.
    pub fn from_hf_dir(dir: &Path, opts: &GeneratorOptions) -> Result<Self> {
        let (config, format) = read_hf_folder(dir)?;
        // SAFETY-free path: plain reads into memory (the workspace forbids unsafe mmap).
        let vb = VarBuilder::from_tensors(load_safetensors_dir(dir, &opts.device)?, DType::F32, &opts.device);
        let weights = match config["model_type"].as_str().unwrap_or_default() {
            "llama" => {
                let c: llama::LlamaConfig = serde_json::from_value(config.clone())?;
                let c = c.into_config(false);
                let cache = llama::Cache::new(true, DType::F32, &c, &opts.device)?;
                Weights::Llama(Box::new(llama::Llama::load(vb, &c)?), Box::new(cache), c)
            }
            "qwen2" => {
                let c: qwen2::Config = serde_json::from_value(config.clone())?;
                Weights::Qwen2(Box::new(qwen2::ModelForCausalLM::new(&c, vb)?))
            }
            other => return Err(Error::invalid(dir, format!("model_type '{other}' is not supported (llama, qwen2)"))),
        };
        Ok(Self::assemble(weights, format, opts))
    }

    /// GGUF file or Hugging Face folder, by what `path` is.
    pub fn load(path: &Path, opts: &GeneratorOptions) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path, opts)
        } else {
            Self::from_gguf(path, opts)
        }
    }

    /// Logits of the position after `ids` (a fresh sequence): for checks that compare models.
    pub fn forward_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(self.prefill(ids)?.to_vec1()?)
    }

    /// A reader of this model's residual stream at `layer` (the int8 engine only: `None`
    /// otherwise), sharing its weights: what a probe such as the guard's reads.
    pub fn lm_states(&self, layer: usize, pool: crate::states::StatePool) -> Option<crate::states::LmStates> {
        match &self.weights {
            Weights::Int8(m) if layer < m.layer_count() => {
                Some(crate::states::LmStates::new(&self.name, m.share(layer + 1), self.format.clone(), layer, pool))
            }
            _ => None,
        }
    }

    /// Per-layer residual states (last position, mean over positions) of a fresh sequence:
    /// the int8 engine only.
    pub fn layer_states(&mut self, ids: &[u32], layers: usize) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        match &mut self.weights {
            Weights::Int8(m) => m.layer_states(ids, layers),
            _ => Err(Error::Generation("layer states need the int8 engine".into())),
        }
    }

    /// Run the prompt through the model, returning the logits of its last position.
    fn prefill(&mut self, ids: &[u32]) -> Result<Tensor> {
        self.weights.reset(&self.device)?;
        let chunk = if self.weights.chunked_prefill() { self.prefill_chunk } else { ids.len() };
        let mut logits = None;
        for (i, part) in ids.chunks(chunk).enumerate() {
            let input = Tensor::new(part, &self.device)?.unsqueeze(0)?;
            logits = Some(self.weights.forward(&input, i * chunk, &self.device)?);
        }
        logits.ok_or_else(|| Error::Generation("empty prompt".into()))
    }
}

/// Quantization types without a SIMD dot product in candle's CPU backend: their matmuls run
/// scalar code, several times slower than llama.cpp. Qwen2.5 0.5B's Q4_K_M file is mostly
/// Q5_0 (its 896-wide rows do not fit the 256-element k-quant blocks), SmolLM2's is Q4_1.
const SLOW_ON_CPU: &[GgmlDType] = &[GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Re-encode the tensors of a slow type as Q8_0 (which has AVX2 kernels), in memory. Q8_0
/// holds 4- and 5-bit values exactly up to its own rounding: outputs do not change in any
/// way that matters, the file grows by about a third. `None` when nothing needs it.
#[allow(clippy::type_complexity)]
fn requantize<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    path: &Path,
) -> Result<Option<(gguf_file::Content, std::io::Cursor<Vec<u8>>)>> {
    if !content.tensor_infos.values().any(|t| SLOW_ON_CPU.contains(&t.ggml_dtype)) {
        return Ok(None);
    }
    let t0 = Instant::now();
    let cpu = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in &names {
        let q = content.tensor(reader, name, &cpu)?;
        let q = if SLOW_ON_CPU.contains(&q.dtype()) && q.shape().dims().last().is_some_and(|d| d % 32 == 0) {
            QTensor::quantize(&q.dequantize(&cpu)?, GgmlDType::Q8_0)?
        } else {
            q
        };
        tensors.push(q);
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let named: Vec<(&str, &QTensor)> = names.iter().map(|n| n.as_str()).zip(tensors.iter()).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &named)?;
    buf.set_position(0);
    let c = gguf_file::Content::read(&mut buf).map_err(|e| Error::invalid(path, e.to_string()))?;
    tracing::info!(ms = t0.elapsed().as_millis() as u64, "re-encoded slow quantization types as Q8_0");
    Ok(Some((c, buf)))
}

/// `config.json` and the prompt format (tokenizer.json, chat template and special tokens from
/// tokenizer_config.json, falling back to config.json's ids) of a Hugging Face–style folder.
pub fn read_hf_folder(dir: &Path) -> Result<(serde_json::Value, PromptFormat)> {
    let read = |name: &str| -> Result<String> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
    };
    let config: serde_json::Value = serde_json::from_str(&read("config.json")?)?;
    let tok_cfg: serde_json::Value = serde_json::from_str(&read("tokenizer_config.json")?)?;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))?;
    let token_id = |key: &str| -> Option<u32> {
        let t = tok_cfg.get(key)?;
        let s = t.as_str().or_else(|| t.get("content").and_then(|c| c.as_str()))?;
        tokenizer.token_to_id(s)
    };
    let bos = token_id("bos_token").or_else(|| config["bos_token_id"].as_u64().map(|v| v as u32));
    let eos = token_id("eos_token").or_else(|| config["eos_token_id"].as_u64().map(|v| v as u32));
    let template = tok_cfg.get("chat_template").and_then(|t| t.as_str()).map(str::to_string);
    let ctx = config["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    let format = PromptFormat::new(tokenizer, template.as_deref(), bos, eos, ctx, &dir.display().to_string())?;
    Ok((config, format))
}

/// Every tensor of the folder's `*.safetensors` files, as f32 on `device` (plain reads into
/// memory: the workspace forbids the unsafe mmap).
pub fn load_safetensors_dir(dir: &Path, device: &Device) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(dir, "no .safetensors files"));
    }
    let mut all = std::collections::HashMap::new();
    for f in files {
        for (k, v) in candle_core::safetensors::load(&f, device)? {
            all.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    Ok(all)
}

impl Generator for CandleGenerator {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> Arc<PromptFormat> {
        self.format.clone()
    }

    fn generate(
        &mut self,
        prompt: &str,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut d = self.begin(prompt, params)?;
        while !self.step(&mut d, on_text)? {}
        Ok(self.end(d, on_text))
    }

    fn stepwise(&mut self) -> Option<&mut dyn Stepwise> {
        // Interleaving swaps key/value caches between sequences: the int8 runtime's caches
        // are Kotae's own; candle's models keep theirs inside.
        matches!(self.weights, Weights::Int8(_)).then_some(self as &mut dyn Stepwise)
    }
}

/// Prompt tokens fed per step at most: about a tenth of a second of a small model on two
/// cores, so that another generation waits no longer than that for its turn.
const STEP_PREFILL: usize = 128;

/// A generation in progress, advanced a token at a time by [`Stepwise::step`].
pub struct Decoding {
    id: u64,
    prompt_tokens: usize,
    max_new: usize,
    params: SamplingParams,
    sampler: LogitsProcessor,
    stream: TextStream,
    stops: StopMatcher,
    text: String,
    all: Vec<u32>,
    written: String,
    /// Prompt tokens fed so far (the prompt goes in a chunk per step), then the logits of the
    /// last position.
    fed: usize,
    logits: Option<Tensor>,
    produced: usize,
    finish: Option<FinishReason>,
    t0: Instant,
    prompt_ms: f64,
    first_token_ms: f64,
    t_decode: Instant,
}

impl Decoding {
    /// Tokens generated so far.
    pub fn produced(&self) -> usize {
        self.produced
    }
}

/// Generations that advance a token at a time, so that a worker can interleave several: a
/// long answer then delays a new question's first token by one step, not by its whole length.
pub trait Stepwise {
    /// Read the prompt (prefill) and stand ready for the first token.
    fn begin(&mut self, prompt: &str, params: &SamplingParams) -> Result<Decoding>;
    /// One chunk of the prompt, or one token (its text, if any, to `on_text`); `true` once the
    /// generation has ended.
    fn step(&mut self, d: &mut Decoding, on_text: &mut dyn FnMut(&str) -> bool) -> Result<bool>;
    /// The finished generation (text held back for a stop string goes to `on_text`); frees
    /// its cache. Also ends a generation early (its client left).
    fn end(&mut self, d: Decoding, on_text: &mut dyn FnMut(&str) -> bool) -> Generation;
}

impl CandleGenerator {
    /// Make `id`'s sequence the one in the model's cache, parking the one that was there.
    fn load_sequence(&mut self, id: u64) {
        if self.loaded == Some(id) {
            return;
        }
        if let Weights::Int8(m) = &mut self.weights {
            let incoming = self.parked.remove(&id).unwrap_or_default();
            let out = m.swap_kv(incoming);
            if let Some(prev) = self.loaded {
                self.parked.insert(prev, out);
            }
        }
        self.loaded = Some(id);
    }
}

impl Stepwise for CandleGenerator {
    fn begin(&mut self, prompt: &str, params: &SamplingParams) -> Result<Decoding> {
        let t0 = Instant::now();
        let format = self.format.clone();
        let ids = format.encode(prompt)?;
        let ctx = format.context_length();
        if ids.is_empty() {
            return Err(Error::Generation("the prompt is empty".into()));
        }
        if ids.len() >= ctx {
            return Err(Error::PromptTooLong { tokens: ids.len(), limit: ctx });
        }
        self.next_id += 1;
        let id = self.next_id;
        self.load_sequence(id);
        self.weights.reset(&self.device)?;
        Ok(Decoding {
            id,
            prompt_tokens: ids.len(),
            max_new: params.max_tokens.min(ctx - ids.len()),
            params: params.clone(),
            sampler: LogitsProcessor::from_sampling(params.seed, params.sampling()),
            stream: TextStream::default(),
            stops: StopMatcher::new(&params.stop),
            text: String::new(),
            all: ids,
            written: String::new(),
            fed: 0,
            logits: None,
            produced: 0,
            finish: (params.max_tokens == 0).then_some(FinishReason::Length),
            t0,
            prompt_ms: 0.0,
            first_token_ms: 0.0,
            t_decode: Instant::now(),
        })
    }

    fn step(&mut self, d: &mut Decoding, on_text: &mut dyn FnMut(&str) -> bool) -> Result<bool> {
        if d.finish.is_some() || d.produced >= d.max_new {
            d.finish.get_or_insert(FinishReason::Length);
            return Ok(true);
        }
        self.load_sequence(d.id);
        if d.fed < d.prompt_tokens {
            // One chunk of the prompt per step: a long prompt does not hold other
            // generations back for its whole length either.
            let chunk =
                if self.weights.chunked_prefill() { self.prefill_chunk.min(STEP_PREFILL) } else { d.prompt_tokens };
            let part = &d.all[d.fed..(d.fed + chunk).min(d.prompt_tokens)];
            let input = Tensor::new(part, &self.device)?.unsqueeze(0)?;
            let logits = self.weights.forward(&input, d.fed, &self.device)?;
            d.fed += part.len();
            if d.fed == d.prompt_tokens {
                d.logits = Some(logits);
                d.prompt_ms = d.t0.elapsed().as_secs_f64() * 1e3;
                d.t_decode = Instant::now();
            }
            return Ok(false);
        }
        let format = self.format.clone();
        let params = &d.params;
        let Some(mut logits) = d.logits.clone() else {
            return Err(Error::Generation("no logits after the prompt".into()));
        };
        if params.repeat_penalty != 1.0 {
            let start = d.all.len().saturating_sub(params.repeat_last_n);
            logits = candle_transformers::utils::apply_repeat_penalty(&logits, params.repeat_penalty, &d.all[start..])?;
        }
        let banned: &[u32] = if params.japanese_kanji_only { format.non_japanese_han_ids() } else { &[] };
        if !banned.is_empty() {
            let mut v = logits.to_vec1::<f32>()?;
            for &id in banned {
                if let Some(x) = v.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            logits = Tensor::from_vec(v, logits.dims1()?, logits.device())?;
        }
        let mut next = d.sampler.sample(&logits)?;
        // A token that would repeat a run of characters already written (or open the answer
        // with a bracket) gives way to the next best (a few tries; then the text is what the
        // model insists on).
        for _ in 0..4 {
            if params.no_repeat_chars == 0 && !params.no_leading_bracket {
                break;
            }
            let Some(piece) = d.stream.peek(&format, next)? else { break };
            let repeats = crate::chat::repeats_chars(&d.written, &piece, params.no_repeat_chars);
            let leading = params.no_leading_bracket && crate::chat::opens_with_bracket(&d.written, &piece);
            if !repeats && !leading {
                break;
            }
            let mut v = logits.to_vec1::<f32>()?;
            if let Some(x) = v.get_mut(next as usize) {
                *x = f32::NEG_INFINITY;
            }
            logits = Tensor::from_vec(v, logits.dims1()?, logits.device())?;
            next = d.sampler.sample(&logits)?;
        }
        if d.produced == 0 {
            d.first_token_ms = d.t0.elapsed().as_secs_f64() * 1e3;
        }
        d.produced += 1;
        d.all.push(next);
        if format.is_stop(next) {
            d.finish = Some(FinishReason::Stop);
            return Ok(true);
        }
        if let Some(piece) = d.stream.push(&format, next)? {
            d.written.push_str(&piece);
            let (out, hit) = d.stops.push(&piece);
            d.text.push_str(&out);
            if !out.is_empty() && !on_text(&out) {
                d.finish = Some(FinishReason::Cancelled);
                return Ok(true);
            }
            if hit {
                d.finish = Some(FinishReason::Stop);
                return Ok(true);
            }
        }
        if d.produced == d.max_new {
            d.finish = Some(FinishReason::Length);
            return Ok(true);
        }
        let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
        d.logits = Some(self.weights.forward(&input, d.all.len() - 1, &self.device)?);
        Ok(false)
    }

    fn end(&mut self, mut d: Decoding, on_text: &mut dyn FnMut(&str) -> bool) -> Generation {
        let mut finish = d.finish.unwrap_or(FinishReason::Cancelled);
        if finish != FinishReason::Cancelled {
            let rest = d.stops.finish();
            if !rest.is_empty() {
                d.text.push_str(&rest);
                if !on_text(&rest) {
                    finish = FinishReason::Cancelled;
                }
            }
        }
        // Its cache is free: parked, dropped; loaded, overwritten by the next sequence.
        self.parked.remove(&d.id);
        if self.loaded == Some(d.id) {
            self.loaded = None;
        }
        Generation {
            text: d.text,
            finish_reason: finish,
            prompt_tokens: d.prompt_tokens,
            completion_tokens: d.produced,
            prompt_ms: d.prompt_ms,
            first_token_ms: d.first_token_ms,
            decode_ms: d.t_decode.elapsed().as_secs_f64() * 1e3,
        }
    }
}
