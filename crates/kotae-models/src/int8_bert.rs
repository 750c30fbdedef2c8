//! A BERT encoder (multilingual-e5-small, all-MiniLM-L6-v2) on Kotae's int8 kernels: the
//! products of every layer run on `kotae_kernels::QMatrix` (weights in ggml's Q8_0 numbers,
//! activations rounded to 8 bits per block of 32), the rest (embeddings, LayerNorm, GELU,
//! attention) in candle.
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
    /// `x·Wᵀ + b`, with `f` applied to the result in place (an activation, or nothing).
    fn forward_with(&self, x: &Tensor, f: impl Fn(&mut [f32])) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        debug_assert_eq!(k, self.w.cols());
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let n = self.w.rows();
        let mut out = vec![0f32; m * n];
        self.w.matmul(&xs, m, &mut out);
        for row in out.chunks_mut(n) {
            for (y, b) in row.iter_mut().zip(&self.b) {
                *y += b;
            }
        }
        f(&mut out);
        Ok(Tensor::from_vec(out, (m, n), x.device())?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, |_| {})
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
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
            Ok(LayerNorm { w: get(&format!("{p}.weight"))?, b: get(&format!("{p}.bias"))? })
        };
        let linear = |parts: &[&str]| -> Result<Linear> {
            let ws = parts.iter().map(|p| get(&format!("{p}.weight"))).collect::<Result<Vec<_>>>()?;
            let bs = parts.iter().map(|p| get(&format!("{p}.bias"))).collect::<Result<Vec<_>>>()?;
            let w = Tensor::cat(&ws, 0)?;
            let (rows, cols) = w.dims2()?;
            let b = Tensor::cat(&bs, 0)?.to_vec1::<f32>()?;
            Ok(Linear { w: QMatrix::quantize(&w.flatten_all()?.to_vec1::<f32>()?, rows, cols), b })
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
        rayon::scope(|_| self.forward_on_pool(seqs, device))
    }

    fn forward_on_pool(&self, seqs: &[&Vec<u32>], device: &Device) -> Result<Tensor> {
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<u32> = seqs.iter().flat_map(|s| 0..s.len() as u32).collect();
        let ids = Tensor::new(ids.as_slice(), device)?;
        let positions = Tensor::new(positions.as_slice(), device)?;
        let x = self.word.index_select(&ids, 0)?.add(&self.position.index_select(&positions, 0)?)?;
        let x = x.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        let mut x = self.norm(&x, &self.emb_norm)?;
        let (h, nh) = (self.hidden, self.heads);
        let hd = h / nh;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let qkv = l.qkv.forward(&x)?;
            // Attention per sequence, the sequences in parallel (each one's products are too
            // small to keep the pool busy alone).
            let starts: Vec<usize> = seqs
                .iter()
                .scan(0, |at, s| {
                    let start = *at;
                    *at += s.len();
                    Some(start)
                })
                .collect();
            let outs = starts
                .par_iter()
                .zip(seqs.par_iter())
                .map(|(&at, s)| -> Result<Tensor> {
                    let n = s.len();
                    let part = qkv.narrow(0, at, n)?;
                    let heads = |i: usize| -> Result<Tensor> {
                        Ok(part.narrow(1, i * h, h)?.reshape((n, nh, hd))?.transpose(0, 1)?.contiguous()?)
                    };
                    let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
                    let mut att = (q * scale)?.matmul(&k.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                    kotae_kernels::act::softmax_rows(&mut att, n);
                    let att = Tensor::from_vec(att, (nh, n, n), device)?;
                    Ok(att.matmul(&v)?.transpose(0, 1)?.contiguous()?.reshape((n, h))?)
                })
                .collect::<Result<Vec<_>>>()?;
            let att = Tensor::cat(&outs, 0)?;
            x = self.norm(&(l.attn_out.forward(&att)? + &x)?, &l.attn_norm)?;
            let up = match self.act {
                HiddenAct::Gelu => l.up.forward_with(&x, kotae_kernels::act::gelu_erf)?,
                HiddenAct::GeluApproximate => l.up.forward(&x)?.gelu()?,
                HiddenAct::Relu => l.up.forward(&x)?.relu()?,
            };
            x = self.norm(&(l.down.forward(&up)? + &x)?, &l.out_norm)?;
        }
        Ok(x)
    }

    fn norm(&self, x: &Tensor, n: &LayerNorm) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(x, &n.w, &n.b, self.eps)?)
    }
}
