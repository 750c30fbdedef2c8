//! Training ops for any device (the GPU path), built from candle's kernels, that keep only
//! what their backward pass needs.
//!
//! candle's autograd keeps every intermediate tensor of the forward pass until `backward`
//! (each node holds its inputs), and its matmul backward computes the gradient of both
//! operands. On a GPU the composed ops therefore cost a weight-sized gradient for every frozen
//! matrix at every step (as much arithmetic as the forward pass), six attention-sized tensors
//! per layer for the softmax, and several vocabulary-sized ones for the loss: kotae used
//! 1.4–1.7× PEFT's GPU memory (scripts/gpu/check.sh, 2026-11).
//!
//! Each op here computes its result outside the graph (candle's fused kernels where there are
//! some: softmax, RMSNorm, rotary embedding), then attaches it to its inputs with a
//! hand-written backward pass ([`Attached`]): the graph keeps the inputs and the result only.
//! Attention recomputes its scores in the backward pass, as flash attention does. The CPU keeps
//! its own fused kernels (`crate::ops`); the tests run these ops on the CPU against candle's
//! composed ones.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, D};

type CResult<T> = candle_core::Result<T>;

// ---------------------------------------------------------------- attaching a result

type Bwd1 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> CResult<Option<Tensor>> + Send + Sync>;
type Bwd2 = Box<dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> + Send + Sync>;
type Bwd3 = Box<
    dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)>
        + Send
        + Sync,
>;

/// A result computed beforehand, handed to the graph as the output of an op on `args`, with
/// `bwd` as its gradient. The forward pass copies the result's buffer once (candle offers no
/// way to wrap an existing buffer in a graph node); the result itself is dropped after it.
struct Attached<B> {
    name: &'static str,
    result: Mutex<Option<Tensor>>,
    bwd: B,
}

impl<B> Attached<B> {
    fn new(name: &'static str, result: Tensor, bwd: B) -> CResult<Self> {
        // The copy below takes the whole buffer: it must hold exactly this tensor.
        let result =
            if result.is_contiguous() && result.layout().start_offset() == 0 { result } else { result.copy()? };
        Ok(Self { name, result: Mutex::new(Some(result)), bwd })
    }

    fn take(&self) -> CResult<Tensor> {
        match self.result.lock() {
            Ok(mut r) => r.take().ok_or_else(|| candle_core::Error::Msg(format!("{}: run twice", self.name))),
            Err(_) => candle_core::bail!("{}: poisoned", self.name),
        }
    }

    fn cpu(&self) -> CResult<(CpuStorage, Shape)> {
        let r = self.take()?;
        let (s, l) = r.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => Ok((c.try_clone(l)?, r.shape().clone())),
            _ => candle_core::bail!("{}: result not on the CPU", self.name),
        }
    }

    fn cuda(&self) -> CResult<(CudaStorage, Shape)> {
        let r = self.take()?;
        let (s, l) = r.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => Ok((c.try_clone(l)?, r.shape().clone())),
            _ => candle_core::bail!("{}: result not on the GPU", self.name),
        }
    }
}

impl CustomOp1 for Attached<Bwd1> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> CResult<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> CResult<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        (self.bwd)(&arg.detach(), res, grad)
    }
}

impl CustomOp2 for Attached<Bwd2> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> CResult<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> CResult<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        (self.bwd)(&a.detach(), &b.detach(), res, grad)
    }
}

impl CustomOp3 for Attached<Bwd3> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        (self.bwd)(&a.detach(), &b.detach(), &c.detach(), res, grad)
    }
}

fn attach1(
    name: &'static str,
    x: &Tensor,
    y: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor) -> CResult<Option<Tensor>> + Send + Sync + 'static,
) -> CResult<Tensor> {
    let bwd: Bwd1 = Box::new(bwd);
    let op = Attached::new(name, y, bwd)?;
    x.apply_op1(op)
}

fn attach2(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    y: Tensor,
    bwd: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> + Send + Sync + 'static,
) -> CResult<Tensor> {
    let bwd: Bwd2 = Box::new(bwd);
    let op = Attached::new(name, y, bwd)?;
    a.apply_op2(b, op)
}

// ---------------------------------------------------------------- ops

/// `x · Wᵀ` for a frozen `W` (`x: [n, in]`, `W: [out, in]`): the backward pass gives only
/// `∂x = ∂y · W`, never a gradient for `W`.
pub fn frozen_matmul_t(x: &Tensor, w: &Tensor) -> CResult<Tensor> {
    debug_assert!(!w.track_op(), "frozen_matmul_t of a trained weight");
    if !x.track_op() {
        return x.matmul(&w.t()?);
    }
    let y = x.detach().matmul(&w.t()?)?;
    let w = w.detach();
    attach1("frozen-matmul", x, y, move |_, _, g| {
        let _p = crate::profile::span(g.device(), "bwd:frozen-matmul");
        Ok(Some(g.matmul(&w)?))
    })
}

/// `x / rms(x) · w` over the last dimension (candle's fused kernel), with the gradients of
/// `x` and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> CResult<Tensor> {
    let y = candle_nn::ops::rms_norm(&x.detach().contiguous()?, &w.detach().contiguous()?, eps)?;
    if !x.track_op() && !w.track_op() {
        return Ok(y);
    }
    // Only what is trained gets a gradient (with LoRA, no norm weight is).
    let (want_dx, want_dw) = (x.track_op(), w.track_op());
    attach2("rms-norm", x, w, y, move |x, w, _, g| {
        let _p = crate::profile::span(g.device(), "bwd:rms-norm");
        // In f32 whatever the model's dtype: the sums run over the hidden size.
        let dt = x.dtype();
        let (xf, wf, gf) = (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?);
        let d = xf.dim(D::Minus1)? as f64;
        let r = ((xf.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?.sqrt()?).recip()?; // [.., 1]
        let dx = if want_dx {
            let gw = gf.broadcast_mul(&wf)?;
            let dot = (&gw * &xf)?.sum_keepdim(D::Minus1)?;
            let c = ((r.sqr()? * &r)? * dot)?.affine(1.0 / d, 0.0)?;
            Some((gw.broadcast_mul(&r)? - xf.broadcast_mul(&c)?)?.to_dtype(dt)?)
        } else {
            None
        };
        let dw = if want_dw {
            let dims = xf.dim(D::Minus1)?;
            let rows = xf.elem_count() / dims;
            Some((gf * xf.broadcast_mul(&r)?)?.reshape((rows, dims))?.sum(0)?.to_dtype(w.dtype())?)
        } else {
            None
        };
        Ok((dx, dw))
    })
}

/// A dropout mask for `x` keeping `1 − p` (bytes, 1 = kept), drawn by `x`'s device's
/// generator (on a GPU not from the training seed, so a resumed run draws other masks).
fn dropout_mask(x: &Tensor, p: f32) -> CResult<Tensor> {
    let keep = 1.0 - p as f64;
    // Drawn and compared in f32 (in bf16 both would round, and keep a biased share). The
    // threshold is a device tensor: a scalar operand would be copied from the host, and such
    // a copy waits for the work queued before it.
    let threshold = Tensor::full(keep as f32, (), x.device())?.broadcast_as(x.shape())?;
    Tensor::rand(0f32, 1f32, x.shape(), x.device())?.lt(&threshold) // u8
}

/// The mask as the factor of inverted dropout: `mask / (1 − p)` in `dt`.
fn dropout_scale(mask: &Tensor, p: f32, dt: DType) -> CResult<Tensor> {
    mask.to_dtype(DType::F32)?.affine(1.0 / (1.0 - p as f64), 0.0)?.to_dtype(dt)
}

/// Inverted dropout; the graph keeps the mask as bytes.
pub fn dropout(x: &Tensor, p: f32) -> CResult<Tensor> {
    let mask = dropout_mask(x, p)?;
    let scale = move |m: &Tensor, dt: DType| dropout_scale(m, p, dt);
    let y = (x.detach() * scale(&mask, x.dtype())?)?;
    if !x.track_op() {
        return Ok(y);
    }
    attach1("dropout", x, y, move |_, _, g| {
        let _p = crate::profile::span(g.device(), "bwd:dropout");
        Ok(Some((g * scale(&mask, g.dtype())?)?))
    })
}

/// A frozen linear layer with its LoRA adapter, one node of the graph:
/// `x·Wᵀ (+ bias) + s·(dropout(x)·Aᵀ)·Bᵀ` for `x: [n, in]`, `W: [out, in]`, `A: [r, in]`,
/// `B: [out, r]` (`A`, `B` trained, in any dtype: cast to `x`'s, their gradients in theirs).
/// Composed, the adapter is six nodes whose backward passes each allocate, zero and add their
/// gradients; one node does its backward in about ten operations. The graph keeps `x`, the
/// dropout mask (bytes) and `s·dropout(x)·Aᵀ` (`[n, r]`).
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    (a, b, scale): (&Tensor, &Tensor, f64),
    dropout: Option<f32>,
) -> CResult<Tensor> {
    let dt = x.dtype();
    let xd0 = x.detach();
    let mask = match dropout {
        Some(p) if p > 0.0 => Some((dropout_mask(&xd0, p)?, p)),
        _ => None,
    };
    let dropped = {
        let mask = mask.clone();
        move |x: &Tensor| -> CResult<Tensor> {
            match &mask {
                Some((m, p)) => x * dropout_scale(m, *p, x.dtype())?,
                None => Ok(x.clone()),
            }
        }
    };
    let (ad, bd) = (a.detach().to_dtype(dt)?, b.detach().to_dtype(dt)?);
    let hs = (dropped(&xd0)?.matmul(&ad.t()?)? * scale)?; // [n, r]
    let mut y = xd0.matmul(&w.t()?)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    let y = (y + hs.matmul(&bd.t()?)?)?;
    if !x.track_op() && !a.track_op() && !b.track_op() {
        return Ok(y);
    }
    let want_dx = x.track_op();
    let w = w.detach();
    let bwd: Bwd3 = Box::new(move |x: &Tensor, a: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor| {
        let _p = crate::profile::span(g.device(), "bwd:lora-linear");
        let dt = g.dtype();
        let (ad, bd) = (a.to_dtype(dt)?, b.to_dtype(dt)?);
        let gbs = (g.matmul(&bd)? * scale)?; // [n, r]
        let dx = if want_dx { Some((g.matmul(&w)? + dropped(&gbs.matmul(&ad)?)?)?) } else { None };
        let da = gbs.t()?.matmul(&dropped(x)?)?.to_dtype(a.dtype())?;
        let db = g.t()?.matmul(&hs)?.to_dtype(b.dtype())?;
        Ok((dx, Some(da), Some(db)))
    });
    let op = Attached::new("lora-linear", y, bwd)?;
    x.apply_op3(a, b, op)
}

/// Causal attention of `q: [b, heads, t, hd]` and `k`, `v: [b, kv_heads, t, hd]`, given before
/// the rotary embedding (`cos`/`sin: [t, hd/2]`) → `[b, heads, t, hd]`. Keys and values are
/// shared by `heads / kv_heads` query heads; `mask` is [`causal_mask`] of `t`. The graph keeps
/// `q`, `k`, `v` and the output; the backward pass recomputes the scores and the softmax.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    mask: &Tensor,
    scale: f64,
) -> CResult<Tensor> {
    let (_, nh, t, _) = q.dims4()?;
    let nkv = k.dim(1)?;
    if nh % nkv != 0 {
        candle_core::bail!("attention: {nh} query heads for {nkv} key heads");
    }
    let cos = cos.narrow(0, 0, t)?.contiguous()?;
    let sin = sin.narrow(0, 0, t)?.contiguous()?;
    let neg_sin = sin.neg()?;
    let mask = mask.clone();
    // Everything the forward and backward passes share, from detached inputs.
    let prep = {
        let (cos, sin, mask) = (cos.clone(), sin.clone(), mask.clone());
        move |q: &Tensor, k: &Tensor, v: &Tensor| -> CResult<(Tensor, Tensor, Tensor, Tensor)> {
            let qr = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
            let kr = repeat_kv(&candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?, nh / nkv)?;
            let vr = repeat_kv(v, nh / nkv)?;
            let s = (qr.matmul(&kr.t()?)? * scale)?.broadcast_add(&mask)?;
            let p = candle_nn::ops::softmax_last_dim(&s)?;
            Ok((qr, kr, vr, p))
        }
    };
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let (_, _, vr, p) = prep(&qd, &kd, &vd)?;
    let o = p.matmul(&vr)?;
    drop(p);
    if !q.track_op() && !k.track_op() && !v.track_op() {
        return Ok(o);
    }
    let bwd: Bwd3 = Box::new(move |q: &Tensor, k: &Tensor, v: &Tensor, _o: &Tensor, g: &Tensor| {
        let _p = crate::profile::span(g.device(), "bwd:attention");
        let g = g.contiguous()?;
        let (qr, kr, vr, p) = prep(q, k, v)?;
        let dvr = p.t()?.matmul(&g)?; // [b, nh, t, hd]
        let dp = g.matmul(&vr.t()?)?;
        let ds = ((&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)? * scale)?;
        let dqr = ds.matmul(&kr)?;
        let dkr = ds.t()?.matmul(&qr)?;
        let dq = candle_nn::rotary_emb::rope(&dqr.contiguous()?, &cos, &neg_sin)?;
        let dk = candle_nn::rotary_emb::rope(&sum_kv(&dkr, nkv)?.contiguous()?, &cos, &neg_sin)?;
        let dv = sum_kv(&dvr, nkv)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    });
    let op = Attached::new("attention", o, bwd)?;
    q.apply_op3(k, v, op)
}

/// `[t, t]`: 0 where query `i` may see key `j` (`j ≤ i`), −∞ elsewhere. Made from host data
/// (candle's `arange`): a copy to a GPU waits for the work queued before it, so make it once
/// per length, not once per layer.
pub fn causal_mask(t: usize, dtype: DType, device: &candle_core::Device) -> CResult<Tensor> {
    let idx = Tensor::arange(0u32, t as u32, device)?;
    let future = idx.unsqueeze(0)?.broadcast_gt(&idx.unsqueeze(1)?)?;
    let neg = Tensor::full(f32::NEG_INFINITY, (t, t), device)?.to_dtype(dtype)?;
    future.where_cond(&neg, &neg.zeros_like()?)
}

/// `[b, kv, t, d]` → `[b, kv·rep, t, d]`, each key head repeated for its query heads.
fn repeat_kv(x: &Tensor, rep: usize) -> CResult<Tensor> {
    if rep == 1 {
        return x.contiguous();
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, rep, t, d))?.reshape((b, kv * rep, t, d))
}

/// The gradient of [`repeat_kv`]: `[b, kv·rep, t, d]` summed back to `[b, kv, t, d]`.
fn sum_kv(g: &Tensor, kv: usize) -> CResult<Tensor> {
    let (b, h, t, d) = g.dims4()?;
    if h == kv {
        return Ok(g.clone());
    }
    g.reshape((b, kv, h / kv, t, d))?.sum(2)
}

/// Mean cross-entropy (f32) of `logits: [n, vocab]` in any float dtype, computed in f32,
/// against `targets: [n]` (u32). The graph keeps the logits only (not an f32 copy); the
/// backward pass is `(softmax − one-hot) / n`, in the logits' dtype.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let n = logits.dim(0)?;
    let l = logits.detach().to_dtype(DType::F32)?;
    let idx = targets.unsqueeze(1)?; // [n, 1]
    let m = l.max_keepdim(1)?;
    let lse = (l.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + &m)?;
    let picked = l.gather(&idx, 1)?;
    let loss = (lse - picked)?.mean_all()?;
    if !logits.track_op() {
        return Ok(loss);
    }
    attach1("cross-entropy", logits, loss, move |l, _, g| {
        let _p = crate::profile::span(g.device(), "bwd:cross-entropy");
        let p = candle_nn::ops::softmax_last_dim(&l.to_dtype(DType::F32)?.contiguous()?)?;
        let minus_one = Tensor::full(-1f32, (n, 1), l.device())?;
        let d = p.scatter_add(&idx, &minus_one, 1)?;
        Ok(Some(d.broadcast_mul(&(g.to_dtype(DType::F32)? / n as f64)?)?.to_dtype(l.dtype())?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < tol, "max |Δ| = {d}");
    }

    fn var(shape: &[usize], mean: f32) -> Var {
        Var::from_tensor(&Tensor::randn(mean, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Forward values and gradients against candle's composed ops, on the CPU.
    #[test]
    fn graph_ops_match_the_composed_ones_forward_and_backward() {
        let dev = Device::Cpu;
        // Frozen matmul: the same values and input gradient, and no gradient for the weight.
        let x = var(&[5, 6], 0.0);
        let w = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let slow = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let fast = frozen_matmul_t(x.as_tensor(), &w).unwrap();
        close(&slow, &fast, 1e-5);
        let g1 = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fast * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap(), 1e-5);
        assert!(g2.get(&w).is_none());

        // RMSNorm, both inputs.
        let x = var(&[2, 3, 8], 0.0);
        let w = var(&[8], 1.0);
        let up = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let slow = candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let fast = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        close(&slow, &fast, 1e-5);
        let g1 = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fast * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap(), 1e-4);
        close(g1.get(w.as_tensor()).unwrap(), g2.get(w.as_tensor()).unwrap(), 1e-4);

        // Attention with grouped keys (4 query heads, 2 key heads), rotary embedding included.
        let (b, nh, nkv, t, hd) = (2, 4, 2, 7, 8);
        let (q, k, v) = (var(&[b, nh, t, hd], 0.0), var(&[b, nkv, t, hd], 0.0), var(&[b, nkv, t, hd], 0.0));
        let cos = Tensor::randn(0f32, 1.0, (t + 3, hd / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (t + 3, hd / 2), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap();
        let composed = {
            let (c, s) = (cos.narrow(0, 0, t).unwrap(), sin.narrow(0, 0, t).unwrap());
            let qr = candle_nn::rotary_emb::rope_slow(q.as_tensor(), &c, &s).unwrap();
            let kr = repeat_kv(&candle_nn::rotary_emb::rope_slow(k.as_tensor(), &c, &s).unwrap(), nh / nkv).unwrap();
            let vr = repeat_kv(v.as_tensor(), nh / nkv).unwrap();
            let mask = causal_mask(t, DType::F32, &dev).unwrap();
            let s = (qr.matmul(&kr.t().unwrap()).unwrap() * 0.3).unwrap().broadcast_add(&mask).unwrap();
            candle_nn::ops::softmax(&s, D::Minus1).unwrap().matmul(&vr).unwrap()
        };
        let mask = causal_mask(t, DType::F32, &dev).unwrap();
        let fast = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), (&cos, &sin), &mask, 0.3).unwrap();
        close(&composed, &fast, 1e-5);
        let g1 = (composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fast * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [&q, &k, &v] {
            close(g1.get(t.as_tensor()).unwrap(), g2.get(t.as_tensor()).unwrap(), 1e-4);
        }

        // Cross-entropy.
        let logits = var(&[6, 11], 0.0);
        let tgt = Tensor::new(&[0u32, 3, 10, 5, 5, 1], &dev).unwrap();
        let slow = candle_nn::loss::cross_entropy(logits.as_tensor(), &tgt).unwrap();
        let fast = cross_entropy(logits.as_tensor(), &tgt).unwrap();
        close(&slow, &fast, 1e-5);
        let g1 = (slow * 1.7).unwrap().backward().unwrap();
        let g2 = (fast * 1.7).unwrap().backward().unwrap();
        close(g1.get(logits.as_tensor()).unwrap(), g2.get(logits.as_tensor()).unwrap(), 1e-5);

        // LoRA linear (no dropout): values and the gradients of x, A and B, with a bias.
        let (x, a, bb) = (var(&[5, 6], 0.0), var(&[3, 6], 0.0), var(&[4, 3], 0.0));
        let w = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), bb.as_tensor());
        let delta = (xt.matmul(&at.t().unwrap()).unwrap().matmul(&bt.t().unwrap()).unwrap() * 0.7).unwrap();
        let slow = (xt.matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap() + delta).unwrap();
        let fast = lora_linear(xt, &w, Some(&bias), (at, bt, 0.7), None).unwrap();
        close(&slow, &fast, 1e-5);
        let g1 = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (fast * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [xt, at, bt] {
            close(g1.get(t).unwrap(), g2.get(t).unwrap(), 1e-4);
        }
        // With dropout: in expectation, the output and the adapter's gradients are those
        // without (inverted dropout), and the mask differs between rows.
        // The adapter's entries are kept away from zero: with random signs a row of A can sum
        // to nearly nothing, and the sampling noise of 4000 rows then swamps its expectation
        //.
        let n = 8000;
        let x1 = Var::from_tensor(&Tensor::ones((n, 6), DType::F32, &dev).unwrap()).unwrap();
        let a1 = Var::from_tensor(&(at.abs().unwrap() + 0.5).unwrap()).unwrap();
        let b1 = Var::from_tensor(&(bt.abs().unwrap() + 0.5).unwrap()).unwrap();
        let (at, bt) = (a1.as_tensor(), b1.as_tensor());
        let grads = |p: Option<f32>| {
            let y = lora_linear(x1.as_tensor(), &w, None, (at, bt, 1.0), p).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            (y, g.get(at).unwrap().clone(), g.get(bt).unwrap().clone())
        };
        let ((y0, da0, db0), (y1, da1, db1)) = (grads(None), grads(Some(0.5)));
        let rel = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            d / b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        let (m0, m1) = (y0.mean(0).unwrap(), y1.mean(0).unwrap());
        assert!(rel(&m1, &m0) < 0.05, "mean output {m1} vs {m0}");
        assert!(rel(&da1, &da0) < 0.05 && rel(&db1, &db0) < 0.05, "dropout changes the expected gradients");
        let spread = y1.max(0).unwrap() - y1.min(0).unwrap();
        assert!(
            spread.unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1,
            "no dropout drawn"
        );

        // Dropout: the gradient is the forward pass's own mask.
        let x = Var::from_tensor(&Tensor::ones((64, 300), DType::F32, &dev).unwrap()).unwrap();
        let y = dropout(x.as_tensor(), 0.25).unwrap();
        let kept = y.gt(0.0).unwrap().to_dtype(DType::F32).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((kept - 0.75).abs() < 0.02, "{kept}");
        let g = y.sum_all().unwrap().backward().unwrap();
        close(g.get(x.as_tensor()).unwrap(), &y, 1e-6);
    }
}
