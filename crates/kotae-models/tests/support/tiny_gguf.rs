//! Tiny random-weight models written as GGUF, with a byte-level tokenizer and a ChatML
//! template: shared by the model runtime's tests and the fine-tuning tests
//! (`#[path]`-included there).

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

pub const HIDDEN: usize = 32;
pub const FFN: usize = 64;
/// 256 byte symbols + `<|im_start|>` + `<|im_end|>`.
pub const VOCAB: usize = 258;
pub const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// GPT-2 byte-to-unicode table: the 256 byte-level BPE symbols.
pub fn byte_symbols() -> Vec<String> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    pairs.into_iter().map(|(_, c)| char::from_u32(c).unwrap().to_string()).collect()
}

/// Shape of a tiny model. Qwen2 gets attention biases.
pub struct Tiny {
    pub arch: &'static str,
    pub layers: usize,
    pub heads: u32,
    pub kv_heads: u32,
    /// End-of-sequence token id (257 is `<|im_end|>`).
    pub eos: u32,
    /// Write `output.weight` (else the embeddings are tied).
    pub untied_output: bool,
    /// Standard deviation of the random matrices.
    pub std: f32,
    /// Random noise on the norm weights (else ones).
    pub norm_noise: f32,
    /// Type of the matrices (norms stay f32).
    pub qtype: GgmlDType,
}

impl Tiny {
    #[allow(dead_code)] // not every includer uses it
    pub fn llama() -> Self {
        Self {
            arch: "llama",
            layers: 1,
            heads: 2,
            kv_heads: 2,
            eos: 257,
            untied_output: true,
            std: 0.5,
            norm_noise: 0.0,
            qtype: GgmlDType::F32,
        }
    }
}

/// Normal noise seeded by the tensor's name: the same model every run, so tests that compare
/// numbers are not at the mercy of a lucky or unlucky draw.
fn randn(name: &str, shape: &[usize], std: f32) -> Tensor {
    let mut s = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)) | 1;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Write the model as GGUF.
pub fn write_gguf(path: &std::path::Path, t: &Tiny) {
    let mut tokens = byte_symbols();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let mut types = vec![1i32; 256];
    types.extend([3, 3]);
    let arch = t.arch;
    let kv_dim = HIDDEN / t.heads as usize * t.kv_heads as usize;
    use gguf_file::Value as V;
    let k = |s: &str| format!("{arch}.{s}");
    let md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (k("attention.head_count"), V::U32(t.heads)),
        (k("attention.head_count_kv"), V::U32(t.kv_heads)),
        (k("block_count"), V::U32(t.layers as u32)),
        (k("embedding_length"), V::U32(HIDDEN as u32)),
        (k("feed_forward_length"), V::U32(FFN as u32)),
        (k("rope.dimension_count"), V::U32((HIDDEN / t.heads as usize) as u32)),
        (k("rope.freq_base"), V::F32(10000.0)),
        (k("attention.layer_norm_rms_epsilon"), V::F32(1e-5)),
        (k("context_length"), V::U32(256)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens.into_iter().map(V::String).collect())),
        ("tokenizer.ggml.merges".into(), V::Array(vec![])),
        ("tokenizer.ggml.token_type".into(), V::Array(types.into_iter().map(V::I32).collect())),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(t.eos)),
        ("tokenizer.chat_template".into(), V::String(TEMPLATE.into())),
    ];
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("token_embd.weight".into(), vec![VOCAB, HIDDEN]), ("output_norm.weight".into(), vec![HIDDEN])];
    if t.untied_output {
        shapes.push(("output.weight".into(), vec![VOCAB, HIDDEN]));
    }
    for l in 0..t.layers {
        let b = |s: &str| format!("blk.{l}.{s}");
        shapes.extend([
            (b("attn_norm.weight"), vec![HIDDEN]),
            (b("ffn_norm.weight"), vec![HIDDEN]),
            (b("attn_q.weight"), vec![HIDDEN, HIDDEN]),
            (b("attn_k.weight"), vec![kv_dim, HIDDEN]),
            (b("attn_v.weight"), vec![kv_dim, HIDDEN]),
            (b("attn_output.weight"), vec![HIDDEN, HIDDEN]),
            (b("ffn_gate.weight"), vec![FFN, HIDDEN]),
            (b("ffn_up.weight"), vec![FFN, HIDDEN]),
            (b("ffn_down.weight"), vec![HIDDEN, FFN]),
        ]);
        if arch == "qwen2" {
            shapes.extend([
                (b("attn_q.bias"), vec![HIDDEN]),
                (b("attn_k.bias"), vec![kv_dim]),
                (b("attn_v.bias"), vec![kv_dim]),
            ]);
        }
    }
    let cpu = Device::Cpu;
    let qs: Vec<QTensor> = shapes
        .iter()
        .map(|(n, s)| {
            let w = if n.contains("norm") {
                let ones = Tensor::ones(s.as_slice(), DType::F32, &cpu).unwrap();
                if t.norm_noise > 0.0 {
                    (ones + randn(n, s, t.norm_noise)).unwrap()
                } else {
                    ones
                }
            } else {
                randn(n, s, t.std)
            };
            let q = if n.contains("norm") || n.ends_with(".bias") { GgmlDType::F32 } else { t.qtype };
            QTensor::quantize(&w, q).unwrap()
        })
        .collect();
    let mdr: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = shapes.iter().map(|(n, _)| n.as_str()).zip(qs.iter()).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &mdr, &tr).unwrap();
}
