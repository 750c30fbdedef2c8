//! The tantivy side: schema, analyzers per language, BM25 queries with in-engine filters, and
//! the stored chunks themselves.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED, STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, NgramTokenizer, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocAddress, Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument, Term};

use crate::bilingual::{self, Lexicon};
use crate::japanese::{CjkBigramTokenizer, JapaneseTokenizer};
use crate::{ChunkId, Error, IndexedChunk, Manifest, Result};

/// Weight of a match in a section title relative to one in body text. Titles are short, so
/// BM25 scores a title match high already; a word that is rare in titles but common in text
/// ("how do I become a GIMP wizard?") must not outrank the passage. Chosen on the outside
/// evaluation's development part (`evals/outside`): 2.0 there cost English BM25 a third of its
/// nDCG@10; 0.25–0.5 was best in both languages and neutral on the sample company.
pub const TITLE_BOOST: f32 = 0.5;

/// Weight of the Japanese character-bigram fields relative to the morphological ones.
/// Bigrams find what the dictionary cuts differently or does not know (new katakana terms,
/// compounds); on the outside evaluation's development part they added 0.03–0.05 nDCG@10 to
/// Japanese BM25 at 0.5.
pub const BIGRAM_WEIGHT: f32 = 0.5;

/// Which of a query's bigram terms are searched: all but pairs of hiragana, which are mostly
/// particles and inflections (「大ホールを使いたい」 gives いた, たい, matching every page that
/// says 〜していただきたい). Pairs with a kanji or katakana (使い, 切り) stay. The index keeps
/// every bigram; only the query is filtered.
fn bigram_carries_meaning(term: &str) -> bool {
    let hiragana = |c: char| ('\u{3041}'..='\u{309F}').contains(&c);
    !term.chars().all(hiragana)
}

/// Words that say a text is a question, not what it is about: dropped from English queries
/// (not from the index). Lucene's English stop words keep "how", "do", "I", "my", which match
/// FAQ-style titles and first-person passages rather than the topic.
const QUESTION_WORDS: &str = "how do does did doing i me my mine myself we us our you your can could would should \
     shall may might must what why when where which who whom whose am been being have has had so just about any \
     some way there here get";

#[derive(Clone, Copy)]
pub struct Fields {
    pub chunk_id: Field,
    pub source: Field,
    pub kind: Field,
    pub lang: Field,
    pub groups: Field,
    pub doc_version: Field,
    pub text_hash: Field,
    pub section: Field,
    pub text: Field,
    pub title_en: Field,
    pub body_en: Field,
    pub title_ja: Field,
    pub body_ja: Field,
    pub span_start: Field,
    pub span_end: Field,
    pub ordinal: Field,
    pub timestamp: Field,
    pub ingested: Field,
    /// Ingest flags; absent from indexes built before flags were stored (re-ingest to add them).
    pub flags: Option<Field>,
    /// Japanese bodies as character bigrams, beside the morphological field; absent from
    /// indexes built before it (re-ingest to add it). Titles have no bigram field: on the
    /// outside evaluation it cost 0.01 nDCG@10 and a quarter of the bigram query terms.
    pub body_ja_bi: Option<Field>,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_opts = |analyzer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer(analyzer).set_index_option(IndexRecordOption::WithFreqs),
        )
    };
    let f = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        source: b.add_text_field("source", STRING | STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        lang: b.add_text_field("lang", STRING | STORED),
        groups: b.add_text_field("groups", STRING | STORED),
        doc_version: b.add_text_field("doc_version", STRING | STORED),
        text_hash: b.add_text_field("text_hash", STRING | STORED),
        section: b.add_text_field("section", STORED),
        text: b.add_text_field("text", STORED),
        title_en: b.add_text_field("title_en", text_opts("kotae_en")),
        body_en: b.add_text_field("body_en", text_opts("kotae_en")),
        title_ja: b.add_text_field("title_ja", text_opts("kotae_ja")),
        body_ja: b.add_text_field("body_ja", text_opts("kotae_ja")),
        span_start: b.add_u64_field("span_start", STORED),
        span_end: b.add_u64_field("span_end", STORED),
        ordinal: b.add_u64_field("ordinal", STORED),
        timestamp: b.add_i64_field("timestamp", STORED),
        ingested: b.add_i64_field("ingested", STORED | INDEXED | FAST),
        flags: Some(b.add_text_field("flags", STRING | STORED)),
        body_ja_bi: Some(b.add_text_field("body_ja_bi", text_opts("kotae_ja_bigram"))),
    };
    (b.build(), f)
}

/// Japanese analysis: morphological (vibrato + IPADIC) when the dictionary is there, character
/// bigrams as the fallback. The choice is fixed when the index is created.
#[derive(Clone)]
pub enum JaAnalyzer {
    Morphological(JapaneseTokenizer),
    Bigram,
}

impl JaAnalyzer {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Morphological(_) => "vibrato-ipadic",
            Self::Bigram => "bigram",
        }
    }
}

fn register_analyzers(index: &Index, ja: &JaAnalyzer) -> Result<()> {
    let en = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("English stop words are built in"))
        .filter(Stemmer::new(Language::English))
        .build();
    index.tokenizers().register("kotae_en", en);
    let ja_an = match ja {
        JaAnalyzer::Morphological(t) => TextAnalyzer::builder(t.clone()).build(),
        JaAnalyzer::Bigram => TextAnalyzer::builder(NgramTokenizer::new(2, 2, false)?).filter(LowerCaser).build(),
    };
    index.tokenizers().register("kotae_ja", ja_an);
    index.tokenizers().register("kotae_ja_bigram", TextAnalyzer::builder(CjkBigramTokenizer::default()).build());
    Ok(())
}

pub struct Lexical {
    pub index: Index,
    pub reader: IndexReader,
    pub f: Fields,
    /// Query translation between Japanese and English (see `bilingual`).
    pub translation: Option<Translation>,
    question_words: OnceLock<HashSet<String>>,
}

/// BM25's ranking of one query.
#[derive(Debug, Default)]
pub struct LexicalHits {
    /// (chunk, score), best first.
    pub hits: Vec<(IndexedChunk, f32)>,
    /// The best hit matched none of the query's own words, only their translations: a document
    /// in the other language that the bilingual dictionary found.
    pub best_by_translation_only: bool,
}

/// What cross-lingual BM25 needs: the dictionary, the morphological analyzer to find Japanese
/// words, and the weight of a translated word relative to an original one.
pub struct Translation {
    path: PathBuf,
    lexicon: OnceLock<std::result::Result<Lexicon, String>>,
    ja: JapaneseTokenizer,
    weight: f32,
}

impl Translation {
    pub fn new(lexicon: PathBuf, ja: JapaneseTokenizer, weight: f32) -> Self {
        Self { path: lexicon, lexicon: OnceLock::new(), ja, weight }
    }

    /// Load the dictionary now (a server does before it reports ready).
    pub fn preload(&self) -> Result<()> {
        self.lexicon().map(|_| ())
    }

    /// The dictionary, loaded by the first search: opening a knowledge base to ingest into it
    /// never needs it.
    fn lexicon(&self) -> Result<&Lexicon> {
        self.lexicon
            .get_or_init(|| {
                Lexicon::load(&self.path).map_err(|e| match e {
                    Error::Dictionary(m) => m,
                    e => e.to_string(),
                })
            })
            .as_ref()
            .map_err(|e| Error::Dictionary(e.clone()))
    }
}

impl Lexical {
    pub fn open(dir: &Path, ja: &JaAnalyzer) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (schema, f) = schema();
        let index =
            if dir.join("meta.json").exists() { Index::open_in_dir(dir)? } else { Index::create_in_dir(dir, schema)? };
        register_analyzers(&index, ja)?;
        let mut f = f;
        f.flags = index.schema().get_field("flags").ok();
        f.body_ja_bi = index.schema().get_field("body_ja_bi").ok();
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Self { index, reader, f, translation: None, question_words: OnceLock::new() })
    }

    /// The manifest carried by the last commit (empty for a new index).
    pub fn manifest(&self) -> Result<Manifest> {
        match self.index.load_metas()?.payload {
            Some(p) => serde_json::from_str(&p).map_err(|e| Error::Manifest(e.to_string())),
            None => Ok(Manifest::default()),
        }
    }

    pub fn to_doc(&self, c: &IndexedChunk) -> TantivyDocument {
        let f = &self.f;
        let mut d = TantivyDocument::default();
        d.add_text(f.chunk_id, c.id.to_string());
        d.add_text(f.source, &c.source);
        d.add_text(f.kind, &c.kind);
        d.add_text(f.lang, &c.lang);
        for g in &c.groups {
            d.add_text(f.groups, g);
        }
        d.add_text(f.doc_version, &c.doc_version);
        d.add_text(f.text_hash, &c.text_hash);
        let section = c.section.join(" > ");
        d.add_text(f.section, &section);
        d.add_text(f.text, &c.text);
        let (title, body) = if c.lang == "ja" { (f.title_ja, f.body_ja) } else { (f.title_en, f.body_en) };
        d.add_text(title, &section);
        d.add_text(body, &c.text);
        if c.lang == "ja" {
            if let Some(body) = f.body_ja_bi {
                d.add_text(body, &c.text);
            }
        }
        d.add_u64(f.span_start, c.span.0);
        d.add_u64(f.span_end, c.span.1);
        d.add_u64(f.ordinal, c.ordinal as u64);
        if let Some(t) = c.timestamp {
            d.add_i64(f.timestamp, t);
        }
        d.add_i64(f.ingested, c.ingested_unix);
        if let Some(field) = f.flags {
            for flag in &c.flags {
                d.add_text(field, flag);
            }
        } else if !c.flags.is_empty() {
            tracing::warn!(source = %c.source, "this index predates ingest flags: re-ingest into a new data directory to keep them");
        }
        d
    }

    pub fn from_doc(&self, d: &TantivyDocument) -> IndexedChunk {
        let f = &self.f;
        let s = |field: Field| d.get_first(field).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let u = |field: Field| d.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        IndexedChunk {
            id: ChunkId::parse(&s(f.chunk_id)).unwrap_or(ChunkId(0)),
            source: s(f.source),
            kind: s(f.kind),
            section: s(f.section).split(" > ").map(str::to_string).collect(),
            span: (u(f.span_start), u(f.span_end)),
            text: s(f.text),
            lang: s(f.lang),
            ordinal: u(f.ordinal) as u32,
            doc_version: s(f.doc_version),
            groups: d.get_all(f.groups).filter_map(|v| v.as_str()).map(str::to_string).collect(),
            timestamp: d.get_first(f.timestamp).and_then(|v| v.as_i64()),
            ingested_unix: d.get_first(f.ingested).and_then(|v| v.as_i64()).unwrap_or(0),
            text_hash: s(f.text_hash),
            flags: f
                .flags
                .map(|field| d.get_all(field).filter_map(|v| v.as_str()).map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }

    fn group_filter(&self, groups: &[String]) -> Box<dyn Query> {
        let terms: Vec<Term> = groups.iter().map(|g| Term::from_field_text(self.f.groups, g)).collect();
        Box::new(ConstScoreQuery::new(Box::new(TermSetQuery::new(terms)), 0.0))
    }

    /// `QUESTION_WORDS` as English terms (stemmed as the analyzer does), computed once.
    fn question_words(&self) -> Result<&HashSet<String>> {
        if let Some(w) = self.question_words.get() {
            return Ok(w);
        }
        let words = self.analyze(self.f.body_en, QUESTION_WORDS)?.into_iter().collect();
        Ok(self.question_words.get_or_init(|| words))
    }

    /// Terms of `text` under `field`'s analyzer.
    fn analyze(&self, field: Field, text: &str) -> Result<Vec<String>> {
        let mut an = self.index.tokenizer_for_field(field)?;
        let mut ts = an.token_stream(text);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while ts.advance() {
            let t = ts.token().text.clone();
            if seen.insert(t.clone()) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Terms of `text` translated into the other language, each with its weight: a word's
    /// translations share the configured weight between them.
    fn translated_terms(&self, text: &str) -> Result<Vec<(Field, String, f32)>> {
        let Some(t) = &self.translation else { return Ok(Vec::new()) };
        let lexicon = t.lexicon()?;
        let mut weights: HashMap<(Field, String), f32> = HashMap::new();
        let mut add = |field: Field, terms: Vec<String>, w: f32| {
            for term in terms {
                let slot = weights.entry((field, term)).or_default();
                *slot = slot.max(w);
            }
        };
        // Japanese → English: the longest run of up to four words that is an entry, else the
        // content word alone.
        let words = t.ja.words(text);
        let mut i = 0;
        while i < words.len() {
            let mut found = None;
            if words[i].kept {
                for n in (2..=4.min(words.len() - i)).rev() {
                    if words[i..i + n].iter().all(|w| w.kept) {
                        let compound: String = words[i..i + n].iter().map(|w| w.surface.as_str()).collect();
                        if let Some(g) = lexicon.ja_to_en(&compound) {
                            found = Some((g, n));
                            break;
                        }
                    }
                }
                if found.is_none() && words[i].content {
                    found = lexicon
                        .ja_to_en(&words[i].base)
                        .or_else(|| lexicon.ja_to_en(&words[i].surface))
                        .map(|g| (g, 1));
                }
            }
            match found {
                Some((glosses, n)) => {
                    for g in &glosses {
                        add(self.f.body_en, self.analyze(self.f.body_en, g)?, t.weight / glosses.len() as f32);
                    }
                    i += n;
                }
                None => i += 1,
            }
        }
        // English → Japanese.
        let is_stop = |w: &str| self.analyze(self.f.body_en, w).map(|t| t.is_empty()).unwrap_or(true);
        for heads in bilingual::english_phrases(lexicon, text, is_stop) {
            for h in &heads {
                add(self.f.body_ja, self.analyze(self.f.body_ja, h)?, t.weight / heads.len() as f32);
            }
        }
        let title_of = |body: Field| if body == self.f.body_en { self.f.title_en } else { self.f.title_ja };
        let mut out = Vec::with_capacity(weights.len() * 2);
        for ((field, term), w) in weights {
            out.push((title_of(field), term.clone(), w * TITLE_BOOST));
            out.push((field, term, w));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
        Ok(out)
    }

    /// BM25 over titles (boosted) and bodies of both languages, filtered by groups inside the
    /// engine (and by language when asked), best first.
    pub fn search(&self, text: &str, k: usize, groups: &[String], lang: Option<&str>) -> Result<LexicalHits> {
        self.search_in(&self.reader.searcher(), text, k, groups, lang)
    }

    /// [`Self::search`] on a given snapshot of the index (one searcher for every read of a
    /// query, so a commit in between cannot mix two versions of a document).
    pub fn search_in(
        &self,
        searcher: &Searcher,
        text: &str,
        k: usize,
        groups: &[String],
        lang: Option<&str>,
    ) -> Result<LexicalHits> {
        let f = &self.f;
        let mut own: Vec<Term> = Vec::new();
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut fields = vec![(f.title_en, TITLE_BOOST), (f.body_en, 1.0), (f.title_ja, TITLE_BOOST), (f.body_ja, 1.0)];
        if let Some(body) = f.body_ja_bi {
            fields.push((body, BIGRAM_WEIGHT));
        }
        let question_words = self.question_words()?;
        for (field, boost) in fields {
            for term in self.analyze(field, text)? {
                if (field == f.body_en || field == f.title_en) && question_words.contains(&term) {
                    continue;
                }
                if Some(field) == f.body_ja_bi && !bigram_carries_meaning(&term) {
                    continue;
                }
                let t = Term::from_field_text(field, &term);
                own.push(t.clone());
                let q = TermQuery::new(t, IndexRecordOption::WithFreqs);
                should.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        let translated = self.translated_terms(text)?;
        let any_translated = !translated.is_empty();
        for (field, term, boost) in translated {
            let q = TermQuery::new(Term::from_field_text(field, &term), IndexRecordOption::WithFreqs);
            should.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
        }
        if should.is_empty() {
            return Ok(LexicalHits::default());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, Box::new(BooleanQuery::new(should))), (Occur::Must, self.group_filter(groups))];
        if let Some(l) = lang {
            let q = TermQuery::new(Term::from_field_text(f.lang, l), IndexRecordOption::Basic);
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(Box::new(q), 0.0))));
        }
        let query = BooleanQuery::new(clauses);
        let top = searcher.search(&query, &TopDocs::with_limit(k).order_by_score())?;
        let hits = top
            .into_iter()
            .map(|(score, addr): (f32, DocAddress)| Ok((self.from_doc(&searcher.doc(addr)?), score)))
            .collect::<Result<Vec<_>>>()?;
        // Did the best hit match any of the query's own words?
        let best_by_translation_only = match hits.first() {
            Some((best, _)) if any_translated => {
                own.is_empty() || {
                    // Driven by the one-document chunk-id clause, so the union of the query's
                    // words is only probed at that document.
                    let words: Vec<(Occur, Box<dyn Query>)> = own
                        .into_iter()
                        .map(|t| {
                            (Occur::Should, Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as Box<dyn Query>)
                        })
                        .collect();
                    let q = BooleanQuery::new(vec![
                        (
                            Occur::Must,
                            Box::new(TermQuery::new(
                                Term::from_field_text(f.chunk_id, &best.id.to_string()),
                                IndexRecordOption::Basic,
                            )) as Box<dyn Query>,
                        ),
                        (Occur::Must, Box::new(BooleanQuery::new(words))),
                    ]);
                    searcher.search(&q, &tantivy::collector::Count)? == 0
                }
            }
            _ => false,
        };
        Ok(LexicalHits { hits, best_by_translation_only })
    }

    /// Stored chunks for the given ids, restricted to the visible groups (ids not in the
    /// committed index are absent from the result).
    pub fn get_many(&self, ids: &[ChunkId], groups: &[String]) -> Result<Vec<IndexedChunk>> {
        self.get_many_in(&self.reader.searcher(), ids, groups)
    }

    /// [`Self::get_many`] on a given snapshot of the index.
    pub fn get_many_in(&self, searcher: &Searcher, ids: &[ChunkId], groups: &[String]) -> Result<Vec<IndexedChunk>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let terms: Vec<Term> = ids.iter().map(|id| Term::from_field_text(self.f.chunk_id, &id.to_string())).collect();
        let query = BooleanQuery::new(vec![
            (Occur::Must, Box::new(TermSetQuery::new(terms)) as Box<dyn Query>),
            (Occur::Must, self.group_filter(groups)),
        ]);
        let docs = searcher.search(&query, &DocSetCollector)?;
        docs.into_iter().map(|a| Ok(self.from_doc(&searcher.doc(a)?))).collect()
    }

    /// Ids of all chunks of one source.
    pub fn ids_of_source(&self, source: &str) -> Result<Vec<ChunkId>> {
        let searcher = self.reader.searcher();
        let q = TermQuery::new(Term::from_field_text(self.f.source, source), IndexRecordOption::Basic);
        let docs = searcher.search(&q, &DocSetCollector)?;
        let mut ids = Vec::with_capacity(docs.len());
        for a in docs {
            let d: TantivyDocument = searcher.doc(a)?;
            if let Some(id) = d.get_first(self.f.chunk_id).and_then(|v| v.as_str()).and_then(ChunkId::parse) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Whether some committed chunk has this normalized-text hash.
    pub fn has_text_hash(&self, hash: &str) -> Result<bool> {
        let q = TermQuery::new(Term::from_field_text(self.f.text_hash, hash), IndexRecordOption::Basic);
        Ok(self.reader.searcher().search(&q, &tantivy::collector::Count)? > 0)
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}
