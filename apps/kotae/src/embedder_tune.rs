//! `kotae finetune embedder`: the embedder adapted to this knowledge base, and the knowledge
//! base re-embedded with it.
//!
//! The adapter lives in `<kb>/adapter/`; the knowledge base's manifest names the embedder its
//! vectors came from (`<model>+ft-<id>`), so a knowledge base is never searched with vectors of
//! another model. Re-embedding writes the new vectors over the old ones under a manifest marked
//! `…~partial`: an interrupted run leaves a knowledge base that refuses to open and says to run
//! `kotae finetune embedder --reembed`, never one that mixes two models silently.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kotae_adapt::embedder::{self, EmbedderTuneConfig, Pair};
use kotae_index::vector::VectorPoint;
use kotae_models::adapter::{EmbedderAdapter, PairMetrics};
use kotae_models::{BertEmbedder, Embedder, InputKind};

use crate::config::Config;

/// Settings of `kotae finetune embedder`.
pub struct EmbedderJob {
    pub config: EmbedderTuneConfig,
    /// Plain paragraphs for the forgetting check.
    pub general_text: Vec<PathBuf>,
    /// Train and save the adapter but leave the knowledge base as it is.
    pub no_reembed: bool,
}

/// What `--reembed` and `--remove` do, and what training ends with.
pub enum Target {
    /// The adapter in `<kb>/adapter.next` if there is one, else `<kb>/adapter`, else the base.
    Resume,
    /// The base embedder; the adapter is removed.
    Base,
}

pub fn adapter_dir(cfg: &Config) -> PathBuf {
    cfg.kb_dir().join("adapter")
}

fn next_dir(cfg: &Config) -> PathBuf {
    cfg.kb_dir().join("adapter.next")
}

pub fn run(cfg: &Config, job: &EmbedderJob) -> Result<()> {
    let base = crate::load_base_embedder(cfg)?;
    let index = crate::open_index_any_embedder(cfg)?;
    let chunks = index.all_chunks()?;
    if chunks.is_empty() {
        bail!("the knowledge base {} is empty: run `kotae ingest` first", cfg.kb_dir().display());
    }
    let (mut pairs, refused) = embedder::pairs_from_chunks(&chunks);
    let mut groups: Vec<String> = chunks.iter().flat_map(|c| c.groups.iter().cloned()).collect();
    groups.sort();
    groups.dedup();
    let t0 = std::time::Instant::now();
    let negatives = embedder::add_hard_negatives(&index, &mut pairs, &groups)?;
    let c = &job.config;
    let (train, heldout): (Vec<Pair>, Vec<Pair>) =
        pairs.into_iter().partition(|p| !embedder::is_heldout(&p.doc, c.val_fraction, c.seed));
    let mut general = Vec::new();
    for p in &job.general_text {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        general.extend(embedder::general_pairs(&text));
    }
    eprintln!(
        "{} chunks → {} training (at most {} used) and {} held-out pairs ({refused} refused by the training-data guard or ingest flags), \
         {negatives} hard negatives from BM25 ({:.1} s); {} general-domain pairs for the forgetting check",
        chunks.len(),
        train.len(),
        c.max_pairs,
        heldout.len(),
        t0.elapsed().as_secs_f64(),
        general.len()
    );
    let mut adapter = embedder::tune_embedder(&base, &train, &heldout, &general, c)?;
    adapter.card.refused = refused;
    print_card(&adapter);
    if adapter.card.best_epoch == 0 {
        println!("no epoch beat the original embedder on the held-out pairs: nothing changed");
        return Ok(());
    }
    let next = next_dir(cfg);
    let _ = std::fs::remove_dir_all(&next);
    adapter.save(&next)?;
    if job.no_reembed {
        println!(
            "saved {} (the knowledge base is unchanged: `kotae finetune embedder --reembed` puts it to use)",
            next.display()
        );
        return Ok(());
    }
    drop(index);
    reembed(cfg, Target::Resume)
}

fn print_card(a: &EmbedderAdapter) {
    let c = &a.card;
    let line = |name: &str, m: &PairMetrics| {
        println!(
            "  {name:<22} MRR {:.3}  R@1 {:.3}  R@5 {:.3}  loss {:.3}  ({} queries, {} candidates)",
            m.mrr, m.recall_at_1, m.recall_at_5, m.loss, m.pairs, m.candidates
        )
    };
    println!(
        "embedder {}: top {} layers trained, best epoch {} of {}, {:.0} s",
        c.base,
        c.layers,
        c.best_epoch,
        c.epochs.len(),
        c.seconds
    );
    println!(
        "  training pairs {:?}, held-out {:?}, hard negatives {}",
        c.train_pairs, c.heldout_pairs, c.hard_negatives
    );
    line("held-out before", &c.heldout_before);
    line("held-out after", &c.heldout_after);
    line("general before", &c.general_before);
    line("general after", &c.general_after);
    let d = kotae_answer::AnswerConfig::default();
    println!(
        "  relevance gate on the adapted scale (score quantiles matched): ja {:.3} → {:.3}, en {:.3} → {:.3}",
        d.min_relevance_ja,
        c.map_score(d.min_relevance_ja),
        d.min_relevance_en,
        c.map_score(d.min_relevance_en)
    );
}

/// Re-embed every chunk with the target embedder and make it the knowledge base's.
pub fn reembed(cfg: &Config, target: Target) -> Result<()> {
    let (next, current) = (next_dir(cfg), adapter_dir(cfg));
    if matches!(target, Target::Base) {
        let _ = std::fs::remove_dir_all(&next);
    }
    let source = match target {
        Target::Base => None,
        Target::Resume if next.join("adapter.json").exists() => Some(next.clone()),
        Target::Resume if current.join("adapter.json").exists() => Some(current.clone()),
        Target::Resume => None,
    };
    let embedder = match &source {
        Some(dir) => with_adapter(crate::load_base_embedder(cfg)?, dir)?,
        None => crate::load_base_embedder(cfg)?,
    };
    let name = embedder.name().to_string();
    let index = crate::open_index_any_embedder(cfg)?;
    let t0 = std::time::Instant::now();
    let chunks = index.all_chunks()?;
    let mut w = index.write()?;
    w.set_embedder(&format!("{name}~partial"));
    w.commit()?;
    let bar = indicatif::ProgressBar::new(chunks.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("re-embedding {bar:30} {pos}/{len} chunks ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for part in chunks.chunks(64) {
        // What ingest embeds: the section path, then the text.
        let texts: Vec<String> = part.iter().map(crate::ingest::passage_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let out = embedder.embed(&refs, InputKind::Passage)?;
        let points: Vec<VectorPoint> = part.iter().zip(out.vectors).map(|(c, v)| VectorPoint::of(c, v)).collect();
        w.put_vectors(&points)?;
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    // The adapter in place before the manifest names it: a crash between the two is resumed by
    // `--reembed`, which then finds it in `adapter/`.
    if source.as_deref() != Some(current.as_path()) {
        let old = cfg.kb_dir().join("adapter.old");
        let _ = std::fs::remove_dir_all(&old);
        if current.exists() {
            std::fs::rename(&current, &old).with_context(|| format!("moving {} aside", current.display()))?;
        }
        if source.is_some() {
            std::fs::rename(&next, &current).with_context(|| format!("installing {}", current.display()))?;
        }
        let _ = std::fs::remove_dir_all(&old);
    }
    w.set_embedder(&name);
    w.finish()?;
    println!(
        "re-embedded {} chunks with {name} in {:.1} s; the knowledge base now searches with it",
        chunks.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The base embedder with the adapter in `dir`.
pub fn with_adapter(base: BertEmbedder, dir: &Path) -> Result<BertEmbedder> {
    let a = EmbedderAdapter::load(dir).with_context(|| format!("loading the embedder adapter in {}", dir.display()))?;
    if a.card.base != base.name() {
        bail!(
            "{} adapts {}, but the configured embedder is {}: remove it with `kotae finetune embedder --remove`",
            dir.display(),
            a.card.base,
            base.name()
        );
    }
    Ok(base.with_adapter(&a)?)
}
