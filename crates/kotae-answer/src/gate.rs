//! The answer gate: answer or decline, from what retrieval found.
//!
//! The best chunk's cosine alone lets through questions the documents only touch (a question
//! on the commuting-allowance cap finds the remote-work allowance, close in meaning) and
//! declines some that the lexical ranking answers well. The gate therefore reads several
//! signals of the retrieved chunks, each cheap (no model run beyond the question's embedding,
//! which retrieval already made), and weighs them with a logistic model per language whose
//! weights `kotae eval answer-scope --fit` calibrates on a deployment's own questions.

use std::collections::HashSet;

use kotae_index::Hit;
use serde::{Deserialize, Serialize};

/// What the gate reads, per question.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GateSignals {
    /// The best cosine similarity among the retrieved chunks, minus the language's
    /// `min_relevance` (so that an adapted embedder's mapped threshold keeps its meaning).
    pub dense_margin: f32,
    /// The share of the question's terms (each weighted by how few of the retrieved chunks
    /// hold it) that the best-covering one of the first three chunks contains: a question on
    /// the commuting-allowance cap finds the remote-work allowance close in meaning, but not
    /// its words.
    pub coverage: f32,
    /// 1 when the question asks a number of something (何枚, "how many devices", いくら) and no
    /// sentence of the retrieved chunks about the question states one, else 0 (see
    /// [`crate::unit`]).
    pub unit_missing: f32,
}

impl GateSignals {
    pub fn values(&self) -> [f32; 3] {
        [self.dense_margin, self.coverage, self.unit_missing]
    }
}

/// The terms of a question the gate compares with the chunks: Japanese character bigrams that
/// hold a kanji or katakana (hiragana pairs are endings and particles, in every chunk), and
/// English content words (stemmed, stop words left out).
pub fn terms(text: &str) -> HashSet<String> {
    crate::evidence::terms(text)
        .into_iter()
        .filter(|t| t.is_ascii() || t.chars().any(|c| !('\u{3041}'..='\u{309f}').contains(&c)))
        .collect()
}

/// The gate's signals for `question` over the retrieved `hits`, best first.
pub fn signals(question: &str, hits: &[Hit], min_relevance: f32) -> GateSignals {
    let best = hits.iter().filter_map(|h| h.dense_score).reduce(f32::max);
    let dense_margin = best.map_or(-1.0, |b| b - min_relevance);
    let q = terms(question);
    let chunks: Vec<HashSet<String>> = hits.iter().map(|h| terms(&h.text)).collect();
    let coverage = if q.is_empty() || chunks.is_empty() {
        0.0
    } else {
        // A term found in every retrieved chunk says little; one found in a single chunk
        // says much (an inverse document frequency over the retrieved chunks, smoothed).
        let n = chunks.len() as f32;
        let weight = |t: &String| {
            let df = chunks.iter().filter(|c| c.contains(t)).count() as f32;
            ((n + 1.0) / (df + 0.5)).ln()
        };
        let total: f32 = q.iter().map(weight).sum();
        chunks
            .iter()
            .take(3)
            .map(|c| q.iter().filter(|t| c.contains(*t)).map(weight).sum::<f32>() / total)
            .fold(0.0, f32::max)
    };
    // The number must be stated in a sentence about the question (one sharing a term with it):
    // a section on the right topic states many numbers, of other things.
    let unit_missing = crate::unit::asked(question).is_some_and(|u| {
        !hits.iter().any(|h| {
            kotae_guard::stream::sentences(&h.text)
                .into_iter()
                .any(|s| crate::unit::states(s, &u) && terms(s).iter().any(|t| q.contains(t) && !u.names(t)))
        })
    });
    GateSignals { dense_margin, coverage, unit_missing: if unit_missing { 1.0 } else { 0.0 } }
}

/// A logistic model of "the documents answer this question" (the probability is
/// `σ(bias + Σ weight·signal)`) and the probabilities the gate needs to generate an answer
/// and to quote the closest passages; below both it declines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateWeights {
    pub bias: f32,
    pub dense_margin: f32,
    pub coverage: f32,
    pub unit_missing: f32,
    pub answer_probability: f32,
    pub quote_probability: f32,
}

impl GateWeights {
    pub fn from_values(bias: f32, w: [f32; 3]) -> Self {
        Self {
            bias,
            dense_margin: w[0],
            coverage: w[1],
            unit_missing: w[2],
            answer_probability: 0.5,
            quote_probability: 0.5,
        }
    }

    pub fn decide(&self, p: f32) -> Decision {
        if p >= self.answer_probability {
            Decision::Answer
        } else if p >= self.quote_probability {
            Decision::Quote
        } else {
            Decision::Decline
        }
    }

    pub fn values(&self) -> [f32; 3] {
        [self.dense_margin, self.coverage, self.unit_missing]
    }

    /// The probability that the documents answer the question.
    pub fn probability(&self, s: &GateSignals) -> f32 {
        let z = self.bias + self.values().iter().zip(s.values()).map(|(w, x)| w * x).sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// What the gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The documents answer it: generate an answer from them.
    Answer,
    /// Unsure: say that no direct answer was found and quote the closest passages (the
    /// manual's own words, cited), never a generated answer that may be invented.
    Quote,
    /// The documents do not cover it: decline and point to the help desk.
    Decline,
}

/// The gate's model per language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Off: the best chunk's cosine alone decides, answer or decline (`min_relevance_<lang>`).
    pub enabled: bool,
    pub ja: GateWeights,
    /// English and every other language.
    pub en: GateWeights,
}

impl GateConfig {
    pub fn weights(&self, lang: &str) -> &GateWeights {
        if lang == "ja" {
            &self.ja
        } else {
            &self.en
        }
    }
}

impl Default for GateConfig {
    /// Fitted by `kotae eval answer-scope --fit` on `knowledge/` and the development questions
    /// of `evals/` (see `evals/answer/README.md`).
    fn default() -> Self {
        Self {
            enabled: true,
            ja: GateWeights {
                bias: -1.843,
                dense_margin: 58.015,
                coverage: 6.714,
                unit_missing: -1.192,
                answer_probability: 0.512,
                quote_probability: 0.218,
            },
            en: GateWeights {
                bias: -1.487,
                dense_margin: 66.738,
                coverage: 1.399,
                unit_missing: -1.141,
                answer_probability: 0.504,
                quote_probability: 0.218,
            },
        }
    }
}

/// Where to put a model's two thresholds from labelled probabilities (`true`: answerable):
/// generate for at most `generated_unanswerable` of the unanswerable questions, and quote or
/// answer at least `kept_answerable` of the answerable ones.
pub fn bands(w: &mut GateWeights, probs: &[(f32, bool)], generated_unanswerable: f32, kept_answerable: f32) {
    let mut una: Vec<f32> = probs.iter().filter(|p| !p.1).map(|p| p.0).collect();
    let mut ans: Vec<f32> = probs.iter().filter(|p| p.1).map(|p| p.0).collect();
    una.sort_by(|a, b| b.total_cmp(a));
    ans.sort_by(|a, b| a.total_cmp(b));
    // The smallest threshold with at most that share of unanswerable ones at or above it.
    let k = (generated_unanswerable * una.len() as f32 + 1e-3).floor() as usize;
    w.answer_probability = una.get(k).map_or(0.5, |p| (p + 1e-4).min(1.0));
    let k = ((1.0 - kept_answerable) * ans.len() as f32 + 1e-3).floor() as usize;
    w.quote_probability = ans.get(k).copied().unwrap_or(0.0).min(w.answer_probability);
}

/// Fits [`GateWeights`] to labelled signals (`true`: the documents answer it) by L2-regularized
/// logistic regression on standardized signals (full-batch gradient descent: a few hundred
/// examples, three signals). Each class weighs the same in total, so a set with more
/// answerable questions does not tilt the gate towards answering.
pub fn fit(examples: &[(GateSignals, bool)], l2: f32) -> GateWeights {
    const D: usize = 3;
    let n = examples.len().max(1) as f32;
    let mut mean = [0.0f32; D];
    let mut sd = [0.0f32; D];
    for (s, _) in examples {
        for (m, x) in mean.iter_mut().zip(s.values()) {
            *m += x / n;
        }
    }
    for (s, _) in examples {
        for ((v, m), x) in sd.iter_mut().zip(mean).zip(s.values()) {
            *v += (x - m) * (x - m) / n;
        }
    }
    let sd = sd.map(|v| v.sqrt().max(1e-6));
    let xs: Vec<([f32; D], f32)> = examples
        .iter()
        .map(|(s, y)| {
            let v = s.values();
            (std::array::from_fn(|i| (v[i] - mean[i]) / sd[i]), if *y { 1.0 } else { 0.0 })
        })
        .collect();
    let pos = examples.iter().filter(|e| e.1).count().max(1) as f32;
    let neg = examples.iter().filter(|e| !e.1).count().max(1) as f32;
    let (mut b, mut w) = (0.0f32, [0.0f32; D]);
    for _ in 0..3000 {
        let (mut gb, mut gw) = (0.0f32, [0.0f32; D]);
        for (x, y) in &xs {
            let z = b + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
            let p = 1.0 / (1.0 + (-z).exp());
            let g = if *y > 0.5 { 0.5 / pos } else { 0.5 / neg } * (p - y);
            gb += g;
            for (gi, xi) in gw.iter_mut().zip(x) {
                *gi += g * xi;
            }
        }
        b -= 0.5 * gb;
        for (wi, gi) in w.iter_mut().zip(gw) {
            *wi -= 0.5 * (gi + l2 * *wi);
        }
    }
    // Back to the signals' own scale.
    let weights: [f32; D] = std::array::from_fn(|i| w[i] / sd[i]);
    let bias = b - (0..D).map(|i| w[i] * mean[i] / sd[i]).sum::<f32>();
    GateWeights::from_values(bias, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str, dense: f32) -> Hit {
        Hit { text: text.into(), dense_score: Some(dense), ..Default::default() }
    }

    #[test]
    fn signals_of_a_covered_and_an_uncovered_question() {
        let hits = [
            hit("Remote work allowance: employees working from home get 3,000 yen a month.", 0.86),
            hit("Travel expenses are reimbursed monthly.", 0.84),
        ];
        let covered = signals("How much is the remote work allowance?", &hits, 0.83);
        let uncovered = signals("How much is the company car allowance?", &hits, 0.83);
        assert!(covered.coverage > uncovered.coverage, "{covered:?} {uncovered:?}");
        assert!((covered.dense_margin - 0.03).abs() < 1e-6);
        assert_eq!(covered.unit_missing, 0.0);
        // Asks for a number of devices; the chunks state none (3,000 yen is not one).
        let devices = signals("How many devices can I connect to the remote work allowance?", &hits, 0.83);
        assert_eq!(devices.unit_missing, 1.0);
        // A number of the asked unit in a sentence about something else does not count, nor
        // does sharing only the unit's name.
        let trips = [hit("Expenses are reimbursed monthly. Trips of 5 days need approval by a director.", 0.9)];
        assert_eq!(signals("How many days does a reimbursement take?", &trips, 0.83).unit_missing, 1.0);
        assert_eq!(signals("How many days can a trip last without approval?", &trips, 0.83).unit_missing, 0.0);
        // Japanese: kana endings do not count as terms.
        assert!(terms("社宅はありますか").iter().all(|t| t.chars().any(|c| !('ぁ'..='ゟ').contains(&c))));
    }

    #[test]
    fn fitting_separates_what_the_signals_separate_and_the_bands_follow() {
        let ex: Vec<(GateSignals, bool)> = (0..40)
            .map(|i| {
                let y = i % 2 == 0;
                let m = if y { 0.02 } else { -0.03 } + (i % 5) as f32 * 0.004;
                (GateSignals { dense_margin: m, coverage: if y { 0.5 } else { 0.1 }, unit_missing: 0.0 }, y)
            })
            .collect();
        let w = fit(&ex, 1e-3);
        assert!(ex.iter().all(|(s, y)| (w.probability(s) >= 0.5) == *y), "{w:?}");
        let g = GateConfig::default().en;
        assert_eq!(g.decide(0.9), Decision::Answer);
        assert_eq!(g.decide((g.answer_probability + g.quote_probability) / 2.0), Decision::Quote);
        assert_eq!(g.decide(0.0), Decision::Decline);
        // Bands: 10 unanswerable at 0.0..0.9, 10 answerable at 0.1..1.0.
        let probs: Vec<(f32, bool)> =
            (0..10).map(|i| (i as f32 / 10.0, false)).chain((1..=10).map(|i| (i as f32 / 10.0, true))).collect();
        let mut w = fit(&ex, 1e-3);
        bands(&mut w, &probs, 0.1, 0.9);
        // One unanswerable (0.9) may be generated; the one answerable at 0.1 may be declined.
        assert!((w.answer_probability - 0.8).abs() < 1e-3 && (w.quote_probability - 0.2).abs() < 1e-6, "{w:?}");
    }
}
