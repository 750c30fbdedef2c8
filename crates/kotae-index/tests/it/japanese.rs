//! Japanese analysis with the real IPADIC dictionary (installed by scripts/test.sh).

use std::path::PathBuf;

use kotae_index::japanese::JapaneseTokenizer;
use kotae_index::vector::HnswSettings;
use kotae_index::{IndexConfig, KnowledgeIndex, SearchMode};

fn dictionary() -> PathBuf {
    let data = std::env::var("KOTAE_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/test-data"));
    let p = kotae_index::store::ipadic_path(&data.join("models"));
    assert!(p.exists(), "{} missing: run scripts/test.sh (it installs the dictionary)", p.display());
    p
}

#[test]
fn segments_japanese_without_spaces() {
    let mut t = JapaneseTokenizer::load(&dictionary()).unwrap();
    let terms = t.terms("パスワードを忘れた場合はどうすればいいですか");
    for want in ["パスワード", "忘れる", "場合"] {
        assert!(terms.contains(&want.to_string()), "{want} not in {terms:?}");
    }
    for particle in ["を", "は", "です"] {
        assert!(!terms.contains(&particle.to_string()), "{particle} should be dropped: {terms:?}");
    }
    let terms = t.terms("VPNに接続できません");
    assert!(terms.contains(&"vpn".to_string()) && terms.contains(&"接続".to_string()), "{terms:?}");
}

fn lexicon() -> PathBuf {
    let data = dictionary().parent().unwrap().parent().unwrap().to_path_buf();
    let p = kotae_index::store::lexicon_path(&data);
    assert!(p.exists(), "{} missing: run scripts/test.sh (it installs the dictionary)", p.display());
    p
}

/// A knowledge base with the real IPADIC and EDICT and one Japanese and one English manual.
fn bilingual_kb(dir: &std::path::Path, weight: f32) -> KnowledgeIndex {
    let mut kb = KnowledgeIndex::open(&IndexConfig {
        dir: dir.to_path_buf(),
        embedder: "test".into(),
        dim: Some(super::DIM),
        ja_dictionary: Some(dictionary()),
        hnsw: HnswSettings::default(),
        server: None,
        lexicon: Some(lexicon()),
        cross_lingual_weight: weight,
        links: Vec::new(),
    })
    .unwrap();
    if kb.num_chunks() == 0 {
        let en = "Large rooms: the main hall seats 120 and is booked through the facilities team.";
        let ja = "パスワードの規則: 12文字以上で、英字と数字を含めてください。";
        super::write_source(&mut kb, "rooms.en.md", &[super::chunk("rooms.en.md", 0, en, &["public"])]);
        super::write_source(&mut kb, "password.ja.md", &[super::chunk("password.ja.md", 0, ja, &["public"])]);
    }
    kb
}

fn bm25_sources(kb: &KnowledgeIndex, q: &str) -> Vec<String> {
    kb.search(&super::req(q, None, SearchMode::Bm25, 5, &[])).unwrap().into_iter().map(|h| h.source).collect()
}

#[test]
fn bm25_finds_documents_in_the_other_language() {
    let dir = tempfile::tempdir().unwrap();
    let kb = bilingual_kb(dir.path(), 1.0);
    // 大ホール → "large hall": the Japanese question shares no word with the English manual.
    assert_eq!(bm25_sources(&kb, "大ホールを使いたい"), ["rooms.en.md"]);
    // "password rules" → パスワード, 規則.
    assert_eq!(bm25_sources(&kb, "What are the password rules?"), ["password.ja.md"]);
    // The same knowledge base without translation finds neither.
    drop(kb);
    let kb = bilingual_kb(dir.path(), 0.0);
    assert!(bm25_sources(&kb, "大ホールを使いたい").is_empty());
    assert!(bm25_sources(&kb, "What are the password rules?").iter().all(|s| s != "password.ja.md"));
}
