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
