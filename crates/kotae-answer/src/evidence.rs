//! Evidence: the sentences of the sources shown to the model that answer the question best.
//! They are quoted under a generated answer (the manual's own words, with their citation, so
//! a reader can check the answer at a glance) and make up the extractive answer when nothing
//! generated is supported.
//!
//! Sentences are scored by what they share with the question (character bigrams for
//! Japanese, content words for English), less for lower-ranked sources, more when the
//! question asks for a number (how many, when, how long) and the sentence has one.

use std::collections::HashSet;

use kotae_index::Hit;

use crate::slot::{asked_slot, Slot};

/// A sentence chosen as evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// Index of its source among the shown ones.
    pub source: usize,
    pub sentence: String,
    pub score: f32,
}

const EN_STOP: &[&str] = &[
    "the", "and", "for", "you", "your", "are", "can", "with", "that", "this", "from", "have", "has", "will", "not",
    "but", "all", "any", "our", "its", "may", "must", "should", "please", "also", "into", "when", "which", "what",
    "who", "how", "there", "their", "then", "than", "been", "was", "were", "does", "did", "about", "they", "them",
    "get", "got", "need", "want", "know", "tell",
];

/// A plural or past ending off (no six-letter cut as in `ground`: evidence ranks sentences by
/// shared terms, where "reimbursement" and "reimbursed" are better told apart).
fn stem(w: &str) -> &str {
    for suffix in ["ing", "ies", "es", "ed", "s"] {
        if w.len() > suffix.len() + 3 {
            if let Some(s) = w.strip_suffix(suffix) {
                return s;
            }
        }
    }
    w
}

/// What a text shares with another is counted on these: Japanese character bigrams
/// (letters and digits) and English content words (stemmed).
fn terms(text: &str) -> HashSet<String> {
    let t = kotae_ingest::clean::normalize(text).to_lowercase();
    let mut out: HashSet<String> = HashSet::new();
    let chars: Vec<char> = t.chars().collect();
    for w in chars.windows(2) {
        if w.iter().all(|c| c.is_alphanumeric()) && w.iter().any(|c| !c.is_ascii()) {
            out.insert(w.iter().collect());
        }
    }
    for w in t.split(|c: char| !c.is_ascii_alphanumeric()) {
        if w.len() >= 3 && !EN_STOP.contains(&w) {
            out.insert(stem(w).to_string());
        }
    }
    out
}

/// The answer part of a chunk: an inquiry's answer without its question; a manual's text
/// without heading marks and list bullets.
pub fn body(hit: &Hit) -> &str {
    hit.text.strip_prefix("Q: ").map(|t| t.split_once("\nA: ").map(|x| x.1).unwrap_or(t)).unwrap_or(&hit.text)
}

fn clean_sentence(s: &str) -> String {
    let s = s.trim().trim_start_matches(['#', '-', '*', '・', '>', ' ']).trim();
    s.replace("**", "")
}

/// Whether a piece of a source is a sentence worth quoting: long enough, ended like a
/// sentence (not a heading), and not a fragment cut at a chunk boundary (an English piece
/// starting in lower case, or ending on a comma). `whole`: the piece is a source's entire body
/// (a short inquiry answer may lack a full stop).
fn quotable(s: &str, whole: bool) -> bool {
    let n = s.chars().count();
    let ended =
        s.trim_end_matches(['」', '』', ')', '）', '"', '\'', ' ']).ends_with(['。', '.', '!', '?', '！', '？']);
    let fragment = s.starts_with(|c: char| c.is_ascii_lowercase()) || s.ends_with([',', '、']);
    n >= 8 && s.chars().any(char::is_alphanumeric) && (ended || whole) && !fragment
}

/// The `k` best sentences for `question` among the first `max_sources` shown sources (only
/// those in `lang`, when given: an English answer quotes English text), in the order they
/// appear (source by source).
pub fn best_sentences(
    question: &str,
    sources: &[Hit],
    max_sources: usize,
    k: usize,
    lang: Option<&str>,
) -> Vec<Evidence> {
    let q = terms(question);
    if q.is_empty() {
        return Vec::new();
    }
    let wants_number = matches!(asked_slot(question), Some(Slot::When | Slot::Duration | Slot::Quantity));
    let mut scored: Vec<(Evidence, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for (si, hit) in sources.iter().take(max_sources).enumerate() {
        if lang.is_some_and(|l| !hit.lang.is_empty() && hit.lang != l) {
            continue;
        }
        let pieces = kotae_guard::stream::sentences(body(hit));
        let whole = pieces.len() == 1;
        for (pos, raw) in pieces.into_iter().enumerate() {
            let sentence = clean_sentence(raw);
            if !quotable(&sentence, whole) || !seen.insert(sentence.clone()) {
                continue;
            }
            let shared = terms(&sentence).intersection(&q).count() as f32;
            if shared == 0.0 {
                continue;
            }
            let number = wants_number && sentence.chars().any(|c| c.is_ascii_digit() || ('０'..='９').contains(&c));
            let score = shared + if number { 1.5 } else { 0.0 } - 0.5 * si as f32;
            scored.push((Evidence { source: si, sentence, score }, pos));
        }
    }
    scored.sort_by(|a, b| b.0.score.total_cmp(&a.0.score).then(a.0.source.cmp(&b.0.source)).then(a.1.cmp(&b.1)));
    // Two sources often say the same thing: a sentence that repeats a better one is skipped.
    let mut kept: Vec<(Evidence, usize)> = Vec::new();
    for c in scored {
        if kept.len() == k {
            break;
        }
        if !kept.iter().any(|(e, _)| covered_by(&e.sentence, &c.0.sentence)) {
            kept.push(c);
        }
    }
    let mut scored = kept;
    scored.sort_by_key(|(e, pos)| (e.source, *pos));
    scored.into_iter().map(|(e, _)| e).collect()
}

/// Sentences quoted with their citations, as an answer shows them: 「…」[n] in Japanese,
/// "…" [n] in English.
pub fn quoted<'a>(lang: &str, chosen: impl Iterator<Item = &'a Evidence>) -> String {
    let parts: Vec<String> = chosen
        .map(|e| {
            if lang == "ja" {
                format!("「{}」[{}]", e.sentence, e.source + 1)
            } else {
                format!("\"{}\" [{}]", e.sentence, e.source + 1)
            }
        })
        .collect();
    parts.join(if lang == "ja" { "" } else { " " })
}

/// Whether `answer` already says what `quote` says (most of the quote's terms are in it).
pub fn covered_by(answer: &str, quote: &str) -> bool {
    let q = terms(quote);
    if q.is_empty() {
        return true;
    }
    let a = terms(answer);
    q.intersection(&a).count() as f32 / q.len() as f32 >= 0.7 || copies(answer, quote)
}

/// Whether the answer already copies a long run of the quote word for word (12 characters of
/// Japanese, 30 of Latin script: a clause either way): quoting it again would say it twice.
fn copies(answer: &str, quote: &str) -> bool {
    let norm = |s: &str| -> Vec<char> {
        kotae_ingest::clean::normalize(s).to_lowercase().chars().filter(|c| c.is_alphanumeric()).collect()
    };
    let (a, q) = (norm(answer), norm(quote));
    let need = if q.iter().any(|c| !c.is_ascii()) { 12 } else { 30 };
    if q.len() < need || a.len() < need {
        return false;
    }
    // Longest common run, one row of the dynamic-programming table at a time.
    let mut prev = vec![0usize; q.len() + 1];
    for ca in &a {
        let mut row = vec![0usize; q.len() + 1];
        for (j, cq) in q.iter().enumerate() {
            if ca == cq {
                row[j + 1] = prev[j] + 1;
                if row[j + 1] >= need {
                    return true;
                }
            }
        }
        prev = row;
    }
    false
}

/// Whether an answer says the documents do not answer the question (no quote goes under it).
pub fn declines(answer: &str) -> bool {
    let a = kotae_ingest::clean::normalize(answer).to_lowercase();
    [
        "見つかりません",
        "記載がありません",
        "記載されていません",
        "記載はありません",
        "情報がありません",
        "わかりません",
        "分かりません",
        "not found",
        "could not find",
        "couldn't find",
        "cannot find",
        "do not contain",
        "does not contain",
        "do not mention",
        "does not mention",
        "doesn't mention",
        "no information",
        "not possible to determine",
        "not specified",
        "not mentioned",
    ]
    .iter()
    .any(|p| a.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str) -> Hit {
        Hit { text: text.into(), source: "s.md".into(), section: "S".into(), ..Default::default() }
    }

    #[test]
    fn a_quote_the_answer_already_copies_is_covered() {
        let quote = "Repeated unexpected prompts (\"MFA fatigue\") mean someone knows your password: deny the request, change your password immediately and report it to the security team.";
        let answer = "You should deny them, change your password immediately and report it to the security team.";
        assert!(covered_by(answer, quote));
        assert!(!covered_by("Deny the request.", quote));
        assert!(covered_by(
            "原則として3営業日前までに勤怠システムから申請します。",
            "取得する場合は、原則として3営業日前までに勤怠システムから申請してください。"
        ));
        assert!(!covered_by(
            "勤怠システムで申請します。",
            "取得する場合は、原則として3営業日前までに勤怠システムから申請してください。"
        ));
    }

    #[test]
    fn the_sentence_with_the_asked_number_wins() {
        let sources = vec![hit(
            "## 有給休暇\n有給休暇は入社日に10日付与されます。取得する場合は、原則として3営業日前までに勤怠システムから申請してください。半日単位でも取得できます。",
        )];
        let e = best_sentences("有給休暇は何日前までに申請すればいいですか", &sources, 3, 1, None);
        assert_eq!(e.len(), 1);
        assert!(e[0].sentence.contains("3営業日前"), "{e:?}");
        let inquiry = vec![hit("Q: How do I book a room?\nA: Book it in RoomBook up to 4 weeks ahead.")];
        let e = best_sentences("how far ahead can I book a room", &inquiry, 3, 2, None);
        assert_eq!(e[0].sentence, "Book it in RoomBook up to 4 weeks ahead.");
        assert!(covered_by("You can book a room in RoomBook up to 4 weeks ahead [1].", &e[0].sentence));
        assert!(!covered_by("Ask General Affairs.", &e[0].sentence));
        // Headings and chunk-boundary fragments are not quoted; a repeated sentence only once.
        let two = vec![
            hit("Reporting Security Incidents\nthan 100 rows are exported later, Report incidents within 30 minutes."),
            hit("Report incidents within 30 minutes of noticing them."),
        ];
        let e = best_sentences("how soon must I report security incidents", &two, 2, 3, None);
        let texts: Vec<&str> = e.iter().map(|e| e.sentence.as_str()).collect();
        assert_eq!(texts, vec!["Report incidents within 30 minutes of noticing them."], "{e:?}");
    }
}
