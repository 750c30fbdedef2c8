//! `kotae guard`: screen what users wrote (conversations, feedback comments and
//! "corrections") before any of it can become training data, and review the quarantine.
//!
//! Screening writes `<data-dir>/training/screened.jsonl`: only texts that passed the training
//! guard (personal data redacted), plus quarantined texts an admin released. Everything that
//! failed goes to the quarantine table of the state database, never to that file.

use std::io::Write;

use anyhow::{Context, Result};
use kotae_guard::{Direction, Guard};
use kotae_server::store::Store;
use serde::Serialize;

use crate::config::Config;

/// What a screening run did.
#[derive(Debug, Default, Serialize)]
pub struct ScreenReport {
    pub checked: usize,
    pub passed: usize,
    pub quarantined: usize,
    pub released: usize,
    pub redacted: usize,
    pub out: String,
}

/// The state database: PostgreSQL when `state.url` is set, else SQLite in the data directory.
pub fn open_store(cfg: &Config) -> Result<Store> {
    if cfg.state.url.is_empty() {
        Store::open(&cfg.data_dir.join("state").join("kotae.sqlite3")).map_err(anyhow::Error::msg)
    } else {
        Store::connect(&cfg.state.url).map_err(anyhow::Error::msg)
    }
}

/// The guard for training data: the deployment's policy and lexicons (no classifier: it
/// reads questions, not feedback).
pub fn training_guard(cfg: &Config) -> Result<kotae_guard::Guardrails> {
    Ok(kotae_guard::Guardrails::load(cfg.guard.policy.as_deref(), Some(&cfg.models_dir()), None)?)
}

/// Screen every feedback comment and user message in the state database.
pub fn screen(cfg: &Config) -> Result<ScreenReport> {
    let store = open_store(cfg)?;
    let guard = training_guard(cfg)?;
    let dir = cfg.data_dir.join("training");
    std::fs::create_dir_all(&dir)?;
    let out_path = dir.join("screened.jsonl");
    let tmp = dir.join("screened.jsonl.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?);
    let mut r = ScreenReport { out: out_path.display().to_string(), ..Default::default() };
    let api = |e: kotae_server::ApiError| anyhow::anyhow!("{e}");
    let mut candidates: Vec<(&'static str, String, String, String)> = Vec::new();
    for (id, client, comment, _answer) in store.feedback_comments().map_err(api)? {
        candidates.push(("feedback", id.to_string(), client, comment));
    }
    for (id, client, text) in store.user_messages().map_err(api)? {
        candidates.push(("conversation", id, client, text));
    }
    let released: std::collections::HashSet<(String, String)> =
        store.quarantined(Some("released")).map_err(api)?.into_iter().map(|q| (q.source, q.r#ref)).collect();
    for (source, reference, client, text) in candidates {
        r.checked += 1;
        let v = guard.check(Direction::Training, &text, &Default::default());
        let text = if v.blocked() {
            if released.contains(&(source.to_string(), reference.clone())) {
                r.released += 1;
                text
            } else {
                let f = v.decisive();
                store
                    .quarantine(
                        source,
                        &reference,
                        &text,
                        f.map(|f| f.category.as_str()).unwrap_or("unsafe"),
                        f.map(|f| f.rule.as_str()).unwrap_or_default(),
                        Some(&client),
                    )
                    .map_err(api)?;
                r.quarantined += 1;
                continue;
            }
        } else if let Some(red) = v.redacted {
            r.redacted += 1;
            red
        } else {
            text
        };
        r.passed += 1;
        serde_json::to_writer(&mut out, &serde_json::json!({ "source": source, "ref": reference, "text": text }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &out_path)?;
    Ok(r)
}
