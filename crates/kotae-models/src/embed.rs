//! Sentence embedders: the [`Embedder`] trait and a candle BERT implementation.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{self, BertModel};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// What a text is: the question a user asks, or a passage stored in the index.
/// Asymmetric models (E5) embed the two with different prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Query,
    Passage,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the non-padding token vectors (E5, MiniLM sentence-transformers).
    Mean,
    /// The first token's vector.
    Cls,
}

/// Result of embedding a batch of texts.
#[derive(Debug, Clone)]
pub struct EmbedOutput {
    /// One vector per input text, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// How many inputs were longer than the model's limit and were cut to it.
    pub truncated: usize,
}

/// An encoder's layer count, attention heads, LayerNorm epsilon, and one layer's f32 weights.
pub type EncoderLayer = (usize, usize, f64, HashMap<String, Tensor>);

/// Sentence vectors, and each text's token states after some layer.
type VectorsAndStates = (Vec<Vec<f32>>, Vec<Tensor>);

/// Turns text into fixed-size vectors.
pub trait Embedder: Send + Sync {
    /// Catalog name of the model, e.g. `multilingual-e5-small`.
    fn name(&self) -> &str;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Longest input in tokens the model accepts, special tokens and prefix included.
    fn max_tokens(&self) -> usize;
    /// Tokens of `text` alone (no prefix, no special tokens): the chunker's ruler.
    fn count_tokens(&self, text: &str) -> Result<usize>;
    /// Embed texts; inputs over [`Embedder::max_tokens`] are truncated and counted.
    fn embed(&self, texts: &[&str], kind: InputKind) -> Result<EmbedOutput>;
    /// Embed texts and also return each one's token states after the first `layer` encoder
    /// layers (`[tokens, dim]`), in the same pass: what a tuned classifier head reads.
    /// `None` when the engine cannot.
    fn embed_with_states(
        &self,
        _texts: &[&str],
        _kind: InputKind,
        _layer: usize,
    ) -> Result<Option<(EmbedOutput, Vec<Tensor>)>> {
        Ok(None)
    }
    /// Encoder layers, attention heads and LayerNorm epsilon, and layer `i`'s f32 weights (as
    /// [`crate::classifier::EncoderTop`] names them), for fine-tuning the top layers. `None`
    /// when the engine cannot.
    fn encoder_layer(&self, _i: usize) -> Result<Option<EncoderLayer>> {
        Ok(None)
    }
}

/// Per-model behaviour that is not in the weights.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    pub name: String,
    pub pooling: Pooling,
    pub normalize: bool,
    pub query_prefix: String,
    pub passage_prefix: String,
    /// Upper bound on padded tokens per forward pass (batch size × longest input).
    pub batch_tokens: usize,
    /// What runs the encoder.
    pub engine: EncoderEngine,
}

/// What runs a BERT encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncoderEngine {
    /// Int8 on the CPU, candle elsewhere.
    #[default]
    Auto,
    /// Kotae's int8 kernels ([`crate::int8_bert`]); CPU only.
    Int8,
    /// candle-transformers' f32 BERT.
    Candle,
}

impl std::str::FromStr for EncoderEngine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(EncoderEngine::Auto),
            "int8" => Ok(EncoderEngine::Int8),
            "candle" => Ok(EncoderEngine::Candle),
            other => Err(format!("unknown encoder engine '{other}': use auto, int8 or candle")),
        }
    }
}

enum Encoder {
    Candle(Box<BertModel>),
    Int8(Box<crate::int8_bert::Int8Bert>),
}

/// A BERT-family encoder run by candle.
pub struct BertEmbedder {
    opts: EmbedderOptions,
    model: Encoder,
    tokenizer: Tokenizer,
    char_map: Option<HashMap<char, String>>,
    max_tokens: usize,
    dim: usize,
    pad_id: u32,
    device: Device,
}

impl BertEmbedder {
    /// Load from a Hugging Face style folder: `config.json`, `tokenizer.json`, `model.safetensors`.
    pub fn from_hf_dir(dir: &Path, opts: EmbedderOptions, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: bert::Config = serde_json::from_str(&cfg_text)
            .map_err(|e| Error::invalid(&cfg_path, format!("not a BERT config: {e}")))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| Error::invalid(&tok_path, e.to_string()))?;
        tokenizer.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let st_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&st_path, device)?;
        Self::from_parts(config, tokenizer, None, tensors, opts, device)
    }

    /// Load from an E5S1 file (4-bit weights, dequantized to f32).
    pub fn from_e5s1(path: &Path, opts: EmbedderOptions, device: &Device) -> Result<Self> {
        let m = crate::e5s1::load(path, device)?;
        Self::from_parts(m.config, m.tokenizer, Some(m.char_map), m.tensors, opts, device)
    }

    fn from_parts(
        config: bert::Config,
        tokenizer: Tokenizer,
        char_map: Option<HashMap<char, String>>,
        tensors: HashMap<String, Tensor>,
        opts: EmbedderOptions,
        device: &Device,
    ) -> Result<Self> {
        let int8 = match opts.engine {
            EncoderEngine::Auto => device.is_cpu(),
            EncoderEngine::Int8 if !device.is_cpu() => {
                return Err(Error::Generation("the int8 encoder runs on the CPU only".into()))
            }
            EncoderEngine::Int8 => true,
            EncoderEngine::Candle => false,
        };
        let model = if int8 {
            Encoder::Int8(Box::new(crate::int8_bert::Int8Bert::new(&config, &tensors)?))
        } else {
            let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
            Encoder::Candle(Box::new(BertModel::load(vb, &config)?))
        };
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(config.pad_token_id as u32);
        Ok(Self {
            max_tokens: config.max_position_embeddings.min(512),
            dim: config.hidden_size,
            opts,
            model,
            tokenizer,
            char_map,
            pad_id,
            device: device.clone(),
        })
    }

    fn normalize_text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.char_map {
            Some(map) if text.chars().any(|c| map.contains_key(&c)) => {
                let mut s = String::with_capacity(text.len());
                for c in text.chars() {
                    match map.get(&c) {
                        Some(r) => s.push_str(r),
                        None => s.push(c),
                    }
                }
                std::borrow::Cow::Owned(s)
            }
            _ => std::borrow::Cow::Borrowed(text),
        }
    }

    fn tokenize(&self, texts: &[&str], kind: InputKind) -> Result<(Vec<Vec<u32>>, usize)> {
        let prefix = match kind {
            InputKind::Query => &self.opts.query_prefix,
            InputKind::Passage => &self.opts.passage_prefix,
        };
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{}", self.normalize_text(t))).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true)?;
        let mut truncated = 0;
        let ids = encodings
            .into_iter()
            .map(|e| {
                let mut ids = e.get_ids().to_vec();
                if ids.len() > self.max_tokens {
                    truncated += 1;
                    let last = *ids.last().unwrap();
                    ids.truncate(self.max_tokens - 1);
                    ids.push(last); // keep the closing special token
                }
                ids
            })
            .collect();
        Ok((ids, truncated))
    }

    fn forward_batch(&self, batch: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let model = match &self.model {
            Encoder::Int8(m) => return self.pool_packed(&m.forward(batch, &self.device)?, batch),
            Encoder::Candle(m) => m,
        };
        let max_len = batch.iter().map(|v| v.len()).max().unwrap_or(0);
        let b = batch.len();
        let mut ids = Vec::with_capacity(b * max_len);
        let mut mask = Vec::with_capacity(b * max_len);
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(self.pad_id, max_len - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, max_len - seq.len()));
        }
        let ids = Tensor::from_vec(ids, (b, max_len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, max_len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &types, Some(&mask))?; // [b, len, dim]
        let pooled = match self.opts.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        self.finish(pooled)
    }

    /// Pool hidden states of sequences packed end to end (`[Σ lengths, dim]`, no padding).
    fn pool_packed(&self, hidden: &Tensor, batch: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut at = 0;
        for seq in batch {
            let n = seq.len();
            rows.push(match self.opts.pooling {
                Pooling::Cls => hidden.narrow(0, at, 1)?,
                Pooling::Mean => hidden.narrow(0, at, n)?.mean_keepdim(0)?,
            });
            at += n;
        }
        self.finish(Tensor::cat(&rows, 0)?)
    }

    fn finish(&self, pooled: Tensor) -> Result<Vec<Vec<f32>>> {
        let pooled = if self.opts.normalize {
            let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_vec2::<f32>()?)
    }
}

impl BertEmbedder {
    /// This embedder with an adapter's top layers (see [`crate::adapter`]), named
    /// `<model>+ft-<id>`. The int8 engine only.
    pub fn with_adapter(mut self, a: &crate::adapter::EmbedderAdapter) -> Result<Self> {
        let Encoder::Int8(m) = &mut self.model else {
            return Err(Error::Generation(
                "an adapted embedder runs on the int8 engine (embedder.engine = int8 or auto)".into(),
            ));
        };
        let layers = crate::int8_bert::Int8Layers::new(&a.layers, a.card.heads, a.card.eps)?;
        m.replace_top(a.card.split_layer, layers)?;
        self.opts.name = a.card.embedder_name();
        Ok(self)
    }

    /// Vectors and the states after `layer` layers, the int8 engine only.
    fn forward_split_batch(&self, batch: &[&Vec<u32>], layer: usize) -> Result<Option<VectorsAndStates>> {
        let Encoder::Int8(m) = &self.model else { return Ok(None) };
        let (out, states) = m.forward_split(batch, &self.device, layer)?;
        let mut per = Vec::with_capacity(batch.len());
        let mut at = 0;
        for seq in batch {
            per.push(states.narrow(0, at, seq.len())?);
            at += seq.len();
        }
        Ok(Some((self.pool_packed(&out, batch)?, per)))
    }
}

impl Embedder for BertEmbedder {
    fn name(&self) -> &str {
        &self.opts.name
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(self.normalize_text(text).as_ref(), false)?.len())
    }
    fn embed(&self, texts: &[&str], kind: InputKind) -> Result<EmbedOutput> {
        let (ids, truncated) = self.tokenize(texts, kind)?;
        // Sort by length so each batch pads little; batch size follows a token budget.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut vectors = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && (end - start + 1) * ids[order[end]].len() <= self.opts.batch_tokens {
                end += 1;
            }
            let batch: Vec<&Vec<u32>> = order[start..end].iter().map(|&i| &ids[i]).collect();
            for (k, v) in self.forward_batch(&batch)?.into_iter().enumerate() {
                vectors[order[start + k]] = v;
            }
            start = end;
        }
        Ok(EmbedOutput { vectors, truncated })
    }

    fn embed_with_states(
        &self,
        texts: &[&str],
        kind: InputKind,
        layer: usize,
    ) -> Result<Option<(EmbedOutput, Vec<Tensor>)>> {
        if !matches!(self.model, Encoder::Int8(_)) {
            return Ok(None);
        }
        let (ids, truncated) = self.tokenize(texts, kind)?;
        let mut vectors = Vec::with_capacity(ids.len());
        let mut states = Vec::with_capacity(ids.len());
        // Packed batches need no padding: a token budget per pass.
        let mut start = 0;
        while start < ids.len() {
            let mut end = start + 1;
            let mut tokens = ids[start].len();
            while end < ids.len() && tokens + ids[end].len() <= self.opts.batch_tokens {
                tokens += ids[end].len();
                end += 1;
            }
            let batch: Vec<&Vec<u32>> = ids[start..end].iter().collect();
            let Some((v, s)) = self.forward_split_batch(&batch, layer)? else { return Ok(None) };
            vectors.extend(v);
            states.extend(s);
            start = end;
        }
        Ok(Some((EmbedOutput { vectors, truncated }, states)))
    }

    fn encoder_layer(&self, i: usize) -> Result<Option<EncoderLayer>> {
        let Encoder::Int8(m) = &self.model else { return Ok(None) };
        Ok(Some((m.num_layers(), m.heads(), m.eps() as f64, m.layer_tensors(i, &self.device)?)))
    }
}
