//! Ingestion: turns company files (manuals and inquiry logs) into clean, structured chunks.
//!
//! Owns parsing (Markdown, HTML, plain text, PDF, CSV/JSONL inquiry logs), cleaning (Unicode
//! normalization, boilerplate, personal data, duplicates, language detection) and chunking along
//! the document's structure under a token budget.
//!
//! It must not embed, index or know about storage: token counting is passed in as a function,
//! and the output is plain [`Chunk`] values. Everything here is deterministic.

pub mod chunk;
pub mod clean;
pub mod dedup;
pub mod logs;
pub mod parse;

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use chunk::{chunk_document, ChunkerConfig};
pub use parse::{parse_manual, ParsedDoc};

/// Largest file accepted; larger files are skipped with a reason.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 20 * 1024 * 1024;

/// Errors of ingestion. All of them are about one input file and say what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported file type '.{0}' (supported: md, markdown, html, htm, txt, pdf, csv, jsonl)")]
    Unsupported(String),
    #[error("file is {size} bytes, over the {limit}-byte limit; split it or raise ingest.max_file_bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("not valid UTF-8 text (first bad byte at offset {0}); save the file as UTF-8")]
    NotUtf8(usize),
    #[error("looks like binary data, not text ({0})")]
    Binary(&'static str),
    #[error("cannot read PDF: {0}; is the file complete and not encrypted?")]
    Pdf(String),
    #[error("PDF has no text layer (scanned images?); run OCR first")]
    PdfNoText,
    #[error("inquiry log: {0}")]
    Log(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What kind of source a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Manual,
    Inquiry,
}

/// A piece of a document small enough to embed, with everything a citation needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Path relative to the ingested root, `/`-separated.
    pub source: String,
    pub kind: SourceKind,
    /// Document title followed by the heading path, outermost first.
    pub section: Vec<String>,
    /// Byte range in the document's extracted, normalized text.
    pub span: Range<usize>,
    pub text: String,
    /// ISO 639-1 code (`ja`, `en`, …) detected on this chunk.
    pub lang: String,
    /// Position of the chunk within its document.
    pub ordinal: u32,
    /// Unix seconds of the underlying record (inquiry timestamp), if known.
    pub timestamp: Option<i64>,
}

/// File types Kotae understands, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Markdown,
    Html,
    Text,
    Pdf,
    Csv,
    Jsonl,
}

impl FileType {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "md" | "markdown" => Self::Markdown,
            "html" | "htm" => Self::Html,
            "txt" | "text" => Self::Text,
            "pdf" => Self::Pdf,
            "csv" => Self::Csv,
            "jsonl" | "ndjson" => Self::Jsonl,
            _ => return Err(Error::Unsupported(ext)),
        })
    }
    pub fn is_log(self) -> bool {
        matches!(self, Self::Csv | Self::Jsonl)
    }
}

/// Statistics of one file's ingestion, for the closing summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    pub chunks: usize,
    pub unresolved_skipped: usize,
    pub duplicates_merged: usize,
    pub redactions: usize,
    pub boilerplate_lines: usize,
    /// Confidentiality markers in the document (lowercase).
    pub markers: Vec<String>,
    /// The document's own address, when it names a safe one (see [`parse::document_url`]).
    pub url: Option<String>,
}

/// Parse, clean and chunk one file's bytes.
pub fn process_file(
    source: &str,
    bytes: &[u8],
    ftype: FileType,
    cfg: &ChunkerConfig,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Result<(Vec<Chunk>, FileReport)> {
    if ftype.is_log() {
        return logs::process_log(source, bytes, ftype, cfg, count_tokens);
    }
    let doc = parse_manual(source, bytes, ftype)?;
    let mut report = FileReport {
        boilerplate_lines: doc.boilerplate_lines,
        markers: doc.markers.iter().cloned().collect(),
        url: doc.url.clone(),
        ..Default::default()
    };
    let chunks = chunk_document(source, SourceKind::Manual, &doc, cfg, count_tokens);
    report.chunks = chunks.len();
    Ok((chunks, report))
}
