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
    /// Told how far the run is; returning `false` cancels it (see [`IngestSummary::cancelled`]).
    pub watch: Option<Watch>,
    /// Re-index: only documents already in the knowledge base are read (new files in their
    /// folders are left alone), and one whose file is gone is reported.
    pub only_indexed: bool,
    /// Ingest files again even when unchanged (after a chunking or cleaning change); vectors
    /// of unchanged chunks are reused.
    pub force: bool,
}

/// How far a run is (an admin job's progress).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct IngestProgress {
    /// `scanning` (hashing files), `ingesting` (parsing, embedding, committing), `finishing`.
    pub phase: &'static str,
    pub files_seen: usize,
    /// Files that are new or changed, how many of them were parsed, and how many committed.
    pub files_total: usize,
    pub files_processed: usize,
    pub files_ingested: usize,
    pub chunks_written: usize,
}

/// Receives the run's progress; `false` stops the run before its next commit.
#[derive(Clone)]
pub struct Watch(pub std::sync::Arc<dyn Fn(&IngestProgress) -> bool + Send + Sync>);

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// A document whose readers changed on this run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupChange {
    pub path: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

/// A document carrying a confidentiality marker.
#[derive(Debug, Clone, Serialize)]
pub struct Marked {
    pub path: String,
    pub markers: Vec<String>,
    /// The groups it was indexed with.
    pub groups: Vec<String>,
    /// Whether `ingest.markers` decided them.
    pub mapped: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct IngestSummary {
    pub files_seen: usize,
    pub files_unchanged: usize,
    pub files_ingested: usize,
    pub files_removed: usize,
    pub chunks_written: usize,
    pub chunks_embedded: usize,
    /// Chunks whose vector was moved, not embedded again: same text, only the groups changed.
    #[serde(skip_serializing_if = "is_zero")]
    pub vectors_reused: usize,
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
    /// Documents whose access groups changed (logged too).
    pub groups_changed: Vec<GroupChange>,
    /// Documents with a confidentiality marker line.
    pub marked: Vec<Marked>,
    pub skipped: Vec<Skipped>,
    /// The run was cancelled: the files counted in `files_ingested` were committed before it
    /// stopped; the others were not touched (their old version, if any, still serves).
    pub cancelled: bool,
    pub seconds: f64,
    /// The process's peak resident memory so far (Linux), in bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size (VmHWM), where the OS says it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb =
        s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
    Some(kb * 1024)
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
    groups: Vec<String>,
    chunks: Vec<IndexedChunk>,
    flagged: usize,
    url: Option<String>,
}

/// A file to (re)ingest.
struct Changed {
    source: String,
    root: String,
    hash: String,
    path: PathBuf,
    groups: Vec<String>,
}

fn clean_groups<'a>(groups: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut g: Vec<String> = groups.into_iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect();
    g.sort();
    g.dedup();
    g
}

/// `cfg` with the folder rules admins set through the admin API (kept in the state
/// database) joined to kotae.toml's: an admin rule replaces a kotae.toml rule for the same
/// folder. Both `kotae serve` and `kotae ingest` apply them, so neither undoes the other.
pub fn with_admin_rules(cfg: &Config, admin: &[kotae_server::store::AccessRuleRow]) -> Config {
    let mut out = cfg.clone();
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    out.ingest.access.retain(|r| !admin.iter().any(|a| canonical(&r.path) == Path::new(&a.path)));
    out.ingest.access.extend(
        admin.iter().map(|a| crate::config::AccessRule { path: PathBuf::from(&a.path), groups: a.groups.clone() }),
    );
    out
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Why a document nobody labelled is refused.
pub const UNLABELLED: &str =
    "no access groups: say who may read it with --groups (e.g. --groups public, --groups staff), \
     ingest.default_groups or an [[ingest.access]] rule in kotae.toml";

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
    // Hidden files and folders (`.git/`, `.private/`) are never walked into.
    let walker = walkdir::WalkDir::new(&abs)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = entry?;
        if !entry.file_type().is_file() {
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
    index: &KnowledgeIndex,
    embedder: &EmbedderHandle<'_>,
    opts: &IngestOptions,
) -> Result<IngestSummary> {
    let start = Instant::now();
    let mut sum = IngestSummary::default();
    let explicit = clean_groups(&opts.groups);
    let default_groups = clean_groups(&cfg.ingest.default_groups);
    // Folder rules on canonical paths, longest first.
    let mut rules: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for r in &cfg.ingest.access {
        let p = std::fs::canonicalize(&r.path).with_context(|| {
            format!(
                "ingest.access: the path {} does not exist (relative paths start at the working directory)",
                r.path.display()
            )
        })?;
        let g = clean_groups(&r.groups);
        anyhow::ensure!(!g.is_empty(), "ingest.access: the rule for {} has no groups", r.path.display());
        rules.push((p, g));
    }
    rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_os_str().len()));
    let chunker = ChunkerConfig { max_tokens: cfg.ingest.chunk_tokens };
    // Instructions hidden in manuals and logs are flagged here and quoted as data in prompts.
    let doc_guard = kotae_guard::Guardrails::load(cfg.guard.policy.as_deref(), None, None)?;
    let manifest = index.manifest().clone();
    // Where each indexed document came from: a file is one document whatever folder it is
    // ingested from.
    let indexed_at: BTreeMap<PathBuf, &str> =
        manifest.files.iter().map(|(src, e)| (Path::new(&e.root).join(src), src.as_str())).collect();
    // Near-duplicates are dropped among chunks that the same groups read (a copy in a
    // restricted manual must not hide the public one), against what is indexed already as well
    // as within the run: otherwise what a run dropped came back in the next one.
    let mut dedup: BTreeMap<Vec<String>, Deduper> = BTreeMap::new();
    let mut seen_by_root: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut changed: Vec<Changed> = Vec::new();

    let keep_going = |p: &IngestProgress| opts.watch.as_ref().is_none_or(|w| (w.0)(p));
    'scan: for path in &opts.paths {
        let (root, files) = walk(path)?;
        let root_s = root.display().to_string();
        let seen = seen_by_root.entry(root_s.clone()).or_default();
        for (source, file) in files {
            if opts.only_indexed && manifest.files.get(&source).is_none_or(|e| e.root != root_s) {
                continue;
            }
            sum.files_seen += 1;
            if sum.files_seen % 64 == 0
                && !keep_going(&IngestProgress { phase: "scanning", files_seen: sum.files_seen, ..Default::default() })
            {
                sum.cancelled = true;
                break 'scan;
            }
            seen.insert(source.clone());
            let existing = manifest.files.get(&source);
            if let Some(e) = existing.filter(|e| e.root != root_s) {
                let reason = format!(
                    "a document named {source} from {} is already indexed; rename one of them, or ingest from that folder",
                    e.root
                );
                sum.skipped.push(Skipped { path: source, reason });
                continue;
            }
            if let Some(other) = indexed_at.get(&file).filter(|o| **o != source) {
                let reason = format!(
                    "already indexed as {other}: ingest the folder it came from again (or remove it with --prune there) instead of adding it under a second name"
                );
                sum.skipped.push(Skipped { path: source, reason });
                continue;
            }
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
            // Who may read it: a folder rule, else --groups, else what it had, else the default.
            let groups = match (rules.iter().find(|(p, _)| file.starts_with(p)), existing) {
                (Some((_, g)), _) => g.clone(),
                (None, _) if !explicit.is_empty() => explicit.clone(),
                (None, Some(e)) => e.groups.clone(),
                (None, None) if !default_groups.is_empty() => default_groups.clone(),
                (None, None) => {
                    sum.skipped.push(Skipped { path: source, reason: UNLABELLED.into() });
                    continue;
                }
            };
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    sum.skipped.push(Skipped { path: source, reason: format!("cannot read the file: {e}") });
                    continue;
                }
            };
            let hash = sha256_hex(&bytes);
            match existing {
                Some(e) if e.hash == hash && e.groups == groups && !opts.force => sum.files_unchanged += 1,
                _ => changed.push(Changed { source, root: root_s.clone(), hash, path: file, groups }),
            }
        }
    }

    // Parse, clean, chunk, embed and commit the changed files, a batch of files at a time: memory
    // stays bounded by the batch, whatever the corpus (the files are read again here, not kept
    // from the hashing pass). The model is loaded only if something changed.
    if opts.only_indexed {
        for (source, e) in &manifest.files {
            if !seen_by_root.get(&e.root).is_some_and(|seen| seen.contains(source)) {
                let reason = format!(
                    "the file is gone from {}: restore it, or delete the document (its indexed version still serves)",
                    e.root
                );
                sum.skipped.push(Skipped { path: source.clone(), reason });
            }
        }
    }
    let mut progress = IngestProgress {
        phase: "ingesting",
        files_seen: sum.files_seen,
        files_total: changed.len(),
        ..Default::default()
    };
    sum.cancelled = sum.cancelled || !keep_going(&progress);
    if sum.cancelled {
        changed.clear();
    }
    if !changed.is_empty() {
        // Seeded with the indexed chunks of the documents this run does not replace.
        let replaced: BTreeSet<&str> = changed.iter().map(|c| c.source.as_str()).collect();
        for c in index.all_chunks()? {
            if !replaced.contains(c.source.as_str()) {
                let d = dedup.entry(c.groups).or_insert_with(|| Deduper::new(cfg.ingest.near_duplicate_threshold));
                d.check_insert(&c.text);
            }
        }
    }
    let embedder: Option<&dyn Embedder> = if changed.is_empty() { None } else { Some(embedder.get()?) };
    let count = |s: &str| embedder.map_or(s.len(), |e| e.count_tokens(s).unwrap_or(s.len()));
    let pb = bar(opts.quiet, changed.len() as u64, "ingest");
    let ingested_at = now_unix();
    let mut session = index.write()?;
    let mut changed = changed.into_iter().peekable();
    while changed.peek().is_some() && !sum.cancelled {
        let mut jobs = Vec::new();
        for Changed { source, root, hash, path: file, mut groups } in
            changed.by_ref().take(cfg.ingest.commit_every.max(1))
        {
            pb.inc(1);
            progress.files_processed += 1;
            if !keep_going(&progress) {
                sum.cancelled = true;
                break;
            }
            let ftype = FileType::from_path(&file).expect("checked above");
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    sum.skipped.push(Skipped { path: source, reason: format!("cannot read the file: {e}") });
                    continue;
                }
            };
            // Changed since it was hashed: index what is there now, under its own hash.
            let hash = if sha256_hex(&bytes) == hash { hash } else { sha256_hex(&bytes) };
            match kotae_ingest::process_file(&source, &bytes, ftype, &chunker, &count) {
                Ok((chunks, rep)) => {
                    if !rep.markers.is_empty() {
                        // A marked document takes the groups its marker maps to (never public);
                        // unmapped, it is reported and keeps the groups it was given.
                        let mapped = rep.markers.iter().find_map(|m| cfg.ingest.markers.get(&m.to_lowercase()));
                        if let Some(g) = mapped {
                            groups = clean_groups(g);
                        }
                        tracing::warn!(source = %source, markers = ?rep.markers, groups = ?groups, "confidentiality marker");
                        sum.marked.push(Marked {
                            path: source.clone(),
                            markers: rep.markers.clone(),
                            groups: groups.clone(),
                            mapped: mapped.is_some(),
                        });
                    }
                    if let Some(e) = manifest.files.get(&source).filter(|e| e.groups != groups) {
                        tracing::info!(source = %source, from = ?e.groups, to = ?groups, "access groups changed");
                        sum.groups_changed.push(GroupChange {
                            path: source.clone(),
                            from: e.groups.clone(),
                            to: groups.clone(),
                        });
                    }
                    sum.unresolved_inquiries_skipped += rep.unresolved_skipped;
                    sum.duplicates_dropped += rep.duplicates_merged;
                    sum.personal_data_redacted += rep.redactions;
                    sum.boilerplate_lines_removed += rep.boilerplate_lines;
                    let mut kept = Vec::new();
                    let mut flagged = 0;
                    let dedup = dedup
                        .entry(groups.clone())
                        .or_insert_with(|| Deduper::new(cfg.ingest.near_duplicate_threshold));
                    for c in chunks {
                        if dedup.check_insert(&c.text).is_some() {
                            sum.duplicates_dropped += 1;
                            continue;
                        }
                        let section = c.section.join(" > ");
                        let v = doc_guard.check(kotae_guard::Direction::Document, &c.text, &Default::default());
                        let mut flags = Vec::new();
                        if let Some(f) = v.decisive() {
                            flagged += 1;
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
                    jobs.push(FileJob { source, root, hash, groups, chunks: kept, flagged, url: rep.url });
                }
                Err(e) => sum.skipped.push(Skipped { path: source, reason: e.to_string() }),
            }
        }

        // Embed and commit the batch; each commit is atomic.
        {
            let batch = &jobs[..];
            let ids: Vec<ChunkId> = batch.iter().flat_map(|j| j.chunks.iter().map(|c| c.id)).collect();
            let mut have = session.existing_vectors(&ids)?;
            // A document whose groups alone changed keeps its vectors: each chunk's text is
            // stored under the id it had with the old groups (only the filter payload changes).
            let moved: Vec<(&IndexedChunk, ChunkId)> = batch
                .iter()
                .filter_map(|j| manifest.files.get(&j.source).filter(|e| e.groups != j.groups).map(|e| (j, &e.groups)))
                .flat_map(|(j, old)| {
                    j.chunks
                        .iter()
                        .filter(|c| !have.contains(&c.id))
                        .map(move |c| (c, ChunkId::of(&c.source, &c.section.join(" > "), &c.text, old)))
                })
                .collect();
            if !moved.is_empty() {
                let mut old = session.stored_vectors(&moved.iter().map(|(_, id)| *id).collect::<Vec<_>>())?;
                let points: Vec<VectorPoint> =
                    moved.iter().filter_map(|(c, id)| Some(VectorPoint::of(c, old.remove(id)?))).collect();
                session.put_vectors(&points)?;
                sum.vectors_reused += points.len();
                have.extend(points.iter().map(|p| p.id));
            }
            let todo: Vec<&IndexedChunk> =
                batch.iter().flat_map(|j| j.chunks.iter()).filter(|c| !have.contains(&c.id)).collect();
            for group in todo.chunks(64) {
                if sum.cancelled || !keep_going(&progress) {
                    sum.cancelled = true;
                    break;
                }
                let texts: Vec<String> = group.iter().map(|c| passage_text(c)).collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let out = embedder.expect("loaded when files changed").embed(&refs, InputKind::Passage)?;
                sum.truncated_for_embedding += out.truncated;
                sum.chunks_embedded += group.len();
                let points: Vec<VectorPoint> =
                    group.iter().zip(out.vectors).map(|(c, v)| VectorPoint::of(c, v)).collect();
                session.put_vectors(&points)?;
            }
            // A cancelled batch is not committed: its files keep the version they had.
            for job in batch.iter().filter(|_| !sum.cancelled) {
                let entry = FileEntry {
                    root: job.root.clone(),
                    hash: job.hash.clone(),
                    groups: job.groups.clone(),
                    chunks: job.chunks.len(),
                    ingested_unix: ingested_at,
                    langs: job.chunks.iter().map(|c| c.lang.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
                    flagged: job.flagged,
                    url: job.url.clone(),
                };
                session.replace_source(&job.source, entry, &job.chunks)?;
                sum.files_ingested += 1;
                sum.chunks_written += job.chunks.len();
            }
            session.commit()?;
        }
        progress.files_ingested = sum.files_ingested;
        progress.chunks_written = sum.chunks_written;
        if !sum.cancelled {
            sum.cancelled = !keep_going(&progress);
        }
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        pb.set_message(format!(
            "{} chunks, {:.1} files/s, {:.1} chunks/s",
            sum.chunks_written,
            sum.files_ingested as f64 / secs,
            sum.chunks_written as f64 / secs
        ));
    }
    pb.finish_and_clear();

    if opts.prune && !sum.cancelled {
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
    progress.phase = "finishing";
    if let Some(w) = &opts.watch {
        (w.0)(&progress);
    }
    // Vectors of a cancelled batch were stored but never committed: swept as orphans.
    let changed_anything = sum.files_ingested + sum.files_removed + sum.chunks_embedded > 0;
    session.finish()?;
    if changed_anything {
        sum.orphan_vectors_removed = index.sweep_orphans()?;
    }
    sum.chunks_total = index.num_chunks();
    sum.seconds = start.elapsed().as_secs_f64();
    sum.peak_rss_bytes = peak_rss_bytes();
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
    if s.cancelled {
        println!("cancelled: the files below were committed before the stop; the rest keep their old version (run again to finish)");
    }
    let reused = if s.vectors_reused > 0 { format!(", {} vectors reused", s.vectors_reused) } else { String::new() };
    println!(
        "ingested {} file(s), {} unchanged, {} removed; {} chunks written ({} embedded{reused}), {} in the knowledge base; {:.1}s",
        s.files_ingested, s.files_unchanged, s.files_removed, s.chunks_written, s.chunks_embedded, s.chunks_total, s.seconds
    );
    let secs = s.seconds.max(1e-3);
    println!(
        "throughput: {:.1} files/s seen, {:.2} files/s and {:.2} chunks/s ingested{}",
        s.files_seen as f64 / secs,
        s.files_ingested as f64 / secs,
        s.chunks_written as f64 / secs,
        s.peak_rss_bytes.map(|b| format!("; peak memory {} MiB", b >> 20)).unwrap_or_default()
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
    for c in &s.groups_changed {
        println!("access changed: {}: {} -> {}", c.path, c.from.join(","), c.to.join(","));
    }
    for m in &s.marked {
        println!(
            "marked {}: {} -> groups {}{}",
            m.path,
            m.markers.join(", "),
            m.groups.join(","),
            if m.mapped { "" } else { " (no ingest.markers rule for this marker: check who may read it)" }
        );
    }
    let (unlabelled, other): (Vec<&Skipped>, Vec<&Skipped>) = s.skipped.iter().partition(|k| k.reason == UNLABELLED);
    if !other.is_empty() {
        println!("skipped {} file(s):", other.len());
        for k in &other {
            println!("  {}: {}", k.path, k.reason);
        }
    }
    if !unlabelled.is_empty() {
        let names: Vec<&str> = unlabelled.iter().take(5).map(|k| k.path.as_str()).collect();
        println!(
            "skipped {} file(s) with {UNLABELLED} ({}{})",
            unlabelled.len(),
            names.join(", "),
            if unlabelled.len() > names.len() { ", …" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_rule_replaces_the_config_rule_for_its_folder_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (hr, it) = (dir.path().join("hr"), dir.path().join("it"));
        std::fs::create_dir_all(&hr).unwrap();
        std::fs::create_dir_all(&it).unwrap();
        let mut cfg = Config::default();
        // kotae.toml names the folder another way (a trailing `.`): still the same folder.
        cfg.ingest.access = vec![
            crate::config::AccessRule { path: hr.join("."), groups: vec!["public".into()] },
            crate::config::AccessRule { path: it.clone(), groups: vec!["it".into()] },
        ];
        let admin = [kotae_server::store::AccessRuleRow {
            path: std::fs::canonicalize(&hr).unwrap().display().to_string(),
            groups: vec!["hr".into()],
            updated_by: "key:ops".into(),
            updated_unix: 0,
        }];
        let merged = with_admin_rules(&cfg, &admin);
        let rules: Vec<(PathBuf, Vec<String>)> =
            merged.ingest.access.iter().map(|r| (r.path.clone(), r.groups.clone())).collect();
        assert_eq!(
            rules,
            [(it, vec!["it".to_string()]), (std::fs::canonicalize(&hr).unwrap(), vec!["hr".to_string()])]
        );
        assert_eq!(with_admin_rules(&cfg, &[]).ingest.access.len(), 2);
    }
}
