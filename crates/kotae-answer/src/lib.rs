//! Retrieval-augmented answering: question → retrieval (hybrid, filtered by the asker's access
//! groups) → a decision (answer from a past inquiry, decline, or generate) → a prompt that
//! numbers its sources within a token budget → the generated text with the citations it used.
//!
//! It owns prompts, relevance decisions and citation parsing. It does not know HTTP or
//! storage of conversations, and it never runs a model itself except through the
//! [`GeneratorWorker`] it is given (or the embedder, for the query).

pub mod cite;
pub mod evidence;
pub mod gate;
pub mod ground;
pub mod prompt;
pub mod search;
pub mod slot;
pub mod unit;

use std::sync::Arc;
use std::time::Instant;

pub use ground::GroundingMode;
use kotae_guard::{Context, Direction, Gate, GateEvent, Guard, SentenceOutcome, Verdict};
use kotae_index::{Fusion, Hit, KnowledgeIndex, SearchMode, SearchRequest};
use kotae_models::{
    ChatMessage, Embedder, FinishReason, GenEvent, Generation, GeneratorWorker, InputKind, PromptFormat, Role,
    SamplingParams,
};
pub use search::{search, SearchQuery, SearchResult};
use serde::{Deserialize, Serialize};

/// Errors of answering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The question is empty or unusable (the user's fault).
    #[error("{0}")]
    BadQuestion(String),
    #[error(transparent)]
    Index(#[from] kotae_index::Error),
    #[error(transparent)]
    Model(#[from] kotae_models::Error),
    /// The generator could not take the job (queue full: retry later).
    #[error(transparent)]
    Busy(#[from] kotae_models::SubmitError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Settings of answering; the app fills them from `[answer]` in `kotae.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnswerConfig {
    /// Chunks retrieved as candidate sources.
    pub top_k: usize,
    /// Token budget for the numbered sources in the prompt (the generator's tokens).
    pub context_tokens: usize,
    /// Decline when the best source's cosine similarity to a Japanese question is below this
    /// (multilingual-e5-small scale; evaluated by `kotae eval answer-scope`).
    pub min_relevance_ja: f32,
    /// The same for English (and other) questions: English questions often match Japanese
    /// documents, and cross-lingual similarities run lower.
    pub min_relevance_en: f32,
    /// Return a past inquiry's answer directly when its question's similarity to the new
    /// question reaches this (both embedded as queries; above 1.0 disables).
    pub direct_answer_similarity: f32,
    /// Earlier messages of the conversation kept in the prompt.
    pub history_messages: usize,
    /// Where to send people when Kotae cannot answer, per language.
    pub helpdesk_ja: String,
    pub helpdesk_en: String,
    /// What happens to a generated sentence the sources shown to the model do not support
    /// (`drop`, `flag` or `off`).
    pub grounding: GroundingMode,
    /// The share of a sentence's content that must be found in the sources (numbers must
    /// all be found).
    pub min_support: f32,
    /// Sentences of the shown sources quoted under a generated answer (the manual's own words,
    /// cited) when the answer does not already say them; 0 turns the quote off. The extractive
    /// answer quotes as many.
    pub evidence_sentences: usize,
    /// How many of the shown sources (best first) the quoted sentences may come from (lower
    /// ranks count a little less).
    pub evidence_sources: usize,
    /// Rank the sentences to quote by meaning (the embedder's similarity to the question,
    /// shared terms breaking near-ties) instead of by shared terms alone.
    pub evidence_by_meaning: bool,
    /// Languages the generator writes well (empty: every language). A question in another
    /// language gets the extractive answer, the manual's own words, never the model's (an
    /// English-only model writing Japanese is the seed article's language-bias risk).
    #[serde(default)]
    pub generator_languages: Vec<String>,
    /// The answer gate's model (`[answer.gate]`): answer or decline from several signals of
    /// what retrieval found; disabled, the cosine thresholds above decide alone.
    pub gate: gate::GateConfig,
    pub sampling: SamplingParams,
}

impl AnswerConfig {
    /// Whether the generator may write an answer in `lang`.
    pub fn generates(&self, lang: &str) -> bool {
        self.generator_languages.is_empty() || self.generator_languages.iter().any(|l| l == lang)
    }

    /// What to do with `question` (in `lang`, normalized) given the retrieved `hits` (best
    /// first): generate, quote or decline, and the gate's probability that they answer it
    /// (when its model decided). Without dense scores (BM25 alone), any hit answers.
    pub fn decide(&self, lang: &str, question: &str, hits: &[Hit]) -> (gate::Decision, Option<f32>) {
        let Some(best) = hits.iter().filter_map(|h| h.dense_score).reduce(f32::max) else {
            return (if hits.is_empty() { gate::Decision::Decline } else { gate::Decision::Answer }, None);
        };
        if !self.gate.enabled {
            let d = if best >= self.min_relevance(lang) { gate::Decision::Answer } else { gate::Decision::Decline };
            return (d, None);
        }
        let s = gate::signals(question, hits, self.min_relevance(lang));
        let w = self.gate.weights(lang);
        let p = w.probability(&s);
        (w.decide(p), Some(p))
    }

    /// The relevance threshold for a question in `lang`.
    pub fn min_relevance(&self, lang: &str) -> f32 {
        if lang == "ja" {
            self.min_relevance_ja
        } else {
            self.min_relevance_en
        }
    }
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            top_k: 5,
            context_tokens: 1200,
            min_relevance_ja: 0.85,
            min_relevance_en: 0.83,
            direct_answer_similarity: 0.95,
            history_messages: 4,
            helpdesk_ja: "担当のヘルプデスク".into(),
            helpdesk_en: "the help desk".into(),
            grounding: GroundingMode::Drop,
            min_support: 0.6,
            evidence_sentences: 2,
            evidence_sources: 5,
            evidence_by_meaning: true,
            generator_languages: Vec::new(),
            gate: gate::GateConfig::default(),
            // 16 Japanese characters is a clause; Latin-script answers get three times as many
            // (a Japanese character carries about what three Latin letters do).
            sampling: SamplingParams { max_tokens: 256, no_repeat_chars: 16, ..Default::default() },
        }
    }
}

/// A question as the asker sent it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Question {
    pub text: String,
    /// Earlier turns of the conversation, oldest first.
    #[serde(default)]
    pub history: Vec<ChatMessage>,
    /// The asker's access groups (`public` is always included).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// How an answer came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// Written by the generator from the sources.
    Generated,
    /// A past inquiry that matches the question closely, returned as it was answered.
    Direct,
    /// Nothing relevant enough was found: Kotae says so and points to the help desk.
    Declined,
    /// The guardrails stopped the question or the answer: the text is the refusal.
    Blocked,
    /// Nothing the generator wrote was usable (no words, or no sentence the sources support):
    /// "no direct answer found", and the closest sentences of the sources, quoted and cited.
    Extractive,
}

/// Why the guardrails stopped an answer (never the offending text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardNote {
    /// `input` (the question) or `output` (a sentence of the answer).
    pub direction: String,
    pub category: String,
    pub rule: String,
}

/// A source the answer relies on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// The number the answer uses, `[n]`.
    pub n: usize,
    pub source: String,
    pub section: String,
    pub span: (u64, u64),
    pub snippet: String,
    pub chunk_id: String,
    /// `manual` or `inquiry`.
    pub kind: String,
    /// `true` when the answer cites it with `[n]`; `false` when inferred from overlap
    /// (the model answered from it without writing the marker).
    pub marked: bool,
    /// The document's own address on the intranet (its front matter or canonical link, or an
    /// `[[ingest.links]]` rule), when known: an absolute http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub embed_ms: f64,
    pub retrieve_ms: f64,
    pub prompt_ms: f64,
    pub queue_ms: f64,
    /// From the request to the first generated token.
    pub first_token_ms: f64,
    pub generate_ms: f64,
    pub total_ms: f64,
    /// How long the output gate held the first text back (its sentence being written and
    /// checked): the delay the guardrails add to the first visible token.
    #[serde(default)]
    pub guard_hold_ms: f64,
    /// The guard's second classifier: the generator's first layers on the question.
    #[serde(default)]
    pub guard_probe_ms: f64,
}

/// The finished answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub lang: String,
    pub kind: AnswerKind,
    pub citations: Vec<Citation>,
    /// The query sent to retrieval (the question, with context from the conversation).
    pub search_query: String,
    /// Best cosine similarity among the retrieved sources.
    pub relevance: Option<f32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    pub timings: Timings,
    /// Set when the guardrails stopped the question or the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardNote>,
    /// Generated sentences left out because the sources do not support them (grounding
    /// `drop`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_sentences: usize,
    /// Sentences shown but not supported by the sources (grounding `flag`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Answer {
    /// What the answer adds to the text a stream already showed (`released`): the quoted
    /// evidence under a generated answer, or the whole extractive answer (or decline) that
    /// replaced it.
    pub fn unsent(&self, released: &str) -> Option<String> {
        if matches!(self.kind, AnswerKind::Extractive | AnswerKind::Declined) {
            return Some(self.text.clone());
        }
        self.text.strip_prefix(released.trim_start()).filter(|t| !t.is_empty()).map(str::to_string)
    }

    /// An answer that needed no generation (declined, or a past inquiry).
    fn without_generation(
        text: String,
        lang: &str,
        kind: AnswerKind,
        citations: Vec<Citation>,
        search_query: &str,
        relevance: Option<f32>,
    ) -> Self {
        Answer {
            text,
            lang: lang.into(),
            kind,
            citations,
            search_query: search_query.into(),
            relevance,
            prompt_tokens: 0,
            completion_tokens: 0,
            finish_reason: None,
            timings: Timings::default(),
            guard: None,
            dropped_sentences: 0,
            unsupported: Vec::new(),
        }
    }
}

/// What to do with a question, decided before any generation.
pub enum Action {
    /// The answer is known already (declined, or a past inquiry).
    Done(Box<Answer>),
    /// Run this prompt through the generator.
    Generate { prompt: String, params: SamplingParams },
}

/// Retrieval done, prompt built.
pub struct Plan {
    pub action: Action,
    pub lang: String,
    pub search_query: String,
    pub sources: Vec<Hit>,
    pub relevance: Option<f32>,
    pub timings: Timings,
    /// The guard's decisions on the question that are worth recording (warn, redact, block).
    pub verdicts: Vec<Verdict>,
    /// The question with personal data redacted, when the guard redacted it: what may be
    /// stored and logged instead of what was sent.
    pub redacted_question: Option<String>,
    /// Texts of the sources shown to the model, and the rules it must not disclose: what
    /// the output gate checks answers against.
    shown: Vec<String>,
    secret: String,
    /// The question as answered (redacted when the guard redacted it).
    question: String,
    grounding: GroundingMode,
    min_support: f32,
    started: Instant,
}

impl Plan {
    /// The output gate for this plan's generation, sentence by sentence: the guard (when
    /// there is one), then grounding against the sources shown to the model. Text passes as
    /// it comes when both are off.
    pub fn gate(&self, guard: Option<Arc<dyn Guard>>) -> Gate {
        let gate = Gate::new(guard, &self.lang, self.shown.clone(), vec![self.secret.clone()]);
        if self.grounding == GroundingMode::Off || !matches!(self.action, Action::Generate { .. }) {
            return gate;
        }
        let grounds = ground::Grounds::new(&self.shown, &self.question);
        let (lang, mode, min) = (self.lang.clone(), self.grounding, self.min_support);
        gate.with_check(Box::new(move |sentence, _| {
            if grounds.support(sentence, &lang).supported(min) {
                SentenceOutcome::Pass
            } else if mode == GroundingMode::Flag {
                SentenceOutcome::Flag
            } else {
                tracing::debug!(sentence, "unsupported sentence dropped");
                SentenceOutcome::Drop
            }
        }))
    }

    /// The sources shown to the model (the first of the retrieved ones that fitted the
    /// prompt's budget): what citations may point at.
    pub fn shown_sources(&self) -> &[Hit] {
        &self.sources[..self.shown.len().min(self.sources.len())]
    }
}

/// Retrieval settings shared with `kotae search`.
#[derive(Debug, Clone, Copy)]
pub struct RetrievalSettings {
    pub mode: SearchMode,
    pub fusion: Fusion,
}

/// Answers questions from one knowledge base with one generator.
pub struct Answerer {
    index: Arc<KnowledgeIndex>,
    embedder: Option<Arc<dyn Embedder>>,
    format: Arc<PromptFormat>,
    retrieval: RetrievalSettings,
    cfg: AnswerConfig,
    guard: Option<Arc<dyn Guard>>,
    /// The generator's states for the guard's second classifier, when it has one.
    lm_states: Option<Arc<kotae_models::states::LmStates>>,
}

impl Answerer {
    pub fn new(
        index: Arc<KnowledgeIndex>,
        embedder: Option<Arc<dyn Embedder>>,
        format: Arc<PromptFormat>,
        retrieval: RetrievalSettings,
        cfg: AnswerConfig,
    ) -> Self {
        Self { index, embedder, format, retrieval, cfg, guard: None, lm_states: None }
    }

    /// The reader of the generator's states that the guard's second classifier needs.
    pub fn with_lm_states(mut self, states: Option<Arc<kotae_models::states::LmStates>>) -> Self {
        self.lm_states = states;
        self
    }

    /// Check questions and answers with `guard`.
    pub fn with_guard(mut self, guard: Arc<dyn Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn guard(&self) -> Option<&Arc<dyn Guard>> {
        self.guard.as_ref()
    }

    /// The reader of the generator's states for the guard's second classifier.
    pub fn lm_states(&self) -> Option<&Arc<kotae_models::states::LmStates>> {
        self.lm_states.as_ref()
    }

    pub fn config(&self) -> &AnswerConfig {
        &self.cfg
    }

    /// The answer that replaces a blocked question or answer: the policy's refusal.
    pub fn blocked(&self, lang: &str, search_query: &str, verdict: &Verdict) -> Answer {
        let category = verdict.category().unwrap_or(kotae_guard::Category::Unsafe);
        let text = match &self.guard {
            Some(g) => g.policy().refusal(lang, verdict.direction, category).to_string(),
            None => String::new(),
        };
        let mut a = Answer::without_generation(text, lang, AnswerKind::Blocked, Vec::new(), search_query, None);
        a.guard = Some(GuardNote {
            direction: verdict.direction.as_str().into(),
            category: category.as_str().into(),
            rule: verdict.decisive().map(|f| f.rule.clone()).unwrap_or_default(),
        });
        a
    }

    /// An answer stopped by the output gate: the refusal replaces everything generated.
    pub fn complete_blocked(&self, plan: Plan, verdict: &Verdict, completion_tokens: usize) -> Answer {
        let mut a = self.blocked(&plan.lang, &plan.search_query, verdict);
        a.relevance = plan.relevance;
        a.completion_tokens = completion_tokens;
        a.finish_reason = Some(FinishReason::Cancelled);
        let mut timings = plan.timings;
        timings.total_ms = ms(plan.started);
        a.timings = timings;
        a
    }

    /// Retrieve and decide (blocking: embeds the query and searches).
    #[tracing::instrument(skip_all, fields(groups = ?q.groups))]
    pub fn plan(&self, q: &Question) -> Result<Plan> {
        let started = Instant::now();
        let text = kotae_ingest::clean::normalize(q.text.trim());
        if text.is_empty() {
            return Err(Error::BadQuestion("the question is empty: write what you want to know".into()));
        }
        let lang = if kotae_ingest::clean::detect_lang(&text) == "ja" { "ja" } else { "en" }.to_string();
        let mut timings = Timings::default();
        // The guard reads the question first; its vector (for the safety head) is the one
        // retrieval uses when the question stands alone.
        let mut verdicts = Vec::new();
        let mut redacted_question = None;
        let mut text = text;
        let mut early_vector: Option<Vec<f32>> = None;
        if let Some(guard) = &self.guard {
            let mut states = None;
            if guard.wants_vector() {
                if let Some(e) = &self.embedder {
                    let t = Instant::now();
                    let (mut v, s) = kotae_guard::encode(guard.as_ref(), e.as_ref(), &[text.as_str()])?;
                    early_vector = v.pop();
                    states = s.and_then(|mut s| s.pop());
                    timings.embed_ms = ms(t);
                }
            }
            let mut lm_state = None;
            if let (Some(id), Some(r)) = (guard.lm_probe(), &self.lm_states) {
                if r.id() == id {
                    let t = Instant::now();
                    // Without it the first classifier and the rules still decide: a failed
                    // model run is logged, not turned into a failed question.
                    match r.features(&text) {
                        Ok(f) => lm_state = Some(f),
                        Err(e) => tracing::warn!(error = %e, "the guard's second classifier could not run"),
                    }
                    timings.guard_probe_ms = ms(t);
                }
            }
            let v = guard.check(
                Direction::Input,
                &text,
                &Context {
                    lang: Some(&lang),
                    vector: early_vector.as_deref(),
                    states: states.as_ref(),
                    lm_state: lm_state.as_deref(),
                    ..Default::default()
                },
            );
            tracing::debug!(action = v.action.as_str(), us = v.took_us, "input guard");
            // Earlier turns count too: a client of the OpenAI API sends the whole conversation,
            // and a request split over two messages is still one request.
            let mut v = v;
            if !v.blocked() {
                for m in &q.history {
                    // Earlier answers (which an API client may have written itself) are read
                    // for planted instructions; earlier questions like this one.
                    let mut h = if m.role == Role::Assistant {
                        let mut h = guard.check(Direction::Document, &m.content, &Context::default());
                        if !h.findings.is_empty() {
                            h.action = kotae_guard::Action::Block;
                            h.findings.iter_mut().for_each(|f| f.action = kotae_guard::Action::Block);
                        }
                        h
                    } else {
                        let mut h = guard.check(Direction::Input, &m.content, &Context::default());
                        // A rule that gave way to a sure classifier when this turn was asked
                        // gives way now too: the turn is read by the classifier again (only
                        // when a rule blocks it, so an ordinary conversation costs nothing).
                        if h.blocked() && guard.wants_vector() {
                            if let Some(e) = &self.embedder {
                                let (mut hv, hs) =
                                    kotae_guard::encode(guard.as_ref(), e.as_ref(), &[m.content.as_str()])?;
                                let (hv, hs) = (hv.pop(), hs.and_then(|mut s| s.pop()));
                                let ctx = Context { vector: hv.as_deref(), states: hs.as_ref(), ..Default::default() };
                                h = guard.check(Direction::Input, &m.content, &ctx);
                            }
                        }
                        h
                    };
                    if h.blocked() {
                        h.redacted = v.redacted.clone();
                        v = h;
                        break;
                    }
                }
            }
            if v.blocked() {
                let answer = self.blocked(&lang, "", &v);
                let redacted_question = v.redacted.clone();
                verdicts.push(v);
                return Ok(Plan {
                    action: Action::Done(Box::new(answer)),
                    lang,
                    search_query: String::new(),
                    sources: Vec::new(),
                    relevance: None,
                    timings,
                    verdicts,
                    redacted_question,
                    shown: Vec::new(),
                    secret: String::new(),
                    question: String::new(),
                    grounding: GroundingMode::Off,
                    min_support: 0.0,
                    started,
                });
            }
            if let Some(r) = &v.redacted {
                text = r.clone();
                redacted_question = Some(r.clone());
                early_vector = None;
            }
            if v.action != kotae_guard::Action::Allow {
                verdicts.push(v);
            }
        }
        let search_query = prompt::search_query(&text, &q.history);

        let retrieve_span = tracing::info_span!("retrieve", lang = %lang).entered();
        let t = Instant::now();
        let (mode, vector) = match (&self.embedder, self.retrieval.mode) {
            (Some(_), m) if m != SearchMode::Bm25 && early_vector.is_some() && search_query == text => {
                (m, early_vector.clone())
            }
            (Some(e), m) if m != SearchMode::Bm25 => {
                (m, e.embed(&[search_query.as_str()], InputKind::Query)?.vectors.pop())
            }
            _ => (SearchMode::Bm25, None),
        };
        timings.embed_ms += ms(t);
        let question_vector = if search_query == text { vector.clone() } else { None };
        let t = Instant::now();
        let sources = self.index.search(&SearchRequest {
            text: search_query.clone(),
            vector,
            mode,
            top_k: self.cfg.top_k,
            groups: q.groups.clone(),
            lang: None,
            fusion: self.retrieval.fusion,
        })?;
        timings.retrieve_ms = ms(t);
        let relevance = sources.iter().filter_map(|h| h.dense_score).reduce(f32::max);
        tracing::debug!(n = sources.len(), ?relevance, "retrieved");
        drop(retrieve_span);

        let _prompt_span = tracing::info_span!("prompt").entered();
        let t = Instant::now();
        let (decision, gate_probability) = self.cfg.decide(&lang, &search_query, &sources);
        tracing::debug!(?decision, ?gate_probability, "answer gate");
        let mut shown_texts = Vec::new();
        let action = if decision == gate::Decision::Decline {
            Action::Done(Box::new(self.declined(&lang, &search_query, relevance)))
        } else if let Some(direct) =
            self.direct_answer(&text, question_vector.as_deref(), &sources, &lang, &search_query, relevance)?
        {
            // A past answer is output too: it passes the same check as generated text.
            let blocked = self.guard.as_ref().map(|g| {
                let shown = vec![direct.citations.first().map(|c| c.snippet.clone()).unwrap_or_default()];
                g.check(
                    Direction::Output,
                    &direct.text,
                    &Context { lang: Some(&lang), sources: &shown, ..Default::default() },
                )
            });
            match blocked {
                Some(v) if v.blocked() => {
                    let a = self.blocked(&lang, &search_query, &v);
                    verdicts.push(v);
                    Action::Done(Box::new(a))
                }
                _ => Action::Done(Box::new(direct)),
            }
        } else if decision == gate::Decision::Quote || !self.cfg.generates(&lang) {
            // Unsure whether the documents answer it, or the generator does not write this
            // language: the closest passages, quoted, instead of a generated answer.
            let quoted = self.without_instructions(&sources);
            let (_, shown) = prompt::messages(&self.format, &self.cfg, &lang, &text, &q.history, &quoted)?;
            let shown = &quoted[..shown.min(quoted.len())];
            let answer = if decision == gate::Decision::Quote {
                self.extractive(&lang, &text, shown).map(|(text, citations)| {
                    Answer::without_generation(text, &lang, AnswerKind::Extractive, citations, &search_query, relevance)
                })
            } else {
                let lead = if lang == "ja" {
                    "資料の該当箇所は次のとおりです: "
                } else {
                    "The documents say: "
                };
                self.quote(&lang, &text, shown, true).or_else(|| self.quote(&lang, &text, shown, false)).map(
                    |(chosen, citations)| {
                        Answer::without_generation(
                            format!("{lead}{}", evidence::quoted(&lang, chosen.iter())),
                            &lang,
                            AnswerKind::Extractive,
                            citations,
                            &search_query,
                            relevance,
                        )
                    },
                )
            };
            Action::Done(Box::new(answer.unwrap_or_else(|| self.declined(&lang, &search_query, relevance))))
        } else {
            let quoted = self.without_instructions(&sources);
            let (messages, shown) = prompt::messages(&self.format, &self.cfg, &lang, &text, &q.history, &quoted)?;
            shown_texts = sources.iter().take(shown).map(|h| h.text.clone()).collect();
            let prompt = self.format.render(&messages)?;
            let mut params = SamplingParams {
                japanese_kanji_only: lang == "ja" || self.cfg.sampling.japanese_kanji_only,
                // Sources are shown as `[n] path — section`; an answer that opens by copying
                // one would end on that header at once, leaving nothing.
                no_leading_bracket: true,
                no_repeat_chars: if lang == "ja" {
                    self.cfg.sampling.no_repeat_chars
                } else {
                    self.cfg.sampling.no_repeat_chars * 3
                },
                ..self.cfg.sampling.clone()
            };
            params.max_tokens = prompt::fitted_max_tokens(&text, params.max_tokens);
            params.stop.extend(prompt::source_headers(&sources, shown));
            Action::Generate { prompt, params }
        };
        timings.prompt_ms = ms(t);
        let secret = prompt::system_rules(&lang, &self.cfg);
        Ok(Plan {
            action,
            lang,
            search_query,
            sources,
            relevance,
            timings,
            verdicts,
            redacted_question,
            shown: shown_texts,
            secret,
            question: text,
            grounding: self.cfg.grounding,
            min_support: self.cfg.min_support,
            started,
        })
    }

    /// The sources with every sentence that addresses an AI ("ignore previous instructions")
    /// replaced by a note: documents are data, and an instruction planted in a manual or an
    /// inquiry log must not reach the model as one.
    fn without_instructions(&self, sources: &[Hit]) -> Vec<Hit> {
        let Some(guard) = &self.guard else { return sources.to_vec() };
        sources
            .iter()
            .map(|h| {
                let ctx = Context::default();
                if !guard.check(Direction::Document, &h.text, &ctx).findings.is_empty() {
                    let kept: String = kotae_guard::stream::sentences(&h.text)
                        .into_iter()
                        .map(|s| {
                            if guard.check(Direction::Document, s, &ctx).findings.is_empty() {
                                s.to_string()
                            } else {
                                "[instruction removed] ".to_string()
                            }
                        })
                        .collect();
                    tracing::warn!(source = %h.source, "instructions in a source were removed from the prompt");
                    return Hit { text: kept, ..h.clone() };
                }
                h.clone()
            })
            .collect()
    }

    fn declined(&self, lang: &str, search_query: &str, relevance: Option<f32>) -> Answer {
        let text = decline_message(&self.cfg, lang);
        Answer::without_generation(text, lang, AnswerKind::Declined, Vec::new(), search_query, relevance)
    }

    /// The best sentences of the shown sources for the question, quoted with their citations
    /// (numbered as in the prompt). `None` when nothing shares a term with the question or
    /// the output guard would stop the quote.
    fn quote(
        &self,
        lang: &str,
        question: &str,
        shown: &[Hit],
        same_language: bool,
    ) -> Option<(Vec<evidence::Evidence>, Vec<Citation>)> {
        let k = self.cfg.evidence_sentences.max(1);
        let only = same_language.then_some(lang);
        let n = self.cfg.evidence_sources.max(1);
        let chosen = match (&self.embedder, self.cfg.evidence_by_meaning) {
            // By meaning, every language is read: a sentence in the answer's language is
            // ahead by a margin, not the only candidate (an English question answered only by
            // a Japanese inquiry log gets that log quoted, not an unrelated English line).
            (Some(e), true) => evidence::best_sentences_by(question, shown, n, k, None, |texts| {
                let q = e.embed(&[question], InputKind::Query).ok()?.vectors.pop()?;
                let vs = e.embed(texts, InputKind::Passage).ok()?.vectors;
                Some(
                    vs.iter()
                        .zip(texts)
                        .map(|(v, t)| {
                            let cos: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
                            let own = kotae_ingest::clean::detect_lang(t) == lang;
                            cos + if same_language && own { SAME_LANGUAGE_MARGIN } else { 0.0 }
                        })
                        .collect(),
                )
            }),
            _ => evidence::best_sentences(question, shown, n, k, only),
        };
        if chosen.is_empty() {
            return None;
        }
        if let Some(g) = &self.guard {
            let texts: Vec<String> = chosen.iter().map(|e| shown[e.source].text.clone()).collect();
            // The manual's own words, not the model's: no language check (an English answer
            // may quote a Japanese manual), the other checks as for any output.
            let ctx = Context { lang: None, sources: &texts, ..Default::default() };
            let joined: String = chosen.iter().map(|e| e.sentence.as_str()).collect::<Vec<_>>().join(" ");
            if g.check(Direction::Output, &joined, &ctx).blocked() {
                return None;
            }
        }
        let mut citations: Vec<Citation> = Vec::new();
        for e in &chosen {
            if !citations.iter().any(|c| c.n == e.source + 1) {
                citations.push(cite::citation(e.source + 1, &shown[e.source], true));
            }
        }
        Some((chosen, citations))
    }

    /// How closely the best sentence of the shown sources (either language) answers the
    /// question: its cosine to the question by the embedder, with the small lexical and rank
    /// terms of the evidence ranking. A finer relevance signal than the best chunk's cosine
    /// (`kotae eval answer` reports both, to calibrate the answer gate). `None` without an
    /// embedder or a candidate sentence.
    pub fn evidence_score(&self, question: &str, shown: &[Hit]) -> Option<f32> {
        let e = self.embedder.as_ref()?;
        let best = evidence::best_sentences_by(question, shown, shown.len().max(1), 1, None, |texts| {
            let q = e.embed(&[question], InputKind::Query).ok()?.vectors.pop()?;
            let vs = e.embed(texts, InputKind::Passage).ok()?.vectors;
            Some(vs.iter().map(|v| v.iter().zip(&q).map(|(a, b)| a * b).sum()).collect())
        });
        best.first().map(|b| b.score)
    }

    /// The extractive answer, when nothing generated was supported by the sources: Kotae says
    /// it found no direct answer (it cannot tell whether the documents hold one) and quotes the
    /// closest sentences of the shown sources, cited.
    fn extractive(&self, lang: &str, question: &str, shown: &[Hit]) -> Option<(String, Vec<Citation>)> {
        // In the answer's language when a shown source is; else the closest text at all.
        let (chosen, citations) =
            self.quote(lang, question, shown, true).or_else(|| self.quote(lang, question, shown, false))?;
        let quoted = evidence::quoted(lang, chosen.iter());
        let text = if lang == "ja" {
            format!("資料に直接の答えは見つかりませんでした。関連する記述は次のとおりです: {quoted}")
        } else {
            format!("I could not find a direct answer in the documents. The closest passages say: {quoted}")
        };
        Some((text, citations))
    }

    /// The evidence under a generated answer: the sentences it rests on, in the manual's own
    /// words, unless the answer already says them.
    fn with_evidence(
        &self,
        lang: &str,
        question: &str,
        shown: &[Hit],
        text: &mut String,
        citations: &mut Vec<Citation>,
    ) {
        if self.cfg.evidence_sentences == 0 || evidence::declines(text) {
            return;
        }
        let Some((chosen, cited)) = self.quote(lang, question, shown, true) else { return };
        let fresh: Vec<&evidence::Evidence> =
            chosen.iter().filter(|e| !evidence::covered_by(text, &e.sentence)).collect();
        if fresh.is_empty() {
            return;
        }
        text.push_str(if lang == "ja" { "\n\n資料より: " } else { "\n\nFrom the documents: " });
        text.push_str(&evidence::quoted(lang, fresh.iter().copied()));
        for c in cited {
            if fresh.iter().any(|e| e.source + 1 == c.n) && !citations.iter().any(|x| x.chunk_id == c.chunk_id) {
                citations.push(c);
            }
        }
    }

    /// A past inquiry in the question's language whose question means the same as this one
    /// (question-to-question similarity, both embedded as queries), answered as it was before.
    /// Only for standalone questions: a follow-up has no `question_vector`.
    fn direct_answer(
        &self,
        question: &str,
        question_vector: Option<&[f32]>,
        sources: &[Hit],
        lang: &str,
        search_query: &str,
        relevance: Option<f32>,
    ) -> Result<Option<Answer>> {
        let (Some(qv), Some(embedder)) = (question_vector, &self.embedder) else {
            return Ok(None);
        };
        if self.cfg.direct_answer_similarity > 1.0 {
            return Ok(None);
        }
        let candidates: Vec<(&Hit, &str, &str)> = sources
            .iter()
            .take(3)
            .filter(|h| h.kind == "inquiry" && h.lang == lang)
            .filter_map(|h| {
                let (q, a) = h.text.strip_prefix("Q: ")?.split_once("\nA: ")?;
                Some((h, q.trim(), a.trim()))
            })
            // Same topic is not same question: the past one must ask for the same thing.
            .filter(|(_, q, _)| slot::same_slot(question, q))
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let questions: Vec<&str> = candidates.iter().map(|c| c.1).collect();
        let vs = embedder.embed(&questions, InputKind::Query)?.vectors;
        let best = candidates
            .iter()
            .zip(vs)
            .map(|(c, v)| (c, v.iter().zip(qv).map(|(a, b)| a * b).sum::<f32>()))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some(((hit, _, answer), sim)) = best else {
            return Ok(None);
        };
        tracing::debug!(sim, source = %hit.source, "closest past inquiry");
        if sim < self.cfg.direct_answer_similarity {
            return Ok(None);
        }
        let citations = vec![cite::citation(1, hit, true)];
        Ok(Some(Answer::without_generation(
            format!("{answer} [1]"),
            lang,
            AnswerKind::Direct,
            citations,
            search_query,
            relevance,
        )))
    }

    /// Turn a plan and (if it needed one) its generation into the answer.
    pub fn complete(&self, plan: Plan, generated: Option<(Generation, f64)>) -> Answer {
        let mut timings = plan.timings;
        let shown = &plan.sources[..plan.shown.len().min(plan.sources.len())];
        let mut answer = match (plan.action, generated) {
            (Action::Done(a), _) => *a,
            (Action::Generate { .. }, None) => self.declined(&plan.lang, &plan.search_query, plan.relevance),
            (Action::Generate { .. }, Some((g, queued_ms))) => {
                // What the stream showed, from its first visible character.
                let raw = g.text.trim_start().to_string();
                let mut text = raw.trim_end().to_string();
                // Citations point at what the model was shown, not at everything retrieved.
                let mut citations = cite::used_citations(&text, shown);
                let mut kind = AnswerKind::Generated;
                if !has_words(&text) {
                    // Nothing released with words: the quote, or else a decline (never an
                    // empty answer).
                    match self.extractive(&plan.lang, &plan.question, shown) {
                        Some((quote, cited)) => (text, citations, kind) = (quote, cited, AnswerKind::Extractive),
                        None => {
                            let d = self.declined(&plan.lang, &plan.search_query, plan.relevance);
                            (text, citations, kind) = (d.text, d.citations, AnswerKind::Declined);
                        }
                    }
                } else {
                    let before = text.len();
                    self.with_evidence(&plan.lang, &plan.question, shown, &mut text, &mut citations);
                    if text.len() > before {
                        // The quote follows what the stream showed, exactly: streamed text and
                        // the answer's text stay the same.
                        text = format!("{raw}{}", &text[before..]);
                    }
                }
                timings.queue_ms = queued_ms;
                timings.generate_ms = g.prompt_ms + g.decode_ms;
                timings.first_token_ms =
                    timings.embed_ms + timings.retrieve_ms + timings.prompt_ms + queued_ms + g.first_token_ms;
                Answer {
                    text,
                    lang: plan.lang.clone(),
                    kind,
                    citations,
                    search_query: plan.search_query.clone(),
                    relevance: plan.relevance,
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.completion_tokens,
                    finish_reason: Some(g.finish_reason),
                    timings: Timings::default(),
                    guard: None,
                    dropped_sentences: 0,
                    unsupported: Vec::new(),
                }
            }
        };
        timings.total_ms = ms(plan.started);
        answer.timings = timings;
        answer
    }

    /// A generation that went through the plan's output gate, as the answer: the text the
    /// gate released (unsupported sentences left out under grounding `drop`, listed under
    /// `flag`), and the extractive quote when nothing with words is left.
    pub fn complete_gated(&self, plan: Plan, mut g: Generation, queued_ms: f64, gate: &Gate) -> Answer {
        tracing::debug!(generated = %g.text, released = %gate.released(), "output gate");
        g.text = gate.released().to_string();
        let mut a = self.complete(plan, Some((g, queued_ms)));
        a.dropped_sentences = gate.dropped;
        a.unsupported = gate.flagged.clone();
        a.timings.guard_hold_ms = gate.first_hold_ms.unwrap_or(0.0);
        a
    }

    /// Plan, generate and complete in one blocking call (the CLI and tests). With a guard,
    /// the text reaches `on_text` only after its sentence passed the output gate.
    pub fn ask(
        &self,
        q: &Question,
        worker: &GeneratorWorker,
        mut on_text: impl FnMut(&str) + Send + 'static,
    ) -> Result<Answer> {
        let plan = self.plan(q)?;
        let (prompt, params) = match &plan.action {
            Action::Done(a) => {
                if a.guard.is_none() {
                    on_text(&a.text);
                }
                return Ok(self.complete(plan, None));
            }
            Action::Generate { prompt, params } => (prompt.clone(), params.clone()),
        };
        let (tx, rx) = std::sync::mpsc::channel::<GenEvent>();
        worker.submit(prompt, params, Box::new(move |ev| tx.send(ev).is_ok()))?;
        let mut gate = plan.gate(self.guard.clone());
        let mut queued = 0.0;
        let mut tokens = 0;
        loop {
            let ev = rx.recv().map_err(|_| kotae_models::Error::Generation("the worker stopped".into()))?;
            let events = match ev {
                GenEvent::Started { queued_ms } => {
                    queued = queued_ms;
                    continue;
                }
                GenEvent::Text(t) => {
                    tokens += 1;
                    gate.push(&t)
                }
                GenEvent::Done(r) => {
                    let g = r?;
                    if g.finish_reason == FinishReason::Length {
                        gate.cut();
                    }
                    for ev in gate.finish() {
                        match ev {
                            GateEvent::Release(t) => on_text(&t),
                            GateEvent::Blocked(v) => return Ok(self.complete_blocked(plan, &v, g.completion_tokens)),
                        }
                    }
                    let a = self.complete_gated(plan, g, queued, &gate);
                    if let Some(tail) = a.unsent(gate.released()) {
                        on_text(&tail);
                    }
                    return Ok(a);
                }
            };
            for ev in events {
                match ev {
                    GateEvent::Release(t) => on_text(&t),
                    // Dropping `rx` ends the generation at its next token.
                    GateEvent::Blocked(v) => return Ok(self.complete_blocked(plan, &v, tokens)),
                }
            }
        }
    }
}

/// How much closer to the question (cosine) a sentence in another language must be than one in
/// the answer's language to be quoted instead: the embedder's similarities across languages
/// run a little lower than within one.
const SAME_LANGUAGE_MARGIN: f32 = 0.02;

/// What Kotae says when the documents do not answer a question (also what fine-tuning teaches
/// a model to say then).
pub fn decline_message(cfg: &AnswerConfig, lang: &str) -> String {
    if lang == "ja" {
        format!(
            "申し訳ありません。社内の資料には、このご質問に答えられる情報が見つかりませんでした。{}にお問い合わせください。",
            cfg.helpdesk_ja
        )
    } else {
        format!(
            "Sorry, I could not find anything in the company's documents that answers this. Please contact {}.",
            cfg.helpdesk_en
        )
    }
}

/// Role helper for callers building histories.
pub fn message(role: Role, text: &str) -> ChatMessage {
    ChatMessage::new(role, text)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Whether a text has any word besides citation markers.
fn has_words(text: &str) -> bool {
    let mut depth = 0;
    text.chars().any(|c| {
        match c {
            '[' => depth += 1,
            ']' => depth = (depth - 1).max(0),
            c if depth == 0 && c.is_alphanumeric() => return true,
            _ => {}
        }
        false
    })
}

#[cfg(test)]
mod extractive_tests {
    use super::has_words;

    #[test]
    fn a_citation_marker_alone_is_no_answer() {
        assert!(!has_words(""));
        assert!(!has_words("[1]"));
        assert!(!has_words(" [1][2]。"));
        assert!(has_words("特別休暇 [1]"));
        assert!(has_words("Apply 3 days ahead [1]."));
    }
}
