//! `kotae eval all`: the nightly evaluation suite. One engine (the deployment's own index,
//! embedder, generator and guard, in process) runs every suite: retrieval, answers, the
//! support check, guardrails, the seed article's risks (language drift, stale vocabulary,
//! harmful outputs) and performance. Every metric goes into a SQLite history; the run is
//! compared with the suites' thresholds and with the last good run, and fails (exit 1) on a
//! regression with a summary of what fell and by how much. A self-contained HTML report
//! (inline SVG charts, no network needed) and a JSON file are written next to the history.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use kotae_answer::{AnswerKind, Question};
use kotae_index::{SearchMode, SearchRequest};
use kotae_models::{Embedder, InputKind};
use serde::{Deserialize, Serialize};

use crate::answer_eval::{self, AnswerReport};
use crate::config::Config;
use crate::eval;
use crate::guard_eval::{self, GuardReport};

/// What `kotae eval all` runs.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The folder with `retrieval/`, `answer/` and `guard/`.
    pub evals: PathBuf,
    /// Answer split (`dev`, `heldout` or `all`).
    pub answer_split: String,
    /// Only N answer questions per file (spread over it), and a smaller guard sample.
    pub limit: Option<usize>,
    /// Harmful prompts per language sent through the whole answer path.
    pub red_team: usize,
}

/// How a metric is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
    /// Reported, never a regression.
    Info,
}

/// One number of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    /// `suite.lang.name` (`answer.ja.correctness`).
    pub name: String,
    pub value: f64,
    pub better: Better,
    /// `rate` (0–1), `ms`, `per_s` or `count`.
    pub unit: String,
}

/// A metric that fell against the last good run.
#[derive(Debug, Clone, Serialize)]
pub struct Regression {
    pub name: String,
    pub before: f64,
    pub now: f64,
    pub tolerance: f64,
}

/// Domain and new terms as the generator's tokenizer splits them (the seed's stale
/// vocabulary risk: a term cut into many pieces is one the model barely knows).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VocabReport {
    pub generator: String,
    /// Per language: terms, mean pieces per term, mean pieces per character.
    pub domain: BTreeMap<String, (usize, f64, f64)>,
    /// New words (after most models' training data) and their pieces.
    pub new_terms: Vec<(String, usize)>,
    /// The most split domain terms.
    pub worst: Vec<(String, usize)>,
}

/// Harmful prompts sent through the whole answer path (guard, retrieval, generation, output
/// gate): how many ended in a generated answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedTeam {
    pub n: usize,
    pub refused: usize,
    /// Prompts that got a generated (or extractive) answer, with the answer.
    pub answered: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NightlyRun {
    pub id: Option<i64>,
    pub started: String,
    pub commit: String,
    pub generator: String,
    pub embedder: String,
    pub metrics: Vec<Metric>,
    /// Thresholds of the suites that were missed.
    pub threshold_failures: Vec<String>,
    pub regressions: Vec<Regression>,
    /// The run compared with (the last good one).
    pub baseline: Option<i64>,
    pub retrieval: Option<eval::EvalReport>,
    pub answers: Option<AnswerReport>,
    pub guard: Option<GuardReport>,
    pub support: Option<answer_eval::SupportAgreement>,
    pub vocab: VocabReport,
    pub red_team: BTreeMap<String, RedTeam>,
    pub search_p50_ms: f64,
    pub took_s: f64,
}

impl NightlyRun {
    pub fn passed(&self) -> bool {
        self.threshold_failures.is_empty() && self.regressions.is_empty()
    }

    fn push(&mut self, name: impl Into<String>, value: f64, better: Better, unit: &str) {
        if value.is_finite() {
            self.metrics.push(Metric { name: name.into(), value, better, unit: unit.into() });
        }
    }
}

/// New words of the kind the seed article warns about (its example: 新型コロナウイルス).
const NEW_TERMS: &[&str] = &[
    "新型コロナウイルス",
    "オミクロン株",
    "生成AI",
    "インボイス制度",
    "電子帳簿保存法",
    "マイナ保険証",
    "リスキリング",
    "ChatGPT",
    "passkey",
    "LLMOps",
];

fn thresholds(path: &Path) -> Result<Option<toml::Table>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?))
}

/// Terms of the documents: katakana runs, kanji compounds and product names (CamelCase or
/// capitals), the most frequent first.
fn domain_terms(texts: &[String], per_lang: usize) -> BTreeMap<String, Vec<String>> {
    let mut counts: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for t in texts {
        let mut cur = String::new();
        let mut class = 0u8;
        let flush = |cur: &mut String, class: u8, counts: &mut BTreeMap<String, (String, usize)>| {
            let n = cur.chars().count();
            let keep = match class {
                1 => n >= 4,
                2 => n >= 3,
                3 => n >= 4 && cur.chars().skip(1).any(|c| c.is_ascii_uppercase()),
                _ => false,
            };
            if keep {
                let lang = if class == 3 { "en" } else { "ja" };
                counts.entry(cur.clone()).or_insert((lang.into(), 0)).1 += 1;
            }
            cur.clear();
        };
        for c in t.chars() {
            let k = match c {
                '\u{30a1}'..='\u{30fa}' | 'ー' => 1,
                '\u{4e00}'..='\u{9fff}' => 2,
                c if c.is_ascii_alphanumeric() => 3,
                _ => 0,
            };
            if k != class {
                flush(&mut cur, class, &mut counts);
                class = k;
            }
            if k != 0 {
                cur.push(c);
            }
        }
        flush(&mut cur, class, &mut counts);
    }
    let mut by_lang: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for (term, (lang, n)) in counts {
        by_lang.entry(lang).or_default().push((term, n));
    }
    by_lang
        .into_iter()
        .map(|(lang, mut v)| {
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            (lang, v.into_iter().take(per_lang).map(|x| x.0).collect())
        })
        .collect()
}

fn vocab_report(engine: &kotae_server::Engine, texts: &[String]) -> Result<VocabReport> {
    let format = engine.worker.format();
    let mut r = VocabReport { generator: engine.worker.name().to_string(), ..Default::default() };
    let mut all: Vec<(String, usize)> = Vec::new();
    for (lang, terms) in domain_terms(texts, 100) {
        let mut pieces = 0usize;
        let mut chars = 0usize;
        for t in &terms {
            let n = format.count_tokens(t)?;
            pieces += n;
            chars += t.chars().count();
            all.push((t.clone(), n));
        }
        let n = terms.len().max(1) as f64;
        r.domain.insert(lang, (terms.len(), pieces as f64 / n, pieces as f64 / chars.max(1) as f64));
    }
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    r.worst = all.into_iter().take(10).collect();
    for t in NEW_TERMS {
        r.new_terms.push((t.to_string(), format.count_tokens(t)?));
    }
    Ok(r)
}

/// Harmful prompts of the guard's dev split (the first `n` per language) through the whole
/// answer path.
fn red_team(engine: &kotae_server::Engine, dir: &Path, n: usize) -> Result<BTreeMap<String, RedTeam>> {
    let mut out = BTreeMap::new();
    for lang in ["ja", "en"] {
        let cases = guard_eval::load_cases(&[dir.join(format!("{lang}.dev.jsonl"))])?;
        let mut r = RedTeam::default();
        for c in cases.iter().filter(|c| c.label == "harmful").take(n) {
            let q = Question { text: c.text.clone(), ..Default::default() };
            let a = match engine.answerer.ask(&q, &engine.worker, |_| {}) {
                Ok(a) => a,
                Err(kotae_answer::Error::BadQuestion(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            r.n += 1;
            if matches!(a.kind, AnswerKind::Blocked | AnswerKind::Declined) {
                r.refused += 1;
            } else {
                r.answered.push((c.id.clone(), a.text));
            }
        }
        out.insert(lang.to_string(), r);
    }
    Ok(out)
}

fn search_latency(engine: &kotae_server::Engine, cfg: &Config, queries: &[String]) -> Result<f64> {
    let Some(embedder) = &engine.embedder else { return Ok(0.0) };
    let mut ms = Vec::new();
    for q in queries {
        let t = Instant::now();
        let v = embedder.embed(&[q.as_str()], InputKind::Query)?.vectors.pop();
        engine.index.search(&SearchRequest {
            text: q.clone(),
            vector: v,
            mode: SearchMode::Hybrid,
            top_k: cfg.answer.top_k,
            groups: Vec::new(),
            lang: None,
            fusion: cfg.search.fusion,
        })?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms.get(ms.len() / 2).copied().unwrap_or(0.0))
}

/// Run every suite on `engine`.
pub fn run_suites(cfg: &Config, engine: &kotae_server::Engine, o: &SuiteOptions) -> Result<NightlyRun> {
    let t0 = Instant::now();
    let mut run = NightlyRun {
        generator: engine.worker.name().to_string(),
        embedder: engine.embedder_name.clone(),
        commit: std::env::var("KOTAE_COMMIT").unwrap_or_default(),
        ..Default::default()
    };
    let embedder: Option<&dyn Embedder> = engine.embedder.as_deref();

    // Retrieval on the golden set.
    let golden = eval::load_golden(&o.evals.join("retrieval/golden.jsonl"))?;
    if let Some(e) = embedder {
        let t = thresholds(&o.evals.join("retrieval/thresholds.toml"))?;
        let r = eval::run_retrieval_eval(cfg, &engine.index, e, &golden, t.as_ref())?;
        for (lang, modes) in &r.results {
            if let Some(m) = modes.get("hybrid") {
                run.push(format!("retrieval.{lang}.ndcg_at_10"), m.ndcg_at_10, Better::Higher, "rate");
                run.push(format!("retrieval.{lang}.recall_at_5"), m.recall_at_5, Better::Higher, "rate");
            }
        }
        run.threshold_failures.extend(r.failures.iter().map(|f| format!("retrieval: {f}")));
        run.retrieval = Some(r);
    }
    // The answer gate (generate, quote or decline) on the golden set, the out-of-scope set and
    // the answer set's dev split (the split it is fitted to: held-out questions stay out).
    let out_of_scope = o.evals.join("answer/out_of_scope.jsonl");
    if let (Some(e), true) = (embedder, out_of_scope.exists()) {
        let langs = vec!["ja".to_string(), "en".to_string()];
        let cases = answer_eval::load_cases(&answer_eval::split_files(&o.evals.join("answer"), "dev", &langs)?)?;
        let questions = eval::scope_questions(&golden, &eval::load_scope(&out_of_scope)?, &cases);
        let t = thresholds(&o.evals.join("answer/thresholds.toml"))?;
        let (r, _) = eval::run_scope_eval(cfg, &engine.index, e, questions, t.as_ref())?;
        for row in r.at_threshold.iter().filter(|r| r.lang != "all") {
            let p = |m: &str| format!("gate.{}.{m}", row.lang);
            run.push(p("answered"), row.answered, Better::Higher, "rate");
            run.push(p("kept"), row.kept, Better::Higher, "rate");
            run.push(p("declined"), row.declined, Better::Higher, "rate");
        }
        run.threshold_failures.extend(r.failures.iter().map(|f| format!("answer gate: {f}")));
    }
    let queries: Vec<String> = golden.iter().take(40).map(|g| kotae_ingest::clean::normalize(&g.query)).collect();
    run.search_p50_ms = search_latency(engine, cfg, &queries)?;
    run.push("perf.search_p50_ms", run.search_p50_ms, Better::Lower, "ms");

    // Answers.
    let langs = vec!["ja".to_string(), "en".to_string()];
    let files = answer_eval::split_files(&o.evals.join("answer"), &o.answer_split, &langs)?;
    let cases = answer_eval::load_limited(&files, o.limit)?;
    let mut a = answer_eval::run_answer_eval(engine, &cases, false)?;
    a.files = files.iter().map(|p| p.display().to_string()).collect();
    if let Some(t) = thresholds(&o.evals.join("answer/quality.toml"))? {
        answer_eval::check_thresholds(&mut a, &t);
    }
    for (lang, l) in &a.by_lang {
        let p = |m: &str| format!("answer.{lang}.{m}");
        run.push(p("correctness"), l.correctness, Better::Higher, "rate");
        run.push(p("all_facts"), l.all_facts, Better::Higher, "rate");
        run.push(p("wrong_answer_rate"), l.wrong_answer_rate, Better::Lower, "rate");
        run.push(p("refusal_accuracy"), l.refusal_accuracy, Better::Higher, "rate");
        run.push(p("citation_precision"), l.citation_precision, Better::Higher, "rate");
        run.push(p("citation_recall"), l.citation_recall, Better::Higher, "rate");
        run.push(p("faithfulness"), l.support, Better::Higher, "rate");
        run.push(p("extractive_rate"), l.extractive_rate, Better::Info, "rate");
        run.push(format!("risk.{lang}.language_match"), l.language_match, Better::Higher, "rate");
        run.push(format!("risk.{lang}.repetition_rate"), l.repetition_rate, Better::Lower, "rate");
        run.push(format!("perf.{lang}.first_token_p50_ms"), l.first_token_p50_ms, Better::Lower, "ms");
        run.push(format!("perf.{lang}.total_p50_ms"), l.total_p50_ms, Better::Lower, "ms");
        run.push(format!("perf.{lang}.decode_tokens_per_s"), l.decode_tokens_per_s, Better::Higher, "per_s");
    }
    run.threshold_failures.extend(a.failures.iter().map(|f| format!("answer: {f}")));
    run.answers = Some(a);
    // The domain's terms come from the whole knowledge base, not only from what a few eval
    // answers happened to show the model.
    let texts = engine.index.chunk_texts(20_000)?;

    // The support check against hand labels.
    let labels = o.evals.join("answer/support_labels.jsonl");
    if labels.exists() {
        let s = answer_eval::support_agreement(&answer_eval::load_support_labels(&labels)?, cfg.answer.min_support);
        run.push("support_check.agreement", s.agreement, Better::Higher, "rate");
        run.push("support_check.kappa", s.kappa, Better::Higher, "rate");
        run.support = Some(s);
    }

    // Guardrails.
    if let Some(guard) = engine.answerer.guard() {
        let files = guard_eval::split_files(&o.evals.join("guard"), "dev")?;
        let mut g = guard_eval::run_guard_eval(
            cfg,
            &files,
            guard.clone(),
            embedder,
            engine.answerer.lm_states().map(|r| r.as_ref()),
        )?;
        if let Some(mut t) = thresholds(&o.evals.join("guard/thresholds.toml"))? {
            // Latency is tracked as a trend here (perf.guard_input_p50_ms), not as a floor.
            t.remove("latency");
            guard_eval::check_thresholds(&mut g, &t);
        }
        for (lang, l) in &g.by_lang {
            run.push(format!("guard.{lang}.harmful_blocked"), l.harmful.rate, Better::Higher, "rate");
            run.push(format!("guard.{lang}.benign_blocked"), l.benign.rate, Better::Lower, "rate");
        }
        for (lang, r) in &g.ordinary {
            run.push(format!("guard.{lang}.ordinary_blocked"), r.rate, Better::Lower, "rate");
        }
        for (lang, r) in &g.outside {
            run.push(format!("guard.{lang}.outside_blocked"), r.rate, Better::Lower, "rate");
        }
        if let Some(h) = &g.harmbench {
            run.push("guard.harmbench_blocked", h.rate, Better::Higher, "rate");
        }
        run.push("perf.guard_input_p50_ms", g.input_check.p50_ms, Better::Lower, "ms");
        run.threshold_failures.extend(g.failures.iter().map(|f| format!("guard: {f}")));
        g.cases.clear();
        run.guard = Some(g);
        if o.red_team > 0 {
            let rt = red_team(engine, &o.evals.join("guard"), o.red_team)?;
            for (lang, r) in &rt {
                let answered = r.answered.len() as f64 / r.n.max(1) as f64;
                run.push(format!("risk.{lang}.harmful_answered"), answered, Better::Lower, "rate");
            }
            run.red_team = rt;
        }
    }

    // Stale vocabulary.
    let vocab = vocab_report(engine, &texts)?;
    for (lang, (_, per_term, _)) in &vocab.domain {
        run.push(format!("risk.{lang}.domain_pieces_per_term"), *per_term, Better::Info, "count");
    }
    let new = &vocab.new_terms;
    run.push(
        "risk.new_terms_pieces_per_term",
        new.iter().map(|x| x.1).sum::<usize>() as f64 / new.len().max(1) as f64,
        Better::Info,
        "count",
    );
    run.vocab = vocab;
    run.took_s = t0.elapsed().as_secs_f64();
    Ok(run)
}

/// How far a metric may move against the last good run before it is a regression: rates
/// 0.05 (three questions in sixty), times 30 %, throughput 30 %.
fn tolerance(m: &Metric, before: f64) -> f64 {
    match m.unit.as_str() {
        "rate" => 0.05,
        _ => 0.3 * before.abs(),
    }
}

/// The metrics of `run` that fell against `baseline`.
pub fn compare(run: &NightlyRun, baseline: &BTreeMap<String, f64>) -> Vec<Regression> {
    let mut out = Vec::new();
    for m in &run.metrics {
        let Some(&before) = baseline.get(&m.name) else { continue };
        let tol = tolerance(m, before);
        let fell = match m.better {
            Better::Higher => m.value < before - tol,
            Better::Lower => m.value > before + tol,
            Better::Info => false,
        };
        if fell {
            out.push(Regression { name: m.name.clone(), before, now: m.value, tolerance: tol });
        }
    }
    out
}

/// One stored value of a metric: run id, start time, whether the run passed, value.
pub type Point = (i64, String, bool, f64);
/// Every stored value of every metric, by metric name, oldest first.
pub type Series = BTreeMap<String, Vec<Point>>;

/// The history of runs, in SQLite.
pub struct History {
    conn: rusqlite::Connection,
}

impl History {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = rusqlite::Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                started TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
                commit_id TEXT NOT NULL,
                generator TEXT NOT NULL,
                embedder TEXT NOT NULL,
                passed INTEGER NOT NULL,
                summary TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS metrics (
                run_id INTEGER NOT NULL REFERENCES runs(id),
                name TEXT NOT NULL,
                value REAL NOT NULL,
                better TEXT NOT NULL,
                unit TEXT NOT NULL,
                PRIMARY KEY (run_id, name)
            );",
        )?;
        Ok(Self { conn })
    }

    /// The last run that passed, with its metrics.
    pub fn last_good(&self) -> Result<Option<(i64, BTreeMap<String, f64>)>> {
        let id: Option<i64> = self
            .conn
            .query_row("SELECT id FROM runs WHERE passed = 1 ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
        let Some(id) = id else { return Ok(None) };
        let mut st = self.conn.prepare("SELECT name, value FROM metrics WHERE run_id = ?1")?;
        let m = st
            .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
        Ok(Some((id, m)))
    }

    /// Store a run; returns its id and start time.
    pub fn record(&mut self, run: &NightlyRun) -> Result<(i64, String)> {
        let tx = self.conn.transaction()?;
        let summary =
            format!("{} threshold failures, {} regressions", run.threshold_failures.len(), run.regressions.len());
        tx.execute(
            "INSERT INTO runs (commit_id, generator, embedder, passed, summary) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![run.commit, run.generator, run.embedder, run.passed() as i64, summary],
        )?;
        let id = tx.last_insert_rowid();
        for m in &run.metrics {
            let better = serde_json::to_value(m.better)?.as_str().unwrap_or_default().to_string();
            tx.execute(
                "INSERT OR REPLACE INTO metrics (run_id, name, value, better, unit) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, m.name, m.value, better, m.unit],
            )?;
        }
        let started: String = tx.query_row("SELECT started FROM runs WHERE id = ?1", [id], |r| r.get(0))?;
        tx.commit()?;
        Ok((id, started))
    }

    /// Every stored value of every metric, oldest first: (run id, started, passed, value).
    pub fn series(&self) -> Result<Series> {
        let mut st = self.conn.prepare(
            "SELECT m.name, r.id, r.started, r.passed, m.value FROM metrics m JOIN runs r ON r.id = m.run_id ORDER BY r.id",
        )?;
        let mut out = Series::new();
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, f64>(4)?,
            ))
        })?;
        for row in rows {
            let (name, id, started, passed, value) = row?;
            out.entry(name).or_default().push((id, started, passed != 0, value));
        }
        Ok(out)
    }
}

/// Compare `run` with the last good run in `history`, store it, and write `report.html` and
/// `report.json` into `out`.
pub fn finish(run: &mut NightlyRun, history: &mut History, out: &Path) -> Result<()> {
    if let Some((id, baseline)) = history.last_good()? {
        run.baseline = Some(id);
        run.regressions = compare(run, &baseline);
    }
    let (id, started) = history.record(run)?;
    run.id = Some(id);
    run.started = started;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(run)?)?;
    let html = crate::report::render(run, &history.series()?);
    std::fs::write(out.join("report.html"), html)?;
    Ok(())
}

/// Run every suite on `engine`, compare with the history in `<data-dir>/evals/history.sqlite`
/// and write the report to `<data-dir>/evals/latest`: what `kotae eval all` does, and what the
/// server does for `POST /admin/api/eval/runs` (`opts`: `split`, `limit`, `red_team`).
pub fn evaluate_served(
    cfg: &Config,
    engine: &kotae_server::Engine,
    opts: &serde_json::Value,
) -> Result<serde_json::Value> {
    let o = SuiteOptions {
        evals: cfg.eval.dir.clone(),
        answer_split: opts["split"].as_str().unwrap_or("dev").to_string(),
        limit: opts["limit"].as_u64().map(|n| n as usize),
        red_team: opts["red_team"].as_u64().unwrap_or(10) as usize,
    };
    if !o.evals.join("retrieval").is_dir() {
        anyhow::bail!(
            "no evaluation suites in {}: set eval.dir (KOTAE_EVALS_DIR) to the folder with retrieval/, answer/ and guard/",
            o.evals.display()
        );
    }
    let mut run = run_suites(cfg, engine, &o)?;
    let dir = cfg.data_dir.join("evals");
    let mut h = History::open(&dir.join("history.sqlite"))?;
    let out = dir.join("latest");
    finish(&mut run, &mut h, &out)?;
    Ok(serde_json::json!({
        "passed": run.passed(),
        "run": run.id,
        "summary": summary(&run),
        "threshold_failures": run.threshold_failures,
        "regressions": run.regressions,
        "report": out.join("report.html").display().to_string(),
    }))
}

/// `kotae eval all --server URL`: ask a running `kotae serve` to run the suites on itself
/// (admin API key in `key`), wait for the job, and return its report (see `evaluate_served`).
pub fn evaluate_remote(
    url: &str,
    key: &str,
    opts: &serde_json::Value,
    poll: std::time::Duration,
) -> Result<serde_json::Value> {
    let base = url.trim_end_matches('/').to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let c = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        let r = c
            .post(format!("{base}/admin/api/eval/runs"))
            .bearer_auth(key)
            .json(opts)
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        if status != reqwest::StatusCode::ACCEPTED {
            anyhow::bail!(
                "{base} refused to start the evaluation ({status}): {}",
                body["error"]["message"].as_str().unwrap_or("no reason given")
            );
        }
        let job = body["job"].as_str().context("no job id in the answer")?.to_string();
        eprintln!("evaluation job {job} started on {base}");
        loop {
            tokio::time::sleep(poll).await;
            let r = match c.get(format!("{base}/admin/api/jobs/{job}")).bearer_auth(key).send().await {
                Ok(r) => r,
                // The server may restart under us; a restart marks the job failed, which we will see.
                Err(e) => {
                    eprintln!("cannot read job {job} ({e}); retrying");
                    continue;
                }
            };
            let j: serde_json::Value = r.json().await.unwrap_or_default();
            match j["status"].as_str() {
                Some("done") => return Ok(j["report"].clone()),
                Some("failed") => anyhow::bail!(
                    "evaluation job {job} failed: {}",
                    j["report"]["error"].as_str().unwrap_or("interrupted (the server stopped?)")
                ),
                _ => {}
            }
        }
    })
}

/// The summary printed at the end of a run.
pub fn summary(run: &NightlyRun) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "nightly evaluation run {} ({}, {}): {} metrics in {:.0} s",
        run.id.unwrap_or_default(),
        run.generator,
        run.embedder,
        run.metrics.len(),
        run.took_s
    );
    for m in &run.metrics {
        let v = if m.unit == "rate" { format!("{:.3}", m.value) } else { format!("{:.1}", m.value) };
        let _ = writeln!(s, "  {:<44} {v:>10} {}", m.name, if m.unit == "rate" { "" } else { &m.unit });
    }
    for f in &run.threshold_failures {
        let _ = writeln!(s, "BELOW THRESHOLD: {f}");
    }
    for r in &run.regressions {
        let _ = writeln!(
            s,
            "REGRESSION: {} fell from {:.3} to {:.3} (by {:.3}; tolerance {:.3}) against run {}",
            r.name,
            r.before,
            r.now,
            (r.now - r.before).abs(),
            r.tolerance,
            run.baseline.unwrap_or_default()
        );
    }
    if run.passed() {
        let _ = writeln!(s, "PASSED");
    } else {
        let _ = writeln!(
            s,
            "FAILED: {} below threshold, {} regressions",
            run.threshold_failures.len(),
            run.regressions.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: f64, better: Better, unit: &str) -> Metric {
        Metric { name: name.into(), value, better, unit: unit.into() }
    }

    #[test]
    fn history_compares_with_the_last_good_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::open(&dir.path().join("h.sqlite")).unwrap();
        assert!(h.last_good().unwrap().is_none());
        let mut good = NightlyRun { generator: "g".into(), ..Default::default() };
        good.metrics = vec![
            metric("answer.ja.correctness", 0.60, Better::Higher, "rate"),
            metric("perf.ja.first_token_p50_ms", 4000.0, Better::Lower, "ms"),
            metric("answer.ja.extractive_rate", 0.1, Better::Info, "rate"),
        ];
        finish(&mut good, &mut h, &dir.path().join("r1")).unwrap();
        assert!(good.passed());
        let mut worse = good.clone();
        worse.metrics = vec![
            metric("answer.ja.correctness", 0.50, Better::Higher, "rate"),
            metric("perf.ja.first_token_p50_ms", 5000.0, Better::Lower, "ms"),
            metric("answer.ja.extractive_rate", 0.9, Better::Info, "rate"),
        ];
        finish(&mut worse, &mut h, &dir.path().join("r2")).unwrap();
        let names: Vec<&str> = worse.regressions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["answer.ja.correctness"], "{:?}", worse.regressions);
        assert!(!worse.passed());
        assert!(summary(&worse).contains("REGRESSION: answer.ja.correctness fell from 0.600 to 0.500"));
        // A failed run is never the baseline: the next run is compared with the good one.
        let (id, base) = h.last_good().unwrap().unwrap();
        assert_eq!(id, good.id.unwrap());
        assert_eq!(base["answer.ja.correctness"], 0.60);
        let series = h.series().unwrap();
        assert_eq!(series["answer.ja.correctness"].len(), 2);
        let html = std::fs::read_to_string(dir.path().join("r2/report.html")).unwrap();
        assert!(html.contains("answer.ja.correctness") && html.contains("<svg"));
        assert!(!html.contains("http://") && !html.contains("https://"), "the report must not need the network");
    }

    #[test]
    fn domain_terms_are_katakana_kanji_and_product_names() {
        let t = domain_terms(
            &["CloudLedgerの請求書発行はセキュアリンク経由で。CloudLedger API。勤怠システム".to_string()],
            10,
        );
        assert_eq!(t["en"], vec!["CloudLedger"]);
        assert!(t["ja"].contains(&"請求書発行".to_string()) && t["ja"].contains(&"セキュアリンク".to_string()));
    }
}
