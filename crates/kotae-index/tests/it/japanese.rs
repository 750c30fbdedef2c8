//! Japanese analysis with the real IPADIC dictionary (installed by scripts/test.sh).

use std::path::PathBuf;

use kotae_index::japanese::JapaneseTokenizer;

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
