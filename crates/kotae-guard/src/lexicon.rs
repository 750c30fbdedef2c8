//! Word lists: slurs (category `hate`), insults and sexual words (`profanity`), and the
//! company's blocked terms. Built in: a short list of unambiguous slurs in both languages.
//! Installed: the Japanese inappropriate-words list of npm's
//! `textlint-rule-ja-no-inappropriate-words` (MIT, about 3,100 words; `kotae models fetch
//! ja-inappropriate-words`) and English lists (`*.txt` with one word per line).
//!
//! Matching reads the folded text ([`Normalized::folded`]): English words whole, Japanese
//! words only where they are not the inside of a longer word (カス in カスタマー, バカ in
//! バカンス), with particles allowed around them (バカにされた).

use std::collections::HashSet;
use std::path::Path;

use crate::{Category, Error, Normalized, Result};

/// Unambiguous slurs: never written, never learned. In the form matching reads (lower case,
/// katakana as hiragana).
const SLURS_EN: &[&str] = &[
    "nigger",
    "niggers",
    "nigga",
    "faggot",
    "faggots",
    "kike",
    "kikes",
    "chinks",
    "spic",
    "spics",
    "wetback",
    "wetbacks",
    "gooks",
    "raghead",
    "ragheads",
    "towelhead",
    "towelheads",
    "tranny",
    "trannies",
    "beaner",
    "beaners",
    "coons",
    "paki",
    "pakis",
    "retard",
    "retards",
    "sand nigger",
    "subhuman",
    "untermensch",
];
const SLURS_JA: &[&str] = &[
    "ちょん",
    "支那人",
    "土人",
    "がいじ",
    "池沼",
    "きちがい",
    "基地外",
    "かたわ",
    "片輪",
    "めくら",
    "つんぼ",
    "部落民",
    "えた非人",
    "非人",
    "三国人",
    "ほも野郎",
    "おかま野郎",
    "れずども",
    "朝鮮人は死ね",
    "ちょん死ね",
    "ごきぶり朝鮮",
    "寄生虫民族",
    "劣等民族",
    "二ガー",
];
/// Insults and profanity (output and training data; in questions only noted).
const PROFANITY_EN: &[&str] = &[
    "fuck",
    "fucking",
    "motherfucker",
    "cunt",
    "whore",
    "slut",
    "bitch",
    "bastard",
    "asshole",
    "dickhead",
    "shithead",
    "kill yourself",
    "kys",
];
const PROFANITY_JA: &[&str] = &["死ね", "しね", "殺すぞ", "ころすぞ", "くたばれ", "消えろ", "うざい", "きもい"];

/// One word list entry.
#[derive(Debug, Clone)]
struct Entry {
    term: String,
    category: Category,
    source: &'static str,
    ascii: bool,
}

/// All word lists, ready to match.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    entries: Vec<Entry>,
    seen: HashSet<String>,
    /// Japanese entries grouped by their first character, for a fast scan.
    by_first: std::collections::HashMap<char, Vec<usize>>,
    /// English entries by their first word.
    by_word: std::collections::HashMap<String, Vec<usize>>,
}

fn fold_term(t: &str) -> String {
    Normalized::new(t).folded.trim().to_string()
}

impl Lexicon {
    /// The built-in lists.
    pub fn builtin() -> Self {
        let mut l = Self::default();
        for t in SLURS_EN.iter().chain(SLURS_JA) {
            l.add(t, Category::Hate, "builtin");
        }
        for t in PROFANITY_EN.iter().chain(PROFANITY_JA) {
            l.add(t, Category::Profanity, "builtin");
        }
        l
    }

    /// Add a term (first list wins when a term is in two).
    pub fn add(&mut self, term: &str, category: Category, source: &'static str) {
        let term = fold_term(term);
        if term.chars().count() < 2 || !self.seen.insert(term.clone()) {
            return;
        }
        let ascii = term.is_ascii();
        let i = self.entries.len();
        if ascii {
            let first = term.split(' ').next().unwrap_or_default().to_string();
            self.by_word.entry(first).or_default().push(i);
        } else if let Some(c) = term.chars().next() {
            self.by_first.entry(c).or_default().push(i);
        }
        self.entries.push(Entry { term, category, source, ascii });
    }

    /// Add every `*.txt` (one word per line, `#` comments) and the installed Japanese list
    /// (`ja-inappropriate-words/lexicon.txt`) under `dir` as profanity.
    pub fn load_dir(&mut self, dir: &Path) -> Result<()> {
        let ja = dir.join("ja-inappropriate-words").join("lexicon.txt");
        if ja.exists() {
            self.load_file(&ja, Category::Profanity, "textlint-ja")?;
        }
        Ok(())
    }

    pub fn load_file(&mut self, path: &Path, category: Category, source: &'static str) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Lexicon { path: path.display().to_string(), msg: e.to_string() })?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            // Very short Latin entries of the Japanese list (SM, 3P, AV) are ordinary
            // abbreviations in a workplace; they are left to the classifier.
            if line.is_ascii() && line.len() <= 3 {
                continue;
            }
            self.add(line, category, source);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Categories and list names of the terms found (each category once).
    pub fn matches(&self, text: &Normalized) -> Vec<(Category, &'static str)> {
        let mut out: Vec<(Category, &'static str)> = Vec::new();
        let mut push = |e: &Entry| {
            if !out.iter().any(|(c, _)| *c == e.category) {
                out.push((e.category, e.source));
            }
        };
        let t = &text.folded;
        // English: word by word, entries keyed by their first word.
        let words: Vec<(usize, &str)> = t
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(|w| (w.as_ptr() as usize - t.as_ptr() as usize, w))
            .collect();
        for (start, w) in &words {
            if let Some(ids) = self.by_word.get(*w) {
                for &i in ids {
                    let e = &self.entries[i];
                    let rest = &t[*start..];
                    if rest.starts_with(&e.term)
                        && !rest[e.term.len()..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    {
                        push(e);
                    }
                }
            }
        }
        // Japanese: at each character, the entries starting with it.
        for (i, c) in t.char_indices() {
            let Some(ids) = self.by_first.get(&c) else { continue };
            for &k in ids {
                let e = &self.entries[k];
                if e.ascii || !t[i..].starts_with(&e.term) {
                    continue;
                }
                let before = t[..i].chars().next_back();
                let after = t[i + e.term.len()..].chars().next();
                if standalone(&e.term, before, after) {
                    push(e);
                }
            }
        }
        out
    }
}

fn is_kana(c: char) -> bool {
    matches!(c as u32, 0x3041..=0x30FF)
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF)
}

/// Particles and copulas that may touch a word without making it part of a longer one.
fn is_particle(c: char) -> bool {
    "はがをにでともへのや".contains(c)
}

/// A Japanese term found at a position is a word of its own, not the inside of a longer word:
/// a kana-final term may not run on into more kana (かす|たまー), a kana-initial term may not
/// continue kana before it (unless a particle), and a kanji term may not sit inside a kanji
/// compound (東|支那|海).
fn standalone(term: &str, before: Option<char>, after: Option<char>) -> bool {
    let first = term.chars().next().unwrap_or(' ');
    let last = term.chars().next_back().unwrap_or(' ');
    let ok_after = match after {
        None => true,
        Some(a) if is_kana(last) && is_kana(a) => is_particle(a) || term.chars().count() >= 4,
        Some(a) if is_han(last) && is_han(a) => term.chars().count() >= 3,
        Some(_) => true,
    };
    let ok_before = match before {
        None => true,
        Some(b) if is_kana(first) && is_kana(b) => is_particle(b),
        // Okurigana: a kana word right after a kanji is the end of that word (行きちがい).
        Some(b) if is_kana(first) && is_han(b) => false,
        Some(b) if is_han(first) && is_han(b) => term.chars().count() >= 3,
        Some(_) => true,
    };
    ok_after && ok_before
}

/// The words of textlint-rule-ja-no-inappropriate-words: the single-quoted strings of the
/// `inappropriateWords` array in its `src/index.ts`.
pub fn words_from_textlint(source: &str) -> Vec<String> {
    let Some(start) = source.find("inappropriateWords") else { return Vec::new() };
    let body = &source[start..];
    let body = &body[..body.find("];").unwrap_or(body.len())];
    body.split('\n')
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(',');
            l.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')).map(String::from)
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cats(l: &Lexicon, s: &str) -> Vec<Category> {
        l.matches(&Normalized::new(s)).into_iter().map(|(c, _)| c).collect()
    }

    #[test]
    fn words_inside_longer_words_do_not_match() {
        let mut l = Lexicon::builtin();
        for w in ["カス", "バカ", "アホ", "支那", "ハゲ", "SM"] {
            l.add(w, Category::Profanity, "test");
        }
        assert_eq!(cats(&l, "カスタマーサポートに連絡"), []);
        assert_eq!(cats(&l, "夏のバカンス"), []);
        assert_eq!(cats(&l, "東シナ海と東支那海"), []);
        assert_eq!(cats(&l, "suspicious spicy food"), []);
        assert_eq!(cats(&l, "お前はバカ！"), [Category::Profanity]);
        assert_eq!(cats(&l, "バカにするな"), [Category::Profanity]);
        assert_eq!(cats(&l, "あのカスが"), [Category::Profanity]);
        assert_eq!(cats(&l, "ﾊﾞｶ"), [Category::Profanity]);
        assert_eq!(cats(&l, "you are a f.u.c.k.i.n.g idiot"), [Category::Profanity]);
        assert_eq!(cats(&l, "those ch1nks"), [Category::Hate]);
        assert_eq!(cats(&l, "チョンは帰れ"), [Category::Hate]);
        assert_eq!(cats(&l, "死 ね"), [Category::Profanity]);
        assert_eq!(cats(&l, "ページをめくらないで"), []);
        assert_eq!(cats(&l, "行きちがいがありました"), []);
        assert_eq!(cats(&l, "便利だしね"), []);
        assert_eq!(cats(&l, "a chink in the armor"), []);
    }

    #[test]
    fn reads_the_textlint_list() {
        let src = "import x;\nconst inappropriateWords = [\n  'いざり',\n  'かたわ',\n  'ﾁ○ﾁ○',\n];\nconst y = ['no'];";
        assert_eq!(words_from_textlint(src), ["いざり", "かたわ", "ﾁ○ﾁ○"]);
    }
}
