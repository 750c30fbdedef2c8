//! A BERT encoder (multilingual-e5-small, all-MiniLM-L6-v2) on Kotae's int8 kernels: the
//! products of every layer run on `kotae_kernels::QMatrix` (weights in ggml's Q8_0 numbers,
//! activations rounded to 8 bits per block of 32), attention on `gemm`'s f32 products reading
//! the heads in place (`kotae_kernels::encoder_attention`), LayerNorm and GELU on the kernels'
//! vectorized loops; candle only looks the embeddings up. A layer works on plain buffers: no
//! tensor copies, transposes or concatenations between its steps.
//!
//! The sequences of a batch are packed end to end with no padding: every product runs on real
//! tokens only, and attention runs per sequence, so it needs no mask.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};
use kotae_kernels::QMatrix;
use rayon::prelude::*;

use crate::{Error, Result};

struct Linear {
    w: QMatrix,
    b: Vec<f32>,
}

impl Linear {
    /// `x·Wᵀ + b` for `m` rows, with `f` applied to the result in place (an activation).
    fn apply(&self, x: &[f32], m: usize, f: impl Fn(&mut [f32])) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.w.cols());
        let n = self.w.rows();
        let mut out = vec![0f32; m * n];
        self.w.matmul(x, m, &mut out);
        for row in out.chunks_mut(n) {
            for (y, b) in row.iter_mut().zip(&self.b) {
                *y += b;
            }
        }
        f(&mut out);
        out
    }

    /// The products of several dense layers stacked (query, key, value) and quantized.
    fn stacked(ws: &[Tensor], bs: &[Tensor]) -> Result<Self> {
        let w = Tensor::cat(ws, 0)?;
        let (rows, cols) = w.dims2()?;
        let b = Tensor::cat(bs, 0)?.to_vec1::<f32>()?;
        Ok(Linear { w: QMatrix::quantize(&w.flatten_all()?.to_vec1::<f32>()?, rows, cols), b })
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl LayerNorm {
    fn new(w: &Tensor, b: &Tensor) -> Result<Self> {
        Ok(LayerNorm { w: w.to_vec1::<f32>()?, b: b.to_vec1::<f32>()? })
    }
}

struct Layer {
    /// Query, key and value stacked.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

pub struct Int8Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    eps: f32,
    act: HiddenAct,
}

impl Int8Bert {
    /// From the tensors of a Hugging Face BERT checkpoint (names with or without `bert.`).
    pub fn new(config: &Config, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |name: &str| -> Result<Tensor> {
            tensors
                .get(name)
                .or_else(|| tensors.get(&format!("bert.{name}")))
                .cloned()
                .ok_or_else(|| Error::Generation(format!("BERT checkpoint lacks {name}")))
        };
        let norm = |p: &str| -> Result<LayerNorm> {
            LayerNorm::new(&get(&format!("{p}.weight"))?, &get(&format!("{p}.bias"))?)
        };
        let linear = |parts: &[&str]| -> Result<Linear> {
            let ws = parts.iter().map(|p| get(&format!("{p}.weight"))).collect::<Result<Vec<_>>>()?;
            let bs = parts.iter().map(|p| get(&format!("{p}.bias"))).collect::<Result<Vec<_>>>()?;
            Linear::stacked(&ws, &bs)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    qkv: linear(&[
                        &format!("{p}.attention.self.query"),
                        &format!("{p}.attention.self.key"),
                        &format!("{p}.attention.self.value"),
                    ])?,
                    attn_out: linear(&[&format!("{p}.attention.output.dense")])?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    up: linear(&[&format!("{p}.intermediate.dense")])?,
                    down: linear(&[&format!("{p}.output.dense")])?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: get("embeddings.word_embeddings.weight")?,
            position: get("embeddings.position_embeddings.weight")?,
            token_type: get("embeddings.token_type_embeddings.weight")?,
            emb_norm: norm("embeddings.LayerNorm")?,
            layers,
            heads: config.num_attention_heads,
            hidden: config.hidden_size,
            eps: config.layer_norm_eps as f32,
            act: config.hidden_act,
        })
    }

    /// Hidden states of the sequences packed end to end, `[Σ lengths, hidden]`.
    pub fn forward(&self, seqs: &[&Vec<u32>], device: &Device) -> Result<Tensor> {
        // On a worker of the pool, the products' parallel loops start on this thread.
        Ok(rayon::scope(|_| self.forward_on_pool(seqs, device, None))?.0)
    }

    /// Like [`Int8Bert::forward`], and also the hidden states after the first `split` layers
    /// (packed the same way): the input of a classifier that fine-tuned the layers above.
    pub fn forward_split(&self, seqs: &[&Vec<u32>], device: &Device, split: usize) -> Result<(Tensor, Tensor)> {
        let (out, states) = rayon::scope(|_| self.forward_on_pool(seqs, device, Some(split)))?;
        let states = states.unwrap_or_else(|| out.clone());
        Ok((out, states))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s weights in f32 (the int8 products dequantized), named as
    /// [`crate::classifier::EncoderTop`] reads them.
    pub fn layer_tensors(&self, i: usize, device: &Device) -> Result<HashMap<String, Tensor>> {
        let l = self.layers.get(i).ok_or_else(|| Error::Generation(format!("the encoder has no layer {i}")))?;
        let dense = |m: &Linear| -> Result<(Tensor, Tensor)> {
            let (rows, cols) = (m.w.rows(), m.w.cols());
            let mut w = vec![0f32; rows * cols];
            for (r, row) in w.chunks_mut(cols).enumerate() {
                m.w.dequantize_row(r, row);
            }
            Ok((Tensor::from_vec(w, (rows, cols), device)?, Tensor::new(m.b.as_slice(), device)?))
        };
        let mut out = HashMap::new();
        let (qkv_w, qkv_b) = dense(&l.qkv)?;
        let h = self.hidden;
        for (k, name) in ["q", "k", "v"].iter().enumerate() {
            out.insert(format!("{name}.weight"), qkv_w.narrow(0, k * h, h)?.contiguous()?);
            out.insert(format!("{name}.bias"), qkv_b.narrow(0, k * h, h)?.contiguous()?);
        }
        for (name, m) in [("o", &l.attn_out), ("up", &l.up), ("down", &l.down)] {
            let (w, b) = dense(m)?;
            out.insert(format!("{name}.weight"), w);
            out.insert(format!("{name}.bias"), b);
        }
        for (name, n) in [("ln1", &l.attn_norm), ("ln2", &l.out_norm)] {
            out.insert(format!("{name}.weight"), Tensor::new(n.w.as_slice(), device)?);
            out.insert(format!("{name}.bias"), Tensor::new(n.b.as_slice(), device)?);
        }
        Ok(out)
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Replace layers `split..` with `top` (an adapted embedder's layers).
    pub fn replace_top(&mut self, split: usize, top: Int8Layers) -> Result<()> {
        if split + top.layers.len() != self.layers.len() || top.heads != self.heads {
            return Err(Error::Generation(format!(
                "{} replacement layers from layer {split} do not fit an encoder of {} layers and {} heads",
                top.layers.len(),
                self.layers.len(),
                self.heads
            )));
        }
        self.layers.truncate(split);
        self.layers.extend(top.layers);
        Ok(())
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    fn forward_on_pool(
        &self,
        seqs: &[&Vec<u32>],
        device: &Device,
        split: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<u32> = seqs.iter().flat_map(|s| 0..s.len() as u32).collect();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let positions = Tensor::new(positions.as_slice(), &Device::Cpu)?;
        let x = self.word.index_select(&ids, 0)?.add(&self.position.index_select(&positions, 0)?)?;
        let x = x.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        let mut x = x.flatten_all()?.to_vec1::<f32>()?;
        kotae_kernels::act::add_layer_norm(&mut x, None, &self.emb_norm.w, &self.emb_norm.b, self.eps);
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let tokens = lens.iter().sum::<usize>();
        let mut states = None;
        for (li, l) in self.layers.iter().enumerate() {
            if split == Some(li) {
                states = Some(Tensor::from_slice(&x, (tokens, self.hidden), device)?);
            }
            x = layer_forward(l, &x, &lens, self.heads, self.eps, self.act)?;
        }
        Ok((Tensor::from_vec(x, (tokens, self.hidden), device)?, states))
    }
}

/// One post-LayerNorm BERT layer on sequences packed end to end (`lens` tokens each), `x`
/// `[Σ lens, hidden]` row-major.
fn layer_forward(l: &Layer, x: &[f32], lens: &[usize], nh: usize, eps: f32, act: HiddenAct) -> Result<Vec<f32>> {
    let h = l.attn_out.w.rows();
    let t = lens.iter().sum::<usize>();
    if x.len() != t * h {
        return Err(Error::Generation(format!("encoder layer: {} values are not {t} tokens × {h}", x.len())));
    }
    let scale = 1.0 / ((h / nh) as f32).sqrt();
    let qkv = l.qkv.apply(x, t, |_| {});
    // Attention per sequence, the sequences in parallel (each one's products are too small to
    // keep the pool busy alone); each worker keeps its scores buffer.
    let mut att = vec![0f32; t * h];
    let mut parts = Vec::with_capacity(lens.len());
    let (mut rest, mut at) = (att.as_mut_slice(), 0);
    for &n in lens {
        let (part, tail) = rest.split_at_mut(n * h);
        parts.push((&qkv[at * 3 * h..(at + n) * 3 * h], part, n));
        (rest, at) = (tail, at + n);
    }
    parts.into_par_iter().for_each_init(Vec::new, |scores, (qkv, out, n)| {
        kotae_kernels::encoder_attention(qkv, n, h, nh, scale, out, scores)
    });
    drop(qkv);
    let mut y = l.attn_out.apply(&att, t, |_| {});
    drop(att);
    kotae_kernels::act::add_layer_norm(&mut y, Some(x), &l.attn_norm.w, &l.attn_norm.b, eps);
    let up = match act {
        HiddenAct::Gelu => l.up.apply(&y, t, kotae_kernels::act::gelu_erf),
        HiddenAct::GeluApproximate => {
            let up = Tensor::from_vec(l.up.apply(&y, t, |_| {}), (t, l.up.w.rows()), &Device::Cpu)?;
            up.gelu()?.flatten_all()?.to_vec1::<f32>()?
        }
        HiddenAct::Relu => l.up.apply(&y, t, |v| v.iter_mut().for_each(|x| *x = x.max(0.0))),
    };
    let mut z = l.down.apply(&up, t, |_| {});
    drop(up);
    kotae_kernels::act::add_layer_norm(&mut z, Some(&y), &l.out_norm.w, &l.out_norm.b, eps);
    Ok(z)
}

/// Encoder layers alone on the int8 kernels: a tuned classifier's top layers, from tensors
/// named as [`crate::classifier::EncoderTop`] names them (GELU, as in e5 and MiniLM).
pub struct Int8Layers {
    layers: Vec<Layer>,
    heads: usize,
    eps: f32,
}

impl Int8Layers {
    pub fn new(layers: &[HashMap<String, Tensor>], heads: usize, eps: f64) -> Result<Self> {
        let layers = layers
            .iter()
            .map(|t| {
                let get = |n: &str| -> Result<Tensor> {
                    t.get(n).cloned().ok_or_else(|| Error::Generation(format!("encoder layer lacks {n}")))
                };
                let linear = |parts: &[&str]| -> Result<Linear> {
                    let ws = parts.iter().map(|p| get(&format!("{p}.weight"))).collect::<Result<Vec<_>>>()?;
                    let bs = parts.iter().map(|p| get(&format!("{p}.bias"))).collect::<Result<Vec<_>>>()?;
                    Linear::stacked(&ws, &bs)
                };
                let ln = |n: &str| -> Result<LayerNorm> {
                    LayerNorm::new(&get(&format!("{n}.weight"))?, &get(&format!("{n}.bias"))?)
                };
                Ok(Layer {
                    qkv: linear(&["q", "k", "v"])?,
                    attn_out: linear(&["o"])?,
                    attn_norm: ln("ln1")?,
                    up: linear(&["up"])?,
                    down: linear(&["down"])?,
                    out_norm: ln("ln2")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, heads, eps: eps as f32 })
    }

    /// Sequences packed end to end (`[Σ lens, hidden]`) through every layer.
    pub fn forward(&self, x: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let (tokens, hidden) = x.dims2()?;
        let x = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let out = rayon::scope(|_| {
            let mut x = x;
            for l in &self.layers {
                x = layer_forward(l, &x, lens, self.heads, self.eps, HiddenAct::Gelu)?;
            }
            Ok::<_, Error>(x)
        })?;
        Ok(Tensor::from_vec(out, (tokens, hidden), &Device::Cpu)?)
    }
}
