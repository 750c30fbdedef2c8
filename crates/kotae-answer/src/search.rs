//! One query against the knowledge base, as every caller runs it (`kotae search`,
//! `POST /api/search`): the text NFKC-normalized as at ingest and in answers, embedded when the
//! mode needs it, searched with the caller's access groups.

use std::time::Instant;

use kotae_index::{Fusion, Hit, KnowledgeIndex, SearchMode, SearchRequest};
use kotae_models::{Embedder, InputKind};
use serde::Serialize;

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct SearchQuery<'a> {
    pub text: &'a str,
    pub mode: SearchMode,
    pub top_k: usize,
    /// The asker's groups (`public` is always included).
    pub groups: Vec<String>,
    pub lang: Option<String>,
    pub fusion: Fusion,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The query as searched (normalized).
    pub text: String,
    pub mode: SearchMode,
    pub hits: Vec<Hit>,
    pub embed_ms: f64,
    pub search_ms: f64,
}

pub fn search(index: &KnowledgeIndex, embedder: Option<&dyn Embedder>, q: &SearchQuery<'_>) -> Result<SearchResult> {
    let text = kotae_ingest::clean::normalize(q.text.trim());
    if text.trim().is_empty() {
        return Err(Error::BadQuestion("the query is empty: give some words to search for".into()));
    }
    let t0 = Instant::now();
    let vector = match (q.mode, embedder) {
        (SearchMode::Bm25, _) => None,
        (_, Some(e)) => e.embed(&[text.as_str()], InputKind::Query)?.vectors.pop(),
        (m, None) => {
            return Err(Error::BadQuestion(format!(
                "{m:?} search needs the embedder (install it with `kotae models fetch`), or use mode bm25"
            )))
        }
    };
    let embed_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let hits = index.search(&SearchRequest {
        text: text.clone(),
        vector,
        mode: q.mode,
        top_k: q.top_k,
        groups: q.groups.clone(),
        lang: q.lang.clone(),
        fusion: q.fusion,
    })?;
    Ok(SearchResult { text, mode: q.mode, hits, embed_ms, search_ms: t1.elapsed().as_secs_f64() * 1e3 })
}
