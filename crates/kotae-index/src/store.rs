//! The knowledge base on disk: lexical index + vector store + manifest, written in sessions that
//! commit atomically, and searched in bm25, dense or hybrid mode.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tantivy::{IndexWriter, TantivyDocument, Term};

use crate::japanese::JapaneseTokenizer;
use crate::lexical::{JaAnalyzer, Lexical, Translation};
use crate::vector::{EdgeStore, HnswSettings, VectorFilter, VectorPoint, VectorStore};
use crate::vector_server::{ServerConfig, ServerStore};
use crate::{
    visible_groups, ChunkId, Error, FileEntry, Hit, IndexedChunk, Manifest, Result, SearchMode, SearchRequest,
};

pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Folder of this knowledge base (`lexical/` and `vectors/` live inside).
    pub dir: PathBuf,
    /// Name of the embedder; empty opens a knowledge base whatever embedder its vectors came
    /// from (for re-embedding it).
    pub embedder: String,
    /// Vector dimension of the embedder; `None` takes it from an existing knowledge base
    /// (for BM25-only use, without loading the model).
    pub dim: Option<usize>,
    /// Compiled vibrato dictionary; `None` (or missing file) falls back to bigrams for a new index.
    pub ja_dictionary: Option<PathBuf>,
    pub hnsw: HnswSettings,
    /// A Qdrant server or cluster instead of the embedded engine.
    pub server: Option<ServerConfig>,
    /// Compiled bilingual dictionary (`lexicon.tsv`) for cross-lingual BM25; `None` (or a
    /// missing file) searches each language by its own words only.
    pub lexicon: Option<PathBuf>,
    /// Weight of a translated word relative to one of the query's own (0 turns it off).
    pub cross_lingual_weight: f32,
    /// Where documents live on the intranet (`[[ingest.links]]`): hits carry the address.
    pub links: Vec<crate::LinkRule>,
}

/// What `KnowledgeIndex::candidates` found.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    pub bm25: Vec<(ChunkId, f32)>,
    pub dense: Vec<(ChunkId, f32)>,
    pub chunks: HashMap<ChunkId, IndexedChunk>,
    /// BM25's best hit matched only translations of the query's words (see `Fusion::fuse_for`).
    pub bm25_best_by_translation: bool,
}

pub struct KnowledgeIndex {
    lexical: Lexical,
    vectors: Box<dyn VectorStore>,
    /// The committed manifest; a write session replaces it at each commit, while readers go on.
    manifest: std::sync::RwLock<Manifest>,
    links: Vec<crate::LinkRule>,
    /// Held while open: one process at a time writes a knowledge base directory. `None` for a
    /// follower ([`KnowledgeIndex::follow`]), which never writes.
    _lock: Option<std::fs::File>,
    /// Set on a follower: the commit it last loaded, by `meta.json`'s modification time and size.
    follow: Option<Follow>,
    /// This knowledge base's identity (`kb.id`, made by its first writer): what the jobs that
    /// change it are queued under, the same for its writer and its followers wherever they
    /// mount the folder, and different for another folder of the same name.
    id: String,
}

/// The knowledge base's identity: read `<dir>/kb.id`, or (`create`, by the writer holding the
/// lock) make it.
fn kb_id(dir: &Path, create: bool) -> Result<String> {
    let path = dir.join("kb.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
        _ if create => {
            let id = uuid::Uuid::new_v4().to_string();
            let tmp = dir.join("kb.id.tmp");
            std::fs::write(&tmp, &id).and_then(|_| std::fs::rename(&tmp, &path)).map_err(|e| Error::io(&path, e))?;
            Ok(id)
        }
        _ => Err(Error::Incompatible(format!(
            "{} has no kb.id yet: start its writer (server.role = \"all\") with this version first",
            dir.display()
        ))),
    }
}

/// What a follower knows of the writer's commits: `meta.json`'s identity when it last loaded
/// a commit, and when. tantivy replaces `meta.json` by renaming a new file over it, so each
/// commit changes its inode, times or size; as a file system may reuse an inode within its
/// timestamp granularity, the commit is also re-read at least every `FOLLOW_RECHECK`.
struct Follow {
    meta: PathBuf,
    seen: std::sync::Mutex<Option<(MetaStamp, std::time::Instant, Generation)>>,
}

type MetaStamp = (u64, Option<std::time::SystemTime>, i64, i64, u64);

/// What a commit's reader reads: its segments and their deletes. A merge rewrites `meta.json`
/// with the same opstamp but other segments (and the writer then deletes the merged ones), so
/// the opstamp alone would leave a follower on files that are gone.
type Generation = (u64, Vec<(String, Option<u64>)>);

fn generation(m: &tantivy::IndexMeta) -> Generation {
    let mut segs: Vec<(String, Option<u64>)> =
        m.segments.iter().map(|s| (s.id().uuid_string(), s.delete_opstamp())).collect();
    segs.sort();
    (m.opstamp, segs)
}

/// The longest a follower trusts an unchanged `meta.json` without reading it.
const FOLLOW_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Take the knowledge base's lock (`<dir>/kotae.lock`, an OS file lock, released when the
/// process ends however it ends). A second process gets a clear error naming the holder,
/// not a storage engine's lock failure.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("kotae.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => {
            let me = format!("pid {} ({})", std::process::id(), std::env::args().take(2).collect::<Vec<_>>().join(" "));
            f.set_len(0)
                .and_then(|_| f.rewind())
                .and_then(|_| f.write_all(me.as_bytes()))
                .map_err(|e| Error::io(&path, e))?;
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            Err(Error::InUse(format!(
                "the knowledge base in {} is open in another Kotae process ({}): \
                 stop it first (a running `kotae serve` holds it until it exits), go through it \
                 (`kotae ingest --server URL`, `kotae search --server URL`), or use another --kb",
                dir.display(),
                if holder.trim().is_empty() { "unknown" } else { holder.trim() }
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

impl KnowledgeIndex {
    /// Open (or create) the knowledge base in `cfg.dir` for reading and writing; one process
    /// at a time (`kotae.lock`).
    pub fn open(cfg: &IndexConfig) -> Result<Self> {
        Self::open_as(cfg, false)
    }

    /// Open a knowledge base that another process writes (the writer of a deployment whose
    /// replicas share the folder, e.g. a ReadWriteMany volume, and a Qdrant server): no lock is
    /// taken, nothing is written, and every read first catches up with the writer's latest
    /// commit (a `stat` of `meta.json`; on a change the lexical reader and the manifest are
    /// reloaded together). Until then it serves the commit it has, whole. The vectors must be
    /// on a Qdrant server (`cfg.server`): the embedded engine's files are one process's.
    pub fn follow(cfg: &IndexConfig) -> Result<Self> {
        if cfg.server.is_none() {
            return Err(Error::Incompatible(
                "a replica that follows another process's knowledge base needs its vectors on a Qdrant server \
                 (vector_store.url): the embedded engine's files belong to one process"
                    .into(),
            ));
        }
        if !cfg.dir.join("lexical").join("meta.json").exists() {
            return Err(Error::Incompatible(format!(
                "no knowledge base in {} yet: the writer creates it when it starts",
                cfg.dir.display()
            )));
        }
        Self::open_as(cfg, true)
    }

    fn open_as(cfg: &IndexConfig, follower: bool) -> Result<Self> {
        let lex_dir = cfg.dir.join("lexical");
        let existing = lex_dir.join("meta.json").exists();
        if !existing && cfg.dim.is_none() {
            return Err(Error::Incompatible(format!(
                "no knowledge base in {} yet: run `kotae ingest` first",
                cfg.dir.display()
            )));
        }
        let lock = if follower { None } else { Some(lock_dir(&cfg.dir)?) };
        let dict = cfg.ja_dictionary.as_deref().filter(|p| p.exists());
        // Peek at the stored manifest to learn which Japanese analyzer the index was built with.
        let stored: Option<Manifest> = if existing {
            let idx = tantivy::Index::open_in_dir(&lex_dir)?;
            match idx.load_metas()?.payload {
                Some(p) => Some(serde_json::from_str(&p).map_err(|e| Error::Manifest(e.to_string()))?),
                None => None,
            }
        } else {
            None
        };
        let want_morph = match &stored {
            Some(m) => m.ja_analyzer == "vibrato-ipadic",
            None => dict.is_some(),
        };
        let ja = if want_morph {
            let path = dict.ok_or_else(|| {
                Error::Dictionary(
                    "this knowledge base was indexed with the IPADIC dictionary, which is not installed; \
                     run `kotae models fetch ipadic`"
                        .into(),
                )
            })?;
            JaAnalyzer::Morphological(JapaneseTokenizer::load(path)?)
        } else {
            if stored.is_none() {
                tracing::warn!(
                    "Japanese dictionary not installed: using character bigrams (run `kotae models fetch ipadic`)"
                );
            }
            JaAnalyzer::Bigram
        };
        let mut lexical = Lexical::open(&lex_dir, &ja)?;
        if let (JaAnalyzer::Morphological(tok), Some(path)) = (&ja, cfg.lexicon.as_deref().filter(|p| p.exists())) {
            if cfg.cross_lingual_weight > 0.0 {
                lexical.translation = Some(Translation::new(path.to_path_buf(), tok.clone(), cfg.cross_lingual_weight));
            }
        } else if cfg.cross_lingual_weight > 0.0 && cfg.lexicon.is_some() {
            tracing::warn!(
                "bilingual dictionary or IPADIC not installed: Japanese and English are searched by their own words \
                 only (run `kotae models fetch edict ipadic`)"
            );
        }
        let mut manifest = lexical.manifest()?;
        let dim = match (cfg.dim, manifest.format) {
            (Some(d), _) => d,
            (None, 0) => {
                return Err(Error::Incompatible(format!(
                    "no knowledge base in {} yet: run `kotae ingest` first",
                    cfg.dir.display()
                )))
            }
            (None, _) => manifest.dim,
        };
        if manifest.format == 0 {
            manifest = Manifest {
                format: MANIFEST_FORMAT,
                embedder: cfg.embedder.clone(),
                dim,
                ja_analyzer: ja.name().into(),
                vector_backend: String::new(),
                files: Default::default(),
            };
        } else if manifest.embedder.ends_with("~partial") && !cfg.embedder.is_empty() {
            return Err(Error::Incompatible(format!(
                "re-embedding the knowledge base in {} with {} was interrupted: run `kotae finetune embedder --reembed` to finish it",
                cfg.dir.display(),
                manifest.embedder.trim_end_matches("~partial")
            )));
        } else if (!cfg.embedder.is_empty() && manifest.embedder != cfg.embedder) || manifest.dim != dim {
            return Err(Error::Incompatible(format!(
                "the knowledge base in {} was built with embedder '{}' ({}-d), but '{}' ({}-d) is configured; \
                 use the same embedder or ingest into a new --data-dir",
                cfg.dir.display(),
                manifest.embedder,
                manifest.dim,
                cfg.embedder,
                dim
            )));
        }
        let backend = if cfg.server.is_some() { "qdrant-server" } else { "qdrant-edge" };
        if manifest.files.is_empty() {
            manifest.vector_backend = backend.into();
        } else if manifest.vector_backend != backend {
            return Err(Error::Incompatible(format!(
                "the knowledge base in {} keeps its vectors in {}, but {backend} is configured; \
                 ingest into a new knowledge base (--kb) to move it",
                cfg.dir.display(),
                manifest.vector_backend
            )));
        }
        let vectors: Box<dyn VectorStore> = match &cfg.server {
            Some(server) => Box::new(ServerStore::connect(server, dim, cfg.hnsw)?),
            None => Box::new(EdgeStore::open(&cfg.dir.join("vectors"), dim, cfg.hnsw)?),
        };
        let follow = follower.then(|| Follow { meta: lex_dir.join("meta.json"), seen: Default::default() });
        let id = kb_id(&cfg.dir, !follower)?;
        let index = Self {
            lexical,
            vectors,
            manifest: std::sync::RwLock::new(manifest),
            links: cfg.links.clone(),
            _lock: lock,
            follow,
            id,
        };
        index.catch_up();
        Ok(index)
    }

    /// The knowledge base's identity (see `kb.id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this is a follower ([`KnowledgeIndex::follow`]).
    pub fn is_follower(&self) -> bool {
        self.follow.is_some()
    }

    /// On a follower: load the writer's latest commit if `meta.json` changed since the last
    /// look (or was last read `FOLLOW_RECHECK` ago). The lexical reader and the manifest move
    /// together (the manifest is read from the same commit the reader loaded); a failed reload
    /// (a segment the writer merged away between the two reads) keeps the commit it has and is
    /// tried again at the next read. Skipped while this thread or another holds the manifest
    /// (tried again next time).
    pub fn catch_up(&self) {
        use std::os::unix::fs::MetadataExt;
        let Some(f) = &self.follow else { return };
        let Ok(meta) = std::fs::metadata(&f.meta) else { return };
        let stamp = (meta.ino(), meta.modified().ok(), meta.ctime(), meta.ctime_nsec(), meta.len());
        // One thread looks at a time; the others read the commit they have meanwhile (a
        // reload on a slow shared volume must not hold every search).
        let mut seen = match f.seen.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if seen.as_ref().is_some_and(|(s, at, _)| *s == stamp && at.elapsed() < FOLLOW_RECHECK) {
            return;
        }
        let Ok(mut manifest) = self.manifest.try_write() else { return };
        match self.load_latest(seen.as_ref().map(|s| &s.2)) {
            Ok((generation, m)) => {
                if let Some(m) = m {
                    if !manifest.embedder.is_empty() && m.embedder != manifest.embedder {
                        tracing::error!(
                            was = %manifest.embedder, now = %m.embedder,
                            "the writer re-embedded the knowledge base with another embedder: restart this replica"
                        );
                    }
                    *manifest = m;
                }
                *seen = Some((stamp, std::time::Instant::now(), generation));
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the writer's latest commit yet; serving the one before"),
        }
    }

    /// Reload the lexical reader unless the commit is still the `loaded` one: the commit's
    /// generation and its manifest (`None`: unchanged, or no manifest committed yet). The
    /// manifest is parsed before the reader moves, so a manifest this build cannot read leaves
    /// reader and manifest on the commit before, together.
    fn load_latest(&self, loaded: Option<&Generation>) -> Result<(Generation, Option<Manifest>)> {
        for _ in 0..5 {
            let before = self.lexical.index.load_metas()?;
            let generation = generation(&before);
            if Some(&generation) == loaded {
                return Ok((generation, None));
            }
            let m = match &before.payload {
                Some(p) => Some(serde_json::from_str(p).map_err(|e| Error::Manifest(e.to_string()))?),
                None => None,
            };
            self.lexical.reader.reload()?;
            // meta.json only moves forward: the same generation on both sides means the reader
            // loaded this very commit.
            if self::generation(&self.lexical.index.load_metas()?) == generation {
                return Ok((generation, m));
            }
        }
        Err(Error::Incompatible("the writer committed five times while this replica reloaded".into()))
    }

    /// The committed manifest (hold the guard briefly: a commit waits for it).
    pub fn manifest(&self) -> std::sync::RwLockReadGuard<'_, Manifest> {
        self.catch_up();
        self.manifest.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The address on the intranet citations of `source` link to, when known: the one the
    /// document names, else the longest matching `[[ingest.links]]` rule's.
    pub fn document_link(&self, source: &str) -> Option<String> {
        let own = self.manifest().files.get(source).and_then(|e| e.url.clone());
        crate::document_link(&self.links, source, own.as_deref())
    }

    pub fn vectors(&self) -> &dyn VectorStore {
        self.vectors.as_ref()
    }

    /// Load what searching needs that opening does not (the bilingual dictionary), so that the
    /// first query does not pay for it. A long-running server calls this once at start.
    pub fn preload(&self) -> Result<()> {
        match &self.lexical.translation {
            Some(t) => t.preload(),
            None => Ok(()),
        }
    }

    pub fn num_chunks(&self) -> u64 {
        self.catch_up();
        self.lexical.num_docs()
    }

    pub fn has_text_hash(&self, hash: &str) -> Result<bool> {
        self.lexical.has_text_hash(hash)
    }

    /// Start writing. Only one session may be open at a time (tantivy's lock enforces it).
    /// Searches go on meanwhile and see each commit as soon as it is made: a document's old
    /// chunks or its new ones, never a mix.
    pub fn write(&self) -> Result<WriteSession<'_>> {
        if self.follow.is_some() {
            return Err(Error::InUse(
                "this server follows a knowledge base another process writes (server.role = \"replica\"): \
                 changes go to the writer as jobs"
                    .into(),
            ));
        }
        let writer: IndexWriter<TantivyDocument> =
            self.lexical.index.writer_with_num_threads(1, 64 << 20).map_err(|e| {
                if matches!(e, tantivy::TantivyError::LockFailure(..)) {
                    Error::Incompatible(
                        "another `kotae ingest` is writing this knowledge base; wait for it to finish".into(),
                    )
                } else {
                    e.into()
                }
            })?;
        let manifest = self.manifest().clone();
        Ok(WriteSession { index: self, writer, manifest, stale: Vec::new(), dirty: false })
    }

    /// Chunks of the committed index in `ids`, visible to `groups`.
    pub fn get_many(&self, ids: &[ChunkId], groups: &[String]) -> Result<Vec<IndexedChunk>> {
        self.catch_up();
        self.lexical.get_many(ids, &visible_groups(groups))
    }

    /// The two ranked lists a search fuses, before fusion and deduplication: BM25 (empty in
    /// dense mode) and dense (empty in bm25 mode), each best first, with the chunks they name.
    /// For diagnosing rankings (`kotae eval retrieval --dump`); `search` is built on it.
    pub fn candidates(&self, req: &SearchRequest) -> Result<Candidates> {
        self.catch_up();
        let groups = visible_groups(&req.groups);
        let depth = (req.top_k * 4).max(40);
        // One snapshot for the BM25 hits and the chunks of the dense hits: a commit between
        // the two reads (a document replaced while serving) would otherwise give old-version
        // BM25 hits and new-version dense hits in one answer.
        let searcher = self.lexical.reader.searcher();
        let mut chunks: HashMap<ChunkId, IndexedChunk> = HashMap::new();
        let mut bm25 = Vec::new();
        let mut bm25_best_by_translation = false;
        if req.mode != SearchMode::Dense {
            let found = self.lexical.search_in(&searcher, &req.text, depth, &groups, req.lang.as_deref())?;
            bm25_best_by_translation = found.best_by_translation_only;
            for (c, s) in found.hits {
                bm25.push((c.id, s));
                chunks.insert(c.id, c);
            }
        }
        let mut dense = Vec::new();
        if req.mode != SearchMode::Bm25 {
            let v = req
                .vector
                .as_ref()
                .ok_or_else(|| Error::Query("dense and hybrid search need the query's embedding".into()))?;
            let filter = VectorFilter { groups: groups.clone(), lang: req.lang.clone() };
            let found = self.vectors.search(v, depth, &filter)?;
            let missing: Vec<ChunkId> = found.iter().map(|x| x.0).filter(|id| !chunks.contains_key(id)).collect();
            for c in self.lexical.get_many_in(&searcher, &missing, &groups)? {
                chunks.insert(c.id, c);
            }
            // Points not in the committed lexical index (an interrupted ingest) are ignored.
            dense = found.into_iter().filter(|(id, _)| chunks.contains_key(id)).collect();
        }
        Ok(Candidates { bm25, dense, chunks, bm25_best_by_translation })
    }

    pub fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>> {
        let Candidates { bm25, dense, mut chunks, bm25_best_by_translation } = self.candidates(req)?;
        let dense_scores: HashMap<ChunkId, f32> = dense.iter().copied().collect();
        let ranked = match req.mode {
            SearchMode::Bm25 => bm25,
            SearchMode::Dense => dense,
            SearchMode::Hybrid => {
                let source = |id: &ChunkId| chunks.get(id).map(|c| c.source.clone());
                req.fusion.fuse_for(&bm25, &dense, bm25_best_by_translation, source)
            }
        };
        let mut seen = HashSet::new();
        let mut hits = Vec::with_capacity(req.top_k);
        let manifest = self.manifest();
        for (id, score) in ranked {
            let Some(c) = chunks.remove(&id) else {
                continue;
            };
            if !seen.insert(c.text_hash.clone()) {
                continue;
            }
            let own = manifest.files.get(&c.source).and_then(|e| e.url.as_deref());
            hits.push(Hit {
                rank: hits.len() + 1,
                score,
                url: crate::document_link(&self.links, &c.source, own),
                source: c.source,
                section: c.section.join(" > "),
                chunk_id: c.id.to_string(),
                lang: c.lang,
                text: c.text,
                kind: c.kind,
                span: c.span,
                dense_score: dense_scores.get(&id).copied(),
                flags: c.flags,
            });
            if hits.len() == req.top_k {
                break;
            }
        }
        Ok(hits)
    }

    /// Every committed chunk, whatever its access groups: for re-embedding the knowledge base
    /// and adapting the embedder to it, never for answers.
    pub fn all_chunks(&self) -> Result<Vec<IndexedChunk>> {
        self.catch_up();
        let mut out = Vec::new();
        let searcher = self.lexical.reader.searcher();
        for seg in searcher.segment_readers() {
            let store = seg.get_store_reader(64).map_err(|e| Error::io("lexical store", e))?;
            for doc in store.iter::<TantivyDocument>(seg.alive_bitset()) {
                out.push(self.lexical.from_doc(&doc?));
            }
        }
        Ok(out)
    }

    /// The texts of up to `limit` indexed chunks, whatever their access groups: for checks an
    /// operator runs over the whole knowledge base (the nightly vocabulary check), never for
    /// answers.
    pub fn chunk_texts(&self, limit: usize) -> Result<Vec<String>> {
        self.catch_up();
        let mut out = Vec::new();
        let searcher = self.lexical.reader.searcher();
        for seg in searcher.segment_readers() {
            let store = seg.get_store_reader(64).map_err(|e| Error::io("lexical store", e))?;
            for doc in store.iter::<TantivyDocument>(seg.alive_bitset()) {
                if out.len() >= limit {
                    return Ok(out);
                }
                use tantivy::schema::Value;
                if let Some(t) = doc?.get_first(self.lexical.f.text).and_then(|v| v.as_str()) {
                    out.push(t.to_string());
                }
            }
        }
        Ok(out)
    }

    fn all_lexical_ids(&self) -> Result<HashSet<ChunkId>> {
        let mut out = HashSet::new();
        let searcher = self.lexical.reader.searcher();
        for seg in searcher.segment_readers() {
            let store = seg.get_store_reader(64).map_err(|e| Error::io("lexical store", e))?;
            for doc in store.iter::<TantivyDocument>(seg.alive_bitset()) {
                let d = doc?;
                use tantivy::schema::Value;
                if let Some(id) = d.get_first(self.lexical.f.chunk_id).and_then(|v| v.as_str()).and_then(ChunkId::parse)
                {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    /// Delete vectors whose chunk is not in the committed lexical index (left by an interrupted
    /// ingest). Returns how many went.
    pub fn sweep_orphans(&self) -> Result<usize> {
        if self.follow.is_some() {
            return Ok(0); // the writer sweeps: a follower's view may be a commit behind
        }
        let live = self.all_lexical_ids()?;
        let orphans: Vec<ChunkId> = self.vectors.all_ids()?.into_iter().filter(|id| !live.contains(id)).collect();
        self.vectors.delete(&orphans)?;
        self.vectors.flush()?;
        Ok(orphans.len())
    }
}

/// An open write: vectors go to the store at once, chunks and manifest land at [`WriteSession::commit`].
pub struct WriteSession<'a> {
    index: &'a KnowledgeIndex,
    writer: IndexWriter<TantivyDocument>,
    manifest: Manifest,
    stale: Vec<ChunkId>,
    dirty: bool,
}

impl WriteSession<'_> {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Which of `ids` already have a vector (no need to embed them again).
    pub fn existing_vectors(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        self.index.vectors.existing(ids)
    }

    /// The stored vectors of those of `ids` that are stored.
    pub fn stored_vectors(&self, ids: &[ChunkId]) -> Result<std::collections::HashMap<ChunkId, Vec<f32>>> {
        self.index.vectors.vectors(ids)
    }

    /// Store new vectors now (idempotent; invisible until their chunks are committed).
    pub fn put_vectors(&self, points: &[VectorPoint]) -> Result<()> {
        self.index.vectors.upsert(points)
    }

    /// Replace every chunk of `source` with `chunks` (their vectors must already be stored).
    pub fn replace_source(&mut self, source: &str, entry: FileEntry, chunks: &[IndexedChunk]) -> Result<()> {
        let new: HashSet<ChunkId> = chunks.iter().map(|c| c.id).collect();
        self.stale.extend(self.index.lexical.ids_of_source(source)?.into_iter().filter(|id| !new.contains(id)));
        self.writer.delete_term(Term::from_field_text(self.index.lexical.f.source, source));
        for c in chunks {
            self.writer.add_document(self.index.lexical.to_doc(c))?;
        }
        self.manifest.files.insert(source.to_string(), entry);
        self.dirty = true;
        Ok(())
    }

    /// Name the embedder the stored vectors come from (lands at the next commit).
    pub fn set_embedder(&mut self, name: &str) {
        self.manifest.embedder = name.to_string();
        self.dirty = true;
    }

    pub fn remove_source(&mut self, source: &str) -> Result<()> {
        self.stale.extend(self.index.lexical.ids_of_source(source)?);
        self.writer.delete_term(Term::from_field_text(self.index.lexical.f.source, source));
        self.manifest.files.remove(source);
        self.dirty = true;
        Ok(())
    }

    /// Make everything since the last commit visible at once, then drop replaced vectors.
    pub fn commit(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.index.vectors.flush()?;
        let payload = serde_json::to_string(&self.manifest).map_err(|e| Error::Manifest(e.to_string()))?;
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.index.lexical.reader.reload()?;
        *self.index.manifest.write().unwrap_or_else(|e| e.into_inner()) = self.manifest.clone();
        let stale = std::mem::take(&mut self.stale);
        self.index.vectors.delete(&stale)?;
        self.index.vectors.flush()?;
        self.dirty = false;
        Ok(())
    }

    /// Commit, wait for merges and build the vector index.
    pub fn finish(mut self) -> Result<()> {
        self.commit()?;
        self.writer.wait_merging_threads()?;
        self.index.vectors.optimize()?;
        self.index.vectors.flush()
    }
}

/// Path of the compiled dictionary inside a models folder.
/// Where `kotae models fetch edict` puts the compiled bilingual dictionary.
pub fn lexicon_path(models_dir: &Path) -> PathBuf {
    models_dir.join("edict").join("lexicon.tsv")
}

pub fn ipadic_path(models_dir: &Path) -> PathBuf {
    models_dir.join("ipadic").join("system.dic")
}
