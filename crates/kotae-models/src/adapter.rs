//! An embedder adapted to one company: the encoder's top layers fine-tuned contrastively on
//! pairs from its own knowledge base (`kotae finetune embedder`, in `kotae-adapt`), the layers
//! below them and the tokenizer unchanged. It is `adapter.safetensors` (the replaced layers,
//! named as [`crate::classifier::EncoderTop`] names them: `top.<i>.<q|k|v|o|ln1|up|down|ln2>.<weight|bias>`)
//! plus `adapter.json` (its card). [`crate::BertEmbedder::with_adapter`] serves it on the same
//! int8 engine as the original.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Retrieval quality on a set of pairs: each query ranked against every passage of the set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    pub pairs: usize,
    /// Candidate passages each query is ranked against.
    pub candidates: usize,
    /// Contrastive loss (cross-entropy of the positive among all candidates, at the training
    /// temperature).
    pub loss: f64,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub mrr: f64,
}

/// One epoch of training, for the card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub heldout: PairMetrics,
    pub seconds: f64,
}

/// What an adapter says about itself (`adapter.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterCard {
    /// Catalog name of the embedder it adapts.
    pub base: String,
    /// Content hash of the weights (first 8 bytes, hex): part of the embedder's name, so a
    /// knowledge base knows which vectors it holds.
    pub id: String,
    /// Layers `split_layer..` are replaced.
    pub split_layer: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    /// Training settings, as given.
    pub config: serde_json::Value,
    /// Pairs trained on / held out, by kind (`log`, `heading`, `translated`).
    pub train_pairs: BTreeMap<String, usize>,
    pub heldout_pairs: BTreeMap<String, usize>,
    pub hard_negatives: usize,
    /// Pairs left out by the training-data guard or as flagged at ingest.
    pub refused: usize,
    /// Held-out pairs (split by document) before and after.
    pub heldout_before: PairMetrics,
    pub heldout_after: PairMetrics,
    /// General-domain pairs (not the company's text): what the adapter may have forgotten.
    pub general_before: PairMetrics,
    pub general_after: PairMetrics,
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights were kept (best held-out MRR; 0 = none beat the original, the
    /// original layers kept).
    pub best_epoch: usize,
    pub seconds: f64,
    /// The same quantiles of cosine scores under the original and the adapted model (each
    /// held-out and general query's positive and best other passage): thresholds set on the
    /// original's scale (the relevance gate) are carried over by [`AdapterCard::map_score`].
    #[serde(default)]
    pub score_map: Vec<(f32, f32)>,
}

impl AdapterCard {
    /// The adapted embedder's name: `<base>+ft-<id>`.
    pub fn embedder_name(&self) -> String {
        format!("{}+ft-{}", self.base, self.id)
    }

    /// A score on the original model's scale → the adapted model's score at the same quantile
    /// (linear between quantiles; shifted by the end's difference outside them). Unchanged
    /// without a map.
    pub fn map_score(&self, t: f32) -> f32 {
        let m = &self.score_map;
        let (Some(first), Some(last)) = (m.first(), m.last()) else { return t };
        if t <= first.0 {
            return t + (first.1 - first.0);
        }
        if t >= last.0 {
            return t + (last.1 - last.0);
        }
        for w in m.windows(2) {
            let ((a0, b0), (a1, b1)) = (w[0], w[1]);
            if t >= a0 && t <= a1 {
                let f = if a1 > a0 { (t - a0) / (a1 - a0) } else { 0.5 };
                return b0 + f * (b1 - b0);
            }
        }
        t
    }
}

/// Quantile map between two score samples (`QUANTILES + 1` points, both sorted).
pub fn quantile_map(before: &[f32], after: &[f32]) -> Vec<(f32, f32)> {
    const QUANTILES: usize = 200;
    if before.is_empty() || after.is_empty() {
        return Vec::new();
    }
    let sorted = |v: &[f32]| {
        let mut v = v.to_vec();
        v.sort_by(f32::total_cmp);
        v
    };
    let (b, a) = (sorted(before), sorted(after));
    let at = |v: &[f32], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (0..=QUANTILES)
        .map(|i| {
            let q = i as f64 / QUANTILES as f64;
            (at(&b, q), at(&a, q))
        })
        .collect()
}

/// Replacement top layers for an embedder.
pub struct EmbedderAdapter {
    pub card: AdapterCard,
    pub layers: Vec<HashMap<String, Tensor>>,
}

/// Tensors per layer an adapter must have (8 parameters, weight and bias each).
const TENSORS_PER_LAYER: usize = 16;

impl EmbedderAdapter {
    /// Save into `dir`; the card's `id` is set from the weights' content.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut m = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (k, t) in l {
                m.insert(format!("top.{i}.{k}"), t.clone());
            }
        }
        let st = dir.join("adapter.safetensors");
        candle_core::safetensors::save(&m, &st)?;
        let bytes = std::fs::read(&st).map_err(|e| Error::io(&st, e))?;
        self.card.id = hex::encode(&Sha256::digest(&bytes)[..8]);
        let p = dir.join("adapter.json");
        std::fs::write(&p, serde_json::to_string_pretty(&self.card)?).map_err(|e| Error::io(&p, e))
    }

    /// The card alone (cheap: what a knowledge base's embedder name needs).
    pub fn card(dir: &Path) -> Result<AdapterCard> {
        let p = dir.join("adapter.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::invalid(&p, format!("not an adapter card: {e}")))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let card = Self::card(dir)?;
        let st = dir.join("adapter.safetensors");
        let bytes = std::fs::read(&st).map_err(|e| Error::io(&st, e))?;
        if hex::encode(&Sha256::digest(&bytes)[..8]) != card.id {
            return Err(Error::invalid(&st, "the weights do not match adapter.json's id (a partial copy?)"));
        }
        let w = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let mut layers = vec![HashMap::new(); card.layers];
        for (k, t) in w {
            let Some((i, name)) = k.strip_prefix("top.").and_then(|r| r.split_once('.')) else { continue };
            if let Some(l) = i.parse::<usize>().ok().and_then(|i| layers.get_mut(i)) {
                l.insert(name.to_string(), t);
            }
        }
        if card.layers == 0 || layers.iter().any(|l| l.len() != TENSORS_PER_LAYER) {
            return Err(Error::invalid(&st, format!("expected {} complete encoder layers", card.layers)));
        }
        Ok(Self { card, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_map_by_quantile() {
        // The adapted model scores everything 0.1 lower and twice as spread.
        let before: Vec<f32> = (0..100).map(|i| 0.7 + i as f32 * 0.002).collect();
        let after: Vec<f32> = before.iter().map(|s| 0.6 + (s - 0.7) * 2.0).collect();
        let card = AdapterCard { score_map: quantile_map(&before, &after), ..Default::default() };
        assert!((card.map_score(0.8) - 0.8).abs() < 0.01, "{}", card.map_score(0.8));
        assert!((card.map_score(0.75) - 0.7).abs() < 0.01, "{}", card.map_score(0.75));
        // Above the highest score seen (0.898 → 0.996): shifted by the end's difference.
        assert!((card.map_score(0.9) - 0.998).abs() < 0.01, "{}", card.map_score(0.9));
        assert!((card.map_score(0.5) - 0.4).abs() < 0.01, "{}", card.map_score(0.5));
        assert_eq!(AdapterCard::default().map_score(0.85), 0.85);
    }
}
