//! Japanese morphological analysis for BM25: a vibrato tokenizer over the IPADIC dictionary,
//! compiled once from the source files of Debian's `mecab-ipadic` package (EUC-JP CSV and
//! definition files), and its tantivy adapter.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use vibrato::dictionary::SystemDictionaryBuilder;
use vibrato::Dictionary;

use crate::{Error, Result};

/// Compile `system.dic` from an IPADIC source folder (`*.csv`, `matrix.def`, `char.def`,
/// `unk.def`, EUC-JP encoded). Takes a few seconds.
pub fn compile_ipadic(src_dir: &Path, out: &Path) -> Result<()> {
    let read_euc = |p: &Path| -> Result<Vec<u8>> {
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        let (text, _, _) = encoding_rs::EUC_JP.decode(&bytes);
        Ok(text.into_owned().into_bytes())
    };
    let mut csvs: Vec<_> = std::fs::read_dir(src_dir)
        .map_err(|e| Error::io(src_dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    if csvs.is_empty() {
        return Err(Error::Dictionary(format!(
            "no IPADIC *.csv files in {}; run `kotae models fetch ipadic` (or scripts/setup.sh)",
            src_dir.display()
        )));
    }
    csvs.sort();
    let mut lex = Vec::new();
    for p in &csvs {
        lex.extend(read_euc(p)?);
        if lex.last() != Some(&b'\n') {
            lex.push(b'\n');
        }
    }
    let dict = SystemDictionaryBuilder::from_readers(
        &lex[..],
        &read_euc(&src_dir.join("matrix.def"))?[..],
        &read_euc(&src_dir.join("char.def"))?[..],
        &read_euc(&src_dir.join("unk.def"))?[..],
    )
    .map_err(|e| Error::Dictionary(format!("building the IPADIC dictionary failed: {e}")))?;
    let tmp = out.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    dict.write(std::io::BufWriter::new(f)).map_err(|e| Error::Dictionary(e.to_string()))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(())
}

/// Tantivy tokenizer that segments Japanese with vibrato, drops particles, auxiliary verbs
/// and symbols, and indexes verbs and adjectives by their dictionary form.
#[derive(Clone)]
pub struct JapaneseTokenizer {
    inner: Arc<vibrato::Tokenizer>,
    tokens: Vec<Token>,
}

impl JapaneseTokenizer {
    pub fn load(dic: &Path) -> Result<Self> {
        let f = std::fs::File::open(dic).map_err(|e| Error::io(dic, e))?;
        let dict = Dictionary::read(BufReader::new(f) as BufReader<_>).map_err(|e| {
            Error::Dictionary(format!("{} is not a valid dictionary ({e}); delete it to rebuild", dic.display()))
        })?;
        let tok = vibrato::Tokenizer::new(dict).ignore_space(true).map_err(|e| Error::Dictionary(e.to_string()))?;
        Ok(Self { inner: Arc::new(tok), tokens: Vec::new() })
    }

    /// The terms this tokenizer produces for `text` (for tests and debugging).
    pub fn terms(&mut self, text: &str) -> Vec<String> {
        terms_of(self, text)
    }
}

/// The terms a tantivy tokenizer produces for `text`, in order.
pub fn terms_of(tokenizer: &mut impl Tokenizer, text: &str) -> Vec<String> {
    let mut ts = tokenizer.token_stream(text);
    let mut out = Vec::new();
    while ts.advance() {
        out.push(ts.token().text.clone());
    }
    out
}

/// One morpheme of a Japanese text, for query translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub surface: String,
    /// Dictionary form (verbs and adjectives), else the surface.
    pub base: String,
    /// Indexed by BM25 (not a particle, auxiliary verb or symbol).
    pub kept: bool,
    /// Carries meaning on its own: kept, and not a dependent word (非自立), suffix, number or
    /// light verb such as する.
    pub content: bool,
    /// Byte range in the text.
    pub range: std::ops::Range<usize>,
}

impl Word {
    /// The BM25 term: the dictionary form, lower-cased.
    pub fn term(&self) -> String {
        self.base.to_lowercase()
    }
}

/// Verbs and nouns so general that translating them only adds noise.
const LIGHT_WORDS: &[&str] = &[
    "する",
    "いる",
    "ある",
    "なる",
    "できる",
    "くださる",
    "れる",
    "られる",
    "せる",
    "おる",
    "くる",
    "いく",
    "もらう",
    "もらえる",
    "こと",
    "もの",
    "とき",
    "ため",
    "よう",
    "どう",
    "何",
    "なに",
    "いつ",
    "どこ",
    "これ",
    "それ",
    "ここ",
];

impl JapaneseTokenizer {
    /// The morphemes of `text` with what BM25 and query translation need to know about them
    /// (the tantivy token stream is the kept ones' terms).
    pub fn words(&self, text: &str) -> Vec<Word> {
        let mut worker = self.inner.new_worker();
        worker.reset_sentence(text);
        worker.tokenize();
        (0..worker.num_tokens())
            .map(|i| {
                let t = worker.token(i);
                let f: Vec<&str> = t.feature().split(',').collect();
                let pos = f.first().copied().unwrap_or("");
                let detail = f.get(1).copied().unwrap_or("");
                let surface = t.surface().to_string();
                let base = match (pos, f.get(6)) {
                    ("動詞" | "形容詞", Some(b)) if *b != "*" && !b.is_empty() => b.to_string(),
                    _ => surface.clone(),
                };
                let kept = !DROPPED_POS.contains(&pos) && surface.chars().any(char::is_alphanumeric);
                let content = kept
                    && !matches!(detail, "非自立" | "接尾" | "数" | "代名詞")
                    && !LIGHT_WORDS.contains(&base.as_str());
                Word { surface, base, kept, content, range: t.range_byte() }
            })
            .collect()
    }
}

const DROPPED_POS: &[&str] = &["助詞", "助動詞", "記号", "フィラー", "その他"];

impl Tokenizer for JapaneseTokenizer {
    type TokenStream<'a> = VecTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream<'a> {
        self.tokens.clear();
        for (position, w) in self.words(text).into_iter().filter(|w| w.kept).enumerate() {
            self.tokens.push(Token {
                offset_from: w.range.start,
                offset_to: w.range.end,
                position,
                text: w.term(),
                position_length: 1,
            });
        }
        VecTokenStream { tokens: &mut self.tokens, idx: None }
    }
}

pub struct VecTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    idx: Option<usize>,
}

impl TokenStream for VecTokenStream<'_> {
    fn advance(&mut self) -> bool {
        let next = self.idx.map_or(0, |i| i + 1);
        self.idx = Some(next);
        next < self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.idx.unwrap_or(0)]
    }
    fn token_mut(&mut self) -> &mut Token {
        let i = self.idx.unwrap_or(0);
        &mut self.tokens[i]
    }
}

/// Lucene's CJK bigram analysis: every run of Han, kana or full-width characters becomes its
/// overlapping character pairs (a lone character stays a unigram), every run of Latin letters
/// or digits one lower-cased word. It needs no dictionary, so it finds what morphology misses —
/// unknown words, compounds cut differently in question and manual, new katakana terms — and
/// BM25 searches it beside the morphological field.
#[derive(Clone, Default)]
pub struct CjkBigramTokenizer {
    tokens: Vec<Token>,
}

/// Han, hiragana, katakana (with the prolonged sound mark) and the CJK symbols that carry
/// meaning (々, 〆).
fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3005}' | '\u{3006}' | '\u{3041}'..='\u{309F}' | '\u{30A0}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}'
        | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '\u{FF66}'..='\u{FF9F}'
        | '\u{20000}'..='\u{2FFFF}')
}

impl Tokenizer for CjkBigramTokenizer {
    type TokenStream<'a> = VecTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream<'a> {
        self.tokens.clear();
        let push = |tokens: &mut Vec<Token>, from: usize, to: usize, text: String| {
            let position = tokens.len();
            tokens.push(Token { offset_from: from, offset_to: to, position, text, position_length: 1 });
        };
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let end_of = |i: usize| chars.get(i + 1).map_or(text.len(), |c| c.0);
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i].1;
            if is_cjk(c) {
                let start = i;
                while i < chars.len() && is_cjk(chars[i].1) {
                    i += 1;
                }
                if i - start == 1 {
                    push(&mut self.tokens, chars[start].0, end_of(start), c.to_string());
                } else {
                    for j in start..i - 1 {
                        let pair: String = [chars[j].1, chars[j + 1].1].into_iter().collect();
                        push(&mut self.tokens, chars[j].0, end_of(j + 1), pair);
                    }
                }
            } else if c.is_alphanumeric() {
                let start = i;
                while i < chars.len() && chars[i].1.is_alphanumeric() && !is_cjk(chars[i].1) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|c| c.1).collect::<String>().to_lowercase();
                if word.len() <= 40 {
                    push(&mut self.tokens, chars[start].0, end_of(i - 1), word);
                }
            } else {
                i += 1;
            }
        }
        VecTokenStream { tokens: &mut self.tokens, idx: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigrams_for_cjk_runs_words_for_latin() {
        let mut tok = CjkBigramTokenizer::default();
        let mut t = |s: &str| terms_of(&mut tok, s);
        assert_eq!(t("背景を透明に"), ["背景", "景を", "を透", "透明", "明に"]);
        assert_eq!(t("JPEGで保存"), ["jpeg", "で保", "保存"]);
        assert_eq!(t("色 RGB2 値"), ["色", "rgb2", "値"]);
        assert_eq!(t("コロナウイルス"), ["コロ", "ロナ", "ナウ", "ウイ", "イル", "ルス"]);
        assert!(t("、。！ ").is_empty());
    }
}
