use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kotae::config::{Config, Overrides};
use kotae::{eval, finetune, ingest, models, search};
use kotae_index::SearchMode;
use kotae_models::Embedder;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kotae: your company's own answer service.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Global {
    /// Config file (default: ./kotae.toml if present) [env: KOTAE_CONFIG]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory for models and knowledge bases [env: KOTAE_DATA_DIR] [default: ./kotae-data]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Knowledge base name inside the data directory [env: KOTAE_KB] [default: default]
    #[arg(long, global = true)]
    kb: Option<String>,
    /// Compute threads for inference [env: KOTAE_THREADS]
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log as JSON lines
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Guardrails: check a text, screen user-written text before training, review the quarantine
    Guard {
        #[command(subcommand)]
        cmd: GuardCmd,
    },
    /// Ingest manuals and inquiry logs (files or folders)
    Ingest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Who may read the ingested documents (`public` = everyone). Folder rules in
        /// `[[ingest.access]]` win over it; without either, a document keeps the groups it had,
        /// else gets `ingest.default_groups`, else is skipped (never silently public)
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Remove files that disappeared from the given folders
        #[arg(long)]
        prune: bool,
        /// Print the summary as JSON
        #[arg(long)]
        json: bool,
        /// Upload to a running `kotae serve` (which holds the knowledge base) instead, through
        /// its admin API, and follow the ingest job: http://host:port
        #[arg(long)]
        server: Option<String>,
        /// API key for --server (else KOTAE_API_KEY); ingesting needs an admin key
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Search the knowledge base
    Search {
        query: String,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        mode: Option<SearchMode>,
        /// The asker's access groups (public is always included)
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Only chunks in this language (ja, en, …)
        #[arg(long)]
        lang: Option<String>,
        #[arg(long)]
        json: bool,
        /// Ask a running `kotae serve` instead (its /api/search, with the key's access groups)
        #[arg(long)]
        server: Option<String>,
        /// API key for --server (else KOTAE_API_KEY)
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Answer a question from the knowledge base (streams the answer, then its sources)
    Ask {
        question: String,
        /// The asker's access groups (public is always included)
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Print the answer object as JSON
        #[arg(long)]
        json: bool,
    },
    /// Make an API key for a service: prints the key (once) and the `[[server.api_keys]]`
    /// entry to put in kotae.toml, which holds only its SHA-256
    NewKey {
        /// Unique name of the key's holder (owner of its conversations, shown in the audit)
        #[arg(long)]
        name: String,
        /// Access groups its holder may read (repeat or comma-separate)
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Give the key the admin role (admin API)
        #[arg(long)]
        admin: bool,
    },
    /// Run the chat server (HTTP API, SSE streaming, OpenAI-compatible endpoints)
    Serve {
        /// Address to listen on [env: KOTAE_ADDR] [default: 127.0.0.1:8080]
        #[arg(long)]
        addr: Option<String>,
    },
    /// Install and list models
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
    /// Evaluate
    Eval {
        #[command(subcommand)]
        cmd: EvalCmd,
    },
    /// Adapt models to the company's data: a classifier head or LoRA fine-tuning
    Finetune {
        #[command(subcommand)]
        cmd: FinetuneCmd,
    },
}

#[derive(Subcommand)]
enum FinetuneCmd {
    /// Transfer learning: a new classification head on the frozen embedder
    Head {
        /// routing (inquiry → category, from the inquiry logs) or safety (safe / harmful / jailbreak)
        #[arg(long, default_value = "routing")]
        task: String,
        #[arg(long, default_value = "knowledge")]
        knowledge: PathBuf,
        /// Output folder [default: <data-dir>/heads/<task>]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Hidden units of the MLP head; 0 trains a linear head
        #[arg(long, default_value_t = 256)]
        hidden: usize,
        #[arg(long, default_value_t = 60)]
        epochs: usize,
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0.2)]
        val_fraction: f64,
        /// Extra safe examples for the safety task (JSONL with a "question" field)
        #[arg(long, value_delimiter = ',', default_value = "evals/answer/out_of_scope.jsonl")]
        safe_extra: Vec<PathBuf>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Fine-tune the embedder's top N layers with the head [default: safety 3, routing 0]
        #[arg(long)]
        tune_layers: Option<usize>,
        /// Epochs when layers are tuned
        #[arg(long, default_value_t = 3)]
        tune_epochs: usize,
        /// Learning rate of the tuned layers
        #[arg(long, default_value_t = 5e-5)]
        tune_lr: f64,
        /// Safety: the generator layer whose states the second classifier reads
        #[arg(long, default_value_t = 9)]
        lm_layer: usize,
        /// Safety: how that layer's token states are pooled (mean or last)
        #[arg(long, default_value = "mean")]
        lm_pool: kotae_models::states::StatePool,
        /// Safety: also train a second classifier on the generator's states (blocks more
        /// harmful prompts, and more of other domains' ordinary questions: see evals/guard/README.md)
        #[arg(long)]
        lm_probe: bool,
    },
    /// Adapt the embedder to this knowledge base (its top layers, contrastively on pairs from
    /// the inquiry logs and the manuals' headings), then re-embed the knowledge base with it
    Embedder {
        /// Top encoder layers trained
        #[arg(long, default_value_t = 2)]
        layers: usize,
        #[arg(long, default_value_t = 4)]
        epochs: usize,
        #[arg(long, default_value_t = 2e-5)]
        lr: f64,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Temperature of the contrastive loss
        #[arg(long, default_value_t = 0.05)]
        temperature: f64,
        /// Fraction of documents held out (early stopping and the before/after report)
        #[arg(long, default_value_t = 0.2)]
        val_fraction: f64,
        /// At most this many training pairs (0: all)
        #[arg(long, default_value_t = 4000)]
        max_pairs: usize,
        /// Epochs without a better held-out MRR before stopping
        #[arg(long, default_value_t = 1)]
        patience: usize,
        /// Weight of the anchor keeping positives' cosines at or above the original's (0: off)
        #[arg(long, default_value_t = 1.0)]
        anchor: f64,
        /// Text for the forgetting check (general-domain pairs before/after)
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "evals/general/general.en.txt,evals/general/general.ja.txt"
        )]
        general_text: Vec<PathBuf>,
        /// Save the adapter without re-embedding the knowledge base
        #[arg(long)]
        no_reembed: bool,
        /// Only re-embed: finish an interrupted re-embedding, or put a saved adapter to use
        #[arg(long, conflicts_with = "remove")]
        reembed: bool,
        /// Go back to the original embedder (the knowledge base is re-embedded with it)
        #[arg(long)]
        remove: bool,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Fine-tuning: LoRA adapters (and optionally whole layers) on the generator
    Lora {
        /// Catalog generator, GGUF file or Hugging Face folder
        #[arg(long, default_value = "smollm2-135m-instruct")]
        base: String,
        #[arg(long, default_value = "knowledge")]
        knowledge: PathBuf,
        /// Run folder (checkpoints, metrics, exports) [default: <data-dir>/runs/lora-<base>]
        #[arg(long)]
        run_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        r: usize,
        #[arg(long, default_value_t = 16.0)]
        alpha: f64,
        #[arg(long, default_value_t = 0.05)]
        dropout: f64,
        #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj")]
        targets: Vec<String>,
        /// Decoder layers trained in full besides the adapters
        #[arg(long, value_delimiter = ',')]
        unfreeze_layers: Vec<usize>,
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// Optimizer steps (overrides --epochs)
        #[arg(long, default_value_t = 0)]
        max_steps: usize,
        #[arg(long, default_value_t = 2e-4)]
        lr: f64,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        #[arg(long, default_value_t = 2)]
        grad_accum: usize,
        #[arg(long, default_value_t = 768)]
        max_len: usize,
        #[arg(long, default_value_t = 20)]
        eval_every: usize,
        #[arg(long, default_value_t = 3)]
        patience: usize,
        #[arg(long, default_value_t = 0.15)]
        val_fraction: f64,
        /// Also train on the manuals as plain text (continued pre-training)
        #[arg(long)]
        text: bool,
        /// Leave out the grounded examples made from manual sections
        #[arg(long)]
        no_grounded: bool,
        /// Continue from the run folder's checkpoint
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32 (CPU), bf16 or f16 (CUDA)
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Text for the forgetting check (general perplexity before/after)
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "evals/general/general.en.txt,evals/general/general.ja.txt"
        )]
        general_text: Vec<PathBuf>,
        /// Held-out questions answered before and after in the model card
        #[arg(long, default_value_t = 5)]
        compare_answers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Install models: the embedder and the Japanese dictionary by default
    Fetch {
        names: Vec<String>,
        /// Everything in the catalog, the small generators included (the larger hub-only
        /// generators are fetched by name)
        #[arg(long)]
        all: bool,
    },
    /// Show installed models (with --all, the catalog too)
    List {
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum GuardCmd {
    /// Check one text in one direction (input, output, training, document) and print the verdict
    Check {
        text: String,
        #[arg(long, default_value = "input")]
        direction: String,
    },
    /// Screen conversations and feedback for training: what fails goes to the quarantine,
    /// what passes to <data-dir>/training/screened.jsonl
    Screen {
        #[arg(long)]
        json: bool,
    },
    /// List the quarantine (pending by default), or release / reject one entry
    Quarantine {
        /// pending, released, rejected or all
        #[arg(long, default_value = "pending")]
        status: String,
        /// Let this entry into training data (an admin judged it harmless)
        #[arg(long, value_name = "ID")]
        release: Option<i64>,
        /// Keep this entry out for good
        #[arg(long, value_name = "ID")]
        reject: Option<i64>,
    },
}

#[derive(Subcommand)]
enum EvalCmd {
    /// The guardrails on labelled harmful and benign prompts (ja, en): block rates per
    /// category, latency, and HarmBench as an outside test
    Guard {
        #[arg(long, default_value = "evals/guard")]
        dir: PathBuf,
        /// dev, heldout (report only: never tune on it) or all
        #[arg(long, default_value = "dev")]
        split: String,
        /// Floors and ceilings to enforce (exit 1 when missed); `none` reports only
        #[arg(long, default_value = "evals/guard/thresholds.toml")]
        thresholds: PathBuf,
        #[arg(long)]
        json: bool,
        /// List every false positive and miss
        #[arg(long)]
        verbose: bool,
    },
    /// Retrieval quality on the golden set
    Retrieval {
        #[arg(long, default_value = "evals/retrieval/golden.jsonl")]
        golden: PathBuf,
        /// Floors to enforce (exit 1 below them); `none` reports only
        #[arg(long, default_value = "evals/retrieval/thresholds.toml")]
        thresholds: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also write both candidate lists of every query, before fusion, to this JSONL file
        #[arg(long, value_name = "FILE")]
        dump: Option<PathBuf>,
    },
    /// The answers themselves on the gold set (key facts, declines, citations, support,
    /// language, repetition, latency), through the same path as `kotae ask`
    Answer {
        #[arg(long, default_value = "evals/answer")]
        dir: PathBuf,
        /// dev, heldout (report only: never tune on it) or all
        #[arg(long, default_value = "dev")]
        split: String,
        #[arg(long, value_delimiter = ',', default_value = "ja,en")]
        lang: Vec<String>,
        /// Only N questions of each file, spread over it (a quick look)
        #[arg(long)]
        limit: Option<usize>,
        /// Floors and ceilings to enforce (exit 1 when missed); `none` reports only
        #[arg(long, default_value = "evals/answer/quality.toml")]
        thresholds: PathBuf,
        #[arg(long)]
        json: bool,
        /// Print every answer that missed a fact, answered an unanswerable question, drifted or repeated
        #[arg(long)]
        verbose: bool,
    },
    /// Every suite (retrieval, answers, support check, guardrails, the seed's risks,
    /// performance) against this deployment's data, in one process: the history goes into
    /// SQLite, the run is compared with the thresholds and the last good run (exit 1 on a
    /// regression), and a self-contained HTML report and JSON are written. The nightly job.
    All {
        /// The folder with retrieval/, answer/ and guard/
        #[arg(long, default_value = "evals")]
        evals: PathBuf,
        /// Answer split: dev, heldout (report only) or all
        #[arg(long, default_value = "dev")]
        split: String,
        /// Only N answer questions per file, spread over it (CI's fast subset)
        #[arg(long)]
        limit: Option<usize>,
        /// Harmful prompts per language sent through the whole answer path
        #[arg(long, default_value_t = 10)]
        red_team: usize,
        /// Where report.html and report.json go [default: <data-dir>/evals/latest]
        #[arg(long)]
        out: Option<PathBuf>,
        /// The SQLite history [default: <data-dir>/evals/history.sqlite]
        #[arg(long)]
        history: Option<PathBuf>,
        /// Evaluate a running `kotae serve` at this URL in its own process (its eval.dir, its
        /// data directory), with the admin API key in $KOTAE_API_KEY: how a scheduler evaluates
        /// a deployment whose server holds the knowledge base
        #[arg(long, conflicts_with_all = ["out", "history", "evals"])]
        server: Option<String>,
    },
    /// How the grounding check (which drops unsupported answer sentences) agrees with hand
    /// labels of answer sentences
    SupportCheck {
        #[arg(long, default_value = "evals/answer/support_labels.jsonl")]
        labels: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Whether the relevance threshold answers what the documents cover and declines the rest
    AnswerScope {
        #[arg(long, default_value = "evals/retrieval/golden.jsonl")]
        golden: PathBuf,
        #[arg(long, default_value = "evals/answer/out_of_scope.jsonl")]
        out_of_scope: PathBuf,
        /// Answer-eval cases too (each says whether the documents answer it); never a
        /// held-out split when fitting
        #[arg(long, num_args = 0.., default_values = ["evals/answer/ja.dev.jsonl", "evals/answer/en.dev.jsonl"])]
        cases: Vec<PathBuf>,
        /// Floors to enforce (exit 1 below them); `none` reports only
        #[arg(long, default_value = "evals/answer/thresholds.toml")]
        thresholds: PathBuf,
        /// Write every question's gate signals and decision here (JSON lines)
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Print an `[answer.gate]` fitted to these questions (for kotae.toml)
        #[arg(long)]
        fit: bool,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    kotae_kernels::keep_freed_memory();
    // The PDF extraction child (see `kotae::pdf`): nothing else starts.
    if std::env::args().nth(1).as_deref() == Some(kotae::pdf::HELPER_ARG) {
        return kotae::pdf::helper_main();
    }
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KOTAE_LOG").unwrap_or_else(|_| "warn,qdrant_edge=error".into());
    if cli.global.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// An evaluation's thresholds file (`none`: report only, check nothing).
fn load_thresholds(path: &std::path::Path) -> Result<Option<toml::Table>> {
    if path == std::path::Path::new("none") {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read thresholds {}: run from the repository root or pass --thresholds FILE (or none)",
            path.display()
        )
    })?;
    Ok(Some(toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let g = cli.global;
    let cfg = Config::load(&Overrides { config: g.config, data_dir: g.data_dir, kb: g.kb, threads: g.threads })?;
    // Inference thread count: candle and rayon read this before their pools start.
    std::env::set_var("RAYON_NUM_THREADS", cfg.threads.to_string());
    // PDFs are parsed in a child process with time and memory limits.
    match std::env::current_exe() {
        Ok(exe) => kotae::pdf::install(kotae::pdf::limits_for(&cfg, &exe)),
        Err(e) => tracing::warn!(error = %e, "cannot find this program's path: PDFs are parsed in-process"),
    }
    match cli.cmd {
        Cmd::Models { cmd: ModelsCmd::Fetch { names, all } } => {
            let names = if all {
                models::all_names()
            } else if names.is_empty() {
                models::default_set(&cfg)
            } else {
                names
            };
            for n in names {
                eprintln!("fetching {n} …");
                let m = match models::fetch(&cfg, &n) {
                    Ok(m) => m,
                    // The Japanese word list needs npm; without it the guard still runs on
                    // its built-in lists, so the rest of the set is fetched.
                    Err(e) if n == models::JA_WORDS => {
                        eprintln!("warning: {n}: {e:#}");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                println!("{:<24} {:>9.1} MB  {}", m.name, m.total_bytes() as f64 / 1e6, m.source);
            }
        }
        Cmd::Models { cmd: ModelsCmd::List { all } } => models::print_list(&cfg, all)?,
        Cmd::NewKey { name, groups, admin } => {
            let key = kotae_server::auth::new_key();
            let entry = kotae_server::ApiKey {
                name,
                key: None,
                key_sha256: Some(kotae_server::auth::key_digest(&key)),
                groups: groups.into_iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
                role: if admin { kotae_server::Role::Admin } else { kotae_server::Role::User },
            };
            #[derive(serde::Serialize)]
            struct Entry {
                api_keys: Vec<kotae_server::ApiKey>,
            }
            let toml =
                toml::to_string(&Entry { api_keys: vec![entry] })?.replace("[[api_keys]]", "[[server.api_keys]]");
            eprintln!("The key (shown once; Kotae keeps only its SHA-256):");
            println!("{key}");
            eprintln!("\nAdd to kotae.toml:\n\n{toml}");
        }
        Cmd::Ingest { paths, groups, prune, json, server: Some(server), api_key } => {
            if prune {
                anyhow::bail!("--prune works on the server's machine only; remove documents with DELETE /admin/api/documents/{{source}} or the admin console");
            }
            let remote = kotae::remote::Remote::connect(&server, api_key)?;
            let job = remote.ingest(&paths, &groups, !json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                kotae::remote::print_job(&job);
            }
            if job["status"] != "done" {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Ingest { paths, groups, prune, json, server: None, .. } => {
            let embedder = ingest::EmbedderHandle::lazy(&cfg);
            // An existing knowledge base knows its dimension: the model loads only if needed.
            let index = match kotae::open_index(&cfg, None) {
                Ok(index) => index,
                // Held by another process: say so now, without loading the model first.
                Err(e) if matches!(e.downcast_ref::<kotae_index::Error>(), Some(kotae_index::Error::InUse(_))) => {
                    return Err(e)
                }
                Err(_) => kotae::open_index(&cfg, Some(embedder.get()?.dim()))?,
            };
            let opts = ingest::IngestOptions {
                paths,
                groups,
                prune,
                quiet: json,
                watch: None,
                only_indexed: false,
                force: false,
            };
            // The folder rules admins set while serving count here too.
            let rules =
                kotae::guard_cli::open_store(&cfg)?.access_rules(&cfg.kb).map_err(|e| anyhow::anyhow!("{e}"))?;
            let s = ingest::run_ingest(&ingest::with_admin_rules(&cfg, &rules), &index, &embedder, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                ingest::print_summary(&s);
            }
            // Nothing went in because nobody said who may read it: that is an error.
            if s.files_ingested == 0 && s.skipped.iter().any(|k| k.reason == ingest::UNLABELLED) {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Search { query, top_k, mode, groups, lang, json, server: Some(server), api_key } => {
            if !groups.is_empty() || lang.is_some() {
                anyhow::bail!("with --server, the server decides what you may read (your key's groups); leave out --groups and --lang");
            }
            let remote = kotae::remote::Remote::connect(&server, api_key)?;
            let out = remote.search(&query, top_k, mode)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let hits: Vec<kotae_index::Hit> = serde_json::from_value(out["hits"].clone())
                    .map_err(|e| anyhow::anyhow!("search: the server's hits are not Kotae hits: {e}"))?;
                search::print_hit_list(&query, &hits);
            }
        }
        Cmd::Search { query, top_k, mode, groups, lang, json, server: None, .. } => {
            let mode_used = mode.unwrap_or(cfg.search.mode);
            let embedder = match mode_used {
                SearchMode::Bm25 => None,
                _ => Some(kotae::load_embedder(&cfg)?),
            };
            let index = kotae::open_index(&cfg, None)?;
            let o = search::SearchOptions { query, top_k, mode, groups, lang };
            let out = search::run_search(&cfg, &index, embedder.as_ref().map(|e| e as &dyn Embedder), &o)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                search::print_hits(&out);
            }
        }
        Cmd::Ask { question, groups, json } => {
            let stream = !json;
            let a = kotae::serve::run_ask(&cfg, &question, groups, move |t| {
                if stream {
                    use std::io::Write;
                    print!("{t}");
                    let _ = std::io::stdout().flush();
                }
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                // `on_text` streamed what passed (and the quoted evidence, or the extractive
                // answer); a blocked answer ends with its refusal.
                if a.guard.is_some() {
                    print!("{}{}", if a.completion_tokens > 0 { "\n\n" } else { "" }, a.text);
                }
                println!();
                for c in &a.citations {
                    println!("[{}] {} — {}", c.n, c.source, c.section);
                }
                eprintln!(
                    "({:?}; first token {:.0} ms (+{:.0} ms held by the output guard), total {:.0} ms, {} prompt + {} answer tokens)",
                    a.kind,
                    a.timings.first_token_ms,
                    a.timings.guard_hold_ms,
                    a.timings.total_ms,
                    a.prompt_tokens,
                    a.completion_tokens
                );
            }
        }
        Cmd::Finetune {
            cmd:
                FinetuneCmd::Head {
                    task,
                    knowledge,
                    out,
                    hidden,
                    epochs,
                    lr,
                    val_fraction,
                    safe_extra,
                    seed,
                    tune_layers,
                    tune_epochs,
                    tune_lr,
                    lm_layer,
                    lm_pool,
                    lm_probe,
                },
        } => {
            let out = out.unwrap_or_else(|| cfg.data_dir.join("heads").join(&task));
            let config = kotae_adapt::head::HeadConfig {
                hidden,
                epochs,
                learning_rate: lr,
                val_fraction,
                seed,
                tune_layers,
                tune_epochs,
                tune_learning_rate: tune_lr,
                ..Default::default()
            };
            let lm_probe = lm_probe.then_some(finetune::LmProbe { layer: lm_layer, pool: lm_pool });
            finetune::run_head(&cfg, &finetune::HeadJob { task, knowledge, out, config, safe_extra, lm_probe })?;
        }
        Cmd::Finetune {
            cmd:
                FinetuneCmd::Lora {
                    base,
                    knowledge,
                    run_dir,
                    r,
                    alpha,
                    dropout,
                    targets,
                    unfreeze_layers,
                    epochs,
                    max_steps,
                    lr,
                    warmup,
                    batch_size,
                    grad_accum,
                    max_len,
                    eval_every,
                    patience,
                    val_fraction,
                    text,
                    no_grounded,
                    resume,
                    device,
                    dtype,
                    general_text,
                    compare_answers,
                    seed,
                },
        } => {
            let stem =
                std::path::Path::new(&base).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let run_dir = run_dir.unwrap_or_else(|| cfg.data_dir.join("runs").join(format!("lora-{stem}")));
            let job = finetune::LoraJob {
                base,
                knowledge,
                run_dir,
                lora: kotae_adapt::LoraConfig { r, alpha, dropout, target_modules: targets, unfreeze_layers },
                train: kotae_adapt::TrainConfig {
                    learning_rate: lr,
                    warmup_steps: warmup,
                    epochs,
                    max_steps,
                    batch_size,
                    grad_accum,
                    max_len,
                    eval_every,
                    save_every: eval_every,
                    patience,
                    seed,
                    ..Default::default()
                },
                data: kotae_adapt::data::DataOptions {
                    text,
                    grounded: !no_grounded,
                    val_fraction,
                    ..Default::default()
                },
                device,
                dtype,
                resume,
                general_text,
                compare_answers,
                gguf: true,
                chunks: None,
                cancel: None,
            };
            finetune::run_lora(&cfg, &job)?;
        }
        Cmd::Finetune {
            cmd:
                FinetuneCmd::Embedder {
                    layers,
                    epochs,
                    lr,
                    batch_size,
                    temperature,
                    val_fraction,
                    max_pairs,
                    patience,
                    anchor,
                    general_text,
                    no_reembed,
                    reembed,
                    remove,
                    seed,
                },
        } => {
            use kotae::embedder_tune::{self, Target};
            if remove {
                embedder_tune::reembed(&cfg, Target::Base)?;
            } else if reembed {
                embedder_tune::reembed(&cfg, Target::Resume)?;
            } else {
                let config = kotae_adapt::embedder::EmbedderTuneConfig {
                    layers,
                    epochs,
                    learning_rate: lr,
                    batch_size,
                    temperature,
                    val_fraction,
                    max_pairs,
                    patience,
                    anchor,
                    seed,
                    ..Default::default()
                };
                embedder_tune::run(&cfg, &embedder_tune::EmbedderJob { config, general_text, no_reembed })?;
            }
        }
        Cmd::Serve { addr } => {
            let mut cfg = cfg;
            if let Some(a) = addr {
                cfg.server.addr = a;
            }
            kotae::serve::run_serve(&cfg)?;
        }
        Cmd::Guard { cmd: GuardCmd::Check { text, direction } } => {
            let direction = match direction.as_str() {
                "input" => kotae_guard::Direction::Input,
                "output" => kotae_guard::Direction::Output,
                "training" => kotae_guard::Direction::Training,
                "document" => kotae_guard::Direction::Document,
                other => anyhow::bail!("--direction {other}: use input, output, training or document"),
            };
            let classifiers = kotae::serve::load_classifiers(&cfg)?;
            let guard = kotae::serve::load_guard(&cfg, &classifiers)?
                .ok_or_else(|| anyhow::anyhow!("the guardrails are off (guard.enabled = false)"))?;
            let (vector, states) = if guard.wants_vector() && direction != kotae_guard::Direction::Output {
                let (mut v, s) = kotae_guard::encode(guard.as_ref(), &kotae::load_embedder(&cfg)?, &[text.as_str()])?;
                (v.pop(), s.and_then(|mut s| s.pop()))
            } else {
                (None, None)
            };
            let lm_state = match kotae::serve::lm_states_for(&cfg, &classifiers, None)? {
                Some(r) if direction != kotae_guard::Direction::Output => Some(r.features(&text)?),
                _ => None,
            };
            let ctx = kotae_guard::Context {
                vector: vector.as_deref(),
                states: states.as_ref(),
                lm_state: lm_state.as_deref(),
                ..Default::default()
            };
            let v = guard.check(direction, &text, &ctx);
            println!("{}", serde_json::to_string_pretty(&v)?);
            if v.blocked() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Guard { cmd: GuardCmd::Screen { json } } => {
            let r = kotae::guard_cli::screen(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "checked {}, passed {} ({} with personal data redacted, {} released by an admin), quarantined {}; training data: {}",
                    r.checked, r.passed, r.redacted, r.released, r.quarantined, r.out
                );
            }
        }
        Cmd::Guard { cmd: GuardCmd::Quarantine { status, release, reject } } => {
            let store = kotae::guard_cli::open_store(&cfg)?;
            let api = |e: kotae_server::ApiError| anyhow::anyhow!("{e}");
            for (id, st) in release.map(|i| (i, "released")).into_iter().chain(reject.map(|i| (i, "rejected"))) {
                if !store.review_quarantine(id, st).map_err(api)? {
                    anyhow::bail!("no quarantine entry {id}: `kotae guard quarantine --status all` lists them");
                }
                println!("entry {id}: {st}");
            }
            if release.is_none() && reject.is_none() {
                let filter = (status != "all").then_some(status.as_str());
                for q in store.quarantined(filter).map_err(api)? {
                    println!("{}", serde_json::to_string(&q)?);
                }
            }
        }
        Cmd::Eval { cmd: EvalCmd::Guard { dir, split, thresholds, json, verbose } } => {
            let files = kotae::guard_eval::split_files(&dir, &split)?;
            let classifiers = kotae::serve::load_classifiers(&cfg)?;
            let guard = kotae::serve::load_guard(&cfg, &classifiers)?
                .ok_or_else(|| anyhow::anyhow!("the guardrails are off (guard.enabled = false)"))?;
            let embedder = if guard.wants_vector() { Some(kotae::load_embedder(&cfg)?) } else { None };
            let lm = kotae::serve::lm_states_for(&cfg, &classifiers, None)?;
            let mut r = kotae::guard_eval::run_guard_eval(
                &cfg,
                &files,
                guard.clone(),
                embedder.as_ref().map(|e| e as &dyn kotae_models::Embedder),
                lm.as_deref(),
            )?;
            r.lexicon_terms = kotae_guard::Guardrails::load(None, Some(&cfg.models_dir()), None)?.lexicon().len();
            // Thresholds come from the dev split; the held-out split is reported, never tuned on.
            if let Some(t) = load_thresholds(&thresholds)? {
                kotae::guard_eval::check_thresholds(&mut r, &t);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                kotae::guard_eval::print_guard_report(&r, verbose);
            }
            if !r.failures.is_empty() {
                eprintln!("guard evaluation FAILED: {} threshold(s) missed", r.failures.len());
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Eval { cmd: EvalCmd::Answer { dir, split, lang, limit, thresholds, json, verbose } } => {
            let files = kotae::answer_eval::split_files(&dir, &split, &lang)?;
            let cases = kotae::answer_eval::load_limited(&files, limit)?;
            let engine = kotae::serve::build_engine(&cfg)?;
            let mut r = kotae::answer_eval::run_answer_eval(&engine, &cases, !json)?;
            r.files = files.iter().map(|p| p.display().to_string()).collect();
            if let Some(t) = load_thresholds(&thresholds)? {
                kotae::answer_eval::check_thresholds(&mut r, &t);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                kotae::answer_eval::print_report(&r, verbose);
            }
            if !r.failures.is_empty() {
                eprintln!("answer evaluation FAILED: {} threshold(s) missed", r.failures.len());
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Eval { cmd: EvalCmd::All { server: Some(url), split, limit, red_team, .. } } => {
            let key = std::env::var("KOTAE_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .context("set KOTAE_API_KEY to an admin API key of the server (kotae new-key)")?;
            let mut opts = serde_json::json!({ "split": split, "red_team": red_team });
            if let Some(n) = limit {
                opts["limit"] = n.into();
            }
            let r = kotae::nightly::evaluate_remote(&url, &key, &opts, std::time::Duration::from_secs(5))?;
            print!("{}", r["summary"].as_str().unwrap_or_default());
            println!("report (on the server): {}", r["report"].as_str().unwrap_or_default());
            if r["passed"] != true {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Eval { cmd: EvalCmd::All { evals, split, limit, red_team, out, history, server: None } } => {
            let engine = kotae::serve::build_engine(&cfg)?;
            let opts = kotae::nightly::SuiteOptions { evals, answer_split: split, limit, red_team };
            let mut run = kotae::nightly::run_suites(&cfg, &engine, &opts)?;
            let dir = cfg.data_dir.join("evals");
            let mut h = kotae::nightly::History::open(&history.unwrap_or_else(|| dir.join("history.sqlite")))?;
            let out = out.unwrap_or_else(|| dir.join("latest"));
            kotae::nightly::finish(&mut run, &mut h, &out)?;
            print!("{}", kotae::nightly::summary(&run));
            println!("report: {}", out.join("report.html").display());
            if !run.passed() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Eval { cmd: EvalCmd::SupportCheck { labels, json } } => {
            let l = kotae::answer_eval::load_support_labels(&labels)?;
            let r = kotae::answer_eval::support_agreement(&l, cfg.answer.min_support);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "support check at min_support {} on {} hand-labelled sentences ({} unsupported):\n  agreement {:.3}, kappa {:.3}; unsupported: precision {:.3}, recall {:.3}",
                    cfg.answer.min_support,
                    r.n,
                    r.labelled_unsupported,
                    r.agreement,
                    r.kappa,
                    r.unsupported_precision,
                    r.unsupported_recall
                );
                for (lang, (n, a)) in &r.by_lang {
                    println!("  [{lang}] {n} sentences, agreement {a:.3}");
                }
                println!("  disagreements: {}", r.disagreements.join(", "));
            }
        }
        Cmd::Eval { cmd: EvalCmd::AnswerScope { golden, out_of_scope, cases, thresholds, dump, fit, json } } => {
            let embedder = kotae::load_embedder(&cfg)?;
            let index = kotae::open_index(&cfg, None)?;
            let thr = load_thresholds(&thresholds)?;
            let questions = eval::scope_questions(
                &eval::load_golden(&golden)?,
                &eval::load_scope(&out_of_scope)?,
                &kotae::answer_eval::load_cases(&cases)?,
            );
            let (r, items) = eval::run_scope_eval(&cfg, &index, &embedder, questions, thr.as_ref())?;
            if let Some(path) = dump {
                let lines: Vec<String> = items.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
                std::fs::write(&path, lines.join("\n") + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if fit {
                print!("{}", eval::fit_gate(&items));
                return Ok(ExitCode::SUCCESS);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                eval::print_scope(&r);
            }
            if !r.failures.is_empty() {
                eprintln!("answer-scope evaluation FAILED: {} threshold(s) missed", r.failures.len());
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Eval { cmd: EvalCmd::Retrieval { golden, thresholds, json, dump } } => {
            let embedder = kotae::load_embedder(&cfg)?;
            let index = kotae::open_index(&cfg, None)?;
            let golden = eval::load_golden(&golden)?;
            if let Some(path) = dump {
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
                );
                eval::dump_candidates(&cfg, &index, &embedder, &golden, &mut f)?;
                std::io::Write::flush(&mut f)?;
            }
            let thr = load_thresholds(&thresholds)?;
            let r = eval::run_retrieval_eval(&cfg, &index, &embedder, &golden, thr.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                eval::print_report(&r);
            }
            if !r.failures.is_empty() {
                eprintln!("retrieval evaluation FAILED: {} threshold(s) missed", r.failures.len());
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
