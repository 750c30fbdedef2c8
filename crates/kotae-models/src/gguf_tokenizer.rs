//! A `tokenizers::Tokenizer` rebuilt from GGUF metadata (`tokenizer.ggml.*`).
//!
//! GGUF files carry the whole byte-level BPE tokenizer (tokens, merges, token types, special
//! ids, chat template) but no `tokenizer.json`. The pre-tokenizer split pattern is not stored;
//! it follows from `tokenizer.ggml.pre`, the model family's name, exactly as llama.cpp does.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// Qwen2's split pattern (from its `tokenizer.json`).
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus what the GGUF says about using it.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Jinja chat template, when the file has one.
    pub chat_template: Option<String>,
    /// Pre-tokenizer family (`tokenizer.ggml.pre`).
    pub pre: String,
}

fn get<'a>(c: &'a Content, key: &str, path: &Path) -> Result<&'a Value> {
    c.metadata.get(key).ok_or_else(|| Error::invalid(path, format!("GGUF metadata lacks {key}")))
}

fn strings(v: &Value, key: &str, path: &Path) -> Result<Vec<String>> {
    let arr = v.to_vec().map_err(|_| Error::invalid(path, format!("{key} is not an array")))?;
    arr.iter()
        .map(|x| x.to_string().cloned().map_err(|_| Error::invalid(path, format!("{key} holds a non-string"))))
        .collect()
}

fn opt_u32(c: &Content, key: &str) -> Option<u32> {
    c.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Build the tokenizer of a GGUF file.
pub fn from_gguf_file(path: &Path) -> Result<GgufTokenizer> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut f).map_err(|e| Error::invalid(path, e.to_string()))?;
    from_gguf(&content, path)
}

pub fn from_gguf(c: &Content, path: &Path) -> Result<GgufTokenizer> {
    let model = get(c, "tokenizer.ggml.model", path)?.to_string().cloned().unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::invalid(
            path,
            format!("tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2')"),
        ));
    }
    let tokens = strings(get(c, "tokenizer.ggml.tokens", path)?, "tokens", path)?;
    let merges = strings(get(c, "tokenizer.ggml.merges", path)?, "merges", path)?;
    let types: Vec<i32> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| Error::invalid(path, "token_type is not an array"))?
            .iter()
            .map(|x| x.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = c
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "default".into());

    let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> =
        merges.iter().filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string()))).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(None::<NormalizerWrapper>)?;
    let byte_level = |use_regex: bool| ByteLevel::new(false, true, use_regex);
    let pre_tok: PreTokenizerWrapper = match pre.as_str() {
        "qwen2" => Sequence::new(vec![
            Split::new(SplitPattern::Regex(QWEN2_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)?.into(),
            byte_level(false).into(),
        ])
        .into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        _ => byte_level(true).into(),
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    // Control and user-defined tokens (`<|im_start|>` …) are matched whole, never split.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials)?;

    let bos_id = opt_u32(c, "tokenizer.ggml.bos_token_id");
    let eos_id = opt_u32(c, "tokenizer.ggml.eos_token_id");
    let add_bos = c.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    if let (true, Some(bos)) = (add_bos, bos_id) {
        let bos_tok = tokens.get(bos as usize).cloned().unwrap_or_default();
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos_tok} $A"))
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .special_tokens(vec![(bos_tok, bos)])
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tok.with_post_processor(Some(post));
    }
    let chat_template = c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned());
    Ok(GgufTokenizer { tokenizer: tok, bos_id, eos_id, chat_template, pre })
}
