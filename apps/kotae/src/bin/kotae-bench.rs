//! Benchmarks that print medians (and, with the Python peer, ratios): embedding throughput,
//! search latency on a large synthetic corpus, HNSW recall against exact search.
//!
//!   kotae-bench embed --threads 1 --out target/bench/passages.json
//!   kotae-bench export-e5 target/bench/e5-hf      # the same weights for sentence-transformers
//!   kotae-bench search --chunks 100000
//!   kotae-bench guard                              # guardrail check latency
//!   kotae-bench corpus target/bench/corpus --docs 10000  # for scripts/bench/ingest_scale.sh
//!
//! Thread count is fixed per process (RAYON_NUM_THREADS is read once), so run one process per
//! setting, side by side with the peer.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kotae::config::{Config, Overrides};
use kotae_index::{ChunkId, FileEntry, IndexedChunk, SearchMode, SearchRequest, VectorFilter, VectorPoint};
use kotae_models::{Embedder, InputKind};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Guardrail latency on one core: the input check of every evals/guard prompt (guard alone
    /// and with the question's embedding), and the output check of every sentence of knowledge/
    Guard {
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Passages/s of the configured embedder on ~200-token passages built from knowledge/
    Embed {
        #[arg(long, default_value_t = 128)]
        n: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Write the passages here (for the sentence-transformers peer)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a synthetic corpus generated from knowledge/ (manuals of many offices and years,
    /// inquiry logs) for ingestion at scale: `kotae ingest <out> --groups public`
    Corpus {
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        docs: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value = "knowledge")]
        knowledge: PathBuf,
        /// One inquiry-log file in this many documents (0: none)
        #[arg(long, default_value_t = 250)]
        docs_per_log: usize,
        /// Rows per inquiry-log file
        #[arg(long, default_value_t = 40)]
        log_rows: usize,
    },
    /// Parse, clean, deduplicate and chunk one file as ingestion does (no embedding): seconds,
    /// rows or chunks kept, duplicates merged. For large inquiry logs: `kotae-bench corpus
    /// /tmp/log --docs 1 --docs-per-log 1 --log-rows 100000`, then this on the CSV
    Parse { file: PathBuf },
    /// Write multilingual-e5-small as a Hugging Face folder (dequantized) for PyTorch peers
    ExportE5 { dir: PathBuf },
    /// Prompt processing, decode and time to first token of a generator on a ~N-token RAG prompt
    Generate {
        /// Catalog name or path
        #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
        model: String,
        #[arg(long, default_value_t = 1000)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        decode: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long, default_value_t = 512)]
        prefill_chunk: usize,
        /// Write the rendered prompt here (for the llama.cpp peer)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// LoRA training throughput (tokens/s, padding excluded) and peak memory on the inquiry
    /// logs of knowledge/; --out writes the exact batches for the PEFT peer
    Lora {
        /// A registered model name, or the path of a GGUF file or Hugging Face folder
        #[arg(long, default_value = "smollm2-135m-instruct")]
        base: String,
        #[arg(long, default_value_t = 8)]
        steps: usize,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        max_len: usize,
        #[arg(long, default_value_t = 8)]
        r: usize,
        #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj")]
        targets: Vec<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        /// cpu, or cuda (a `--features cuda` build)
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, or bf16 / f16 on CUDA
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Train with the graph ops (kotae_adapt::graph_ops) or candle's composed ops;
        /// default: the model's default for the device (graph ops off the CPU)
        #[arg(long)]
        graph_ops: Option<bool>,
        /// Also print where a step's time goes (kotae_adapt::profile: each span waits for the
        /// device, so the run is slower; after one step of warm-up)
        #[arg(long)]
        profile: bool,
    },
    /// One AdamW step on --params f32 weights (default: the three encoder layers a tuned
    /// safety head trains), the fused CPU step against the same step as candle tensor ops,
    /// alternating; medians and the ratio
    Optimizer {
        #[arg(long, default_value_t = 5_322_240)]
        params: usize,
        #[arg(long, default_value_t = 30)]
        steps: usize,
    },
    /// Writes a Hugging Face folder with a base model's config and tokenizer but no weights.
    /// `scripts/gpu/random_weights.py` fills it with random weights of the same shapes, for
    /// training throughput on a machine the real weights cannot be copied to.
    ShapeFolder {
        #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
        base: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// A generator's per-layer states of texts asked as a user message (JSONL with "text"):
    /// little-endian f32, per text and per layer in --layers, the last position's state then
    /// the mean over positions. For probing what the model represents (safety experiments).
    LlmFeatures {
        input: PathBuf,
        out: PathBuf,
        #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
        model: String,
        #[arg(long, value_delimiter = ',', default_value = "6,9,12,15,18,21,23")]
        layers: Vec<usize>,
        #[arg(long, default_value_t = 160)]
        max_tokens: usize,
    },
    /// Fair use under load: a user's time to first token (p50/p95) on an idle server, then
    /// while another client floods `/v1/chat/completions` with `max_tokens` 2048 (as many
    /// answers in flight as it may have), for each `server.parallel_answers` setting. Needs a
    /// knowledge base (`kotae ingest knowledge --groups public`) and the configured generator.
    Flood {
        /// Questions the user asks per setting and condition (from evals/answer/*.dev.jsonl)
        #[arg(long, default_value_t = 8)]
        questions: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        parallel: Vec<usize>,
        /// Seconds the user reads each answer before the next question (0: back to back,
        /// which makes the user a second heavy client)
        #[arg(long, default_value_t = 10.0)]
        think_s: f64,
    },
    /// Search latency p50/p99 per mode on a synthetic corpus of N chunks
    Search {
        #[arg(long, default_value_t = 100_000)]
        chunks: usize,
        #[arg(long, default_value = "target/bench/kb-search")]
        kb_dir: PathBuf,
        /// Vectors in this Qdrant server (gRPC URL) instead of the embedded engine, in a new
        /// collection of their own (scripts/bench/search_server_vs_embedded.sh runs both)
        #[arg(long)]
        qdrant_url: Option<String>,
    },
}

/// What the flooding client asks, again and again: answered from the manuals, at length.
const FLOOD_QUESTION: &str = "What's the deadline for submitting expenses in ExpenseHub? Explain the whole expense process step by step, in as much detail as you can.";

/// Time to the first token of a streamed `/api/chat` answer, ms.
async fn first_token_ms(c: &reqwest::Client, url: &str, key: &str, question: &str) -> Result<f64> {
    let t = Instant::now();
    let resp = c.post(url).bearer_auth(key).json(&serde_json::json!({ "message": question })).send().await?;
    anyhow::ensure!(resp.status() == 200, "HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default());
    let mut resp = resp;
    let mut seen = String::new();
    let mut first = None;
    while let Some(chunk) = resp.chunk().await? {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if first.is_none() && (seen.contains("event: token") || seen.contains("event: done")) {
            first = Some(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    first.context("the answer streamed no token")
}

fn bench_flood(cfg: &Config, questions: usize, parallel: &[usize], think_s: f64) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    // The user's questions: answerable ones of the dev sets, Japanese and English in turn.
    let mut asked = Vec::new();
    for lang in ["ja", "en"] {
        let text = std::fs::read_to_string(format!("evals/answer/{lang}.dev.jsonl"))
            .context("run from the repository root")?;
        let qs: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["answerable"] == true && v["history"].as_array().is_none_or(|h| h.is_empty()))
            .filter_map(|v| v["question"].as_str().map(String::from))
            .collect();
        asked.push(qs);
    }
    let asked: Vec<String> = (0..questions).map(|i| asked[i % 2][i / 2 % asked[i % 2].len()].clone()).collect();
    let embedder: Arc<dyn Embedder> = Arc::new(kotae::load_embedder(cfg)?);
    let index = Arc::new(kotae::open_index(cfg, None)?);
    index.preload()?;
    let (user, flooder) = ("kotae_bench_user_0123456789", "kotae_bench_flood_0123456789");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("setting              condition   TTFT p50 ms   p95 ms   (n={questions}, {think_s} s between questions)   flood answers generated");
    for &p in parallel {
        let mut c = cfg.clone();
        c.server.parallel_answers = p;
        c.server.rate_limit_burst = 100_000;
        c.server.rate_limit_per_minute = 100_000;
        c.server.api_keys = [("user", user), ("flood", flooder)]
            .iter()
            .map(|(name, key)| kotae_server::ApiKey {
                name: name.to_string(),
                key: None,
                key_sha256: Some(kotae_server::auth::key_digest(key)),
                groups: vec!["public".into()],
                role: kotae_server::Role::User,
            })
            .collect();
        // Conversations of the run go to a state of its own, not the knowledge base's.
        let state_dir = PathBuf::from(format!("target/bench/flood-state-{p}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let store = kotae_server::store::Store::open(&state_dir.join("kotae.sqlite3")).map_err(anyhow::Error::msg)?;
        let state = kotae_server::AppState::new(c.server.clone(), store).map_err(anyhow::Error::msg)?;
        state.set_engine(kotae::serve::engine_from(&c, index.clone(), embedder.clone())?);
        let in_flight = c.server.answers_in_flight_per_client;
        let rows: Vec<(String, f64, f64, usize)> = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            let st = state.clone();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                let _ = kotae_server::serve(st, listener, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
            let http = reqwest::Client::builder().no_proxy().build()?;
            let chat = format!("{base}/api/chat");
            first_token_ms(&http, &chat, user, &asked[0]).await?; // warm-up
            let mut rows = Vec::new();
            for flood in [false, true] {
                let stop = Arc::new(AtomicBool::new(false));
                let finished = Arc::new(AtomicUsize::new(0));
                let mut floods = Vec::new();
                if flood {
                    for _ in 0..in_flight {
                        let (http, url, stop, finished) =
                            (http.clone(), format!("{base}/v1/chat/completions"), stop.clone(), finished.clone());
                        floods.push(tokio::spawn(async move {
                            while !stop.load(Ordering::SeqCst) {
                                let body = serde_json::json!({
                                    "model": "kotae", "stream": true, "max_tokens": 2048,
                                    "messages": [{ "role": "user", "content": FLOOD_QUESTION }],
                                });
                                match http.post(&url).bearer_auth(flooder).json(&body).send().await {
                                    Ok(r) if r.status() == 200 => {
                                        let text = r.text().await.unwrap_or_default();
                                        if text.contains("\"kind\":\"generated\"") {
                                            finished.fetch_add(1, Ordering::SeqCst);
                                        } else if !stop.load(Ordering::SeqCst) {
                                            eprintln!(
                                                "a flood answer was not generated: {}",
                                                &text[text.len().saturating_sub(400)..]
                                            );
                                        }
                                    }
                                    Ok(r) => {
                                        eprintln!("flood refused: HTTP {}", r.status());
                                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                    }
                                    Err(e) => eprintln!("flood failed: {e}"),
                                }
                            }
                        }));
                    }
                    // Let the flood fill the generator first.
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                }
                let mut ttft = Vec::new();
                for q in &asked {
                    ttft.push(first_token_ms(&http, &chat, user, q).await?);
                    tokio::time::sleep(std::time::Duration::from_secs_f64(think_s)).await;
                }
                stop.store(true, Ordering::SeqCst);
                for f in floods {
                    f.abort();
                }
                let name = if flood { "flooded" } else { "idle" };
                rows.push((
                    name.to_string(),
                    percentile(&mut ttft.clone(), 0.5),
                    percentile(&mut ttft, 0.95),
                    finished.load(Ordering::SeqCst),
                ));
                // The flood's answers end (their clients left) before the next condition.
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            let _ = stop_tx.send(());
            let _ = server.await;
            anyhow::Ok(rows)
        })?;
        for (name, p50, p95, done) in &rows {
            println!("parallel_answers={p:<2}  {name:<10}  {p50:>10.0}  {p95:>8.0}              {done}");
        }
        println!("parallel_answers={p:<2}  flooded/idle p95: {:.2}x (goal ≤ 2x)", rows[1].2 / rows[0].2.max(1e-9));
    }
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn knowledge_chunks(embedder: &dyn Embedder) -> Result<Vec<kotae_ingest::Chunk>> {
    let mut out = Vec::new();
    let cfg = kotae_ingest::ChunkerConfig { max_tokens: 200 };
    let count = |s: &str| embedder.count_tokens(s).unwrap_or(s.len());
    for e in walkdir::WalkDir::new("knowledge").sort_by_file_name() {
        let e = e?;
        let Ok(ft) = kotae_ingest::FileType::from_path(e.path()) else {
            continue;
        };
        let bytes = std::fs::read(e.path())?;
        if let Ok((chunks, _)) = kotae_ingest::process_file(&e.path().display().to_string(), &bytes, ft, &cfg, &count) {
            out.extend(chunks);
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    kotae_kernels::keep_freed_memory();
    let cli = Cli::parse();
    // Every figure below is of this build: say which.
    eprintln!(
        "kotae-bench: {} build, {} thread(s)",
        if cfg!(debug_assertions) { "debug (dev profile; dependencies at opt-level 3)" } else { "release" },
        cli.threads
    );
    std::env::set_var("RAYON_NUM_THREADS", cli.threads.to_string());
    let cfg =
        Config::load(&Overrides { data_dir: cli.data_dir.clone(), threads: Some(cli.threads), ..Default::default() })?;
    match cli.cmd {
        Cmd::Guard { repeats } => {
            use kotae_guard::{Context, Direction};
            let classifiers = kotae::serve::load_classifiers(&cfg)?;
            let guard = kotae::serve::load_guard(&cfg, &classifiers)?.context("the guardrails are off")?;
            let files = kotae::guard_eval::split_files(std::path::Path::new("evals/guard"), "all")?;
            let cases = kotae::guard_eval::load_cases(&files)?;
            let e = kotae::load_embedder(&cfg)?;
            let mut embed_ms = Vec::new();
            let mut vectors = Vec::new();
            for c in &cases {
                // The question's one encoder pass: its vector and, for a tuned head, its states.
                let t = Instant::now();
                let (mut v, s) = kotae_guard::encode(guard.as_ref(), &e, &[c.text.as_str()])?;
                vectors.push((v.remove(0), s.and_then(|mut s| s.pop())));
                embed_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let sentences: Vec<String> = knowledge_chunks(&e)?
                .iter()
                .flat_map(|c| kotae_guard::stream::sentences(&c.text).into_iter().map(String::from).collect::<Vec<_>>())
                .filter(|s| !s.trim().is_empty())
                .collect();
            let (mut input_ms, mut output_ms) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                for (c, (v, states)) in cases.iter().zip(&vectors) {
                    let ctx =
                        Context { lang: Some(&c.lang), vector: Some(v), states: states.as_ref(), ..Default::default() };
                    let t = Instant::now();
                    std::hint::black_box(guard.check(Direction::Input, &c.text, &ctx));
                    input_ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
                for s in &sentences {
                    let ctx = Context { lang: Some("ja"), ..Default::default() };
                    let t = Instant::now();
                    std::hint::black_box(guard.check(Direction::Output, s, &ctx));
                    output_ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let pct = |v: &mut Vec<f64>, p: f64| {
                v.sort_by(f64::total_cmp);
                v[((v.len() - 1) as f64 * p).round() as usize]
            };
            println!(
                "guard ({} threads; classifier: {}): {} prompts x {repeats}, {} answer sentences x {repeats}",
                cli.threads,
                guard.wants_vector(),
                cases.len(),
                sentences.len()
            );
            println!(
                "  input check        p50 {:.3} ms  p99 {:.3} ms   (goal p50 < 5 ms; a tuned head's layers included)",
                pct(&mut input_ms, 0.5),
                pct(&mut input_ms, 0.99)
            );
            println!(
                "  question embedding p50 {:.2} ms  p99 {:.2} ms   (shared with retrieval)",
                pct(&mut embed_ms, 0.5),
                pct(&mut embed_ms, 0.99)
            );
            println!(
                "  output sentence    p50 {:.3} ms  p99 {:.3} ms   (goal p50 < 2 ms)",
                pct(&mut output_ms, 0.5),
                pct(&mut output_ms, 0.99)
            );
        }
        Cmd::LlmFeatures { input, out, model, layers, max_tokens } => {
            use kotae_models::{ChatMessage, Generator, Role};
            use std::io::Write;
            let opts = kotae_models::GeneratorOptions {
                name: model.clone(),
                device: kotae_models::candle::Device::Cpu,
                prefill_chunk: 512,
                engine: kotae_models::GgufEngine::Int8,
            };
            let mut g = kotae_models::registry::load_generator(&cfg.models_dir(), &model, &opts)?;
            let fmt = g.format();
            let text = std::fs::read_to_string(&input)?;
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            let t0 = Instant::now();
            let mut tokens = 0usize;
            for (i, line) in text.lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let t = v["text"].as_str().unwrap_or_default();
                let prompt = fmt.render(&[ChatMessage::new(Role::User, fmt.neutralize(t))])?;
                let mut ids = fmt.encode(&prompt)?;
                if ids.len() > max_tokens {
                    let tail = ids[ids.len() - 24..].to_vec();
                    ids.truncate(max_tokens - 24);
                    ids.extend(tail);
                }
                tokens += ids.len();
                let states = g.layer_states(&ids, layers.iter().max().map_or(0, |l| l + 1))?;
                for &l in &layers {
                    let (last, mean) = &states[l.min(states.len() - 1)];
                    for x in last.iter().chain(mean) {
                        w.write_all(&x.to_le_bytes())?;
                    }
                }
                if i % 200 == 0 {
                    eprintln!("{i} texts, {tokens} tokens, {:.0} tok/s", tokens as f64 / t0.elapsed().as_secs_f64());
                }
            }
            w.flush()?;
        }
        Cmd::Generate { model, prompt_tokens, decode, repeats, prefill_chunk, out } => {
            use kotae_models::{ChatMessage, Generator, Role, SamplingParams};
            let opts = kotae_models::GeneratorOptions {
                name: model.clone(),
                device: kotae_models::candle::Device::Cpu,
                prefill_chunk,
                engine: cfg.generator.gguf_engine()?,
            };
            let mut g = kotae_models::registry::load_generator(&cfg.models_dir(), &model, &opts)?;
            let fmt = g.format();
            let e = kotae::load_embedder(&cfg)?;
            let chunks = knowledge_chunks(&e)?;
            // Numbered sources from knowledge/ until the rendered prompt reaches the size.
            let mut sources = String::new();
            let mut prompt = String::new();
            for (i, c) in chunks.iter().filter(|c| c.lang == "en").enumerate() {
                sources.push_str(&format!("[{}] {}\n{}\n\n", i + 1, c.source, c.text));
                let msgs = [
                    ChatMessage::new(Role::System, "Answer from the numbered sources; cite them like [1]."),
                    ChatMessage::new(
                        Role::User,
                        format!("Sources:\n{sources}Question: How do I reserve a meeting room?"),
                    ),
                ];
                prompt = fmt.render(&msgs)?;
                if fmt.count_tokens(&prompt)? >= prompt_tokens {
                    break;
                }
            }
            let n_prompt = fmt.count_tokens(&prompt)?;
            if let Some(out) = &out {
                std::fs::write(out, &prompt)?;
            }
            let params = SamplingParams { max_tokens: decode, repeat_penalty: 1.0, stop: vec![], ..Default::default() };
            let (mut pp, mut tg, mut ttft) = (vec![], vec![], vec![]);
            for _ in 0..repeats {
                let r = g.generate(&prompt, &params, &mut |_| true)?;
                pp.push(r.prompt_tokens_per_s());
                tg.push(r.decode_tokens_per_s());
                ttft.push(r.first_token_ms);
                eprintln!(
                    "  prompt {} tok {:.1} tok/s, decode {} tok {:.1} tok/s, ttft {:.0} ms",
                    r.prompt_tokens,
                    r.prompt_tokens_per_s(),
                    r.completion_tokens,
                    r.decode_tokens_per_s(),
                    r.first_token_ms
                );
            }
            println!(
                "{model} threads={} prompt_tokens={n_prompt}: prompt {:.1} tok/s, decode {:.1} tok/s, ttft {:.0} ms (medians of {repeats})",
                cli.threads,
                percentile(&mut pp, 0.5),
                percentile(&mut tg, 0.5),
                percentile(&mut ttft, 0.5)
            );
        }
        Cmd::Optimizer { params, steps } => bench_optimizer(params, steps)?,
        Cmd::Parse { file } => {
            let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
            let ft = kotae_ingest::FileType::from_path(&file)?;
            let cfg = kotae_ingest::ChunkerConfig { max_tokens: 320 };
            let count = |s: &str| s.chars().count() / 3;
            let t = Instant::now();
            let (chunks, rep) = kotae_ingest::process_file(&file.display().to_string(), &bytes, ft, &cfg, &count)?;
            println!(
                "parse file={} bytes={} chunks={} duplicates_merged={} unresolved_skipped={} seconds={:.2}",
                file.display(),
                bytes.len(),
                chunks.len(),
                rep.duplicates_merged,
                rep.unresolved_skipped,
                t.elapsed().as_secs_f64()
            );
        }
        Cmd::Corpus { out, docs, seed, knowledge, docs_per_log, log_rows } => {
            let spec = kotae::corpus::CorpusSpec { docs, seed, docs_per_log, log_rows };
            let t = Instant::now();
            let st = kotae::corpus::generate(&knowledge, &out, &spec)?;
            println!(
                "corpus docs={} manuals={} logs={} bytes={} seconds={:.1} out={}",
                docs,
                st.manuals,
                st.logs,
                st.bytes,
                t.elapsed().as_secs_f64(),
                out.display()
            );
        }
        Cmd::Embed { n, batch, repeats, out } => {
            let e = kotae::load_embedder(&cfg)?;
            // ~200-token passages: consecutive chunks joined until the budget is reached.
            let chunks = knowledge_chunks(&e)?;
            let mut passages = Vec::new();
            let mut cur = String::new();
            for c in chunks.iter().cycle() {
                if passages.len() == n {
                    break;
                }
                cur.push_str(&c.text);
                cur.push('\n');
                if e.count_tokens(&cur)? >= 200 {
                    passages.push(std::mem::take(&mut cur));
                }
            }
            let tokens: usize = passages.iter().map(|p| e.count_tokens(p).unwrap()).sum();
            if let Some(out) = out {
                std::fs::create_dir_all(out.parent().unwrap_or(&PathBuf::from(".")))?;
                std::fs::write(&out, serde_json::to_string(&passages)?)?;
            }
            let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
            e.embed(&refs[..batch.min(refs.len())], InputKind::Passage)?; // warm-up
            let mut rates = Vec::new();
            for _ in 0..repeats {
                let t = Instant::now();
                for b in refs.chunks(batch) {
                    e.embed(b, InputKind::Passage)?;
                }
                rates.push(passages.len() as f64 / t.elapsed().as_secs_f64());
            }
            let med = percentile(&mut rates, 0.5);
            println!(
                "embed model={} threads={} passages={} mean_tokens={:.0} batch={} median_passages_per_s={:.2}",
                e.name(),
                cli.threads,
                passages.len(),
                tokens as f64 / passages.len() as f64,
                batch,
                med
            );
        }
        Cmd::ExportE5 { dir } => export_e5(&cfg, &dir)?,
        Cmd::Lora { base, steps, batch, max_len, r, targets, out, device, dtype, graph_ops, profile } => {
            let dev = (device.as_str(), dtype.as_str(), graph_ops, profile);
            bench_lora(&cfg, &base, steps, batch, max_len, r, targets, out, cli.threads, dev)?
        }
        Cmd::Search { chunks, kb_dir, qdrant_url } => bench_search(&cfg, chunks, &kb_dir, qdrant_url)?,
        Cmd::Flood { questions, parallel, think_s } => bench_flood(&cfg, questions, &parallel, think_s)?,
        Cmd::ShapeFolder { base, out } => {
            let path = kotae::finetune::base_path(&cfg, &base)?;
            let m = kotae_adapt::BaseModel::load(&path, &kotae_models::candle::Device::Cpu)?;
            kotae_adapt::export::save_hf_metadata(&m.config, &m.format, &out)?;
            println!("wrote {} (config.json, tokenizer.json, tokenizer_config.json; no weights)", out.display());
        }
    }
    Ok(())
}

fn export_e5(cfg: &Config, dir: &PathBuf) -> Result<()> {
    let models = cfg.models_dir().join("multilingual-e5-small");
    let bin = std::fs::read_dir(&models)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "bin"))
        .context("multilingual-e5-small (E5S1) is not installed")?;
    let m = kotae_models::e5s1::load(&bin, &kotae_models::candle::Device::Cpu)?;
    std::fs::create_dir_all(dir)?;
    kotae_models::candle::safetensors::save(&m.tensors, dir.join("model.safetensors"))?;
    let c = &m.config;
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": c.max_position_embeddings, "type_vocab_size": c.type_vocab_size,
        "initializer_range": 0.02, "layer_norm_eps": c.layer_norm_eps, "pad_token_id": c.pad_token_id,
        "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    m.tokenizer.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>"}"#,
    )?;
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )?;
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true}"#,
    )?;
    std::fs::write(dir.join("sentence_bert_config.json"), r#"{"max_seq_length":512,"do_lower_case":false}"#)?;
    println!("wrote {}", dir.display());
    Ok(())
}

fn bench_search(cfg: &Config, n: usize, kb_dir: &PathBuf, qdrant_url: Option<String>) -> Result<()> {
    let e = kotae::load_embedder(cfg)?;
    let base = knowledge_chunks(&e)?;
    let texts: Vec<String> = base.iter().map(|c| format!("{}\n{}", c.section.join(" > "), c.text)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t = Instant::now();
    let base_vecs = e.embed(&refs, InputKind::Passage)?.vectors;
    eprintln!("embedded {} real chunks in {:.1}s", base.len(), t.elapsed().as_secs_f64());
    let sentences: Vec<&str> =
        base.iter().flat_map(|c| c.text.split(['。', '.', '\n'])).filter(|s| s.len() > 10).collect();

    let mut c2 = cfg.clone();
    c2.data_dir = kb_dir.clone();
    c2.vector_store = Default::default();
    if let Some(url) = qdrant_url {
        c2.vector_store.url = url;
        c2.vector_store.collection =
            format!("kotae_bench_{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    }
    let _ = std::fs::remove_dir_all(kb_dir.join("kb"));
    std::fs::create_dir_all(kb_dir)?;
    let models_link = kb_dir.join("models");
    if !models_link.exists() {
        std::os::unix::fs::symlink(std::fs::canonicalize(cfg.models_dir())?, &models_link)?;
    }
    let kb = kotae::open_index(&c2, Some(e.dim()))?;
    // Synthetic corpus: each chunk mixes three real sentences; its vector is a real chunk's vector
    // plus noise, normalized. Deterministic (xorshift).
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t = Instant::now();
    let mut w = kb.write()?;
    let groups = vec!["public".to_string()];
    for start in (0..n).step_by(10_000) {
        let mut points = Vec::new();
        let mut docs = Vec::new();
        for i in start..(start + 10_000).min(n) {
            let b = (rnd() % base.len() as u64) as usize;
            let text =
                (0..3).map(|_| sentences[(rnd() % sentences.len() as u64) as usize]).collect::<Vec<_>>().join("。");
            let mut v: Vec<f32> =
                base_vecs[b].iter().map(|a| a + ((rnd() % 2001) as f32 / 1000.0 - 1.0) * 0.02).collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            let source = format!("synthetic/{:05}.md", i / 10);
            let id = ChunkId::of(&source, "", &format!("{i}{text}"), &groups);
            points.push(VectorPoint {
                id,
                vector: v,
                groups: groups.clone(),
                lang: base[b].lang.clone(),
                source: source.clone(),
            });
            docs.push(IndexedChunk {
                id,
                source,
                kind: "manual".into(),
                section: base[b].section.clone(),
                span: (0, text.len() as u64),
                lang: base[b].lang.clone(),
                text_hash: format!("{i}"),
                text,
                ordinal: i as u32,
                doc_version: "bench".into(),
                groups: groups.clone(),
                timestamp: None,
                ingested_unix: 0,
                flags: vec![],
            });
        }
        w.put_vectors(&points)?;
        let mut by_source: std::collections::BTreeMap<String, Vec<IndexedChunk>> = Default::default();
        for d in docs {
            by_source.entry(d.source.clone()).or_default().push(d);
        }
        for (s, ds) in by_source {
            let entry = FileEntry {
                root: "bench".into(),
                hash: s.clone(),
                groups: groups.clone(),
                chunks: ds.len(),
                ingested_unix: 0,
                ..Default::default()
            };
            w.replace_source(&s, entry, &ds)?;
        }
        w.commit()?;
        eprintln!("  {} chunks written", (start + 10_000).min(n));
    }
    w.finish()?;
    eprintln!("built {} chunks (lexical + vectors + HNSW) in {:.1}s", kb.num_chunks(), t.elapsed().as_secs_f64());

    kb.preload()?;
    let golden = kotae::eval::load_golden(std::path::Path::new("evals/retrieval/golden.jsonl"))?;
    let queries: Vec<String> = golden.iter().map(|g| kotae_ingest::clean::normalize(&g.query)).collect();
    let qrefs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let mut embed_ms = Vec::new();
    let mut qvecs = Vec::new();
    for q in &qrefs {
        let t = Instant::now();
        qvecs.push(e.embed(&[q], InputKind::Query)?.vectors.remove(0));
        embed_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let embed_p50 = percentile(&mut embed_ms.clone(), 0.5);
    println!(
        "search corpus={} queries={} (golden set, 3 passes), vectors: {}{} ({} build)",
        kb.num_chunks(),
        queries.len(),
        kb.vectors().name(),
        if c2.vector_store.url.is_empty() { String::new() } else { format!(" at {}", c2.vector_store.url) },
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!("query embedding: p50 {:.2} ms  p99 {:.2} ms", embed_p50, percentile(&mut embed_ms, 0.99));
    for mode in [SearchMode::Bm25, SearchMode::Dense, SearchMode::Hybrid] {
        let mut ms = Vec::new();
        for _ in 0..3 {
            for (q, v) in queries.iter().zip(&qvecs) {
                let req = SearchRequest {
                    text: q.clone(),
                    vector: Some(v.clone()),
                    mode,
                    top_k: 10,
                    groups: vec![],
                    lang: None,
                    fusion: cfg.search.fusion,
                };
                let t = Instant::now();
                kb.search(&req)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let p50 = percentile(&mut ms, 0.5);
        let p99 = percentile(&mut ms, 0.99);
        let with_embed = if mode == SearchMode::Bm25 { p50 } else { p50 + embed_p50 };
        println!(
            "{:<7} p50 {:>7.2} ms  p99 {:>7.2} ms   with query embedding p50 {:>7.2} ms",
            format!("{mode:?}").to_lowercase(),
            p50,
            p99,
            with_embed
        );
    }
    // Recall of the approximate index against exact search.
    let filter = VectorFilter { groups: vec!["public".into()], lang: None };
    let mut recall = 0.0;
    let mut ann_ms = Vec::new();
    let mut exact_ms = Vec::new();
    for v in &qvecs {
        let t = Instant::now();
        let approx = kb.vectors().search(v, 10, &filter)?;
        ann_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let exact = kb.vectors().search_exact(v, 10, &filter)?;
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let hit = approx.iter().filter(|a| exact.iter().any(|x| x.0 == a.0)).count();
        recall += hit as f64 / exact.len().max(1) as f64;
    }
    println!(
        "dense recall@10 vs exact: {:.3} (hnsw_ef={}, m={}); ann p50 {:.2} ms, exact p50 {:.2} ms",
        recall / qvecs.len() as f64,
        cfg.search.hnsw_ef,
        cfg.search.hnsw_m,
        percentile(&mut ann_ms, 0.5),
        percentile(&mut exact_ms, 0.5)
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench_lora(
    cfg: &Config,
    base: &str,
    steps: usize,
    batch: usize,
    max_len: usize,
    r: usize,
    targets: Vec<String>,
    out: Option<PathBuf>,
    threads: usize,
    (device, dtype, graph_ops, profile): (&str, &str, Option<bool>, bool),
) -> Result<()> {
    use kotae_adapt::train::{micro_batch, RunOptions, TrainConfig};
    let path = kotae::finetune::base_path(cfg, base)?;
    let lora = kotae_adapt::LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.05,
        target_modules: targets.clone(),
        unfreeze_layers: vec![],
    };
    use kotae_models::candle::DType;
    let dev = kotae::finetune::device(device)?;
    let dt = match dtype {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    };
    let mut model = kotae_adapt::TrainableLm::new(kotae_adapt::BaseModel::load(&path, &dev)?, lora, dt, 42)?;
    if let Some(g) = graph_ops {
        model.graph_ops = g;
    }
    // Closed-book chats, as the PEFT baseline reads the same pairs.
    let data = kotae_adapt::data::DataOptions {
        grounded: false,
        inquiries_with_sources: false,
        val_fraction: 0.0,
        ..Default::default()
    };
    let ds = kotae_adapt::data::prepare(std::path::Path::new("knowledge"), &data, &model.base.format, max_len)?;
    let tc = TrainConfig {
        learning_rate: 2e-4,
        warmup_steps: 0,
        epochs: 0,
        max_steps: steps,
        batch_size: batch,
        grad_accum: 1,
        max_len,
        eval_every: usize::MAX,
        save_every: usize::MAX,
        patience: 0,
        seed: 42,
        ..Default::default()
    };
    let batches: Vec<Vec<usize>> = (0..steps).map(|k| micro_batch(k, ds.train.len(), batch, tc.seed)).collect();
    if let Some(o) = &out {
        let seqs: Vec<_> = ds.train.iter().map(|t| serde_json::json!({"ids": t.ids, "train": t.train})).collect();
        let pad = model.base.format.eos_id().unwrap_or(0);
        std::fs::write(o, serde_json::to_string(&serde_json::json!({"pad": pad, "seqs": seqs, "batches": batches}))?)?;
    }
    let dir = tempfile_dir()?;
    if profile {
        // One step first, unrecorded: the first one loads kernels and sizes the memory pool.
        let one = TrainConfig { max_steps: 1, ..tc.clone() };
        let opts = RunOptions {
            dir: dir.clone(),
            config: one,
            resume: false,
            stop_after: None,
            progress: false,
            cancel: None,
        };
        kotae_adapt::train::train(&model, &ds.train, &[], &opts)?;
        kotae_adapt::profile::enable(true);
    }
    let opts =
        RunOptions { dir: dir.clone(), config: tc, resume: false, stop_after: None, progress: false, cancel: None };
    let s = kotae_adapt::train::train(&model, &ds.train, &[], &opts)?;
    if profile {
        kotae_adapt::profile::enable(false);
        println!("where a step's time goes ({steps} steps, every span synchronised):");
        print!("{}", kotae_adapt::profile::report(steps));
    }
    let m = kotae_adapt::train::read_metrics(&dir)?;
    let mut rates: Vec<f64> = m.iter().skip(usize::from(m.len() > 1)).map(|x| x.tokens_per_s).collect();
    let med = percentile(&mut rates, 0.5);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "kotae lora base={base} device={device} dtype={dtype} graph_ops={} threads={threads} steps={steps} batch={batch} max_len={max_len} r={r} targets={} trainable={} median_tokens_per_s={med:.1} peak_rss_mib={:.0}",
        model.graph_ops,
        targets.join(","),
        s.trainable_parameters,
        s.peak_rss_mib.unwrap_or(0.0)
    );
    if let Some(mib) = kotae_adapt::train::gpu_memory_used_mib() {
        println!("gpu memory in use at the end: {mib:.0} MiB (nvidia-smi)");
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("kotae-bench-lora-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// `kotae-bench optimizer`: the fused AdamW step against the tensor-op one, alternating.
fn bench_optimizer(params: usize, steps: usize) -> Result<()> {
    use kotae_models::candle::{Device, Tensor, Var};
    let dev = Device::Cpu;
    // Weights shaped like e5-small's layers: 384×384 and 384×1536 matrices and their biases.
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    let mut n = 0;
    while n < params {
        for s in [vec![384, 384], vec![384], vec![1536, 384], vec![1536], vec![384, 1536]] {
            n += s.iter().product::<usize>();
            shapes.push(s);
        }
    }
    let vars = || -> Result<Vec<(String, Var)>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Ok((format!("w{i}"), Var::from_tensor(&Tensor::randn(0f32, 0.02, s.as_slice(), &dev)?)?)))
            .collect()
    };
    let (a, b) = (vars()?, vars()?);
    let grads: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(0f32, 1e-3, s.as_slice(), &dev))
        .collect::<kotae_models::candle::Result<_>>()?;
    let (mut fused, mut ops) = (kotae_adapt::AdamW::new(&a)?, kotae_adapt::AdamW::new(&b)?);
    let cfg = kotae_adapt::TrainConfig::default();
    let (mut tf, mut to) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = Instant::now();
        ops.step_tensor_ops(&cfg, 1e-4, &b, &grads)?;
        to.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        fused.step(&cfg, 1e-4, &a, &grads)?;
        tf.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let (mo, mf) = (med(&mut to), med(&mut tf));
    println!(
        "AdamW step on {n} f32 weights, {steps} steps each, alternating ({} threads):",
        kotae_models::candle::utils::get_num_threads()
    );
    println!("  tensor ops (baseline)  median {mo:.1} ms");
    println!("  fused                  median {mf:.1} ms   {:.2}x", mo / mf);
    Ok(())
}
