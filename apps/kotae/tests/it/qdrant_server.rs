//! Kotae on a real Qdrant server, through the same functions as `kotae ingest`, `kotae eval
//! retrieval` and `kotae serve`. `#[ignore]`d where no server is configured (reported as not
//! run): `scripts/test.sh` starts `../shared/bin/qdrant` and sets `KOTAE_TEST_QDRANT_URL`.
//! The collection is the test's own; no other test reads the variable.

use std::sync::Arc;
use std::time::Instant;

use kotae_models::Embedder;
use serde_json::{json, Value};

use super::serve::{chat_events, client, hashed_key, Server};
use super::{config, embedder, fresh_data_dir, ingest, workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Qdrant server: scripts/test.sh starts one and sets KOTAE_TEST_QDRANT_URL"]
async fn a_knowledge_base_on_a_qdrant_server_meets_the_retrieval_thresholds_and_serves() {
    let url = std::env::var("KOTAE_TEST_QDRANT_URL")
        .expect("KOTAE_TEST_QDRANT_URL is not set: scripts/test.sh starts ../shared/bin/qdrant and sets it");
    let data = fresh_data_dir();
    let mut cfg = config(data.path());
    cfg.vector_store.url = url;
    cfg.vector_store.collection = format!("kotae_it_{}", std::process::id());
    let c2 = cfg.clone();
    let index = tokio::task::spawn_blocking(move || {
        let mut index = kotae::open_index(&c2, Some(embedder().dim())).unwrap();
        let t = Instant::now();
        let s = ingest(&c2, &mut index, &[&workspace().join("knowledge")], &[], true);
        eprintln!("ingest into the Qdrant server: {} chunks in {:.1} s", s.chunks_written, t.elapsed().as_secs_f64());
        index
    })
    .await
    .unwrap();
    assert_eq!(index.vectors().name(), "qdrant-server");
    assert_eq!(index.vectors().count().unwrap() as u64, index.num_chunks());

    // The nightly retrieval evaluation holds on the server exactly as on the embedded engine.
    let golden = kotae::eval::load_golden(&workspace().join("evals/retrieval/golden.jsonl")).unwrap();
    let thresholds: toml::Table =
        toml::from_str(&std::fs::read_to_string(workspace().join("evals/retrieval/thresholds.toml")).unwrap()).unwrap();
    let r = kotae::eval::run_retrieval_eval(&cfg, &index, embedder(), &golden, Some(&thresholds)).unwrap();
    kotae::eval::print_report(&r);
    assert!(r.failures.is_empty(), "{:#?}", r.failures);

    // Served from async handlers: chat cites the manual; an upload is searchable for its group
    // only; a delete removes it from the server's collection.
    let state = tempfile::tempdir().unwrap();
    let (admin, user) = ("kotae_admin_0123456789", "kotae_staff_0123456789");
    let keys = vec![
        hashed_key("ops", admin, kotae_server::Role::Admin, &[]),
        hashed_key("emp", user, kotae_server::Role::User, &["staff"]),
    ];
    let index = Arc::new(index);
    let s = Server::start_with(state.path(), index.clone(), |c| {
        c.server.api_keys = keys.clone();
        c.server.rate_limit_burst = 100_000;
        c.server.rate_limit_per_minute = 100_000;
    })
    .await;
    let c = client();
    let events = chat_events(&c, &s, json!({ "message": "How do I reserve a meeting room?" })).await;
    let done = &events.last().unwrap().1;
    let cited: Vec<&str> =
        done["answer"]["citations"].as_array().unwrap().iter().map(|c| c["source"].as_str().unwrap()).collect();
    assert!(cited.contains(&"manuals/ga/meeting-rooms.en.md"), "cited {cited:?}: {done}");

    let search = |k: Option<&'static str>| {
        let mut r = c.post(s.url("/api/search")).json(&json!({ "query": "bicycle parking basement", "mode": "dense" }));
        if let Some(k) = k {
            r = r.bearer_auth(k);
        }
        async move {
            let v: Value = r.send().await.unwrap().json().await.unwrap();
            v["hits"].as_array().unwrap().iter().filter(|h| h["source"] == "bicycles.md").count()
        }
    };
    let wait_job = |r: reqwest::Response| {
        let c = c.clone();
        let base = s.url("/admin/api/jobs/");
        async move {
            assert_eq!(r.status(), 202);
            let id = r.json::<Value>().await.unwrap()["job"].as_str().unwrap().to_string();
            super::serve::ended_job(&c, &format!("{base}{id}"), admin).await
        }
    };
    let before = index.vectors().count().unwrap();
    let form = reqwest::multipart::Form::new().text("groups", "staff").part(
        "file",
        reqwest::multipart::Part::text("# Bicycles\n\nBicycle parking moved to the basement of building B.\n")
            .file_name("bicycles.md"),
    );
    let r = c.post(s.url("/admin/api/documents")).bearer_auth(admin).multipart(form).send().await.unwrap();
    let j = wait_job(r).await;
    assert_eq!(j["status"], "done", "{j}");
    assert!(index.vectors().count().unwrap() > before, "the upload's vectors are on the server");
    assert_eq!(search(Some(user)).await, 1, "staff find the upload");
    assert_eq!(search(None).await, 0, "anonymous clients do not");
    let r = c.delete(s.url("/admin/api/documents/bicycles.md")).bearer_auth(admin).send().await.unwrap();
    assert_eq!(wait_job(r).await["status"], "done");
    assert_eq!(search(Some(user)).await, 0);
    assert_eq!(index.vectors().count().unwrap(), before, "its vectors left the server too");
    s.stop().await;
}
