//! The embedder adapted to the knowledge base (`kotae finetune embedder`): trained on pairs of
//! the ingested company, saved, re-embedding the knowledge base, served by name, resumable
//! after an interruption, and removable.

use kotae::embedder_tune::{self, EmbedderJob, Target};
use kotae_adapt::embedder::EmbedderTuneConfig;
use kotae_index::SearchMode;
use kotae_models::{Embedder, InputKind};

use super::{config, fresh_data_dir, workspace};

#[test]
fn an_adapted_embedder_is_trained_on_the_knowledge_base_reembeds_it_and_can_be_removed() {
    let dir = fresh_data_dir();
    let cfg = config(dir.path());
    {
        let mut kb = kotae::open_index(&cfg, Some(super::embedder().dim())).unwrap();
        let k = workspace().join("knowledge");
        super::ingest(&cfg, &mut kb, &[&k.join("logs"), &k.join("manuals/it"), &k.join("manuals/hr")], &[], true);
    }
    let base = cfg.embedder_id();
    assert_eq!(base, "multilingual-e5-small");

    // Trained and saved, the knowledge base not yet touched.
    let job = EmbedderJob {
        config: EmbedderTuneConfig { epochs: 2, max_pairs: 160, learning_rate: 5e-5, ..Default::default() },
        general_text: vec![
            workspace().join("evals/general/general.en.txt"),
            workspace().join("evals/general/general.ja.txt"),
        ],
        no_reembed: true,
    };
    embedder_tune::run(&cfg, &job).unwrap();
    let next = cfg.kb_dir().join("adapter.next");
    let card = kotae_models::adapter::EmbedderAdapter::card(&next).unwrap();
    eprintln!("{card:#?}");
    assert!(card.best_epoch >= 1, "no epoch beat the original: {card:#?}");
    assert!(card.train_pairs.get("log").copied().unwrap_or(0) > 20, "{:?}", card.train_pairs);
    assert!(card.train_pairs.get("heading").copied().unwrap_or(0) > 20, "{:?}", card.train_pairs);
    assert!(card.heldout_before.pairs > 10 && card.general_before.pairs >= 10);
    assert!(card.hard_negatives > card.train_pairs.values().sum::<usize>() / 2);
    // Kept only because it ranks held-out documents' pairs better than the original did.
    assert!(card.heldout_after.mrr > card.heldout_before.mrr, "{card:#?}");
    assert_eq!(cfg.embedder_id(), base, "an adapter not yet re-embedded with changes nothing");
    kotae::open_index(&cfg, None).unwrap();

    // An interrupted re-embedding: the knowledge base refuses to open and says what to do.
    {
        let kb = kotae::open_index_any_embedder(&cfg).unwrap();
        let mut w = kb.write().unwrap();
        w.set_embedder(&format!("{}~partial", card.embedder_name()));
        w.commit().unwrap();
    }
    let err = format!("{:#}", kotae::open_index(&cfg, None).err().expect("a half re-embedded knowledge base opened"));
    assert!(err.contains("kotae finetune embedder --reembed"), "{err}");
    embedder_tune::reembed(&cfg, Target::Resume).unwrap();
    let adapted = cfg.embedder_id();
    assert_eq!(adapted, card.embedder_name());
    assert!(!next.exists() && cfg.kb_dir().join("adapter/adapter.json").exists());
    // The relevance gate's thresholds, set on the original's scale, carried over: the anchor
    // keeps positives' cosines from sinking, so they move little.
    let a = cfg.answer_config();
    eprintln!("relevance thresholds ja {} en {}", a.min_relevance_ja, a.min_relevance_en);
    assert!((a.min_relevance_ja - 0.85).abs() < 0.06 && (a.min_relevance_en - 0.83).abs() < 0.06, "{a:?}");
    assert_eq!(a.min_relevance_ja, card.map_score(0.85));

    // Served by name, with other vectors than the original, and still finding the manuals.
    let e = kotae::load_embedder(&cfg).unwrap();
    assert_eq!(e.name(), adapted);
    let q = "VPNに接続できないときはどうすればいいですか？";
    let a = e.embed(&[q], InputKind::Query).unwrap().vectors.remove(0);
    let b = super::embedder().embed(&[q], InputKind::Query).unwrap().vectors.remove(0);
    let cos: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!(cos < 0.9999 && cos > 0.5, "cosine to the original {cos}");
    let kb = kotae::open_index(&cfg, None).unwrap();
    assert_eq!(kb.manifest().embedder, adapted);
    let o = kotae::search::SearchOptions {
        query: "社内VPNに接続するための設定手順を教えてください".into(),
        top_k: Some(5),
        mode: Some(SearchMode::Dense),
        groups: vec![],
        lang: None,
    };
    let hits = kotae::search::run_search(&cfg, &kb, Some(&e as &dyn Embedder), &o).unwrap().hits;
    assert!(
        hits.iter().any(|h| h.source.contains("vpn-setup")),
        "{:?}",
        hits.iter().map(|h| &h.source).collect::<Vec<_>>()
    );
    drop(kb);

    // Removed: the original embedder and its vectors again.
    embedder_tune::reembed(&cfg, Target::Base).unwrap();
    assert_eq!(cfg.embedder_id(), base);
    assert!(!cfg.kb_dir().join("adapter").exists());
    let kb = kotae::open_index(&cfg, None).unwrap();
    assert_eq!(kb.manifest().embedder, base);
}
