//! The `kotae` application: configuration and the commands behind the CLI. `main.rs` only
//! parses arguments; integration tests call these functions directly.

pub mod answer_eval;
pub mod config;
pub mod corpus;
pub mod embedder_tune;
pub mod eval;
pub mod finetune;
pub mod guard_cli;
pub mod guard_eval;
pub mod ingest;
pub mod models;
pub mod nightly;
pub mod pdf;
pub mod remote;
pub mod report;
pub mod search;
pub mod serve;

use anyhow::{Context, Result};
use kotae_index::{IndexConfig, KnowledgeIndex};
use kotae_models::BertEmbedder;

use config::Config;

/// Load the configured embedder (CPU), with the knowledge base's adapter when it has one
/// (`kotae finetune embedder`).
pub fn load_embedder(cfg: &Config) -> Result<BertEmbedder> {
    let base = load_base_embedder(cfg)?;
    let dir = embedder_tune::adapter_dir(cfg);
    if dir.join("adapter.json").exists() {
        return embedder_tune::with_adapter(base, &dir);
    }
    Ok(base)
}

/// The configured embedder as published, without an adapter.
pub fn load_base_embedder(cfg: &Config) -> Result<BertEmbedder> {
    Ok(kotae_models::registry::load_embedder(
        &cfg.models_dir(),
        &cfg.embedder.model,
        cfg.embedder.batch_tokens,
        cfg.embedder.encoder_engine()?,
        &candle_device()?,
    )?)
}

fn candle_device() -> Result<kotae_models::candle::Device> {
    Ok(kotae_models::candle::Device::Cpu)
}

/// Open (or create) the configured knowledge base.
pub fn open_index(cfg: &Config, dim: Option<usize>) -> Result<KnowledgeIndex> {
    open_index_as(cfg, dim, cfg.embedder_id())
}

/// Open the knowledge base whatever embedder its vectors came from (to re-embed it).
pub fn open_index_any_embedder(cfg: &Config) -> Result<KnowledgeIndex> {
    open_index_as(cfg, None, String::new())
}

/// Open, without writing or locking, the knowledge base another process writes in the shared
/// data folder (`server.role = "replica"`): every read catches up with its latest commit.
pub fn follow_index(cfg: &Config, dim: usize) -> Result<KnowledgeIndex> {
    let ic = index_config(cfg, Some(dim), cfg.embedder_id());
    KnowledgeIndex::follow(&ic).with_context(|| format!("cannot follow knowledge base {}", cfg.kb_dir().display()))
}

fn open_index_as(cfg: &Config, dim: Option<usize>, embedder: String) -> Result<KnowledgeIndex> {
    let ic = index_config(cfg, dim, embedder);
    KnowledgeIndex::open(&ic).with_context(|| format!("cannot open knowledge base {}", cfg.kb_dir().display()))
}

fn index_config(cfg: &Config, dim: Option<usize>, embedder: String) -> IndexConfig {
    let dict = kotae_index::store::ipadic_path(&cfg.models_dir());
    IndexConfig {
        dir: cfg.kb_dir(),
        embedder,
        dim,
        ja_dictionary: Some(dict),
        lexicon: Some(kotae_index::store::lexicon_path(&cfg.models_dir())),
        cross_lingual_weight: cfg.search.cross_lingual_weight,
        links: cfg.ingest.links.clone(),
        hnsw: kotae_index::vector::HnswSettings {
            m: cfg.search.hnsw_m,
            ef_construct: cfg.search.hnsw_ef_construct,
            ef_search: cfg.search.hnsw_ef,
        },
        server: (!cfg.vector_store.url.is_empty()).then(|| kotae_index::vector_server::ServerConfig {
            url: cfg.vector_store.url.clone(),
            api_key: Some(cfg.vector_store.api_key.clone()).filter(|k| !k.is_empty()),
            collection: if cfg.vector_store.collection.is_empty() {
                format!("kotae_{}", cfg.kb)
            } else {
                cfg.vector_store.collection.clone()
            },
            shards: Some(cfg.vector_store.shards).filter(|n| *n > 0),
            replicas: Some(cfg.vector_store.replicas).filter(|n| *n > 0),
        }),
    }
}
