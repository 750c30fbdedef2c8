//! Slack over real HTTP: signed Events API requests into a real server with the real models,
//! and a local stand-in of Slack's Web API that records every call (and can rate-limit).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kotae_models::Embedder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::serve::{client, Server};
use super::{config, embedder, fresh_data_dir, ingest, workspace};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// HMAC-SHA256 (RFC 2104) over sha2: Slack's `v0=` signature.
fn sign(ts: &str, body: &str) -> String {
    let mut key = [0u8; 64];
    key[..SECRET.len()].copy_from_slice(SECRET.as_bytes());
    let pad = |b: u8| key.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(format!("v0:{ts}:{body}")).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    format!("v0={}", hex::encode(outer))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// What the stand-in recorded: (when, method, body).
type Calls = Arc<Mutex<Vec<(Instant, String, Value)>>>;

/// Slack's Web API, as far as Kotae uses it.
async fn stand_in(calls: Calls, limit_next: Arc<AtomicUsize>) -> String {
    stand_in_with_socket(calls, limit_next, String::new()).await
}

/// …and `apps.connections.open`, which hands out `socket` (Socket Mode's WebSocket URL).
async fn stand_in_with_socket(calls: Calls, limit_next: Arc<AtomicUsize>, socket: String) -> String {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    type St = (Calls, Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<String>);
    async fn method(
        State((calls, limit, seq, socket)): State<St>,
        Path(m): Path<String>,
        Query(q): Query<std::collections::HashMap<String, String>>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!(q));
        calls.lock().unwrap().push((Instant::now(), m.clone(), v.clone()));
        if limit.load(Ordering::SeqCst) > 0 {
            limit.fetch_sub(1, Ordering::SeqCst);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                axum::Json(json!({ "ok": false, "error": "ratelimited" })),
            )
                .into_response();
        }
        let ts = format!("1700000000.{:06}", seq.fetch_add(1, Ordering::SeqCst));
        let reply = match m.as_str() {
            "chat.postMessage" => {
                json!({ "ok": true, "channel": v["channel"], "ts": ts, "message": { "ts": ts, "text": v["text"] } })
            }
            "apps.connections.open" => json!({ "ok": true, "url": socket.as_str() }),
            "usergroups.list" => json!({ "ok": true, "usergroups": [
                { "id": "S_HR", "handle": "hr-team", "users": ["U_HRG"] },
                { "id": "S_ALL", "handle": "everyone", "users": ["U_HRG", "U_STAFF"] },
            ] }),
            "users.info" => {
                let email = if q.get("user").map(String::as_str) == Some("U_MAIL") {
                    "Hanako@Example.com"
                } else {
                    "nobody@example.com"
                };
                json!({ "ok": true, "user": { "id": q.get("user"), "profile": { "email": email } } })
            }
            _ => json!({ "ok": true }),
        };
        axum::Json(reply).into_response()
    }
    let app = axum::Router::new().route("/api/{method}", axum::routing::post(method).get(method)).with_state((
        calls,
        limit_next,
        Arc::new(AtomicUsize::new(1)),
        Arc::new(socket),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn mention(event_id: &str, user: &str, channel: &str, ts: &str, thread: Option<&str>, text: &str) -> Value {
    let mut ev = json!({ "type": "app_mention", "user": user, "channel": channel, "ts": ts, "event_ts": ts,
                         "text": format!("<@UKOTAE> {text}") });
    if let Some(t) = thread {
        ev["thread_ts"] = json!(t);
    }
    callback(event_id, ev)
}

fn dm(event_id: &str, user: &str, ts: &str, text: &str) -> Value {
    callback(
        event_id,
        json!({ "type": "message", "channel_type": "im", "user": user, "channel": format!("D_{user}"), "ts": ts, "event_ts": ts, "text": text }),
    )
}

fn callback(event_id: &str, event: Value) -> Value {
    json!({ "token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback", "event_id": event_id,
            "event_time": now(), "authorizations": [{ "team_id": "T1", "user_id": "UKOTAE", "is_bot": true }], "event": event })
}

struct Slack<'a> {
    s: &'a Server,
    c: reqwest::Client,
    calls: Calls,
}

impl Slack<'_> {
    /// POST a body to a Slack route, signed (by default), with extra headers; (status, body, ms).
    async fn send(
        &self,
        path: &str,
        body: &str,
        ts: Option<i64>,
        sig: Option<String>,
        extra: &[(&str, &str)],
    ) -> (u16, String, f64) {
        let ts = ts.unwrap_or_else(now).to_string();
        let mut r = self.c.post(self.s.url(path)).body(body.to_string());
        r = r.header(
            "content-type",
            if path == "/slack/events" { "application/json" } else { "application/x-www-form-urlencoded" },
        );
        r = r.header("x-slack-request-timestamp", &ts);
        if let Some(sig) = sig.or_else(|| Some(sign(&ts, body))).filter(|s| !s.is_empty()) {
            r = r.header("x-slack-signature", sig);
        }
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        let t = Instant::now();
        let resp = r.send().await.unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        (resp.status().as_u16(), resp.text().await.unwrap(), ms)
    }

    async fn event(&self, v: &Value) -> f64 {
        let (st, body, ms) = self.send("/slack/events", &v.to_string(), None, None, &[]).await;
        assert_eq!(st, 200, "{body}");
        ms
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Wait for the final `chat.update` (with blocks) or a non-streamed `chat.postMessage`
    /// after call number `from`; the calls since then and that message's body.
    async fn answer_after(&self, from: usize) -> (Vec<(Instant, String, Value)>, Value) {
        let t = Instant::now();
        loop {
            // (`users.info` and `usergroups.list` lookups aside: the answer's own calls.)
            let calls: Vec<_> = self.calls.lock().unwrap()[from..]
                .iter()
                .filter(|c| c.1 != "users.info" && c.1 != "usergroups.list")
                .cloned()
                .collect();
            if let Some(done) = calls.iter().find(|c| c.2["blocks"].is_array()) {
                let d = done.2.clone();
                return (calls, d);
            }
            assert!(t.elapsed() < Duration::from_secs(240), "no answer in Slack: {calls:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `s` as a form value (`application/x-www-form-urlencoded`).
fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn sources(msg: &Value) -> String {
    msg["blocks"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_answers_in_threads_with_citations_feedback_and_access_rules() {
    // The test company's knowledge: a public manual and an HR-only one.
    let data = fresh_data_dir();
    let cfg = config(data.path());
    let (public, hr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The public manual names its page on the intranet (front matter, as a wiki export
    // writes it): citations link there; the HR note names none and links to the source viewer.
    let manual = std::fs::read_to_string(workspace().join("knowledge/manuals/ga/meeting-rooms.en.md")).unwrap();
    std::fs::write(
        public.path().join("meeting-rooms.en.md"),
        format!("---\nurl: https://intranet.example.com/ga/meeting-rooms?lang=en&v=2|x\n---\n{manual}"),
    )
    .unwrap();
    std::fs::write(
        hr.path().join("salary-bands.md"),
        "# Salary bands\n\n## Bands\n\nSalary band S3 ranges from 5.2 to 6.4 million yen a year; band S4 from 6.4 to 8.0 million yen.\n\
         Salary bands are reviewed every April by HR.\n",
    )
    .unwrap();
    let mut index = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    ingest(&cfg, &mut index, &[public.path()], &["public"], false);
    ingest(&cfg, &mut index, &[hr.path()], &["hr"], false);

    let calls: Calls = Default::default();
    let limit_next = Arc::new(AtomicUsize::new(0));
    let api = stand_in(calls.clone(), limit_next.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let s = Server::start_with(state.path(), Arc::new(index), |c| {
        c.server.rate_limit_burst = 100_000;
        c.server.rate_limit_per_minute = 100_000;
        c.server.answers_in_flight_per_client = 8;
        c.slack.signing_secret = Some(SECRET.into());
        c.slack.bot_token = Some("xoxb-test".into());
        c.slack.api_url = api.clone();
        c.slack.public_url = Some("https://kotae.example".into());
        c.slack.update_interval_ms = 200;
        c.slack.users.insert("U_HR".into(), vec!["hr".into()]);
        c.slack.users.insert("hanako@example.com".into(), vec!["hr".into()]);
        c.slack.channels = vec![
            kotae_server::slack::SlackChannel {
                id: "C_GENERAL".into(),
                groups: vec!["public".into()],
                ..Default::default()
            },
            kotae_server::slack::SlackChannel {
                id: "C_QUIET".into(),
                groups: vec!["public".into()],
                ephemeral: true,
                ..Default::default()
            },
        ];
    })
    .await;
    let sl = Slack { s: &s, c: client(), calls: calls.clone() };

    // Slack checks the URL once.
    let (st, body, _) = sl
        .send("/slack/events", r#"{"type":"url_verification","token":"x","challenge":"ch4ll3nge"}"#, None, None, &[])
        .await;
    assert_eq!((st, serde_json::from_str::<Value>(&body).unwrap()["challenge"].as_str()), (200, Some("ch4ll3nge")));

    // Unsigned, tampered and replayed requests: refused, and nothing happens.
    let first = mention("Ev1", "U_STAFF", "C_GENERAL", "1700000001.000100", None, "How do I book a meeting room?");
    let body = first.to_string();
    let stale = now() - 6 * 60;
    for (what, ts, sig) in [
        ("unsigned", None, Some(String::new())),
        ("tampered", None, Some(sign(&now().to_string(), &body.replace("meeting", "secret")))),
        ("replayed", Some(stale), Some(sign(&stale.to_string(), &body))),
        ("another secret", None, Some(format!("v0={}", "0".repeat(64)))),
    ] {
        let (st, _, _) = sl.send("/slack/events", &body, ts, sig, &[]).await;
        assert_eq!(st, 401, "{what}");
    }
    let (st, _, _) = sl.send("/slack/interactive", "payload=%7B%7D", None, Some(String::new()), &[]).await;
    assert_eq!(st, 401, "unsigned interaction");
    let (st, _, _) = sl.send("/slack/commands", "text=hi", Some(stale), None, &[]).await;
    assert_eq!(st, 401, "replayed command");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sl.count(), 0, "a refused request had side effects");

    // The same request signed by Slack's own Python SDK is accepted (and Ev1 was not taken
    // by the refused copies): answered in its thread, streamed, with linked sources and
    // feedback buttons.
    let ts = now().to_string();
    let py = std::process::Command::new("python3")
        .env(
            "PYTHONPATH",
            std::env::var("KOTAE_TEST_PYTHONPATH")
                .unwrap_or_else(|_| super::test_data().join("py").display().to_string()),
        )
        .args([
            "-c",
            "import sys; from slack_sdk.signature import SignatureVerifier as V; \
             print(V(sys.argv[1]).generate_signature(timestamp=sys.argv[2], body=sys.stdin.read()), end='')",
            SECRET,
            &ts,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        py.stdin.as_ref().unwrap().write_all(body.as_bytes()).unwrap();
    }
    let out = py.wait_with_output().unwrap();
    let sdk_sig = String::from_utf8(out.stdout).unwrap();
    assert!(sdk_sig.starts_with("v0="), "slack_sdk (scripts/test.sh installs it): {sdk_sig}");
    let (st, _, ack_ms) = sl.send("/slack/events", &body, Some(ts.parse().unwrap()), Some(sdk_sig), &[]).await;
    assert_eq!(st, 200);
    let asked = Instant::now();
    let (got, done) = sl.answer_after(0).await;
    let post = &got[0];
    assert_eq!(
        (post.1.as_str(), post.2["thread_ts"].as_str()),
        ("chat.postMessage", Some("1700000001.000100")),
        "{got:?}"
    );
    let first_text = got.iter().position(|c| c.1 == "chat.update" && c.2["text"].as_str().is_some_and(|t| t.len() > 2));
    let first_visible = first_text.map(|i| got[i].0.duration_since(asked).as_secs_f64() * 1e3);
    let last = got.iter().rfind(|c| c.2["blocks"].is_array()).unwrap();
    assert_eq!(last.1, "chat.update", "the posted message is updated in place: {got:?}");
    assert!(done["ts"].as_str().is_some_and(|t| t.starts_with("1700000000.")), "{done}");
    let blocks = sources(&done);
    assert!(
        blocks.contains("meeting-rooms.en.md")
            && blocks.contains("<https://intranet.example.com/ga/meeting-rooms?lang=en&amp;v=2%7Cx|")
            && !blocks.contains("https://kotae.example/chat#source="),
        "{blocks}"
    );
    assert!(blocks.contains("kotae_feedback_down"), "{blocks}");
    let message_id = done["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .and_then(|b| b["elements"][0]["value"].as_str())
        .unwrap()
        .to_string();

    // Slack's retry of the same event, and the same event id again: answered once.
    let before = sl.count();
    let (st, _, _) = sl
        .send(
            "/slack/events",
            &body,
            None,
            None,
            &[("x-slack-retry-num", "1"), ("x-slack-retry-reason", "http_timeout")],
        )
        .await;
    assert_eq!(st, 200);
    let again = mention("Ev1", "U_STAFF", "C_GENERAL", "1700000001.000200", None, "How do I book a meeting room?");
    let mut acks = vec![ack_ms, sl.event(&again).await];
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sl.count(), before, "a retry or a duplicate event id was answered again");

    // A follow-up in the thread is the same conversation.
    let from = sl.count();
    acks.push(
        sl.event(&mention(
            "Ev2",
            "U_STAFF",
            "C_GENERAL",
            "1700000001.000300",
            Some("1700000001.000100"),
            "Can I cancel it?",
        ))
        .await,
    );
    let (got, _) = sl.answer_after(from).await;
    assert_eq!(got[0].2["thread_ts"], "1700000001.000100");
    let conv =
        s.state.store.slack_thread("T1:C_GENERAL:1700000001.000100").unwrap().expect("the thread has a conversation");
    let msgs = s.state.store.messages(&conv).unwrap();
    assert_eq!(msgs.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["user", "assistant", "user", "assistant"]);
    assert_eq!(msgs[2].content, "Can I cancel it?");

    // Access: HR's documents reach HR people in a DM only; never a channel, never others.
    let salary = "What are the salary bands?";
    let mut cases = vec![
        (dm("Ev3", "U_STAFF", "1700000002.000100", salary), false, "a DM from someone outside HR"),
        (
            mention("Ev4", "U_HR", "C_GENERAL", "1700000002.000200", None, salary),
            false,
            "HR asking in a public channel",
        ),
        (
            mention("Ev5", "U_HR", "C_UNLISTED", "1700000002.000300", None, salary),
            false,
            "HR asking in an unlisted channel",
        ),
        (dm("Ev6", "U_HR", "1700000002.000400", salary), true, "a DM from HR"),
        (dm("Ev7", "U_MAIL", "1700000002.000500", salary), true, "a DM from HR, known by e-mail"),
    ];
    for (ev, may, what) in cases.drain(..) {
        let from = sl.count();
        acks.push(sl.event(&ev).await);
        let (_, done) = sl.answer_after(from).await;
        let cites_hr =
            sources(&done).contains("salary-bands.md") || done["text"].as_str().unwrap_or("").contains("6.4 million");
        assert_eq!(cites_hr, may, "{what}: {done}");
        if sources(&done).contains("salary-bands.md") {
            assert!(sources(&done).contains("https://kotae.example/chat#source="), "{what}: {done}");
        }
    }

    // Feedback: 👎 from the asker is stored and asks for a comment; the comment is stored;
    // someone else's vote on that answer is not theirs to give.
    let action = |user: &str, action: &str| {
        let payload = json!({ "type": "block_actions", "team": { "id": "T1" }, "user": { "id": user }, "api_app_id": "A1",
            "container": { "type": "message", "message_ts": "1700000000.000001", "channel_id": "C_GENERAL" },
            "trigger_id": "trig-1", "channel": { "id": "C_GENERAL" },
            "actions": [{ "type": "button", "action_id": action, "block_id": "kotae_feedback", "value": message_id, "action_ts": "1" }] });
        format!("payload={}", url_encode(&payload.to_string()))
    };
    let from = sl.count();
    let (st, _, _) = sl.send("/slack/interactive", &action("U_STAFF", "kotae_feedback_down"), None, None, &[]).await;
    assert_eq!(st, 200);
    let t = Instant::now();
    while !sl.calls.lock().unwrap()[from..].iter().any(|c| c.1 == "views.open") {
        assert!(t.elapsed() < Duration::from_secs(10), "no comment dialog");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dialog = sl.calls.lock().unwrap()[from..].iter().find(|c| c.1 == "views.open").unwrap().2.clone();
    assert_eq!(
        (dialog["trigger_id"].as_str(), dialog["view"]["private_metadata"].as_str()),
        (Some("trig-1"), Some(message_id.as_str()))
    );
    let submit = json!({ "type": "view_submission", "team": { "id": "T1" }, "user": { "id": "U_STAFF" }, "trigger_id": "trig-2",
        "view": { "id": "V1", "team_id": "T1", "app_id": "A1", "type": "modal", "title": { "type": "plain_text", "text": "Kotae" }, "blocks": [],
                  "private_metadata": message_id, "callback_id": "kotae_feedback_comment", "hash": "h",
                  "state": { "values": { "comment": { "comment": { "type": "plain_text_input", "value": "The cancellation rule is missing" } } } } } });
    let (st, body, _) =
        sl.send("/slack/interactive", &format!("payload={}", url_encode(&submit.to_string())), None, None, &[]).await;
    assert_eq!(st, 200, "{body}");
    let votes = s.state.store.feedback_review(Some("down"), 10).unwrap();
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(
        (votes[0]["client"].as_str(), votes[0]["comment"].as_str()),
        (Some("slack:T1:U_STAFF"), Some("The cancellation rule is missing"))
    );
    let from = sl.count();
    let (st, _, _) = sl.send("/slack/interactive", &action("U_OTHER", "kotae_feedback_up"), None, None, &[]).await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.state.store.feedback_counts().unwrap(), (0, 1), "another user's vote was stored");
    assert!(sl.calls.lock().unwrap()[from..].iter().any(|c| c.1 == "chat.postEphemeral" && c.2["user"] == "U_OTHER"));

    // Bots, Kotae itself, edits and Slackbot: ignored.
    let from = sl.count();
    for (i, ev) in [
        json!({ "type": "message", "channel_type": "im", "bot_id": "B1", "user": "U_BOT", "channel": "D_X", "ts": "1.1", "text": "hi" }),
        json!({ "type": "message", "channel_type": "im", "user": "UKOTAE", "channel": "D_X", "ts": "1.2", "text": "my own answer" }),
        json!({ "type": "message", "channel_type": "im", "subtype": "message_changed", "channel": "D_X", "ts": "1.3",
                "message": { "user": "U_STAFF", "text": "edited", "ts": "1.0" } }),
        json!({ "type": "message", "channel_type": "im", "user": "USLACKBOT", "channel": "D_X", "ts": "1.4", "text": "Reminder" }),
    ]
    .into_iter()
    .enumerate()
    {
        acks.push(sl.event(&callback(&format!("EvIgnored{i}"), ev)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sl.count(), from, "an ignored message was answered: {:?}", &sl.calls.lock().unwrap()[from..]);

    // Slack's 429: the call waits Retry-After and goes through.
    limit_next.store(1, Ordering::SeqCst);
    let from = sl.count();
    acks.push(sl.event(&dm("Ev8", "U_STAFF", "1700000003.000100", "How do I book a meeting room?")).await);
    let (got, _) = sl.answer_after(from).await;
    assert!(got.len() >= 2 && got[0].1 == got[1].1, "{got:?}");
    let waited = got[1].0.duration_since(got[0].0);
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}, not after Retry-After: 1");

    // `/kotae question`: acknowledged at once, answered in the channel.
    let from = sl.count();
    let cmd =
        "token=x&team_id=T1&channel_id=C_GENERAL&user_id=U_STAFF&command=%2Fkotae&text=How+do+I+book+a+meeting+room%3F\
               &response_url=https%3A%2F%2Fhooks.example%2F1&trigger_id=t3";
    let (st, body, ms) = sl.send("/slack/commands", cmd, None, None, &[]).await;
    acks.push(ms);
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["response_type"], "ephemeral");
    let (got, done) = sl.answer_after(from).await;
    assert_eq!(
        (got[0].1.as_str(), got[0].2["channel"].as_str(), got[0].2["thread_ts"].is_null()),
        ("chat.postMessage", Some("C_GENERAL"), true)
    );
    assert!(sources(&done).contains("meeting-rooms.en.md"));

    // `/kotae` in a channel that answers privately: the ephemeral reply is replaced through the
    // command's response_url as the answer is written (Slack cannot chat.update an ephemeral
    // message), five uses at most; a response_url on another host is never called.
    let hook = format!("{}/response.hook1", api.trim_end_matches('/'));
    let quiet = |response_url: &str| {
        format!(
            "token=x&team_id=T1&channel_id=C_QUIET&user_id=U_STAFF&command=%2Fkotae&text=How+do+I+book+a+meeting+room%3F\
             &response_url={}&trigger_id=t4",
            urlencoding(response_url)
        )
    };
    let from = sl.count();
    let (st, body, ms) = sl.send("/slack/commands", &quiet(&hook), None, None, &[]).await;
    acks.push(ms);
    assert_eq!((st, serde_json::from_str::<Value>(&body).unwrap()["response_type"].as_str()), (200, Some("ephemeral")));
    let (got, done) = sl.answer_after(from).await;
    let drafts: Vec<&Value> = got.iter().filter(|c| c.1 == "response.hook1").map(|c| &c.2).collect();
    assert!(got.iter().all(|c| c.1 == "response.hook1"), "only the response_url is used: {got:?}");
    assert!((2..=4).contains(&drafts.len()), "drafts then the answer, within Slack's five uses: {drafts:?}");
    assert!(drafts.iter().all(|d| d["response_type"] == "ephemeral" && d["replace_original"] == true), "{drafts:?}");
    assert!(drafts[0]["text"].as_str().unwrap().ends_with(" …") && drafts[0]["blocks"].is_null(), "{drafts:?}");
    assert!(sources(&done).contains("meeting-rooms.en.md"), "{done}");
    println!("slack: ephemeral answer in {} response_url posts", drafts.len());
    let from = sl.count();
    let (st, _, _) = sl.send("/slack/commands", &quiet("https://attacker.example/collect"), None, None, &[]).await;
    assert_eq!(st, 200);
    let (got, _) = sl.answer_after(from).await;
    assert_eq!(got.last().unwrap().1, "chat.postEphemeral", "{got:?}");
    assert!(got.iter().all(|c| !c.1.starts_with("response")), "{got:?}");

    acks.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| acks[((acks.len() - 1) as f64 * q).round() as usize];
    println!(
        "slack: acknowledgement p50 {:.1} ms, p99 {:.1} ms over {} requests; first answer text visible {}",
        p(0.5),
        p(0.99),
        acks.len(),
        first_visible.map(|m| format!("{m:.0} ms after the event")).unwrap_or_else(|| "with the final message".into())
    );
    s.stop().await;
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The next WebSocket connection on Slack's side of Socket Mode.
async fn accept(l: &tokio::net::TcpListener) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let (tcp, _) =
        tokio::time::timeout(Duration::from_secs(30), l.accept()).await.expect("Kotae never connected").unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

/// Socket Mode, for a Kotae without a public URL: it opens the WebSocket itself (the URL from
/// `apps.connections.open`, with the app-level token), acknowledges each envelope at once,
/// answers in the thread as over the Events API, puts a slash command's reply in its
/// acknowledgement, takes a retried event once, and connects again when Slack asks. Without a
/// signing secret, the HTTP routes accept nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_socket_mode_answers_without_a_public_url() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let data = fresh_data_dir();
    let cfg = config(data.path());
    let public = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace().join("knowledge/manuals/ga/meeting-rooms.en.md"),
        public.path().join("meeting-rooms.en.md"),
    )
    .unwrap();
    let hr = tempfile::tempdir().unwrap();
    std::fs::write(
        hr.path().join("salary-bands.md"),
        "# Salary bands\n\n## Bands\n\nSalary band S3 ranges from 5.2 to 6.4 million yen a year; band S4 from 6.4 to 8.0 million yen.\n",
    )
    .unwrap();
    let mut index = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    ingest(&cfg, &mut index, &[public.path()], &["public"], false);
    ingest(&cfg, &mut index, &[hr.path()], &["hr"], false);

    // Slack's side of the socket.
    let slack_ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}/link/?ticket=t1", slack_ws.local_addr().unwrap());
    let calls: Calls = Default::default();
    let api = stand_in_with_socket(calls.clone(), Arc::new(AtomicUsize::new(0)), ws_url).await;
    let state = tempfile::tempdir().unwrap();
    let s = Server::start_with(state.path(), Arc::new(index), |c| {
        c.server.rate_limit_burst = 100_000;
        c.server.rate_limit_per_minute = 100_000;
        c.slack.bot_token = Some("xoxb-test".into());
        c.slack.app_token = Some("xapp-1-test".into());
        // Members of the Slack user group @hr-team read HR documents.
        c.slack.user_groups.insert("hr-team".into(), vec!["hr".into()]);
        c.slack.api_url = api.clone();
        c.slack.update_interval_ms = 200;
    })
    .await;
    let mut ws = accept(&slack_ws).await;
    ws.send(Message::Text(json!({ "type": "hello", "num_connections": 1 }).to_string().into())).await.unwrap();
    let opened = |calls: &Calls| calls.lock().unwrap().iter().filter(|c| c.1 == "apps.connections.open").count();
    assert_eq!(opened(&calls), 1);

    // No signing secret: the Events API endpoints refuse even a correctly signed request.
    let sl = Slack { s: &s, c: client(), calls: calls.clone() };
    let (st, body, _) =
        sl.send("/slack/events", r#"{"type":"url_verification","challenge":"x"}"#, None, None, &[]).await;
    assert_eq!(st, 401, "{body}");

    async fn ack(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> (Value, f64) {
        let t = Instant::now();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no acknowledgement");
            if let Message::Text(t2) = m.unwrap().unwrap() {
                return (serde_json::from_str(t2.as_str()).unwrap(), t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let ts = "1700000100.000100";
    let event = mention("EvS1", "U_STAFF", "C_GENERAL", ts, None, "How do I book a meeting room?");
    let envelope = |id: &str, kind: &str, payload: &Value| {
        Message::Text(json!({ "envelope_id": id, "type": kind, "payload": payload, "accepts_response_payload": kind != "events_api", "retry_attempt": 0 }).to_string().into())
    };
    let from = sl.count();
    ws.send(envelope("env-1", "events_api", &event)).await.unwrap();
    let (a, ms) = ack(&mut ws).await;
    assert_eq!(a, json!({ "envelope_id": "env-1" }));
    eprintln!("Socket Mode acknowledgement: {ms:.1} ms");
    let (answer_calls, done) = sl.answer_after(from).await;
    assert_eq!(answer_calls[0].1, "chat.postMessage");
    assert_eq!(answer_calls[0].2["thread_ts"], ts, "answered in the question's thread");
    assert!(sources(&done).contains("meeting-rooms.en.md"), "{done}");

    // Slack retries the envelope: acknowledged, not answered again.
    let posts = |calls: &Calls| calls.lock().unwrap().iter().filter(|c| c.1 == "chat.postMessage").count();
    let before = posts(&calls);
    ws.send(envelope("env-2", "events_api", &event)).await.unwrap();
    assert_eq!(ack(&mut ws).await.0["envelope_id"], "env-2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(posts(&calls), before, "a retried event was answered twice");

    // A slash command: the acknowledgement carries the immediate reply; the answer follows.
    let from = sl.count();
    let command = json!({ "team_id": "T1", "channel_id": "C_GENERAL", "user_id": "U_STAFF", "command": "/kotae",
                          "text": "会議室はどうやって予約しますか", "trigger_id": "1.2.3" });
    ws.send(envelope("env-3", "slash_commands", &command)).await.unwrap();
    let (a, _) = ack(&mut ws).await;
    assert_eq!(
        (a["envelope_id"].as_str(), a["payload"]["response_type"].as_str()),
        (Some("env-3"), Some("ephemeral")),
        "{a}"
    );
    assert_eq!(a["payload"]["text"], "確認しています…");
    let (_, done) = sl.answer_after(from).await;
    assert_eq!(done["channel"], "C_GENERAL", "{done}");

    // Slack asks for a fresh connection (it does every few hours): Kotae opens a new one.
    ws.send(Message::Text(json!({ "type": "disconnect", "reason": "refresh_requested" }).to_string().into()))
        .await
        .unwrap();
    let mut ws2 = accept(&slack_ws).await;
    assert_eq!(opened(&calls), 2, "a new URL for the new connection");
    let from = sl.count();
    ws2.send(envelope(
        "env-4",
        "events_api",
        &mention("EvS2", "U_STAFF", "C_GENERAL", "1700000200.000100", None, "Can I cancel a meeting room booking?"),
    ))
    .await
    .unwrap();
    assert_eq!(ack(&mut ws2).await.0["envelope_id"], "env-4");
    sl.answer_after(from).await;

    // Access by Slack user group: a member of @hr-team is answered from the HR manual in a
    // DM; someone outside it, asking the same, is not.
    for (i, (user, sees)) in [("U_HRG", true), ("U_STAFF", false)].into_iter().enumerate() {
        let from = sl.count();
        let q = dm(&format!("EvG{i}"), user, &format!("1700000300.00010{i}"), "What is the range of salary band S3?");
        ws2.send(envelope(&format!("env-g{i}"), "events_api", &q)).await.unwrap();
        ack(&mut ws2).await;
        let (_, done) = sl.answer_after(from).await;
        // Only the HR manual says 5.2 (million yen): the answer shows it exactly when it was
        // allowed to read that manual.
        assert_eq!(done.to_string().contains("5.2"), sees, "{user}: {done}");
    }
    assert_eq!(
        calls.lock().unwrap().iter().filter(|c| c.1 == "usergroups.list").count(),
        1,
        "the user groups are read once and cached"
    );
    s.stop().await;
}
