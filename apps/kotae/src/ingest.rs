//! `kotae ingest`: walk, hash, parse, clean, chunk, embed and commit — incrementally and safely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kotae_guard::Guard;
use kotae_index::{ChunkId, FileEntry, IndexedChunk, KnowledgeIndex, VectorPoint};
use kotae_ingest::dedup::{exact_hash, Deduper};
use kotae_ingest::{ChunkerConfig, FileType};
use kotae_models::{Embedder, InputKind};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    pub paths: Vec<PathBuf>,
    pub groups: Vec<String>,
    pub prune: bool,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct IngestSummary {
    pub files_seen: usize,
    pub files_unchanged: usize,
    pub files_ingested: usize,
    pub files_removed: usize,
    pub chunks_written: usize,
    pub chunks_embedded: usize,
    pub chunks_total: u64,
    pub truncated_for_embedding: usize,
    pub duplicates_dropped: usize,
    pub unresolved_inquiries_skipped: usize,
    pub personal_data_redacted: usize,
    pub boilerplate_lines_removed: usize,
    pub orphan_vectors_removed: usize,
    /// Chunks whose text holds instructions addressed to an AI ("ignore previous
    /// instructions…"): indexed, and quoted as data in every prompt, but an admin should look.
    pub instructions_flagged: Vec<Flagged>,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

/// A chunk the document guard flagged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flagged {
    pub source: String,
    pub section: String,
    pub category: String,
    pub rule: String,
}

struct FileJob {
    source: String,
    root: String,
    hash: String,
    chunks: Vec<IndexedChunk>,
}

/// Files under `path` (or `path` itself), with their source names relative to the root.
fn walk(path: &Path) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let abs = std::fs::canonicalize(path)?;
    if meta.is_file() {
        let root = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = abs.file_name().unwrap_or_default().to_string_lossy().into_owned();
        return Ok((root, vec![(name, abs)]));
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&abs).follow_links(false).sort_by_file_name() {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.') && entry.depth() > 0;
        if hidden || !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(&abs).unwrap_or(entry.path());
        let source = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        files.push((source, entry.path().to_path_buf()));
    }
    Ok((abs, files))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Text given to the embedder for a chunk: its section path, then its text.
pub fn passage_text(c: &IndexedChunk) -> String {
    format!("{}\n{}", c.section.join(" > "), c.text)
}

fn bar(quiet: bool, len: u64, msg: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

pub fn run_ingest(
    cfg: &Config,
    index: &mut KnowledgeIndex,
    embedder: &EmbedderHandle<'_>,
    opts: &IngestOptions,
) -> Result<IngestSummary> {
    let start = Instant::now();
    let mut sum = IngestSummary::default();
    let mut groups: Vec<String> = opts.groups.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect();
    if groups.is_empty() {
        groups.push(kotae_index::PUBLIC_GROUP.into());
    }
    groups.sort();
    groups.dedup();
    let chunker = ChunkerConfig { max_tokens: cfg.ingest.chunk_tokens };
    // Instructions hidden in manuals and logs are flagged here and quoted as data in prompts.
    let doc_guard = kotae_guard::Guardrails::load(cfg.guard.policy.as_deref(), None, None)?;
    let manifest = index.manifest().clone();
    let mut dedup = Deduper::new(cfg.ingest.near_duplicate_threshold);
    let mut seen_by_root: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut changed: Vec<(String, String, String, PathBuf)> = Vec::new(); // source, root, hash, path

    for path in &opts.paths {
        let (root, files) = walk(path)?;
        let root_s = root.display().to_string();
        let seen = seen_by_root.entry(root_s.clone()).or_default();
        for (source, file) in files {
            sum.files_seen += 1;
            seen.insert(source.clone());
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if size > cfg.ingest.max_file_bytes {
                let e = kotae_ingest::Error::TooLarge { size, limit: cfg.ingest.max_file_bytes };
                sum.skipped.push(Skipped { path: source, reason: e.to_string() });
                continue;
            }
            if let Err(e) = FileType::from_path(&file) {
                sum.skipped.push(Skipped { path: source, reason: e.to_string() });
                continue;
            }
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let hash = sha256_hex(&bytes);
            match manifest.files.get(&source) {
                Some(e) if e.hash == hash && e.groups == groups && e.root == root_s => sum.files_unchanged += 1,
                _ => changed.push((source, root_s.clone(), hash, file)),
            }
        }
    }

    // Parse, clean and chunk the changed files. The model is loaded only if something changed.
    let embedder: Option<&dyn Embedder> = if changed.is_empty() { None } else { Some(embedder.get()?) };
    let count = |s: &str| embedder.map_or(s.len(), |e| e.count_tokens(s).unwrap_or(s.len()));
    let pb = bar(opts.quiet, changed.len() as u64, "parse");
    let mut jobs = Vec::new();
    let ingested_at = now_unix();
    for (source, root, hash, file) in changed {
        pb.inc(1);
        let bytes = std::fs::read(&file)?;
        let ftype = FileType::from_path(&file).expect("checked above");
        match kotae_ingest::process_file(&source, &bytes, ftype, &chunker, &count) {
            Ok((chunks, rep)) => {
                sum.unresolved_inquiries_skipped += rep.unresolved_skipped;
                sum.duplicates_dropped += rep.duplicates_merged;
                sum.personal_data_redacted += rep.redactions;
                sum.boilerplate_lines_removed += rep.boilerplate_lines;
                let mut kept = Vec::new();
                for c in chunks {
                    if dedup.check_insert(&c.text).is_some() {
                        sum.duplicates_dropped += 1;
                        continue;
                    }
                    let section = c.section.join(" > ");
                    let v = doc_guard.check(kotae_guard::Direction::Document, &c.text, &Default::default());
                    let mut flags = Vec::new();
                    if let Some(f) = v.decisive() {
                        flags.push(f.category.as_str().to_string());
                        tracing::warn!(source = %source, section = %section, rule = %f.rule, "instructions in a document");
                        sum.instructions_flagged.push(Flagged {
                            source: source.clone(),
                            section: section.clone(),
                            category: f.category.as_str().into(),
                            rule: f.rule.clone(),
                        });
                        if v.blocked() {
                            continue;
                        }
                    }
                    kept.push(IndexedChunk {
                        id: ChunkId::of(&source, &section, &c.text, &groups),
                        source: source.clone(),
                        kind: match c.kind {
                            kotae_ingest::SourceKind::Manual => "manual".into(),
                            kotae_ingest::SourceKind::Inquiry => "inquiry".into(),
                        },
                        text_hash: exact_hash(&c.text),
                        section: c.section,
                        span: (c.span.start as u64, c.span.end as u64),
                        text: c.text,
                        lang: c.lang,
                        ordinal: c.ordinal,
                        doc_version: hash.clone(),
                        groups: groups.clone(),
                        timestamp: c.timestamp,
                        ingested_unix: ingested_at,
                        flags,
                    });
                }
                if kept.is_empty() {
                    sum.skipped.push(Skipped { path: source, reason: "no text to index after cleaning".into() });
                    continue;
                }
                jobs.push(FileJob { source, root, hash, chunks: kept });
            }
            Err(e) => sum.skipped.push(Skipped { path: source, reason: e.to_string() }),
        }
    }
    pb.finish_and_clear();

    // Embed and commit in batches of files; each commit is atomic.
    let total_chunks: usize = jobs.iter().map(|j| j.chunks.len()).sum();
    let pb = bar(opts.quiet, total_chunks as u64, "embed");
    let mut session = index.write()?;
    for batch in jobs.chunks(cfg.ingest.commit_every) {
        let ids: Vec<ChunkId> = batch.iter().flat_map(|j| j.chunks.iter().map(|c| c.id)).collect();
        let have = session.existing_vectors(&ids)?;
        let todo: Vec<&IndexedChunk> =
            batch.iter().flat_map(|j| j.chunks.iter()).filter(|c| !have.contains(&c.id)).collect();
        pb.inc((ids.len() - todo.len()) as u64);
        for group in todo.chunks(64) {
            let texts: Vec<String> = group.iter().map(|c| passage_text(c)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let out = embedder.expect("loaded when files changed").embed(&refs, InputKind::Passage)?;
            sum.truncated_for_embedding += out.truncated;
            sum.chunks_embedded += group.len();
            let points: Vec<VectorPoint> = group
                .iter()
                .zip(out.vectors)
                .map(|(c, v)| VectorPoint {
                    id: c.id,
                    vector: v,
                    groups: c.groups.clone(),
                    lang: c.lang.clone(),
                    source: c.source.clone(),
                })
                .collect();
            session.put_vectors(&points)?;
            pb.inc(group.len() as u64);
        }
        for job in batch {
            let entry = FileEntry {
                root: job.root.clone(),
                hash: job.hash.clone(),
                groups: groups.clone(),
                chunks: job.chunks.len(),
                ingested_unix: ingested_at,
            };
            session.replace_source(&job.source, entry, &job.chunks)?;
            sum.files_ingested += 1;
            sum.chunks_written += job.chunks.len();
        }
        session.commit()?;
    }
    pb.finish_and_clear();

    if opts.prune {
        let gone: Vec<String> = session
            .manifest()
            .files
            .iter()
            .filter(|(src, e)| seen_by_root.get(&e.root).is_some_and(|seen| !seen.contains(*src)))
            .map(|(src, _)| src.clone())
            .collect();
        for src in gone {
            session.remove_source(&src)?;
            sum.files_removed += 1;
        }
    }
    let changed_anything = sum.files_ingested + sum.files_removed > 0;
    session.finish()?;
    if changed_anything {
        sum.orphan_vectors_removed = index.sweep_orphans()?;
    }
    sum.chunks_total = index.num_chunks();
    sum.seconds = start.elapsed().as_secs_f64();
    Ok(sum)
}

/// The embedder, loaded on first use (an unchanged corpus never loads it).
pub struct EmbedderHandle<'a> {
    cfg: &'a Config,
    given: Option<&'a dyn Embedder>,
    loaded: std::sync::OnceLock<kotae_models::BertEmbedder>,
}

impl<'a> EmbedderHandle<'a> {
    pub fn lazy(cfg: &'a Config) -> Self {
        Self { cfg, given: None, loaded: std::sync::OnceLock::new() }
    }
    pub fn with(cfg: &'a Config, e: &'a dyn Embedder) -> Self {
        Self { cfg, given: Some(e), loaded: std::sync::OnceLock::new() }
    }
    pub fn get(&self) -> Result<&dyn Embedder> {
        if let Some(e) = self.given {
            return Ok(e);
        }
        if self.loaded.get().is_none() {
            let _ = self.loaded.set(crate::load_embedder(self.cfg)?);
        }
        Ok(self.loaded.get().expect("just set"))
    }
}

pub fn print_summary(s: &IngestSummary) {
    println!(
        "ingested {} file(s), {} unchanged, {} removed; {} chunks written ({} embedded), {} in the knowledge base; {:.1}s",
        s.files_ingested, s.files_unchanged, s.files_removed, s.chunks_written, s.chunks_embedded, s.chunks_total, s.seconds
    );
    println!(
        "cleaning: {} duplicates dropped, {} unresolved inquiries skipped, {} personal-data items redacted, {} boilerplate lines removed",
        s.duplicates_dropped, s.unresolved_inquiries_skipped, s.personal_data_redacted, s.boilerplate_lines_removed
    );
    if s.truncated_for_embedding > 0 {
        println!("note: {} chunk(s) were longer than the embedder's limit and were cut for embedding (full text stays searchable by BM25)", s.truncated_for_embedding);
    }
    if !s.instructions_flagged.is_empty() {
        println!(
            "flagged {} chunk(s) with instructions addressed to an AI (quoted as data in prompts; review them):",
            s.instructions_flagged.len()
        );
        for f in &s.instructions_flagged {
            println!("  {} [{}]: {} ({})", f.source, f.section, f.category, f.rule);
        }
    }
    if !s.skipped.is_empty() {
        println!("skipped {} file(s):", s.skipped.len());
        for k in &s.skipped {
            println!("  {}: {}", k.path, k.reason);
        }
    }
}
