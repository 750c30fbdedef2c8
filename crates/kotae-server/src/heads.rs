//! The trained classification heads a server uses (`/api/classify`, the guard's safety head),
//! reloaded when their files change: a fine-tuning job on the writer (`POST
//! /admin/api/finetune`) writes `<data-dir>/heads/<task>/`, and every process that serves the
//! data folder, the writer and each replica, picks the new head up at its next request, without
//! a restart.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Heads by task.
pub type HeadMap = BTreeMap<String, Arc<kotae_models::Head>>;

type Loader = Box<dyn Fn() -> Result<HeadMap, String> + Send + Sync>;
type OnChange = Box<dyn Fn(&HeadMap) + Send + Sync>;

/// How often the heads' files are looked at (a few `stat`s).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The current heads, and how to notice and load new ones.
pub struct Classifiers {
    current: RwLock<Arc<HeadMap>>,
    watch: Option<Watch>,
}

struct Watch {
    dir: PathBuf,
    load: Loader,
    on_change: Mutex<Vec<OnChange>>,
    /// The files' stamp the current heads were loaded at, and when it was last taken.
    seen: Mutex<(u64, Instant)>,
}

impl Classifiers {
    /// Heads that never change.
    pub fn fixed(heads: HeadMap) -> Self {
        Self { current: RwLock::new(Arc::new(heads)), watch: None }
    }

    /// `heads`, loaded now from `dir`, reloaded with `load` when the files under `dir` change.
    /// A load that fails (a head of another embedder, a file half-written) keeps the heads
    /// served and is logged; the next change is tried again.
    pub fn watching(
        dir: &Path,
        heads: HeadMap,
        load: impl Fn() -> Result<HeadMap, String> + Send + Sync + 'static,
    ) -> Self {
        let watch = Watch {
            dir: dir.to_path_buf(),
            load: Box::new(load),
            on_change: Mutex::new(Vec::new()),
            seen: Mutex::new((stamp(dir), Instant::now())),
        };
        Self { current: RwLock::new(Arc::new(heads)), watch: Some(watch) }
    }

    /// Called with the new heads after each reload (the guard takes its safety head from it).
    pub fn on_change(&self, f: impl Fn(&HeadMap) + Send + Sync + 'static) {
        if let Some(w) = &self.watch {
            w.on_change.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(f));
        }
    }

    /// The heads, after a look at their files (at most once a second).
    pub fn get(&self) -> Arc<HeadMap> {
        self.refresh();
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reload when the files changed since the last load; true when new heads were loaded.
    pub fn refresh(&self) -> bool {
        let Some(w) = &self.watch else { return false };
        let heads = {
            // One caller looks; the others go on with what is loaded.
            let Ok(mut seen) = w.seen.try_lock() else { return false };
            if seen.1.elapsed() < LOOK_EVERY {
                return false;
            }
            seen.1 = Instant::now();
            let s = stamp(&w.dir);
            if s == seen.0 {
                return false;
            }
            match (w.load)() {
                Ok(heads) => {
                    seen.0 = s;
                    heads
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the trained heads changed but cannot be loaded; serving the previous ones");
                    seen.0 = s;
                    return false;
                }
            }
        };
        let names: Vec<&str> = heads.keys().map(String::as_str).collect();
        tracing::info!(heads = ?names, "trained heads reloaded");
        for f in w.on_change.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f(&heads);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(heads);
        true
    }
}

/// A stamp of the heads' files under `dir` (`<task>/head.json`, `<task>/head.safetensors`):
/// names, sizes and modification times. A job replaces a head folder by a rename, so a
/// half-written head is never under its task's name.
fn stamp(dir: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for d in names {
        if d.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        for f in ["head.json", "head.safetensors"] {
            let p = d.join(f);
            if let Ok(m) = std::fs::metadata(&p) {
                p.hash(&mut h);
                m.len().hash(&mut h);
                m.modified().ok().hash(&mut h);
            }
        }
    }
    h.finish()
}
