//! A `kotae ingest`, or a server running an upload job, killed mid-way leaves the previous state
//! searchable; the next run completes it without duplicates.

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

/// A free loopback port (the listener is dropped at once; the server binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_upload_job_restarts_with_the_job_failed_and_re_runnable() {
    let data = fresh_data_dir();
    let admin = "kotae_admin_0123456789abcdef";
    let port = free_port();
    let cfg_path = data.path().join("kotae.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "threads = 2\n[generator]\nmodel = \"smollm2-135m-instruct\"\n[ingest]\ncommit_every = 4\n\
             [server]\naddr = \"127.0.0.1:{port}\"\nrate_limit_burst = 100000\nrate_limit_per_minute = 100000\n[[server.api_keys]]\nname = \"ops\"\nkey_sha256 = \"{}\"\nrole = \"admin\"\n",
            kotae_server::auth::key_digest(admin)
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_kotae");
    // The server serves an existing knowledge base.
    let corpus = tempfile::tempdir().unwrap();
    std::fs::write(corpus.path().join("lockers.md"), "# Lockers\n\nLocker keys are issued by General Affairs.\n")
        .unwrap();
    let status = Command::new(bin)
        .args(["--config", cfg_path.to_str().unwrap(), "--data-dir", data.path().to_str().unwrap(), "ingest"])
        .arg(corpus.path())
        .args(["--groups", "public"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let serve = || {
        Command::new(bin)
            .args(["--config", cfg_path.to_str().unwrap(), "--data-dir", data.path().to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let ready = |child: &mut std::process::Child| {
        let (c, url) = (c.clone(), format!("{base}/readyz"));
        let exited = child.try_wait().unwrap();
        async move {
            assert!(exited.is_none(), "the server stopped: {exited:?}");
            match c.get(&url).send().await {
                Ok(r) if r.status() == 200 => true,
                Ok(r) => {
                    let body = r.text().await.unwrap_or_default();
                    assert!(!body.contains("failed to load"), "{body}");
                    false
                }
                Err(_) => false,
            }
        }
    };
    let get = |path: String| {
        let req = c.get(format!("{base}{path}")).bearer_auth(admin);
        async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let mut child = serve();
    let t = Instant::now();
    while !ready(&mut child).await {
        assert!(t.elapsed() < Duration::from_secs(300), "not ready in 5 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let n = 120;
    let mut form = reqwest::multipart::Form::new().text("groups", "staff");
    for i in 0..n {
        form = form.part(
            "file",
            reqwest::multipart::Part::text(super::serve::room_note(i)).file_name(format!("room-{i:03}.md")),
        );
    }
    let r = c.post(format!("{base}/admin/api/documents")).bearer_auth(admin).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let job = r.json::<serde_json::Value>().await.unwrap()["job"].as_str().unwrap().to_string();
    // Kill -9 once a few batches are committed.
    loop {
        let j = get(format!("/admin/api/jobs/{job}")).await;
        assert!(j["status"] == "queued" || j["status"] == "running", "the job ended before the kill: {j}");
        if j["progress"]["files_ingested"].as_u64().is_some_and(|f| f >= 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();

    // Restarted: the job is failed (interrupted), what was committed serves, nothing is broken.
    let mut child = serve();
    let t = Instant::now();
    while !ready(&mut child).await {
        assert!(t.elapsed() < Duration::from_secs(300), "not ready after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let j = get(format!("/admin/api/jobs/{job}")).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["report"]["error"].as_str().unwrap().contains("interrupted"), "{j}");
    let docs = get("/admin/api/documents".into()).await;
    let rooms = |d: &serde_json::Value| {
        d["documents"].as_array().unwrap().iter().filter(|d| d["source"].as_str().unwrap().starts_with("room-")).count()
    };
    let committed = rooms(&docs);
    assert!((4..n).contains(&committed), "{committed} of {n} documents were in at the kill");
    let hits: serde_json::Value = c
        .post(format!("{base}/api/search"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "query": "meeting room booking code", "top_k": 20 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!hits["hits"].as_array().unwrap().is_empty(), "{hits}");

    // Run again: what is in is skipped, the rest goes in; one chunk per document, no duplicates.
    let r = c.post(format!("{base}/admin/api/jobs/{job}/retry")).bearer_auth(admin).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let again = r.json::<serde_json::Value>().await.unwrap()["job"].as_str().unwrap().to_string();
    let j = super::serve::ended_job(&c, &format!("{base}/admin/api/jobs/{again}"), admin).await;
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(j["report"]["files_unchanged"].as_u64(), Some(committed as u64), "{j}");
    assert_eq!(j["report"]["files_ingested"].as_u64(), Some((n - committed) as u64), "{j}");
    let docs = get("/admin/api/documents".into()).await;
    assert_eq!(rooms(&docs), n);
    assert_eq!(docs["chunks_total"].as_u64(), Some(n as u64 + 1), "one chunk per document (and lockers.md): {docs}");
    child.kill().unwrap();
    child.wait().unwrap();
}
