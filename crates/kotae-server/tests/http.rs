//! Identity and access over real HTTP, as an attacker would try them: every endpoint without
//! a credential, with a wrong one, with another user's identifiers; JWTs with a bad
//! signature, issuer, audience, expiry or algorithm; a JWKS key rotation; identity headers
//! from an address that is not the trusted proxy; brute force. No models are loaded: the
//! access layer answers before any engine is needed (an authorized request to a model route
//! gets 503 "loading", an unauthorized one 401/403).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kotae_server::auth::key_digest;
use kotae_server::store::Store;
use kotae_server::{ApiKey, AppState, JwtConfig, Role, ServerConfig, SsoConfig};
use serde_json::{json, Value};

// Private keys made for these tests only (openssl genpkey; P-256 as PKCS#8 DER, RSA 2048 as
// PKCS#1 DER, hex). They sign test tokens and protect nothing.
const EC_A: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420b07110a8244796a198d1cbb6\
    179047ea0f0be9d19999a5eceefbb604c024b7ada144034200043ac3da08c608c0dedb8ab9fa5899c91ea921f51f6950\
    45a00336ff13d1df8181db79a76485d2a7ce89f9fedb439e68bcf2387bde2d74b46bbdc4ba2bca436337";
const EC_B: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420776794822d0ba9825bddd6f6\
    07d30ee9e6d9e4f9d484d6ce78f9a5c2d0509930a144034200048d1be2c573b005cf411125fc2cd2507394ff49353138\
    dd0075d276ef58e48c8d70dc2f091d27fb90707488ba7fda4648a29a28cff46f4dcc9b81bdbce19fafbf";
const RSA_A: &str = "308204a30201000282010100a67ed25244bda0af296fdfe45160be87341018e6030a342c899894a61711f2e64d0f09fd\
    51d3a35a73d04ea9a26b8e474a6e6825c053f2e9c9d46c945a3d98aa22e69c8f51e63ac248fe7ed1c1a2fb7fa0f56d8d\
    846f4d02066bace00acde694fa322b97ce2b53a1863c198d94feb77dc2fcb5ac9eba2d8571df69acd3ae89245c8a008e\
    5b141e399e73eeab5a3b43b660a4b06258fbda20f3409f3ffca7fcfab4d701f27b488ae09e9ea2036a386eb755246881\
    aef3f3a353fa1bfc9e3e1418e01207a6fa2a10899cb9963a0e419aa0cd0254f4cbcd71ad0c140f0551bf8362539bcadd\
    dd69bf2ba78d820d74647d5399c0a2131b3a6072ece4d9a767edc0fb0203010001028201004735aac2e0ffb1bff91b0e\
    495abce40073b606d029b0ad8bf6f5b96e2823d71dc50b8f9c36e92bcebe05f3fefda6bedda2ea01c553b3140c05f4c2\
    d3d89ccbb4c8e495457f23d731cd827bbf3ef0745cabfd0c74209671fb51bfafdacb043180ba59c6e750989b56545154\
    2487fb41839a67f753f33771ccc75d6497349a4bb0fe75c007f833a768506fe0b96c9d4d04b979223794812028001c6a\
    6de8592acbdde9d111d3207e0e4e0395ed537a636d46d06ec2c904e68b4b63c38a2194f2a7d3abbd261bf8fa02ae1b8b\
    bfaae648784ddd8e7956fb6bbd6950466e8b08dfee020829db807270b67b1004957eacff0fe5c4f56c64d73a48e79c5c\
    517bd878d102818100df53958cfbc92333f0eac315d810cd3b812eae93dd41c9ba5cf2a3e5e776b96667628b10f64cd3\
    4537b00cf2007e0e15c18acd1f2edc1403165aab40a2b163d8f1b0b03332fa97834bb9ef1efc130b01ba8aad559161de\
    2af4601d0eaa6bfc7826aa59a2338628f465078d3eeb58b69d8f1d192ec0e1cdbffd04230df4ce54d502818100bedab2\
    feaaae42b792c182bcf82895b2530ce81024bcab8b0690853d73dfd2b40f97248f071bbec74229c88d4ca6a44ac160ac\
    df6353b2fb50f9aaa83eb44e39fddfb7b2ad2a1ef51bce39d39ba29336e5b2c7784eda63ead22f5128be8793a36057ad\
    ce809ba991cea3678f23eb8ea039646ebda500cfed0639575c7521e68f02818065190d86792520ce8ead780b1778e3af\
    a05765a8826d19c947f27fc7bff4bb116493f3a88617593ce86cc62f77919906b84b0178b059e8a54d255689381d5dba\
    040f9c74510ba83343c0b4432e91e055b400bb5f15255cd1cd370570722dd868fbf7fa03b797704ad2c18c6b8356f1b4\
    79e90e515ff7d890a5158e58ef0dc8d1028181009ad6eff5712023fcaf51d3f1e01b7d27c9fd64a1044d15979b61d0d7\
    8495086b1162fc4415ee4a9f7a6c4fcb636ea748070f99f13ab2833925ff0897ab17b9878f12dc04583d1e1499d47c51\
    d3a8d86ae77c5e1c9b4ccf5789e2dda382c097e52a9ab7e61bad2eab9ecc2f8e9003e218d7b745a9129f5011eac4c6bd\
    ba4220bd02818005ac93eb0e32964d84782807b158ca78c3feff647186fc8d086a26201136919b8d13824b2a664dac12\
    028f2a937ed1f1d929241910d32fa640c600b94879c4b942737f6d626a97afdcdbc3829960d112f4c273cf1a46405915\
    dab11f038cc57b86eb69e6b99d402ebcb803e598824a818166b6c0b0284695534c357d5a04e4ed";

const ADMIN_KEY: &str = "kotae_admin_0123456789abcdef";
const BOT_KEY: &str = "kotae_bot_0123456789abcdef";
const HS_SECRET: &str = "a shared secret of at least thirty-two bytes";
const ISSUER: &str = "https://idp.example.com/";

struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig {
            allow_anonymous: false,
            api_keys: vec![
                ApiKey {
                    name: "ops".into(),
                    key: None,
                    key_sha256: Some(key_digest(ADMIN_KEY)),
                    groups: vec!["staff".into()],
                    role: Role::Admin,
                },
                ApiKey {
                    name: "bot".into(),
                    key: None,
                    key_sha256: Some(key_digest(BOT_KEY)),
                    groups: vec!["staff".into()],
                    role: Role::User,
                },
            ],
            ..Default::default()
        };
        edit(&mut cfg);
        let store = Store::open(&dir.path().join("kotae.sqlite3")).unwrap();
        let state = AppState::new(cfg, store).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            kotae_server::serve(st, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { addr, state, _dir: dir, stop: Some(tx) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Send `method path` with `auth` (a bearer credential) and extra headers; status and body.
    async fn call(&self, method: &str, path: &str, auth: Option<&str>, headers: &[(&str, &str)]) -> (u16, Value) {
        let c = reqwest::Client::new();
        let mut r = match method {
            "GET" => c.get(self.url(path)),
            "DELETE" => c.delete(self.url(path)),
            _ => c.post(self.url(path)).json(&body_for(path)),
        };
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A valid body for each POST route, so that only access decides the status.
fn body_for(path: &str) -> Value {
    match path {
        "/api/chat" => json!({ "message": "How do I reset my password?" }),
        "/api/search" => json!({ "query": "password reset" }),
        "/api/classify" => json!({ "text": "password reset" }),
        "/api/feedback" => json!({ "message_id": "m", "rating": "up" }),
        "/v1/chat/completions" => json!({ "messages": [{ "role": "user", "content": "hi" }] }),
        p if p.starts_with("/admin/api/quarantine/") => json!({ "status": "released" }),
        "/admin/api/keys" => json!({ "name": "k1", "groups": ["staff"] }),
        _ => json!({}),
    }
}

/// Every route behind the access layer.
const USER_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/chat"),
    ("POST", "/api/search"),
    ("POST", "/api/classify"),
    ("POST", "/api/feedback"),
    ("GET", "/api/conversations/c1"),
    ("GET", "/api/me"),
    ("GET", "/api/sources/0123456789abcdef"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
];
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/api/audit"),
    ("GET", "/admin/api/guard-events"),
    ("GET", "/admin/api/quarantine"),
    ("POST", "/admin/api/quarantine/1"),
    ("GET", "/admin/api/documents"),
    ("POST", "/admin/api/documents"),
    ("DELETE", "/admin/api/documents/a.md"),
    ("GET", "/admin/api/jobs"),
    ("GET", "/admin/api/jobs/j1"),
    ("POST", "/admin/api/jobs/j1/retry"),
    ("POST", "/admin/api/jobs/j1/cancel"),
    ("GET", "/admin/api/jobs/j1/events"),
    ("POST", "/admin/api/reindex"),
    ("GET", "/admin/api/keys"),
    ("POST", "/admin/api/keys"),
    ("DELETE", "/admin/api/keys/k1"),
    ("GET", "/admin/api/feedback"),
    ("GET", "/admin/api/eval"),
];

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, groups: &[&str]) -> Value {
    json!({ "sub": sub, "groups": groups, "iss": ISSUER, "aud": "kotae", "exp": now() + 600, "iat": now() })
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap())
        .unwrap()
}

fn der(hex_key: &str) -> Vec<u8> {
    hex::decode(hex_key).unwrap()
}

fn signed(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut j = Jwk::from_encoding_key(key, alg).unwrap();
    j.common.key_id = Some(kid.into());
    j
}

fn jwt_cfg() -> JwtConfig {
    JwtConfig {
        issuer: ISSUER.into(),
        audience: vec!["kotae".into()],
        hs256_secret: Some(HS_SECRET.into()),
        leeway_s: 30,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_route_refuses_missing_wrong_and_malformed_credentials() {
    // This test is about 401s: the failure limiter would lock 127.0.0.1 out.
    let s = Server::start(|c| c.auth_failures_per_minute = 10_000).await;
    for (m, p) in USER_ROUTES.iter().chain(ADMIN_ROUTES) {
        assert_eq!(s.call(m, p, None, &[]).await.0, 401, "{m} {p} without a credential");
        assert_eq!(s.call(m, p, Some("kotae_wrong_0123456789abcdef"), &[]).await.0, 401, "{m} {p} wrong key");
        // A JWT when the server takes none is an unknown key, not a way around it.
        let (st, _) = s.call(m, p, Some(&hs256(&claims("eve", &["admins"]), HS_SECRET)), &[]).await;
        assert_eq!(st, 401, "{m} {p} with an unexpected JWT");
    }
    // Not a bearer credential at all.
    let resp = reqwest::Client::new()
        .get(s.url("/api/me"))
        .header("Authorization", "Basic b3BzOnBhc3N3b3Jk")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Health, readiness, metrics and the API description stay open.
    for p in ["/healthz", "/openapi.json", "/metrics"] {
        assert_eq!(s.call("GET", p, None, &[]).await.0, 200, "{p}");
    }
    // Every route tried here is described, with its method.
    let (_, spec) = s.call("GET", "/openapi.json", None, &[]).await;
    for (m, p) in USER_ROUTES.iter().chain(ADMIN_ROUTES) {
        let templated = p
            .replace("/c1", "/{id}")
            .replace("/quarantine/1", "/quarantine/{id}")
            .replace("/documents/a.md", "/documents/{source}")
            .replace("/jobs/j1", "/jobs/{id}")
            .replace("/keys/k1", "/keys/{name}")
            .replace("/sources/0123456789abcdef", "/sources/{chunk_id}");
        assert!(spec["paths"][&templated][m.to_lowercase()].is_object(), "{m} {templated} missing from /openapi.json");
    }
}

#[tokio::test]
async fn roles_admin_routes_and_the_audit_trail() {
    // Every route once or twice: more than the default burst.
    let s = Server::start(|c| c.rate_limit_burst = 100).await;
    // A user key passes the access layer (503: no models in this test) but no admin route.
    for (m, p) in USER_ROUTES {
        let (st, body) = s.call(m, p, Some(BOT_KEY), &[]).await;
        assert!([200, 404, 503].contains(&st), "{m} {p} with a user key: {st} {body}");
    }
    for (m, p) in ADMIN_ROUTES {
        let (st, body) = s.call(m, p, Some(BOT_KEY), &[]).await;
        assert_eq!(st, 403, "{m} {p} with a user key: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (_, me) = s.call("GET", "/api/me", Some(BOT_KEY), &[]).await;
    assert_eq!(me, json!({ "id": "key:bot", "role": "user", "groups": ["staff"], "via": "api_key" }));

    // Two failed sign-ins; the audit shows them without the key that was tried.
    let tried = "kotae_guess_0123456789abcdef";
    assert_eq!(s.call("GET", "/api/me", Some(tried), &[]).await.0, 401);
    assert_eq!(s.call("POST", "/api/search", Some(tried), &[]).await.0, 401);
    let (st, audit) = s.call("GET", "/admin/api/audit", Some(ADMIN_KEY), &[]).await;
    assert_eq!(st, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let failed: Vec<&Value> = entries.iter().filter(|e| e["action"] == "authenticate").collect();
    assert_eq!(failed.len(), 2, "{audit}");
    assert!(failed.iter().all(|e| e["result"] == "denied" && e["actor"] == "ip:127.0.0.1"));
    assert_eq!(failed[0]["target"], "/api/search", "newest first");
    assert!(!audit.to_string().contains(tried), "the audit holds a tried key: {audit}");

    // An admin decision is audited with its actor.
    s.state.store.quarantine("feedback", "7", "some text", "abuse", "lexicon", Some("key:bot")).unwrap();
    let id = s.state.store.quarantined(None).unwrap()[0].id;
    let (st, _) = s.call("POST", &format!("/admin/api/quarantine/{id}"), Some(ADMIN_KEY), &[]).await;
    assert_eq!(st, 200);
    assert_eq!(s.state.store.quarantined(Some("released")).unwrap().len(), 1);
    let (_, audit) = s.call("GET", "/admin/api/audit?limit=1", Some(ADMIN_KEY), &[]).await;
    let e = &audit["entries"][0];
    assert_eq!(
        (e["actor"].as_str(), e["action"].as_str(), e["result"].as_str()),
        (Some("key:ops"), Some("quarantine.review"), Some("ok"))
    );
    let (st, _) = s.call("GET", "/admin/api/quarantine?status=bogus", Some(ADMIN_KEY), &[]).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn admins_make_and_revoke_api_keys_that_hold_at_once() {
    let s = Server::start(|c| c.auth_failures_per_minute = 10_000).await;
    let c = reqwest::Client::new();
    let make = |by: &str, body: Value| c.post(s.url("/admin/api/keys")).bearer_auth(by).json(&body).send();
    let revoke = |by: &str, name: &str| c.delete(s.url(&format!("/admin/api/keys/{name}"))).bearer_auth(by).send();

    // Only admins make keys; names are checked and unique, also against the config's.
    assert_eq!(make(BOT_KEY, json!({ "name": "report-bot" })).await.unwrap().status(), 403);
    assert_eq!(c.post(s.url("/admin/api/keys")).json(&json!({ "name": "x" })).send().await.unwrap().status(), 401);
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "a b" }),
        json!({ "name": "x", "role": "root" }),
        json!({ "name": "x", "extra": 1 }),
    ] {
        let r = make(ADMIN_KEY, bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = make(ADMIN_KEY, json!({ "name": "bot" })).await.unwrap();
    assert_eq!(r.status(), 409, "the config has a key named bot");

    // A new key works at once, with its groups and role.
    let r = make(ADMIN_KEY, json!({ "name": "report-bot", "groups": ["hr", "staff", "hr"] })).await.unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("kotae_") && key.len() > 40, "{made}");
    let (st, me) = s.call("GET", "/api/me", Some(&key), &[]).await;
    assert_eq!(st, 200);
    assert_eq!(me, json!({ "id": "key:report-bot", "role": "user", "groups": ["hr", "staff"], "via": "api_key" }));
    assert_eq!(s.call("GET", "/admin/api/audit", Some(&key), &[]).await.0, 403, "a user key");
    assert_eq!(make(ADMIN_KEY, json!({ "name": "report-bot" })).await.unwrap().status(), 409);
    let r = make(ADMIN_KEY, json!({ "name": "second-admin", "role": "admin" })).await.unwrap();
    let admin2 = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_string();
    assert_eq!(s.call("GET", "/admin/api/audit", Some(&admin2), &[]).await.0, 200, "an admin key made here");

    // The list shows both kinds of keys, never a key or its digest.
    let (st, list) = s.call("GET", "/admin/api/keys", Some(ADMIN_KEY), &[]).await;
    assert_eq!(st, 200);
    let names: Vec<(&str, &str)> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["source"].as_str().unwrap()))
        .collect();
    for want in [("ops", "config"), ("bot", "config"), ("report-bot", "admin"), ("second-admin", "admin")] {
        assert!(names.contains(&want), "{want:?} in {names:?}");
    }
    let text = list.to_string();
    assert!(!text.contains(&key) && !text.contains(&key_digest(&key)), "{text}");

    // Revoked: refused from the next request on; the name is never given again.
    assert_eq!(revoke(BOT_KEY, "report-bot").await.unwrap().status(), 403);
    assert_eq!(revoke(&admin2, "report-bot").await.unwrap().status(), 200);
    assert_eq!(s.call("GET", "/api/me", Some(&key), &[]).await.0, 401);
    assert_eq!(s.call("POST", "/api/search", Some(&key), &[]).await.0, 401);
    assert_eq!(revoke(ADMIN_KEY, "report-bot").await.unwrap().status(), 409, "already revoked");
    assert_eq!(revoke(ADMIN_KEY, "nobody").await.unwrap().status(), 404);
    assert_eq!(revoke(ADMIN_KEY, "bot").await.unwrap().status(), 409, "config keys live in the file");
    assert_eq!(make(ADMIN_KEY, json!({ "name": "report-bot" })).await.unwrap().status(), 409);
    // An admin may revoke the key they use; it stops at once too.
    assert_eq!(revoke(&admin2, "second-admin").await.unwrap().status(), 200);
    assert_eq!(s.call("GET", "/admin/api/audit", Some(&admin2), &[]).await.0, 401);

    let (_, audit) = s.call("GET", "/admin/api/audit?limit=1000", Some(ADMIN_KEY), &[]).await;
    let rows = audit["entries"].as_array().unwrap();
    let did = |action: &str, target: &str, result: &str| {
        rows.iter().any(|e| e["action"] == action && e["target"] == target && e["result"] == result)
    };
    assert!(did("keys.create", "key:report-bot", "ok") && did("keys.revoke", "key:report-bot", "ok"), "{audit}");
    assert!(did("keys.create", "key:report-bot", "denied") && did("keys.revoke", "key:second-admin", "ok"));
    assert!(rows.iter().any(|e| e["action"] == "authenticate" && e["result"] == "denied"), "the revoked key's tries");
    assert!(!audit.to_string().contains(&key), "no key in the audit");
}

#[tokio::test]
async fn repeated_failures_lock_the_address_out_even_with_a_good_key() {
    let s = Server::start(|c| c.auth_failures_per_minute = 3).await;
    for _ in 0..3 {
        assert_eq!(s.call("GET", "/api/me", Some("kotae_guess_0123456789abcdef"), &[]).await.0, 401);
    }
    let (st, body) = s.call("GET", "/api/me", Some(BOT_KEY), &[]).await;
    assert_eq!(st, 429, "{body}");
    let resp = reqwest::Client::new().get(s.url("/api/me")).bearer_auth(BOT_KEY).send().await.unwrap();
    let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
}

#[tokio::test]
async fn conversations_and_feedback_belong_to_their_owner() {
    let s = Server::start(|_| {}).await;
    let conv = s.state.store.create_conversation("key:ops").unwrap();
    s.state.store.add_message(&conv, "user", "VPN?", None).unwrap();
    let answer = s
        .state
        .store
        .add_message(&conv, "assistant", "Restart it [1].", Some(&json!({ "kind": "generated" })))
        .unwrap();
    let c = reqwest::Client::new();
    // The owner sees it; another key gets the same 404 as for a conversation that does not exist.
    let (st, body) = s.call("GET", &format!("/api/conversations/{conv}"), Some(ADMIN_KEY), &[]).await;
    assert_eq!((st, body["messages"].as_array().map(Vec::len)), (200, Some(2)));
    let (st, other) = s.call("GET", &format!("/api/conversations/{conv}"), Some(BOT_KEY), &[]).await;
    let (_, missing) = s.call("GET", "/api/conversations/nope", Some(BOT_KEY), &[]).await;
    assert_eq!(st, 404);
    assert_eq!(other["error"]["code"], missing["error"]["code"]);
    // Continuing someone else's conversation.
    let r = c
        .post(s.url("/api/chat"))
        .bearer_auth(BOT_KEY)
        .json(&json!({ "message": "and then?", "conversation_id": conv }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Voting on someone else's answer, and voting many times on one's own.
    let vote = |key: &'static str, rating: &'static str| {
        let c = c.clone();
        let url = s.url("/api/feedback");
        let answer = answer.clone();
        async move {
            c.post(url)
                .bearer_auth(key)
                .json(&json!({ "message_id": answer, "rating": rating }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(vote(BOT_KEY, "down").await, 404);
    for _ in 0..5 {
        assert_eq!(vote(ADMIN_KEY, "down").await, 201);
    }
    assert_eq!(vote(ADMIN_KEY, "up").await, 201);
    assert_eq!(s.state.store.feedback_counts().unwrap(), (1, 0), "one vote per client and answer; the last counts");
}

#[tokio::test]
async fn jwt_bearer_tokens_are_verified_in_full() {
    let s = Server::start(|c| {
        c.jwt = Some(jwt_cfg());
        c.admin_groups = vec!["kotae-admins".into()];
        c.auth_failures_per_minute = 1000;
    })
    .await;
    let me = |token: String| {
        let s = &s;
        async move { s.call("GET", "/api/me", Some(&token), &[]).await }
    };
    let (st, body) = me(hs256(&claims("alice", &["staff", "hr"]), HS_SECRET)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({ "id": "user:alice", "role": "user", "groups": ["staff", "hr"], "via": "jwt" }));
    let (_, body) = me(hs256(&claims("carol", &["kotae-admins"]), HS_SECRET)).await;
    assert_eq!(body["role"], "admin");
    let (st, _) =
        s.call("GET", "/admin/api/audit", Some(&hs256(&claims("carol", &["kotae-admins"]), HS_SECRET)), &[]).await;
    assert_eq!(st, 200);

    let mut refused: Vec<(&str, String)> = Vec::new();
    refused
        .push(("wrong signature", hs256(&claims("alice", &["staff"]), "another secret that is long enough, really")));
    let mut c = claims("alice", &["staff"]);
    c["iss"] = json!("https://evil.example.com/");
    refused.push(("wrong issuer", hs256(&c, HS_SECRET)));
    let mut c = claims("alice", &["staff"]);
    c["aud"] = json!("another-app");
    refused.push(("wrong audience", hs256(&c, HS_SECRET)));
    let mut c = claims("alice", &["staff"]);
    c["exp"] = json!(now() - 120);
    refused.push(("expired beyond the leeway", hs256(&c, HS_SECRET)));
    let mut c = claims("alice", &["staff"]);
    c["nbf"] = json!(now() + 600);
    refused.push(("not yet valid", hs256(&c, HS_SECRET)));
    let mut c = claims("alice", &["staff"]);
    c.as_object_mut().unwrap().remove("exp");
    refused.push(("no expiry", hs256(&c, HS_SECRET)));
    let mut c = claims("alice", &["staff"]);
    c.as_object_mut().unwrap().remove("sub");
    refused.push(("no subject", hs256(&c, HS_SECRET)));
    // alg "none", and a token re-signed with HS512 under the same secret.
    let payload = hs256(&claims("mallory", &["kotae-admins"]), HS_SECRET);
    let parts: Vec<&str> = payload.split('.').collect();
    refused.push(("alg none", format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1])));
    refused.push((
        "HS512",
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims("mallory", &["kotae-admins"]),
            &EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
        )
        .unwrap(),
    ));
    // The claims of a good token with the signature of another one.
    let other = hs256(&claims("bob", &[]), HS_SECRET);
    refused.push(("spliced", format!("{}.{}.{}", parts[0], parts[1], other.split('.').nth(2).unwrap())));
    // RS256 with no JWKS configured.
    refused.push((
        "RS256 without a JWKS",
        signed(Algorithm::RS256, &EncodingKey::from_rsa_der(&der(RSA_A)), "r", &claims("alice", &[])),
    ));
    for (why, token) in &refused {
        let (st, body) = me(token.clone()).await;
        assert_eq!(st, 401, "{why}: {body}");
    }
    // Within the leeway an expired token still passes (clock skew).
    let mut c = claims("alice", &["staff"]);
    c["exp"] = json!(now() - 5);
    assert_eq!(me(hs256(&c, HS_SECRET)).await.0, 200);
    let failures = s.state.store.audit_entries(1000, None).unwrap();
    assert_eq!(failures.len(), refused.len(), "every refusal is audited");
}

#[tokio::test]
async fn keys_from_the_providers_jwks_and_their_rotation() {
    // The identity provider: a JWKS endpoint whose keys the test rotates.
    let ec_a = EncodingKey::from_ec_der(&der(EC_A));
    let ec_b = EncodingKey::from_ec_der(&der(EC_B));
    let rsa = EncodingKey::from_rsa_der(&der(RSA_A));
    let jwks = Arc::new(Mutex::new(JwkSet {
        keys: vec![public_jwk(&ec_a, Algorithm::ES256, "a"), public_jwk(&rsa, Algorithm::RS256, "r")],
    }));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (j, f) = (jwks.clone(), fetches.clone());
    let idp = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (j, f) = (j.clone(), f.clone());
            async move {
                f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(serde_json::to_value(&*j.lock().unwrap()).unwrap())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, idp).await.unwrap() });

    let s = Server::start(|c| {
        c.jwt = Some(JwtConfig {
            hs256_secret: None,
            jwks_url: Some(format!("http://{idp_addr}/jwks.json")),
            jwks_refetch_min_s: 0,
            ..jwt_cfg()
        });
        c.auth_failures_per_minute = 1000;
    })
    .await;
    let me = |token: String| {
        let s = &s;
        async move { s.call("GET", "/api/me", Some(&token), &[]).await.0 }
    };
    assert_eq!(me(signed(Algorithm::ES256, &ec_a, "a", &claims("alice", &[]))).await, 200);
    assert_eq!(me(signed(Algorithm::RS256, &rsa, "r", &claims("alice", &[]))).await, 200);
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "the JWKS is cached");
    // A key the provider never published.
    assert_eq!(me(signed(Algorithm::ES256, &ec_b, "b", &claims("alice", &[]))).await, 401);
    // A known kid with another key's signature.
    assert_eq!(me(signed(Algorithm::ES256, &ec_b, "a", &claims("alice", &[]))).await, 401);
    // An HS256 token "signed" with a public key (algorithm confusion) when no secret is set.
    let n = serde_json::to_value(public_jwk(&rsa, Algorithm::RS256, "r")).unwrap()["n"].as_str().unwrap().to_string();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory", &[]),
        &EncodingKey::from_secret(n.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(me(confused).await, 401);

    // The provider rotates: b replaces a. Tokens signed with b pass at once, a's stop passing.
    jwks.lock().unwrap().keys = vec![public_jwk(&ec_b, Algorithm::ES256, "b")];
    assert_eq!(me(signed(Algorithm::ES256, &ec_b, "b", &claims("alice", &[]))).await, 200);
    assert_eq!(me(signed(Algorithm::ES256, &ec_a, "a", &claims("alice", &[]))).await, 401);
}

#[tokio::test]
async fn identity_headers_and_forwarded_addresses_count_only_from_the_trusted_proxy() {
    let sso_headers: &[(&str, &str)] = &[("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "staff, kotae-admins")];
    // The proxy is this test's own address: its headers are believed.
    let s = Server::start(|c| {
        c.sso = Some(SsoConfig::default());
        c.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.admin_groups = vec!["kotae-admins".into()];
    })
    .await;
    let (st, me) = s.call("GET", "/api/me", None, sso_headers).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me, json!({ "id": "user:alice", "role": "admin", "groups": ["staff", "kotae-admins"], "via": "sso" }));
    drop(s);
    let s = Server::start(|c| {
        c.allow_anonymous = true;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let xff = &[("X-Forwarded-For", "198.51.100.7, 127.0.0.1")];
    assert_eq!(s.call("GET", "/api/me", None, xff).await.1["id"], "ip:198.51.100.7");
    drop(s);

    // Anyone else sending them: ignored (anonymous when allowed, 401 otherwise), never believed.
    for anonymous in [false, true] {
        let s = Server::start(|c| {
            c.sso = Some(SsoConfig::default());
            c.trusted_proxies = vec!["10.0.0.0/8".into()];
            c.admin_groups = vec!["kotae-admins".into()];
            c.allow_anonymous = anonymous;
        })
        .await;
        let (st, me) = s.call("GET", "/api/me", None, sso_headers).await;
        if anonymous {
            assert_eq!((st, me["id"].as_str(), me["role"].as_str()), (200, Some("ip:127.0.0.1"), Some("user")));
            let (st, _) = s.call("GET", "/admin/api/audit", None, sso_headers).await;
            assert_eq!(st, 401);
            let (_, me) = s.call("GET", "/api/me", None, &[("X-Forwarded-For", "198.51.100.7")]).await;
            assert_eq!(me["id"], "ip:127.0.0.1", "a forwarded address from a stranger is ignored");
        } else {
            assert_eq!(st, 401, "{me}");
        }
    }
}

#[test]
fn the_settings_fail_closed() {
    let bad = |edit: &dyn Fn(&mut ServerConfig)| {
        let mut c = ServerConfig::default();
        edit(&mut c);
        let dir = tempfile::tempdir().unwrap();
        AppState::new(c, Store::open(&dir.path().join("s.sqlite3")).unwrap()).err().unwrap()
    };
    assert!(bad(&|c| c.sso = Some(SsoConfig::default())).contains("trusted_proxies"));
    assert!(bad(&|c| c.jwt = Some(JwtConfig { issuer: String::new(), ..jwt_cfg() })).contains("issuer"));
    assert!(bad(&|c| c.jwt = Some(JwtConfig { audience: vec![], ..jwt_cfg() })).contains("audience"));
    assert!(bad(&|c| c.jwt = Some(JwtConfig { hs256_secret: Some("short".into()), ..jwt_cfg() })).contains("32 bytes"));
    assert!(bad(&|c| c.jwt = Some(JwtConfig { hs256_secret: None, ..jwt_cfg() })).contains("jwks_url"));
    assert!(bad(&|c| {
        c.api_keys = vec![ApiKey {
            name: "x".into(),
            key: Some("short".into()),
            key_sha256: None,
            groups: vec![],
            role: Role::User,
        }]
    })
    .contains("16 characters"));
    // The widget's origins: bare origins only, never a wildcard with credentials.
    assert!(bad(&|c| c.cors_origins = vec!["*".into()]).contains("not allowed"));
    assert!(bad(&|c| c.cors_origins = vec!["https://intranet.example/portal".into()]).contains("not an origin"));
}

#[test]
fn jobs_cut_short_by_a_crash_are_failed_at_the_next_start_and_can_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kotae.sqlite3");
    let (running, done) = {
        let store = Store::open(&path).unwrap();
        let running =
            store.create_job("ingest", "key:ops", &json!({ "files": ["a.md"], "groups": ["staff"] })).unwrap();
        store.set_job(&running, "running", None).unwrap();
        let done = store.create_job("ingest", "key:ops", &json!({ "files": ["b.md"], "groups": ["staff"] })).unwrap();
        store.set_job(&done, "done", Some(&json!({ "files_ingested": 1 }))).unwrap();
        (running, done)
        // The process dies here (no shutdown ran).
    };
    let state = AppState::new(ServerConfig::default(), Store::open(&path).unwrap()).unwrap();
    let j = state.store.job(&running).unwrap().unwrap();
    assert_eq!(j["status"], "failed");
    assert!(j["report"]["error"].as_str().unwrap().contains("interrupted"), "{j}");
    assert!(j["finished_unix"].is_i64());
    assert_eq!(state.store.job(&done).unwrap().unwrap()["status"], "done", "finished jobs stay as they were");
    assert_eq!(state.store.jobs(10).unwrap().len(), 2);
}

#[tokio::test]
async fn pages_cors_and_cross_site_requests() {
    let intranet = "https://intranet.example";
    let s = Server::start(|c| {
        c.cors_origins = vec![intranet.into()];
        c.sso = Some(SsoConfig::default());
        c.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.admin_groups = vec!["kotae-admins".into()];
    })
    .await;
    let c = reqwest::Client::new();
    // The pages need no credential (they hold no data) and come with their headers.
    let w = c.get(s.url("/widget.js")).send().await.unwrap();
    assert_eq!(w.status(), 200);
    assert_eq!(w.headers()["content-type"], "application/javascript; charset=utf-8");
    assert_eq!(w.headers()["cross-origin-resource-policy"], "cross-origin");
    let tag = w.headers()["etag"].to_str().unwrap().to_string();
    let again = c.get(s.url("/widget.js")).header("If-None-Match", &tag).send().await.unwrap();
    assert_eq!(again.status(), 304, "a reload costs a 304");
    for p in ["/admin", "/chat"] {
        let r = c.get(s.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{p}: {csp}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
    }
    assert_eq!(c.get(s.url("/admin/app.js")).send().await.unwrap().status(), 200);

    // CORS: the intranet may call the API with credentials; other sites get no grant.
    for (origin, granted) in
        [(intranet, true), ("https://evil.example", false), ("https://intranet.example.evil.example", false)]
    {
        let pre = c
            .request(reqwest::Method::OPTIONS, s.url("/api/chat"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
            .await
            .unwrap();
        let acao = pre.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(acao.as_deref() == Some(origin), granted, "preflight from {origin}: {acao:?}");
        if granted {
            assert_eq!(pre.headers()["access-control-allow-credentials"], "true");
        }
        let r = c.get(s.url("/api/me")).bearer_auth(BOT_KEY).header("Origin", origin).send().await.unwrap();
        assert_eq!(r.headers().get("access-control-allow-origin").is_some(), granted, "GET from {origin}");
    }

    // Proxy sign-in rides along with every browser request, so a change through it must
    // come from Kotae's own pages or an allowed origin (CSRF); reads and bearer credentials
    // (which a page on another site cannot send) are not held to it.
    let sso: &[(&str, &str)] = &[("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "kotae-admins")];
    s.state.store.quarantine("feedback", "7", "some text", "abuse", "lexicon", Some("key:bot")).unwrap();
    let id = s.state.store.quarantined(None).unwrap()[0].id;
    let path = format!("/admin/api/quarantine/{id}");
    let with = |extra: &[(&'static str, &'static str)]| [sso, extra].concat();
    for (headers, want) in [
        (with(&[("Origin", "https://evil.example")]), 403),
        (with(&[]), 403),
        (with(&[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")]), 403),
        (with(&[("Origin", "https://intranet.example")]), 200),
        (with(&[("Sec-Fetch-Site", "same-origin")]), 200),
    ] {
        let (st, body) = s.call("POST", &path, None, &headers).await;
        assert_eq!(st, want, "{headers:?}: {body}");
        if want == 403 {
            assert!(body["error"]["message"].as_str().unwrap().contains("cross-site"), "{body}");
        }
    }
    let own = format!("http://{}", s.addr);
    let (st, _) = s.call("POST", &path, None, &with(&[("Origin", Box::leak(own.into_boxed_str()))])).await;
    assert_eq!(st, 200, "Kotae's own pages (Origin = its host)");
    let (st, _) = s.call("GET", "/admin/api/quarantine", None, &with(&[("Origin", "https://evil.example")])).await;
    assert_eq!(st, 200, "a read is not a change");
    let (st, _) = s.call("POST", &path, Some(ADMIN_KEY), &[("Origin", "https://evil.example")]).await;
    assert_eq!(st, 200, "a bearer credential is not ambient");
}

#[tokio::test]
async fn the_feedback_review_queue_shows_question_answer_sources_and_comment() {
    let s = Server::start(|_| {}).await;
    let st = &s.state.store;
    let conv = st.create_conversation("key:bot").unwrap();
    st.add_message(&conv, "user", "How many days of leave do I get?", None).unwrap();
    let answer = json!({ "text": "Ten days [1].", "kind": "generated", "citations": [{ "n": 1, "source": "leave.md", "section": "Annual leave" }] });
    let m = st.add_message(&conv, "assistant", "Ten days [1].", Some(&answer)).unwrap();
    st.add_message(&conv, "user", "And sick leave?", None).unwrap();
    let m2 = st.add_message(&conv, "assistant", "Five days.", None).unwrap();
    assert!(st.add_feedback(&m, "down", Some("It is 20 days"), "key:bot").unwrap().is_some());
    assert!(st.add_feedback(&m2, "up", None, "key:bot").unwrap().is_some());
    let (code, v) = s.call("GET", "/admin/api/feedback?rating=down", Some(ADMIN_KEY), &[]).await;
    assert_eq!(code, 200, "{v}");
    let items = v["feedback"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let f = &items[0];
    assert_eq!(f["question"], "How many days of leave do I get?");
    assert_eq!(f["answer"], "Ten days [1].");
    assert_eq!(f["comment"], "It is 20 days");
    assert_eq!(f["citations"][0]["source"], "leave.md");
    let (_, all) = s.call("GET", "/admin/api/feedback", Some(ADMIN_KEY), &[]).await;
    assert_eq!(all["feedback"].as_array().unwrap().len(), 2);
    assert_eq!(all["feedback"][0]["question"], "And sick leave?", "newest first, each with its own question");
    assert_eq!(s.call("GET", "/admin/api/feedback?rating=meh", Some(ADMIN_KEY), &[]).await.0, 400);
    assert_eq!(s.call("GET", "/admin/api/eval", Some(ADMIN_KEY), &[]).await.0, 404, "no report yet");
}
