//! The tokenizer rebuilt from GGUF metadata, checked against known token ids. The expected ids
//! come from Hugging Face `transformers`' own GGUF tokenizer conversion of the same file
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, transformers 5.x).

use kotae_models::gguf_tokenizer::from_gguf_file;
use kotae_models::registry::gguf_path;

use super::models_dir;

/// Encode each text, compare with the reference ids, and decode back to the text.
fn check(model: &str, pre: &str, cases: &[(&str, &[u32])]) -> kotae_models::gguf_tokenizer::GgufTokenizer {
    let path = gguf_path(&models_dir(), model).unwrap_or_else(|e| panic!("{model}: {e}"));
    let t = from_gguf_file(&path).unwrap();
    assert_eq!(t.pre, pre);
    for (text, ids) in cases {
        let enc = t.tokenizer.encode(*text, false).unwrap();
        assert_eq!(enc.get_ids(), *ids, "{text:?}");
        assert_eq!(t.tokenizer.decode(enc.get_ids(), false).unwrap(), *text, "round trip of {text:?}");
    }
    t
}

#[test]
fn smollm2_tokenizer_matches_reference_ids() {
    let cases: &[(&str, &[u32])] = &[
        ("Hello, world! How are you?", &[19556, 28, 905, 17, 1073, 359, 346, 47]),
        (
            "VPNに接続できません。",
            &[70, 15510, 41152, 46842, 178, 131, 244, 7365, 117, 7365, 231, 7365, 139, 7365, 245, 10391, 237, 19076],
        ),
        ("Price: 12345 yen", &[27148, 42, 216, 33, 34, 35, 36, 37, 329, 264]),
        ("<|im_start|>user\nHi<|im_end|>", &[1, 4093, 198, 26843, 2]),
        ("  two  spaces\n\nnewlines", &[216, 827, 216, 5600, 198, 198, 2241, 5110]),
    ];
    let t = check("smollm2-135m-instruct", "smollm", cases);
    assert_eq!(t.eos_id, Some(2));
    let template = t.chat_template.expect("chat template in metadata");
    assert!(template.contains("<|im_start|>"), "{template}");
}

#[test]
fn non_gguf_files_are_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    std::fs::write(&p, b"not a gguf file at all").unwrap();
    let err = from_gguf_file(&p).err().unwrap().to_string();
    assert!(err.contains("invalid model file"), "{err}");
}

#[test]
fn qwen2_tokenizer_matches_reference_ids() {
    let cases: &[(&str, &[u32])] = &[
        ("Hello, world! How are you?", &[9707, 11, 1879, 0, 2585, 525, 498, 30]),
        ("VPNに接続できません。", &[55662, 19655, 29077, 124468, 135851, 1773]),
        ("Price: 12345 yen", &[6972, 25, 220, 16, 17, 18, 19, 20, 57340]),
        ("<|im_start|>user\nHi<|im_end|>", &[151644, 872, 198, 13048, 151645]),
        ("  two  spaces\n\nnewlines", &[220, 1378, 220, 12621, 271, 931, 7969]),
    ];
    let t = check("qwen2.5-coder-0.5b-instruct", "qwen2", cases);
    assert!(t.chat_template.is_some_and(|c| c.contains("<|im_start|>")));
}
