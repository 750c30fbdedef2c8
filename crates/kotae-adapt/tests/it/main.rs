//! Fine-tuning with tiny random models written in the test: the trainable model matches
//! candle's inference models, loss falls, resume is exact, merge and PEFT export are right;
//! and the head classifier on a separable toy set.

mod head;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kotae_adapt::data::Tokenized;
use kotae_adapt::export;
use kotae_adapt::lm::{Arch, Batch};
use kotae_adapt::train::{read_metrics, RunOptions, TrainConfig};
use kotae_adapt::{BaseModel, LoraConfig, TrainableLm};
use kotae_models::{CandleGenerator, ChatMessage, GeneratorOptions, GgufEngine, Role};

#[path = "../../../kotae-models/tests/support/tiny_gguf.rs"]
mod tiny_gguf;
use tiny_gguf::{Tiny, HIDDEN};

/// A two-layer model of `arch` in GGUF (f32), tied embeddings. Qwen2 gets attention biases and
/// grouped-query attention (4 heads, 2 key/value heads).
fn write_gguf(path: &Path, arch: &'static str) {
    let (heads, kv_heads) = if arch == "qwen2" { (4, 2) } else { (2, 2) };
    let t = Tiny {
        arch,
        layers: 2,
        heads,
        kv_heads,
        eos: 257,
        untied_output: false,
        std: 0.3,
        norm_noise: 0.1,
        ..Tiny::llama()
    };
    tiny_gguf::write_gguf(path, &t);
}

fn lora(r: usize, dropout: f64) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout,
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
        unfreeze_layers: vec![],
    }
}

/// Last-position logits of `ids` through the trainable model.
fn last_logits(m: &TrainableLm, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let h = m.hidden(&t, None).unwrap();
    let last = h.squeeze(0).unwrap().narrow(0, ids.len() - 1, 1).unwrap();
    m.logits(&last).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The examples a tiny model memorises: short chats, answers in the loss.
fn memo_set(m: &TrainableLm) -> Vec<Tokenized> {
    let pairs = [("color?", "blue"), ("name?", "kotae"), ("city?", "tokyo"), ("day?", "monday")];
    pairs
        .iter()
        .map(|(q, a)| {
            let ex = kotae_adapt::data::Example {
                kind: kotae_adapt::data::ExampleKind::Inquiry,
                messages: vec![ChatMessage::new(Role::User, *q), ChatMessage::new(Role::Assistant, *a)],
                text: String::new(),
                lang: "en".into(),
                source: "t".into(),
                group: q.to_string(),
            };
            kotae_adapt::data::tokenize(&m.base.format, &ex, 128).unwrap().unwrap().0
        })
        .collect()
}

fn setup(arch: &'static str, dir: &Path, cfg: LoraConfig, seed: u64) -> TrainableLm {
    let path = dir.join(format!("{arch}.gguf"));
    if !path.exists() {
        write_gguf(&path, arch);
    }
    let base = BaseModel::load(&path, &Device::Cpu).unwrap();
    TrainableLm::new(base, cfg, DType::F32, seed).unwrap()
}

#[test]
fn trainable_model_matches_candle_inference_models() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let m = setup(arch, dir.path(), lora(4, 0.0), 1);
        assert_eq!(m.config().arch, if arch == "llama" { Arch::Llama } else { Arch::Qwen2 });
        let ids: Vec<u32> = "hello kotae, how are you".bytes().map(u32::from).collect();
        let ours = last_logits(&m, &ids);
        let mut g = CandleGenerator::load(
            &dir.path().join(format!("{arch}.gguf")),
            &GeneratorOptions {
                name: arch.into(),
                device: Device::Cpu,
                prefill_chunk: 512,
                engine: GgufEngine::Candle,
            },
        )
        .unwrap();
        let theirs = g.forward_logits(&ids).unwrap();
        let d = max_abs_diff(&ours, &theirs);
        assert!(d < 1e-3, "{arch}: max |Δlogit| = {d}");
    }
}

#[test]
fn loss_falls_on_a_memorisable_set_and_the_merged_model_matches() {
    let dir = tempfile::tempdir().unwrap();
    let m = setup("qwen2", dir.path(), lora(8, 0.0), 2);
    let data = memo_set(&m);
    let cfg = TrainConfig {
        learning_rate: 2e-2,
        warmup_steps: 2,
        epochs: 0,
        max_steps: 40,
        batch_size: 2,
        grad_accum: 2,
        eval_every: 10,
        patience: 0,
        save_every: 100,
        max_len: 64,
        ..Default::default()
    };
    let run = dir.path().join("run");
    let opts =
        RunOptions { dir: run.clone(), config: cfg, resume: false, stop_after: None, progress: false, cancel: None };
    let s = kotae_adapt::train::train(&m, &data, &data, &opts).unwrap();
    let metrics = read_metrics(&run).unwrap();
    let first = metrics.first().unwrap().loss;
    let last = metrics.last().unwrap().loss;
    assert!(last < first * 0.3, "loss {first} → {last}");
    assert!(s.best_val_loss.unwrap() < s.first_val_loss.unwrap());
    assert!(run.join("loss.svg").exists());

    // Merged weights = base + scale·B·A: the merged model (written as a Hugging Face folder and
    // loaded by the serving code) gives the adapted model's logits.
    let ids: Vec<u32> = data[0].ids.clone();
    let adapted = last_logits(&m, &ids);
    let base_only = setup("qwen2", dir.path(), lora(8, 0.0), 2);
    assert!(max_abs_diff(&adapted, &last_logits(&base_only, &ids)) > 1e-2, "training changed nothing");
    let merged_dir = dir.path().join("merged");
    export::save_merged_hf(&m, &merged_dir).unwrap();
    let mut g = CandleGenerator::load(
        &merged_dir,
        &GeneratorOptions {
            name: "merged".into(),
            device: Device::Cpu,
            prefill_chunk: 512,
            engine: Default::default(),
        },
    )
    .unwrap();
    let d = max_abs_diff(&adapted, &g.forward_logits(&ids).unwrap());
    assert!(d < 1e-3, "merged HF model differs by {d}");
    let gguf = dir.path().join("merged.gguf");
    export::save_merged_gguf(&m, &gguf).unwrap();
    let mut q = CandleGenerator::load(
        &gguf,
        &GeneratorOptions { name: "q".into(), device: Device::Cpu, prefill_chunk: 512, engine: Default::default() },
    )
    .unwrap();
    // The GGUF serves, and read back (dequantized, Llama rows un-permuted) every matrix is the
    // merged one up to 8-bit rounding: names, layout and values are right.
    assert!(q.forward_logits(&ids).unwrap().iter().all(|x| x.is_finite()));
    let back = BaseModel::load(&gguf, &Device::Cpu).unwrap();
    for (name, w) in m.merged_weights().unwrap() {
        let r = &back.weights[&name];
        let amax = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let d = (w - r).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= amax / 100.0, "{name}: max |Δ| {d} (max |w| {amax})");
    }

    // Adapter written in PEFT's layout and read back into a fresh model.
    let adir = dir.path().join("adapter");
    export::save_adapter(&m, &adir, "tiny-qwen2").unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    let names: HashMap<String, Tensor> =
        candle_core::safetensors::load(adir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let a = &names["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"];
    let b = &names["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims(), &[8, HIDDEN]);
    assert_eq!(b.dims(), &[HIDDEN, 8]);
    assert_eq!(names.len(), 2 * 7 * 2);
    let fresh = setup("qwen2", dir.path(), lora(8, 0.0), 99);
    export::load_adapter(&fresh, &adir).unwrap();
    assert!(max_abs_diff(&adapted, &last_logits(&fresh, &ids)) < 1e-5);
    let wrong = setup("qwen2", dir.path(), lora(4, 0.0), 99);
    assert!(export::load_adapter(&wrong, &adir).unwrap_err().to_string().contains("r=8"));
}

#[test]
fn an_interrupted_and_resumed_run_repeats_the_uninterrupted_losses() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lora(4, 0.1);
    cfg.unfreeze_layers = vec![1];
    let cfg_t = TrainConfig {
        learning_rate: 1e-2,
        warmup_steps: 3,
        epochs: 0,
        max_steps: 12,
        batch_size: 2,
        grad_accum: 2,
        eval_every: 4,
        patience: 0,
        save_every: 5,
        max_len: 64,
        ..Default::default()
    };
    let run_once = |name: &str, stop: Option<usize>, resume: bool| {
        let m = setup("llama", dir.path(), cfg.clone(), 5);
        let data = memo_set(&m);
        let opts = RunOptions {
            dir: dir.path().join(name),
            config: cfg_t.clone(),
            resume,
            stop_after: stop,
            progress: false,
            cancel: None,
        };
        kotae_adapt::train::train(&m, &data, &data[..2], &opts).unwrap()
    };
    run_once("straight", None, false);
    let s = run_once("broken", Some(7), false);
    assert!(s.interrupted);
    assert_eq!(s.steps, 7);
    let s = run_once("broken", None, true);
    assert_eq!(s.resumed_from, Some(7));
    assert_eq!(s.steps, 12);
    let a = read_metrics(&dir.path().join("straight")).unwrap();
    let b = read_metrics(&dir.path().join("broken")).unwrap();
    assert_eq!(a.len(), 12);
    assert_eq!(b.len(), 12);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert!((x.loss - y.loss).abs() < 1e-9, "step {}: {} vs {}", x.step, x.loss, y.loss);
        assert_eq!(x.val_loss.map(|v| (v * 1e9).round()), y.val_loss.map(|v| (v * 1e9).round()));
    }
}

#[test]
fn only_answer_tokens_count_in_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let m = setup("llama", dir.path(), lora(2, 0.0), 1);
    let t = &memo_set(&m)[0];
    let trained: String =
        t.ids.iter().zip(&t.train).filter(|(_, k)| **k).map(|(i, _)| m.base.format.decode(&[*i]).unwrap()).collect();
    assert_eq!(trained, "blue", "{trained:?}");
    // The end-of-turn marker is learned too (the model must learn to stop).
    let last_trained = t.ids.iter().zip(&t.train).filter(|(_, k)| **k).map(|(i, _)| *i).next_back().unwrap();
    assert_eq!(last_trained, 257);
    let b = Batch::new(&[t]);
    assert_eq!(b.target_tokens(), 5);
}

#[test]
fn bad_settings_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    write_gguf(&path, "llama");
    let base = BaseModel::load(&path, &Device::Cpu).unwrap();
    let mut c = lora(4, 0.0);
    c.target_modules = vec!["qkv".into()];
    let e = TrainableLm::new(base, c, DType::F32, 0).err().unwrap().to_string();
    assert!(e.contains("unknown target module 'qkv'") && e.contains("q_proj"), "{e}");
    let base = BaseModel::load(&path, &Device::Cpu).unwrap();
    let mut c = lora(4, 0.0);
    c.unfreeze_layers = vec![7];
    let e = TrainableLm::new(base, c, DType::F32, 0).err().unwrap().to_string();
    assert!(e.contains("has 2 layers"), "{e}");
    std::fs::write(dir.path().join("bad.gguf"), b"not a gguf").unwrap();
    assert!(BaseModel::load(&dir.path().join("bad.gguf"), &Device::Cpu).is_err());
}

/// On a GPU (a `--features cuda` build with a device): the same tiny model gives the CPU's
/// logits in f32 and trains in bf16.
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_cpu_and_trains_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    write_gguf(&path, "qwen2");
    let gpu = Device::new_cuda(0).expect("a CUDA device");
    let cpu = TrainableLm::new(BaseModel::load(&path, &Device::Cpu).unwrap(), lora(4, 0.0), DType::F32, 3).unwrap();
    let cuda = TrainableLm::new(BaseModel::load(&path, &gpu).unwrap(), lora(4, 0.0), DType::F32, 3).unwrap();
    let ids: Vec<u32> = "hello kotae".bytes().map(u32::from).collect();
    let t = |d: &Device| Tensor::new(ids.as_slice(), d).unwrap().unsqueeze(0).unwrap();
    let a = cpu.hidden(&t(&Device::Cpu), None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = cuda
        .hidden(&t(&gpu), None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-3);
    // The GPU's training ops (graph_ops: no frozen-weight gradients, attention recomputed in
    // the backward pass, fused loss) give the CPU's loss and adapter gradients.
    assert!(cuda.graph_ops && !cpu.graph_ops);
    for m in [&cpu, &cuda] {
        for p in m.lora.values() {
            let b = Tensor::ones(p.b.as_tensor().shape(), DType::F32, m.device()).unwrap();
            p.b.set(&(b * 0.05).unwrap()).unwrap();
        }
    }
    let mut data = memo_set(&cpu);
    data[1].ids.extend_from_slice(&[104, 105, 106]);
    data[1].train.extend_from_slice(&[true, true, true]);
    let refs: Vec<&Tokenized> = data.iter().collect();
    let batch = Batch::new(&refs);
    let run = |m: &TrainableLm| {
        let (loss, _) = m.loss(&batch, None).unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<f32> = m
            .trainable()
            .iter()
            .flat_map(|(_, v)| {
                g.get(v.as_tensor())
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        (loss.to_device(&Device::Cpu).unwrap().to_scalar::<f32>().unwrap(), grads)
    };
    let ((l1, g1), (l2, g2)) = (run(&cpu), run(&cuda));
    assert!((l1 - l2).abs() < 1e-3, "{l1} vs {l2}");
    let scale = g1.iter().fold(0f32, |a, &b| a.max(b.abs()));
    assert!(scale > 0.0 && max_abs_diff(&g1, &g2) < 1e-3 * scale.max(1.0), "{}", max_abs_diff(&g1, &g2));
    let m = TrainableLm::new(BaseModel::load(&path, &gpu).unwrap(), lora(8, 0.0), DType::BF16, 2).unwrap();
    let data = memo_set(&m);
    let cfg = TrainConfig {
        learning_rate: 2e-2,
        warmup_steps: 2,
        epochs: 0,
        max_steps: 30,
        batch_size: 2,
        grad_accum: 2,
        eval_every: 10,
        patience: 0,
        save_every: 100,
        max_len: 64,
        ..Default::default()
    };
    let run = dir.path().join("run");
    kotae_adapt::train::train(
        &m,
        &data,
        &data,
        &RunOptions { dir: run.clone(), config: cfg, resume: false, stop_after: None, progress: false, cancel: None },
    )
    .unwrap();
    let metrics = read_metrics(&run).unwrap();
    assert!(metrics.last().unwrap().loss < metrics[0].loss * 0.5);
}

/// The padded, batched attention (the GPU default) gives the packed path's loss and gradients,
/// for sequences of different lengths.
#[test]
fn batched_attention_matches_the_packed_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    write_gguf(&path, "qwen2");
    let mut m = TrainableLm::new(BaseModel::load(&path, &Device::Cpu).unwrap(), lora(4, 0.0), DType::F32, 3).unwrap();
    // Non-zero B, so that the gradients of A are not all zero.
    for p in m.lora.values() {
        let b = Tensor::randn(0f32, 0.2, p.b.as_tensor().shape(), &Device::Cpu).unwrap();
        p.b.set(&b).unwrap();
    }
    let mut data = memo_set(&m);
    data[1].ids.extend_from_slice(&[104, 105, 106]);
    data[1].train.extend_from_slice(&[true, true, true]);
    let refs: Vec<&Tokenized> = data.iter().collect();
    assert!(refs.iter().any(|s| s.ids.len() != refs[0].ids.len()), "lengths must differ");
    let batch = Batch::new(&refs);
    let run = |m: &TrainableLm| {
        let (loss, _) = m.loss(&batch, None).unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<f32> = m
            .trainable()
            .iter()
            .flat_map(|(_, v)| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    assert!(!m.batched_attention, "the CPU default is the packed form");
    let (l1, g1) = run(&m);
    m.batched_attention = true;
    let (l2, g2) = run(&m);
    assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
    let scale = g1.iter().fold(0f32, |a, &b| a.max(b.abs()));
    assert!(scale > 0.0);
    assert!(max_abs_diff(&g1, &g2) < 1e-4 * scale.max(1.0), "{}", max_abs_diff(&g1, &g2));
    // And so do the GPU's training ops (graph_ops), run here on the CPU, in both layouts.
    m.graph_ops = true;
    for batched in [true, false] {
        m.batched_attention = batched;
        let (l3, g3) = run(&m);
        assert!((l1 - l3).abs() < 1e-5, "{l1} vs {l3}");
        assert!(max_abs_diff(&g1, &g3) < 1e-4 * scale.max(1.0), "{}", max_abs_diff(&g1, &g3));
    }
    // With a layer unfrozen too: its matrices, biases and norm weights get the same gradients.
    let mut cfg = lora(4, 0.0);
    cfg.unfreeze_layers = vec![0];
    let mut m = TrainableLm::new(BaseModel::load(&path, &Device::Cpu).unwrap(), cfg, DType::F32, 3).unwrap();
    for p in m.lora.values() {
        p.b.set(&Tensor::randn(0f32, 0.2, p.b.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
    }
    assert!(m.trainable().iter().any(|(n, _)| n.ends_with("input_layernorm.weight")));
    let (l1, g1) = run(&m);
    m.graph_ops = true;
    m.batched_attention = true;
    let (l2, g2) = run(&m);
    assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
    let scale = g1.iter().fold(0f32, |a, &b| a.max(b.abs()));
    assert!(max_abs_diff(&g1, &g2) < 1e-4 * scale.max(1.0), "{}", max_abs_diff(&g1, &g2));
}

/// Inquiries become examples in the serving prompt: the inquiry among sources of other files,
/// answered with its citation; every third one also shown only the others and declined; with
/// `inquiries_with_sources` off, closed-book chats.
#[test]
fn inquiries_are_taught_with_their_sources_and_without_them_the_decline() {
    use kotae_adapt::data::{examples_from_chunks, DataOptions, DataReport, ExampleKind, KbChunk};
    let dir = tempfile::tempdir().unwrap();
    let m = setup("qwen2", dir.path(), lora(4, 0.0), 1);
    let chunk = |source: &str, ordinal: u32, inquiry: bool, text: &str, lang: &str| KbChunk {
        source: source.into(),
        ordinal,
        inquiry,
        section: vec!["S".into()],
        text: text.into(),
        lang: lang.into(),
        span: (0, text.len() as u64),
    };
    let chunks = vec![
        chunk("logs/it.csv", 0, true, "Q: How do I reset my password?\nA: Use the self-service portal.", "en"),
        chunk("logs/it.csv", 1, true, "Q: VPNにつながりません\nA: SecureLinkを再起動してください。", "ja"),
        chunk("manuals/a.md", 0, false, "Meeting rooms are booked in the portal under Facilities.", "en"),
        chunk("manuals/b.md", 0, false, "Expenses are reimbursed on the 25th of each month.", "en"),
        chunk("logs/hr.jsonl", 0, true, "Q: How many days of leave do I get?\nA: Ten days in the first year.", "en"),
    ];
    let mut report = DataReport::default();
    let ex = examples_from_chunks(&chunks, &DataOptions::default(), &m.base.format, &mut report).unwrap();
    let inquiries: Vec<_> = ex.iter().filter(|e| e.kind == ExampleKind::Inquiry).collect();
    assert_eq!(inquiries.len(), 3, "{report:?}");
    for e in &inquiries {
        let system = &e.messages[0].content;
        let answer = &e.messages.last().unwrap().content;
        // The cited source is the inquiry itself, among others from other files.
        let n: usize = answer.rsplit('[').next().unwrap().trim_end_matches(']').parse().unwrap();
        let block = system.split(&format!("[{n}] ")).nth(1).unwrap();
        assert!(block.starts_with(&e.source), "{answer} cites [{n}]: {system}");
        assert!(system.matches("manuals/").count() + system.matches("logs/").count() >= 2, "{system}");
        assert_eq!(e.messages[e.messages.len() - 2].role, Role::User);
    }
    let declines: Vec<_> = ex.iter().filter(|e| e.kind == ExampleKind::Decline).collect();
    assert!(!declines.is_empty());
    for d in &declines {
        let question = &d.messages[d.messages.len() - 2].content;
        let q_text = chunks.iter().find(|c| c.source == d.source).unwrap().text.clone();
        assert!(q_text.contains(question.as_str()), "{question}");
        // Its own inquiry is not among the sources it is shown.
        let answer_line = q_text.split("\nA: ").nth(1).unwrap();
        assert!(!d.messages[0].content.contains(answer_line), "{}", d.messages[0].content);
        assert!(d.messages.last().unwrap().content.contains("could not find"), "{:?}", d.messages.last());
    }
    // Closed-book chats when asked.
    let opts = DataOptions { inquiries_with_sources: false, ..Default::default() };
    let ex = examples_from_chunks(&chunks, &opts, &m.base.format, &mut DataReport::default()).unwrap();
    assert!(ex.iter().filter(|e| e.kind == ExampleKind::Inquiry).all(|e| e.messages.len() == 2));
    assert!(ex.iter().all(|e| e.kind != ExampleKind::Decline));
}
