//! Kotae's own CPU forward pass for GGUF Llama (SmolLM2) and Qwen2 (Qwen2.5) models: every
//! weight matrix repacked once at load into a `kotae_kernels::QMatrix` (tiles for int8
//! dot-product instructions); norms and rotary embedding in candle; the prompt's causal
//! attention in `kotae_kernels::causal_attention` and a decoded token's in
//! `kotae_kernels::attend_one`, both reading the key/value cache in place.
//!
//! Compared with candle-transformers' quantized models, which it replaces on the CPU:
//! - prompt chunks are multiplied against tiles of 8 weight rows at once (candle re-reads each
//!   weight row for every prompt token);
//! - the key/value cache is preallocated and written in place (candle concatenates the whole
//!   cache at every step);
//! - grouped-query attention multiplies grouped queries against the shared keys directly
//!   (candle copies keys and values once per query head);
//! - the embedding table stays quantized (rows dequantized on lookup) and doubles as the output
//!   head when the model ties them, instead of a second, f32 copy.
//!
//! Weights keep their GGUF values where the kernels have a form for them: Q4_0, Q4_1, Q4_K
//! (4-bit), Q5_0, Q5_1 (5-bit) and Q8_0 blocks are read as they are (`w = d·u − m` per 32
//! values, exactly, but for Q4_K's sub-block scales: products of two numbers, rounded to the
//! f16 that scales are kept in); other types (Q6_K, f16, f32, …) are dequantized and rounded to Q8_0, which
//! adds an error far below their own.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use kotae_kernels::QMatrix;

use crate::{Error, Result};

/// A projection `y = x·Wᵀ (+ b)` on int8 weights.
struct Linear {
    w: Arc<QMatrix>,
    b: Option<Tensor>,
}

impl Linear {
    /// `x`: `[tokens, in]` → `[tokens, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let m = x.dim(0)?;
        let y = Tensor::from_vec(self.product(x)?, (m, self.w.rows()), x.device())?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x·Wᵀ` row-major, without the bias.
    fn product(&self, x: &Tensor) -> Result<Vec<f32>> {
        let (m, k) = x.dims2()?;
        debug_assert_eq!(k, self.w.cols());
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; m * self.w.rows()];
        self.w.matmul(&xs, m, &mut out);
        Ok(out)
    }
}

struct Layer {
    attn_norm: Tensor,
    /// Query, key and value projections stacked (one product, one pass over the pool).
    qkv: Linear,
    o: Linear,
    ffn_norm: Tensor,
    /// Gate and up projections stacked.
    gate_up: Linear,
    down: Linear,
    /// `[kv_heads, capacity, head_dim]`, filled up to the model's position.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    capacity: usize,
}

/// A sequence's key/value cache, out of the model (see [`Int8Lm::swap_kv`]); the default is
/// an empty sequence.
#[derive(Default)]
pub struct KvState {
    /// Per layer: keys, values, capacity.
    layers: Vec<(Vec<f32>, Vec<f32>, usize)>,
    pos: usize,
}

/// The model: load with [`Int8Lm::from_gguf`], then [`Int8Lm::forward`] chunks of tokens.
pub struct Int8Lm {
    embed: Arc<QMatrix>,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Arc<QMatrix>,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    eps: f32,
    /// Inverse frequencies of the rotary embedding, `[head_dim / 2]`.
    inv_freq: Vec<f32>,
    /// Llama GGUF files keep llama.cpp's row permutation: rotate interleaved pairs.
    rope_interleaved: bool,
    context_length: usize,
    /// Tokens in the cache.
    pos: usize,
    device: Device,
}

impl Int8Lm {
    /// Read a GGUF model of architecture `llama` or `qwen2`.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        path: &Path,
    ) -> Result<Self> {
        let cpu = Device::Cpu;
        let arch =
            content.metadata.get("general.architecture").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
        if arch != "llama" && arch != "qwen2" {
            return Err(Error::invalid(path, format!("architecture '{arch}' is not supported (llama, qwen2)")));
        }
        let md = |key: &str| {
            content
                .metadata
                .get(&format!("{arch}.{key}"))
                .ok_or_else(|| Error::invalid(path, format!("GGUF metadata lacks {arch}.{key}")))
        };
        let hidden = md("embedding_length")?.to_u32()? as usize;
        let n_layer = md("block_count")?.to_u32()? as usize;
        let n_head = md("attention.head_count")?.to_u32()? as usize;
        let n_kv = md("attention.head_count_kv").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(n_head);
        let eps = md("attention.layer_norm_rms_epsilon")?.to_f32()?;
        let freq_base = md("rope.freq_base").and_then(|v| Ok(v.to_f32()?)).unwrap_or(10_000.0);
        let context_length = md("context_length").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(4096);
        let head_dim = hidden / n_head;
        let rope_dim = md("rope.dimension_count").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(Error::invalid(
                path,
                format!("partial rotary embedding ({rope_dim} of {head_dim}) is not supported"),
            ));
        }

        let read_q = |reader: &mut R, name: &str| -> Result<Option<QTensor>> {
            if !content.tensor_infos.contains_key(name) {
                return Ok(None);
            }
            Ok(Some(content.tensor(reader, name, &cpu)?))
        };
        let read = |reader: &mut R, name: &str| -> Result<Option<Tensor>> {
            Ok(match read_q(reader, name)? {
                Some(q) => Some(q.dequantize(&cpu)?),
                None => None,
            })
        };
        let need_q = |reader: &mut R, name: String| -> Result<Affine> {
            let q =
                read_q(reader, &name)?.ok_or_else(|| Error::invalid(path, format!("GGUF file lacks tensor {name}")))?;
            Affine::from_qtensor(&q, path)
        };
        let matrix =
            |parts: Vec<Affine>| -> Result<Arc<QMatrix>> { Ok(Arc::new(Affine::stack(parts, path)?.into_matrix())) };
        let need = |reader: &mut R, name: String| -> Result<Tensor> {
            read(reader, &name)?.ok_or_else(|| Error::invalid(path, format!("GGUF file lacks tensor {name}")))
        };
        let embed = matrix(vec![need_q(reader, "token_embd.weight".into())?])?;
        let norm = need(reader, "output_norm.weight".into())?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            // Several projections stacked into one matrix; biases stacked alike (zeros where a
            // projection has none), or none at all.
            let mut stacked = |names: &[&str]| -> Result<Linear> {
                let mut ws = Vec::new();
                let mut bs = Vec::new();
                for name in names {
                    let w = need_q(reader, format!("{p}.{name}.weight"))?;
                    let rows = w.rows;
                    ws.push(w);
                    bs.push((read(reader, &format!("{p}.{name}.bias"))?, rows));
                }
                let b = if bs.iter().any(|(b, _)| b.is_some()) {
                    let parts = bs
                        .into_iter()
                        .map(|(b, rows)| b.map_or_else(|| Tensor::zeros(rows, DType::F32, &cpu), Ok))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Some(Tensor::cat(&parts, 0)?)
                } else {
                    None
                };
                Ok(Linear { w: matrix(ws)?, b })
            };
            layers.push(Layer {
                qkv: stacked(&["attn_q", "attn_k", "attn_v"])?,
                o: stacked(&["attn_output"])?,
                gate_up: stacked(&["ffn_gate", "ffn_up"])?,
                down: stacked(&["ffn_down"])?,
                attn_norm: need(reader, format!("{p}.attn_norm.weight"))?,
                ffn_norm: need(reader, format!("{p}.ffn_norm.weight"))?,
                k_cache: Vec::new(),
                v_cache: Vec::new(),
                capacity: 0,
            });
        }
        let head = match read_q(reader, "output.weight")? {
            Some(q) => matrix(vec![Affine::from_qtensor(&q, path)?])?,
            None => embed.clone(),
        };
        let inv_freq = (0..head_dim).step_by(2).map(|i| 1f32 / freq_base.powf(i as f32 / head_dim as f32)).collect();
        Ok(Self {
            embed,
            layers,
            norm,
            head,
            n_head,
            n_kv,
            head_dim,
            eps,
            inv_freq,
            rope_interleaved: arch == "llama",
            context_length,
            pos: 0,
            device: cpu,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Bytes of weights held.
    pub fn size_bytes(&self) -> usize {
        let mats: usize = self
            .layers
            .iter()
            .map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down].iter().map(|x| x.w.size_bytes()).sum::<usize>())
            .sum();
        let head = if Arc::ptr_eq(&self.embed, &self.head) { 0 } else { self.head.size_bytes() };
        mats + self.embed.size_bytes() + head
    }

    /// Put `state` (a sequence's key/value cache, or an empty one) into the model and return
    /// the sequence that was there: several sequences share one model, a token at a time.
    pub fn swap_kv(&mut self, state: KvState) -> KvState {
        let mut incoming = state.layers.into_iter();
        let mut out = KvState { layers: Vec::with_capacity(self.layers.len()), pos: self.pos };
        for l in &mut self.layers {
            let (k, v, cap) = incoming.next().unwrap_or_default();
            out.layers.push((
                std::mem::replace(&mut l.k_cache, k),
                std::mem::replace(&mut l.v_cache, v),
                std::mem::replace(&mut l.capacity, cap),
            ));
        }
        self.pos = state.pos;
        out
    }

    /// Forget the cached sequence.
    pub fn clear_kv_cache(&mut self) {
        self.pos = 0;
    }

    /// Feed `ids` at position `pos` (the number of tokens already fed; 0 starts a new
    /// sequence) and return the logits of the last one, `[vocab]`.
    pub fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        // On a worker of the pool, the products' parallel loops start on this thread and wake
        // one other worker, instead of waking the pool and blocking this thread each time.
        rayon::scope(|_| self.forward_on_pool(ids, pos))
    }

    fn forward_on_pool(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Generation("forward: no tokens".into()));
        }
        if pos > self.pos {
            return Err(Error::Generation(format!(
                "forward at position {pos}, but only {} tokens are cached",
                self.pos
            )));
        }
        let t = ids.len();
        let mut x = self.embed_tokens(ids)?;
        let (cos, sin) = self.rope_tables(pos, t)?;
        for layer in 0..self.layers.len() {
            x = self.layer(layer, &x, pos, &cos, &sin)?;
        }
        self.pos = pos + t;
        let last = x.narrow(0, t - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        let last = last.flatten_all()?.to_vec1::<f32>()?;
        let mut logits = vec![0f32; self.head.rows()];
        self.head.matmul(&last, 1, &mut logits);
        Ok(Tensor::from_vec(logits, self.head.rows(), &self.device)?)
    }

    /// A model of this one's first `layers` layers sharing its weights (no copy), with
    /// empty caches of its own: for reading states beside the generator.
    pub fn share(&self, layers: usize) -> Int8Lm {
        Int8Lm {
            embed: self.embed.clone(),
            layers: self
                .layers
                .iter()
                .take(layers)
                .map(|l| Layer {
                    attn_norm: l.attn_norm.clone(),
                    qkv: Linear { w: l.qkv.w.clone(), b: l.qkv.b.clone() },
                    o: Linear { w: l.o.w.clone(), b: l.o.b.clone() },
                    ffn_norm: l.ffn_norm.clone(),
                    gate_up: Linear { w: l.gate_up.w.clone(), b: l.gate_up.b.clone() },
                    down: Linear { w: l.down.w.clone(), b: l.down.b.clone() },
                    k_cache: Vec::new(),
                    v_cache: Vec::new(),
                    capacity: 0,
                })
                .collect(),
            norm: self.norm.clone(),
            head: self.head.clone(),
            n_head: self.n_head,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
            eps: self.eps,
            inv_freq: self.inv_freq.clone(),
            rope_interleaved: self.rope_interleaved,
            context_length: self.context_length,
            pos: 0,
            device: self.device.clone(),
        }
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Residual-stream states of a fresh sequence `ids` (the cache is reset first): for each
    /// layer, the state of the last position after that layer, and its mean over positions,
    /// each `[hidden]`, for the first `layers` layers (the rest are not run). What a probe on
    /// the model's representation of a text reads.
    pub fn layer_states(&mut self, ids: &[u32], layers: usize) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        rayon::scope(|_| {
            if ids.is_empty() {
                return Err(Error::Generation("layer_states: no tokens".into()));
            }
            self.pos = 0;
            let t = ids.len();
            let mut x = self.embed_tokens(ids)?;
            let (cos, sin) = self.rope_tables(0, t)?;
            let mut out = Vec::with_capacity(self.layers.len());
            for layer in 0..self.layers.len().min(layers) {
                x = self.layer(layer, &x, 0, &cos, &sin)?;
                let last = x.narrow(0, t - 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
                let mean = x.mean(0)?.to_vec1::<f32>()?;
                out.push((last, mean));
            }
            self.pos = 0;
            Ok(out)
        })
    }

    /// The embedding rows of `ids`, `[tokens, hidden]`.
    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let hidden = self.embed.cols();
        let mut x = vec![0f32; ids.len() * hidden];
        for (row, &id) in x.chunks_mut(hidden).zip(ids) {
            if id as usize >= self.embed.rows() {
                return Err(Error::Generation(format!(
                    "token id {id} is outside the vocabulary ({})",
                    self.embed.rows()
                )));
            }
            self.embed.dequantize_row(id as usize, row);
        }
        Ok(Tensor::from_vec(x, (ids.len(), hidden), &self.device)?)
    }

    /// cos/sin of positions `pos..pos+t`, `[t, head_dim / 2]`.
    fn rope_tables(&self, pos: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in pos..pos + t {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((Tensor::from_vec(cos, (t, half), &self.device)?, Tensor::from_vec(sin, (t, half), &self.device)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(&mut self, i: usize, x: &Tensor, pos: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (t, hidden) = x.dims2()?;
        let (nh, nkv, hd) = (self.n_head, self.n_kv, self.head_dim);
        let interleaved = self.rope_interleaved;
        let l = &mut self.layers[i];
        let h = candle_nn::ops::rms_norm(x, &l.attn_norm, self.eps)?;
        let qkv = l.qkv.forward(&h)?;
        // [t, heads·hd] → [1, heads, t, hd] for the rotary kernel.
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?)
        };
        let rope = |y: &Tensor| -> Result<Tensor> {
            Ok(if interleaved {
                candle_nn::rotary_emb::rope_i(y, cos, sin)?
            } else {
                candle_nn::rotary_emb::rope(y, cos, sin)?
            })
        };
        let q = rope(&heads(qkv.narrow(1, 0, nh * hd)?, nh)?)?;
        let k = rope(&heads(qkv.narrow(1, nh * hd, nkv * hd)?, nkv)?)?;
        let v = heads(qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?, nkv)?;
        l.append_kv(&k.flatten_all()?.to_vec1()?, &v.flatten_all()?.to_vec1()?, nkv, hd, pos, t);
        let s = pos + t;
        let scale = 1.0 / (hd as f64).sqrt();
        let shape = kotae_kernels::KvShape { heads: nh, kv_heads: nkv, head_dim: hd, capacity: l.capacity, len: s };
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; nh * t * hd];
        let y = if t == 1 {
            kotae_kernels::attend_one(&q, &l.k_cache, &l.v_cache, shape, scale as f32, &mut out);
            Tensor::from_vec(out, (1, nh * hd), x.device())?
        } else {
            // The prompt: every new token against the cache and the new tokens before it.
            kotae_kernels::causal_attention(&q, t, &l.k_cache, &l.v_cache, shape, scale as f32, &mut out);
            Tensor::from_vec(out, (nh, t, hd), x.device())?.transpose(0, 1)?.contiguous()?.reshape((t, nh * hd))?
        };
        let x = (x + l.o.forward(&y)?)?;
        let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, self.eps)?;
        let ffn = l.gate_up.w.rows() / 2;
        let act = match &l.gate_up.b {
            None => Tensor::from_vec(kotae_kernels::act::silu_mul(&l.gate_up.product(&h)?, ffn), (t, ffn), x.device())?,
            Some(_) => {
                let gu = l.gate_up.forward(&h)?;
                (candle_nn::ops::silu(&gu.narrow(1, 0, ffn)?)? * gu.narrow(1, ffn, ffn)?)?
            }
        };
        let out = (&x + l.down.forward(&act)?)?;
        debug_assert_eq!(out.dims2()?, (t, hidden));
        Ok(out)
    }
}

impl Layer {
    /// Write `k`, `v` (`[kv, t, hd]`) at `pos` into the cache, growing it by doubling (the
    /// filled part copied once).
    fn append_kv(&mut self, k: &[f32], v: &[f32], nkv: usize, hd: usize, pos: usize, t: usize) {
        let need = pos + t;
        if need > self.capacity {
            let cap = need.max(2 * self.capacity).max(256).next_multiple_of(256);
            for cache in [&mut self.k_cache, &mut self.v_cache] {
                let mut grown = vec![0f32; nkv * cap * hd];
                for h in 0..nkv {
                    let old = &cache[h * self.capacity * hd..][..pos * hd];
                    grown[h * cap * hd..][..pos * hd].copy_from_slice(old);
                }
                *cache = grown;
            }
            self.capacity = cap;
        }
        for h in 0..nkv {
            let at = (h * self.capacity + pos) * hd;
            self.k_cache[at..at + t * hd].copy_from_slice(&k[h * t * hd..(h + 1) * t * hd]);
            self.v_cache[at..at + t * hd].copy_from_slice(&v[h * t * hd..(h + 1) * t * hd]);
        }
    }
}

/// A weight matrix as affine blocks of 32 values, `w = d·u − m`, the input of
/// [`QMatrix::from_affine`].
struct Affine {
    rows: usize,
    cols: usize,
    u: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
    bits: u32,
}

impl Affine {
    /// Read GGUF blocks as they are where the kernels have a form for them, else dequantize and
    /// round to Q8_0.
    fn from_qtensor(q: &QTensor, path: &Path) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        if !cols.is_multiple_of(kotae_kernels::QK) {
            return Err(Error::invalid(path, format!("a {rows}x{cols} matrix: rows must be a multiple of 32 long")));
        }
        let n = rows * cols;
        let (mut u, mut d, mut m) = (vec![0u8; n], vec![0f32; n / 32], vec![0f32; n / 32]);
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let data = q.data()?;
        let bits = match q.dtype() {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0 => {
                let (size, bits) = match q.dtype() {
                    GgmlDType::Q4_0 => (18, 4),
                    GgmlDType::Q4_1 => (20, 4),
                    GgmlDType::Q5_0 => (22, 5),
                    GgmlDType::Q5_1 => (24, 5),
                    _ => (34, 8),
                };
                for (i, b) in data.chunks_exact(size).enumerate() {
                    let ub = &mut u[i * 32..(i + 1) * 32];
                    let scale = f16(b);
                    d[i] = scale;
                    match q.dtype() {
                        GgmlDType::Q8_0 => {
                            for (u, &q) in ub.iter_mut().zip(&b[2..34]) {
                                *u = (q as i8 as i16 + 128) as u8;
                            }
                            m[i] = 128.0 * scale;
                        }
                        dt => {
                            // Offsets: symmetric types subtract 8 or 16, the "_1" types add a min.
                            let (qh, qs, off) = match dt {
                                GgmlDType::Q4_0 => (0u32, &b[2..18], 8.0 * scale),
                                GgmlDType::Q4_1 => (0, &b[4..20], -f16(&b[2..4])),
                                GgmlDType::Q5_0 => {
                                    (u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22], 16.0 * scale)
                                }
                                _ => (u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24], -f16(&b[2..4])),
                            };
                            for j in 0..16 {
                                ub[j] = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4) as u8;
                                ub[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
                            }
                            m[i] = off;
                        }
                    }
                }
                bits
            }
            GgmlDType::Q4K => {
                // 256 values: d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles;
                // each 32-value sub-block is d·sc·q − dmin·mn.
                for (i, b) in data.chunks_exact(144).enumerate() {
                    let (dd, dmin, sc, qs) = (f16(&b[0..2]), f16(&b[2..4]), &b[4..16], &b[16..144]);
                    let scale_min = |j: usize| -> (u8, u8) {
                        if j < 4 {
                            (sc[j] & 63, sc[j + 4] & 63)
                        } else {
                            ((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
                        }
                    };
                    for c in 0..4 {
                        let q = &qs[32 * c..32 * c + 32];
                        for (h, shift) in [(0, 0), (1, 4)] {
                            let sub = i * 8 + 2 * c + h;
                            let (s, mn) = scale_min(2 * c + h);
                            d[sub] = dd * s as f32;
                            m[sub] = dmin * mn as f32;
                            for (u, &q) in u[sub * 32..(sub + 1) * 32].iter_mut().zip(q) {
                                *u = (q >> shift) & 0x0F;
                            }
                        }
                    }
                }
                4
            }
            _ => {
                let x = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                (u, d, m) = kotae_kernels::q8_0_affine(&x, rows, cols);
                8
            }
        };
        Ok(Self { rows, cols, u, d, m, bits })
    }

    /// Matrices with the same number of columns, one under the other.
    fn stack(parts: Vec<Affine>, path: &Path) -> Result<Self> {
        let mut it = parts.into_iter();
        let mut out = it.next().ok_or_else(|| Error::invalid(path, "no matrices to stack"))?;
        for p in it {
            if p.cols != out.cols {
                return Err(Error::invalid(
                    path,
                    format!("stacked projections differ in width ({} vs {})", p.cols, out.cols),
                ));
            }
            out.rows += p.rows;
            out.u.extend(p.u);
            out.d.extend(p.d);
            out.m.extend(p.m);
            out.bits = out.bits.max(p.bits);
        }
        Ok(out)
    }

    fn into_matrix(self) -> QMatrix {
        QMatrix::from_affine(self.rows, self.cols, &self.u, &self.d, &self.m, self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_blocks_read_exactly() {
        let cpu = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (16, 512), &cpu).unwrap();
        for dt in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&x, dt).unwrap();
            let want = q.dequantize(&cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let a = Affine::from_qtensor(&q, Path::new("t.gguf")).unwrap();
            let expect_bits = match dt {
                GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K => 4,
                GgmlDType::Q5_0 | GgmlDType::Q5_1 => 5,
                _ => 8,
            };
            assert_eq!(a.bits, expect_bits, "{dt:?}");
            // Types read as they are come back exactly (up to float rounding); Q6_K is rounded
            // to Q8_0 on top of its own error.
            let tol = if dt == GgmlDType::Q6K { 2e-2 } else { 1e-5 };
            // In the packed matrix, scales and offsets are f16: exact for the types whose
            // blocks carry f16 numbers, rounded for Q4_K's products of two (2⁻¹¹ relative).
            let packed_tol = if dt == GgmlDType::Q4K { 2e-3 } else { tol };
            for (i, w) in want.iter().enumerate() {
                let got = a.d[i / 32] * a.u[i] as f32 - a.m[i / 32];
                assert!((got - w).abs() <= tol * (1.0 + w.abs()), "{dt:?} [{i}]: {got} vs {w}");
            }
            // And through the packed matrix.
            let w = a.into_matrix();
            let mut row = vec![0f32; 512];
            w.dequantize_row(3, &mut row);
            for (got, w) in row.iter().zip(&want[3 * 512..4 * 512]) {
                assert!((got - w).abs() <= packed_tol * (1.0 + w.abs()), "{dt:?} row 3: {got} vs {w}");
            }
        }
    }
}
