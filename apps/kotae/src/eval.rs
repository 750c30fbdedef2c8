//! `kotae eval retrieval`: Recall@1/5/10, MRR@10 and nDCG@10 per language and mode on the golden
//! set, checked against thresholds.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kotae_index::{KnowledgeIndex, SearchMode, SearchRequest};
use kotae_models::{Embedder, InputKind};
use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Debug, Clone, Deserialize)]
pub struct GoldQuery {
    pub id: String,
    pub lang: String,
    pub query: String,
    /// Sources (paths relative to the ingested root) that answer the query.
    pub gold: Vec<String>,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Metrics {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr_at_10: f64,
    pub ndcg_at_10: f64,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "recall_at_1" => self.recall_at_1,
            "recall_at_5" => self.recall_at_5,
            "recall_at_10" => self.recall_at_10,
            "mrr_at_10" => self.mrr_at_10,
            "ndcg_at_10" => self.ndcg_at_10,
            _ => return None,
        })
    }
}

/// Metrics of one query from its ranked list of distinct sources.
fn score(ranked: &[String], gold: &[String]) -> Metrics {
    let rel = |s: &String| gold.contains(s);
    let first = ranked.iter().take(10).position(rel);
    let dcg: f64 =
        ranked.iter().take(10).enumerate().filter(|(_, s)| rel(s)).map(|(i, _)| 1.0 / (i as f64 + 2.0).log2()).sum();
    let ideal: f64 = (0..gold.len().min(10)).map(|i| 1.0 / (i as f64 + 2.0).log2()).sum();
    Metrics {
        queries: 1,
        recall_at_1: f64::from(u8::from(first.is_some_and(|p| p < 1))),
        recall_at_5: f64::from(u8::from(first.is_some_and(|p| p < 5))),
        recall_at_10: f64::from(u8::from(first.is_some())),
        mrr_at_10: first.map_or(0.0, |p| 1.0 / (p as f64 + 1.0)),
        ndcg_at_10: if ideal > 0.0 { dcg / ideal } else { 0.0 },
    }
}

fn average(ms: &[Metrics]) -> Metrics {
    let n = ms.len().max(1) as f64;
    Metrics {
        queries: ms.len(),
        recall_at_1: ms.iter().map(|m| m.recall_at_1).sum::<f64>() / n,
        recall_at_5: ms.iter().map(|m| m.recall_at_5).sum::<f64>() / n,
        recall_at_10: ms.iter().map(|m| m.recall_at_10).sum::<f64>() / n,
        mrr_at_10: ms.iter().map(|m| m.mrr_at_10).sum::<f64>() / n,
        ndcg_at_10: ms.iter().map(|m| m.ndcg_at_10).sum::<f64>() / n,
    }
}

pub fn load_golden(path: &Path) -> Result<Vec<GoldQuery>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read golden set {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}: bad golden entry", path.display(), i + 1))
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// lang → mode → metrics
    pub results: BTreeMap<String, BTreeMap<String, Metrics>>,
    pub failures: Vec<String>,
    /// Queries whose gold source was not in the hybrid top 10.
    pub misses: Vec<String>,
}

/// The golden questions as searched (normalized) and their query embeddings.
fn embed_queries(embedder: &dyn Embedder, golden: &[GoldQuery]) -> Result<(Vec<String>, Vec<Vec<f32>>)> {
    let texts: Vec<String> = golden.iter().map(|g| kotae_ingest::clean::normalize(&g.query)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = embedder.embed(&refs, InputKind::Query)?.vectors;
    Ok((texts, vectors))
}

pub fn run_retrieval_eval(
    cfg: &Config,
    index: &KnowledgeIndex,
    embedder: &dyn Embedder,
    golden: &[GoldQuery],
    thresholds: Option<&toml::Table>,
) -> Result<EvalReport> {
    let (texts, vectors) = embed_queries(embedder, golden)?;
    let mut per: BTreeMap<(String, String), Vec<Metrics>> = BTreeMap::new();
    let mut misses = Vec::new();
    for mode in [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid] {
        let mode_name = format!("{mode:?}").to_lowercase();
        for ((g, text), v) in golden.iter().zip(&texts).zip(&vectors) {
            let req = SearchRequest {
                text: text.clone(),
                vector: Some(v.clone()),
                mode,
                top_k: 30,
                groups: vec![],
                lang: None,
                fusion: cfg.search.fusion,
            };
            let mut ranked: Vec<String> = Vec::new();
            for h in index.search(&req)? {
                if !ranked.contains(&h.source) {
                    ranked.push(h.source);
                }
            }
            let m = score(&ranked, &g.gold);
            if mode == SearchMode::Hybrid && m.recall_at_10 == 0.0 {
                misses.push(format!("{} {:?}: got {:?}", g.id, g.query, ranked.iter().take(3).collect::<Vec<_>>()));
            }
            per.entry((g.lang.clone(), mode_name.clone())).or_default().push(m.clone());
            per.entry(("all".into(), mode_name.clone())).or_default().push(m);
        }
    }
    let mut results: BTreeMap<String, BTreeMap<String, Metrics>> = BTreeMap::new();
    for ((lang, mode), ms) in per {
        results.entry(lang).or_default().insert(mode, average(&ms));
    }
    let mut failures = Vec::new();
    if let Some(t) = thresholds {
        for (lang, modes) in t {
            if lang == HYBRID_RULE {
                continue;
            }
            for (mode, metrics) in modes.as_table().into_iter().flatten() {
                for (metric, min) in metrics.as_table().into_iter().flatten() {
                    let min = min.as_float().or_else(|| min.as_integer().map(|i| i as f64)).unwrap_or(0.0);
                    let got = results.get(lang).and_then(|m| m.get(mode)).and_then(|m| m.get(metric));
                    match got {
                        Some(v) if v + 1e-9 >= min => {}
                        Some(v) => failures.push(format!("{lang}/{mode}/{metric} = {v:.3} < {min:.3}")),
                        None => failures.push(format!("{lang}/{mode}/{metric}: no such result")),
                    }
                }
            }
        }
    }
    if let Some(rule) = thresholds.and_then(|t| t.get(HYBRID_RULE)) {
        failures.extend(hybrid_rule(&results, rule)?);
    }
    Ok(EvalReport { results, failures, misses })
}

/// `[hybrid_not_below] metrics = [...]` in the thresholds: in every language, hybrid must score
/// at least as well as bm25 and dense alone on these metrics (a fusion that lets the weaker
/// ranking drag the stronger one down fails).
const HYBRID_RULE: &str = "hybrid_not_below";

fn hybrid_rule(results: &BTreeMap<String, BTreeMap<String, Metrics>>, rule: &toml::Value) -> Result<Vec<String>> {
    let metrics: Vec<&str> = rule
        .get("metrics")
        .and_then(|m| m.as_array())
        .context("[hybrid_not_below] needs `metrics = [\"mrr_at_10\", ...]`")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let mut failures = Vec::new();
    for (lang, modes) in results.iter().filter(|(l, _)| *l != "all") {
        let Some(hybrid) = modes.get("hybrid") else { continue };
        for single in ["bm25", "dense"] {
            let Some(other) = modes.get(single) else { continue };
            for &m in &metrics {
                let (h, o) = (
                    hybrid.get(m).with_context(|| format!("[hybrid_not_below]: no metric {m}"))?,
                    other.get(m).unwrap_or(0.0),
                );
                if h + 1e-9 < o {
                    failures.push(format!("{lang}/hybrid/{m} = {h:.3} is below {single}'s {o:.3}"));
                }
            }
        }
    }
    Ok(failures)
}

/// Write, per golden query, both candidate lists before fusion (source, chunk, score; best
/// first) as JSON lines: the data to study or tune a fusion on without re-running the models.
pub fn dump_candidates(
    cfg: &Config,
    index: &KnowledgeIndex,
    embedder: &dyn Embedder,
    golden: &[GoldQuery],
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let (texts, vectors) = embed_queries(embedder, golden)?;
    for ((g, text), v) in golden.iter().zip(&texts).zip(vectors) {
        let req = SearchRequest {
            text: text.clone(),
            vector: Some(v),
            mode: SearchMode::Hybrid,
            top_k: 30,
            groups: vec![],
            lang: None,
            fusion: cfg.search.fusion,
        };
        let c = index.candidates(&req)?;
        let list = |l: &[(kotae_index::ChunkId, f32)]| -> Vec<serde_json::Value> {
            l.iter()
                .map(|(id, s)| {
                    let ch = &c.chunks[id];
                    serde_json::json!({"source": ch.source, "chunk_id": id.to_string(), "score": s, "text_hash": ch.text_hash})
                })
                .collect()
        };
        let line = serde_json::json!({
            "id": g.id, "lang": g.lang, "kind": g.kind, "query": g.query, "gold": g.gold,
            "bm25": list(&c.bm25), "dense": list(&c.dense), "bm25_best_by_translation": c.bm25_best_by_translation,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub fn print_report(r: &EvalReport) {
    println!(
        "{:<5} {:<7} {:>5} {:>6} {:>6} {:>6} {:>7} {:>8}",
        "lang", "mode", "n", "R@1", "R@5", "R@10", "MRR@10", "nDCG@10"
    );
    for (lang, modes) in &r.results {
        for (mode, m) in modes {
            println!(
                "{:<5} {:<7} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>7.3} {:>8.3}",
                lang, mode, m.queries, m.recall_at_1, m.recall_at_5, m.recall_at_10, m.mrr_at_10, m.ndcg_at_10
            );
        }
    }
    if !r.misses.is_empty() {
        println!("\nhybrid misses (gold not in top 10):");
        for m in &r.misses {
            println!("  {m}");
        }
    }
    for f in &r.failures {
        println!("FAIL {f}");
    }
}

/// One question of the out-of-scope set.
#[derive(Debug, Clone, Deserialize)]
pub struct ScopeQuery {
    pub id: String,
    pub lang: String,
    pub query: String,
    #[serde(default)]
    pub kind: String,
}

/// How well the answer gate separates answerable from unanswerable questions.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeRow {
    pub lang: String,
    /// The cosine threshold of a row of the cosine alone (NaN, null in JSON, for the gate).
    pub threshold: f32,
    /// Share of answerable questions that would get a generated answer.
    pub answered: f64,
    /// Share of answerable questions that would get a generated answer or a quote.
    pub kept: f64,
    /// Share of unanswerable questions that would not get a generated answer (declined or
    /// quoted with "no direct answer found").
    pub declined: f64,
}

#[derive(Debug, Serialize)]
pub struct ScopeReport {
    /// At the configured `answer.min_relevance`, per language and `all`.
    pub at_threshold: Vec<ScopeRow>,
    /// Per language, the threshold with the best balanced accuracy (for tuning).
    pub best: Vec<ScopeRow>,
    /// Out-of-scope questions that would be answered, and answerable ones that would be declined.
    pub errors: Vec<String>,
    pub failures: Vec<String>,
}

/// One question of the scope evaluation: what the gate read, and what it decided.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeItem {
    pub id: String,
    pub lang: String,
    pub query: String,
    /// The documents answer it (golden and answerable answer cases) or not.
    pub answerable: bool,
    /// The best chunk's cosine.
    pub relevance: f32,
    pub signals: kotae_answer::gate::GateSignals,
    /// The configured gate's decision (`AnswerConfig::decide`) and its probability.
    pub decision: kotae_answer::gate::Decision,
    pub probability: Option<f32>,
    /// A generated answer (not a quote or a decline).
    pub answered: bool,
}

/// Retrieves for every question as `Answerer::plan` does (a follow-up's search text carries
/// the previous question) and records the gate's signals and decision.
fn scope_items(
    cfg: &Config,
    index: &KnowledgeIndex,
    embedder: &dyn Embedder,
    qs: Vec<(String, String, String, bool)>,
) -> Result<Vec<ScopeItem>> {
    let answer = cfg.answer_config();
    let texts: Vec<String> = qs.iter().map(|q| kotae_ingest::clean::normalize(&q.2)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = if refs.is_empty() { Vec::new() } else { embedder.embed(&refs, InputKind::Query)?.vectors };
    qs.into_iter()
        .zip(texts.into_iter().zip(vectors))
        .map(|((id, lang, _, answerable), (text, v))| {
            let req = SearchRequest {
                text: text.clone(),
                vector: Some(v),
                mode: cfg.search.mode,
                top_k: answer.top_k,
                groups: vec![],
                lang: None,
                fusion: cfg.search.fusion,
            };
            let hits = index.search(&req)?;
            let relevance = hits.iter().filter_map(|h| h.dense_score).fold(0.0, f32::max);
            let signals = kotae_answer::gate::signals(&text, &hits, answer.min_relevance(&lang));
            let (decision, probability) = answer.decide(&lang, &text, &hits);
            let answered = decision == kotae_answer::gate::Decision::Answer;
            Ok(ScopeItem { id, lang, query: text, answerable, relevance, signals, decision, probability, answered })
        })
        .collect()
}

/// The scope evaluation's questions: the golden set (all answerable), the out-of-scope set
/// (none) and answer cases (each says), a follow-up's search text as `Answerer::plan` makes it.
pub fn scope_questions(
    golden: &[GoldQuery],
    out_of_scope: &[ScopeQuery],
    cases: &[crate::answer_eval::AnswerCase],
) -> Vec<(String, String, String, bool)> {
    let mut qs: Vec<(String, String, String, bool)> = Vec::new();
    qs.extend(golden.iter().map(|g| (g.id.clone(), g.lang.clone(), g.query.clone(), true)));
    qs.extend(out_of_scope.iter().map(|g| (g.id.clone(), g.lang.clone(), g.query.clone(), false)));
    qs.extend(cases.iter().map(|c| {
        let text = kotae_ingest::clean::normalize(c.question.trim());
        (c.id.clone(), c.lang.clone(), kotae_answer::prompt::search_query(&text, &c.history), c.answerable)
    }));
    qs
}

pub fn run_scope_eval(
    cfg: &Config,
    index: &KnowledgeIndex,
    embedder: &dyn Embedder,
    questions: Vec<(String, String, String, bool)>,
    thresholds: Option<&toml::Table>,
) -> Result<(ScopeReport, Vec<ScopeItem>)> {
    let items = scope_items(cfg, index, embedder, questions)?;
    use kotae_answer::gate::Decision;
    let row = |lang: &str, decide: &dyn Fn(&ScopeItem) -> Decision, t: f32| {
        let of = |a: bool| -> Vec<&ScopeItem> {
            items.iter().filter(|x| (lang == "all" || x.lang == lang) && x.answerable == a).collect()
        };
        let (i, o) = (of(true), of(false));
        let share = |v: &[&ScopeItem], f: &dyn Fn(Decision) -> bool| {
            v.iter().filter(|x| f(decide(x))).count() as f64 / v.len().max(1) as f64
        };
        ScopeRow {
            lang: lang.into(),
            threshold: t,
            answered: share(&i, &|d| d == Decision::Answer),
            kept: share(&i, &|d| d != Decision::Decline),
            declined: share(&o, &|d| d != Decision::Answer),
        }
    };
    let by_gate = |x: &ScopeItem| x.decision;
    // (NaN serializes as null in the JSON report: the gate has no single threshold.)
    let at_threshold: Vec<ScopeRow> = ["ja", "en", "all"].iter().map(|l| row(l, &by_gate, f32::NAN)).collect();
    let best = ["ja", "en"]
        .iter()
        .filter_map(|l| {
            (60..=95)
                .map(|c| {
                    let t = c as f32 / 100.0;
                    row(l, &|x: &ScopeItem| if x.relevance >= t { Decision::Answer } else { Decision::Decline }, t)
                })
                .max_by(|a, b| (a.answered + a.declined).total_cmp(&(b.answered + b.declined)))
        })
        .collect();
    let mut errors = Vec::new();
    for x in &items {
        if x.answered != x.answerable {
            let what = if x.answerable { "not answered, answerable" } else { "answered, out of scope" };
            let s = &x.signals;
            errors.push(format!(
                "{what} {} ({:?}, p {:.2}; cos {:.3}, coverage {:.2}, unit missing {}) {:?}",
                x.id,
                x.decision,
                x.probability.unwrap_or(f32::NAN),
                x.relevance,
                s.coverage,
                s.unit_missing,
                x.query
            ));
        }
    }
    let mut failures = Vec::new();
    if let Some(th) = thresholds {
        for r in &at_threshold {
            for (name, got) in [("answered", r.answered), ("kept", r.kept), ("declined", r.declined)] {
                if let Some(min) = th.get(&r.lang).and_then(|l| l.get(name)).and_then(|v| v.as_float()) {
                    if got + 1e-9 < min {
                        failures.push(format!("{}/{name} = {got:.3} < {min:.3}", r.lang));
                    }
                }
            }
        }
    }
    Ok((ScopeReport { at_threshold, best, errors, failures }, items))
}

/// The share of unanswerable development questions the fitted gate may still send to the
/// generator, and the share of answerable ones it must keep (answer or quote).
pub const GATE_GENERATED_UNANSWERABLE: f32 = 0.10;
pub const GATE_KEPT_ANSWERABLE: f32 = 0.97;

/// `[answer.gate]` fitted to `items` per language (`kotae eval answer-scope --fit`), as TOML:
/// the model's weights, then its two thresholds (see [`kotae_answer::gate::bands`]).
pub fn fit_gate(items: &[ScopeItem]) -> String {
    let mut out = String::from("[answer.gate]\nenabled = true\n");
    for lang in ["ja", "en"] {
        let ex: Vec<(kotae_answer::gate::GateSignals, bool)> =
            items.iter().filter(|x| x.lang == lang).map(|x| (x.signals, x.answerable)).collect();
        let mut w = kotae_answer::gate::fit(&ex, 1e-3);
        let probs: Vec<(f32, bool)> = ex.iter().map(|(s, y)| (w.probability(s), *y)).collect();
        kotae_answer::gate::bands(&mut w, &probs, GATE_GENERATED_UNANSWERABLE, GATE_KEPT_ANSWERABLE);
        let count = |d: kotae_answer::gate::Decision, y: bool| {
            probs.iter().filter(|(p, a)| *a == y && w.decide(*p) == d).count()
        };
        use kotae_answer::gate::Decision::*;
        out.push_str(&format!(
            "# {lang}: {} answerable: {} answered, {} quoted, {} declined; {} unanswerable: {} answered, {} quoted, {} declined\n",
            probs.iter().filter(|p| p.1).count(),
            count(Answer, true),
            count(Quote, true),
            count(Decline, true),
            probs.iter().filter(|p| !p.1).count(),
            count(Answer, false),
            count(Quote, false),
            count(Decline, false),
        ));
        out.push_str(&format!(
            "{lang} = {{ bias = {:.3}, dense_margin = {:.3}, coverage = {:.3}, unit_missing = {:.3}, answer_probability = {:.3}, quote_probability = {:.3} }}\n",
            w.bias, w.dense_margin, w.coverage, w.unit_missing, w.answer_probability, w.quote_probability
        ));
    }
    out
}

pub fn load_scope(path: &Path) -> Result<Vec<ScopeQuery>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: bad entry", path.display(), i + 1)))
        .collect()
}

pub fn print_scope(r: &ScopeReport) {
    println!("{:<5} {:>9} {:>9} {:>9} {:>9}", "lang", "gate", "answered", "kept", "declined");
    for x in &r.at_threshold {
        let t = if x.threshold.is_nan() { "as set".to_string() } else { format!("{:.2}", x.threshold) };
        println!("{:<5} {:>9} {:>9.3} {:>9.3} {:>9.3}", x.lang, t, x.answered, x.kept, x.declined);
    }
    println!("(answered: answerable questions given a generated answer; kept: answered or quoted; declined: unanswerable ones not given a generated answer)");
    for b in &r.best {
        println!(
            "best balanced cosine threshold alone for {}: {:.2} (answered {:.3}, declined {:.3})",
            b.lang, b.threshold, b.answered, b.declined
        );
    }
    for e in &r.errors {
        println!("  {e}");
    }
    for f in &r.failures {
        println!("FAIL {f}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_one_query() {
        let ranked: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = score(&ranked, &["b".to_string()]);
        assert_eq!((m.recall_at_1, m.recall_at_5, m.mrr_at_10), (0.0, 1.0, 0.5));
        assert!((m.ndcg_at_10 - 1.0 / 3f64.log2()).abs() < 1e-9);
        assert_eq!(score(&ranked, &["z".to_string()]).recall_at_10, 0.0);
    }
}
