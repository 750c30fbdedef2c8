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
        let mut ts = self.token_stream(text);
        let mut out = Vec::new();
        while ts.advance() {
            out.push(ts.token().text.clone());
        }
        out
    }
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
