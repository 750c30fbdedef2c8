//! Cross-lingual BM25: dictionary-based query translation between Japanese and English.
//!
//! A Japanese question about an English manual (「在宅勤務は週何日まで」 for a remote-work
//! policy) shares no term with it, so BM25 alone can only add noise to the dense ranking. With a
//! bilingual dictionary (EDRDG's EDICT, from Debian's `edict` package, compiled at set-up into
//! `lexicon.tsv`), each content word of the query is also looked up in the other language and its
//! translations are searched as down-weighted terms, spread over a word's translations (the
//! "structured query" idea of dictionary-based CLIR: a word with many senses must not outweigh
//! a word with one).
//!
//! Only what an entry says first is used: the glosses of its first sense, at most
//! [`MAX_GLOSSES`], each of at most [`MAX_GLOSS_WORDS`] words (longer ones are explanations, not
//! translations). English→Japanese looks up phrases of up to three words: a single word only
//! among common (`(P)`) entries, a phrase of two or three among all.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::{Error, Result};

pub const MAX_GLOSSES: usize = 3;
pub const MAX_GLOSS_WORDS: usize = 4;
/// Japanese words one English phrase may stand for.
pub const MAX_HEADS: usize = 3;

/// One dictionary entry, cleaned.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub head: String,
    pub glosses: Vec<String>,
    /// Marked `(P)`: a common word.
    pub common: bool,
}

/// Parse one EDICT line: `KANJI [KANA] /(pos) (1) gloss/gloss/(2) .../(P)/`.
pub fn parse_edict_line(line: &str) -> Option<Entry> {
    let (head_part, body) = line.split_once(" /")?;
    let head = head_part.split(' ').next()?.trim();
    if !head.chars().any(char::is_alphanumeric) {
        return None;
    }
    let body = body.trim_end().trim_end_matches('/');
    let mut glosses = Vec::new();
    let mut common = false;
    for (i, part) in body.split('/').enumerate() {
        let part = part.trim();
        if part == "(P)" {
            common = true;
            continue;
        }
        if part.is_empty() || part.starts_with("EntL") {
            continue;
        }
        // Leading tags: part of speech, field, sense number. A new sense ends the first one.
        let mut rest = part;
        let mut new_sense = false;
        while let Some(stripped) = rest.strip_prefix('(') {
            let Some(end) = stripped.find(')') else { break };
            let tag = &stripped[..end];
            if i > 0 && tag.parse::<u32>().is_ok_and(|n| n > 1) {
                new_sense = true;
            }
            rest = stripped[end + 1..].trim_start();
        }
        if new_sense {
            // Still note (P) if it comes later in the line.
            common |= body.split('/').any(|p| p.trim() == "(P)");
            break;
        }
        let gloss = strip_parentheses(rest);
        if gloss.is_empty() || gloss.split_whitespace().count() > MAX_GLOSS_WORDS || glosses.len() == MAX_GLOSSES {
            continue;
        }
        glosses.push(gloss);
    }
    (!glosses.is_empty()).then(|| Entry { head: head.to_string(), glosses, common })
}

fn strip_parentheses(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compile EDICT (EUC-JP, as Debian ships it) into `lexicon.tsv`: `head \t common \t gloss|gloss`.
/// Returns the number of entries written.
pub fn compile_edict(src: &Path, out: &Path) -> Result<usize> {
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    let (text, _, _) = encoding_rs::EUC_JP.decode(&bytes);
    let tmp = out.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = std::io::BufWriter::new(f);
    let mut n = 0;
    for e in text.lines().filter_map(parse_edict_line) {
        writeln!(w, "{}\t{}\t{}", e.head, u8::from(e.common), e.glosses.join("|")).map_err(|e| Error::io(&tmp, e))?;
        n += 1;
    }
    if n < 1000 {
        return Err(Error::Dictionary(format!("{} holds only {n} entries: not an EDICT file", src.display())));
    }
    w.flush().map_err(|e| Error::io(&tmp, e))?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(n)
}

/// The two lookup tables. Values are `|`-joined lists, kept as one allocation each: the
/// Japanese side holds some 180,000 headwords.
#[derive(Debug, Default)]
pub struct Lexicon {
    ja_en: HashMap<Box<str>, Box<str>>,
    en_ja: HashMap<Box<str>, Box<str>>,
}

fn is_hiragana(s: &str) -> bool {
    s.chars().all(|c| ('\u{3040}'..='\u{309f}').contains(&c))
}

/// The key an English gloss or query phrase is looked up by.
pub fn english_key(s: &str) -> String {
    let s = s.trim().to_lowercase();
    let s = s.strip_prefix("to ").unwrap_or(&s);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Lexicon {
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut lex = Lexicon::default();
        let mut common_heads = std::collections::HashSet::new();
        for e in entries {
            lex.add(e, &mut common_heads);
        }
        lex
    }

    /// Per head: the glosses of its common entries when it has any, else of its first entry.
    fn add(&mut self, e: Entry, common_heads: &mut std::collections::HashSet<Box<str>>) {
        if !is_hiragana(&e.head) {
            for g in &e.glosses {
                let k = english_key(g);
                // A single English word stands for common entries only; a phrase of two or three
                // words is specific enough to name any entry ("paid leave" → 有給休暇).
                let words = k.split(' ').count();
                if (e.common && words <= 3) || (2..=3).contains(&words) {
                    let heads = self.en_ja.entry(k.into_boxed_str()).or_default();
                    if heads.is_empty() {
                        *heads = e.head.clone().into();
                    } else if heads.split('|').count() < MAX_HEADS && !heads.split('|').any(|h| h == e.head) {
                        *heads = format!("{heads}|{}", e.head).into();
                    }
                }
            }
        }
        let joined = e.glosses.join("|");
        let head: Box<str> = e.head.into();
        let first_common = e.common && common_heads.insert(head.clone());
        match self.ja_en.get_mut(&head) {
            None => {
                self.ja_en.insert(head, joined.into());
            }
            Some(slot) if first_common => *slot = joined.into(),
            Some(slot) if e.common => {
                let mut v: Vec<&str> = slot.split('|').collect();
                for g in &e.glosses {
                    if !v.contains(&g.as_str()) && v.len() < MAX_GLOSSES + 1 {
                        v.push(g);
                    }
                }
                *slot = v.join("|").into();
            }
            Some(_) => {}
        }
    }

    /// Load a compiled `lexicon.tsv`, streaming its lines into the tables.
    pub fn load(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut failure = None;
        let entries = BufReader::new(f).lines().enumerate().map_while(|(i, line)| {
            let parsed = line.map_err(|e| Error::io(path, e)).and_then(|line| {
                let mut parts = line.splitn(3, '\t');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(head), Some(common), Some(glosses)) => Ok(Entry {
                        head: head.to_string(),
                        common: common == "1",
                        glosses: glosses.split('|').map(str::to_string).collect(),
                    }),
                    _ => Err(Error::Dictionary(format!(
                        "{}:{}: malformed line; delete the file and run `kotae models fetch edict`",
                        path.display(),
                        i + 1
                    ))),
                }
            });
            parsed.map_err(|e| failure = Some(e)).ok()
        });
        let lex = Self::from_entries(entries);
        failure.map_or(Ok(lex), Err)
    }

    /// English translations of a Japanese word (dictionary form).
    pub fn ja_to_en(&self, word: &str) -> Option<Vec<&str>> {
        self.ja_en.get(word).map(|v| v.split('|').collect())
    }

    /// Japanese words for an English word or phrase (any case; a leading "to " is ignored).
    pub fn en_to_ja(&self, phrase: &str) -> Option<Vec<&str>> {
        self.en_ja.get(english_key(phrase).as_str()).map(|v| v.split('|').collect())
    }
}

/// English phrases of `text` found in the lexicon, longest first, left to right (up to three
/// words; a single word that `is_stop` rejects is skipped; a plural also tries its singular).
pub fn english_phrases<'a>(lex: &'a Lexicon, text: &str, is_stop: impl Fn(&str) -> bool) -> Vec<Vec<&'a str>> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .filter(|w| !w.is_empty() && w.is_ascii())
        .map(str::to_lowercase)
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    'outer: while i < words.len() {
        for n in (1..=3.min(words.len() - i)).rev() {
            let phrase = words[i..i + n].join(" ");
            if n == 1 && is_stop(&phrase) {
                break;
            }
            let found = lex.en_to_ja(&phrase).or_else(|| {
                let singular = phrase.strip_suffix('s').filter(|s| s.len() > 2)?;
                lex.en_to_ja(singular)
            });
            if let Some(heads) = found {
                out.push(heads);
                i += n;
                continue 'outer;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_first_sense_and_common_mark() {
        let e = parse_edict_line("予約 [よやく] /(n,vs) (1) reservation/appointment/booking/advance order/(n,vs) (2) contract/subscription/(P)/").unwrap();
        assert_eq!(e.head, "予約");
        assert_eq!(e.glosses, vec!["reservation", "appointment", "booking"]);
        assert!(e.common);
        let e = parse_edict_line("在宅勤務 [ざいたくきんむ] /(n) working at home/telecommuting/").unwrap();
        assert_eq!(e.glosses, vec!["working at home", "telecommuting"]);
        assert!(!e.common);
        let e = parse_edict_line("パスワード /(n) password/(P)/").unwrap();
        assert_eq!(
            (e.head.as_str(), e.glosses.as_slice(), e.common),
            ("パスワード", &["password".to_string()][..], true)
        );
        // Explanations are not translations.
        let e = parse_edict_line("立て替え [たてかえ] /(n) advancing money/payment on behalf of another party, with the expectation of being reimbursed later/").unwrap();
        assert_eq!(e.glosses, vec!["advancing money"]);
        assert!(parse_edict_line("　？？？ /EDICT, EDICT_SUB(P)/").is_none());
        assert!(parse_edict_line("garbage").is_none());
    }

    #[test]
    fn looks_up_both_ways_and_prefers_common_entries() {
        let lex = Lexicon::from_entries(
            [
                "ホール /(adj-no,n) whole/entire/complete/",
                "ホール /(n) (1) hall (dance, concert, etc.)/(n) (2) dining area of a restaurant/(P)/",
                "有給休暇 [ゆうきゅうきゅうか] /(n) paid vacation/paid leave/(P)/",
                "規則 [きそく] /(n) rule/regulation/(P)/",
                "いく /(v5k-s) to go/(P)/",
            ]
            .iter()
            .filter_map(|l| parse_edict_line(l)),
        );
        assert_eq!(lex.ja_to_en("ホール").unwrap(), ["hall"]);
        assert_eq!(lex.en_to_ja("Paid Leave").unwrap(), ["有給休暇"]);
        assert!(lex.en_to_ja("go").is_none(), "hiragana-only heads are grammar, not vocabulary");
        let found = english_phrases(&lex, "How many days of paid leave? What are the rules", |w| {
            ["how", "many", "of", "what", "are", "the"].contains(&w)
        });
        assert_eq!(found, vec![vec!["有給休暇"], vec!["規則"]]);
    }
}
