//! `kotae serve` and `kotae ask`: answers from the knowledge base with the configured
//! generator.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use kotae_answer::{Answer, Answerer, Question, RetrievalSettings};
use kotae_models::{Embedder, GeneratorOptions, GeneratorWorker};
use kotae_server::{AppState, Engine};

use crate::config::Config;

/// The generator's device: CPU, or the first CUDA GPU when built with `cuda`.
pub fn generator_device(cfg: &Config) -> Result<kotae_models::candle::Device> {
    match cfg.generator.device.as_str() {
        "cuda" => kotae_models::candle::Device::new_cuda(0)
            .context("generator.device = \"cuda\" but no CUDA device is usable (is this a `--features cuda` build?)"),
        _ => Ok(kotae_models::candle::Device::Cpu),
    }
}

/// Load embedder, index and generator and wire them together.
pub fn build_engine(cfg: &Config) -> Result<Engine> {
    let embedder: Arc<dyn Embedder> = Arc::new(crate::load_embedder(cfg)?);
    let index = if cfg.server.role == kotae_server::ServerRole::Replica {
        wait_and_follow(cfg, embedder.dim())?
    } else {
        crate::open_index(cfg, None)?
    };
    index.preload().context("cannot load what search needs")?;
    engine_from(cfg, Arc::new(index), embedder)
}

/// A replica's view of the knowledge base the writer keeps in the shared data folder. A replica
/// started before there is one waits for it (up to 10 minutes): `kotae ingest` makes it, and
/// the writer then gives it its `kb.id`.
fn wait_and_follow(cfg: &Config, dim: usize) -> Result<kotae_index::KnowledgeIndex> {
    let meta = cfg.kb_dir().join("lexical").join("meta.json");
    let t = std::time::Instant::now();
    while !meta.exists() || !cfg.kb_dir().join("kb.id").exists() {
        if t.elapsed() > std::time::Duration::from_secs(600) {
            anyhow::bail!(
                "no knowledge base in {} after 10 minutes: start the writer (server.role = \"all\") on the same data folder",
                cfg.kb_dir().display()
            );
        }
        if t.elapsed().as_secs() % 15 == 0 {
            tracing::info!(path = %meta.display(), "waiting for the writer to create the knowledge base");
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    crate::follow_index(cfg, dim)
}

/// An engine over an index and embedder that are already open (tests share them).
pub fn engine_from(
    cfg: &Config,
    index: Arc<kotae_index::KnowledgeIndex>,
    embedder: Arc<dyn Embedder>,
) -> Result<Engine> {
    // The generator an admin chose for this data folder wins over the configuration's (a
    // restart keeps it); one that no longer loads gives way to the configuration's.
    if let Some(model) = Generators::read_published(cfg) {
        if model != cfg.generator.model {
            match engine_with(cfg, &model, index.clone(), embedder.clone()) {
                Ok(e) => return Ok(e),
                Err(e) => tracing::error!(generator = %model, error = %format!("{e:#}"),
                    "the data folder's generator (generator.json) does not load: serving the configured one"),
            }
        }
    }
    engine_with(cfg, &cfg.generator.model.clone(), index, embedder)
}

/// The engine with `model` (a catalog name, a path, or a path relative to the data folder) as
/// its generator, served under that name.
fn engine_with(
    cfg: &Config,
    model: &str,
    index: Arc<kotae_index::KnowledgeIndex>,
    embedder: Arc<dyn Embedder>,
) -> Result<Engine> {
    let mut cfg = cfg.clone();
    cfg.generator.model = Generators::resolve(&cfg, model);
    let cfg = &cfg;
    let opts = GeneratorOptions {
        name: model.to_string(),
        device: generator_device(cfg)?,
        prefill_chunk: cfg.generator.prefill_chunk,
        engine: cfg.generator.gguf_engine()?,
    };
    let generator = kotae_models::registry::load_generator(&cfg.models_dir(), &cfg.generator.model, &opts)
        .with_context(|| format!("cannot load generator {}", cfg.generator.model))?;
    let heads_seen = kotae_server::heads::Classifiers::stamp(&cfg.data_dir.join("heads"));
    let classifiers = load_classifiers(cfg)?;
    let lm_states = lm_states_for(cfg, &classifiers, Some(&generator))?;
    let worker =
        GeneratorWorker::spawn_parallel(Box::new(generator), cfg.server.queue_capacity, cfg.server.parallel_answers)?;
    let retrieval = RetrievalSettings { mode: cfg.search.mode, fusion: cfg.search.fusion };
    let mut answer_cfg = cfg.answer_config();
    if answer_cfg.generator_languages.is_empty() {
        // The catalog knows which of its generators write which languages (SmolLM2: English only).
        if let Ok(spec) = kotae_models::registry::spec(&cfg.generator.model) {
            answer_cfg.generator_languages = spec.languages.iter().map(|l| l.to_string()).collect();
        }
    }
    let mut answerer =
        Answerer::new(index.clone(), Some(embedder.clone()), worker.format().clone(), retrieval, answer_cfg);
    if let Some(guard) = load_guard(cfg, &classifiers)? {
        answerer = answerer.with_guard(guard).with_lm_states(lm_states);
    }
    // `/api/classify` serves the heads on the embedder; the guard's head on the generator's
    // states is the guard's alone. New heads a fine-tuning job writes are taken up while
    // serving, by this process and every replica of the data folder; the guard's safety head too.
    let on_embedder = |m: BTreeMap<String, Arc<kotae_models::Head>>| -> BTreeMap<_, _> {
        m.into_iter().filter(|(_, h)| !h.card.embedder.contains("@L")).collect()
    };
    let c = cfg.clone();
    let classifiers = kotae_server::heads::Classifiers::watching(
        &cfg.data_dir.join("heads"),
        heads_seen,
        on_embedder(classifiers),
        move || load_classifiers(&c).map(on_embedder).map_err(|e| format!("{e:#}")),
    );
    if let Some(guard) = answerer.guard().cloned() {
        classifiers.on_change(move |heads| guard.set_classifier(heads.get("safety").cloned()));
    }
    let knowledge: Arc<dyn kotae_server::documents::Knowledge> = Arc::new(LiveKnowledge {
        cfg: cfg.clone(),
        index: index.clone(),
        embedder: embedder.clone(),
        admin_rules: Default::default(),
    });
    Ok(Engine {
        answerer,
        worker,
        index,
        embedder: Some(embedder),
        retrieval,
        embedder_name: cfg.embedder.model.clone(),
        classifiers,
        knowledge: Some(knowledge),
    })
}

/// The generators an admin may serve (`/admin/api/generator`): the installed catalog
/// generators, the configured one, and fine-tuned models in the data folder
/// (`runs/<run>/merged-q8_0.gguf`, as `kotae finetune lora` writes them). The choice is
/// published in `<data-dir>/generator.json`.
pub struct Generators {
    cfg: Config,
}

impl Generators {
    const FILE: &'static str = "generator.json";

    pub fn new(cfg: &Config) -> Self {
        Self { cfg: cfg.clone() }
    }

    /// `model` as the generator loader takes it: a relative path that names a file or folder
    /// in the data folder (a fine-tuned model) made absolute; catalog names, absolute paths
    /// and paths relative to the working folder (`generator.model`) as they are.
    fn resolve(cfg: &Config, model: &str) -> String {
        let p = std::path::Path::new(model);
        if p.is_relative() && kotae_models::registry::spec(model).is_err() && cfg.data_dir.join(p).exists() {
            cfg.data_dir.join(p).display().to_string()
        } else {
            model.to_string()
        }
    }

    fn read_published(cfg: &Config) -> Option<String> {
        let text = std::fs::read_to_string(cfg.data_dir.join(Self::FILE)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["model"].as_str().map(str::to_string)
    }
}

impl kotae_server::generators::GeneratorSwitch for Generators {
    fn choices(&self) -> Vec<String> {
        let models = self.cfg.models_dir();
        let mut out: Vec<String> = kotae_models::registry::CATALOG
            .iter()
            .filter(|m| m.kind == kotae_models::registry::ModelKind::Generator)
            .filter(|m| kotae_models::registry::gguf_path(&models, m.name).is_ok())
            .map(|m| m.name.to_string())
            .collect();
        if !out.contains(&self.cfg.generator.model) {
            out.push(self.cfg.generator.model.clone());
        }
        let mut runs: Vec<String> = std::fs::read_dir(self.cfg.data_dir.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("merged-q8_0.gguf").is_file())
            .filter_map(|e| e.file_name().to_str().map(|n| format!("runs/{n}/merged-q8_0.gguf")))
            .collect();
        runs.sort();
        out.extend(runs);
        out
    }

    fn load(&self, current: &Engine, model: &str) -> Result<Engine, String> {
        let embedder = current.embedder.clone().ok_or("the embedder is not loaded")?;
        engine_with(&self.cfg, model, current.index.clone(), embedder).map_err(|e| format!("{e:#}"))
    }

    fn publish(&self, model: &str) -> Result<(), String> {
        let path = self.cfg.data_dir.join(Self::FILE);
        let tmp = self.cfg.data_dir.join(format!(".{}.new", Self::FILE));
        let body = serde_json::json!({ "model": model });
        std::fs::write(&tmp, serde_json::to_vec_pretty(&body).map_err(|e| e.to_string())?)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn published(&self) -> Option<String> {
        Self::read_published(&self.cfg)
    }
}

/// The admin API's way to change the served knowledge base: the same ingestion as
/// `kotae ingest`, on the index the server searches (each commit is visible at once).
struct LiveKnowledge {
    cfg: Config,
    index: Arc<kotae_index::KnowledgeIndex>,
    embedder: Arc<dyn Embedder>,
    /// The folder rules set through the admin API (the server loads them from the state
    /// database before each job and listing).
    admin_rules: std::sync::RwLock<Vec<kotae_server::store::AccessRuleRow>>,
}

impl LiveKnowledge {
    /// The configuration a run uses: kotae.toml's with the admins' folder rules.
    fn cfg(&self) -> Config {
        crate::ingest::with_admin_rules(&self.cfg, &self.admin_rules.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// An ingestion run on the served index, reporting to an admin job.
    fn run(
        &self,
        mut opts: crate::ingest::IngestOptions,
        progress: std::sync::Arc<kotae_server::documents::Progress>,
    ) -> Result<serde_json::Value, String> {
        opts.quiet = true;
        opts.watch = Some(crate::ingest::Watch(std::sync::Arc::new(move |p: &crate::ingest::IngestProgress| {
            progress(serde_json::to_value(p).unwrap_or_default())
        })));
        let handle = crate::ingest::EmbedderHandle::with(&self.cfg, self.embedder.as_ref());
        let s = crate::ingest::run_ingest(&self.cfg(), &self.index, &handle, &opts).map_err(|e| format!("{e:#}"))?;
        serde_json::to_value(&s).map_err(|e| e.to_string())
    }
}

impl kotae_server::documents::Knowledge for LiveKnowledge {
    fn uploads_dir(&self) -> std::path::PathBuf {
        self.cfg.data_dir.join("uploads").join(&self.cfg.kb)
    }

    fn max_file_bytes(&self) -> u64 {
        self.cfg.ingest.max_file_bytes
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        kotae_ingest::FileType::from_path(std::path::Path::new(name)).map(|_| ()).map_err(|e| e.to_string())
    }

    fn ingest(
        &self,
        files: &[std::path::PathBuf],
        groups: &[String],
        progress: std::sync::Arc<kotae_server::documents::Progress>,
    ) -> Result<serde_json::Value, String> {
        let opts =
            crate::ingest::IngestOptions { paths: files.to_vec(), groups: groups.to_vec(), ..Default::default() };
        self.run(opts, progress)
    }

    fn reindex(
        &self,
        force: bool,
        progress: std::sync::Arc<kotae_server::documents::Progress>,
    ) -> Result<serde_json::Value, String> {
        // Every folder a document came from that is still there (the documents of one that is
        // gone are reported, and keep serving).
        let roots: std::collections::BTreeSet<std::path::PathBuf> =
            self.index.manifest().files.values().map(|e| std::path::PathBuf::from(&e.root)).collect();
        let opts = crate::ingest::IngestOptions {
            paths: roots.into_iter().filter(|r| r.is_dir()).collect(),
            only_indexed: true,
            force,
            ..Default::default()
        };
        self.run(opts, progress)
    }

    fn remove(&self, source: &str) -> Result<bool, String> {
        let mut w = self.index.write().map_err(|e| e.to_string())?;
        if !w.manifest().files.contains_key(source) {
            return Ok(false);
        }
        w.remove_source(source).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        self.index.sweep_orphans().map_err(|e| e.to_string())?;
        Ok(true)
    }

    fn kb(&self) -> String {
        self.cfg.kb.clone()
    }

    fn queue(&self) -> String {
        self.index.id().to_string()
    }

    fn rule_path(&self, path: &str) -> Result<String, String> {
        let p = std::path::Path::new(path);
        let c = std::fs::canonicalize(p).map_err(|e| {
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            format!("no folder or file {path} on the server ({e}); a rule names a path as the server sees it: absolute, or relative to its working directory {cwd}")
        })?;
        Ok(c.display().to_string())
    }

    fn set_admin_rules(&self, rules: Vec<kotae_server::store::AccessRuleRow>) {
        *self.admin_rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    fn access_rules(&self) -> serde_json::Value {
        let admin = self.admin_rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rules: Vec<serde_json::Value> = self
            .cfg()
            .ingest
            .access
            .iter()
            .map(|r| {
                let path = std::fs::canonicalize(&r.path).unwrap_or_else(|_| r.path.clone()).display().to_string();
                match admin.iter().find(|a| a.path == path) {
                    Some(a) => serde_json::json!({ "path": path, "groups": r.groups, "origin": "admin",
                        "updated_by": a.updated_by, "updated_unix": a.updated_unix }),
                    None => serde_json::json!({ "path": path, "groups": r.groups, "origin": "config" }),
                }
            })
            .collect();
        // The longest folder holding a file decides, so the list reads in that order.
        rules.sort_by_key(|r| std::cmp::Reverse(r["path"].as_str().map_or(0, str::len)));
        serde_json::Value::Array(rules)
    }

    fn documents(&self) -> serde_json::Value {
        // The manifest keeps canonical roots: canonicalize the upload folder once, not per document.
        let uploads = std::fs::canonicalize(self.uploads_dir()).unwrap_or_else(|_| self.uploads_dir());
        let m = self.index.manifest();
        let docs: Vec<serde_json::Value> = m
            .files
            .iter()
            .map(|(source, e)| {
                serde_json::json!({
                    "source": source,
                    "root": e.root,
                    "uploaded": std::path::Path::new(&e.root) == uploads,
                    "groups": e.groups,
                    "chunks": e.chunks,
                    "langs": e.langs,
                    "flagged_chunks": e.flagged,
                    "version": e.hash.chars().take(12).collect::<String>(),
                    "ingested_unix": e.ingested_unix,
                })
            })
            .collect();
        // Who may read what is decided at ingest: the folder rules, the default, the markers.
        serde_json::json!({
            "documents": docs,
            "chunks_total": self.index.num_chunks(),
            "access_rules": self.access_rules(),
            "default_groups": self.cfg.ingest.default_groups,
            "markers": self.cfg.ingest.markers,
        })
    }
}

/// The guardrails as configured: the policy, the built-in and installed lexicons, and the
/// safety head when one is trained (`kotae finetune head --task safety`). `None` when off.
pub fn load_guard(
    cfg: &Config,
    classifiers: &BTreeMap<String, Arc<kotae_models::Head>>,
) -> Result<Option<Arc<dyn kotae_guard::Guard>>> {
    if !cfg.guard.enabled {
        tracing::warn!("the guardrails are off (guard.enabled = false)");
        return Ok(None);
    }
    let head = classifiers.get("safety").cloned();
    if head.is_none() {
        tracing::warn!("no safety head: the guard runs on rules and lexicons only (train one with `kotae finetune head --task safety`)");
    }
    let g = kotae_guard::Guardrails::load(cfg.guard.policy.as_deref(), Some(&cfg.models_dir()), head)?
        .with_lm_probe(classifiers.get(LM_SAFETY).cloned());
    if g.lexicon().len() < 500 {
        tracing::warn!(
            "the Japanese inappropriate-words list is not installed: `kotae models fetch ja-inappropriate-words`"
        );
    }
    Ok(Some(Arc::new(g)))
}

/// The task name of the second safety classifier (on the generator's states).
pub const LM_SAFETY: &str = "safety-lm";

/// The state reader the second safety classifier needs, from `generator` (sharing its
/// weights) or, without one, from the configured generator loaded for it.
pub fn lm_states_for(
    cfg: &Config,
    classifiers: &BTreeMap<String, Arc<kotae_models::Head>>,
    generator: Option<&kotae_models::CandleGenerator>,
) -> Result<Option<Arc<kotae_models::states::LmStates>>> {
    let Some(h) = classifiers.get(LM_SAFETY) else { return Ok(None) };
    let pool: kotae_models::states::StatePool =
        h.card.config["pool"].as_str().unwrap_or("mean").parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let layer = h.card.split_layer;
    let r = match generator {
        Some(g) => g.lm_states(layer, pool),
        None => match crate::finetune::load_lm_states(cfg, layer, pool) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("the second safety classifier cannot run: {e:#}");
                None
            }
        },
    };
    match r {
        Some(r) if r.id() == h.card.embedder => Ok(Some(Arc::new(r))),
        _ => {
            tracing::warn!(
                "the second safety classifier reads {} but the generator cannot give those states (the int8 engine is needed): the guard runs without it",
                h.card.embedder
            );
            Ok(None)
        }
    }
}

/// The trained heads under `<data-dir>/heads/<task>/`, by task. A head trained on another
/// embedder's vectors would classify noise: it is refused with what to do.
pub fn load_classifiers(cfg: &Config) -> Result<BTreeMap<String, Arc<kotae_models::Head>>> {
    let mut out = BTreeMap::new();
    let dir = cfg.data_dir.join("heads");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(out) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.<task>.new` / `.<task>.old`: a fine-tuning job's folders while it swaps a head in.
        if let Some(task) = name.strip_prefix('.').and_then(|n| n.rsplit_once('.')).map(|(t, _)| t) {
            // Left by a crash long ago: ignored (the next job of that task cleans it up).
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < std::time::Duration::from_secs(300));
            if young && !dir.join(task).join("head.json").exists() {
                anyhow::bail!("the {task} head is being replaced (only {name} is there)");
            }
            continue;
        }
        if !e.path().join("head.json").exists() {
            continue;
        }
        let head = kotae_models::Head::load(&e.path()).with_context(|| format!("loading {}", e.path().display()))?;
        // A head on the generator's states reads that generator or nothing.
        if let Some((model, _)) = head.card.embedder.split_once("@L") {
            if model != cfg.generator.model {
                tracing::warn!(
                    "{} reads {}'s states but the generator is {}: it is not used; retrain it with `kotae finetune head --task safety`",
                    e.path().display(),
                    model,
                    cfg.generator.model
                );
                continue;
            }
            out.insert(head.card.task.clone(), Arc::new(head));
            continue;
        }
        // A head reads the sentence vector, or (tuned) the token states below its own layers:
        // an adapted embedder changes the first always, the second only above its split.
        let id = cfg.embedder_id();
        let adapter_split = kotae_models::adapter::EmbedderAdapter::card(&crate::embedder_tune::adapter_dir(cfg))
            .map(|c| c.split_layer)
            .unwrap_or(usize::MAX);
        let same_base = head.card.embedder == cfg.embedder.model
            || head.card.embedder.strip_prefix(&cfg.embedder.model).is_some_and(|r| r.starts_with("+ft-"));
        let fits = head.card.embedder == id
            || (head.card.tuned_layers > 0 && same_base && head.card.split_layer <= adapter_split);
        if !fits {
            anyhow::bail!(
                "{} was trained on {} vectors but the embedder is {id}: retrain it with `kotae finetune head --task {}` or remove it",
                e.path().display(),
                head.card.embedder,
                head.card.task
            );
        }
        tracing::info!(task = %head.card.task, labels = head.card.labels.len(), "classifier loaded");
        out.insert(head.card.task.clone(), Arc::new(head));
    }
    Ok(out)
}

/// Answer one question on the command line, streaming the text to `on_text`.
pub fn run_ask(
    cfg: &Config,
    question: &str,
    groups: Vec<String>,
    on_text: impl FnMut(&str) + Send + 'static,
) -> Result<Answer> {
    let engine = build_engine(cfg)?;
    let q = Question { text: question.to_string(), history: Vec::new(), groups };
    Ok(engine.answerer.ask(&q, &engine.worker, on_text)?)
}

/// Open the state database and the server state (no models yet).
pub fn server_state(cfg: &Config) -> Result<Arc<AppState>> {
    let store = crate::guard_cli::open_store(cfg)?;
    let state = AppState::new(cfg.server.clone(), store).map_err(anyhow::Error::msg)?;
    // Where `kotae eval all` writes by default: the admin console shows the latest report.
    state.set_report_dir(cfg.data_dir.join("evals").join("latest"));
    // The nightly evaluation of the running deployment (a second process cannot open the
    // knowledge base this one holds).
    let c = cfg.clone();
    state.set_evaluator(Arc::new(move |engine, opts| {
        crate::nightly::evaluate_served(&c, engine, opts).map_err(|e| format!("{e:#}"))
    }));
    // Changing the generator while serving (`/admin/api/generator`); every process of the
    // data folder follows the choice.
    state.set_generator_switch(Arc::new(Generators::new(cfg)));
    // Fine-tuning jobs (`POST /admin/api/finetune`), run by the writer.
    let c = cfg.clone();
    state.set_trainer(Arc::new(move |engine, opts, progress| {
        if opts["task"] == "lora" {
            return crate::finetune::lora_job(&c, &engine.index, opts, progress.as_ref()).map_err(|e| format!("{e:#}"));
        }
        let embedder = engine.embedder.as_deref().ok_or("the embedder is not loaded")?;
        crate::finetune::head_job(&c, &engine.index, embedder, opts, progress.as_ref()).map_err(|e| format!("{e:#}"))
    }));
    if let Some(slack) = kotae_server::slack::Slack::new(&cfg.slack).map_err(anyhow::Error::msg)? {
        state.set_slack(slack);
    }
    Ok(state)
}

/// Run the server until Ctrl-C / SIGTERM. The port opens at once; `/readyz` turns ready when
/// the models have loaded.
pub fn run_serve(cfg: &Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let state = server_state(cfg)?;
        let listener = tokio::net::TcpListener::bind(&cfg.server.addr)
            .await
            .with_context(|| format!("cannot listen on {} (set server.addr, KOTAE_ADDR or --addr)", cfg.server.addr))?;
        let addr = listener.local_addr()?;
        eprintln!("kotae: listening on http://{addr} (loading models …)");
        let st = state.clone();
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || match build_engine(&c) {
            Ok(engine) => {
                eprintln!("kotae: ready — generator {}, {} chunks", engine.worker.name(), engine.index.num_chunks());
                eprintln!("kotae: chat at http://{addr}/chat, admin console at http://{addr}/admin, widget: <script src=\"http://{addr}/widget.js\" defer></script>");
                st.set_engine(engine);
            }
            Err(e) => {
                eprintln!("kotae: models failed to load: {e:#}");
                st.set_load_error(format!("{e:#}"));
            }
        });
        kotae_server::serve(state, listener, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
