//! `kotae search`: one query against the knowledge base.

use anyhow::Result;
use kotae_index::{Hit, KnowledgeIndex, SearchMode, SearchRequest};
use kotae_models::{Embedder, InputKind};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub query: String,
    pub top_k: Option<usize>,
    pub mode: Option<SearchMode>,
    pub groups: Vec<String>,
    pub lang: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SearchOutput {
    pub query: String,
    pub mode: SearchMode,
    pub hits: Vec<Hit>,
    pub embed_ms: f64,
    pub search_ms: f64,
}

pub fn run_search(
    cfg: &Config,
    index: &KnowledgeIndex,
    embedder: Option<&dyn Embedder>,
    o: &SearchOptions,
) -> Result<SearchOutput> {
    let text = kotae_ingest::clean::normalize(o.query.trim());
    anyhow::ensure!(!text.is_empty(), "the query is empty: give some words to search for");
    let mode = o.mode.unwrap_or(cfg.search.mode);
    let t0 = std::time::Instant::now();
    let vector = match (mode, embedder) {
        (SearchMode::Bm25, _) => None,
        (_, Some(e)) => e.embed(&[text.as_str()], InputKind::Query)?.vectors.pop(),
        (_, None) => anyhow::bail!("{mode:?} search needs the embedder; install it with `kotae models fetch`"),
    };
    let embed_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = std::time::Instant::now();
    let req = SearchRequest {
        text: text.clone(),
        vector,
        mode,
        top_k: o.top_k.unwrap_or(cfg.search.top_k),
        groups: o.groups.clone(),
        lang: o.lang.clone(),
        fusion: cfg.search.fusion,
    };
    let hits = index.search(&req)?;
    Ok(SearchOutput { query: o.query.clone(), mode, hits, embed_ms, search_ms: t1.elapsed().as_secs_f64() * 1e3 })
}

pub fn print_hits(out: &SearchOutput) {
    if out.hits.is_empty() {
        println!("no results for \"{}\"", out.query);
        return;
    }
    for h in &out.hits {
        let snippet: String = h.text.chars().take(160).collect::<String>().replace('\n', " ");
        let flags = if h.flags.is_empty() { String::new() } else { format!(" flagged: {}", h.flags.join(", ")) };
        println!("{}. [{:.3}] {} — {} ({}){flags}\n   {}", h.rank, h.score, h.source, h.section, h.lang, snippet);
    }
}
