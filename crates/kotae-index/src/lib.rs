//! Index and retrieval: BM25 (tantivy, with Japanese morphological analysis) plus dense vectors
//! (the in-process Qdrant engine), fused into one ranked, filtered, cited list of chunks.
//!
//! Owns the on-disk knowledge base (`<dir>/lexical`, `<dir>/vectors`), the ingest manifest and
//! hybrid search. It never calls a model: vectors come in from the caller.
//!
//! Invariant: the committed tantivy index is the source of truth. Its commit payload is the
//! manifest; a chunk exists iff its document is in the committed lexical index. Vectors are
//! written before the lexical commit and stale ones deleted after it, so the vector store may
//! briefly hold extra points (ignored at query time: dense hits are joined against the lexical
//! store) but never lacks one.

pub mod bilingual;
pub mod fusion;
pub mod japanese;
pub mod lexical;
pub mod store;
pub mod vector;
pub mod vector_server;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use fusion::Fusion;
pub use store::{Candidates, IndexConfig, KnowledgeIndex, WriteSession};
pub use vector::{EdgeStore, VectorFilter, VectorPoint, VectorStore};

/// The group every user belongs to.
pub const PUBLIC_GROUP: &str = "public";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("lexical index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("vector store: {0}")]
    Vector(String),
    #[error("Japanese dictionary: {0}")]
    Dictionary(String),
    /// The stored index was built with different settings: the user must choose.
    #[error("{0}")]
    Incompatible(String),
    #[error("corrupt manifest: {0}")]
    Manifest(String),
    #[error("invalid query: {0}")]
    Query(String),
    /// Another process has the knowledge base open.
    #[error("{0}")]
    InUse(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Stable id of a chunk: a hash of where it comes from and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub u64);

impl ChunkId {
    pub fn of(source: &str, section: &str, text: &str, groups: &[String]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [source, section, text, &groups.join(",")] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        ChunkId(u64::from_le_bytes(h.finalize()[..8].try_into().unwrap()))
    }
    pub fn parse(s: &str) -> Option<Self> {
        u64::from_str_radix(s, 16).ok().map(ChunkId)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A chunk as stored in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedChunk {
    pub id: ChunkId,
    pub source: String,
    /// `manual` or `inquiry`.
    pub kind: String,
    pub section: Vec<String>,
    pub span: (u64, u64),
    pub text: String,
    pub lang: String,
    pub ordinal: u32,
    pub doc_version: String,
    pub groups: Vec<String>,
    pub timestamp: Option<i64>,
    pub ingested_unix: i64,
    /// Hash of the normalized text, for result deduplication.
    pub text_hash: String,
    /// What the document guard found in the chunk at ingest (e.g. `prompt_injection`): the chunk
    /// stays searchable, and the offending sentences never reach a prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// One search result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hit {
    pub rank: usize,
    pub score: f32,
    pub source: String,
    pub section: String,
    pub chunk_id: String,
    pub lang: String,
    pub text: String,
    pub kind: String,
    pub span: (u64, u64),
    /// Cosine similarity to the query embedding, when the chunk was among the dense results:
    /// an absolute relevance signal (fused scores are only comparable within one query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_score: Option<f32>,
    /// The chunk's ingest flags (see [`IndexedChunk::flags`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The document's own address on the intranet, when known (see [`document_link`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    #[default]
    Hybrid,
    Bm25,
    Dense,
}

impl std::str::FromStr for SearchMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "hybrid" => Ok(Self::Hybrid),
            "bm25" => Ok(Self::Bm25),
            "dense" => Ok(Self::Dense),
            _ => Err(format!("unknown mode '{s}' (use hybrid, bm25 or dense)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub text: String,
    /// Query embedding; required for dense and hybrid modes.
    pub vector: Option<Vec<f32>>,
    pub mode: SearchMode,
    pub top_k: usize,
    /// The asker's access groups; `public` is always added.
    pub groups: Vec<String>,
    pub lang: Option<String>,
    pub fusion: Fusion,
}

/// One ingested file as the manifest remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FileEntry {
    /// Absolute path of the folder the file was ingested from.
    pub root: String,
    pub hash: String,
    pub groups: Vec<String>,
    pub chunks: usize,
    pub ingested_unix: i64,
    /// Languages of its chunks (`ja`, `en`).
    #[serde(default)]
    pub langs: Vec<String>,
    /// Chunks the document guard flagged (instructions addressed to an AI), kept or dropped.
    #[serde(default)]
    pub flagged: usize,
    /// The document's own address, as the document names it (Markdown front matter, an HTML
    /// page's canonical link); checked to be an absolute http(s) URL at ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `[[ingest.links]]`: where the documents under a source-path prefix live on the intranet,
/// so that citations link to the original page (a wiki, SharePoint) rather than only to
/// Kotae's source viewer. Applied when answering, so a changed rule needs no re-ingest; a
/// document that names its own address keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRule {
    /// A source path (as citations show it, `/`-separated, relative to the ingested folder)
    /// or a folder of them: `manuals/it/`, `manuals/it/vpn.md`; empty matches every document.
    pub prefix: String,
    /// The address: `{path}` is replaced by the source path below the prefix, `{stem}` by the
    /// same without its extension; with neither, the path is appended.
    /// `https://wiki.example.com/it/{stem}`.
    pub url: String,
}

impl LinkRule {
    /// The rule's address for `source`, when the prefix matches it.
    pub fn link(&self, source: &str) -> Option<String> {
        let prefix = self.prefix.trim_start_matches("./");
        let rest = source.strip_prefix(prefix)?;
        if !(prefix.is_empty() || prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        // Characters that would end a URL's path are escaped; the URL parser escapes the rest
        // (spaces, non-ASCII) when the address is checked.
        let enc = |s: &str| s.replace('%', "%25").replace('#', "%23").replace('?', "%3F").replace(' ', "%20");
        let stem = match rest.rsplit_once('.') {
            Some((s, ext)) if !ext.contains('/') && !s.is_empty() && !s.ends_with('/') => s,
            _ => rest,
        };
        let url = if self.url.contains("{path}") || self.url.contains("{stem}") {
            self.url.replace("{path}", &enc(rest)).replace("{stem}", &enc(stem))
        } else if rest.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{}", self.url.trim_end_matches('/'), enc(rest))
        };
        kotae_ingest::parse::document_url(&url)
    }

    /// A rule whose address is not an absolute http(s) URL is a configuration error.
    pub fn check(&self) -> std::result::Result<(), String> {
        let sample = self.url.replace("{path}", "a/b.md").replace("{stem}", "a/b");
        kotae_ingest::parse::document_url(&sample).map(|_| ()).ok_or_else(|| {
            format!("ingest.links: '{}' (prefix '{}') is not an absolute http(s) URL", self.url, self.prefix)
        })
    }
}

/// The address citations link to for `source`: the one the document names, else the longest
/// matching rule's.
pub fn document_link(rules: &[LinkRule], source: &str, own: Option<&str>) -> Option<String> {
    if let Some(u) = own.and_then(kotae_ingest::parse::document_url) {
        return Some(u);
    }
    rules.iter().filter_map(|r| Some((r.prefix.len(), r.link(source)?))).max_by_key(|(n, _)| *n).map(|(_, u)| u)
}

/// What has been ingested (format version 1). Stored as the lexical index's commit payload,
/// so it changes atomically with the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub format: u32,
    pub embedder: String,
    pub dim: usize,
    pub ja_analyzer: String,
    /// `qdrant-edge` (embedded) or `qdrant-server`.
    #[serde(default = "default_backend")]
    pub vector_backend: String,
    pub files: BTreeMap<String, FileEntry>,
}

fn default_backend() -> String {
    "qdrant-edge".into()
}

/// Access groups a user may read: theirs plus `public`, deduplicated.
pub fn visible_groups(groups: &[String]) -> Vec<String> {
    let mut g: Vec<String> = groups.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    g.push(PUBLIC_GROUP.to_string());
    g.sort();
    g.dedup();
    g
}
