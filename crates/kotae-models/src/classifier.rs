//! Classification heads on sentence vectors (transfer learning: the embedder frozen, a small
//! trained layer on top). A head is `head.safetensors` + `head.json` (its card); training lives
//! in `kotae-adapt`, this is what serving needs: load, classify, evaluate.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, D};
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
    /// The training settings, as the trainer recorded them.
    pub config: serde_json::Value,
    pub train_examples: usize,
    pub class_counts: BTreeMap<String, usize>,
    pub validation: ClassMetrics,
    /// Extra held-out evaluations (e.g. HarmBench for the safety head), never trained on.
    #[serde(default)]
    pub tests: BTreeMap<String, ClassMetrics>,
}

/// A trained classification head.
pub struct Head {
    pub card: HeadCard,
    w1: Tensor,
    b1: Tensor,
    w2: Option<(Tensor, Tensor)>,
}

impl Head {
    /// A head from its weights: `w1 [h, in]`, `b1 [h]`, and for an MLP `w2 [labels, h]`, `b2`.
    pub fn new(card: HeadCard, w1: Tensor, b1: Tensor, w2: Option<(Tensor, Tensor)>) -> Self {
        Self { card, w1, b1, w2 }
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.matmul(&self.w1.t()?)?.broadcast_add(&self.b1)?;
        Ok(match &self.w2 {
            Some((w, b)) => h.relu()?.matmul(&w.t()?)?.broadcast_add(b)?,
            None => h,
        })
    }

    /// Class probabilities of each vector, in label order.
    pub fn probabilities(&self, vectors: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
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
        let head = Self { w1: get("w1")?, b1: get("b1")?, w2, card };
        let out = head.w2.as_ref().map(|(w, _)| w.dim(0)).unwrap_or_else(|| head.w1.dim(0))?;
        if out != head.card.labels.len() || head.w1.dim(1)? != head.card.input_dim {
            return Err(Error::invalid(dir, "head.safetensors does not match the labels and input size in head.json"));
        }
        Ok(head)
    }
}

impl Head {
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
