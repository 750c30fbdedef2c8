//! The deployment's policy (`guard.toml`): what happens to each category in each direction,
//! the company's own blocked and allowed terms, refusal messages, classifier thresholds.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Action, Category, Direction, Error, Result};

/// One direction's actions: `default` for every category not listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionActions {
    pub default: Action,
    #[serde(flatten)]
    pub categories: BTreeMap<Category, Action>,
}

impl DirectionActions {
    fn of(default: Action, overrides: &[(Category, Action)]) -> Self {
        Self { default, categories: overrides.iter().cloned().collect() }
    }

    pub fn get(&self, c: Category) -> Action {
        self.categories.get(&c).copied().unwrap_or(self.default)
    }
}

/// Actions per direction. A policy file names only what it changes: each direction's table
/// is merged onto the built-in one (`default` replaces the direction's default, a category
/// its own action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawActions")]
pub struct Actions {
    pub input: DirectionActions,
    pub output: DirectionActions,
    pub training: DirectionActions,
    /// Ingested documents: instructions hidden in a manual or log are flagged (`warn`) and
    /// quoted as data in the prompt; `block` keeps the chunk out of the index.
    pub document: DirectionActions,
}

impl Default for Actions {
    fn default() -> Self {
        use Action::*;
        use Category::*;
        Self {
            // Asking about a colleague's phone number is blocked; one's own data in a question
            // is redacted before it is stored, logged or shown to the model. Rude words in a
            // question are only noted: people quote what was said to them when they report it.
            input: DirectionActions::of(Block, &[(PersonalData, Redact), (Profanity, Warn), (OffLanguage, Allow)]),
            // (`privacy`, a request for someone else's data, stays blocked.)
            output: DirectionActions::of(Block, &[]),
            // Training data: personal data is redacted, everything else harmful is quarantined.
            training: DirectionActions::of(Block, &[(PersonalData, Redact), (OffLanguage, Allow)]),
            document: DirectionActions::of(
                Warn,
                &[
                    (PersonalData, Allow),
                    (Privacy, Allow),
                    (Profanity, Allow),
                    (OffLanguage, Allow),
                    (CompanyTerm, Allow),
                ],
            ),
        }
    }
}

/// `[actions.<direction>]` tables as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActions {
    #[serde(default)]
    input: BTreeMap<String, Action>,
    #[serde(default)]
    output: BTreeMap<String, Action>,
    #[serde(default)]
    training: BTreeMap<String, Action>,
    #[serde(default)]
    document: BTreeMap<String, Action>,
}

impl TryFrom<RawActions> for Actions {
    type Error = String;

    fn try_from(raw: RawActions) -> std::result::Result<Self, String> {
        let mut out = Actions::default();
        let merge = |base: &mut DirectionActions, t: BTreeMap<String, Action>, dir: &str| {
            for (k, a) in t {
                if k == "default" {
                    base.default = a;
                    continue;
                }
                let c = Category::parse(&k).ok_or_else(|| {
                    let all: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
                    format!("actions.{dir}: unknown category '{k}' (known: default, {})", all.join(", "))
                })?;
                base.categories.insert(c, a);
            }
            Ok::<(), String>(())
        };
        merge(&mut out.input, raw.input, "input")?;
        merge(&mut out.output, raw.output, "output")?;
        merge(&mut out.training, raw.training, "training")?;
        merge(&mut out.document, raw.document, "document")?;
        Ok(out)
    }
}

impl Actions {
    pub fn get(&self, d: Direction, c: Category) -> Action {
        match d {
            Direction::Input => self.input.get(c),
            Direction::Output => self.output.get(c),
            Direction::Training => self.training.get(c),
            Direction::Document => self.document.get(c),
        }
    }
}

/// The company's own terms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Terms {
    /// Expressions never to be written or learned (category `company_term`).
    pub blocked: Vec<String>,
    /// Phrases that are fine even though a rule would match them (`kill the process`,
    /// 「殺虫剤」): a rule match that lies inside an allowed phrase is ignored.
    pub allowed: Vec<String>,
}

/// Refusal messages: polite, short, pointing to a person; never echoing what was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Refusals {
    pub ja: String,
    pub en: String,
    /// For self-harm: point to help rather than to a policy.
    pub self_harm_ja: String,
    pub self_harm_en: String,
    /// An answer stopped while it was being written.
    pub output_ja: String,
    pub output_en: String,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            ja: "申し訳ありませんが、このご依頼にはお応えできません。業務上のご質問であれば、表現を変えてお尋ねいただくか、担当のヘルプデスクにご相談ください。".into(),
            en: "Sorry, I can't help with that request. If this is a work question, please rephrase it or contact the help desk.".into(),
            self_harm_ja: "おつらい状況なのですね。ひとりで抱え込まず、産業医・健康相談窓口や信頼できる人に今すぐ相談してください。緊急の場合は119番、「いのちの電話」(0570-783-556)にも相談できます。".into(),
            self_harm_en: "It sounds like you are going through something hard. Please talk to someone now: the company's occupational health office, someone you trust, or in an emergency call 119 (Japan) or your local emergency number.".into(),
            output_ja: "申し訳ありません。この回答は社内の利用方針により表示できません。担当のヘルプデスクにお問い合わせください。".into(),
            output_en: "Sorry, this answer cannot be shown under the company's usage policy. Please contact the help desk.".into(),
        }
    }
}

/// The default [`Thresholds::rule_veto`] (see evals/guard/README.md, fourth round: chosen on
/// 2,400 prompts that the classifier measured there had not been trained on).
pub const RULE_VETO: f32 = 0.05;

/// Scores at which the safety classifier's finding counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Probability of `harmful` (or `jailbreak`) from the safety head above which an input
    /// is blocked on the classifier alone.
    pub classifier: f32,
    /// A lower bar when a rule or lexicon also fired weakly (a rude word, a teaching marker).
    pub classifier_with_signal: f32,
    /// Probability of `harmful` (or `jailbreak`) from the second safety classifier (on the
    /// generator's states, trained on request) above which an input is blocked. Chosen on
    /// the dev split: 0.90 blocked as many harmful prompts and more benign ones.
    pub lm_classifier: f32,
    /// An intent rule's match on a question is set aside (kept as a warning) when the safety
    /// classifier is this sure the question is harmless: its probability of harm below this.
    /// The rules match words in order ("kill" near a person, 「偽造」 near a verb) and fire on
    /// people asking about a harm ("how do we spot forged prescriptions?"); the classifier
    /// reads the whole question. 0 turns it off. Only when the classifier read every token,
    /// only for a match in the text as written (not one that undoing obfuscation revealed),
    /// never in training data, and never for the company's blocked terms, the word lists,
    /// personal data (in the text or asked for), distress (self-harm) or special tokens.
    pub rule_veto: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        // Chosen on evals/guard/*.dev.jsonl (never on the held-out split) for the tuned
        // safety head (`kotae finetune head --task safety`; 0.95 kept for three tuned layers).
        Self { classifier: 0.95, classifier_with_signal: 0.5, lm_classifier: 0.97, rule_veto: RULE_VETO }
    }
}

/// Output checking while streaming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSettings {
    /// Sentences before the current one that are checked together with it (an expression
    /// split across sentences is still seen).
    pub lookback_sentences: usize,
    /// The longest text held back without a sentence end before it is checked and released.
    pub max_hold_chars: usize,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self { lookback_sentences: 1, max_hold_chars: 240 }
    }
}

/// The whole policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub actions: Actions,
    pub terms: Terms,
    pub refusals: Refusals,
    pub thresholds: Thresholds,
    pub output: OutputSettings,
}

impl Policy {
    /// Read a policy file; what it leaves out keeps its default.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Policy(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Policy(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let p: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.thresholds;
        for (name, v) in [
            ("classifier", t.classifier),
            ("classifier_with_signal", t.classifier_with_signal),
            ("lm_classifier", t.lm_classifier),
            ("rule_veto", t.rule_veto),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("thresholds.{name} is {v}: it must be between 0 and 1"));
            }
        }
        if t.rule_veto > t.classifier_with_signal {
            return Err(format!(
                "thresholds.rule_veto ({}) must not exceed thresholds.classifier_with_signal ({}): a rule set aside \
                 counts as a weak signal, and the classifier would then block what the rule's veto let through",
                t.rule_veto, t.classifier_with_signal
            ));
        }
        if self.output.max_hold_chars < 16 {
            return Err("output.max_hold_chars must be at least 16".into());
        }
        Ok(())
    }

    /// The refusal for a block in `direction` of `category`, in `lang`.
    pub fn refusal(&self, lang: &str, direction: Direction, category: Category) -> &str {
        let r = &self.refusals;
        match (lang == "ja", direction, category) {
            (true, _, Category::SelfHarm) => &r.self_harm_ja,
            (false, _, Category::SelfHarm) => &r.self_harm_en,
            (true, Direction::Output, _) => &r.output_ja,
            (false, Direction::Output, _) => &r.output_en,
            (true, _, _) => &r.ja,
            (false, _, _) => &r.en,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_policy_in_deploy_parses() {
        let p = Policy::parse(include_str!("../../../deploy/guard.toml")).unwrap();
        assert_eq!(p.actions.get(Direction::Input, Category::PersonalData), Action::Redact);
        assert_eq!(p.actions.get(Direction::Training, Category::Hate), Action::Block);
        assert!(p.refusals.ja.contains("内線"));
        assert_eq!(p.thresholds.classifier, 0.95);
    }

    #[test]
    fn a_policy_file_overrides_what_it_names() {
        let p = Policy::parse(
            r#"
            [actions.input]
            default = "block"
            profanity = "block"
            [terms]
            blocked = ["プロジェクトX"]
            "#,
        )
        .unwrap();
        assert_eq!(p.actions.get(Direction::Input, Category::Profanity), Action::Block);
        assert_eq!(p.actions.get(Direction::Input, Category::Violence), Action::Block);
        assert_eq!(p.actions.get(Direction::Training, Category::PersonalData), Action::Redact);
        assert_eq!(p.terms.blocked, ["プロジェクトX"]);
        assert!(Policy::parse("[actions.input]\ndefault = \"maybe\"").is_err());
        assert!(Policy::parse("[thresholds]\nclassifier = 2.0").unwrap_err().contains("between 0 and 1"));
        assert!(Policy::parse("[actions.input]\ndefault = \"block\"\nnot_a_category = \"warn\"")
            .unwrap_err()
            .contains("unknown category"));
        assert!(Policy::parse("[actions.sideways]\ndefault = \"block\"").is_err());
        // What the file does not name keeps the built-in action.
        assert_eq!(p.actions.get(Direction::Input, Category::PersonalData), Action::Redact);
    }
}
