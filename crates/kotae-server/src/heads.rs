//! The trained classification heads a server uses (`/api/classify`, the guard's safety head),
//! reloaded when their files change: a fine-tuning job on the writer (`POST
//! /admin/api/finetune`) writes `<data-dir>/heads/<task>/`, and every process that serves the
//! data folder, the writer and each replica, picks the new head up within about a second,
//! without a restart. A watcher thread looks at the files and loads them: requests only read.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// Heads by task.
pub type HeadMap = BTreeMap<String, Arc<kotae_models::Head>>;

type Loader = Box<dyn Fn() -> Result<HeadMap, String> + Send + Sync>;
type OnChange = Box<dyn Fn(&HeadMap) + Send + Sync>;

/// How often the watcher looks at the heads' files (a few `stat`s).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The current heads, and how to notice and load new ones.
pub struct Classifiers {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<HeadMap>>,
    dir: PathBuf,
    load: Loader,
    on_change: Mutex<Vec<OnChange>>,
    /// The files' stamp the current heads were loaded at.
    seen: Mutex<u64>,
}

impl Classifiers {
    /// The stamp of the heads' files under `dir`: take it before loading them, and hand it to
    /// [`Classifiers::watching`] with what was loaded (a change in between is then seen).
    pub fn stamp(dir: &Path) -> u64 {
        stamp(dir)
    }

    /// `heads`, loaded from `dir` when its files had stamp `seen`; a watcher thread reloads
    /// them with `load` when the files change. A load that fails (a head of another embedder,
    /// a head being replaced) keeps the heads served, is logged, and is tried again.
    pub fn watching(
        dir: &Path,
        seen: u64,
        heads: HeadMap,
        load: impl Fn() -> Result<HeadMap, String> + Send + Sync + 'static,
    ) -> Self {
        let inner = Arc::new(Inner {
            current: RwLock::new(Arc::new(heads)),
            dir: dir.to_path_buf(),
            load: Box::new(load),
            on_change: Mutex::new(Vec::new()),
            seen: Mutex::new(seen),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new().name("kotae-heads".into()).spawn(move || loop {
            std::thread::sleep(LOOK_EVERY);
            // Gone with the engine.
            let Some(inner) = weak.upgrade() else { return };
            inner.refresh();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the heads' watcher: new heads need a restart");
        }
        Self { inner }
    }

    /// Called with the new heads after each reload (the guard takes its safety head from it).
    pub fn on_change(&self, f: impl Fn(&HeadMap) + Send + Sync + 'static) {
        self.inner.on_change.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(f));
    }

    /// The heads now.
    pub fn get(&self) -> Arc<HeadMap> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Look at the files now and reload when they changed; true when new heads were loaded.
    pub fn refresh(&self) -> bool {
        self.inner.refresh()
    }
}

impl Inner {
    fn refresh(&self) -> bool {
        let heads = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let s = stamp(&self.dir);
            if s == *seen {
                return false;
            }
            match (self.load)() {
                Ok(heads) => {
                    *seen = s;
                    heads
                }
                Err(e) => {
                    // Not recorded: looked at again next time.
                    tracing::warn!(error = %e, "the trained heads changed but cannot be loaded; serving the previous ones");
                    return false;
                }
            }
        };
        let names: Vec<&str> = heads.keys().map(String::as_str).collect();
        tracing::info!(heads = ?names, "trained heads reloaded");
        for f in self.on_change.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f(&heads);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(heads);
        true
    }
}

/// A stamp of the heads' files under `dir` (`<task>/head.json`, `<task>/head.safetensors`,
/// and the names of the folders a job swaps through): names, sizes and modification times.
fn stamp(dir: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for d in names {
        d.hash(&mut h);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kotae_models::candle::{DType, Device, Tensor};

    fn stub(task: &str) -> kotae_models::Head {
        let card = kotae_models::classifier::HeadCard {
            task: task.into(),
            labels: vec!["a".into(), "b".into()],
            embedder: "test".into(),
            input_dim: 1,
            hidden: 0,
            tuned_layers: 0,
            split_layer: 0,
            max_states: 0,
            config: serde_json::Value::Null,
            train_examples: 0,
            class_counts: BTreeMap::new(),
            validation: Default::default(),
            tests: BTreeMap::new(),
            label_groups: Default::default(),
        };
        let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        kotae_models::Head::new(card, z(&[2, 1]), z(&[2]), None)
    }

    /// Reloads follow the files; a failed load keeps the heads and is tried again; the
    /// callbacks see each new set. The loader here stands in for `load_classifiers`: it
    /// reads which tasks have a `head.json`, and fails while a `.<task>.new` is alone.
    #[test]
    fn heads_reload_when_their_files_change_and_a_failed_load_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let head = |task: &str| {
            std::fs::create_dir_all(d.join(task)).unwrap();
            std::fs::write(d.join(task).join("head.json"), format!("{{\"task\": \"{task}\"}}")).unwrap();
        };
        let loads = Arc::new(AtomicUsize::new(0));
        let (dd, n) = (d.clone(), loads.clone());
        let load = move || -> Result<HeadMap, String> {
            n.fetch_add(1, Ordering::SeqCst);
            let mut out = HeadMap::new();
            for e in std::fs::read_dir(&dd).map_err(|e| e.to_string())?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(t) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".new")) {
                    if !dd.join(t).join("head.json").exists() {
                        return Err(format!("{t} is being replaced"));
                    }
                    continue;
                }
                out.insert(name.clone(), Arc::new(stub(&name)));
            }
            Ok(out)
        };
        let seen = Classifiers::stamp(&d);
        let c = Classifiers::watching(&d, seen, load().unwrap(), load);
        let changes = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let ch = changes.clone();
        c.on_change(move |m| ch.lock().unwrap().push(m.keys().cloned().collect()));
        // (The watcher thread may look first: the assertions read the outcome, not who.)
        assert!(c.get().is_empty());
        head("routing");
        c.refresh();
        assert_eq!(c.get().keys().collect::<Vec<_>>(), ["routing"]);
        // A swap in progress: the loader refuses, the heads stay, and the next look retries.
        std::fs::create_dir_all(d.join(".safety.new")).unwrap();
        assert!(!c.refresh());
        assert_eq!(c.get().keys().collect::<Vec<_>>(), ["routing"]);
        head("safety");
        std::fs::remove_dir_all(d.join(".safety.new")).unwrap();
        c.refresh();
        assert_eq!(c.get().keys().collect::<Vec<_>>(), ["routing", "safety"]);
        {
            let seen = changes.lock().unwrap();
            assert_eq!(seen.first().unwrap(), &["routing"]);
            assert_eq!(seen.last().unwrap(), &["routing", "safety"]);
        }
        // The watcher thread takes changes up by itself.
        std::fs::remove_dir_all(d.join("routing")).unwrap();
        let t = std::time::Instant::now();
        while c.get().len() != 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "the watcher did not reload");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(loads.load(Ordering::SeqCst) >= 4);
    }
}
