//! Model runtime for Kotae: the pretrained models, where they come from and how they run.
//!
//! Owns the [`Embedder`] trait and its candle BERT implementation ([`BertEmbedder`]), the model
//! catalog and installer ([`registry`]), the reader for the E5S1 quantized embedder format
//! ([`e5s1`]), the tokenizer built from GGUF metadata ([`gguf_tokenizer`]), and text
//! generation: the [`Generator`] trait ([`generate`]), chat templates ([`chat`]) and the
//! bounded worker that runs a generator on its own thread ([`worker`]).
//!
//! It must not know about documents, indexes or HTTP: it turns text into vectors and prompts
//! into text, nothing more.

pub mod adapter;
pub mod chat;
pub mod classifier;
pub mod e5s1;
pub mod embed;
pub mod generate;
pub mod gguf_tokenizer;
pub mod int8;
pub mod int8_bert;
pub mod registry;
pub mod states;
pub mod worker;

pub use chat::{ChatMessage, PromptFormat, Role};
pub use classifier::Head;
pub use embed::{BertEmbedder, EmbedOutput, Embedder, EncoderEngine, InputKind, Pooling};
pub use generate::{
    CandleGenerator, Decoding, FinishReason, Generation, Generator, GeneratorOptions, GgufEngine, SamplingParams,
    Stepwise,
};
pub use registry::{InstalledModel, ModelKind, ModelSpec, CATALOG};
pub use worker::{GenEvent, GeneratorWorker, SubmitError};

/// Errors of the model runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model files are missing: the user should install them.
    #[error("model '{name}' is not installed in {dir}: run `kotae models fetch {name}`")]
    NotInstalled { name: String, dir: String },
    /// The named model is not in the catalog.
    #[error("unknown model '{0}'; `kotae models list --all` shows the catalog")]
    UnknownModel(String),
    /// A model file exists but cannot be read as what it claims to be.
    #[error("invalid model file {path}: {reason}")]
    InvalidModel { path: String, reason: String },
    /// A downloaded file did not match its pinned checksum.
    #[error("checksum mismatch for {file}: expected {expected}, got {actual}; the download is corrupt or was tampered with and was not installed")]
    Checksum { file: String, expected: String, actual: String },
    /// Every download source failed (transient: retry with network access).
    #[error("could not download '{name}': {reason}")]
    Download { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model's chat template failed on these messages.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt does not fit the model's context (the caller should shorten it).
    #[error("the prompt has {tokens} tokens; the model's context holds {limit}: shorten the question or the history")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("generation: {0}")]
    Generation(String),
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

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Re-exported so callers pick devices without depending on candle directly.
pub use candle_core as candle;
