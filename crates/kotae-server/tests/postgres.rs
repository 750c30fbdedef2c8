//! The state store's contract, the same on the embedded SQLite database and on PostgreSQL, and
//! what only a shared database must survive: several replicas at once. The PostgreSQL tests
//! are `#[ignore]`d where none is configured (reported as not run); `scripts/test.sh` starts a
//! throw-away cluster and sets `KOTAE_TEST_POSTGRES_URL`. Each test gets a database of its own.

use kotae_server::store::{AuditEntry, GuardEvent, Lane, Store};
use serde_json::json;

/// Every method of the store, with the answers both databases must give.
fn exercise(s: &Store) {
    // Conversations and messages, in order.
    let c = s.create_conversation("k1").unwrap();
    assert_eq!(s.conversation_owner(&c).unwrap().as_deref(), Some("k1"));
    assert_eq!(s.conversation_owner("nope").unwrap(), None);
    s.add_message(&c, "user", "VPNにつながらない", None).unwrap();
    let a = s
        .add_message(&c, "assistant", "Restart [1].", Some(&json!({"kind": "generated", "citations": [{"n": 1}]})))
        .unwrap();
    let m = s.messages(&c).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0].role.as_str(), m[0].content.as_str(), m[1].id.as_str()),
        ("user", "VPNにつながらない", a.as_str())
    );
    assert_eq!(m[1].answer.as_ref().unwrap()["kind"], "generated");
    assert!(m[0].answer.is_none() && m[0].created_unix > 1_700_000_000);

    // Feedback: only the asker votes on its answers; a second vote replaces the first.
    let first = s.add_feedback(&a, "up", Some("good"), "k1").unwrap().unwrap();
    assert!(s.add_feedback("nope", "up", None, "k1").unwrap().is_none());
    assert!(s.add_feedback(&a, "down", None, "k2").unwrap().is_none());
    assert_eq!(s.add_feedback(&a, "down", Some("wrong room"), "k1").unwrap(), Some(first));
    assert_eq!(s.feedback_counts().unwrap(), (0, 1));
    let review = s.feedback_review(Some("down"), 10).unwrap();
    assert_eq!(review.len(), 1);
    assert_eq!(review[0]["question"], "VPNにつながらない");
    assert_eq!(review[0]["comment"], "wrong room");
    assert_eq!(review[0]["citations"][0]["n"], 1);
    assert!(s.feedback_review(Some("up"), 10).unwrap().is_empty());
    assert_eq!(s.feedback_review(None, 10).unwrap().len(), 1);
    assert_eq!(s.feedback_comments().unwrap(), vec![(first, "k1".into(), "wrong room".into(), "Restart [1].".into())]);
    assert_eq!(s.user_messages().unwrap(), vec![(m[0].id.clone(), "k1".into(), "VPNにつながらない".into())]);

    // Jobs: newest first, reports kept, interrupted ones failed.
    let j1 = s.create_job("ingest", "key:ops", &json!({"files": ["a.md"]})).unwrap();
    let j2 = s.create_job("remove", "key:ops", &json!({"source": "b.md"})).unwrap();
    s.set_job(&j1, "running", None).unwrap();
    s.set_job(&j1, "done", Some(&json!({"files_ingested": 1}))).unwrap();
    let j = s.job(&j1).unwrap().unwrap();
    assert_eq!((j["status"].as_str(), j["report"]["files_ingested"].as_i64()), (Some("done"), Some(1)));
    assert!(j["finished_unix"].as_i64().is_some() && j["detail"]["files"][0] == "a.md");
    assert_eq!(s.job("nope").unwrap(), None);
    let ids: Vec<String> = s.jobs(10).unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![j2.clone(), j1.clone()], "newest first");
    // A queued job waits for a runner, on either database (it records its work).
    assert_eq!(s.fail_interrupted_jobs().unwrap(), 0);
    assert_eq!(s.job(&j2).unwrap().unwrap()["status"], "queued");
    // The queue: oldest first, each job claimed once, marked running; a queued evaluation is
    // not the queue's; a queued job cancelled never runs.
    let j3 = s.create_job("eval", "key:ops", &json!({})).unwrap();
    let j4 = s.create_job_for("hr", "reindex", "key:ops", &json!({"force": false})).unwrap();
    let j5 = s.create_job_for("hr", "ingest", "key:ops", &json!({"files": ["c.md"]})).unwrap();
    assert!(s.request_cancel(&j5, "key:ops").unwrap());
    let j = s.job(&j5).unwrap().unwrap();
    assert_eq!((j["status"].as_str(), j["cancel_requested"]["by"].as_str()), (Some("cancelled"), Some("key:ops")));
    let claimed = s.claim_job("", Lane::Index).unwrap().unwrap();
    assert_eq!((claimed["id"].as_str(), claimed["status"].as_str()), (Some(j2.as_str()), Some("running")));
    assert_eq!(claimed["detail"]["source"], "b.md", "the job carries its work");
    assert_eq!(s.claim_job("", Lane::Index).unwrap(), None, "knowledge base hr's job is its writer's");
    assert_eq!(s.claim_job("hr", Lane::Index).unwrap().unwrap()["id"].as_str(), Some(j4.as_str()));
    assert_eq!(s.claim_job("hr", Lane::Index).unwrap(), None);
    if s.backend() == "sqlite" {
        // One process owns the file: at its start, what was running was interrupted, and so
        // was its queued evaluation.
        assert_eq!(s.fail_interrupted_jobs().unwrap(), 3);
        assert_eq!(s.job(&j2).unwrap().unwrap()["status"], "failed");
        assert_eq!(s.job(&j3).unwrap().unwrap()["status"], "failed");
        assert!(s.job(&j2).unwrap().unwrap()["finished_unix"].is_i64());
    } else {
        // Shared by replicas: those jobs run on a live replica (see the replica test).
        assert_eq!(s.fail_interrupted_jobs().unwrap(), 0);
        assert_eq!(s.job(&j2).unwrap().unwrap()["status"], "running");
        // Its writer restarting knows better: it holds the knowledge base, so nobody runs them.
        assert_eq!(s.fail_jobs_of_stopped_writer("hr").unwrap(), 1);
        assert_eq!(s.job(&j4).unwrap().unwrap()["status"], "failed");
        assert_eq!(s.job(&j2).unwrap().unwrap()["status"], "running", "another knowledge base's job");
    }
    // A job queued before jobs named their knowledge base goes to the first writer that starts.
    let j6 = s.create_job("remove", "key:ops", &json!({"source": "d.md"})).unwrap();
    assert_eq!(s.adopt_unnamed_jobs("main").unwrap(), 1);
    assert_eq!(s.claim_job("", Lane::Index).unwrap(), None);
    assert_eq!(s.claim_job("main", Lane::Index).unwrap().unwrap()["id"].as_str(), Some(j6.as_str()));
    // Two lanes: training waits behind no upload and an upload behind no training; a kind this
    // version does not know (a newer replica's, during a rolling upgrade) is neither lane's and
    // is not failed as interrupted either.
    let t1 = s.create_job_for("main", "lora", "key:ops", &json!({"task": "lora"})).unwrap();
    let i1 = s.create_job_for("main", "ingest", "key:ops", &json!({"files": ["e.md"]})).unwrap();
    let future = s.create_job_for("main", "distill", "key:ops", &json!({})).unwrap();
    assert_eq!(s.claim_job("main", Lane::Train).unwrap().unwrap()["id"].as_str(), Some(t1.as_str()));
    assert_eq!(s.claim_job("main", Lane::Train).unwrap(), None);
    assert_eq!(s.claim_job("main", Lane::Index).unwrap().unwrap()["id"].as_str(), Some(i1.as_str()));
    assert_eq!(s.claim_job("main", Lane::Index).unwrap(), None);
    s.fail_interrupted_jobs().unwrap();
    assert_eq!(s.job(&future).unwrap().unwrap()["status"], "queued");

    // The audit trail pages back by id.
    for i in 0..5 {
        s.audit(&AuditEntry {
            actor: "key:ops".into(),
            action: format!("documents.upload.{i}"),
            target: "a.md".into(),
            result: "ok".into(),
            detail: String::new(),
            ip: "127.0.0.1".into(),
        });
    }
    let page = s.audit_entries(3, None).unwrap();
    assert_eq!(
        page.iter().map(|r| r.entry.action.as_str()).collect::<Vec<_>>(),
        ["documents.upload.4", "documents.upload.3", "documents.upload.2"]
    );
    let older = s.audit_entries(10, Some(page[2].id)).unwrap();
    assert_eq!(older.len(), 2);

    // Guard events, several in one call, newest first.
    let ev = |rule: &str, score: f64| GuardEvent {
        request_id: "r1".into(),
        conversation_id: Some(c.clone()),
        client: "k1".into(),
        direction: "input".into(),
        category: "harassment".into(),
        rule: rule.into(),
        score,
        action: "block".into(),
        took_us: 120,
    };
    s.add_guard_events(&[ev("lexicon", 1.0), ev("head", 0.93)]).unwrap();
    s.add_guard_events(&[]).unwrap();
    let g = s.guard_events(10).unwrap();
    assert_eq!((g.len(), g[0].rule.as_str(), g[0].score, g[0].took_us), (2, "head", 0.93, 120));
    assert_eq!(g[1].conversation_id.as_deref(), Some(c.as_str()));

    // Quarantine: once per source and reference; reviewed by status.
    s.quarantine("feedback", "f1", "障害者の対応は不要", "discrimination", "lexicon", Some("k1")).unwrap();
    s.quarantine("feedback", "f1", "again", "discrimination", "lexicon", Some("k1")).unwrap();
    s.quarantine("inquiry_log", "logs/a.csv:3", "text", "pii", "email", None).unwrap();
    let q = s.quarantined(None).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!((q[0].text.as_str(), q[1].client.as_deref()), ("障害者の対応は不要", None));
    assert!(s.review_quarantine(q[0].id, "rejected").unwrap());
    assert!(!s.review_quarantine(9_999_999, "released").unwrap());
    assert!(s.review_quarantine(q[0].id, "deleted").is_err());
    assert_eq!(s.quarantined(Some("pending")).unwrap().len(), 1);
    assert_eq!(s.quarantined(Some("rejected")).unwrap()[0].id, q[0].id);

    // Slack: an event is taken once; a thread is a conversation.
    assert!(s.slack_event_first_seen("Ev1").unwrap());
    assert!(!s.slack_event_first_seen("Ev1").unwrap());
    assert_eq!(s.slack_thread("T:C:1").unwrap(), None);
    s.set_slack_thread("T:C:1", &c).unwrap();
    let c2 = s.create_conversation("slack:U1").unwrap();
    s.set_slack_thread("T:C:1", &c2).unwrap();
    assert_eq!(s.slack_thread("T:C:1").unwrap().as_deref(), Some(c2.as_str()));

    // Folder rules: per knowledge base, one per path (set again = replaced), removed once.
    s.set_access_rule("default", "/srv/manuals/hr", &["hr".into()], "key:ops").unwrap();
    s.set_access_rule("default", "/srv/manuals/hr", &["hr".into(), "managers".into()], "user:u2").unwrap();
    s.set_access_rule("other", "/srv/manuals/hr", &["public".into()], "key:ops").unwrap();
    let r = s.access_rules("default").unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].groups.clone(), r[0].updated_by.as_str()), (vec!["hr".to_string(), "managers".into()], "user:u2"));
    assert!(s.remove_access_rule("default", "/srv/manuals/hr").unwrap());
    assert!(!s.remove_access_rule("default", "/srv/manuals/hr").unwrap());
    assert!(s.access_rules("default").unwrap().is_empty());
    assert_eq!(s.access_rules("other").unwrap()[0].groups, ["public"]);
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("kotae.sqlite3")).unwrap();
    assert_eq!(s.backend(), "sqlite");
    exercise(&s);
}

/// A database that cannot be reached is named in the error (without its password).
#[test]
fn a_wrong_postgres_url_is_refused_clearly_without_its_password() {
    let err = Store::connect("postgres://kotae:s3cret@127.0.0.1:9/kotae").err().expect("refused");
    assert!(err.contains("cannot connect to PostgreSQL at postgres://kotae:***@127.0.0.1:9/kotae"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

mod postgres {
    use std::sync::{Arc, Barrier};

    use kotae_server::store::{Lane, Store};

    /// A new, empty database on the test server; its URL.
    fn fresh_database(test: &str) -> String {
        let base = std::env::var("KOTAE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!("KOTAE_TEST_POSTGRES_URL is not set: scripts/test.sh starts a PostgreSQL cluster and sets it")
        });
        let name = format!("kotae_{test}_{}", std::process::id());
        let mut c = postgres::Client::connect(&base, postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&name);
        url.to_string()
    }

    #[test]
    #[ignore = "needs PostgreSQL: scripts/test.sh starts one and sets KOTAE_TEST_POSTGRES_URL"]
    fn the_postgres_store_keeps_the_same_contract_and_survives_reconnecting() {
        let url = fresh_database("contract");
        let s = Store::connect(&url).unwrap();
        assert_eq!(s.backend(), "postgres");
        super::exercise(&s);
        drop(s);
        // Reconnecting (a restart, another replica) migrates nothing and finds everything.
        let again = Store::connect(&url).unwrap();
        assert_eq!(
            again.schema_version().unwrap(),
            Store::open(&tempfile::tempdir().unwrap().path().join("s")).unwrap().schema_version().unwrap()
        );
        assert_eq!(again.feedback_counts().unwrap(), (0, 1));
    }

    /// Replicas that start together migrate one at a time; all of them come up.
    #[test]
    #[ignore = "needs PostgreSQL: scripts/test.sh starts one and sets KOTAE_TEST_POSTGRES_URL"]
    fn replicas_starting_together_migrate_once() {
        let url = fresh_database("race");
        let n = 6;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::connect(&url)
                })
            })
            .collect();
        let stores: Vec<Store> =
            handles.into_iter().map(|h| h.join().unwrap().expect("every replica starts")).collect();
        let c = stores[0].create_conversation("k").unwrap();
        assert!(stores.iter().all(|s| s.conversation_owner(&c).unwrap().as_deref() == Some("k")));
    }

    /// Four replicas take jobs from one queue at once: each job is claimed exactly once.
    #[test]
    #[ignore = "needs PostgreSQL: scripts/test.sh starts one and sets KOTAE_TEST_POSTGRES_URL"]
    fn replicas_claiming_at_once_take_each_job_once() {
        let url = fresh_database("claims");
        let a = Store::connect(&url).unwrap();
        let queued: std::collections::BTreeSet<String> = (0..30)
            .map(|i| {
                a.create_job_for("main", "ingest", "key:ops", &serde_json::json!({ "files": [format!("{i}.md")] }))
                    .unwrap()
            })
            .collect();
        let other = a.create_job_for("hr", "ingest", "key:ops", &serde_json::json!({ "files": ["x.md"] })).unwrap();
        let barrier = Arc::new(Barrier::new(4));
        let claimers: Vec<_> = (0..4)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let s = Store::connect(&url).unwrap();
                    barrier.wait();
                    let mut got = Vec::new();
                    while let Some(j) = s.claim_job("main", Lane::Index).unwrap() {
                        got.push(j["id"].as_str().unwrap().to_string());
                    }
                    got
                })
            })
            .collect();
        let got: Vec<String> = claimers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert_eq!(got.len(), queued.len(), "no job was claimed twice: {got:?}");
        assert_eq!(got.into_iter().collect::<std::collections::BTreeSet<_>>(), queued);
        assert_eq!(a.job(&other).unwrap().unwrap()["status"], "queued", "another knowledge base's writer runs it");
    }

    /// Two replicas append to one conversation at the same moment: every message is kept, each
    /// in a place of its own; what one writes, the other reads at once.
    #[test]
    #[ignore = "needs PostgreSQL: scripts/test.sh starts one and sets KOTAE_TEST_POSTGRES_URL"]
    fn two_replicas_share_conversations_jobs_and_votes() {
        let url = fresh_database("replicas");
        let a = Arc::new(Store::connect(&url).unwrap());
        let b = Arc::new(Store::connect(&url).unwrap());
        let c = a.create_conversation("k1").unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(r, s)| {
                let (c, barrier) = (c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..40 {
                        s.add_message(&c, "user", &format!("replica {r} message {i}"), None).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let m = b.messages(&c).unwrap();
        assert_eq!(m.len(), 80, "no message lost");
        let answer = a.add_message(&c, "assistant", "ok", None).unwrap();
        assert_eq!(b.add_feedback(&answer, "up", None, "k1").unwrap().map(|_| ()), Some(()));
        assert_eq!(a.feedback_counts().unwrap(), (1, 0));
        let job = a.create_job("ingest", "key:ops", &serde_json::json!({})).unwrap();
        b.set_job(&job, "done", Some(&serde_json::json!({"ok": true}))).unwrap();
        assert_eq!(a.job(&job).unwrap().unwrap()["status"], "done");
        // A job running on A (its heartbeat fresh) survives B's start; once A stops beating
        // for longer than JOB_STALE_S, B marks it failed.
        let running = a.create_job("ingest", "key:ops", &serde_json::json!({})).unwrap();
        a.set_job(&running, "running", None).unwrap();
        a.touch_job(&running).unwrap();
        let queued_long_ago = a.create_job("remove", "key:ops", &serde_json::json!({})).unwrap();
        let eval_long_ago = a.create_job("eval", "key:ops", &serde_json::json!({})).unwrap();
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for id in [&queued_long_ago, &eval_long_ago] {
            admin.execute("UPDATE jobs SET created_unix = created_unix - 1000 WHERE id = $1", &[id]).unwrap();
        }
        assert_eq!(b.fail_interrupted_jobs().unwrap(), 1, "only the evaluation nobody runs");
        assert_eq!(a.job(&running).unwrap().unwrap()["status"], "running");
        assert_eq!(a.job(&eval_long_ago).unwrap().unwrap()["status"], "failed");
        // A key made on A works on B; revoked on B, it is refused on A at once.
        assert!(a.add_api_key("bot", "d1", "user", &["staff".to_string()], "key:ops").unwrap());
        assert!(!b.add_api_key("bot", "d2", "user", &[], "key:ops").unwrap(), "names are unique across replicas");
        assert_eq!(b.api_key("d1").unwrap().map(|k| k.0), Some("bot".to_string()));
        assert_eq!(b.revoke_api_key("bot", "key:ops").unwrap(), Some(true));
        assert_eq!(a.api_key("d1").unwrap(), None);
        // A cancel asked on B reaches the job A runs, with its progress.
        assert!(!a.set_job_progress(&running, &serde_json::json!({ "files_ingested": 3 })).unwrap());
        assert_eq!(b.job(&running).unwrap().unwrap()["progress"]["files_ingested"], 3);
        assert!(b.request_cancel(&running, "key:ops").unwrap());
        assert!(a.set_job_progress(&running, &serde_json::json!({ "files_ingested": 4 })).unwrap());
        assert_eq!(a.job(&queued_long_ago).unwrap().unwrap()["status"], "queued", "it waits for a writer");
        admin.execute("UPDATE jobs SET heartbeat_unix = heartbeat_unix - 1000 WHERE id = $1", &[&running]).unwrap();
        assert_eq!(b.fail_interrupted_jobs().unwrap(), 1);
        assert_eq!(a.job(&running).unwrap().unwrap()["status"], "failed");
        assert!(a.slack_event_first_seen("Ev9").unwrap());
        assert!(!b.slack_event_first_seen("Ev9").unwrap(), "a Slack retry reaching the other replica is still a retry");
    }

    /// Handlers call the store on tokio's worker threads, where blocking on a runtime panics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: scripts/test.sh starts one and sets KOTAE_TEST_POSTGRES_URL"]
    async fn the_store_works_from_async_handlers_and_reconnects() {
        // (The test's own sync client must not run on a worker thread either.)
        let url = tokio::task::spawn_blocking(|| fresh_database("async")).await.unwrap();
        let s = Arc::new(Store::connect(&url).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.create_conversation(&format!("k{i}")).unwrap() })
            })
            .collect();
        for t in tasks {
            let id = t.await.unwrap();
            assert!(s.conversation_owner(&id).unwrap().is_some());
        }
        // The database drops every connection (a restart, a failover): the next call reconnects.
        let u = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut admin = postgres::Client::connect(&u, postgres::NoTls).unwrap();
            admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .unwrap();
        })
        .await
        .unwrap();
        let first = s.create_conversation("after");
        let id = match first {
            Ok(id) => id,
            // The call that finds the connection dead fails cleanly; the next one reconnects.
            Err(e) => {
                assert!(matches!(e, kotae_server::ApiError::Internal(_)), "{e:?}");
                s.create_conversation("after").unwrap()
            }
        };
        assert_eq!(s.conversation_owner(&id).unwrap().as_deref(), Some("after"));
    }
}
