//! Adaptation of pretrained models to a company's domain, the seed article's core: reuse a
//! pretrained network and fit it cheaply.
//!
//! - Transfer learning ([`head`]): the embedder frozen, a new classification head trained on
//!   labels from the company's data (routing inquiries to their help desk, content safety).
//! - Fine-tuning ([`lm`], [`train`]): LoRA adapters (and optionally whole layers) on a Llama or
//!   Qwen2 generator, trained on question→answer pairs from the inquiry logs and grounded
//!   examples from the manuals ([`data`]), exported as a PEFT adapter and as a merged model
//!   that `kotae serve` loads ([`export`]).
//! - The embedder adapted for retrieval ([`embedder`]): its top layers trained contrastively
//!   on pairs from the knowledge base, served on the int8 engine like the original.
//!
//! It depends on the model runtime for tokenizers, templates and embedders, and on ingestion
//! for reading the company's sources; it knows nothing about HTTP or indexes.

pub mod data;
pub mod embedder;
pub mod export;
pub mod graph_ops;
pub mod head;
pub mod lm;
pub mod ops;
pub mod profile;
pub mod train;

pub use lm::{BaseModel, LmConfig, LoraConfig, TrainableLm};
pub use train::{AdamW, RunOptions, RunSummary, TrainConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or input that the user must change.
    #[error("{0}")]
    Config(String),
    /// The caller asked to stop (a cancelled job).
    #[error("stopped on request")]
    Stopped,
    #[error("invalid model file {path}: {reason}")]
    InvalidModel { path: String, reason: String },
    #[error(transparent)]
    Model(#[from] kotae_models::Error),
    #[error(transparent)]
    Answer(#[from] kotae_answer::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
    pub(crate) fn invalid(path: impl AsRef<std::path::Path>, reason: impl Into<String>) -> Self {
        Error::InvalidModel { path: path.as_ref().display().to_string(), reason: reason.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
