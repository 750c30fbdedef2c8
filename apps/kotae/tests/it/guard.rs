//! The guardrails measured on `evals/guard/` with the trained safety head, as CI runs them.

use std::sync::OnceLock;

use super::*;

/// A data directory with a safety head trained on the real embedder (once per test binary).
fn guarded() -> &'static (tempfile::TempDir, Config) {
    static G: OnceLock<(tempfile::TempDir, Config)> = OnceLock::new();
    G.get_or_init(|| {
        let dir = fresh_data_dir();
        let cfg = config(dir.path());
        let job = kotae::finetune::HeadJob {
            task: "safety".into(),
            knowledge: workspace().join("knowledge"),
            out: dir.path().join("heads/safety"),
            config: Default::default(),
            safe_extra: Vec::new(),
            lm_probe: None,
        };
        kotae::finetune::run_head(&cfg, &job).unwrap();
        (dir, cfg)
    })
}

#[test]
fn guard_eval_meets_its_thresholds_on_the_dev_split() {
    let (_, cfg) = guarded();
    let classifiers = kotae::serve::load_classifiers(cfg).unwrap();
    assert!(classifiers.contains_key("safety"));
    let guard = kotae::serve::load_guard(cfg, &classifiers).unwrap().unwrap();
    let lm = kotae::serve::lm_states_for(cfg, &classifiers, None).unwrap();
    assert!(lm.is_none(), "the second classifier is trained on request only");
    let files = kotae::guard_eval::split_files(&workspace().join("evals/guard"), "dev").unwrap();
    let mut r = kotae::guard_eval::run_guard_eval(cfg, &files, guard, Some(embedder() as &dyn Embedder), lm.as_deref())
        .unwrap();
    let mut t: toml::Table =
        toml::from_str(&std::fs::read_to_string(workspace().join("evals/guard/thresholds.toml")).unwrap()).unwrap();
    // Latency is the benchmark's business (`kotae-bench guard`, and the nightly eval): on a CI
    // machine running two test threads a timed assertion measures the neighbour.
    t.remove("latency");
    kotae::guard_eval::check_thresholds(&mut r, &t);
    kotae::guard_eval::print_guard_report(&r, false);
    assert!(r.classifier);
    assert_eq!(r.by_lang.len(), 2);
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
}

#[test]
fn the_safety_head_never_trains_on_the_eval_sets() {
    let train: std::collections::HashSet<String> = kotae_guard::training_lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(|t| t.trim().to_lowercase()))
        .collect();
    // 8,592 distinct texts in thirteen files (every file is read).
    assert!(train.len() >= 8590, "{}", train.len());
    for split in ["dev", "heldout"] {
        for lang in ["ja", "en"] {
            let cases = kotae::guard_eval::load_cases(&[workspace().join(format!("evals/guard/{lang}.{split}.jsonl"))])
                .unwrap();
            assert_eq!(cases.len(), 200);
            for c in cases {
                assert!(!train.contains(&c.text.trim().to_lowercase()), "{} is in the training data", c.id);
            }
        }
    }
    // Nor on the ordinary questions that measure how many plain questions it refuses.
    let golden = std::fs::read_to_string(workspace().join("evals/retrieval/golden.jsonl")).unwrap();
    for line in golden.lines() {
        let q =
            serde_json::from_str::<serde_json::Value>(line).unwrap()["query"].as_str().unwrap().trim().to_lowercase();
        assert!(!train.contains(&q), "golden question {q} is in the training data");
    }
    // Nor on another domain's questions (evals/outside), which measure what it refuses
    // outside this company's topics; nor does its general-domain data cover their domain.
    let mut outside = 0;
    for f in ["ja", "en", "ja2en", "en2ja"].iter().flat_map(|l| [format!("{l}.dev"), format!("{l}.heldout")]) {
        let text = std::fs::read_to_string(workspace().join(format!("evals/outside/{f}.jsonl"))).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let q = serde_json::from_str::<serde_json::Value>(line).unwrap()["query"]
                .as_str()
                .unwrap()
                .trim()
                .to_lowercase();
            assert!(!train.contains(&q), "outside question {q} is in the training data");
            outside += 1;
        }
    }
    assert!(outside >= 500, "{outside}");
    for l in kotae_guard::training_lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["category"] == "general" {
            let t = v["text"].as_str().unwrap().to_lowercase();
            for kept_aside in ["gimp", "photoshop"] {
                assert!(!t.contains(kept_aside), "general-domain training text about image editing: {t}");
            }
        }
    }
}
