//! `kotae search`: one query against the knowledge base.

use anyhow::Result;
use kotae_index::{Hit, KnowledgeIndex, SearchMode};
use kotae_models::Embedder;
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
    let r = kotae_answer::search(
        index,
        embedder,
        &kotae_answer::SearchQuery {
            text: &o.query,
            mode: o.mode.unwrap_or(cfg.search.mode),
            top_k: o.top_k.unwrap_or(cfg.search.top_k),
            groups: o.groups.clone(),
            lang: o.lang.clone(),
            fusion: cfg.search.fusion,
        },
    )?;
    Ok(SearchOutput {
        query: o.query.clone(),
        mode: r.mode,
        hits: r.hits,
        embed_ms: r.embed_ms,
        search_ms: r.search_ms,
    })
}

pub fn print_hits(out: &SearchOutput) {
    print_hit_list(&out.query, &out.hits);
}

/// Hits as `kotae search` prints them (also those a server returns for `--server`).
pub fn print_hit_list(query: &str, hits: &[Hit]) {
    if hits.is_empty() {
        println!("no results for \"{query}\"");
        return;
    }
    for h in hits {
        let snippet: String = h.text.chars().take(160).collect::<String>().replace('\n', " ");
        let flags = if h.flags.is_empty() { String::new() } else { format!(" flagged: {}", h.flags.join(", ")) };
        println!("{}. [{:.3}] {} — {} ({}){flags}\n   {}", h.rank, h.score, h.source, h.section, h.lang, snippet);
    }
}
