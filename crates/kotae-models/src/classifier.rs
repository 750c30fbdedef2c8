//! Classification heads (transfer learning and fine-tuning). A plain head reads the frozen
//! embedder's sentence vector; a tuned head carries its own copy of the encoder's top layers,
//! fine-tuned with it, and reads the frozen encoder's token states below them
//! ([`EncoderTop`]). A head is `head.safetensors` + `head.json` (its card); training lives
//! in `kotae-adapt`, this is what serving needs: load, classify, evaluate.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Metrics of a classifier on a labelled set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScore>,
    /// `confusion[true][predicted]`, in label order.
    pub confusion: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

pub fn metrics(labels: &[String], truth: &[usize], pred: &[usize]) -> ClassMetrics {
    let k = labels.len();
    let mut conf = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        conf[t][p] += 1;
    }
    let correct: usize = (0..k).map(|i| conf[i][i]).sum();
    let per_class: Vec<ClassScore> = (0..k)
        .map(|i| {
            let tp = conf[i][i] as f64;
            let predicted: usize = (0..k).map(|t| conf[t][i]).sum();
            let support: usize = conf[i].iter().sum();
            let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
            let recall = if support == 0 { 0.0 } else { tp / support as f64 };
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassScore { label: labels[i].clone(), precision, recall, f1, support }
        })
        .collect();
    let present: Vec<&ClassScore> = per_class.iter().filter(|c| c.support > 0).collect();
    ClassMetrics {
        examples: truth.len(),
        accuracy: correct as f64 / truth.len().max(1) as f64,
        macro_f1: present.iter().map(|c| c.f1).sum::<f64>() / present.len().max(1) as f64,
        per_class,
        confusion: conf,
    }
}

impl ClassMetrics {
    /// A plain-text confusion matrix.
    pub fn confusion_table(&self) -> String {
        let w = self.per_class.iter().map(|c| c.label.chars().count()).max().unwrap_or(4).clamp(4, 24);
        let mut s = format!("{:>w$} | predicted →\n", "true ↓");
        for (i, row) in self.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|n| format!("{n:>5}")).collect();
            s.push_str(&format!("{:>w$} | {}\n", self.per_class[i].label, cells.join("")));
        }
        s
    }
}

/// What a saved head says about itself (`head.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadCard {
    pub task: String,
    pub labels: Vec<String>,
    /// The frozen embedder whose query vectors the head reads.
    pub embedder: String,
    pub input_dim: usize,
    pub hidden: usize,
    /// Encoder layers fine-tuned with the head (0: the head reads the sentence vector).
    #[serde(default)]
    pub tuned_layers: usize,
    /// The encoder layer whose output the tuned layers read (layers below it stay frozen).
    #[serde(default)]
    pub split_layer: usize,
    /// Token states kept per text for the tuned layers: the first and last halves.
    #[serde(default)]
    pub max_states: usize,
    /// The training settings, as the trainer recorded them.
    pub config: serde_json::Value,
    pub train_examples: usize,
    pub class_counts: BTreeMap<String, usize>,
    pub validation: ClassMetrics,
    /// Extra held-out evaluations (e.g. HarmBench for the safety head), never trained on.
    #[serde(default)]
    pub tests: BTreeMap<String, ClassMetrics>,
    /// The access groups of the documents each label was learned from (a routing label is an
    /// inquiry log's category): a caller who may read none of them never sees the label.
    /// Empty, or a label missing: every caller may see it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_groups: BTreeMap<String, Vec<String>>,
}

impl HeadCard {
    /// Whether a caller in `groups` may see `label` (`public` documents are everyone's).
    pub fn label_visible(&self, label: &str, groups: &[String]) -> bool {
        match self.label_groups.get(label) {
            None => true,
            Some(g) => g.is_empty() || g.iter().any(|x| x == "public" || groups.contains(x)),
        }
    }
}

/// A trained classification head.
pub struct Head {
    pub card: HeadCard,
    w1: Tensor,
    b1: Tensor,
    w2: Option<(Tensor, Tensor)>,
    top: Option<EncoderTop>,
    /// The same layers on the int8 kernels, for serving on the CPU.
    top_int8: Option<crate::int8_bert::Int8Layers>,
}

/// The top layers of a BERT encoder in f32, written with candle's differentiable ops so the
/// same code trains them (`kotae-adapt`) and serves them. Post-LayerNorm BERT layers, as in
/// multilingual-e5 and MiniLM; each layer's tensors are named `q`, `k`, `v`, `o` (attention),
/// `ln1`, `up`, `down`, `ln2` with `.weight` and `.bias`.
pub struct EncoderTop {
    pub layers: Vec<HashMap<String, Tensor>>,
    pub heads: usize,
    pub eps: f64,
}

/// LayerNorm over the last dimension from basic ops (candle's fused one has no backward).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)
}

impl EncoderTop {
    fn get<'a>(l: &'a HashMap<String, Tensor>, name: &str) -> candle_core::Result<&'a Tensor> {
        l.get(name).ok_or_else(|| candle_core::Error::Msg(format!("encoder layer lacks {name}")))
    }

    /// `x [b, t, h]` with `mask [b, t]` (1 for a token, 0 for padding) → `[b, t, h]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let nh = self.heads;
        let hd = h / nh;
        let scale = 1.0 / (hd as f64).sqrt();
        let masked = ((mask.ones_like()? - mask)? * -1e4)?.reshape((b, 1, 1, t))?;
        let mut x = x.clone();
        for l in &self.layers {
            let lin = |x: &Tensor, n: &str| -> candle_core::Result<Tensor> {
                let w = Self::get(l, &format!("{n}.weight"))?;
                let (o, i) = w.dims2()?;
                x.reshape((b * t, i))?
                    .matmul(&w.t()?)?
                    .broadcast_add(Self::get(l, &format!("{n}.bias"))?)?
                    .reshape((b, t, o))
            };
            let split = |y: Tensor| y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous();
            let (q, k, v) = (split(lin(&x, "q")?)?, split(lin(&x, "k")?)?, split(lin(&x, "v")?)?);
            let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&masked)?;
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let ctx = att.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, t, h))?;
            let norm = |y: &Tensor, n: &str| {
                layer_norm(y, Self::get(l, &format!("{n}.weight"))?, Self::get(l, &format!("{n}.bias"))?, self.eps)
            };
            x = norm(&(lin(&ctx, "o")? + &x)?, "ln1")?;
            let up = lin(&x, "up")?.gelu_erf()?;
            x = norm(&(lin(&up, "down")? + &x)?, "ln2")?;
        }
        Ok(x)
    }

    /// Mean of the unmasked token vectors: `[b, t, h]` → `[b, h]`.
    pub fn pool(x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let m = mask.unsqueeze(2)?;
        x.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)
    }
}

/// The token states a tuned head reads: at most `max` of them, the first and the last halves
/// (a long jailbreak puts its request at the end).
pub fn keep_states(states: &Tensor, max: usize) -> candle_core::Result<Tensor> {
    let n = states.dim(0)?;
    if max == 0 || n <= max {
        return Ok(states.clone());
    }
    let head = max / 2;
    Tensor::cat(&[states.narrow(0, 0, head)?, states.narrow(0, n - (max - head), max - head)?], 0)
}

/// `t` in a storage of its own, holding only its elements. A text's states sliced out of a
/// batch's output share the whole batch's storage, and candle's `Tensor::copy` clones that
/// whole storage too: kept per text over a training set, each text then held its batch, 32
/// texts' worth (a 14.7 GB peak training the safety head on 10,255 examples).
pub fn owned(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = t.to_dtype(DType::F32)?;
    Tensor::from_vec(t.flatten_all()?.to_vec1::<f32>()?, t.dims(), t.device())
}

/// Pad per-text states `[n_i, h]` into `[b, t, h]` with its mask `[b, t]`.
pub fn pad_states(states: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
    let t = states.iter().map(|s| s.dim(0)).collect::<candle_core::Result<Vec<_>>>()?.into_iter().max().unwrap_or(1);
    let mut rows = Vec::with_capacity(states.len());
    let mut mask = Vec::with_capacity(states.len() * t);
    for s in states {
        let (n, h) = s.dims2()?;
        rows.push(if n < t {
            Tensor::cat(&[s.clone(), Tensor::zeros((t - n, h), s.dtype(), s.device())?], 0)?
        } else {
            s.clone()
        });
        mask.extend((0..t).map(|i| if i < n { 1f32 } else { 0.0 }));
    }
    let dev = states.first().map(|s| s.device().clone()).unwrap_or(Device::Cpu);
    Ok((Tensor::stack(&rows, 0)?, Tensor::from_vec(mask, (states.len(), t), &dev)?))
}

impl Head {
    /// A head from its weights: `w1 [h, in]`, `b1 [h]`, and for an MLP `w2 [labels, h]`, `b2`.
    pub fn new(card: HeadCard, w1: Tensor, b1: Tensor, w2: Option<(Tensor, Tensor)>) -> Self {
        Self { card, w1, b1, w2, top: None, top_int8: None }
    }

    /// A head trained on standardized inputs (`(x - mean) / std`, per feature) made to read
    /// the raw inputs: the standardization folded into its first layer.
    pub fn reading_raw_inputs(mut self, mean: &[f32], std: &[f32]) -> Result<Self> {
        let dim = self.card.input_dim;
        if mean.len() != dim || std.len() != dim {
            return Err(Error::Generation(format!("standardization of {} features for a head of {dim}", mean.len())));
        }
        let inv: Vec<f32> = std.iter().map(|s| 1.0 / s.max(1e-6)).collect();
        let inv = Tensor::from_vec(inv, (1, dim), &Device::Cpu)?;
        let w1 = self.w1.broadcast_mul(&inv)?;
        let mean = Tensor::from_vec(mean.to_vec(), (dim, 1), &Device::Cpu)?;
        let b1 = (&self.b1 - w1.matmul(&mean)?.flatten_all()?)?;
        self.w1 = w1;
        self.b1 = b1;
        Ok(self)
    }

    /// A tuned head: its fine-tuned encoder layers and the layer below them it reads.
    pub fn with_top(mut self, top: EncoderTop) -> Self {
        self.card.tuned_layers = top.layers.len();
        self.top_int8 = crate::int8_bert::Int8Layers::new(&top.layers, top.heads, top.eps).ok();
        self.top = Some(top);
        self
    }

    /// The encoder layer whose token states this head reads; `None` for a plain head (it reads
    /// the sentence vector).
    pub fn split_layer(&self) -> Option<usize> {
        self.top.as_ref().map(|_| self.card.split_layer)
    }

    /// Class probabilities from token states (one `[n, h]` tensor per text) for a tuned head.
    pub fn probabilities_from_states(&self, states: &[Tensor]) -> Result<Vec<Vec<f32>>> {
        let top = self.top.as_ref().ok_or_else(|| Error::Generation("this head reads sentence vectors".into()))?;
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let kept =
            states.iter().map(|s| keep_states(s, self.card.max_states)).collect::<candle_core::Result<Vec<_>>>()?;
        if let (Some(int8), true) = (&self.top_int8, kept.iter().all(|s| s.device().is_cpu())) {
            // Packed, no padding, int8 products: what serving runs.
            let lens = kept.iter().map(|s| s.dim(0)).collect::<candle_core::Result<Vec<_>>>()?;
            let out = int8.forward(&Tensor::cat(&kept, 0)?, &lens)?;
            let mut rows = Vec::with_capacity(lens.len());
            let mut at = 0;
            for n in lens {
                rows.push(out.narrow(0, at, n)?.mean_keepdim(0)?);
                at += n;
            }
            let pooled = Tensor::cat(&rows, 0)?;
            return Ok(candle_nn::ops::softmax(&self.logits(&pooled)?, D::Minus1)?.to_vec2()?);
        }
        let (x, mask) = pad_states(&kept)?;
        let pooled = EncoderTop::pool(&top.forward(&x, &mask)?, &mask)?;
        Ok(candle_nn::ops::softmax(&self.logits(&pooled)?, D::Minus1)?.to_vec2()?)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.matmul(&self.w1.t()?)?.broadcast_add(&self.b1)?;
        Ok(match &self.w2 {
            Some((w, b)) => h.relu()?.matmul(&w.t()?)?.broadcast_add(b)?,
            None => h,
        })
    }

    /// Class probabilities of texts (query side), whatever the head reads: the sentence
    /// vectors, or a tuned head's token states (one encoder pass either way).
    pub fn probabilities_of_texts(&self, e: &dyn crate::Embedder, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        match self.split_layer() {
            Some(layer) => match e.embed_with_states(texts, crate::InputKind::Query, layer)? {
                Some((_, states)) => self.probabilities_from_states(&states),
                None => Err(Error::Generation(format!(
                    "the {} head fine-tuned encoder layers; this encoder engine cannot give their inputs (use the int8 engine)",
                    self.card.task
                ))),
            },
            None => self.probabilities(&e.embed(texts, crate::InputKind::Query)?.vectors),
        }
    }

    /// Class probabilities of each vector, in label order (a plain head; a tuned head reads
    /// token states, see [`Head::probabilities_of_texts`]).
    pub fn probabilities(&self, vectors: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if self.top.is_some() {
            return Err(Error::Generation(format!(
                "the {} head reads token states, not sentence vectors",
                self.card.task
            )));
        }
        if vectors.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (vectors.len(), self.card.input_dim), &Device::Cpu)?;
        Ok(candle_nn::ops::softmax(&self.logits(&x)?, D::Minus1)?.to_vec2()?)
    }

    /// The most likely label and its probability.
    pub fn classify(&self, vector: &[f32]) -> Result<(String, f32)> {
        let p = self.probabilities(&[vector.to_vec()])?.remove(0);
        let (i, &best) = p.iter().enumerate().fold((0, &f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
        Ok((self.card.labels[i].clone(), best))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut m = HashMap::from([("w1".to_string(), self.w1.clone()), ("b1".to_string(), self.b1.clone())]);
        if let Some((w, b)) = &self.w2 {
            m.insert("w2".into(), w.clone());
            m.insert("b2".into(), b.clone());
        }
        if let Some(top) = &self.top {
            for (i, l) in top.layers.iter().enumerate() {
                for (k, t) in l {
                    m.insert(format!("top.{i}.{k}"), t.clone());
                }
            }
            m.insert("top.heads".into(), Tensor::new(&[top.heads as u32], &Device::Cpu)?);
            m.insert("top.eps".into(), Tensor::new(&[top.eps as f32], &Device::Cpu)?);
        }
        candle_core::safetensors::save(&m, dir.join("head.safetensors"))?;
        let p = dir.join("head.json");
        std::fs::write(&p, serde_json::to_string_pretty(&self.card)?).map_err(|e| Error::io(&p, e))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join("head.json");
        let card: HeadCard = serde_json::from_str(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?)
            .map_err(|e| Error::invalid(&p, format!("not a head card: {e}")))?;
        let w = candle_core::safetensors::load(dir.join("head.safetensors"), &Device::Cpu)?;
        let get = |k: &str| w.get(k).cloned().ok_or_else(|| Error::invalid(dir, format!("head.safetensors lacks {k}")));
        let w2 = match (w.get("w2"), w.get("b2")) {
            (Some(a), Some(b)) => Some((a.clone(), b.clone())),
            _ => None,
        };
        let top = if card.tuned_layers > 0 {
            let mut layers = vec![HashMap::new(); card.tuned_layers];
            for (k, t) in &w {
                let Some(rest) = k.strip_prefix("top.") else { continue };
                let Some((i, name)) = rest.split_once('.') else { continue };
                if let Some(l) = i.parse::<usize>().ok().and_then(|i| layers.get_mut(i)) {
                    l.insert(name.to_string(), t.clone());
                }
            }
            if layers.iter().any(|l| l.len() != 16) {
                return Err(Error::invalid(dir, "head.safetensors lacks some of its tuned encoder layers"));
            }
            let heads = get("top.heads")?.to_vec1::<u32>()?[0] as usize;
            let eps = get("top.eps")?.to_vec1::<f32>()?[0] as f64;
            Some(EncoderTop { layers, heads, eps })
        } else {
            None
        };
        let top_int8 = match &top {
            Some(t) => Some(crate::int8_bert::Int8Layers::new(&t.layers, t.heads, t.eps)?),
            None => None,
        };
        let head = Self { w1: get("w1")?, b1: get("b1")?, w2, card, top, top_int8 };
        let out = head.w2.as_ref().map(|(w, _)| w.dim(0)).unwrap_or_else(|| head.w1.dim(0))?;
        if out != head.card.labels.len() || head.w1.dim(1)? != head.card.input_dim {
            return Err(Error::invalid(dir, "head.safetensors does not match the labels and input size in head.json"));
        }
        Ok(head)
    }
}

impl Head {
    /// Metrics on labelled token states (a tuned head), in batches of 32.
    pub fn evaluate_states(&self, states: &[Tensor], y: &[usize]) -> Result<ClassMetrics> {
        let mut pred = Vec::with_capacity(states.len());
        for part in states.chunks(32) {
            for p in self.probabilities_from_states(part)? {
                pred.push(p.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0);
            }
        }
        Ok(metrics(&self.card.labels, y, &pred))
    }

    /// Metrics on labelled vectors (label indices in this head's label order).
    pub fn evaluate(&self, x: &[Vec<f32>], y: &[usize]) -> Result<ClassMetrics> {
        let probs = self.probabilities(x)?;
        let pred: Vec<usize> = probs
            .iter()
            .map(|p| p.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0)
            .collect();
        Ok(metrics(&self.card.labels, y, &pred))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn restricted_labels_are_seen_only_by_their_groups() {
        let card: HeadCard = serde_json::from_value(serde_json::json!({
            "task": "routing", "labels": ["給与", "プリンタ", "IT"], "embedder": "e", "input_dim": 2, "hidden": 0,
            "config": {}, "train_examples": 1, "class_counts": {},
            "validation": {"accuracy": 1.0, "macro_f1": 1.0, "examples": 1, "per_class": [], "confusion": []},
            "label_groups": {"給与": ["hr"], "プリンタ": ["public"], "IT": []}
        }))
        .unwrap();
        let staff = vec!["staff".to_string()];
        assert!(!card.label_visible("給与", &staff));
        assert!(card.label_visible("給与", &["hr".to_string()]));
        assert!(card.label_visible("プリンタ", &staff) && card.label_visible("IT", &staff));
        assert!(card.label_visible("unknown", &[]));
    }

    use super::*;

    fn random(shape: (usize, usize), seed: u64, scale: f32) -> Tensor {
        let n = shape.0 * shape.1;
        // A small LCG: deterministic weights without a dependency.
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn tuned_head() -> Head {
        let (h, inter) = (64, 128);
        let mut layers = Vec::new();
        for i in 0..2u64 {
            let mut l = HashMap::new();
            for (j, (k, (o, inp))) in
                [("q", (h, h)), ("k", (h, h)), ("v", (h, h)), ("o", (h, h)), ("up", (inter, h)), ("down", (h, inter))]
                    .into_iter()
                    .enumerate()
            {
                let seed = i * 10 + j as u64;
                l.insert(format!("{k}.weight"), random((o, inp), seed, 0.3));
                l.insert(format!("{k}.bias"), random((1, o), seed + 100, 0.1).squeeze(0).unwrap());
            }
            for n in ["ln1", "ln2"] {
                l.insert(format!("{n}.weight"), Tensor::ones(h, DType::F32, &Device::Cpu).unwrap());
                l.insert(format!("{n}.bias"), Tensor::zeros(h, DType::F32, &Device::Cpu).unwrap());
            }
            layers.push(l);
        }
        let card = HeadCard {
            task: "safety".into(),
            labels: vec!["harmful".into(), "safe".into()],
            embedder: "test".into(),
            input_dim: h,
            hidden: 0,
            tuned_layers: 0,
            split_layer: 10,
            max_states: 8,
            config: serde_json::Value::Null,
            train_examples: 0,
            class_counts: BTreeMap::new(),
            validation: ClassMetrics::default(),
            tests: BTreeMap::new(),
            label_groups: Default::default(),
        };
        Head::new(card, random((2, h), 7, 0.5), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(), None)
            .with_top(EncoderTop { layers, heads: 4, eps: 1e-12 })
    }

    use candle_core::DType;

    #[test]
    fn a_head_trained_on_standardized_inputs_reads_raw_ones_alike() {
        let dim = 6;
        let card = |hidden| HeadCard {
            task: "t".into(),
            labels: vec!["a".into(), "b".into(), "c".into()],
            embedder: "test".into(),
            input_dim: dim,
            hidden,
            tuned_layers: 0,
            split_layer: 0,
            max_states: 0,
            config: serde_json::Value::Null,
            train_examples: 0,
            class_counts: BTreeMap::new(),
            validation: ClassMetrics::default(),
            tests: BTreeMap::new(),
            label_groups: Default::default(),
        };
        let mean = [1.0f32, -2.0, 30.0, 0.0, 5.0, -0.5];
        let std = [0.5f32, 2.0, 10.0, 1.0, 0.1, 3.0];
        let x = random((4, dim), 3, 40.0).to_vec2::<f32>().unwrap();
        let z: Vec<Vec<f32>> =
            x.iter().map(|v| v.iter().zip(&mean).zip(&std).map(|((a, m), s)| (a - m) / s).collect()).collect();
        for hidden in [0, 5] {
            let (w1, b1) = if hidden == 0 {
                (random((3, dim), 4, 1.0), random((1, 3), 5, 1.0).squeeze(0).unwrap())
            } else {
                (random((hidden, dim), 4, 1.0), random((1, hidden), 5, 1.0).squeeze(0).unwrap())
            };
            let w2 = (hidden > 0).then(|| (random((3, hidden), 6, 1.0), random((1, 3), 7, 1.0).squeeze(0).unwrap()));
            let on_z = Head::new(card(hidden), w1.clone(), b1.clone(), w2.clone()).probabilities(&z).unwrap();
            let raw = Head::new(card(hidden), w1, b1, w2).reading_raw_inputs(&mean, &std).unwrap();
            let on_x = raw.probabilities(&x).unwrap();
            for (a, b) in on_z.iter().flatten().zip(on_x.iter().flatten()) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b} (hidden {hidden})");
            }
        }
        let h = Head::new(card(0), random((3, dim), 4, 1.0), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(), None);
        assert!(h.reading_raw_inputs(&mean[..3], &std).is_err());
    }

    #[test]
    fn a_tuned_head_serves_on_int8_what_it_trained_in_f32_and_survives_save_and_load() {
        let head = tuned_head();
        assert_eq!(head.split_layer(), Some(10));
        let states = vec![random((5, 64), 1, 2.0), random((12, 64), 2, 2.0)];
        let int8 = head.probabilities_from_states(&states).unwrap();
        // The f32 layers (what training runs), padded with a mask, on the same kept states.
        let top = head.top.as_ref().unwrap();
        let kept: Vec<Tensor> = states.iter().map(|s| keep_states(s, 8).unwrap()).collect();
        assert_eq!(kept[1].dim(0).unwrap(), 8, "first four and last four states");
        let (x, mask) = pad_states(&kept).unwrap();
        let pooled = EncoderTop::pool(&top.forward(&x, &mask).unwrap(), &mask).unwrap();
        let f32p: Vec<Vec<f32>> =
            candle_nn::ops::softmax(&head.logits(&pooled).unwrap(), D::Minus1).unwrap().to_vec2().unwrap();
        for (a, b) in int8.iter().flatten().zip(f32p.iter().flatten()) {
            assert!((a - b).abs() < 0.02, "int8 {int8:?} vs f32 {f32p:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        head.save(dir.path()).unwrap();
        let back = Head::load(dir.path()).unwrap();
        assert_eq!(back.card.tuned_layers, 2);
        assert_eq!(back.split_layer(), Some(10));
        let again = back.probabilities_from_states(&states).unwrap();
        for (a, b) in int8.iter().flatten().zip(again.iter().flatten()) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    /// A text's states cut out of a batch keep only their own elements.
    #[test]
    fn owned_states_hold_only_their_elements() {
        let batch = random((32 * 10, 4), 3, 1.0).reshape((32, 10, 4)).unwrap();
        let one = batch.get(5).unwrap();
        let own = owned(&one).unwrap();
        assert_eq!(own.dims(), &[10, 4]);
        assert_eq!(own.to_vec2::<f32>().unwrap(), one.to_vec2::<f32>().unwrap());
        let (storage, layout) = own.storage_and_layout();
        assert_eq!(layout.start_offset(), 0);
        match &*storage {
            candle_core::Storage::Cpu(c) => assert_eq!(c.as_slice::<f32>().unwrap().len(), 40),
            _ => unreachable!(),
        }
        // What `Tensor::copy` does instead: the whole batch comes along.
        let copied = one.copy().unwrap();
        let (storage, _) = copied.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(c) => assert_eq!(c.as_slice::<f32>().unwrap().len(), 32 * 40),
            _ => unreachable!(),
        }
    }
}
