//! Grounding: whether a sentence of an answer is supported by the sources shown to the model.
//!
//! The check is lexical and strict about the claims that hurt when wrong: every number of two
//! digits or more in the sentence (a capacity, an amount, a deadline, a date) must appear in
//! the sources or the question, and most of its content must too (English content words;
//! Japanese character bigrams that contain a kanji or katakana). It runs on every sentence of
//! a generated answer through the output gate's per-sentence hook
//! ([`kotae_guard::Gate::with_check`]), and `kotae eval answer` reports how often it agrees
//! with hand labels (`evals/answer/support_labels.jsonl`).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// What happens to a generated sentence the sources do not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroundingMode {
    /// Not shown; when nothing supported is left, the answer becomes an extractive quote.
    #[default]
    Drop,
    /// Shown, and listed in the answer's `unsupported` field.
    Flag,
    /// Not checked.
    Off,
}

/// Words that carry no claim of their own (English).
const EN_STOP: &[&str] = &[
    "the",
    "and",
    "for",
    "you",
    "your",
    "are",
    "can",
    "with",
    "that",
    "this",
    "from",
    "have",
    "has",
    "will",
    "not",
    "but",
    "all",
    "any",
    "our",
    "its",
    "use",
    "may",
    "must",
    "should",
    "please",
    "also",
    "into",
    "when",
    "which",
    "what",
    "who",
    "how",
    "there",
    "their",
    "then",
    "than",
    "been",
    "was",
    "were",
    "does",
    "did",
    "about",
    "they",
    "them",
    "more",
    "out",
    "one",
    "per",
    "each",
    "only",
    "other",
    "some",
    "such",
    "after",
    "before",
    "within",
    "according",
    "document",
    "documents",
    "source",
    "sources",
    "information",
    "yes",
    "need",
    "needs",
    "would",
    "could",
    "here",
    "these",
    "those",
    "following",
    "based",
    "provided",
    "mentioned",
    "states",
    "says",
];

/// Japanese phrases of answering rather than claiming (資料によると…, 以下のとおり…).
const JA_FRAME: &[&str] =
    &["資料", "記載", "以下", "次の", "参照", "回答", "質問", "場合", "必要", "について", "によると", "お問い合わせ"];

/// Runs of ASCII digits (after width folding), a thousands comma kept inside a number.
pub fn numbers(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            cur.push(c);
        } else if c == ',' && !cur.is_empty() && chars.peek().is_some_and(char::is_ascii_digit) {
            continue;
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Single-digit counts with their unit ("5営", "3 day"): a claim (5営業日, 3 days) where a bare
/// digit is a list number or a citation marker. The unit is the counter right after the digit
/// (Japanese) or the first letters of the next word (Latin script). `s` is folded, citation
/// markers removed.
fn counted(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    for (i, &c) in chars.iter().enumerate() {
        let alone = |j: Option<usize>| j.and_then(|j| chars.get(j)).is_none_or(|c| !c.is_ascii_digit() && *c != ',');
        if !c.is_ascii_digit() || !alone(i.checked_sub(1)) || !alone(Some(i + 1)) {
            continue;
        }
        match chars.get(i + 1) {
            Some(&u) if u.is_alphabetic() && !u.is_ascii() => out.push(format!("{c}{u}")),
            Some(' ') => {
                let word: String = chars[i + 2..].iter().take_while(|c| c.is_ascii_alphabetic()).take(3).collect();
                if word.len() == 3 {
                    out.push(format!("{c} {word}"));
                }
            }
            _ => {}
        }
    }
    out
}

/// The text without citation markers (`[1]`, `[2][3]`, full-width too).
fn without_markers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['[', '［']) {
        out.push_str(&rest[..i]);
        let open = rest[i..].chars().next().map_or(1, char::len_utf8);
        let after = &rest[i + open..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[digits..].chars().next() {
            Some(close @ (']' | '］')) if digits > 0 => {
                out.push(' ');
                rest = &after[digits + close.len_utf8()..];
            }
            _ => {
                out.push_str(&rest[i..i + open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn fold(t: &str) -> String {
    kotae_ingest::clean::normalize(t).to_lowercase()
}

fn is_kanji_or_katakana(c: char) -> bool {
    matches!(c, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}' | '\u{30a0}'..='\u{30ff}')
}

/// An English word as compared: its first six letters when it is longer (so
/// "reimbursements" finds "reimbursed"), else without a plural or past ending.
fn stem(w: &str) -> &str {
    if w.is_ascii() && w.len() > 6 {
        return &w[..6];
    }
    for suffix in ["ing", "ies", "es", "ed", "s"] {
        if w.len() > suffix.len() + 3 {
            if let Some(s) = w.strip_suffix(suffix) {
                return s;
            }
        }
    }
    w
}

/// How one sentence stands against the sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    /// Numbers of the sentence that no source (nor the question) contains.
    pub missing_numbers: Vec<String>,
    /// Share of the sentence's content found in the sources or the question (1.0 when it has
    /// no content: a marker, a greeting).
    pub coverage: f32,
}

impl Support {
    pub fn supported(&self, min_coverage: f32) -> bool {
        self.missing_numbers.is_empty() && self.coverage >= min_coverage
    }
}

/// The sources an answer may draw on, prepared once per answer.
#[derive(Debug, Clone)]
pub struct Grounds {
    text: String,
    question: String,
    numbers: HashSet<String>,
    words: HashSet<String>,
}

impl Grounds {
    /// `sources`: the texts shown to the model; `question`: what was asked. An answer may
    /// repeat the question's numbers, but its words are no support: "No, you cannot bring
    /// your dog" restates the question and claims what no source says.
    pub fn new<S: AsRef<str>>(sources: &[S], question: &str) -> Self {
        let text: String = sources.iter().map(|s| fold(s.as_ref())).collect::<Vec<_>>().join("\n");
        let question = fold(question);
        let numbers = numbers(&text).into_iter().chain(numbers(&question)).collect();
        let words =
            text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| stem(w).to_string()).collect();
        Self { text, question, numbers, words }
    }

    /// How `sentence` (in `lang`) stands against these sources.
    pub fn support(&self, sentence: &str, lang: &str) -> Support {
        let s = fold(&without_markers(sentence).replace(['[', ']'], " "));
        // A bare single digit is a list number more often than a claim; with its unit it is
        // a claim (5営業日). Longer numbers are claims even in a fragment ("50円").
        let missing_numbers: Vec<String> = numbers(&s)
            .into_iter()
            .filter(|n| n.len() > 1 && !self.numbers.contains(n))
            .chain(
                counted(&s)
                    .into_iter()
                    .filter(|c| !self.text.contains(c.as_str()) && !self.question.contains(c.as_str())),
            )
            .collect();
        let content: String = s.chars().filter(|c| c.is_alphanumeric()).collect();
        if content.chars().count() < 6 {
            return Support { missing_numbers, coverage: 1.0 };
        }
        let japanese = lang == "ja" || s.chars().any(is_kanji_or_katakana);
        let (hit, total) = if japanese {
            let mut framed = s.clone();
            for f in JA_FRAME {
                framed = framed.replace(f, " ");
            }
            let chars: Vec<char> = framed.chars().collect();
            let grams: Vec<String> = chars
                .windows(2)
                .filter(|w| w.iter().any(|&c| is_kanji_or_katakana(c)) && w.iter().all(|c| c.is_alphanumeric()))
                .map(|w| w.iter().collect())
                .collect();
            // English words inside a Japanese sentence (product names) count as words.
            let words: Vec<&str> = framed
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| w.len() >= 3 && !w.chars().all(|c| c.is_ascii_digit()))
                .collect();
            let hit = grams.iter().filter(|g| self.text.contains(g.as_str())).count()
                + words.iter().filter(|w| self.words.contains(stem(w))).count();
            (hit, grams.len() + words.len())
        } else {
            let words: Vec<&str> = s
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 3 && !EN_STOP.contains(w) && !w.chars().all(|c| c.is_ascii_digit()))
                .collect();
            let hit = words.iter().filter(|w| self.words.contains(stem(w)) || self.text.contains(*w)).count();
            (hit, words.len())
        };
        let coverage = if total == 0 { 1.0 } else { hit as f32 / total as f32 };
        Support { missing_numbers, coverage }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_numbers_are_unsupported_even_when_the_words_match() {
        let g = Grounds::new(
            &["ギャラクシーホールの定員は60名です。予約は会議室システムから行います。"],
            "ギャラクシーホールは何人入りますか",
        );
        assert!(g.support("ギャラクシーホールの定員は60名です[1]。", "ja").supported(0.6));
        let s = g.support("ギャラクシーホールの定員は80名です。", "ja");
        assert_eq!(s.missing_numbers, vec!["80"]);
        assert!(!s.supported(0.6));
        // Full-width digits are the same number.
        assert!(g.support("定員は６０名です。", "ja").supported(0.6));
        // A single digit with its unit is a claim; a list number or a marker is not.
        let g =
            Grounds::new(&["アクセス権は所属長が申請し、1営業日で使えるようになります。"], "どのくらいで使えますか");
        assert!(g.support("所属長が申請し、1営業日で使えるようになります[1]。", "ja").supported(0.6));
        let s = g.support("所属長が申請し、5営業日で使えるようになります。", "ja");
        assert_eq!(s.missing_numbers, vec!["5営"]);
        assert!(g.support("1. 所属長が申請します。", "ja").supported(0.6));
        let g = Grounds::new(&["You may work remotely up to 3 days a week."], "Can I work from home 2 days?");
        assert!(g.support("Yes, up to 3 days a week [2].", "en").supported(0.6));
        assert!(g.support("Yes, 2 days a week is within the limit of 3 days.", "en").missing_numbers.is_empty());
        assert_eq!(g.support("Yes, up to 4 days a week.", "en").missing_numbers, vec!["4 day"]);
        assert_eq!(without_markers("a [1][2] b［3］ [x] c"), "a    b  [x] c");
    }

    #[test]
    fn content_the_sources_do_not_contain_is_unsupported() {
        let g = Grounds::new(
            &["Expense reports are reimbursed on the 25th. When the 25th falls on a holiday, payment is made on the business day before."],
            "When are expenses paid?",
        );
        assert!(g.support("Reimbursements are made on the 25th [1].", "en").supported(0.6));
        assert!(g
            .support("If the 25th is a holiday, payment is made on the business day before.", "en")
            .supported(0.6));
        assert!(!g
            .support("Managers approve overtime through the attendance portal every Friday.", "en")
            .supported(0.6));
        // A marker or a greeting claims nothing; a short fragment's number still must be found.
        assert!(g.support(" [1]", "en").supported(0.6));
        assert!(g.support("The 25th.", "en").supported(0.6));
        assert!(!g.support("$1,000.", "en").supported(0.6));
        assert_eq!(numbers("2,000 yen on 2026-04-01"), vec!["2000", "2026", "04", "01"]);
    }

    #[test]
    fn japanese_answers_with_english_product_names() {
        let g = Grounds::new(
            &["CloudLedgerのパスワードはセルフサービスポータルで再設定できます。"],
            "パスワードを忘れました",
        );
        assert!(g.support("CloudLedgerのパスワードはセルフサービスポータルで再設定できます。", "ja").supported(0.6));
        assert!(!g.support("TimeCardのパスワードは人事部に電話して再発行してもらいます。", "ja").supported(0.6));
    }
}
