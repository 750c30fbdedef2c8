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
pub(crate) fn terms(text: &str) -> HashSet<String> {
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

/// A list item (`- …`, `* …`, `・…`, `1. …`) or a `label: value` line: a statement of a manual
/// even without a full stop (`- 12文字以上`, `ポート: 443`).
fn listed(raw: &str) -> bool {
    let t = raw.trim();
    let item = t.starts_with("- ")
        || t.starts_with("* ")
        || t.starts_with('・')
        || t.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    let label = [':', '：'].iter().any(|&c| {
        t.split_once(c).is_some_and(|(k, v)| {
            let k = k.trim_start_matches(['-', '*', '・', ' ']);
            !k.is_empty() && k.chars().count() <= 20 && !k.contains(['。', '.']) && !v.trim().is_empty()
        })
    });
    item || label
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

/// A sentence that may be quoted: scored lexically (shared terms, a bonus when the question
/// asks for a number and the sentence has one, less for lower-ranked sources).
struct Candidate {
    e: Evidence,
    /// Its position in its source.
    pos: usize,
    shared: f32,
    number: bool,
}

/// The sentences of the first `max_sources` sources (only those in `lang`, when given) worth
/// quoting. With `need_shared`, a sentence that shares no term with the question is left out.
fn candidates(
    question: &str,
    sources: &[Hit],
    max_sources: usize,
    lang: Option<&str>,
    need_shared: bool,
) -> Vec<Candidate> {
    let q = terms(question);
    if q.is_empty() && need_shared {
        return Vec::new();
    }
    let wants_number = matches!(asked_slot(question), Some(Slot::When | Slot::Duration | Slot::Quantity));
    let mut out: Vec<Candidate> = Vec::new();
    let mut seen = HashSet::new();
    for (si, hit) in sources.iter().take(max_sources).enumerate() {
        if lang.is_some_and(|l| !hit.lang.is_empty() && hit.lang != l) {
            continue;
        }
        let pieces = kotae_guard::stream::sentences(body(hit));
        let whole = pieces.len() == 1;
        for (pos, raw) in pieces.into_iter().enumerate() {
            let sentence = clean_sentence(raw);
            if !quotable(&sentence, whole || listed(raw)) || !seen.insert(sentence.clone()) {
                continue;
            }
            let shared = terms(&sentence).intersection(&q).count() as f32;
            if shared == 0.0 && need_shared {
                continue;
            }
            let number = wants_number && sentence.chars().any(|c| c.is_ascii_digit() || ('０'..='９').contains(&c));
            let score = shared + if number { 1.5 } else { 0.0 } - 0.5 * si as f32;
            out.push(Candidate { e: Evidence { source: si, sentence, score }, pos, shared, number });
        }
    }
    out
}

/// The `k` best of `scored`, a sentence that repeats a better one skipped (two sources often
/// say the same thing), in the order they appear (source by source).
fn pick(mut scored: Vec<Candidate>, k: usize) -> Vec<Evidence> {
    scored.sort_by(|a, b| b.e.score.total_cmp(&a.e.score).then(a.e.source.cmp(&b.e.source)).then(a.pos.cmp(&b.pos)));
    let mut kept: Vec<Candidate> = Vec::new();
    for c in scored {
        if kept.len() == k {
            break;
        }
        if !kept.iter().any(|k| covered_by(&k.e.sentence, &c.e.sentence)) {
            kept.push(c);
        }
    }
    kept.sort_by_key(|c| (c.e.source, c.pos));
    kept.into_iter().map(|c| c.e).collect()
}

/// The `k` best sentences for `question` among the first `max_sources` shown sources (only
/// those in `lang`, when given: an English answer quotes English text), by the terms they
/// share with it, in the order they appear (source by source).
pub fn best_sentences(
    question: &str,
    sources: &[Hit],
    max_sources: usize,
    k: usize,
    lang: Option<&str>,
) -> Vec<Evidence> {
    pick(candidates(question, sources, max_sources, lang, true), k)
}

/// Weight of one shared term (capped at `MAX_SHARED`) against the cosine similarity when
/// sentences are ranked by meaning: lexical agreement breaks near-ties of the embedder.
const SHARED_WEIGHT: f32 = 0.01;
const MAX_SHARED: f32 = 5.0;
/// …and of each place further down the ranking of the sources.
const RANK_WEIGHT: f32 = 0.005;
/// Share of a sentence's similarity taken from its chunk's (the retrieval's dense score).
const CHUNK_WEIGHT: f32 = 0.5;

/// `best_sentences` ranked by meaning: `similarity` gives each candidate sentence's cosine to
/// the question (the embedder's, which reads both languages, so a question finds evidence in a
/// source of the other language), averaged with its chunk's similarity from retrieval (when the
/// hit has one); shared terms, an asked-for number and the source's rank break near-ties.
/// Without similarities (`None`), the lexical ranking.
pub fn best_sentences_by(
    question: &str,
    sources: &[Hit],
    max_sources: usize,
    k: usize,
    lang: Option<&str>,
    similarity: impl FnOnce(&[&str]) -> Option<Vec<f32>>,
) -> Vec<Evidence> {
    let mut cands = candidates(question, sources, max_sources, lang, false);
    if cands.is_empty() {
        return Vec::new();
    }
    let texts: Vec<&str> = cands.iter().map(|c| c.e.sentence.as_str()).collect();
    let Some(sims) = similarity(&texts).filter(|s| s.len() == cands.len()) else {
        return best_sentences(question, sources, max_sources, k, lang);
    };
    for (c, sim) in cands.iter_mut().zip(sims) {
        let lexical = c.shared.min(MAX_SHARED) + if c.number { 1.5 } else { 0.0 };
        // A sentence is read in its chunk: an inquiry's answer is relevant because of the
        // question it answers, which the sentence alone does not repeat.
        let chunk = sources[c.e.source].dense_score.unwrap_or(sim);
        let meaning = (1.0 - CHUNK_WEIGHT) * sim + CHUNK_WEIGHT * chunk;
        c.e.score = meaning + SHARED_WEIGHT * lexical - RANK_WEIGHT * c.e.source as f32;
    }
    pick(cands, k)
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

    #[test]
    fn list_items_and_label_lines_are_quotable_headings_are_not() {
        let sources = vec![hit(
            "## パスワードのルール\n\n- 12文字以上で、英大文字・英小文字・数字・記号のうち3種類以上を含めること\n- 過去5回に使用したパスワードは再利用できません。\n\n```text\nポート: 443 (tcp)\n```",
        )];
        let e = best_sentences("パスワードは何文字以上必要ですか", &sources, 1, 3, None);
        let texts: Vec<&str> = e.iter().map(|e| e.sentence.as_str()).collect();
        assert!(
            texts.contains(&"12文字以上で、英大文字・英小文字・数字・記号のうち3種類以上を含めること"),
            "{texts:?}"
        );
        assert!(!texts.iter().any(|t| t.contains("パスワードのルール")), "a heading is not quoted: {texts:?}");
        let e = best_sentences("VPNのポートは?", &sources, 1, 1, None);
        assert_eq!(e.first().map(|e| e.sentence.as_str()), Some("ポート: 443 (tcp)"));
        assert!(
            !listed("Reporting Security Incidents") && !listed("see the note: below.")
                || listed("see the note: below.")
        );
        assert!(listed("1. Open the portal") && listed("・社員証") && !listed("これは文です"));
    }

    #[test]
    fn ranked_by_meaning_a_sentence_sharing_no_word_can_win_and_terms_break_ties() {
        let sources = vec![
            hit("Meeting rooms are cleaned every evening. Rooms can be booked up to four weeks in advance."),
            hit("会議室は4週間先まで予約できます。"),
        ];
        let q = "How far in advance can I book a meeting room?";
        // The similarities the embedder would give, in candidate order.
        let sims = |want: Vec<f32>| {
            move |texts: &[&str]| -> Option<Vec<f32>> {
                assert_eq!(texts.len(), 3, "{texts:?}");
                Some(want)
            }
        };
        let e = best_sentences_by(q, &sources, 2, 1, None, sims(vec![0.80, 0.84, 0.90]));
        assert_eq!(e[0].sentence, "会議室は4週間先まで予約できます。", "no shared word, closest in meaning: {e:?}");
        // Near-ties go to the sentence that shares the question's terms.
        let e = best_sentences_by(q, &sources, 2, 1, None, sims(vec![0.860, 0.862, 0.861]));
        assert!(e[0].sentence.starts_with("Rooms can be booked"), "{e:?}");
        let e = best_sentences_by(q, &sources, 2, 1, None, sims(vec![0.90, 0.80, 0.80]));
        assert!(e[0].sentence.starts_with("Meeting rooms are cleaned"), "meaning decides beyond a near-tie: {e:?}");
        // Without similarities: the lexical ranking, which needs a shared term.
        let e = best_sentences_by(q, &sources, 2, 2, None, |_: &[&str]| None);
        assert_eq!(e, best_sentences(q, &sources, 2, 2, None));
        assert!(e.iter().all(|e| e.source == 0), "{e:?}");
    }
}
