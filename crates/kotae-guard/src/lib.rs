//! Guardrails: harmful or discriminatory expressions, prompt injection and personal data,
//! checked on the way in (questions), on the way out (answers, sentence by sentence while they
//! stream), on the way into training data, and in ingested documents.
//!
//! Layers, cheapest first: normalization that undoes obfuscation ([`normalize`]), the
//! company's own terms and the rules and lexicons of each category ([`rules`], [`lexicon`]),
//! personal-data detectors (from `kotae-ingest`'s cleaner), and a classifier head on the
//! frozen embedder's vector ([`kotae_models::Head`], trained by `kotae finetune head --task
//! safety`). A [`Policy`] maps each category and direction to an action.
//!
//! It decides; it does not know HTTP, storage or prompts. It never embeds: a caller that has
//! the text's vector (the question's, computed for retrieval anyway) passes it in.

pub mod lexicon;
pub mod normalize;
pub mod policy;
pub mod rules;
pub mod stream;

use kotae_models::candle::Tensor;
use kotae_models::{Embedder, InputKind};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use lexicon::Lexicon;
pub use normalize::Normalized;
pub use policy::Policy;
pub use stream::{Gate, GateEvent, SentenceOutcome};

/// The project's own labelled training prompts for the safety head (ja + en, harmful and
/// benign look-alikes), written for it and disjoint from `evals/guard/`.
pub const TRAIN_JSONL: &str = include_str!("../data/train.jsonl");

/// More of the same, written later and independently: benign look-alikes that the first set
/// lacked (operations, first aid, data exports) and indirect, business-framed harmful requests.
pub const TRAIN_EXTRA_JSONL: &str = include_str!("../data/train-extra.jsonl");

/// Ordinary help-desk questions (IT, HR, general affairs, product support; ja + en): what the
/// head must let through. Lines equal to a question of `evals/` were removed.
pub const ORDINARY_JSONL: &str = include_str!("../data/ordinary.jsonl");

/// A third round, per language (700 ja, 600 en), written by two more helpers from the
/// categories alone, without seeing `evals/`: new scenarios, registers and obfuscations, and
/// benign look-alikes. Before it was trained on, the head blocked 75% of its harmful prompts
/// and 4–7% of its benign ones: the first data did not generalize far enough.
pub const TRAIN_MORE_JA_JSONL: &str = include_str!("../data/train-more.ja.jsonl");
pub const TRAIN_MORE_EN_JSONL: &str = include_str!("../data/train-more.en.jsonl");

/// Benign questions of many other domains (appliances, travel, programming, pharmacy, …;
/// image editing left out as a test), 700 per language: without them the classifier learned
/// "not this company's help desk, so harmful" and refused a quarter of another domain's
/// ordinary questions.
pub const GENERAL_JA_JSONL: &str = include_str!("../data/general.ja.jsonl");
pub const GENERAL_EN_JSONL: &str = include_str!("../data/general.en.jsonl");

/// A second round of the same, 700 per language: questions about products' manuals (what a
/// setting, mode or command does; keyword searches; "I want it to look like …") of 41 other
/// product types, image editing still left out.
pub const GENERAL2_JA_JSONL: &str = include_str!("../data/general2.ja.jsonl");
pub const GENERAL2_EN_JSONL: &str = include_str!("../data/general2.en.jsonl");

/// A fourth round, 600 per file, by four helpers that saw no eval file: harmful requests in new
/// scenarios, registers and industries (about 15% obfuscated), and benign questions full of
/// trigger words from many workplaces (hospitals, schools, kitchens, security teams, …).
pub const R4_HARMFUL_JA_JSONL: &str = include_str!("../data/r4-harmful.ja.jsonl");
pub const R4_HARMFUL_EN_JSONL: &str = include_str!("../data/r4-harmful.en.jsonl");
pub const R4_BENIGN_JA_JSONL: &str = include_str!("../data/r4-benign.ja.jsonl");
pub const R4_BENIGN_EN_JSONL: &str = include_str!("../data/r4-benign.en.jsonl");

/// Every line of the project's own safety training data (JSON Lines: `lang`, `label`,
/// `category`, `text`).
pub fn training_lines() -> impl Iterator<Item = &'static str> {
    [
        TRAIN_JSONL,
        TRAIN_EXTRA_JSONL,
        ORDINARY_JSONL,
        TRAIN_MORE_JA_JSONL,
        TRAIN_MORE_EN_JSONL,
        GENERAL_JA_JSONL,
        GENERAL_EN_JSONL,
        GENERAL2_JA_JSONL,
        GENERAL2_EN_JSONL,
        R4_HARMFUL_JA_JSONL,
        R4_HARMFUL_EN_JSONL,
        R4_BENIGN_JA_JSONL,
        R4_BENIGN_EN_JSONL,
    ]
    .into_iter()
    .flat_map(str::lines)
    .filter(|l| !l.trim().is_empty())
}

/// Errors of the guard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file is wrong (the admin's fault): the message says what to fix.
    #[error("guard policy: {0}")]
    Policy(String),
    #[error("guard lexicon {path}: {msg}")]
    Lexicon { path: String, msg: String },
    #[error(transparent)]
    Model(#[from] kotae_models::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A question or message from a user.
    Input,
    /// What the model writes.
    Output,
    /// Text that would enter a fine-tuning or head-training set (conversations, feedback,
    /// corrections, inquiry logs).
    Training,
    /// Ingested manual or inquiry-log text.
    Document,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
            Direction::Training => "training",
            Direction::Document => "document",
        }
    }
}

/// Hazard categories. The first fourteen follow the MLCommons AI Safety taxonomy as Llama
/// Guard 3 uses it (S1–S14, some merged), the rest are what matters in a Japanese workplace
/// assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// S1 violent crimes: threats, assault, killing, stalking.
    Violence,
    /// S2 non-violent crimes: fraud, embezzlement, forgery, bribery, tax evasion, theft.
    Crime,
    /// S3, S4, S12: sexual content and sex crimes; anything sexual involving minors.
    Sexual,
    /// S5 defamation.
    Defamation,
    /// Personal data present in the text (phone numbers, e-mail, addresses, cards):
    /// redacted in questions and training data, blocked in answers unless the sources have it.
    PersonalData,
    /// S7 privacy: a request for someone else's address, phone, salary or health data, doxxing.
    Privacy,
    /// S9 indiscriminate weapons, explosives, firearms, poisons.
    Weapons,
    /// S10 hate: slurs and demeaning statements about a group.
    Hate,
    /// S11 suicide and self-harm.
    SelfHarm,
    /// S14 code-interpreter abuse and cyber attacks: malware, phishing, intrusion.
    Malware,
    /// Unfair treatment by nationality, origin, gender, age, disability, religion,
    /// orientation, pregnancy (hiring, evaluation, service).
    Discrimination,
    /// Power harassment, sexual harassment, bullying, forcing someone out.
    Harassment,
    /// False claims made to be spread (health, disasters, fake notices).
    Misinformation,
    /// Attempts to override the assistant's instructions or read its system prompt; special
    /// tokens; instructions hidden in documents.
    PromptInjection,
    /// Role-play and "mode" tricks to escape the rules.
    Jailbreak,
    /// Attempts to make the assistant learn or repeat a harmful rule or expression.
    Teaching,
    /// A word from the inappropriate-words lexicons (insults, slurs, sexual words).
    Profanity,
    /// A term the company's policy blocks.
    CompanyTerm,
    /// The safety classifier's judgement without a matching rule.
    Unsafe,
    /// An answer in another language or script than the question's.
    OffLanguage,
}

impl Category {
    pub const ALL: [Category; 20] = [
        Category::Violence,
        Category::Crime,
        Category::Sexual,
        Category::Defamation,
        Category::PersonalData,
        Category::Privacy,
        Category::Weapons,
        Category::Hate,
        Category::SelfHarm,
        Category::Malware,
        Category::Discrimination,
        Category::Harassment,
        Category::Misinformation,
        Category::PromptInjection,
        Category::Jailbreak,
        Category::Teaching,
        Category::Profanity,
        Category::CompanyTerm,
        Category::Unsafe,
        Category::OffLanguage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Violence => "violence",
            Category::Crime => "crime",
            Category::Sexual => "sexual",
            Category::Defamation => "defamation",
            Category::PersonalData => "personal_data",
            Category::Privacy => "privacy",
            Category::Weapons => "weapons",
            Category::Hate => "hate",
            Category::SelfHarm => "self_harm",
            Category::Malware => "malware",
            Category::Discrimination => "discrimination",
            Category::Harassment => "harassment",
            Category::Misinformation => "misinformation",
            Category::PromptInjection => "prompt_injection",
            Category::Jailbreak => "jailbreak",
            Category::Teaching => "teaching",
            Category::Profanity => "profanity",
            Category::CompanyTerm => "company_term",
            Category::Unsafe => "unsafe",
            Category::OffLanguage => "off_language",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The MLCommons / Llama Guard 3 hazard code, where one applies.
    pub fn mlcommons(self) -> Option<&'static str> {
        Some(match self {
            Category::Violence => "S1",
            Category::Crime => "S2",
            Category::Sexual => "S3/S4/S12",
            Category::Defamation => "S5",
            Category::PersonalData | Category::Privacy => "S7",
            Category::Weapons => "S9",
            Category::Hate | Category::Discrimination | Category::Harassment => "S10",
            Category::SelfHarm => "S11",
            Category::Malware => "S14",
            _ => return None,
        })
    }
}

/// What the policy does with a finding; ordered from mildest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing (not recorded).
    Allow,
    /// Let it through, record it.
    Warn,
    /// Replace the offending span (personal data) and go on.
    Redact,
    /// Stop: refuse the question, end the answer, quarantine the training example.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Warn => "warn",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// One thing a detector found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub category: Category,
    /// The rule, lexicon or classifier that fired (`rule:en.weapons.make`, `lexicon:textlint`,
    /// `classifier:safety`, `pii:phone`). Never the matched text itself.
    pub rule: String,
    /// 1.0 for rules; the probability for the classifier.
    pub score: f32,
    pub action: Action,
}

/// The decision on one text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub direction: Direction,
    /// The strictest action of the findings (`allow` when there are none).
    pub action: Action,
    pub findings: Vec<Finding>,
    /// The text with personal data replaced, when some finding asked for `redact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
    pub took_us: u64,
}

impl Verdict {
    pub fn blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// The finding that decided a block (the first with the strictest action).
    pub fn decisive(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.action == self.action)
    }

    /// The category that decided, for messages and metrics.
    pub fn category(&self) -> Option<Category> {
        self.decisive().map(|f| f.category)
    }
}

/// What the checker knows besides the text.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// Language of the conversation (`ja`, `en`), for the output's language check.
    pub lang: Option<&'a str>,
    /// The text's embedding (query kind) from the embedder the safety head was trained on.
    pub vector: Option<&'a [f32]>,
    /// The text's token states below the tuned safety head's layers (see [`encode`]).
    pub states: Option<&'a Tensor>,
    /// The generator's pooled state of the text ([`kotae_models::states::LmStates`]), for
    /// the second safety classifier ([`Guard::lm_probe`]).
    pub lm_state: Option<&'a [f32]>,
    /// Source texts the answer was written from: personal data that appears in them may be
    /// repeated (a help-desk phone number from a manual), other personal data may not.
    pub sources: &'a [String],
    /// Text that must never be repeated in an answer (the system prompt): a sentence that
    /// copies a long piece of it is a disclosure.
    pub secrets: &'a [String],
}

/// A guard: one check of one text in one direction. Implementations are cheap (rules and a
/// small head, no model run) and thread-safe.
pub trait Guard: Send + Sync {
    fn name(&self) -> &str;
    fn check(&self, direction: Direction, text: &str, ctx: &Context<'_>) -> Verdict;
    fn policy(&self) -> &Policy;
    /// Whether [`Context::vector`] is read (a classifier is loaded): callers embed only then.
    fn wants_vector(&self) -> bool;
    /// The encoder layer whose token states the classifier reads (a tuned head), if any.
    fn states_layer(&self) -> Option<usize> {
        None
    }
    /// The classifier's probability that the text is harmful, from its vector and states
    /// (`None` without a classifier): for evaluations and threshold choice.
    fn classifier_score(&self, vector: &[f32], states: Option<&Tensor>) -> Option<f32>;
    /// The states the second safety classifier reads, as [`kotae_models::states::LmStates::id`]
    /// names them (`None`: no such classifier; callers then skip the model run).
    fn lm_probe(&self) -> Option<&str> {
        None
    }
    /// The second classifier's probability that the text is harmful, from the generator's
    /// state of it.
    fn lm_probe_score(&self, _lm_state: &[f32]) -> Option<f32> {
        None
    }
    /// Replace the safety head (a fine-tuning job trained a new one; `None`: it was removed).
    /// A check takes the head once and keeps it to its end; a text encoded for the previous
    /// head (another states layer) gets no classifier score from the new one, only the rules.
    fn set_classifier(&self, _head: Option<Arc<kotae_models::Head>>) {}
}

/// Sentence vectors, and token states when the guard's head is tuned.
pub type Encoded = (Vec<Vec<f32>>, Option<Vec<Tensor>>);

/// What a guard's classifier reads of some texts (query side), from one encoder pass: the
/// sentence vectors, and the token states when its head is tuned.
pub fn encode(guard: &dyn Guard, embedder: &dyn Embedder, texts: &[&str]) -> kotae_models::Result<Encoded> {
    if let Some(layer) = guard.states_layer() {
        if let Some((out, states)) = embedder.embed_with_states(texts, InputKind::Query, layer)? {
            return Ok((out.vectors, Some(states)));
        }
    }
    Ok((embedder.embed(texts, InputKind::Query)?.vectors, None))
}

/// The product's guard: rules, lexicons, personal-data detectors and the optional safety head,
/// under one policy.
pub struct Guardrails {
    policy: Policy,
    rules: rules::RuleSet,
    lexicon: Lexicon,
    /// The safety head; replaced while serving when a fine-tuning job trains a new one.
    head: std::sync::RwLock<Option<Arc<kotae_models::Head>>>,
    /// A head on the generator's residual stream (`kotae finetune head --task safety` trains
    /// it beside the first when the generator is installed).
    lm_head: Option<Arc<kotae_models::Head>>,
}

impl Guardrails {
    /// Built-in rules and lexicon, the policy's terms, and the safety head when given.
    pub fn new(policy: Policy, lexicon: Lexicon, head: Option<Arc<kotae_models::Head>>) -> Self {
        let rules = rules::RuleSet::new(&policy.terms);
        Self { policy, rules, lexicon, head: std::sync::RwLock::new(head), lm_head: None }
    }

    /// With the second safety classifier, on the generator's states.
    pub fn with_lm_probe(mut self, head: Option<Arc<kotae_models::Head>>) -> Self {
        self.lm_head = head;
        self
    }

    /// The guard a deployment runs: `policy` (or the defaults), the built-in lexicon plus
    /// the installed ones under `lexicon_dir`, the safety head when one is trained.
    pub fn load(
        policy: Option<&Path>,
        lexicon_dir: Option<&Path>,
        head: Option<Arc<kotae_models::Head>>,
    ) -> Result<Self> {
        let policy = match policy {
            Some(p) => Policy::load(p)?,
            None => Policy::default(),
        };
        let mut lexicon = Lexicon::builtin();
        if let Some(d) = lexicon_dir {
            lexicon.load_dir(d)?;
        }
        Ok(Self::new(policy, lexicon, head))
    }

    pub fn has_classifier(&self) -> bool {
        self.head().is_some()
    }

    fn head(&self) -> Option<Arc<kotae_models::Head>> {
        self.head.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn lexicon(&self) -> &Lexicon {
        &self.lexicon
    }

    /// The safety head's probability that the text is harmful (harmful + jailbreak labels).
    /// Whether the safety head read every token of `text`: a tuned head reads at most
    /// `max_states` token states (the first and last halves of a longer text), and the
    /// encoder itself stops at 512 tokens. A head on the sentence vector (a mean over every
    /// token, in which a short harmful tail fades) counts only for short texts.
    fn head_read_all(head: Option<&kotae_models::Head>, text: &str, states: Option<&Tensor>) -> bool {
        let Some(head) = head else { return false };
        if head.split_layer().is_none() {
            return text.chars().count() <= 300;
        }
        let Some(Ok(n)) = states.map(|s| s.dim(0)) else { return false };
        n < 512 && (head.card.max_states == 0 || n <= head.card.max_states)
    }

    fn head_score(head: Option<&kotae_models::Head>, vector: Option<&[f32]>, states: Option<&Tensor>) -> Option<f32> {
        let head = head?;
        let p = if head.split_layer().is_some() {
            head.probabilities_from_states(&[states?.clone()]).ok()?.pop()?
        } else {
            let vector = vector?;
            if vector.len() != head.card.input_dim {
                return None;
            }
            head.probabilities(&[vector.to_vec()]).ok()?.pop()?
        };
        Some(harmful_mass(&head.card.labels, &p))
    }

    /// The probe's probability of the harmful labels.
    fn lm_score(&self, lm_state: Option<&[f32]>) -> Option<f32> {
        let head = self.lm_head.as_ref()?;
        let x = lm_state.filter(|x| x.len() == head.card.input_dim)?;
        let p = head.probabilities(&[x.to_vec()]).ok()?.pop()?;
        Some(harmful_mass(&head.card.labels, &p))
    }

    fn finding(&self, direction: Direction, category: Category, rule: String, score: f32) -> Finding {
        Finding { category, rule, score, action: self.policy.actions.get(direction, category) }
    }
}

impl Guard for Guardrails {
    fn name(&self) -> &str {
        "kotae-guardrails"
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn wants_vector(&self) -> bool {
        self.head().is_some()
    }

    fn states_layer(&self) -> Option<usize> {
        self.head().and_then(|h| h.split_layer())
    }

    fn set_classifier(&self, head: Option<Arc<kotae_models::Head>>) {
        *self.head.write().unwrap_or_else(|p| p.into_inner()) = head;
    }

    fn classifier_score(&self, vector: &[f32], states: Option<&Tensor>) -> Option<f32> {
        Self::head_score(self.head().as_deref(), Some(vector), states)
    }

    fn lm_probe(&self) -> Option<&str> {
        self.lm_head.as_ref().map(|h| h.card.embedder.as_str())
    }

    fn lm_probe_score(&self, lm_state: &[f32]) -> Option<f32> {
        self.lm_score(Some(lm_state))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(direction = direction.as_str()))]
    fn check(&self, direction: Direction, text: &str, ctx: &Context<'_>) -> Verdict {
        let t = Instant::now();
        let norm = Normalized::new(text);
        let mut findings = Vec::new();
        // Rules: categories by intent; in documents only injection matters (a manual may
        // well describe harassment to forbid it).
        let reporting = direction == Direction::Input && rules::reporting_frame(&norm);
        for (category, rule) in self.rules.matches(&norm, direction) {
            // Someone reporting fraud, asking how to spot phishing or worried about a
            // colleague is not asking for the harm: those rule hits give way, unless the
            // classifier says otherwise below.
            if reporting
                && matches!(
                    category,
                    Category::Crime
                        | Category::Malware
                        | Category::Harassment
                        | Category::SelfHarm
                        | Category::Hate
                        | Category::Misinformation
                        | Category::Defamation
                )
            {
                continue;
            }
            findings.push(self.finding(direction, category, format!("rule:{rule}"), 1.0));
        }
        for (category, source) in self.lexicon.matches(&norm) {
            findings.push(self.finding(direction, category, format!("lexicon:{source}"), 1.0));
        }
        // Personal data: in questions and training data it is redacted; in answers it may
        // only repeat what the sources say.
        let pii = kotae_ingest::clean::find_pii(text);
        let mut redacted = None;
        if !pii.is_empty() {
            let novel: Vec<&kotae_ingest::clean::PiiSpan> = match direction {
                Direction::Output => pii
                    .iter()
                    .filter(|s| {
                        let digits = |x: &str| x.chars().filter(char::is_ascii_alphanumeric).collect::<String>();
                        let d = digits(&text[s.range.clone()]);
                        !ctx.sources.iter().any(|src| digits(src).contains(&d))
                    })
                    .collect(),
                _ => pii.iter().collect(),
            };
            for s in &novel {
                findings.push(self.finding(direction, Category::PersonalData, format!("pii:{}", s.kind), 1.0));
            }
            if !novel.is_empty() && self.policy.actions.get(direction, Category::PersonalData) == Action::Redact {
                redacted = Some(kotae_ingest::clean::redact_pii(text).0);
            }
        }
        // The classifier: alone it needs a high score; with a weak signal (a rude word, a
        // teaching marker) a lower one. When it is sure a question is harmless, an intent
        // rule's match is set aside (kept as a warning, for the audit): only on questions
        // (training data stays strict), only when the classifier read the whole text (a
        // harmless preamble must not hide a harmful tail), only for a match in the text as
        // written (not one that de-obfuscation revealed), and never for distress (the
        // helpline answer), someone's personal data, special tokens or the company's terms.
        if matches!(direction, Direction::Input | Direction::Training) {
            let head = self.head();
            let head_score = Self::head_score(head.as_deref(), ctx.vector, ctx.states);
            let veto = head_score
                .filter(|&s| direction == Direction::Input && s < self.policy.thresholds.rule_veto)
                .filter(|_| Self::head_read_all(head.as_deref(), text, ctx.states));
            if let Some(score) = veto {
                let as_written = rules::kana_folded(&norm.plain);
                for f in findings.iter_mut().filter(|f| {
                    f.action == Action::Block
                        && !matches!(
                            f.category,
                            Category::CompanyTerm | Category::SelfHarm | Category::Privacy | Category::PersonalData
                        )
                        && f.rule
                            .strip_prefix("rule:")
                            .is_some_and(|r| !r.contains("special_token") && self.rules.matches_rule(r, &as_written))
                }) {
                    f.action = Action::Warn;
                    f.rule = format!("{} (set aside: classifier {score:.3})", f.rule);
                }
            }
            if let Some(score) = head_score {
                let weak = findings.iter().any(|f| f.action == Action::Warn);
                let th = &self.policy.thresholds;
                if score >= th.classifier || (weak && score >= th.classifier_with_signal) {
                    let category = findings.iter().find(|f| f.action == Action::Warn).map(|f| f.category);
                    let category = match category {
                        Some(Category::Profanity) | None => Category::Unsafe,
                        Some(c) => c,
                    };
                    findings.push(self.finding(direction, category, "classifier:safety".into(), score));
                }
            }
            // The second classifier, on the generator's reading of the text: either one
            // blocks (they fail on different prompts).
            if let Some(score) = self.lm_score(ctx.lm_state) {
                if score >= self.policy.thresholds.lm_classifier && !findings.iter().any(|f| f.action == Action::Block)
                {
                    findings.push(self.finding(direction, Category::Unsafe, "classifier:safety-lm".into(), score));
                }
            }
        }
        if direction == Direction::Output && leaks(&norm, ctx.secrets) {
            findings.push(self.finding(direction, Category::PromptInjection, "leak:system_prompt".into(), 1.0));
        }
        if direction == Direction::Output {
            if let Some(rule) = ctx.lang.and_then(|l| off_language(text, l)) {
                findings.push(self.finding(direction, Category::OffLanguage, rule.into(), 1.0));
            }
        }
        findings.retain(|f| f.action != Action::Allow);
        findings.sort_by_key(|f| std::cmp::Reverse(f.action));
        let action = findings.first().map(|f| f.action).unwrap_or(Action::Allow);
        if action != Action::Redact && action != Action::Block {
            redacted = redacted.filter(|_| findings.iter().any(|f| f.action == Action::Redact));
        }
        Verdict { direction, action, findings, redacted, took_us: t.elapsed().as_micros() as u64 }
    }
}

/// Probability of every label but `safe` / `benign`.
fn harmful_mass(labels: &[String], p: &[f32]) -> f32 {
    labels.iter().zip(p).filter(|(l, _)| l.as_str() != "safe" && l.as_str() != "benign").map(|(_, p)| *p).sum()
}

/// Whether the text copies 48 or more consecutive characters of a secret (compared in the
/// folded form, so spacing and width do not hide it).
fn leaks(text: &Normalized, secrets: &[String]) -> bool {
    const RUN: usize = 48;
    let t = &text.folded;
    if t.chars().count() < RUN {
        return false;
    }
    secrets.iter().any(|s| {
        let f: Vec<char> = Normalized::new(s).folded.chars().collect();
        f.windows(RUN).step_by(4).any(|w| {
            let piece: String = w.iter().collect();
            t.contains(&piece)
        })
    })
}

/// An answer sentence in the wrong script: Simplified-only Han characters in Japanese, or
/// a sentence with no Japanese at all and real English words in a Japanese answer (drift);
/// Japanese or Chinese in an English answer. Short fragments (names, commands) pass.
fn off_language(text: &str, lang: &str) -> Option<&'static str> {
    let t = text.trim();
    if lang == "ja" {
        if t.chars().any(kotae_models::chat::is_non_japanese_han) {
            return Some("lang:simplified_han");
        }
        let kana_or_han = t.chars().filter(|&c| normalize_is_japanese(c)).count();
        let ascii_words =
            t.split_whitespace().filter(|w| w.chars().filter(|c| c.is_ascii_alphabetic()).count() >= 3).count();
        if kana_or_han == 0 && ascii_words >= 12 {
            return Some("lang:english_in_japanese");
        }
    } else if lang == "en" {
        let kana_or_han = t.chars().filter(|&c| normalize_is_japanese(c)).count();
        let letters = t.chars().filter(|c| c.is_alphabetic()).count();
        if letters >= 12 && kana_or_han * 2 > letters {
            return Some("lang:cjk_in_english");
        }
    }
    None
}

fn normalize_is_japanese(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF)
}

#[cfg(test)]
mod tests;
