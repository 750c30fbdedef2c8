//! A `kotae ingest` killed mid-way leaves the previous state searchable; the next run completes
//! it without duplicates.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

fn committed_files(kb_dir: &Path) -> usize {
    let Ok(meta) = std::fs::read_to_string(kb_dir.join("lexical/meta.json")) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&meta).unwrap_or_default();
    let payload = v.get("payload").and_then(|p| p.as_str()).unwrap_or("{}");
    let m: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    m.get("files").and_then(|f| f.as_object()).map_or(0, |f| f.len())
}

#[test]
fn killed_ingest_resumes_without_duplicates() {
    let data = fresh_data_dir();
    let corpus = tempfile::tempdir().unwrap();
    let topics = ["printer", "locker", "canteen", "parking", "badge", "mail", "travel", "laptop", "monitor", "chair"];
    let n_files = 30;
    for i in 0..n_files {
        let mut text = format!("# Note {i}\n\n");
        for j in 0..12 {
            text.push_str(&format!(
                "## Part {j}\n\nThe {} rule number {i}-{j} says that requests go through the portal form {j} and take {i} days.\n\n",
                topics[(i + j) % topics.len()]
            ));
        }
        std::fs::write(corpus.path().join(format!("note-{i:02}.md")), text).unwrap();
    }
    let cfg_path = data.path().join("kotae.toml");
    std::fs::write(
        &cfg_path,
        "threads = 1\n[ingest]\ncommit_every = 1\nchunk_tokens = 48\ndefault_groups = [\"public\"]\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_kotae");
    let run = || {
        Command::new(bin)
            .args(["--config", cfg_path.to_str().unwrap(), "--data-dir", data.path().to_str().unwrap(), "ingest"])
            .arg(corpus.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let kb_dir = data.path().join("kb/default");
    let mut child = run();
    let start = Instant::now();
    while committed_files(&kb_dir) < 2 {
        assert!(child.try_wait().unwrap().is_none(), "ingest finished before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(300), "no commit within 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    let at_kill = committed_files(&kb_dir);
    assert!(at_kill < n_files, "killed after everything was committed ({at_kill})");

    // The committed part is fully searchable.
    let cfg = config(data.path());
    {
        let kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
        assert_eq!(kb.manifest().files.len(), at_kill);
        assert!(!search(&cfg, &kb, "printer rule", SearchMode::Hybrid, &[]).is_empty());
    }

    let status = Command::new(bin)
        .args(["--config", cfg_path.to_str().unwrap(), "--data-dir", data.path().to_str().unwrap(), "ingest"])
        .arg(corpus.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let kb = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    assert_eq!(kb.manifest().files.len(), n_files);
    let expected: usize = kb.manifest().files.values().map(|f| f.chunks).sum();
    assert_eq!(kb.num_chunks() as usize, expected, "no duplicate chunks");
    assert_eq!(kb.vectors().count().unwrap(), expected, "one vector per chunk, orphans swept");
}
