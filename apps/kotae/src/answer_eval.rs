//! `kotae eval answer`: the answers themselves, measured on the gold set in `evals/answer/`
//! (questions with the key facts a right answer must contain, and questions the documents do
//! not answer). Every question goes through the same path as `kotae ask` (guard, retrieval,
//! the answer gate, generation, the output gate).
//!
//! Metrics per language:
//! - correctness: share of key facts present in the answer (each fact has alternatives; text
//!   compared after NFKC, lower case, without spaces and thousands separators);
//! - wrong answers: answerable questions answered (not declined) with under half their facts;
//! - refusal accuracy: unanswerable questions declined (or answered with "the documents do not
//!   say");
//! - citation precision and recall against the gold sources (file level);
//! - faithfulness: share of answer sentences supported by the chunks the answer cites (all
//!   shown chunks when it cites none), by the lexical check of [`kotae_answer::ground`]. The
//!   product grounds against every shown chunk, so this is the stricter reading; how well the
//!   check agrees with hand labels is measured by `kotae eval support-check`;
//! - how answers came about: extractive quotes, and generated sentences grounding dropped;
//! - language match (the question's language and script, no Simplified-only Han characters in
//!   Japanese), repetition, and latency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use kotae_answer::{AnswerKind, Question};
use kotae_models::ChatMessage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
pub struct AnswerCase {
    pub id: String,
    pub lang: String,
    pub question: String,
    pub answerable: bool,
    #[serde(default)]
    pub facts: Vec<Vec<String>>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub history: Vec<ChatMessage>,
}

/// `evals/answer/{ja,en}.{split}.jsonl` for split `dev`, `heldout` or `all`.
pub fn split_files(dir: &Path, split: &str, langs: &[String]) -> Result<Vec<PathBuf>> {
    let splits: &[&str] = match split {
        "dev" => &["dev"],
        "heldout" => &["heldout"],
        "all" => &["dev", "heldout"],
        other => anyhow::bail!("--split {other}: use dev, heldout or all"),
    };
    let mut out = Vec::new();
    for lang in langs {
        for s in splits {
            let p = dir.join(format!("{lang}.{s}.jsonl"));
            anyhow::ensure!(p.exists(), "{} is missing", p.display());
            out.push(p);
        }
    }
    Ok(out)
}

pub fn load_cases(files: &[PathBuf]) -> Result<Vec<AnswerCase>> {
    let mut out = Vec::new();
    for p in files {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let c: AnswerCase =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not an answer case", p.display(), i + 1))?;
            out.push(c);
        }
    }
    Ok(out)
}

/// The cases of `files`, only `limit` per file when given, spread over each file (answerable
/// and unanswerable questions both).
pub fn load_limited(files: &[PathBuf], limit: Option<usize>) -> Result<Vec<AnswerCase>> {
    let mut cases = Vec::new();
    for f in files {
        let mut c = load_cases(std::slice::from_ref(f))?;
        if let Some(n) = limit.filter(|&n| n > 0 && n < c.len()) {
            let len = c.len();
            c = (0..n).map(|i| c[i * len / n].clone()).collect();
        }
        cases.extend(c);
    }
    Ok(cases)
}

/// Text as the fact check compares it: NFKC, lower case, no white space, no thousands
/// separators or full stops between digits.
pub fn fold(text: &str) -> String {
    let t: Vec<char> =
        kotae_ingest::clean::normalize(text).to_lowercase().chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = String::with_capacity(t.len());
    for (i, &c) in t.iter().enumerate() {
        let between_digits = i > 0 && i + 1 < t.len() && t[i - 1].is_ascii_digit() && t[i + 1].is_ascii_digit();
        if c == ',' && between_digits {
            continue;
        }
        out.push(c);
    }
    out
}

/// Which of `facts` (each a list of alternatives) the answer states.
pub fn facts_present(answer: &str, facts: &[Vec<String>]) -> Vec<bool> {
    let a = fold(answer);
    facts.iter().map(|alts| alts.iter().any(|alt| !alt.trim().is_empty() && a.contains(&fold(alt)))).collect()
}

/// Han characters used only in Simplified Chinese (their Japanese forms differ; characters that
/// Japanese also writes, such as 来, 学, 点, 画, 面, are left out): a Japanese answer that
/// contains one drifted into Chinese.
const SIMPLIFIED_ONLY: &str = "们这说对为东车长门问间见过还让话边产业经现进动种实样关开头么无务报处认设请应该热办选变给论员气带运闻转连达钱铁错银顾顺题风飞馆驾骑鱼鸡齐龙亿仅从优伤侧债储儿兴农冲决况净减凤刘则创删剧劝劳势协单卖卫历压县叹吗听呜响哑团园围图圆圣场坏块坚坛垄备复够夹夺奋妇娱宁审宪宫宽宾导层岁岛币帅师帐帮并广庆库庙废异弃张弹强归录彻忆忧怀态总悬惊惯愿戏战户扑执扩扫扬扰抚护拟拥择挂挡挤挥损捡换掳掷揽搀摄摆摇撑击杀权杨杰极构枪标栋栏树档梦检楼欢欧歼毁汇汉汤沟沪泽洁测济浏浓涛润涨渊渐满滚滤灭灵炼烂烟爱牵犹狮猎环琐电畅疗监盖盘矫矿码础确碍祸离积称稳穷窍竞笔简类粮紧红约级纪纯纲纳纵纸纹线组细织终绍结绕绘络继绩续维综绿缓编缩缴网罗罚罢职联聪肃肠肤肿胀胁脑脸腾舰艰艺节苏范茧荐药莱获营萧蓝虑虽蚀补袄观规视览觉计订讨训议讯记讲许访证评识诉译试诗诚诞询详语误诸课谁调谈谊谋谓谨谱贝负贡财责贤败货质贩贫购贯贵贷贸费贺资赋赏赔赖赛赞赠赢赵赶趋跃践轨轩轮软轰轻载较辅辆辈辉迁迈远违迟适递逻遗邓邮邻郑酝酱释鉴针钓钟钢钻铃铜铭铺链销锁锅锻镇镜闭闯闲闷闹阀阅队阳阴阵阶际陆陈险随隐难雾页顶项顿颁预领频颜额飘饭饮饰饱驱驶驻验骂骗骤鲁鲜鸟鸣鸭鹅齿个发时统词谢输";

/// Whether `answer` is in the question's language and script.
pub fn language_matches(answer: &str, lang: &str) -> bool {
    let kana = answer.chars().filter(|c| matches!(c, '\u{3040}'..='\u{30ff}')).count();
    let han = answer.chars().filter(|c| matches!(c, '\u{4e00}'..='\u{9fff}')).count();
    let latin = answer.chars().filter(|c| c.is_ascii_alphabetic()).count();
    if lang == "ja" {
        // Kana, or kanji alone (「特別休暇」), with no Simplified-only character.
        kana + han > 0 && !answer.chars().any(|c| SIMPLIFIED_ONLY.contains(c)) && latin < 2 * (kana + han)
    } else {
        // Japanese names of forms and systems may be quoted; the answer itself is English.
        latin > 0 && kana + han <= latin / 3
    }
}

/// Repetition: a sentence said twice, or a piece of ten characters three times in Japanese, or
/// in Latin script a run of five words twice (ten letters are two English words: "business
/// class" three times in an answer about flights is not repetition).
pub fn repetitive(answer: &str) -> bool {
    let sentences: Vec<String> =
        kotae_guard::stream::sentences(answer).iter().map(|s| fold(s)).filter(|s| s.chars().count() >= 8).collect();
    let mut seen = std::collections::HashSet::new();
    if sentences.iter().any(|s| !seen.insert(s.clone())) {
        return true;
    }
    let cjk = answer
        .chars()
        .filter(|c| ('\u{3040}'..='\u{30ff}').contains(c) || ('\u{4e00}'..='\u{9fff}').contains(c))
        .count();
    let latin = answer.chars().filter(char::is_ascii_alphabetic).count();
    if latin > 3 * cjk {
        let words: Vec<String> =
            answer.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        let mut runs = std::collections::HashSet::new();
        return words.windows(5).any(|w| !runs.insert(w.join(" ")));
    }
    let chars: Vec<char> = fold(answer).chars().filter(|c| !c.is_ascii_punctuation()).collect();
    let mut counts: std::collections::HashMap<&[char], usize> = std::collections::HashMap::new();
    chars.windows(10).any(|w| {
        let n = counts.entry(w).or_default();
        *n += 1;
        *n >= 3
    })
}

/// Whether a sentence of an answer is supported by `sources` (the product's grounding check,
/// [`kotae_answer::ground`]), at the default threshold.
pub fn supported(sentence: &str, sources: &[String], lang: &str) -> bool {
    kotae_answer::ground::Grounds::new(sources, "")
        .support(sentence, lang)
        .supported(kotae_answer::AnswerConfig::default().min_support)
}

/// Phrases of an answer that says the documents do not answer the question.
pub fn says_not_found(answer: &str) -> bool {
    let a = fold(answer);
    [
        "見つかりません",
        "見つかりませんでした",
        "記載がありません",
        "記載されていません",
        "記載はありません",
        "情報がありません",
        "わかりません",
        "分かりません",
        "お答えできません",
        "not found",
        "couldn'tfind",
        "couldnotfind",
        "can'tfind",
        "cannotfind",
        "donotcontain",
        "don'tcontain",
        "doesnotcontain",
        "doesn'tcontain",
        "donotmention",
        "doesnotmention",
        "doesn'tmention",
        "don'thaveinformation",
        "donothaveinformation",
        "noinformation",
        "notcovered",
        "notspecified",
        "notmentioned",
    ]
    .iter()
    .any(|p| a.contains(p))
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub id: String,
    pub lang: String,
    pub kind: String,
    pub question: String,
    pub answerable: bool,
    pub answer: String,
    /// generated, direct, declined or blocked.
    pub answered_as: String,
    pub declined: bool,
    pub facts: Vec<bool>,
    /// The answer gate's signal: the best retrieved chunk's cosine to the question.
    pub relevance: Option<f32>,
    /// The best shown sentence's score (`Answerer::evidence_score`), to calibrate the gate.
    pub evidence_score: Option<f32>,
    pub cited: Vec<String>,
    pub gold_sources: Vec<String>,
    pub shown: Vec<String>,
    /// The texts of the shown chunks, in the same order (for the report and for labelling).
    pub shown_texts: Vec<String>,
    pub sentences: usize,
    pub supported: usize,
    /// Generated sentences the grounding check left out.
    pub dropped: usize,
    pub language_ok: bool,
    pub repetitive: bool,
    pub first_token_ms: f64,
    pub total_ms: f64,
    pub completion_tokens: usize,
}

impl CaseResult {
    pub fn correctness(&self) -> f64 {
        if self.facts.is_empty() {
            return 0.0;
        }
        self.facts.iter().filter(|&&f| f).count() as f64 / self.facts.len() as f64
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LangReport {
    pub answerable: usize,
    pub unanswerable: usize,
    /// Mean share of key facts present, over answerable questions.
    pub correctness: f64,
    /// Answerable questions with every key fact.
    pub all_facts: f64,
    /// Answerable questions answered with under half their facts (declines not counted).
    pub wrong_answer_rate: f64,
    /// Answerable questions declined.
    pub declined_answerable: f64,
    /// Unanswerable questions declined.
    pub refusal_accuracy: f64,
    pub citation_precision: f64,
    pub citation_recall: f64,
    /// Answer sentences supported by the chunks they cite (lexical check).
    pub support: f64,
    /// Answers that are extractive quotes (the generator's text had nothing supported left).
    pub extractive_rate: f64,
    /// Generated sentences dropped by grounding, per answered question.
    pub dropped_per_answer: f64,
    pub language_match: f64,
    pub repetition_rate: f64,
    /// Answers with no words at all (empty, or a citation marker alone).
    pub empty_rate: f64,
    /// Direct answers (a past inquiry) that miss the facts: the wrong-question rate.
    pub wrong_direct: f64,
    pub direct_answers: usize,
    pub first_token_p50_ms: f64,
    pub total_p50_ms: f64,
    /// Generated tokens per second after the first (median over generated answers).
    pub decode_tokens_per_s: f64,
    pub by_kind: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AnswerReport {
    pub files: Vec<String>,
    pub generator: String,
    pub by_lang: BTreeMap<String, LangReport>,
    pub cases: Vec<CaseResult>,
    pub failures: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn share(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// Ask every case through the product's answer path.
pub fn run_answer_eval(engine: &kotae_server::Engine, cases: &[AnswerCase], progress: bool) -> Result<AnswerReport> {
    let mut report = AnswerReport { generator: engine.worker.name().to_string(), ..Default::default() };
    for (i, c) in cases.iter().enumerate() {
        let q = Question { text: c.question.clone(), history: c.history.clone(), groups: Vec::new() };
        // The plan again, for the texts shown to the model (retrieval is deterministic).
        let plan = engine.answerer.plan(&q)?;
        let shown_texts: BTreeMap<String, String> =
            plan.shown_sources().iter().map(|h| (h.chunk_id.clone(), h.text.clone())).collect();
        let t = Instant::now();
        let a = engine.answerer.ask(&q, &engine.worker, |_| {})?;
        let total_ms = t.elapsed().as_secs_f64() * 1e3;
        let declined = matches!(a.kind, AnswerKind::Declined) || says_not_found(&a.text);
        let cited_texts: Vec<String> = a
            .citations
            .iter()
            .map(|c| shown_texts.get(&c.chunk_id).cloned().unwrap_or_else(|| c.snippet.clone()))
            .collect();
        let sentences: Vec<&str> = kotae_guard::stream::sentences(&a.text)
            .into_iter()
            .filter(|s| s.chars().filter(|c| c.is_alphanumeric()).count() > 0)
            .collect();
        let support_texts = if cited_texts.is_empty() { shown_texts.values().cloned().collect() } else { cited_texts };
        let grounds = kotae_answer::ground::Grounds::new(&support_texts, &c.question);
        let min = engine.answerer.config().min_support;
        let supported_n = sentences.iter().filter(|s| grounds.support(s, &c.lang).supported(min)).count();
        let mut cited: Vec<String> = a.citations.iter().map(|c| c.source.clone()).collect();
        cited.dedup();
        let r = CaseResult {
            id: c.id.clone(),
            lang: c.lang.clone(),
            kind: c.kind.clone(),
            question: c.question.clone(),
            answerable: c.answerable,
            answered_as: format!("{:?}", a.kind).to_lowercase(),
            declined,
            facts: facts_present(&a.text, &c.facts),
            relevance: plan.relevance,
            // Over the sources a generated answer would be shown (also when the gate declined).
            evidence_score: engine.answerer.evidence_score(
                &c.question,
                &plan.sources[..plan.sources.len().min(engine.answerer.config().evidence_sources)],
            ),
            cited,
            gold_sources: c.sources.clone(),
            shown: plan.shown_sources().iter().map(|h| h.source.clone()).collect(),
            shown_texts: plan.shown_sources().iter().map(|h| h.text.clone()).collect(),
            sentences: sentences.len(),
            supported: supported_n,
            dropped: a.dropped_sentences,
            language_ok: declined || language_matches(&a.text, &c.lang),
            repetitive: repetitive(&a.text),
            first_token_ms: a.timings.first_token_ms,
            total_ms,
            completion_tokens: a.completion_tokens,
            answer: a.text.clone(),
        };
        if progress {
            eprintln!(
                "[{}/{}] {} {} facts {}/{} {:.0} ms",
                i + 1,
                cases.len(),
                r.id,
                r.answered_as,
                r.facts.iter().filter(|&&f| f).count(),
                r.facts.len(),
                r.total_ms
            );
        }
        report.cases.push(r);
    }
    summarize(&mut report);
    Ok(report)
}

pub fn summarize(report: &mut AnswerReport) {
    let mut langs: BTreeMap<String, Vec<&CaseResult>> = BTreeMap::new();
    for c in &report.cases {
        langs.entry(c.lang.clone()).or_default().push(c);
    }
    for (lang, cs) in langs {
        let ans: Vec<&&CaseResult> = cs.iter().filter(|c| c.answerable).collect();
        let una: Vec<&&CaseResult> = cs.iter().filter(|c| !c.answerable).collect();
        let answered: Vec<&&&CaseResult> = ans.iter().filter(|c| !c.declined).collect();
        let mut cited_total = 0;
        let mut cited_gold = 0;
        let mut recall = Vec::new();
        for c in &ans {
            cited_total += c.cited.len();
            cited_gold += c.cited.iter().filter(|s| c.gold_sources.contains(s)).count();
            if !c.declined && !c.gold_sources.is_empty() {
                recall.push(share(c.gold_sources.iter().filter(|g| c.cited.contains(g)).count(), c.gold_sources.len()));
            }
        }
        for c in &una {
            if !c.declined {
                cited_total += c.cited.len();
            }
        }
        let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for c in &ans {
            by_kind.entry(c.kind.clone()).or_default().push(c.correctness());
        }
        let direct: Vec<&&CaseResult> = ans.iter().filter(|c| c.answered_as == "direct").copied().collect();
        let lr = LangReport {
            answerable: ans.len(),
            unanswerable: una.len(),
            correctness: ans.iter().map(|c| c.correctness()).sum::<f64>() / ans.len().max(1) as f64,
            all_facts: share(ans.iter().filter(|c| c.facts.iter().all(|&f| f)).count(), ans.len()),
            wrong_answer_rate: share(answered.iter().filter(|c| c.correctness() < 0.5).count(), ans.len()),
            declined_answerable: share(ans.iter().filter(|c| c.declined).count(), ans.len()),
            refusal_accuracy: share(una.iter().filter(|c| c.declined).count(), una.len()),
            citation_precision: share(cited_gold, cited_total),
            citation_recall: recall.iter().sum::<f64>() / recall.len().max(1) as f64,
            support: share(
                cs.iter().filter(|c| !c.declined).map(|c| c.supported).sum(),
                cs.iter().filter(|c| !c.declined).map(|c| c.sentences).sum(),
            ),
            extractive_rate: share(cs.iter().filter(|c| c.answered_as == "extractive").count(), cs.len()),
            dropped_per_answer: cs.iter().filter(|c| !c.declined).map(|c| c.dropped).sum::<usize>() as f64
                / cs.iter().filter(|c| !c.declined).count().max(1) as f64,
            language_match: share(cs.iter().filter(|c| c.language_ok).count(), cs.len()),
            repetition_rate: share(cs.iter().filter(|c| c.repetitive).count(), cs.len()),
            empty_rate: share(cs.iter().filter(|c| c.sentences == 0).count(), cs.len()),
            wrong_direct: share(direct.iter().filter(|c| c.correctness() < 0.5).count(), direct.len()),
            direct_answers: direct.len(),
            first_token_p50_ms: median(cs.iter().map(|c| c.first_token_ms).filter(|&t| t > 0.0).collect()),
            total_p50_ms: median(cs.iter().map(|c| c.total_ms).collect()),
            decode_tokens_per_s: median(
                cs.iter()
                    .filter(|c| c.completion_tokens > 1 && c.total_ms > c.first_token_ms && c.first_token_ms > 0.0)
                    .map(|c| (c.completion_tokens - 1) as f64 / ((c.total_ms - c.first_token_ms) / 1e3))
                    .collect(),
            ),
            by_kind: by_kind.into_iter().map(|(k, v)| (k, v.iter().sum::<f64>() / v.len().max(1) as f64)).collect(),
        };
        report.by_lang.insert(lang, lr);
    }
}

/// Floors (and ceilings for rates that must stay low) per language from a TOML table:
/// `[ja] correctness = 0.5`, `wrong_answer_rate = 0.3` (a ceiling), ….
pub fn check_thresholds(report: &mut AnswerReport, t: &toml::Table) {
    const CEILINGS: &[&str] =
        &["wrong_answer_rate", "repetition_rate", "empty_rate", "wrong_direct", "declined_answerable"];
    for (lang, lr) in &report.by_lang {
        let Some(table) = t.get(lang).and_then(|v| v.as_table()) else { continue };
        let v = serde_json::to_value(lr).unwrap_or_default();
        for (metric, bound) in table {
            let (Some(bound), Some(value)) = (bound.as_float(), v[metric].as_f64()) else { continue };
            let ceiling = CEILINGS.contains(&metric.as_str());
            if (ceiling && value > bound) || (!ceiling && value < bound) {
                report.failures.push(format!(
                    "{lang} {metric} {value:.3} {} {bound:.3}",
                    if ceiling { "above the ceiling" } else { "below the floor" }
                ));
            }
        }
    }
}

pub fn print_report(r: &AnswerReport, verbose: bool) {
    println!("answers by {} on {}", r.generator, r.files.join(", "));
    for (lang, l) in &r.by_lang {
        println!(
            "[{lang}] {} answerable, {} unanswerable\n  correctness {:.3} (all facts {:.3}); wrong answers {:.3}; answerable declined {:.3}\n  refusal accuracy {:.3}; citations P {:.3} R {:.3}; faithfulness {:.3}\n  extractive {:.3}; dropped sentences per answer {:.2}\n  language match {:.3}; repetition {:.3}; empty {:.3}; direct answers {} (wrong {:.3})\n  first token p50 {:.0} ms, total p50 {:.0} ms",
            l.answerable,
            l.unanswerable,
            l.correctness,
            l.all_facts,
            l.wrong_answer_rate,
            l.declined_answerable,
            l.refusal_accuracy,
            l.citation_precision,
            l.citation_recall,
            l.support,
            l.extractive_rate,
            l.dropped_per_answer,
            l.language_match,
            l.repetition_rate,
            l.empty_rate,
            l.direct_answers,
            l.wrong_direct,
            l.first_token_p50_ms,
            l.total_p50_ms
        );
        let kinds: Vec<String> = l.by_kind.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!("  correctness by kind: {}", kinds.join(", "));
    }
    if verbose {
        for c in &r.cases {
            let bad = if c.answerable { c.correctness() < 1.0 } else { !c.declined };
            if bad || !c.language_ok || c.repetitive {
                println!(
                    "--- {} ({}; {}) facts {:?} cited {:?} gold {:?}\n  Q: {}\n  A: {}",
                    c.id,
                    c.kind,
                    c.answered_as,
                    c.facts,
                    c.cited,
                    c.gold_sources,
                    c.question,
                    c.answer.replace('\n', " ")
                );
            }
        }
    }
    for f in &r.failures {
        println!("FAILED: {f}");
    }
}

/// One answer sentence labelled by hand: does the source text support it?
#[derive(Debug, Clone, Deserialize)]
pub struct SupportLabel {
    pub id: String,
    pub lang: String,
    #[serde(default)]
    pub question: String,
    pub sentence: String,
    /// The texts the sentence may draw on (what the model was shown).
    pub sources: Vec<String>,
    /// `supported` or `unsupported`.
    pub label: String,
}

/// How the automatic support check agrees with hand labels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SupportAgreement {
    pub n: usize,
    pub labelled_unsupported: usize,
    /// Share of sentences where the check and the label agree.
    pub agreement: f64,
    /// Cohen's kappa (agreement beyond chance).
    pub kappa: f64,
    /// Of the sentences the check calls unsupported, the share labelled so (what grounding
    /// drops wrongly is 1 minus this).
    pub unsupported_precision: f64,
    /// Of the sentences labelled unsupported, the share the check catches.
    pub unsupported_recall: f64,
    pub by_lang: BTreeMap<String, (usize, f64)>,
    /// Ids where the check and the label disagree.
    pub disagreements: Vec<String>,
}

pub fn load_support_labels(path: &Path) -> Result<Vec<SupportLabel>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let l: SupportLabel =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a support label", path.display(), i + 1))?;
        anyhow::ensure!(
            l.label == "supported" || l.label == "unsupported",
            "{}:{}: label must be supported or unsupported, not {:?}",
            path.display(),
            i + 1,
            l.label
        );
        out.push(l);
    }
    Ok(out)
}

/// The product's check (at `min_support`) against the hand labels.
pub fn support_agreement(labels: &[SupportLabel], min_support: f32) -> SupportAgreement {
    let (mut tp, mut fp, mut fneg, mut tn) = (0usize, 0usize, 0usize, 0usize);
    let mut by_lang: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for l in labels {
        let check_unsupported = !kotae_answer::ground::Grounds::new(&l.sources, &l.question)
            .support(&l.sentence, &l.lang)
            .supported(min_support);
        let label_unsupported = l.label == "unsupported";
        match (check_unsupported, label_unsupported) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => tn += 1,
        }
        let e = by_lang.entry(l.lang.clone()).or_default();
        e.0 += 1;
        if check_unsupported == label_unsupported {
            e.1 += 1;
        } else {
            disagreements.push(l.id.clone());
        }
    }
    let n = labels.len();
    let agree = share(tp + tn, n);
    // Chance agreement from both raters' marginals.
    let p_check = share(tp + fp, n);
    let p_label = share(tp + fneg, n);
    let chance = p_check * p_label + (1.0 - p_check) * (1.0 - p_label);
    SupportAgreement {
        n,
        labelled_unsupported: tp + fneg,
        agreement: agree,
        kappa: if chance < 1.0 { (agree - chance) / (1.0 - chance) } else { 0.0 },
        unsupported_precision: share(tp, tp + fp),
        unsupported_recall: share(tp, tp + fneg),
        by_lang: by_lang.into_iter().map(|(k, (n, a))| (k, (n, share(a, n)))).collect(),
        disagreements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_match_across_width_case_spaces_and_separators() {
        let facts = vec![vec!["2,000 yen".to_string()], vec!["3営業日前".to_string()], vec!["Galaxy Hall".into()]];
        assert_eq!(
            facts_present("ＧＡＬＡＸＹ hall holds 60; ¥2000 yen per day, ３ 営業日前まで", &facts),
            vec![true, true, true]
        );
        assert_eq!(facts_present("60 people", &facts), vec![false, false, false]);
    }

    #[test]
    fn language_and_script() {
        assert!(language_matches("申請は3営業日前までに勤怠システムから行います[1]。", "ja"));
        assert!(!language_matches("申请需要在3个工作日前提交。", "ja"));
        assert!(language_matches("特別休暇", "ja"));
        assert!(language_matches(
            "会議室のモニターの画面に映らないときは、入力を「HDMI2」に切り替えてください。来月から点検します。",
            "ja"
        ));
        assert!(!language_matches("", "ja"));
        assert!(!language_matches("Please apply three business days ahead.", "ja"));
        assert!(language_matches("Apply in the 勤怠システム three business days ahead [1].", "en"));
        assert!(!language_matches("有給休暇は3営業日前までに申請してください。", "en"));
    }

    #[test]
    fn repetition_and_support() {
        assert!(repetitive("産休は休暇です。これは大切です。産休は休暇です。"));
        assert!(!repetitive("Apply three business days ahead [1]. Your manager approves it."));
        assert!(!repetitive(
            "Business class is allowed on long flights. Business class needs approval. Book business class early."
        ));
        assert!(repetitive(
            "Scan the QR code shown on screen with the app. Then scan the QR code shown on screen again."
        ));
        let src = vec!["有給休暇は3営業日前までに勤怠システムから申請してください。".to_string()];
        assert!(supported("有給休暇は3営業日前までに勤怠システムで申請します[1]。", &src, "ja"));
        assert!(!supported("有給休暇は10営業日前までに申請します。", &src, "ja"));
        let en = vec!["The Galaxy Hall seats 60 people and has a projector.".to_string()];
        assert!(supported("The Galaxy Hall seats 60 people [1].", &en, "en"));
        assert!(!supported("The Galaxy Hall holds 80 people.", &en, "en"));
        assert!(!supported("Parking is free for visitors on weekends.", &en, "en"));
    }

    #[test]
    fn declines_are_recognised() {
        assert!(says_not_found("申し訳ありませんが、資料には記載がありません。"));
        assert!(says_not_found("The documents do not mention a parking fee."));
        assert!(!says_not_found("Apply three business days ahead."));
    }
}
