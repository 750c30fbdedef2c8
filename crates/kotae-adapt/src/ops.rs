//! Fused CPU ops with a backward pass for the training path.
//!
//! candle's fused softmax, RMSNorm and rotary kernels have no backward, and their composed
//! versions keep every intermediate tensor alive until the backward pass (the composed
//! softmax alone keeps six attention-sized tensors per layer). These ops do one pass forward,
//! keep only their output (and input), and compute the gradient in one pass. Off the CPU or
//! in another dtype they fall back to the composed ops, so CUDA training still works.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let v = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input expected"),
    }
}

fn fast(xs: &[&Tensor]) -> bool {
    xs.iter().all(|x| x.device().is_cpu() && x.dtype() == DType::F32)
}

/// Rows below this size are not worth a task each.
const MIN_ROWS_PER_TASK: usize = 16;

// ---------------------------------------------------------------- dropout

/// Inverted dropout whose mask is a hash of (`seed`, element index): drawn in parallel, never
/// stored (the backward pass recomputes it), and the same for the same seed on any machine.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    let op = Dropout { keep: 1.0 - p, seed };
    if fast(&[x]) {
        return x.contiguous()?.apply_op1(op);
    }
    if x.device().is_cpu() {
        let mask: Vec<f32> = (0..x.elem_count()).map(|i| op.scale(i)).collect();
        return x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    }
    // On a GPU the mask is drawn there (hashing it on the host and copying it over cost more
    // than the whole training step): from the device's generator, so not the same as the CPU's.
    let keep = x.rand_like(0.0, 1.0)?.lt(op.keep as f64)?.to_dtype(x.dtype())?;
    (x * keep)? / op.keep as f64
}

#[derive(Clone, Copy)]
struct Dropout {
    keep: f32,
    seed: u64,
}

impl Dropout {
    /// `1/keep` for a kept element, 0 for a dropped one (SplitMix64 of the index).
    fn scale(&self, i: usize) -> f32 {
        let mut z = self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if ((z >> 40) as f32) < self.keep * (1u64 << 24) as f32 {
            1.0 / self.keep
        } else {
            0.0
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        const CHUNK: usize = 4096;
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(|(c, (yc, xc))| {
            for (j, (o, v)) in yc.iter_mut().zip(xc).enumerate() {
                *o = v * self.scale(c * CHUNK + j);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

// ---------------------------------------------------------------- causal softmax

/// `softmax(scale · s)` over the last dimension of attention scores `[.., t, t]` where query
/// `i` sees keys `0..=i` (masked entries are exactly 0).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if fast(&[scores]) {
        return scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32 });
    }
    // The mask is made on the scores' device (no host-to-GPU copy per call).
    let t = scores.dim(D::Minus1)?;
    let idx = Tensor::arange(0u32, t as u32, scores.device())?;
    let future = idx.unsqueeze(0)?.broadcast_gt(&idx.unsqueeze(1)?)?; // [i, j]: j > i
    let neg = Tensor::full(f32::NEG_INFINITY, (t, t), scores.device())?.to_dtype(scores.dtype())?;
    let mask = future.where_cond(&neg, &neg.zeros_like()?)?;
    // candle_nn::ops::softmax_last_dim is fused but has no backward pass: the composed one.
    candle_nn::ops::softmax(&(scores * scale)?.broadcast_add(&mask)?, D::Minus1)
}

struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let t = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t).zip(x.par_chunks(t)).enumerate().with_min_len(MIN_ROWS_PER_TASK).for_each(
            |(r, (yr, xr))| {
                let n = r % t + 1; // query position i sees keys 0..=i
                let m = xr[..n].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) * self.scale;
                let mut sum = 0.0;
                for j in 0..n {
                    let e = (xr[j] * self.scale - m).exp();
                    yr[j] = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                yr[..n].iter_mut().for_each(|v| *v *= inv);
            },
        );
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad { scale: self.scale })?))
    }
}

/// `∂s = scale · y ⊙ (g − Σ g⊙y)` per row.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let t = l1.dims()[l1.dims().len() - 1];
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(t).zip(y.par_chunks(t).zip(g.par_chunks(t))).with_min_len(MIN_ROWS_PER_TASK).for_each(
            |(d, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for j in 0..t {
                    d[j] = self.scale * yr[j] * (gr[j] - dot);
                }
            },
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- RMSNorm

/// `x / rms(x) · w` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if fast(&[x, w]) {
        return x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps });
    }
    candle_nn::ops::rms_norm_slow(x, w, eps)
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(MIN_ROWS_PER_TASK).for_each(|(yr, xr)| {
            let r = inv_rms(xr, self.eps);
            for k in 0..d {
                yr[k] = xr[k] * r * w[k];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormGradX { eps: self.eps })?;
        let dw = x.apply_op2_no_bwd(&g, &RmsNormGradW { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `∂x = r·(g⊙w) − x · r³/d · Σ g⊙w⊙x`.
struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "rms-norm-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let d = w.len();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(d).zip(x.par_chunks(d).zip(g.par_chunks(d))).with_min_len(MIN_ROWS_PER_TASK).for_each(
            |(o, (xr, gr))| {
                let r = inv_rms(xr, self.eps);
                let dot: f32 = (0..d).map(|k| gr[k] * w[k] * xr[k]).sum();
                let c = r * r * r / d as f32 * dot;
                for k in 0..d {
                    o[k] = r * gr[k] * w[k] - xr[k] * c;
                }
            },
        );
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `∂w = Σ_rows g ⊙ x · r`.
struct RmsNormGradW {
    eps: f32,
}

impl CustomOp2 for RmsNormGradW {
    fn name(&self) -> &'static str {
        "rms-norm-grad-w"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let d = l1.dims()[l1.dims().len() - 1];
        let mut dw = vec![0f32; d];
        for (xr, gr) in x.chunks(d).zip(g.chunks(d)) {
            let r = inv_rms(xr, self.eps);
            for k in 0..d {
                dw[k] += gr[k] * xr[k] * r;
            }
        }
        Ok((CpuStorage::F32(dw), Shape::from(d)))
    }
}

// ---------------------------------------------------------------- rotary embedding

/// Rotary embedding in the Hugging Face (non-interleaved) layout: `x: [b, h, t, d]`,
/// `cos`/`sin: [t, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if fast(&[x, cos, sin]) {
        return x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { sign: 1.0 });
    }
    candle_nn::rotary_emb::rope_slow(x, cos, sin)
}

/// `sign = -1` rotates backwards: the gradient of a rotation is the opposite rotation.
struct Rope {
    sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let cos = slice(s2, l2, self.name())?;
        let sin = slice(s3, l3, self.name())?;
        let dims = l1.dims();
        let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let half = d / 2;
        if cos.len() != t * half || sin.len() != t * half {
            candle_core::bail!("rope: cos/sin must be [{t}, {half}]");
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).enumerate().with_min_len(MIN_ROWS_PER_TASK).for_each(
            |(r, (yr, xr))| {
                let p = (r % t) * half;
                for i in 0..half {
                    let (c, s) = (cos[p + i], self.sign * sin[p + i]);
                    yr[i] = xr[i] * c - xr[i + half] * s;
                    yr[i + half] = xr[i + half] * c + xr[i] * s;
                }
            },
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, sin, &Rope { sign: -self.sign })?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < tol, "max |Δ| = {d}");
    }

    #[test]
    fn dropout_keeps_the_expected_share_and_its_gradient_uses_the_same_mask() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((64, 300), DType::F32, &dev).unwrap()).unwrap();
        let y = dropout(x.as_tensor(), 0.25, 7).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let kept = v.iter().filter(|&&a| a > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "{kept}");
        assert!(v.iter().all(|&a| a == 0.0 || (a - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(v, dropout(x.as_tensor(), 0.25, 7).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(v, dropout(x.as_tensor(), 0.25, 8).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // d(sum y)/dx is the mask itself.
        let g = y.sum_all().unwrap().backward().unwrap();
        let gv: Vec<f32> = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(gv, v);
    }

    /// Forward values and gradients of the fused ops equal those of candle's composed ops.
    #[test]
    fn fused_ops_match_the_composed_ones_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 7, 8);
        // Softmax.
        let s = Var::from_tensor(&Tensor::randn(0f32, 2.0, (b, h, t, t), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap();
        let mask: Vec<f32> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let slow =
            candle_nn::ops::softmax(&(s.as_tensor() * 0.3).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let fastv = causal_softmax(s.as_tensor(), 0.3).unwrap();
        close(&slow, &fastv, 1e-6);
        let g1 = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fastv * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(s.as_tensor()).unwrap(), g2.get(s.as_tensor()).unwrap(), 1e-5);
        // RMSNorm, both inputs.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, d), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.2, d, &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (5, d), &dev).unwrap();
        let slow = candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let fastv = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        close(&slow, &fastv, 1e-5);
        let g1 = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fastv * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap(), 1e-4);
        close(g1.get(w.as_tensor()).unwrap(), g2.get(w.as_tensor()).unwrap(), 1e-4);
        // Rope.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap()).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (t, d / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (t, d / 2), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
        let slow = candle_nn::rotary_emb::rope_slow(x.as_tensor(), &cos, &sin).unwrap();
        let fastv = rope(x.as_tensor(), &cos, &sin).unwrap();
        close(&slow, &fastv, 1e-5);
        let g1 = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fastv * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap(), 1e-5);
    }
}
