//! The chat widget and the admin console in a real browser: Debian's headless Chromium
//! driven through chromedriver (both installed by scripts/test.sh), against a real server
//! with the real models. The widget is embedded in a host page on another origin whose CSS
//! is hostile; keys and IME composition are real input events (DevTools protocol).
//! Screenshots go to `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kotae_models::Embedder;
use serde_json::{json, Value};
use sha2::Digest as _;

use super::serve::{client, hashed_key, Server};
use super::{config, embedder, fresh_data_dir, ingest, test_data, workspace};

/// A W3C WebDriver session on chromedriver, spoken in plain JSON over HTTP.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: std::process::Child,
}

impl Browser {
    async fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver_bin = std::env::var("KOTAE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = std::process::Command::new(&driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {driver_bin} (scripts/test.sh installs chromium-driver): {e}"));
        let http = client();
        let base = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary = std::env::var("KOTAE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--lang=ja", format!("--window-size={width},{height}")],
                "prefs": { "intl.accept_languages": "ja" },
            }
        }}});
        let v: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {v}"));
        Browser { http, session: format!("{base}/session/{session}"), driver }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let v: Value = self
            .http
            .request(method, format!("{}{path}", self.session))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["value"].get("error").is_some() {
            panic!("webdriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    /// Answer the page's `prompt()` as a person would: wait for the dialog, type `text`,
    /// press OK. Returns the dialog's question.
    async fn answer_prompt(&self, text: &str) -> String {
        let t = Instant::now();
        let asked = loop {
            let v: Value =
                self.http.get(format!("{}/alert/text", self.session)).send().await.unwrap().json().await.unwrap();
            if v["value"].get("error").is_none() {
                break v["value"].as_str().unwrap_or_default().to_string();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no dialog opened: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.cmd(reqwest::Method::POST, "/alert/text", json!({ "text": text })).await;
        self.cmd(reqwest::Method::POST, "/alert/accept", json!({})).await;
        asked
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Run `body` (a function body; `arguments` are `args`) in the page and return its value.
    async fn js(&self, body: &str, args: Value) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", json!({ "script": body, "args": args })).await
    }

    /// Check what is on screen with axe-core (Deque's accessibility engine, from npm; installed
    /// by scripts/test.sh) against WCAG 2.1 A and AA; `context` is an axe context (a CSS
    /// selector or `document`; shadow roots are included). Returns the violations, one line each.
    async fn accessibility_violations(&self, context: &str) -> Vec<String> {
        let axe = test_data().join("npm/node_modules/axe-core/axe.min.js");
        let src = std::fs::read_to_string(&axe)
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/test.sh installs axe-core)", axe.display()));
        self.js(&format!("if (!window.axe) {{ {src}\n }} return true;"), json!([])).await;
        let script = format!(
            "const done = arguments[arguments.length - 1];
             axe.run({context}, {{ runOnly: {{ type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }} }})
               .then(r => done(r.violations.map(v => v.impact + ' ' + v.id + ': ' + v.help + ' @ ' +
                 v.nodes.slice(0, 3).map(n => JSON.stringify(n.target) + ' ' + (n.failureSummary || '').replace(/\\s+/g, ' ')).join(' | '))))
               .catch(e => done(['axe failed: ' + e]));"
        );
        let v = self.cmd(reqwest::Method::POST, "/execute/async", json!({ "script": script, "args": [] })).await;
        v.as_array()
            .unwrap_or_else(|| panic!("axe: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Poll `expr` until it is truthy; return its value.
    async fn wait(&self, what: &str, expr: &str, limit_s: u64) -> Value {
        let t = Instant::now();
        loop {
            let v = self.js(&format!("try {{ return ({expr}); }} catch (e) {{ return null; }}"), json!([])).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(limit_s), "waited {limit_s} s for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A DevTools protocol command (real input events, IME composition).
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd(reqwest::Method::POST, "/goog/cdp/execute", json!({ "cmd": cmd, "params": params })).await
    }

    /// Press a key as the keyboard would (keyDown with its text, then keyUp).
    async fn press(&self, key: &str, code: &str, vk: u32, text: Option<&str>, modifiers: u32) {
        let mut down =
            json!({ "type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": modifiers });
        if let Some(t) = text {
            down["text"] = json!(t);
            down["unmodifiedText"] = json!(t);
        }
        self.cdp("Input.dispatchKeyEvent", down).await;
        self.cdp(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": modifiers }),
        )
        .await;
    }

    async fn enter(&self) {
        self.press("Enter", "Enter", 13, Some("\r"), 0).await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 768 }),
        )
        .await;
    }

    /// A PNG of the viewport, checked and written to `target/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let dir = workspace().join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &bytes).unwrap();
        assert!(bytes.len() > 10_000, "{name}: the screenshot looks blank ({} bytes)", bytes.len());
        path
    }

    async fn upload_file(&self, css: &str, file: &Path) {
        let e = self.cmd(reqwest::Method::POST, "/element", json!({ "using": "css selector", "value": css })).await;
        let id = e.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
        self.cmd(reqwest::Method::POST, &format!("/element/{id}/value"), json!({ "text": file.display().to_string() }))
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The intranet page that embeds the widget: another origin, CSS that unsets everything and
/// a banner that claims the highest z-index exactly where the launcher sits.
fn host_page(kotae: &str, lang: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Intranet</title>
<style>
  * {{ all: unset; }}
  head, style, script, title {{ display: none; }}
  html, body {{ display: block; font-family: serif; }}
  .war {{ display: block; position: fixed; right: 0; bottom: 0; width: 60vw; height: 45vh; z-index: 2147483647; background: rgba(200, 30, 30, .35); }}
  button, a {{ display: inline-block; padding: 4px; }}
</style></head>
<body><h1>Intranet portal</h1><a href="/elsewhere">News</a> <button id="host-button">Host button</button>
<div class="war">z-index 2147483647 banner</div>
<script src="{kotae}/widget.js" data-token-url="/token" data-lang="{lang}"></script>
</body></html>"#
    )
}

const SECRET: &str = "browser-test-hs256-secret-0123456789abcdef";

/// The host's token endpoint: a short-lived token for the signed-in employee.
fn token() -> String {
    id_token("hanako", &["staff"])
}

fn id_token(sub: &str, groups: &[&str]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims =
        json!({ "iss": "intranet", "aud": "kotae", "sub": sub, "groups": groups, "exp": now + 300, "iat": now });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The intranet site on `listener`: the page (`?lang=`) and its token endpoint, and the
/// company's identity provider (authorization code with PKCE: it signs in "yuki", an admin).
fn serve_host(listener: tokio::net::TcpListener, kotae: String) {
    use axum::extract::Query;
    use axum::response::{Html, IntoResponse};
    type Codes = Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;
    let codes: Codes = Default::default();
    let (c1, c2, origin) = (codes.clone(), codes, kotae.clone());
    let authorize = move |Query(q): Query<std::collections::HashMap<String, String>>| {
        let code = format!("code-{}", c1.lock().unwrap().len());
        c1.lock().unwrap().insert(code.clone(), q["code_challenge"].clone());
        let to = format!("{}?code={code}&state={}", q["redirect_uri"], q["state"]);
        async move { axum::response::Redirect::to(&to) }
    };
    let token_endpoint = move |body: String| {
        let f: std::collections::HashMap<&str, &str> = body.split('&').filter_map(|kv| kv.split_once('=')).collect();
        let challenge = c2.lock().unwrap().remove(f.get("code").copied().unwrap_or_default());
        let verifier = f.get("code_verifier").copied().unwrap_or_default();
        let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let cors = [("access-control-allow-origin", origin.clone())];
        async move {
            if challenge.as_deref() != Some(digest.as_str()) {
                return (axum::http::StatusCode::BAD_REQUEST, cors, axum::Json(json!({ "error": "invalid_grant" })))
                    .into_response();
            }
            (
                cors,
                axum::Json(json!({ "id_token": id_token("yuki", &["kotae-admins", "staff"]), "token_type": "Bearer" })),
            )
                .into_response()
        }
    };
    let app = axum::Router::new()
        .route("/authorize", axum::routing::get(authorize))
        .route("/oauth/token", axum::routing::post(token_endpoint))
        .route(
            "/",
            axum::routing::get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
                let page = host_page(&kotae, q.get("lang").map(String::as_str).unwrap_or("ja"));
                async move { Html(page) }
            }),
        )
        .route("/token", axum::routing::get(|| async { axum::Json(json!({ "token": token() })) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// Inside the widget's shadow root.
const W: &str = "document.querySelector('kotae-chat').shadowRoot";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_and_the_admin_console_work_in_a_real_browser() {
    // A knowledge base of the test's own (the console uploads into it).
    let data = fresh_data_dir();
    let mut cfg = config(data.path());
    // The manuals' pages on the intranet: the source viewer links to the original.
    cfg.ingest.links = vec![kotae_index::LinkRule {
        prefix: String::new(),
        url: "https://intranet.example.com/manuals/{stem}".into(),
    }];
    let corpus = tempfile::tempdir().unwrap();
    for f in ["manuals/ga/meeting-rooms.en.md", "manuals/hr/leave.ja.html", "manuals/it/password-reset.ja.md"] {
        let to = corpus.path().join(Path::new(f).file_name().unwrap());
        std::fs::copy(workspace().join("knowledge").join(f), to).unwrap();
    }
    let mut index = kotae::open_index(&cfg, Some(embedder().dim())).unwrap();
    ingest(&cfg, &mut index, &[corpus.path()], &["staff"], false);
    let state = tempfile::tempdir().unwrap();
    let (admin, user) = ("kotae_admin_browser_0123", "kotae_staff_browser_0123");
    let key = hashed_key;
    let keys = vec![
        key("ops", admin, kotae_server::Role::Admin, &["staff"]),
        key("emp", user, kotae_server::Role::User, &["staff"]),
    ];
    // The host page's origin is known once it listens; it serves once Kotae's address is known.
    let host_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_origin = format!("http://{}", host_listener.local_addr().unwrap());
    let origin = host_origin.clone();
    let s = Server::start_with(state.path(), Arc::new(index), |c| {
        c.server.api_keys = keys.clone();
        c.server.allow_anonymous = false;
        c.server.rate_limit_burst = 100_000;
        c.server.rate_limit_per_minute = 100_000;
        c.server.cors_origins = vec![origin.clone()];
        c.server.admin_groups = vec!["kotae-admins".into()];
        c.server.jwt = Some(kotae_server::JwtConfig {
            issuer: "intranet".into(),
            audience: vec!["kotae".into()],
            hs256_secret: Some(SECRET.into()),
            authorize_url: Some(format!("{origin}/authorize")),
            token_url: Some(format!("{origin}/oauth/token")),
            client_id: Some("kotae".into()),
            ..Default::default()
        });
    })
    .await;
    serve_host(host_listener, s.base.clone());
    let host = host_origin.clone();

    // CORS: the host's origin may call the API, another site may not.
    let c = client();
    // What the staff employee finds.
    let search = |q: &'static str, top_k: usize| {
        let r = c.post(s.url("/api/search")).bearer_auth(user).json(&json!({ "query": q, "top_k": top_k }));
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for (o, allowed) in [(host.as_str(), true), ("http://evil.example", false)] {
        let r = c
            .request(reqwest::Method::OPTIONS, s.url("/api/chat"))
            .header("Origin", o)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
            .await
            .unwrap();
        let acao = r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(acao.as_deref() == Some(o), allowed, "preflight from {o}: {acao:?}");
    }

    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{host}/?lang=ja")).await;
    b.wait("the widget", &format!("{W}.querySelector('.launch button')"), 20).await;

    // The launcher is on top of the host's z-index banner, and the host's `all: unset` does
    // not reach inside.
    let on_top = b
        .js(
            &format!(
                "const r = {W}.querySelector('.launch button').getBoundingClientRect();
                 return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === document.querySelector('kotae-chat');"
            ),
            json!([]),
        )
        .await;
    assert_eq!(on_top, json!(true), "the launcher is covered by the host page");

    // Keyboard only: Tab reaches the launcher, Enter opens the panel with the focus in the
    // question box.
    let mut reached = false;
    for _ in 0..8 {
        b.press("Tab", "Tab", 9, None, 0).await;
        let focused =
            b.js(&format!("return {W}.activeElement === {W}.querySelector('.launch button');"), json!([])).await;
        if focused == json!(true) {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the launcher");
    b.enter().await;
    b.wait(
        "the panel to open with focus in the question box",
        &format!("{W}.activeElement === {W}.querySelector('textarea')"),
        10,
    )
    .await;
    let style = b
        .js(
            &format!(
                "const p = {W}.querySelector('.panel'), t = {W}.querySelector('textarea');
                 return [getComputedStyle(p).backgroundColor, getComputedStyle(t).fontSize, p.matches(':popover-open')];"
            ),
            json!([]),
        )
        .await;
    assert_eq!(style, json!(["rgb(255, 255, 255)", "15px", true]), "the host's CSS leaked into the widget");

    // Japanese input: Enter while an IME composition is open confirms it and must not send.
    b.js(
        &format!(
            // Records arrive in order: text shown in the answer before it stops being busy
            // was streamed.
            "window.__streamed = 0; window.__ended = false;
             new MutationObserver((ms) => {{ for (const m of ms) {{
               const box = (m.target.nodeType === 1 ? m.target : m.target.parentElement).closest('.msg.bot:not(.welcome)');
               if (!box || window.__ended) continue;
               if (m.type === 'attributes') window.__ended = true; else window.__streamed++;
             }} }}).observe({W}.querySelector('.log'), {{ subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['aria-busy'] }});"
        ),
        json!([]),
    )
    .await;
    b.cdp("Input.imeSetComposition", json!({ "text": "ゆうきゅう", "selectionStart": 5, "selectionEnd": 5 })).await;
    b.press("Enter", "Enter", 229, None, 0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sent = b.js(&format!("return {W}.querySelectorAll('.msg.user').length;"), json!([])).await;
    assert_eq!(sent, json!(0), "Enter during IME composition sent the question");
    let question = "有給休暇は何日もらえますか";
    b.cdp("Input.insertText", json!({ "text": question })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let typed = b.js(&format!("return {W}.querySelector('textarea').value;"), json!([])).await;
    assert_eq!(typed, json!(question), "the composition was committed");
    // Safari's order: its keydown for the Enter that commits a composition comes just after
    // compositionend, as a plain Enter (keyCode 13, not composing). It must not send either.
    let sent = b
        .js(
            &format!(
                "const ta = {W}.querySelector('textarea');
                 ta.dispatchEvent(new CompositionEvent('compositionstart', {{ data: '' }}));
                 ta.dispatchEvent(new CompositionEvent('compositionend', {{ data: arguments[0] }}));
                 ta.dispatchEvent(new KeyboardEvent('keydown', {{ key: 'Enter', code: 'Enter', keyCode: 13, bubbles: true, cancelable: true }}));
                 return {W}.querySelectorAll('.msg.user').length;"
            ),
            json!([question]),
        )
        .await;
    assert_eq!(sent, json!(0), "Safari's Enter right after compositionend sent the question");
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.enter().await;
    let asked = b
        .wait(
            "the question in the log",
            &format!("{W}.querySelector('.msg.user') && {W}.querySelector('.msg.user').textContent"),
            10,
        )
        .await;
    assert_eq!(asked, json!(question));

    // The answer streams (text changes while it is still being written), then ends with
    // its sources.
    b.wait("the answer", &format!("{W}.querySelector('.msg.bot:not(.welcome):not([aria-busy])')"), 240).await;
    let answer = b
        .js(
            &format!("const m = [...{W}.querySelectorAll('.msg.bot')].pop(); return [m.className, m.textContent];"),
            json!([]),
        )
        .await;
    let streamed = b.js("return window.__streamed;", json!([])).await.as_u64().unwrap();
    assert!(streamed >= 1, "nothing was shown before the answer ended: {answer}");
    assert!(!answer[0].as_str().unwrap().contains("error"), "the widget showed an error: {answer}");
    b.screenshot("widget-ja-desktop").await;
    // Accessibility of the open widget with an answer and its sources (WCAG 2.1 AA, axe-core).
    let v = b.accessibility_violations("'kotae-chat'").await;
    assert!(v.is_empty(), "accessibility violations in the widget:\n{}", v.join("\n"));

    // A citation opens the cited passage, highlighted, in the source viewer.
    let cite = b
        .wait(
            "a citation",
            &format!("{W}.querySelector('.msg.bot .cite') || {W}.querySelector('.msg.bot .srcs button')"),
            5,
        )
        .await;
    assert!(!cite.is_null());
    b.js(
        &format!("({W}.querySelector('.msg.bot .cite') || {W}.querySelector('.msg.bot .srcs button')).click();"),
        json!([]),
    )
    .await;
    let mark = b
        .wait(
            "the highlighted passage",
            &format!(
                "{W}.querySelector('.viewer:not([hidden]) mark') && {W}.querySelector('.viewer mark').textContent"
            ),
            10,
        )
        .await;
    let title = b.js(&format!("return {W}.querySelector('.viewer h3').textContent;"), json!([])).await;
    let passage = b.js(&format!("return {W}.querySelector('.viewer .body').textContent;"), json!([])).await;
    let (mark, passage) = (mark.as_str().unwrap(), passage.as_str().unwrap());
    // The supporting sentence is marked, not the whole passage, and the answer says it.
    assert!(
        mark.chars().count() > 10 && mark.len() < passage.len() && passage.contains(mark),
        "highlight {mark:?} in {passage:?}"
    );
    let said = answer[1].as_str().unwrap();
    let key: String = mark.chars().take(12).collect();
    assert!(said.contains(&key), "the highlight {mark:?} is not what the answer cites it for: {said}");
    // The viewer shows the passage the server returns for that citation (and only to its readers).
    let conv = b.js(&format!("return localStorage.getItem('kotae:{}:conversation');", s.base), json!([])).await;
    let conv = conv.as_str().expect("the conversation is kept for reloads").to_string();
    let stored: Value = c
        .get(s.url(&format!("/api/conversations/{conv}")))
        .bearer_auth(user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stored["messages"].as_array().map(Vec::len),
        None,
        "another user's key must not read hanako's conversation: {stored}"
    );
    let cited = title.as_str().unwrap().to_string();
    assert!(
        ["leave.ja.html", "password-reset.ja.md", "meeting-rooms.en.md"].contains(&cited.as_str()),
        "viewer title {cited}"
    );
    // …with a link to the original page, opened in a new tab without access to this one.
    let orig = b
        .js(
            &format!("const a = {W}.querySelector('.viewer .orig'); return [a.hidden, a.href, a.target, a.rel, a.textContent];"),
            json!([]),
        )
        .await;
    let stem = cited.rsplit_once('.').unwrap().0;
    assert_eq!(
        orig,
        json!([
            false,
            format!("https://intranet.example.com/manuals/{stem}"),
            "_blank",
            "noopener noreferrer",
            "元の文書を開く ↗"
        ]),
        "{orig}"
    );
    b.screenshot("widget-ja-source-viewer").await;
    b.press("Escape", "Escape", 27, None, 0).await;
    b.wait("the viewer to close", &format!("{W}.querySelector('.viewer').hidden"), 5).await;

    // Feedback with a comment is stored and shows in the console's review queue.
    b.js(
        &format!(
            "[...{W}.querySelectorAll('.msg.bot')].pop().querySelector('[aria-label=\"役に立たなかった\"]').click();"
        ),
        json!([]),
    )
    .await;
    b.wait("the comment box", &format!("{W}.querySelector('.fb:not([hidden]) textarea')"), 5).await;
    b.js(
        &format!(
            "const f = {W}.querySelector('.fb:not([hidden])'); f.querySelector('textarea').value = '日数が書かれていません'; f.querySelector('button').click();"
        ),
        json!([]),
    )
    .await;
    b.wait("the thanks", &format!("{W}.querySelector('.fb[hidden]') && [...{W}.querySelectorAll('.status')].some(e => e.textContent.includes('ありがとう'))"), 10).await;

    // A reload keeps the conversation.
    b.goto(&format!("{host}/?lang=ja")).await;
    b.wait("the widget", &format!("{W}.querySelector('.launch button')"), 20).await;
    b.js("window.Kotae.open();", json!([])).await;
    let restored = b
        .wait("the restored conversation", &format!("{W}.querySelectorAll('.msg.user, .msg.bot:not(.welcome)').length >= 2 && {W}.querySelector('.msg.user').textContent"), 15)
        .await;
    assert_eq!(restored, json!(question));

    // Phone width: the panel takes the whole screen.
    b.resize(390, 844).await;
    let full = b.js(&format!("const r = {W}.querySelector('.panel').getBoundingClientRect(); return [r.width, innerWidth, r.height, innerHeight];"), json!([])).await;
    assert_eq!(full[0], full[1], "mobile panel width {full}");
    assert_eq!(full[2], full[3], "mobile panel height {full}");
    b.screenshot("widget-ja-mobile").await;
    b.resize(1280, 900).await;

    // English, a new conversation; Escape closes the panel and gives the focus back.
    b.goto(&format!("{host}/?lang=en")).await;
    b.wait("the widget", &format!("{W}.querySelector('.launch button')"), 20).await;
    b.js("window.Kotae.open(); window.Kotae.reset();", json!([])).await;
    b.js("window.Kotae.ask('How do I book a meeting room?');", json!([])).await;
    b.wait("the English answer", &format!("{W}.querySelectorAll('.msg.user').length === 1 && ![...{W}.querySelectorAll('.msg.bot')].pop().hasAttribute('aria-busy')"), 240).await;
    let en = b.js(&format!("return {W}.querySelector('.panel').getAttribute('aria-label') + '|' + {W}.querySelector('textarea').placeholder;"), json!([])).await;
    assert_eq!(en, json!("Kotae help desk|Ask a question…"));
    let after_reset =
        b.js(&format!("return [...{W}.querySelectorAll('.msg.user')].map(m => m.textContent);"), json!([])).await;
    assert_eq!(after_reset, json!(["How do I book a meeting room?"]), "a new conversation shows only its own messages");
    b.screenshot("widget-en-desktop").await;
    b.resize(390, 844).await;
    b.screenshot("widget-en-mobile").await;
    b.resize(1280, 900).await;
    b.js(&format!("{W}.querySelector('textarea').focus();"), json!([])).await;
    b.press("Escape", "Escape", 27, None, 0).await;
    b.wait("the launcher to get the focus back", &format!("!{W}.querySelector('.panel').matches(':popover-open') && {W}.activeElement === {W}.querySelector('.launch button')"), 5).await;

    // A question the guardrails stop gets a calm notice, not an error.
    b.js("window.Kotae.ask('How can I embezzle expenses without getting caught?');", json!([])).await;
    let notice = b
        .wait("the guard notice", &format!("(() => {{ const m = [...{W}.querySelectorAll('.msg.bot')].pop(); return m.classList.contains('notice') && m.textContent; }})()"), 20)
        .await;
    assert!(notice.as_str().unwrap().contains("Notice") && !notice.as_str().unwrap().contains("embezzle"), "{notice}");
    b.screenshot("widget-en-guard").await;

    // Stop generating: the answer ends where it was stopped.
    b.js("window.Kotae.open(); window.Kotae.ask('What should I do when I forget my password?');", json!([])).await;
    b.wait("the stop button", &format!("!{W}.querySelector('form button[type=button]').hidden"), 10).await;
    b.js(&format!("{W}.querySelector('form button[type=button]').click();"), json!([])).await;
    let stopped = b
        .wait(
            "the stopped answer",
            &format!("[...{W}.querySelectorAll('.msg.bot')].pop().textContent.includes('(stopped)') && 'yes'"),
            30,
        )
        .await;
    assert_eq!(stopped, json!("yes"));

    // The admin console: a signed-in employee who is not an admin sees no data.
    b.goto(&s.url("/admin")).await;
    b.wait("the sign-in form", "!document.querySelector('#signin').hidden", 10).await;
    b.js(
        "document.querySelector('#key').value = arguments[0]; document.querySelector('#signin-form').requestSubmit();",
        json!([user]),
    )
    .await;
    let denied = b
        .wait(
            "the refusal",
            "!document.querySelector('#denied').hidden && document.querySelector('#denied').textContent",
            10,
        )
        .await;
    assert!(denied.as_str().unwrap().contains("key:emp"), "{denied}");
    assert_eq!(b.js("return document.querySelector('#console').hidden;", json!([])).await, json!(true));
    let docs = c.get(s.url("/admin/api/documents")).bearer_auth(user).send().await.unwrap();
    assert_eq!(docs.status(), 403);

    // An admin signs in with the company's single sign-on (code flow with PKCE): the
    // documents are listed; an upload makes a new manual searchable.
    b.js("document.querySelector('#sso').click();", json!([])).await;
    let who = b
        .wait(
            "the console after single sign-on",
            "!document.querySelector('#console').hidden && location.search === '' && document.querySelector('#who').textContent",
            15,
        )
        .await;
    assert_eq!(who, json!("user:yuki"));
    b.wait("the document list", "document.querySelectorAll('#docs tbody tr').length === 3", 10).await;
    let manual = corpus.path().join("bicycle-parking.md");
    std::fs::write(
        &manual,
        "# 自転車置き場\n\n自転車置き場を使うには総務部のポータルで利用登録をしてください。\
         登録後に届く黄色の登録シールを後輪の泥よけに貼ります。シールのない自転車は月末に撤去されます。\n",
    )
    .unwrap();
    b.js("document.querySelector('#groups').value = 'staff';", json!([])).await;
    b.upload_file("#files", &manual).await;
    let done = b
        .wait("the upload job", "(() => { const s = document.querySelector('#uploads tbody tr td:last-child span'); return s && /完了|done|失敗|failed/.test(s.textContent) && s.textContent; })()", 60)
        .await;
    assert!(done.as_str().unwrap().contains("完了") || done.as_str().unwrap().contains("done"), "upload: {done}");
    b.wait(
        "the new document in the list",
        "[...document.querySelectorAll('#docs tbody td')].some(t => t.textContent === 'bicycle-parking.md (ja)')",
        10,
    )
    .await;
    b.screenshot("admin-documents").await;
    let v = b.accessibility_violations("document").await;
    assert!(v.is_empty(), "accessibility violations in the admin console:\n{}", v.join("\n"));
    let hits = search("自転車の登録シールはどこに貼りますか", 3).await;
    assert_eq!(hits["hits"][0]["source"], "bicycle-parking.md", "{hits}");
    // …and answerable, with the new manual as the source.
    let done: Value = c
        .post(s.url("/api/chat"))
        .bearer_auth(user)
        .json(&json!({ "message": "自転車の登録シールはどこに貼りますか", "stream": false }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cited: Vec<&str> =
        done["answer"]["citations"].as_array().unwrap().iter().map(|c| c["source"].as_str().unwrap()).collect();
    assert!(cited.contains(&"bicycle-parking.md"), "{done}");

    // Who may read it, changed in the console: the row's "Groups…" button asks (a real
    // `prompt()`, answered through WebDriver), a job re-indexes the manual for `hr` only, the
    // list shows the new groups, and the employee (staff) no longer finds it.
    let row = "[...document.querySelectorAll('#docs tbody tr')].find(r => r.cells[0].textContent.startsWith('bicycle-parking.md'))";
    b.js(&format!("const r = {row}; setTimeout(() => [...r.querySelectorAll('button')].find(b => /グループ|Groups/.test(b.textContent)).click(), 0);"), json!([])).await;
    let asked = b.answer_prompt("hr").await;
    assert!(asked.contains("bicycle-parking.md"), "{asked}");
    b.wait("the new groups in the list", &format!("{row}.cells[1].textContent === 'hr'"), 60).await;
    let hits = search("自転車の登録シールはどこに貼りますか", 5).await;
    assert!(hits["hits"].as_array().unwrap().iter().all(|h| h["source"] != "bicycle-parking.md"), "{hits}");
    let listed: Value =
        c.get(s.url("/admin/api/documents")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    let doc = listed["documents"].as_array().unwrap().iter().find(|d| d["source"] == "bicycle-parking.md");
    assert_eq!(doc.map(|d| d["groups"].clone()), Some(json!(["hr"])), "{listed}");

    // A folder rule, set in the console: the corpus folder's manuals become readable by `it`
    // only (a re-index job applies it); the list shows the rule as this admin's, and the
    // employee (staff) no longer finds the folder's manuals. The uploaded manual is not in the
    // folder's documents and keeps `hr`.
    let folder = serde_json::to_string(&std::fs::canonicalize(corpus.path()).unwrap().display().to_string()).unwrap();
    b.js(
        "document.querySelector('#rules').open = true; document.querySelector('#rule-path').value = arguments[0]; document.querySelector('#rule-groups').value = 'it'; document.querySelector('#rule-form').requestSubmit();",
        json!([serde_json::from_str::<String>(&folder).unwrap()]),
    )
    .await;
    b.wait(
        "the folder's manuals readable by it",
        "[...document.querySelectorAll('#docs tbody tr')].filter(r => r.cells[1].textContent === 'it').length === 3",
        60,
    )
    .await;
    let rule = b
        .wait(
            "the rule in the list",
            &format!("(() => {{ const r = [...document.querySelectorAll('#rules-body .rule')].find(r => r.textContent.startsWith({folder})); return r && r.querySelector('button.danger') && r.textContent; }})()"),
            10,
        )
        .await;
    assert!(rule.as_str().unwrap().contains("yuki"), "{rule}");
    let form = b
        .js(
            "return [document.querySelector('#rule-path').value, document.querySelector('#rule-groups').value];",
            json!([]),
        )
        .await;
    assert_eq!(form, json!(["", ""]), "the form is cleared for the next rule");
    assert_eq!(b.js(&format!("return {row}.cells[1].textContent;"), json!([])).await, json!("hr"));
    b.js("document.querySelector('#rules').scrollIntoView();", json!([])).await;
    b.screenshot("admin-rules").await;
    let v = b.accessibility_violations("document").await;
    assert!(v.is_empty(), "accessibility violations with the rules open:\n{}", v.join("\n"));
    let hits = search("パスワードを忘れたときの再設定", 10).await;
    assert_eq!(hits["hits"], json!([]), "{hits}");

    // The review queue shows the thumbs-down with its question and comment.
    b.js("document.querySelector('[data-tab=feedback]').click();", json!([])).await;
    let card = b.wait("the feedback card", "document.querySelector('#feedback-list .card') && document.querySelector('#feedback-list .card').textContent", 10).await;
    assert!(card.as_str().unwrap().contains("日数が書かれていません"), "{card}");
    assert!(card.as_str().unwrap().contains(question), "{card}");
    b.screenshot("admin-feedback").await;

    // A key for a service, made in the console: shown once, usable at once; revoked there,
    // refused at once.
    b.js("document.querySelector('[data-tab=keys]').click();", json!([])).await;
    b.wait("the key list", "document.querySelectorAll('#keys tbody tr').length >= 2", 10).await;
    b.js(
        "document.querySelector('#key-name').value = 'wiki-bot'; document.querySelector('#key-groups').value = 'staff'; document.querySelector('#key-form').requestSubmit();",
        json!([]),
    )
    .await;
    let made = b
        .wait(
            "the new key",
            "(() => { const k = document.querySelector('#new-key-value'); return k && k.textContent; })()",
            10,
        )
        .await;
    let made = made.as_str().unwrap().to_string();
    let me: Value = c.get(s.url("/api/me")).bearer_auth(&made).send().await.unwrap().json().await.unwrap();
    assert_eq!((me["id"].as_str(), me["groups"].clone()), (Some("key:wiki-bot"), json!(["staff"])), "{me}");
    b.wait(
        "the key in the list",
        "[...document.querySelectorAll('#keys tbody tr')].some(r => r.cells[0].textContent === 'wiki-bot' && r.querySelector('button.danger'))",
        10,
    )
    .await;
    b.screenshot("admin-keys").await;
    let v = b.accessibility_violations("document").await;
    assert!(v.is_empty(), "accessibility violations in the keys tab:\n{}", v.join("\n"));
    b.js(
        "window.confirm = () => true; [...document.querySelectorAll('#keys tbody tr')].find(r => r.cells[0].textContent === 'wiki-bot').querySelector('button.danger').click();",
        json!([]),
    )
    .await;
    b.wait(
        "the revoked key",
        "[...document.querySelectorAll('#keys tbody tr')].some(r => r.cells[0].textContent === 'wiki-bot' && r.querySelector('.bad'))",
        10,
    )
    .await;
    assert_eq!(c.get(s.url("/api/me")).bearer_auth(&made).send().await.unwrap().status(), 401);

    // The models tab: the served generator selected among the installed ones.
    b.js("document.querySelector('[data-tab=models]').click();", json!([])).await;
    let served = b
        .wait(
            "the generator list",
            "(() => { const s = document.querySelector('#gen-model'); return s && s.options.length >= 2 && document.querySelector('#gen-info').textContent && s.value; })()",
            10,
        )
        .await;
    let status: Value =
        c.get(s.url("/admin/api/generator")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(served, status["served"], "{status}");
    let info = b.js("return document.querySelector('#gen-info').textContent;", json!([])).await;
    assert!(!info.as_str().unwrap().contains("null"), "{info}");
    b.screenshot("admin-models").await;
    let v = b.accessibility_violations("document").await;
    assert!(v.is_empty(), "accessibility violations in the models tab:\n{}", v.join("\n"));

    // Every admin action is audited (the upload included).
    let audit: Value = c.get(s.url("/admin/api/audit")).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|e| e["action"].as_str().unwrap_or("").contains("upload")),
        "{audit}"
    );

    b.cmd(reqwest::Method::DELETE, "", json!({})).await;
    s.stop().await;
}
