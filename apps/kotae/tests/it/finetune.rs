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
