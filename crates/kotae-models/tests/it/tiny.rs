//! Tiny generators with random weights, written in the test as GGUF and as a safetensors
//! folder: template, streaming, stop tokens, stop strings, length and cancellation logic
//! without any downloaded model.

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use kotae_models::{CandleGenerator, ChatMessage, FinishReason, Generator, GeneratorOptions, Role, SamplingParams};

#[path = "../support/tiny_gguf.rs"]
mod tiny_gguf;
use tiny_gguf::{Tiny, FFN, HIDDEN, TEMPLATE};

fn rand(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap()
}

/// A one-layer Llama in GGUF with a byte-level tokenizer; `eos` is the end-of-sequence id.
fn write_gguf(path: &std::path::Path, eos: u32) {
    tiny_gguf::write_gguf(path, &Tiny { eos, ..Tiny::llama() });
}

fn load(path: &std::path::Path) -> CandleGenerator {
    CandleGenerator::load(
        path,
        &GeneratorOptions { name: "tiny".into(), device: Device::Cpu, prefill_chunk: 3, engine: Default::default() },
    )
    .unwrap()
}

fn prompt(g: &dyn Generator) -> String {
    g.format().render(&[ChatMessage::new(Role::User, "hello there")]).unwrap()
}

fn run(g: &mut dyn Generator, p: &SamplingParams) -> (kotae_models::Generation, Vec<String>) {
    let prompt = prompt(g);
    let mut pieces = Vec::new();
    let out = g
        .generate(&prompt, p, &mut |t| {
            pieces.push(t.to_string());
            true
        })
        .unwrap();
    (out, pieces)
}

#[test]
fn tiny_gguf_streams_stops_and_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, 257);
    let mut g = load(&path);
    let p = prompt(&g);
    assert_eq!(p, "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n");
    // Template tokens are single special tokens; the rest is bytes.
    assert_eq!(
        g.format().encode(&p).unwrap().len(),
        3 + "user\n".len() + "hello there".len() + 1 + "assistant\n".len()
    );

    let params = SamplingParams { max_tokens: 12, repeat_penalty: 1.0, ..Default::default() };
    let (out, pieces) = run(&mut g, &params);
    assert_eq!(pieces.concat(), out.text, "streamed pieces add up to the text");
    let greedy = out.clone();
    assert!(out.completion_tokens >= 1);

    // Greedy decoding is deterministic across prefill chunk sizes (3 here, 512 below).
    let mut g512 = CandleGenerator::load(
        &path,
        &GeneratorOptions { name: "t".into(), device: Device::Cpu, prefill_chunk: 512, engine: Default::default() },
    )
    .unwrap();
    assert_eq!(run(&mut g512, &params).0.text, greedy.text);

    // Length.
    let (out, _) = run(&mut g, &SamplingParams { max_tokens: 3, repeat_penalty: 1.0, ..Default::default() });
    if out.finish_reason != FinishReason::Stop {
        assert_eq!((out.finish_reason, out.completion_tokens), (FinishReason::Length, 3));
    }

    // Cancellation after the first piece.
    let prompt_text = prompt(&g);
    let mut n = 0;
    let out = g
        .generate(&prompt_text, &params, &mut |_| {
            n += 1;
            false
        })
        .unwrap();
    if !greedy.text.is_empty() {
        assert_eq!((out.finish_reason, n), (FinishReason::Cancelled, 1));
    }

    // A stop string at the start of the greedy text: nothing is shown, finish = stop.
    if let Some(c) = greedy.text.chars().next() {
        let (out, pieces) =
            run(&mut g, &SamplingParams { stop: vec![c.to_string()], repeat_penalty: 1.0, ..params.clone() });
        assert_eq!((out.finish_reason, out.text.as_str()), (FinishReason::Stop, ""));
        assert!(pieces.concat().is_empty());
    }
}

#[test]
fn tiny_gguf_stops_at_its_end_of_sequence_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, 257);
    // Make the first greedy token the end-of-sequence token: rewrite the file with that id
    // declared as EOS (same weights).
    let first = {
        let mut g = load(&path);
        let tok = g.format();
        let p = prompt(&g);
        let mut got = None;
        let params = SamplingParams { max_tokens: 1, repeat_penalty: 1.0, ..Default::default() };
        g.generate(&p, &params, &mut |t| {
            got = Some(t.to_string());
            true
        })
        .unwrap();
        got.and_then(|t| tok.encode(&t).ok()).and_then(|v| v.first().copied())
    };
    if let Some(id) = first {
        write_gguf_with_same_weights_and_eos(&path, id);
        let mut g = load(&path);
        let (out, pieces) = run(&mut g, &SamplingParams { max_tokens: 10, repeat_penalty: 1.0, ..Default::default() });
        assert_eq!(out.finish_reason, FinishReason::Stop);
        assert_eq!(out.completion_tokens, 1);
        assert!(out.text.is_empty() && pieces.is_empty(), "the stop token is not shown");
    }
}

/// Rewrite the EOS id in an existing tiny GGUF, keeping its tensors.
fn write_gguf_with_same_weights_and_eos(path: &std::path::Path, eos: u32) {
    let mut f = std::fs::File::open(path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = c.tensor_infos.keys().collect();
    names.sort();
    let qs: Vec<QTensor> = names.iter().map(|n| c.tensor(&mut f, n, &Device::Cpu).unwrap()).collect();
    let mut md = c.metadata.clone();
    md.insert("tokenizer.ggml.eos_token_id".into(), gguf_file::Value::U32(eos));
    let mdr: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = names.iter().map(|n| n.as_str()).zip(qs.iter()).collect();
    drop(f);
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &mdr, &tr).unwrap();
}

/// A one-layer Llama or Qwen2 as a Hugging Face folder (config, tokenizer, safetensors).
fn write_hf_folder(dir: &std::path::Path, model_type: &str) -> std::path::PathBuf {
    let gguf = dir.join("tiny.gguf");
    write_gguf(&gguf, 257);
    let folder = dir.join(model_type);
    std::fs::create_dir_all(&folder).unwrap();
    // The tokenizer as tokenizer.json, from the GGUF one.
    let tok = kotae_models::gguf_tokenizer::from_gguf_file(&gguf).unwrap();
    tok.tokenizer.save(folder.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        folder.join("tokenizer_config.json"),
        serde_json::json!({ "chat_template": TEMPLATE, "eos_token": "<|im_end|>" }).to_string(),
    )
    .unwrap();
    let vocab = 258;
    std::fs::write(
        folder.join("config.json"),
        serde_json::json!({
            "model_type": model_type, "hidden_size": HIDDEN, "intermediate_size": FFN, "vocab_size": vocab,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": false,
            "sliding_window": 256, "max_window_layers": 1, "use_sliding_window": false, "hidden_act": "silu"
        })
        .to_string(),
    )
    .unwrap();
    let mut ts = std::collections::HashMap::new();
    let lin = |o: usize, i: usize| rand(&[o, i]);
    let ones = || Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap();
    ts.insert("model.embed_tokens.weight".to_string(), lin(vocab, HIDDEN));
    ts.insert("lm_head.weight".to_string(), lin(vocab, HIDDEN));
    ts.insert("model.norm.weight".to_string(), ones());
    for n in ["input_layernorm", "post_attention_layernorm"] {
        ts.insert(format!("model.layers.0.{n}.weight"), ones());
    }
    for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        ts.insert(format!("model.layers.0.self_attn.{n}.weight"), lin(HIDDEN, HIDDEN));
    }
    if model_type == "qwen2" {
        for n in ["q_proj", "k_proj", "v_proj"] {
            ts.insert(format!("model.layers.0.self_attn.{n}.bias"), rand(&[HIDDEN]));
        }
    }
    ts.insert("model.layers.0.mlp.gate_proj.weight".into(), lin(FFN, HIDDEN));
    ts.insert("model.layers.0.mlp.up_proj.weight".into(), lin(FFN, HIDDEN));
    ts.insert("model.layers.0.mlp.down_proj.weight".into(), lin(HIDDEN, FFN));
    candle_core::safetensors::save(&ts, folder.join("model.safetensors")).unwrap();
    folder
}

#[test]
fn tiny_safetensors_folders_load_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    for model_type in ["llama", "qwen2"] {
        let folder = write_hf_folder(dir.path(), model_type);
        let mut g = load(&folder);
        assert_eq!(prompt(&g), "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n");
        let im_end = g.format().tokenizer().token_to_id("<|im_end|>").unwrap();
        assert!(g.format().is_stop(im_end));
        let params = SamplingParams { max_tokens: 8, repeat_penalty: 1.0, ..Default::default() };
        let (a, pieces) = run(&mut g, &params);
        assert_eq!(pieces.concat(), a.text, "{model_type}");
        let (b, _) = run(&mut g, &params);
        assert_eq!(a.text, b.text, "{model_type}: the KV cache is reset between generations");
    }
    // A folder of an unsupported architecture is refused with the reason.
    let folder = write_hf_folder(dir.path(), "llama");
    let cfg = std::fs::read_to_string(folder.join("config.json")).unwrap().replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(folder.join("config.json"), cfg).unwrap();
    let err = CandleGenerator::load(
        &folder,
        &GeneratorOptions { name: "t".into(), device: Device::Cpu, prefill_chunk: 8, engine: Default::default() },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("gpt_neox"), "{err}");
}

/// Logits of a GGUF model with every tensor dequantized to f32 (candle's f32 path: no
/// rounding of weights or activations).
fn f32_logits(path: &std::path::Path, ids: &[u32]) -> Vec<f32> {
    let mut f = std::fs::File::open(path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<String> = c.tensor_infos.keys().cloned().collect();
    names.sort();
    let ts: Vec<QTensor> = names
        .iter()
        .map(|n| {
            let q = c.tensor(&mut f, n, &Device::Cpu).unwrap();
            QTensor::quantize(&q.dequantize(&Device::Cpu).unwrap(), candle_core::quantized::GgmlDType::F32).unwrap()
        })
        .collect();
    let md: Vec<(&str, &gguf_file::Value)> = c.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = names.iter().map(|n| n.as_str()).zip(ts.iter()).collect();
    let out = path.with_extension("f32.gguf");
    gguf_file::write(&mut std::fs::File::create(&out).unwrap(), &md, &tr).unwrap();
    let opts = GeneratorOptions {
        name: "f32".into(),
        device: Device::Cpu,
        prefill_chunk: 512,
        engine: kotae_models::GgufEngine::Candle,
    };
    CandleGenerator::load(&out, &opts).unwrap().forward_logits(ids).unwrap()
}

#[test]
fn int8_engine_matches_candle_quantized_models() {
    use candle_core::quantized::GgmlDType;
    use kotae_models::GgufEngine;
    let dir = tempfile::tempdir().unwrap();
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    // Llama with its own output head; Qwen2 with grouped-query attention (2 query heads per
    // key/value head), attention biases and tied embeddings.
    for (arch, kv_heads, qtype) in [
        ("llama", 2, GgmlDType::Q8_0),
        ("qwen2", 1, GgmlDType::Q8_0),
        ("llama", 2, GgmlDType::Q4_1),
        ("qwen2", 1, GgmlDType::Q5_0),
    ] {
        let path = dir.path().join(format!("{arch}-{qtype:?}.gguf"));
        tiny_gguf::write_gguf(
            &path,
            &Tiny {
                arch,
                layers: 2,
                kv_heads,
                untied_output: arch == "llama",
                std: 0.3,
                norm_noise: 0.1,
                qtype,
                ..Tiny::llama()
            },
        );
        let load = |engine, prefill_chunk| {
            let opts = GeneratorOptions { name: "t".into(), device: Device::Cpu, prefill_chunk, engine };
            CandleGenerator::load(&path, &opts).unwrap()
        };
        let ids: Vec<u32> = "hello kotae, how are you today?".bytes().map(u32::from).collect();
        let candle = load(GgufEngine::Candle, 512).forward_logits(&ids).unwrap();
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        for chunk in [512, 5, 1] {
            let got = load(GgufEngine::Int8, chunk).forward_logits(&ids).unwrap();
            if qtype == GgmlDType::Q8_0 {
                // Both multiply Q8_0 blocks by activations rounded to Q8_0 the same way: only
                // the order of float additions differs.
                let d = diff(&got, &candle);
                assert!(d <= 2e-3 * max_abs(&candle), "{arch} {qtype:?}, chunks of {chunk}: max |Δlogit| {d}");
            } else {
                // 4- and 5-bit blocks are packed as they are; candle re-rounds them to Q8_0.
                // Against the same weights dequantized to f32 (no rounding at all), both differ
                // mostly by the rounding of activations to 8 bits (random weights amplify it):
                // the int8 engine stays within twice candle's distance (a misread block moves
                // logits by their whole scale).
                let truth = f32_logits(&path, &ids);
                let (ours, theirs) = (diff(&got, &truth), diff(&candle, &truth));
                let limit = (2.0 * theirs).max(0.05 * max_abs(&truth));
                assert!(ours <= limit, "{arch} {qtype:?}, chunks of {chunk}: {ours} from f32, candle {theirs}");
            }
        }
        // A sequence that outgrows the first key/value allocation (256 positions) gives the
        // same logits fed in pieces as in one pass.
        let long: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % 256).collect();
        let one = load(GgufEngine::Int8, 300).forward_logits(&long).unwrap();
        let pieces = load(GgufEngine::Int8, 100).forward_logits(&long).unwrap();
        let d = one.iter().zip(&pieces).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(d <= 1e-3 * max_abs(&one), "{arch}: growing the cache changed logits by {d}");
    }
}

/// The tiny model, except that a prompt with `PANIC` in it panics mid-generation (the kind
/// of bug a model runtime can have on one odd input).
struct Fragile(CandleGenerator);

impl Generator for Fragile {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn format(&self) -> std::sync::Arc<kotae_models::PromptFormat> {
        self.0.format()
    }
    fn generate(
        &mut self,
        prompt: &str,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> kotae_models::Result<kotae_models::Generation> {
        let panics = prompt.contains("PANIC");
        self.0.generate(prompt, params, &mut |t| {
            assert!(!panics, "index out of bounds in a kernel");
            on_text(t)
        })
    }
}

#[test]
fn a_panicking_generation_fails_its_job_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, 257);
    let worker = kotae_models::GeneratorWorker::spawn(Box::new(Fragile(load(&path))), 2).unwrap();
    let params = SamplingParams { max_tokens: 4, repeat_penalty: 1.0, ..Default::default() };
    let err = worker.run_blocking("PANIC please".into(), params.clone(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("index out of bounds"), "{err}");
    assert_eq!(worker.panics(), 1);
    // The next answers are served as usual.
    for _ in 0..2 {
        let g = worker.run_blocking("hello".into(), params.clone(), |_| {}).unwrap();
        assert!(g.completion_tokens > 0);
    }
    assert!(worker.alive());
    // The worker counts a job done just after its last event: give it a moment.
    let t = std::time::Instant::now();
    while worker.load() > 0 && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(worker.load(), 0);
}

/// The state reader behind the guard's second classifier: the generator's first layers,
/// sharing its weights, pooled per text; reading states leaves the generator's own cache and
/// results alone, and special tokens written in the text stay text.
#[test]
fn lm_states_read_the_generators_layers_without_disturbing_it() {
    use kotae_models::states::{LmStates, StatePool};
    use kotae_models::GgufEngine;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    tiny_gguf::write_gguf(
        &path,
        &Tiny { arch: "qwen2", layers: 2, kv_heads: 1, std: 0.3, norm_noise: 0.1, ..Tiny::llama() },
    );
    let opts = GeneratorOptions { name: "t".into(), device: Device::Cpu, prefill_chunk: 512, engine: GgufEngine::Int8 };
    let mut g = CandleGenerator::load(&path, &opts).unwrap();
    let ids: Vec<u32> = "hello kotae".bytes().map(u32::from).collect();
    let before = g.forward_logits(&ids).unwrap();
    let mean0 = g.lm_states(0, StatePool::Mean).unwrap();
    let mean1 = g.lm_states(1, StatePool::Mean).unwrap();
    let last1 = g.lm_states(1, StatePool::Last).unwrap();
    assert!(g.lm_states(2, StatePool::Mean).is_none(), "the tiny model has two layers");
    assert_eq!(mean1.id(), LmStates::id_of("t", 1, StatePool::Mean));
    assert_eq!(mean1.id(), "t@L1/mean");
    let a = mean1.features("how do I reset my password?").unwrap();
    assert_eq!(a.len(), HIDDEN);
    assert_eq!(a, mean1.features("how do I reset my password?").unwrap(), "deterministic");
    assert_ne!(a, mean1.features("where is the meeting room?").unwrap());
    assert_ne!(a, mean0.features("how do I reset my password?").unwrap());
    assert_ne!(a, last1.features("how do I reset my password?").unwrap());
    // The reader shares weights but not the cache: the generator computes what it did.
    assert_eq!(g.forward_logits(&ids).unwrap(), before);
    // Long texts keep their beginning and end; the prompt stays bounded.
    let long = "word ".repeat(2000);
    assert!(mean1.prompt_ids(&long).unwrap().len() <= kotae_models::states::MAX_TOKENS);
    assert_eq!(mean1.features(&long).unwrap().len(), HIDDEN);
    // From threads at once (one text at a time inside).
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| mean1.features("how do I reset my password?").unwrap())).collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), a);
        }
    });
}

/// The worker's parallel answers: generations advanced a token each in turn give exactly what
/// each gives alone (each keeps its own key/value cache, its own repetition history and
/// sampler), and a short one that starts behind a long one ends first.
#[test]
fn interleaved_generations_match_their_runs_alone_and_a_short_one_is_not_held_back() {
    use kotae_models::{GenEvent, GeneratorWorker, GgufEngine};
    use std::sync::{mpsc, Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, 257);
    let int8 = || {
        let opts =
            GeneratorOptions { name: "t".into(), device: Device::Cpu, prefill_chunk: 4, engine: GgufEngine::Int8 };
        CandleGenerator::load(&path, &opts).unwrap()
    };
    let mut alone = int8();
    let jobs: Vec<(String, SamplingParams)> =
        [("hello there", 48, 1.0), ("what is the weather in Kyoto?", 24, 1.1), ("x", 5, 1.3)]
            .iter()
            .map(|&(q, n, penalty)| {
                let p = alone.format().render(&[ChatMessage::new(Role::User, q)]).unwrap();
                (p, SamplingParams { max_tokens: n, repeat_penalty: penalty, temperature: 0.0, ..Default::default() })
            })
            .collect();
    let expected: Vec<String> = jobs.iter().map(|(p, s)| alone.generate(p, s, &mut |_| true).unwrap().text).collect();
    assert!(expected.iter().all(|t| !t.is_empty()), "{expected:?}");

    let worker = GeneratorWorker::spawn_parallel(Box::new(int8()), 4, 3).unwrap();
    assert_eq!(worker.parallel(), 3);
    // The first job waits at its start until all three are queued: then all three run together.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let order = Arc::new(Mutex::new(Vec::<(usize, bool)>::new()));
    let (done_tx, done_rx) = mpsc::channel::<(usize, kotae_models::Result<kotae_models::Generation>)>();
    let mut go_rx = Some(go_rx);
    for (i, (prompt, params)) in jobs.iter().cloned().enumerate() {
        let (order, done_tx) = (order.clone(), done_tx.clone());
        let gate = if i == 0 { go_rx.take() } else { None };
        let sink: Box<dyn FnMut(GenEvent) -> bool + Send> = Box::new(move |ev| {
            match ev {
                GenEvent::Started { .. } => {
                    if let Some(g) = &gate {
                        g.lock().unwrap().recv().unwrap();
                    }
                }
                GenEvent::Text(_) => order.lock().unwrap().push((i, false)),
                GenEvent::Done(r) => {
                    order.lock().unwrap().push((i, true));
                    done_tx.send((i, r)).unwrap();
                }
            }
            true
        });
        worker.submit(prompt, params, sink).unwrap();
    }
    go_tx.send(()).unwrap();
    let mut got = vec![String::new(); 3];
    for _ in 0..3 {
        let (i, r) = done_rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
        got[i] = r.unwrap().text;
    }
    assert_eq!(got, expected, "interleaved generations differ from their runs alone");
    let order = order.lock().unwrap().clone();
    let text_of = |j: usize| order.iter().position(|&(i, _)| i == j).unwrap();
    let done_of = |j: usize| order.iter().position(|&e| e == (j, true)).unwrap();
    assert!(text_of(1) < done_of(0) && text_of(2) < done_of(0), "all three ran together: {order:?}");
    assert!(done_of(2) < done_of(0), "the short one ended before the long one: {order:?}");
    let t = std::time::Instant::now();
    while worker.load() > 0 && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(worker.load(), 0);
}
