//! The CLI beside a running server: `kotae ingest --server URL` and `kotae search --server URL`
//! go through its HTTP API (a serving process holds the knowledge base's lock), with an API key
//! from `--api-key` or `KOTAE_API_KEY` (an admin key to ingest).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct Remote {
    base: String,
    key: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Remote {
    pub fn connect(url: &str, key: Option<String>) -> Result<Self> {
        let key = key.or_else(|| std::env::var("KOTAE_API_KEY").ok()).filter(|k| !k.trim().is_empty());
        let Some(key) = key else {
            bail!("--server needs an API key: --api-key KEY or KOTAE_API_KEY (an admin key to ingest)")
        };
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.trim_matches('/').is_empty()) {
            bail!("--server {url}: must be an http:// or https:// address (http://host:port)");
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // A server on this machine is reached directly, whatever HTTP_PROXY says.
        let host = rest.unwrap_or_default().split(['/', '?']).next().unwrap_or_default();
        let local =
            ["localhost", "127.0.0.1", "[::1]"].iter().any(|h| host == *h || host.starts_with(&format!("{h}:")));
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if local {
            http = http.no_proxy();
        }
        let http = http.build()?;
        Ok(Self { base: url.trim_end_matches('/').to_string(), key: key.trim().to_string(), http, rt })
    }

    /// Send a request; a non-2xx answer becomes an error carrying the server's message.
    fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        self.rt.block_on(async {
            let r = req
                .bearer_auth(&self.key)
                .send()
                .await
                .with_context(|| format!("{what}: cannot reach the server at {}", self.base))?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "error": text }));
            if !status.is_success() {
                let msg = v["error"].as_str().map(String::from).unwrap_or_else(|| v.to_string());
                let hint = match status.as_u16() {
                    401 => " (check the API key)",
                    403 => " (this needs an admin key)",
                    _ => "",
                };
                bail!("{what}: the server answered {status}: {msg}{hint}");
            }
            Ok(v)
        })
    }

    /// `POST /api/search` with the key's own access groups.
    pub fn search(&self, query: &str, top_k: Option<usize>, mode: Option<kotae_index::SearchMode>) -> Result<Value> {
        let mut body = json!({ "query": query });
        if let Some(k) = top_k {
            body["top_k"] = json!(k);
        }
        if let Some(m) = mode {
            body["mode"] = serde_json::to_value(m)?;
        }
        self.send(self.http.post(format!("{}/api/search", self.base)).json(&body), "search")
    }

    /// Upload the files under `paths` (`POST /admin/api/documents`) and follow the ingest job
    /// to its end; returns the finished job.
    pub fn ingest(&self, paths: &[PathBuf], groups: &[String], progress: bool) -> Result<Value> {
        let groups: Vec<&str> = groups.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).collect();
        if groups.is_empty() {
            bail!("say who may read the uploaded documents with --groups (e.g. --groups staff)");
        }
        let files = upload_files(paths)?;
        let mut form = reqwest::multipart::Form::new().text("groups", groups.join(","));
        for f in &files {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
        }
        let accepted =
            self.send(self.http.post(format!("{}/admin/api/documents", self.base)).multipart(form), "upload")?;
        let id = accepted["job"].as_str().or_else(|| accepted["job"]["id"].as_str()).map(String::from);
        let Some(id) = id else { bail!("upload: the server started no job: {accepted}") };
        if progress {
            eprintln!("uploaded {} file(s); ingest job {id}", files.len());
        }
        let mut last = String::new();
        loop {
            let job = self.send(self.http.get(format!("{}/admin/api/jobs/{id}", self.base)), "job")?;
            let job = if job["job"].is_object() { job["job"].clone() } else { job };
            let status = job["status"].as_str().unwrap_or_default().to_string();
            if matches!(status.as_str(), "done" | "failed" | "cancelled") {
                return Ok(job);
            }
            let p = &job["progress"];
            let line = format!("{status}: {} of {} files", p["files_done"], p["files_total"]);
            if progress && line != last {
                eprintln!("{line}");
                last = line;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The files `kotae ingest` would read under `paths` (hidden ones never), by file name: the
/// server keeps uploads by name, so two files of one name are refused before anything is sent.
fn upload_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let hidden = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    let mut out: Vec<PathBuf> = Vec::new();
    for root in paths {
        if !root.exists() {
            bail!("{}: no such file or folder", root.display());
        }
        let walk = walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !hidden(e.path()));
        for e in walk {
            let e = e.with_context(|| format!("cannot read {}", root.display()))?;
            if e.file_type().is_file() && kotae_ingest::FileType::from_path(e.path()).is_ok() {
                out.push(e.path().to_path_buf());
            }
        }
    }
    let mut names = std::collections::BTreeMap::new();
    for f in &out {
        if let Some(other) = names.insert(f.file_name().map(|n| n.to_os_string()), f) {
            bail!(
                "{} and {} have the same name: a server keeps uploads by file name, so one would replace the other; \
                 rename one, or ingest them on the server's machine",
                other.display(),
                f.display()
            );
        }
    }
    if out.is_empty() {
        bail!("no files Kotae reads (Markdown, HTML, text, PDF, CSV/JSONL logs) under the given paths");
    }
    Ok(out)
}

/// A finished ingest job as `kotae ingest` prints its summary.
pub fn print_job(job: &Value) {
    let r = &job["report"];
    println!(
        "job {} {}: {} file(s) ingested, {} chunk(s) written",
        job["id"].as_str().unwrap_or_default(),
        job["status"].as_str().unwrap_or_default(),
        r["files_ingested"].as_u64().unwrap_or(0),
        r["chunks_written"].as_u64().unwrap_or(0)
    );
    for s in r["skipped"].as_array().into_iter().flatten() {
        println!("skipped {}: {}", s["path"].as_str().unwrap_or_default(), s["reason"].as_str().unwrap_or_default());
    }
    if let Some(e) = r["error"].as_str() {
        println!("error: {e}");
    }
}
