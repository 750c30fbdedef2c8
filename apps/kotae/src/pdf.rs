//! PDF text extraction in a child process with a time and a memory limit. A PDF parser can
//! loop or inflate a compression bomb; in the child that costs one file (reported, skipped),
//! never the ingest run or the server.
//!
//! The child is this same binary started as `kotae __extract-pdf` under `sh -c 'ulimit -v …'`
//! (no unsafe code): PDF bytes on stdin, `{"pages": […]}` or `{"error": "…"}` on stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kotae_ingest::Error;

/// The hidden first argument that turns the binary into the extraction child.
pub const HELPER_ARG: &str = "__extract-pdf";

/// Limits of one extraction.
#[derive(Debug, Clone)]
pub struct PdfLimits {
    pub exe: PathBuf,
    pub timeout: Duration,
    pub memory_mb: u64,
}

static LIMITS: OnceLock<PdfLimits> = OnceLock::new();

/// Make every PDF of this process go through the child.
pub fn install(limits: PdfLimits) {
    if LIMITS.set(limits).is_ok() {
        kotae_ingest::parse::set_pdf_extractor(|bytes| extract(bytes, LIMITS.get().expect("set above")));
    }
}

/// Extract the pages of `bytes` in a child process within `limits`.
pub fn extract(bytes: &[u8], limits: &PdfLimits) -> kotae_ingest::Result<Vec<String>> {
    if !bytes.starts_with(b"%PDF") {
        return Err(Error::Pdf("missing %PDF header".into()));
    }
    let spawn_err = |e: std::io::Error| Error::Pdf(format!("cannot start the PDF parser process: {e}"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" {HELPER_ARG}", limits.memory_mb.max(1) * 1024))
        .arg(limits.exe.as_os_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    // Feed and drain on threads, so neither pipe can fill up and stall the child.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stderr.by_ref().take(64 * 1024).read_to_end(&mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(s) => break s,
            None if start.elapsed() >= limits.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Pdf(format!(
                    "parsing took longer than {} s (a parser loop or a compression bomb?); the file is skipped",
                    limits.timeout.as_secs_f64()
                )));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    #[derive(serde::Deserialize)]
    struct Reply {
        pages: Option<Vec<String>>,
        error: Option<String>,
    }
    match serde_json::from_slice::<Reply>(&out) {
        Ok(Reply { pages: Some(p), .. }) if status.success() => Ok(p),
        Ok(Reply { error: Some(e), .. }) => Err(Error::Pdf(e)),
        _ => {
            let tail: String =
                err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(200).collect();
            Err(Error::Pdf(format!(
                "the PDF parser stopped ({status}) within its limits ({} MB, {} s){}; the file is skipped",
                limits.memory_mb,
                limits.timeout.as_secs_f64(),
                if tail.is_empty() { String::new() } else { format!(": {tail}") }
            )))
        }
    }
}

/// The child: read a PDF from stdin, print its pages as JSON.
pub fn helper_main() -> ExitCode {
    let mut bytes = Vec::new();
    if std::io::stdin().read_to_end(&mut bytes).is_err() {
        return ExitCode::FAILURE;
    }
    let reply = match kotae_ingest::parse::extract_pdf_pages(&bytes) {
        Ok(pages) => serde_json::json!({ "pages": pages }),
        Err(Error::Pdf(m)) => serde_json::json!({ "error": m }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, &reply).is_err() || out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Limits from the configuration, with this binary as the child.
pub fn limits_for(cfg: &crate::config::Config, exe: &Path) -> PdfLimits {
    PdfLimits {
        exe: exe.to_path_buf(),
        timeout: Duration::from_secs(cfg.ingest.pdf_timeout_s.max(1)),
        memory_mb: cfg.ingest.pdf_memory_mb,
    }
}
