//! The training loop: AdamW, warm-up then cosine decay, gradient accumulation, gradient
//! clipping, validation loss and perplexity every N steps, early stopping, checkpoints that
//! resume exactly, a progress bar, metrics as JSONL and a loss-curve image.
//!
//! Everything random derives from the seed and the step: the data order of epoch `e` from
//! `(seed, e)`, the dropout masks of micro-batch `k` from `(seed, k)`. A checkpoint holds the
//! trainable weights, the optimizer moments, the step and the early-stopping state, so a run
//! resumed from it continues with exactly the losses it would have had.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::Tokenized;
use crate::lm::{Batch, Dropout, TrainableLm};
use crate::{Error, Result};

/// Optimizer and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub learning_rate: f64,
    /// Decay to `learning_rate * min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub warmup_steps: usize,
    pub epochs: usize,
    /// Optimizer steps; 0 = `epochs` passes over the training set.
    pub max_steps: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip; 0 disables.
    pub max_grad_norm: f64,
    /// Tokens per sequence (longer examples are cut).
    pub max_len: usize,
    /// Validate every N optimizer steps (and at the end).
    pub eval_every: usize,
    /// Stop after this many validations without improvement; 0 never stops early.
    pub patience: usize,
    /// Write a checkpoint every N optimizer steps (and at the end).
    pub save_every: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 10,
            epochs: 2,
            max_steps: 0,
            batch_size: 4,
            grad_accum: 2,
            max_grad_norm: 1.0,
            max_len: 384,
            eval_every: 20,
            patience: 3,
            save_every: 20,
            seed: 42,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1");
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 {
            return bad("learning_rate must be positive");
        }
        if self.max_len < 8 {
            return bad("max_len must be at least 8 tokens");
        }
        if self.epochs == 0 && self.max_steps == 0 {
            return bad("set epochs or max_steps");
        }
        Ok(())
    }

    /// Learning rate of optimizer step `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.learning_rate * self.min_lr_ratio;
        min + (self.learning_rate - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// AdamW (decoupled weight decay) with its moments kept where a checkpoint can save them.
pub struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    /// The moments as two flat buffers, which `m` and `v` are views of, after a
    /// [`AdamW::step_flat`]; `None` when `m`/`v` were set one by one (a resumed checkpoint).
    flat: Option<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(vars: &[(String, Var)]) -> Result<Self> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars.iter().map(|(_, v)| z(v)).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(|(_, v)| z(v)).collect::<candle_core::Result<_>>()?,
            t: 0,
            flat: None,
        })
    }

    /// The step on a GPU: clipping (to `cfg.max_grad_norm`) and the update on all weights at
    /// once, as a dozen operations on one flat buffer instead of a dozen per weight, with
    /// nothing read back (a read waits for the queued work). Kernel launches, not arithmetic,
    /// bound a LoRA step there: this takes the optimizer from ~2,900 launches a step (Qwen2.5
    /// 0.5B, 4 adapted projections: 192 weights) to ~400. Returns the gradient norm before
    /// clipping, as a device scalar (f32), to read once the step is queued.
    pub fn step_flat(
        &mut self,
        cfg: &TrainConfig,
        lr: f64,
        vars: &[(String, Var)],
        grads: &[Tensor],
    ) -> Result<Tensor> {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let c1 = 1.0 / (1.0 - b1.powi(self.t as i32));
        let c2 = 1.0 / (1.0 - b2.powi(self.t as i32));
        let flat = |ts: &mut dyn Iterator<Item = &Tensor>| -> candle_core::Result<Tensor> {
            let parts = ts.map(|t| t.to_dtype(DType::F32)?.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        let mut g = flat(&mut grads.iter())?;
        let norm = g.sqr()?.sum_all()?.sqrt()?;
        if cfg.max_grad_norm > 0.0 {
            // min(1, max / (norm + 1e-6)) without a scalar from the host: 1 − relu(1 − x).
            let x = ((&norm + 1e-6)?.recip()? * cfg.max_grad_norm)?;
            let factor = x.affine(-1.0, 1.0)?.relu()?.affine(-1.0, 1.0)?;
            g = g.broadcast_mul(&factor)?;
        }
        let (m0, v0) = match self.flat.take() {
            Some(mv) => mv,
            None => (flat(&mut self.m.iter())?, flat(&mut self.v.iter())?),
        };
        let m = (m0.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
        let v = (v0.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
        let upd = (m.affine(c1 * lr, 0.0)? / (v.affine(c2, 0.0)?.sqrt()? + cfg.eps)?)?;
        let theta = flat(&mut vars.iter().map(|(_, v)| v.as_tensor()))?;
        let theta = (theta.affine(1.0 - lr * cfg.weight_decay, 0.0)? - upd)?;
        let mut off = 0;
        for (i, (_, var)) in vars.iter().enumerate() {
            let n = var.elem_count();
            let shape = var.shape().clone();
            var.set(&theta.narrow(0, off, n)?.reshape(shape.clone())?)?;
            self.m[i] = m.narrow(0, off, n)?.reshape(shape.clone())?;
            self.v[i] = v.narrow(0, off, n)?.reshape(shape)?;
            off += n;
        }
        self.flat = Some((m, v));
        Ok(norm)
    }

    pub fn step(&mut self, cfg: &TrainConfig, lr: f64, vars: &[(String, Var)], grads: &[Tensor]) -> Result<()> {
        self.update(cfg, lr, vars, grads, true)
    }

    /// The same step written as candle tensor operations only (about a dozen passes over
    /// each weight, each into a new allocation): what runs on a GPU, and the baseline of
    /// `kotae-bench optimizer`.
    pub fn step_tensor_ops(
        &mut self,
        cfg: &TrainConfig,
        lr: f64,
        vars: &[(String, Var)],
        grads: &[Tensor],
    ) -> Result<()> {
        self.update(cfg, lr, vars, grads, false)
    }

    fn update(
        &mut self,
        cfg: &TrainConfig,
        lr: f64,
        vars: &[(String, Var)],
        grads: &[Tensor],
        fused: bool,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let c1 = 1.0 / (1.0 - b1.powi(self.t as i32));
        let c2 = 1.0 / (1.0 - b2.powi(self.t as i32));
        for (i, ((_, var), g)) in vars.iter().zip(grads).enumerate() {
            let on_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
            if fused && [var.as_tensor(), g, &self.m[i], &self.v[i]].into_iter().all(on_cpu) {
                // One pass over the weight, its gradient and its moments: on a CPU the tensor
                // form below spends most of its time allocating and re-reading (a fifth of a
                // tuned safety head's training time).
                let shape = var.shape().clone();
                let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
                let (mut th, gv, mut m, mut v) =
                    (flat(var.as_tensor())?, flat(g)?, flat(&self.m[i])?, flat(&self.v[i])?);
                let (b1, b2, c1, c2) = (b1 as f32, b2 as f32, c1 as f32, c2 as f32);
                let (eps, lr32, keep) = (cfg.eps as f32, lr as f32, (1.0 - lr * cfg.weight_decay) as f32);
                for (((t, &g), m), v) in th.iter_mut().zip(&gv).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let upd = (*m * c1) / ((*v * c2).sqrt() + eps);
                    *t = *t * keep - upd * lr32;
                }
                let dev = var.device().clone();
                var.set(&Tensor::from_vec(th, &shape, &dev)?)?;
                self.m[i] = Tensor::from_vec(m, &shape, &dev)?;
                self.v[i] = Tensor::from_vec(v, &shape, &dev)?;
                continue;
            }
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let upd = ((&m * c1)? / ((&v * c2)?.sqrt()? + cfg.eps)?)?;
            let theta = (var.as_tensor() * (1.0 - lr * cfg.weight_decay))?;
            var.set(&(theta - (upd * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub lr: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
}

/// Where a run writes and how it is driven.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dir: PathBuf,
    pub config: TrainConfig,
    /// Continue from `dir/checkpoint` when it exists.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many optimizer steps in total: an interruption.
    pub stop_after: Option<usize>,
    pub progress: bool,
    /// Set from elsewhere (a cancelled job): the run stops before its next step, with a
    /// checkpoint, as interrupted.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// How a run ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub best_step: usize,
    pub best_val_loss: Option<f64>,
    pub first_val_loss: Option<f64>,
    pub stopped_early: bool,
    pub interrupted: bool,
    pub resumed_from: Option<usize>,
    pub train_tokens_seen: usize,
    /// Tokens per second of training, this process (sequences are packed: no padding).
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub trainable_parameters: usize,
    /// Peak resident memory of the process, MiB (Linux `VmHWM`).
    pub peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    adam_t: usize,
    best_val_loss: Option<f64>,
    first_val_loss: Option<f64>,
    best_step: usize,
    bad_evals: usize,
    tokens_seen: usize,
    config: Option<TrainConfig>,
}

/// Peak resident set size of this process, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// GPU memory in use (MiB) as `nvidia-smi` reports it, when there is one.
pub fn gpu_memory_used_mib() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()
}

/// Mean loss per target token over `seqs` (no dropout) and its perplexity.
pub fn evaluate(model: &TrainableLm, seqs: &[Tokenized], batch_size: usize) -> Result<(f64, f64)> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in seqs.chunks(batch_size.max(1)) {
        let refs: Vec<&Tokenized> = chunk.iter().collect();
        let batch = Batch::new(&refs);
        if batch.target_tokens() == 0 {
            continue;
        }
        let (loss, k) = model.loss(&batch, None)?;
        sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * k as f64;
        n += k;
    }
    if n == 0 {
        return Err(Error::Config("nothing to evaluate".into()));
    }
    let mean = sum / n as f64;
    Ok((mean, mean.exp()))
}

fn order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut rng);
    idx
}

/// Which sequences micro-batch `k` of the whole run holds (the order a run with this seed
/// uses; benchmarks hand the same batches to their peers).
pub fn micro_batch(k: usize, n: usize, batch: usize, seed: u64) -> Vec<usize> {
    let per_epoch = n.div_ceil(batch);
    let (epoch, pos) = (k / per_epoch, k % per_epoch);
    order(n, seed, epoch)[pos * batch..((pos + 1) * batch).min(n)].to_vec()
}

fn save_checkpoint(
    dir: &Path,
    vars: &[(String, Var)],
    opt: &AdamW,
    best: &Option<Vec<Tensor>>,
    state: &CheckpointState,
) -> Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, v)) in vars.iter().enumerate() {
        map.insert(format!("param.{name}"), v.as_tensor().clone());
        map.insert(format!("m.{name}"), opt.m[i].clone());
        map.insert(format!("v.{name}"), opt.v[i].clone());
        if let Some(b) = best {
            map.insert(format!("best.{name}"), b[i].clone());
        }
    }
    candle_core::safetensors::save(&map, tmp.join("state.safetensors"))?;
    let json = serde_json::to_string_pretty(state)?;
    std::fs::write(tmp.join("state.json"), json).map_err(|e| Error::io(&tmp, e))?;
    // Swap in whole: a kill during the write leaves the previous checkpoint intact.
    let fin = dir.join("checkpoint");
    let old = dir.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if fin.exists() {
        std::fs::rename(&fin, &old).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The gradients' global norm, on the CPU (a GPU's is taken inside [`AdamW::step_flat`]).
fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0.0;
    for g in grads {
        s += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

/// Train `model`'s adapters on `train`, validating on `val`. On return the model holds the
/// best weights seen (lowest validation loss).
pub fn train(model: &TrainableLm, train: &[Tokenized], val: &[Tokenized], opts: &RunOptions) -> Result<RunSummary> {
    let cfg = &opts.config;
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::Config("no training sequences".into()));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
    let vars = model.trainable();
    let mut opt = AdamW::new(&vars)?;
    let per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = if cfg.max_steps > 0 { cfg.max_steps } else { (cfg.epochs * per_epoch).div_ceil(cfg.grad_accum) };
    let mut st = CheckpointState { config: Some(cfg.clone()), ..Default::default() };
    let mut best: Option<Vec<Tensor>> = None;
    let metrics_path = opts.dir.join("metrics.jsonl");
    let mut history: Vec<StepMetrics> = Vec::new();
    let mut resumed_from = None;
    let ckpt = opts.dir.join("checkpoint");
    if opts.resume && ckpt.join("state.json").exists() {
        let s = std::fs::read_to_string(ckpt.join("state.json")).map_err(|e| Error::io(&ckpt, e))?;
        st = serde_json::from_str(&s)?;
        if st.config.as_ref() != Some(cfg) {
            return Err(Error::Config(format!(
                "the checkpoint in {} was written with other training settings; resume with the same ones or start a new run directory",
                ckpt.display()
            )));
        }
        let map = candle_core::safetensors::load(ckpt.join("state.safetensors"), model.device())?;
        let get = |k: String| map.get(&k).cloned().ok_or_else(|| Error::Config(format!("checkpoint lacks {k}")));
        let mut bests = Vec::new();
        for (i, (name, v)) in vars.iter().enumerate() {
            v.set(&get(format!("param.{name}"))?)?;
            opt.m[i] = get(format!("m.{name}"))?;
            opt.v[i] = get(format!("v.{name}"))?;
            if let Ok(b) = get(format!("best.{name}")) {
                bests.push(b);
            }
        }
        if bests.len() == vars.len() {
            best = Some(bests);
        }
        opt.t = st.adam_t;
        opt.flat = None;
        resumed_from = Some(st.step);
        if let Ok(text) = std::fs::read_to_string(&metrics_path) {
            history = text
                .lines()
                .filter_map(|l| serde_json::from_str::<StepMetrics>(l).ok())
                .filter(|m| m.step <= st.step)
                .collect();
        }
        tracing::info!(step = st.step, "resuming from checkpoint");
    }
    // Rewrite the metrics of the steps already done (a resumed run drops what came after its
    // checkpoint).
    let mut mfile = std::fs::File::create(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    for m in &history {
        writeln!(mfile, "{}", serde_json::to_string(m)?).map_err(|e| Error::io(&metrics_path, e))?;
    }
    let bar = if opts.progress { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(st.step as u64);
    let t0 = Instant::now();
    let mut tokens_this_run = 0usize;
    let mut summary = RunSummary { total_steps: total, resumed_from, ..Default::default() };
    while st.step < total {
        let cancelled = opts.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
        if cancelled || opts.stop_after.is_some_and(|s| st.step >= s) {
            summary.interrupted = true;
            break;
        }
        let step_t0 = Instant::now();
        let dev = model.device();
        let lr = cfg.lr_at(st.step, total);
        let prep = crate::profile::span(dev, "step:batches");
        let batches: Vec<Batch> = (0..cfg.grad_accum)
            .map(|j| {
                let idx = micro_batch(st.step * cfg.grad_accum + j, train.len(), cfg.batch_size, cfg.seed);
                Batch::new(&idx.iter().map(|&i| &train[i]).collect::<Vec<_>>())
            })
            .collect();
        let n_total: usize = batches.iter().map(|b| b.target_tokens()).sum();
        drop(prep);
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut losses = Vec::with_capacity(batches.len());
        for (j, batch) in batches.iter().enumerate() {
            let n = batch.target_tokens();
            if n == 0 {
                continue;
            }
            let k = (st.step * cfg.grad_accum + j) as u64;
            let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(k.wrapping_mul(1_000_003)));
            let fwd = crate::profile::span(dev, "step:forward");
            let (loss, _) = model.loss(batch, Some(Dropout { rng: &mut rng }))?;
            drop(fwd);
            let value = loss.detach();
            let bwd = crate::profile::span(dev, "step:backward");
            let store = (loss * (n as f64 / n_total as f64))?.backward()?;
            drop(bwd);
            let _acc = crate::profile::span(dev, "step:accumulate");
            losses.push((value, n));
            for (i, (_, v)) in vars.iter().enumerate() {
                if let Some(g) = store.get(v.as_tensor()) {
                    grads[i] = Some(match grads[i].take() {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        let real_tokens: usize = batches.iter().map(Batch::tokens).sum();
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&vars)
            .map(|(g, (_, v))| g.map(Ok).unwrap_or_else(|| v.as_tensor().zeros_like()))
            .collect::<candle_core::Result<_>>()?;
        let norm = if dev.is_cpu() {
            let clip = crate::profile::span(dev, "step:grad-norm+clip");
            let norm = grad_norm(&grads)?;
            if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm {
                let s = cfg.max_grad_norm / (norm + 1e-6);
                grads = grads.into_iter().map(|g| g * s).collect::<candle_core::Result<_>>()?;
            }
            drop(clip);
            let _adam = crate::profile::span(dev, "step:optimizer");
            opt.step(cfg, lr, &vars, &grads)?;
            norm
        } else {
            // Clipped on the device, read once everything is queued (each read waits for the
            // queue).
            let adam = crate::profile::span(dev, "step:optimizer");
            let norm = opt.step_flat(cfg, lr, &vars, &grads)?;
            drop(adam);
            let _read = crate::profile::span(dev, "step:read-back");
            norm.to_dtype(DType::F64)?.to_scalar::<f64>()?
        };
        let mut loss_sum = 0.0;
        for (value, n) in losses {
            loss_sum += value.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
        }
        st.step += 1;
        st.adam_t = opt.t;
        st.tokens_seen += real_tokens;
        tokens_this_run += real_tokens;
        let loss = loss_sum / n_total.max(1) as f64;
        let dt = step_t0.elapsed().as_secs_f64();
        let mut m = StepMetrics {
            step: st.step,
            epoch: (st.step * cfg.grad_accum) as f64 / per_epoch as f64,
            lr,
            loss,
            grad_norm: norm,
            tokens: real_tokens,
            tokens_per_s: real_tokens as f64 / dt.max(1e-9),
            elapsed_s: t0.elapsed().as_secs_f64(),
            val_loss: None,
            val_ppl: None,
        };
        let mut stop = false;
        if !val.is_empty() && (st.step.is_multiple_of(cfg.eval_every.max(1)) || st.step == total) {
            let (vl, ppl) = evaluate(model, val, cfg.batch_size)?;
            m.val_loss = Some(vl);
            m.val_ppl = Some(ppl);
            st.first_val_loss.get_or_insert(vl);
            if st.best_val_loss.is_none_or(|b| vl < b) {
                st.best_val_loss = Some(vl);
                st.best_step = st.step;
                st.bad_evals = 0;
                best = Some(vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?);
            } else {
                st.bad_evals += 1;
                if cfg.patience > 0 && st.bad_evals >= cfg.patience {
                    stop = true;
                    summary.stopped_early = true;
                }
            }
        }
        writeln!(mfile, "{}", serde_json::to_string(&m)?).map_err(|e| Error::io(&metrics_path, e))?;
        bar.set_message(format!(
            "loss {:.3}{}  {:.0} tok/s",
            m.loss,
            m.val_loss.map(|v| format!("  val {v:.3}")).unwrap_or_default(),
            tokens_this_run as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        ));
        bar.set_position(st.step as u64);
        history.push(m);
        let last = st.step == total || stop || opts.stop_after.is_some_and(|s| st.step >= s);
        if st.step.is_multiple_of(cfg.save_every.max(1)) || last {
            save_checkpoint(&opts.dir, &vars, &opt, &best, &st)?;
        }
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    drop(mfile);
    write_loss_svg(&opts.dir.join("loss.svg"), &history)?;
    let finished = !summary.interrupted;
    if finished {
        if let Some(b) = &best {
            for ((_, v), t) in vars.iter().zip(b) {
                v.set(t)?;
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    summary.steps = st.step;
    summary.best_step = st.best_step;
    summary.best_val_loss = st.best_val_loss;
    summary.first_val_loss = st.first_val_loss;
    summary.train_tokens_seen = st.tokens_seen;
    summary.tokens_per_s = tokens_this_run as f64 / elapsed.max(1e-9);
    summary.elapsed_s = elapsed;
    summary.trainable_parameters = model.trainable_parameters();
    summary.peak_rss_mib = peak_rss_mib();
    Ok(summary)
}

/// Read `metrics.jsonl` of a run.
pub fn read_metrics(dir: &Path) -> Result<Vec<StepMetrics>> {
    let p = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Training loss (line) and validation loss (dots) against the step, as SVG.
pub fn write_loss_svg(path: &Path, history: &[StepMetrics]) -> Result<()> {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let max_step = history.iter().map(|m| m.step).max().unwrap_or(1).max(1) as f64;
    let losses: Vec<f64> =
        history.iter().flat_map(|m| std::iter::once(m.loss).chain(m.val_loss)).filter(|x| x.is_finite()).collect();
    let hi = losses.iter().cloned().fold(f64::MIN, f64::max).max(1e-3);
    let lo = losses.iter().cloned().fold(f64::MAX, f64::min).min(hi - 1e-3).max(0.0);
    let x = |s: usize| pad + (s as f64 / max_step) * (w - 2.0 * pad);
    let y = |l: f64| h - pad - (l - lo) / (hi - lo) * (h - 2.0 * pad);
    let line: Vec<String> = history.iter().map(|m| format!("{:.1},{:.1}", x(m.step), y(m.loss))).collect();
    let dots: String = history
        .iter()
        .filter_map(|m| {
            m.val_loss.map(|v| format!(r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/>"##, x(m.step), y(v)))
        })
        .collect();
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<text x="{pad}" y="{t}">loss {hi:.3}</text><text x="{pad}" y="{bl}">{lo:.3}</text><text x="{r}" y="{bl}" text-anchor="end">step {ms}</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pts}"/>{dots}
<text x="{r}" y="{t}" text-anchor="end"><tspan fill="#1f77b4">— train</tspan>  <tspan fill="#d62728">● validation</tspan></text>
</svg>
"##,
        b = h - pad,
        r = w - pad,
        t = pad - 12.0,
        bl = h - pad + 18.0,
        ms = max_step,
        pts = line.join(" "),
    );
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU's step (flat buffers, clipping on the device) against clipping on the host and
    /// the step per weight, here on the CPU: clipping active, weight decay, five steps.
    #[test]
    fn the_flat_adamw_step_matches_clipping_then_the_step_per_weight() {
        let dev = candle_core::Device::Cpu;
        let mk = || -> Vec<(String, Var)> {
            let w: Vec<f32> = (0..600).map(|i| ((i as f32 * 0.37).sin()) * 0.5).collect();
            let b: Vec<f32> = (0..30).map(|i| (i as f32 * 0.11).cos()).collect();
            vec![
                ("w".into(), Var::from_tensor(&Tensor::from_vec(w, (20, 30), &dev).unwrap()).unwrap()),
                ("b".into(), Var::from_tensor(&Tensor::from_vec(b, 30, &dev).unwrap()).unwrap()),
            ]
        };
        let (a, b) = (mk(), mk());
        let (mut oa, mut ob) = (AdamW::new(&a).unwrap(), AdamW::new(&b).unwrap());
        let cfg = TrainConfig { weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() };
        for step in 0..5 {
            // Large gradients early (clipped), small ones later (not).
            let k = if step < 3 { 3.0 } else { 0.01 };
            let g: Vec<Tensor> = a.iter().map(|(_, v)| (v.as_tensor().cos().unwrap() * k).unwrap()).collect();
            let norm = oa.step_flat(&cfg, 1e-2, &a, &g).unwrap().to_scalar::<f32>().unwrap() as f64;
            let host = grad_norm(&g).unwrap();
            assert!((norm - host).abs() < 1e-4 * host, "norm {norm} vs {host}");
            let s = if host > cfg.max_grad_norm { cfg.max_grad_norm / (host + 1e-6) } else { 1.0 };
            let g: Vec<Tensor> = g.iter().map(|g| (g * s).unwrap()).collect();
            ob.step_tensor_ops(&cfg, 1e-2, &b, &g).unwrap();
            for (((_, x), (_, y)), (mx, my)) in a.iter().zip(&b).zip(oa.m.iter().zip(&ob.m)) {
                let d = (x.as_tensor() - y.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-6, "step {step}: weights differ");
                let d = (mx - my).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-6, "step {step}: moments differ by {d}");
                assert_eq!(mx.dims(), my.dims());
            }
        }
    }

    #[test]
    fn the_fused_adamw_step_matches_the_tensor_ops() {
        let dev = candle_core::Device::Cpu;
        let mk = |seed: f32| -> Vec<(String, Var)> {
            let w: Vec<f32> = (0..600).map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.5).collect();
            let b: Vec<f32> = (0..30).map(|i| (i as f32 * 0.11).cos()).collect();
            vec![
                ("w".into(), Var::from_tensor(&Tensor::from_vec(w, (20, 30), &dev).unwrap()).unwrap()),
                ("b".into(), Var::from_tensor(&Tensor::from_vec(b, 30, &dev).unwrap()).unwrap()),
            ]
        };
        let (a, b) = (mk(0.0), mk(0.0));
        let (mut oa, mut ob) = (AdamW::new(&a).unwrap(), AdamW::new(&b).unwrap());
        let cfg = TrainConfig { weight_decay: 0.01, ..Default::default() };
        for step in 0..5 {
            // Gradients of a fixed shape; a transposed view for the matrix (not contiguous).
            let g: Vec<Tensor> = a
                .iter()
                .map(|(_, v)| {
                    let t = (v.as_tensor().sin().unwrap() * (1.0 + step as f64)).unwrap();
                    if t.rank() == 2 {
                        t.t().unwrap().contiguous().unwrap().t().unwrap()
                    } else {
                        t
                    }
                })
                .collect();
            oa.step(&cfg, 1e-2, &a, &g).unwrap();
            ob.step_tensor_ops(&cfg, 1e-2, &b, &g).unwrap();
        }
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            let d =
                (x.as_tensor() - y.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "fused and tensor-op AdamW differ by {d}");
        }
        for i in 0..2 {
            let d = (&oa.v[i] - &ob.v[i]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "second moments differ by {d}");
        }
    }
}
