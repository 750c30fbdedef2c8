//! Two `kotae serve` replicas sharing their state in a real PostgreSQL: a conversation begun on
//! one goes on on the other, votes and the audit trail are the same everywhere, and a job's end
//! is seen by both. `#[ignore]`d where no PostgreSQL is configured (reported as not run);
//! `scripts/test.sh` starts one and sets `KOTAE_TEST_POSTGRES_URL`.

use serde_json::{json, Value};

use super::serve::{chat_events, client, hashed_key, Server};

/// A new, empty database on the test server; its URL.
fn fresh_database(test: &str) -> String {
    let base = std::env::var("KOTAE_TEST_POSTGRES_URL")
        .expect("KOTAE_TEST_POSTGRES_URL is not set: scripts/test.sh starts a PostgreSQL cluster and sets it");
    let name = format!("kotae_it_{test}_{}", std::process::id());
    let mut c = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&name);
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and sets KOTAE_TEST_POSTGRES_URL"]
async fn two_replicas_on_postgres_share_conversations_feedback_and_audit() {
    let db = tokio::task::spawn_blocking(|| fresh_database("replicas")).await.unwrap();
    let admin = "kotae_admin_0123456789";
    let keys = vec![hashed_key("ops", admin, kotae_server::Role::Admin, &[])];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tweak = |c: &mut kotae::config::Config| {
        c.state.url = db.clone();
        c.server.api_keys = keys.clone();
    };
    let a = Server::start_with(dir_a.path(), super::serve::shared_index(), tweak).await;
    let b = Server::start_with(dir_b.path(), super::serve::shared_index(), tweak).await;
    assert!(!dir_a.path().join("state/kotae.sqlite3").exists(), "the state is in PostgreSQL, not on local disk");
    let c = client();

    // Asked on A, followed up on B: B knows the conversation and answers in it.
    let events = chat_events(&c, &a, json!({ "message": "How do I reserve a meeting room?" })).await;
    let conv = events[0].1["conversation_id"].as_str().unwrap().to_string();
    let done = &events.last().unwrap().1;
    let message_id = done["message_id"].as_str().unwrap().to_string();
    let r: Value = c
        .post(b.url("/api/chat"))
        .json(&json!({ "message": "And can I cancel it?", "conversation_id": conv, "stream": false }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let q = r["answer"]["search_query"].as_str().unwrap_or_default();
    assert!(q.contains("meeting room"), "B rewrote the follow-up with A's history: {q:?} {r}");
    let stored: Value = c.get(a.url(&format!("/api/conversations/{conv}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4, "A sees B's turn: {stored}");

    // A vote on B for A's answer; the review queue on A shows it.
    let fb = c
        .post(b.url("/api/feedback"))
        .json(&json!({ "message_id": message_id, "rating": "down", "comment": "room 3 is closed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(fb.status(), 201);
    let review: Value =
        c.get(a.url("/admin/api/feedback?rating=down")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(review["feedback"][0]["comment"], "room 3 is closed", "{review}");

    // A failed sign-in on A is in B's audit trail.
    let denied = c.get(a.url("/admin/api/jobs")).bearer_auth("kotae_wrong_0123456789").send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let audit: Value = c.get(b.url("/admin/api/audit")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "authenticate" && e["result"] != "ok"),
        "{audit}"
    );
    a.stop().await;
    b.stop().await;
}

/// Replicas that share one knowledge base: a writer (`server.role = "all"`) and a replica
/// (`"replica"`) over the same data folder, the same Qdrant collection and the same
/// PostgreSQL. Needs both servers (its name holds both families, so a missing one leaves it out).
mod qdrant_server {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kotae_models::Embedder;
    use serde_json::{json, Value};

    use super::super::serve::{client, ended_job, hashed_key, Server};
    use super::super::{config, embedder, fresh_data_dir, ingest};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL and a Qdrant server: scripts/test.sh starts both"]
    async fn a_replica_serves_the_writers_knowledge_base_and_its_jobs_run_on_the_writer() {
        let qdrant = std::env::var("KOTAE_TEST_QDRANT_URL")
            .expect("KOTAE_TEST_QDRANT_URL is not set: scripts/test.sh starts ../shared/bin/qdrant and sets it");
        let db = tokio::task::spawn_blocking(|| super::fresh_database("follow")).await.unwrap();
        // One data folder (the shared volume) holds the knowledge base and the uploads.
        let data = fresh_data_dir();
        let mut cfg = config(data.path());
        cfg.vector_store.url = qdrant;
        cfg.vector_store.collection = format!("kotae_it_follow_{}", std::process::id());
        let corpus = tempfile::tempdir().unwrap();
        std::fs::write(corpus.path().join("lockers.md"), "# Lockers\n\nLocker keys are issued by General Affairs.\n")
            .unwrap();
        let c2 = cfg.clone();
        let (writer, follower) = tokio::task::spawn_blocking(move || {
            let mut index = kotae::open_index(&c2, Some(embedder().dim())).unwrap();
            ingest(&c2, &mut index, &[corpus.path()], &["public"], false);
            let follower = kotae::follow_index(&c2, embedder().dim()).unwrap();
            (Arc::new(index), Arc::new(follower))
        })
        .await
        .unwrap();
        let e = follower.write().err().expect("a follower never writes").to_string();
        assert!(e.contains("replica"), "{e}");
        assert!(kotae::open_index(&cfg, None).is_err(), "the writer holds the knowledge base");

        let (admin, user) = ("kotae_admin_0123456789", "kotae_staff_0123456789");
        let keys = vec![
            hashed_key("ops", admin, kotae_server::Role::Admin, &[]),
            hashed_key("emp", user, kotae_server::Role::User, &["staff"]),
        ];
        let tweak = |role: kotae_server::ServerRole| {
            let (db, keys) = (db.clone(), keys.clone());
            move |c: &mut kotae::config::Config| {
                c.state.url = db;
                c.server.api_keys = keys;
                c.server.role = role;
                c.server.rate_limit_burst = 100_000;
                c.server.rate_limit_per_minute = 100_000;
            }
        };
        let shared = data.path();
        let w = Server::start_with(shared, writer.clone(), tweak(kotae_server::ServerRole::All)).await;
        let r = Server::start_with(shared, follower.clone(), tweak(kotae_server::ServerRole::Replica)).await;
        let c = client();
        let search_with = |k: Option<&'static str>, body: Value| {
            let mut req = c.post(r.url("/api/search")).json(&body);
            if let Some(k) = k {
                req = req.bearer_auth(k);
            }
            async move {
                let v: Value = req.send().await.unwrap().json().await.unwrap();
                v["hits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["source"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            }
        };
        let search = |k: Option<&'static str>, q: &'static str| {
            search_with(k, json!({ "query": q, "top_k": 5, "mode": "hybrid" }))
        };
        let admin_get = |path: String| {
            let req = c.get(r.url(&path)).bearer_auth(admin);
            async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        assert!(search(None, "Who issues locker keys?").await.contains(&"lockers.md".to_string()));

        // An upload on the replica is queued there and run by the writer; the replica then finds
        // it, for its group only, in both lists (the writer's commit and the server's vectors).
        let upload = |name: &str, body: &str| {
            let form = reqwest::multipart::Form::new()
                .text("groups", "staff")
                .part("file", reqwest::multipart::Part::text(body.to_string()).file_name(name.to_string()));
            c.post(r.url("/admin/api/documents")).bearer_auth(admin).multipart(form).send()
        };
        let job_of = |resp: reqwest::Response| async move {
            assert_eq!(resp.status(), 202);
            resp.json::<Value>().await.unwrap()["job"].as_str().unwrap().to_string()
        };
        let t = Instant::now();
        let id = job_of(
            upload("bicycles.md", "# Bicycles\n\nBicycle parking moved to the basement of building B.\n")
                .await
                .unwrap(),
        )
        .await;
        let j = ended_job(&c, &r.url(&format!("/admin/api/jobs/{id}")), admin).await;
        assert_eq!(j["status"], "done", "{j}");
        assert_eq!(j["report"]["files_ingested"], 1, "{j}");
        assert!(search(Some(user), "bicycle parking basement").await.contains(&"bicycles.md".to_string()));
        eprintln!("upload on the replica → searchable there: {:.2} s", t.elapsed().as_secs_f64());
        assert!(!search(None, "bicycle parking basement").await.contains(&"bicycles.md".to_string()));
        let dense = search_with(Some(user), json!({ "query": "where do I park my bike", "mode": "dense" })).await;
        assert!(dense.contains(&"bicycles.md".to_string()), "{dense:?}");
        let docs = admin_get("/admin/api/documents".into()).await;
        assert!(docs["documents"].as_array().unwrap().iter().any(|d| d["source"] == "bicycles.md"), "{docs}");
        assert_eq!(writer.num_chunks(), follower.num_chunks());

        // With the writer gone, a job queued on the replica waits; a new writer runs it.
        w.stop().await;
        let id =
            job_of(c.delete(r.url("/admin/api/documents/bicycles.md")).bearer_auth(admin).send().await.unwrap()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let j = admin_get(format!("/admin/api/jobs/{id}")).await;
        assert_eq!(j["status"], "queued", "nobody runs it yet: {j}");
        assert!(search(Some(user), "bicycle parking basement").await.contains(&"bicycles.md".to_string()));
        let w = Server::start_with(shared, writer.clone(), tweak(kotae_server::ServerRole::All)).await;
        let j = ended_job(&c, &r.url(&format!("/admin/api/jobs/{id}")), admin).await;
        assert_eq!(j["status"], "done", "{j}");
        assert!(!search(Some(user), "bicycle parking basement").await.contains(&"bicycles.md".to_string()));
        assert!(!data.path().join("uploads").join(&cfg.kb).join("bicycles.md").exists(), "its upload went too");
        assert_eq!(follower.vectors().count().unwrap() as u64, follower.num_chunks(), "its vectors left the server");
        w.stop().await;
        r.stop().await;
    }
}
