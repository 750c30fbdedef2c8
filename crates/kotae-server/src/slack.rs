//! Slack: Kotae answers mentions, direct messages and `/kotae` in threads, with citations and
//! feedback buttons, under the same guardrails and access rules as the web chat.
//!
//! Socket Mode (`app_token`): a WebSocket to Slack, for deployments without a public URL; the
//! same handlers serve what arrives there (see `run_socket_mode`).
//!
//! Events API over HTTPS: `/slack/events`, `/slack/interactive`, `/slack/commands`. Every
//! request is verified with the signing secret (HMAC-SHA256 over `v0:{timestamp}:{body}`,
//! constant-time, at most 5 minutes old) before anything else happens; Slack gets its 200 at
//! once and the answer follows from a background task; an event id is answered once, also
//! across restarts and Slack's retries (SQLite).
//!
//! slack-morphism provides the event, interaction and Block Kit types and the signature
//! check; its Web API client needs its own hyper/rustls stack, so the handful of calls
//! (`chat.postMessage`, `chat.update`, `chat.postEphemeral`, `views.open`, `users.info`,
//! `usergroups.list`, `apps.connections.open`) go
//! through reqwest here, with Slack's `429 Retry-After` honoured.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kotae_answer::{Answer, AnswerKind, Question};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use slack_morphism::prelude::*;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

use crate::api::{finished, history, observe_answer, start_answer, Asker, Run, RunEvent};
use crate::error::ApiError;
use crate::AppState;

/// `[slack]` in `kotae.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// The app's signing secret (`KOTAE_SLACK_SIGNING_SECRET`). Slack's routes answer 404
    /// until it and the bot token are set.
    pub signing_secret: Option<String>,
    /// The bot token, `xoxb-…` (`KOTAE_SLACK_BOT_TOKEN`).
    pub bot_token: Option<String>,
    /// The app-level token for Socket Mode, `xapp-…` (`KOTAE_SLACK_APP_TOKEN`).
    pub app_token: Option<String>,
    /// The Web API base (`KOTAE_SLACK_API_URL`).
    pub api_url: String,
    /// Post the answer at once and update it as it is written; `false`: one message at the end.
    pub stream: bool,
    /// Least time between two updates of a streaming answer (`chat.update` allows about one
    /// call per second per channel).
    pub update_interval_ms: u64,
    /// Kotae's address as employees' browsers reach it: citations link to its source viewer.
    pub public_url: Option<String>,
    /// Answer direct messages.
    pub direct_messages: bool,
    /// Answer in channels that are not listed in `channels` (mention only, public documents only).
    pub unlisted_channels: bool,
    /// Access groups by Slack user id (`U…`) or by e-mail address (looked up with `users.info`,
    /// scope `users:read.email`). Unmapped users read public documents only.
    pub users: BTreeMap<String, Vec<String>>,
    /// Access groups by Slack user group, its id (`S…`) or handle (`hr-team`): every member
    /// gets them (`usergroups.list`, scope `usergroups:read`; refreshed every ten minutes).
    pub user_groups: BTreeMap<String, Vec<String>>,
    pub channels: Vec<SlackChannel>,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            signing_secret: None,
            bot_token: None,
            app_token: None,
            api_url: "https://slack.com/api".into(),
            stream: true,
            update_interval_ms: 1200,
            public_url: None,
            direct_messages: true,
            unlisted_channels: true,
            users: BTreeMap::new(),
            user_groups: BTreeMap::new(),
            channels: Vec::new(),
        }
    }
}

/// One channel's settings (`[[slack.channels]]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackChannel {
    /// The channel id (`C…`).
    pub id: String,
    /// What an answer in this channel may draw on, whoever asks: everyone in the channel can
    /// read it (an asker's own groups narrow it further, never widen it).
    pub groups: Vec<String>,
    /// Answer every question posted in the channel, not only mentions.
    pub every_message: bool,
    /// Answer only to the asker (`chat.postEphemeral`), not to the channel.
    pub ephemeral: bool,
}

/// A Slack user group: (id, handle, member user ids).
type UserGroup = (String, String, Vec<String>);

/// Slack, configured and ready.
pub struct Slack {
    cfg: SlackConfig,
    /// `None` in Socket Mode without a signing secret: the HTTP routes then refuse everything.
    verifier: Option<SlackEventSignatureVerifier>,
    token: String,
    http: reqwest::Client,
    /// `users.info` e-mail lookups, cached for ten minutes.
    emails: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// `usergroups.list`, and when it was read.
    usergroups: Mutex<Option<(Vec<UserGroup>, Instant)>>,
}

impl Slack {
    /// `None` when Slack is not configured; an error when it is half configured.
    pub fn new(cfg: &SlackConfig) -> Result<Option<Arc<Slack>>, String> {
        let secret = cfg.signing_secret.clone().filter(|s| !s.is_empty());
        let token = cfg.bot_token.clone().filter(|s| !s.is_empty());
        let app = cfg.app_token.clone().filter(|s| !s.is_empty());
        let token = match (&secret, token, &app) {
            (None, None, None) => return Ok(None),
            (_, Some(t), _) if secret.is_some() || app.is_some() => t,
            _ => {
                return Err("slack: set bot_token and, for the Events API, signing_secret or, for Socket Mode, \
                            app_token (KOTAE_SLACK_BOT_TOKEN, KOTAE_SLACK_SIGNING_SECRET, KOTAE_SLACK_APP_TOKEN)"
                    .into())
            }
        };
        if app.as_deref().is_some_and(|a| !a.starts_with("xapp-")) {
            return Err("slack.app_token must be an app-level token (xapp-…) with the connections:write scope".into());
        }
        for c in &cfg.channels {
            if c.id.is_empty() {
                return Err("slack.channels: every channel needs its `id` (C…)".into());
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| format!("slack: cannot build the HTTP client: {e}"))?;
        Ok(Some(Arc::new(Slack {
            verifier: secret.map(|s| SlackEventSignatureVerifier::new(&SlackSigningSecret::new(s))),
            token,
            http,
            emails: Mutex::new(HashMap::new()),
            usergroups: Mutex::new(None),
            cfg: cfg.clone(),
        })))
    }

    /// The raw body, if Slack signed it (and recently).
    fn verify<'b>(&self, headers: &HeaderMap, body: &'b Bytes) -> Result<&'b str, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let refuse = |why: String| {
            tracing::warn!(reason = %why, "refused a Slack request");
            ApiError::Unauthorized(format!("not a valid Slack request: {why}"))
        };
        let sig =
            header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER).ok_or_else(|| refuse("unsigned".into()))?;
        let ts =
            header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP).ok_or_else(|| refuse("no timestamp".into()))?;
        let text = std::str::from_utf8(body).map_err(|_| refuse("the body is not UTF-8".into()))?;
        let verifier = self.verifier.as_ref().ok_or_else(|| {
            refuse("no signing_secret is set (Socket Mode only), so Slack's HTTP endpoints accept nothing".into())
        })?;
        verifier.verify(sig, text, ts).map_err(|e| refuse(e.to_string()))?;
        Ok(text)
    }

    /// Call a Web API method (JSON body); waits out `429 Retry-After` up to three times.
    async fn call(&self, method: &str, body: &impl Serialize) -> Result<Value, String> {
        let url = format!("{}/{method}", self.cfg.api_url.trim_end_matches('/'));
        self.send(&url, method, body, true).await
    }

    /// A `response_url` Kotae may post to: Slack's hooks host, or the host of the configured
    /// Web API base (a company's proxy, a test's stand-in). Anything else is ignored, so a
    /// command cannot make the server post to an address of its choosing.
    fn trusted_hook(&self, url: &str) -> bool {
        let Ok(u) = url::Url::parse(url) else { return false };
        let api = url::Url::parse(&self.cfg.api_url).ok();
        (u.scheme() == "https" && u.host_str() == Some("hooks.slack.com"))
            || api.is_some_and(|a| a.origin() == u.origin() && matches!(u.scheme(), "http" | "https"))
    }

    /// Replace a slash command's ephemeral reply through its `response_url`.
    async fn respond(&self, hook: &str, text: &str, blocks: Option<Vec<SlackBlock>>) -> Result<(), String> {
        let mut body = json!({ "response_type": "ephemeral", "replace_original": true,
            "text": text.chars().take(3000).collect::<String>() });
        if let Some(b) = blocks {
            body["blocks"] = serde_json::to_value(b).map_err(|e| e.to_string())?;
        }
        self.send(hook, "response_url", &body, false).await.map(|_| ())
    }

    /// POST `body` as JSON, waiting out `429 Retry-After` (at most four tries); the Web API
    /// (`auth`) answers `{"ok": …}`, a `response_url` plain `ok`.
    async fn send(&self, url: &str, method: &str, body: &impl Serialize, auth: bool) -> Result<Value, String> {
        for _ in 0..4 {
            let mut req = self.http.post(url).json(body);
            if auth {
                req = req.bearer_auth(&self.token);
            }
            let r = req.send().await.map_err(|e| format!("{method}: {e}"))?;
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(60);
                tracing::warn!(method, retry_after_s = wait, "Slack rate limit; waiting");
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            if !auth {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if !status.is_success() {
                    tracing::error!(method, status = status.as_u16(), error = %text, "Slack response_url call failed");
                    return Err(format!("{method}: {status} {text}"));
                }
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            let v: Value = r.json().await.map_err(|e| format!("{method}: not JSON: {e}"))?;
            if v["ok"] != true {
                let code = v["error"].as_str().unwrap_or("unknown_error").to_string();
                tracing::error!(method, error = %code, "Slack Web API call failed");
                return Err(format!("{method}: {code}"));
            }
            return Ok(v);
        }
        Err(format!("{method}: still rate limited"))
    }

    /// A user's access groups: by user id, else by e-mail address (`users.info`), together
    /// with those of the Slack user groups they belong to.
    async fn groups_of(&self, user: &str) -> Vec<String> {
        let mut groups: std::collections::BTreeSet<String> = self.user_groups_of(user).await.into_iter().collect();
        groups.extend(self.mapped_groups_of(user).await);
        groups.into_iter().collect()
    }

    /// The access groups of the Slack user groups `user` is a member of.
    async fn user_groups_of(&self, user: &str) -> Vec<String> {
        if self.cfg.user_groups.is_empty() {
            return Vec::new();
        }
        let cached = {
            let m = self.usergroups.lock().unwrap_or_else(|e| e.into_inner());
            m.as_ref().filter(|(_, at)| at.elapsed() < Duration::from_secs(600)).map(|(l, _)| l.clone())
        };
        let list = match cached {
            Some(l) => l,
            None => {
                let url = format!("{}/usergroups.list", self.cfg.api_url.trim_end_matches('/'));
                let req = self.http.get(&url).bearer_auth(&self.token).query(&[("include_users", "true")]);
                let list: Vec<UserGroup> = match req.send().await {
                    Ok(r) => match r.json::<Value>().await {
                        Ok(v) if v["ok"] == true => v["usergroups"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|g| {
                                        let s = |k: &str| g[k].as_str().unwrap_or_default().to_string();
                                        let users = g["users"]
                                            .as_array()
                                            .map(|u| u.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                                            .unwrap_or_default();
                                        (s("id"), s("handle"), users)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        Ok(v) => {
                            tracing::warn!(error = %v["error"], "usergroups.list failed (scope usergroups:read?)");
                            Vec::new()
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "usergroups.list: not JSON");
                            Vec::new()
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "usergroups.list failed");
                        Vec::new()
                    }
                };
                *self.usergroups.lock().unwrap_or_else(|e| e.into_inner()) = Some((list.clone(), Instant::now()));
                list
            }
        };
        list.iter()
            .filter(|(_, _, members)| members.iter().any(|m| m == user))
            .flat_map(|(id, handle, _)| {
                [id, handle].into_iter().filter_map(|k| self.cfg.user_groups.get(k.as_str())).flatten().cloned()
            })
            .collect()
    }

    /// A user's access groups from `[slack.users]`: by user id, else by e-mail address.
    async fn mapped_groups_of(&self, user: &str) -> Vec<String> {
        if let Some(g) = self.cfg.users.get(user) {
            return g.clone();
        }
        let cached = {
            let m = self.emails.lock().unwrap_or_else(|e| e.into_inner());
            m.get(user).filter(|(_, at)| at.elapsed() < Duration::from_secs(600)).map(|(e, _)| e.clone())
        };
        let email = match cached {
            Some(e) => e,
            None => {
                let url = format!("{}/users.info", self.cfg.api_url.trim_end_matches('/'));
                let found = match self.http.get(&url).bearer_auth(&self.token).query(&[("user", user)]).send().await {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|v| {
                        if v["ok"] != true {
                            tracing::warn!(user, error = %v["error"], "users.info failed");
                        }
                        v["user"]["profile"]["email"].as_str().map(|s| s.to_lowercase())
                    }),
                    Err(e) => {
                        tracing::warn!(user, error = %e, "users.info failed");
                        None
                    }
                };
                self.emails
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(user.into(), (found.clone(), Instant::now()));
                found
            }
        };
        email
            .and_then(|e| self.cfg.users.iter().find(|(k, _)| k.eq_ignore_ascii_case(&e)).map(|(_, g)| g.clone()))
            .unwrap_or_default()
    }

    fn channel(&self, id: &str) -> Option<&SlackChannel> {
        self.cfg.channels.iter().find(|c| c.id == id)
    }

    fn source_link(&self, chunk_id: &str) -> Option<String> {
        self.cfg.public_url.as_ref().map(|u| format!("{}/chat#source={chunk_id}", u.trim_end_matches('/')))
    }
}

/// Where a question came from and where its answer goes.
#[derive(Debug, Clone)]
struct Job {
    team: String,
    channel: String,
    user: String,
    text: String,
    /// The thread to answer in (`None`: a slash command; the answer starts a thread).
    thread_ts: Option<String>,
    dm: bool,
    ephemeral: bool,
    /// A slash command's `response_url`, when it is Slack's (or the configured API's host):
    /// the only way to update an ephemeral reply as the answer is written.
    response_url: Option<String>,
}

impl Job {
    fn client(&self) -> String {
        format!("slack:{}:{}", self.team, self.user)
    }

    /// The key of the thread rooted at `ts` in the job's channel.
    fn thread_key(&self, ts: &str) -> String {
        format!("{}:{}:{ts}", self.team, self.channel)
    }
}

fn strip_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<@") {
        out.push_str(&rest[..i]);
        match rest[i..].find('>') {
            Some(j) => rest = &rest[i + j + 1..],
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The question in an event, if Kotae should answer it.
fn job_of(slack: &Slack, cb: &SlackPushEventCallback) -> Option<Job> {
    let team = cb.team_id.to_string();
    let me = cb.authorizations.as_ref().and_then(|a| a.first()).map(|a| a.user_id.to_string());
    let (channel, user, text, origin, dm) = match &cb.event {
        SlackEventCallbackBody::AppMention(e) => {
            if e.edited.is_some() {
                return None;
            }
            (e.channel.to_string(), e.user.to_string(), e.content.text.clone()?, &e.origin, false)
        }
        SlackEventCallbackBody::Message(e) => {
            // Edits, deletions, joins, bots (Kotae itself included) and Slackbot: never.
            if e.subtype.is_some() || e.sender.bot_id.is_some() || e.hidden == Some(true) {
                return None;
            }
            let user = e.sender.user.as_ref()?.to_string();
            let text = e.content.as_ref()?.text.clone()?;
            let channel = e.origin.channel.as_ref()?.to_string();
            let dm = e.origin.channel_type.as_ref().is_some_and(|t| t.0 == "im");
            if !dm {
                // In channels, plain messages only where every question is answered; a
                // mention there comes as app_mention too and is answered from that.
                let every = slack.channel(&channel).is_some_and(|c| c.every_message);
                if !every || me.as_ref().is_some_and(|m| text.contains(&format!("<@{m}>"))) {
                    return None;
                }
            }
            (channel, user, text, &e.origin, dm)
        }
        _ => return None,
    };
    if user == "USLACKBOT" || me.as_ref() == Some(&user) {
        return None;
    }
    if dm && !slack.cfg.direct_messages {
        return None;
    }
    if !dm && slack.channel(&channel).is_none() && !slack.cfg.unlisted_channels {
        return None;
    }
    let text = strip_mentions(&text);
    if text.is_empty() {
        return None;
    }
    let thread_ts = Some(origin.thread_ts.as_ref().unwrap_or(&origin.ts).to_string());
    let ephemeral = !dm && slack.channel(&channel).is_some_and(|c| c.ephemeral);
    Some(Job { team, channel, user, text, thread_ts, dm, ephemeral, response_url: None })
}

fn slack_of(state: &AppState) -> Result<Arc<Slack>, ApiError> {
    state
        .slack
        .get()
        .cloned()
        .ok_or_else(|| ApiError::NotFound("Slack is not configured: set [slack] signing_secret and bot_token".into()))
}

/// `POST /slack/events`: the Events API request URL.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let slack = slack_of(&state)?;
    let text = slack.verify(&headers, &body)?;
    let retry = headers.get("x-slack-retry-num").and_then(|v| v.to_str().ok()).unwrap_or("-");
    Ok(match on_event(&state, &slack, text, retry)? {
        Some(v) => Json(v).into_response(),
        None => StatusCode::OK.into_response(),
    })
}

/// An Events API payload, from HTTP or Socket Mode: its reply body, if it has one.
fn on_event(state: &Arc<AppState>, slack: &Arc<Slack>, text: &str, retry: &str) -> Result<Option<Value>, ApiError> {
    let push: SlackPushEvent =
        serde_json::from_str(text).map_err(|e| ApiError::BadRequest(format!("not a Slack event: {e}")))?;
    match push {
        SlackPushEvent::UrlVerification(v) => Ok(Some(json!({ "challenge": v.challenge }))),
        SlackPushEvent::AppRateLimited(r) => {
            tracing::warn!(team = %r.team_id, "Slack is rate limiting this app's events");
            Ok(None)
        }
        SlackPushEvent::EventCallback(cb) => {
            if !state.store.slack_event_first_seen(cb.event_id.as_ref())? {
                tracing::info!(event_id = %cb.event_id, retry, "Slack event already taken");
                return Ok(None);
            }
            if let Some(job) = job_of(slack, &cb) {
                tokio::spawn(answer(state.clone(), slack.clone(), job));
            }
            Ok(None)
        }
    }
}

impl Slack {
    /// Whether to connect to Slack over Socket Mode (an app-level token is set).
    pub fn socket_mode(&self) -> bool {
        self.cfg.app_token.as_deref().is_some_and(|t| !t.is_empty())
    }

    /// `apps.connections.open` with the app-level token: a fresh WebSocket URL.
    async fn socket_url(&self) -> Result<String, String> {
        let url = format!("{}/apps.connections.open", self.cfg.api_url.trim_end_matches('/'));
        let token = self.cfg.app_token.as_deref().unwrap_or_default();
        let r =
            self.http.post(&url).bearer_auth(token).send().await.map_err(|e| format!("apps.connections.open: {e}"))?;
        let v: Value = r.json().await.map_err(|e| format!("apps.connections.open: not JSON: {e}"))?;
        match (v["ok"].as_bool(), v["url"].as_str()) {
            (Some(true), Some(u)) => Ok(u.to_string()),
            _ => Err(format!("apps.connections.open: {}", v["error"].as_str().unwrap_or("no url"))),
        }
    }
}

/// Socket Mode, for companies whose Kotae has no public URL: Kotae opens a WebSocket to
/// Slack and receives the same events, commands and interactions there, acknowledging each
/// envelope at once (the answer follows as with the Events API). When Slack asks it to
/// (`disconnect`: a refresh every few hours) or the connection drops, it connects again, with
/// a growing pause (up to a minute) while Slack cannot be reached. Runs until aborted.
/// Holds the state weakly: a server that stops is not kept alive by its Slack connection.
pub(crate) async fn run_socket_mode(state: std::sync::Weak<AppState>, slack: Arc<Slack>) {
    let mut pause = Duration::from_secs(1);
    loop {
        match socket_session(&state, &slack).await {
            Ok(()) => {
                tracing::info!("Slack asked for a new Socket Mode connection");
                pause = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "Slack Socket Mode connection lost");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// One WebSocket connection: `Ok` when Slack asked to reconnect, `Err` when it failed.
async fn socket_session(state: &std::sync::Weak<AppState>, slack: &Arc<Slack>) -> Result<(), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = slack.socket_url().await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.map_err(|e| format!("connect: {e}"))?;
    while let Some(msg) = ws.next().await {
        let text = match msg.map_err(|e| format!("read: {e}"))? {
            Message::Text(t) => t,
            Message::Close(_) => return Ok(()),
            _ => continue, // pings are answered by the WebSocket layer
        };
        let Ok(envelope) = serde_json::from_str::<Value>(text.as_str()) else {
            tracing::warn!("Slack sent a Socket Mode message that is not JSON");
            continue;
        };
        let kind = envelope["type"].as_str().unwrap_or_default();
        match kind {
            "hello" => tracing::info!(connections = %envelope["num_connections"], "Slack Socket Mode connected"),
            "disconnect" => return Ok(()),
            "events_api" | "slash_commands" | "interactive" => {
                let Some(state) = &state.upgrade() else { return Ok(()) };
                let payload = &envelope["payload"];
                let reply = match kind {
                    "events_api" => {
                        on_event(state, slack, &payload.to_string(), &envelope["retry_attempt"].to_string())
                            .unwrap_or_else(|e| {
                                tracing::warn!(error = %e, "Slack event refused");
                                None
                            })
                    }
                    "slash_commands" => {
                        let fields: HashMap<String, String> = payload
                            .as_object()
                            .map(|o| {
                                o.iter()
                                    .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        Some(on_command(state, slack, &fields))
                    }
                    _ => {
                        if let Err(e) = on_interaction(state, slack, &payload.to_string()) {
                            tracing::warn!(error = %e, "Slack interaction refused");
                        }
                        None
                    }
                };
                let mut ack = json!({ "envelope_id": envelope["envelope_id"] });
                if let Some(p) = reply.filter(|_| kind == "slash_commands") {
                    ack["payload"] = p;
                }
                ws.send(Message::Text(ack.to_string().into())).await.map_err(|e| format!("ack: {e}"))?;
            }
            _ => {}
        }
    }
    Err("the connection ended".into())
}

/// Form fields of a form-encoded body.
fn form(text: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(text.as_bytes()).into_owned().collect()
}

/// `POST /slack/commands`: `/kotae 質問`.
pub(crate) async fn commands(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let slack = slack_of(&state)?;
    let f = form(slack.verify(&headers, &body)?);
    Ok(Json(on_command(&state, &slack, &f)).into_response())
}

/// A slash command's fields, from HTTP or Socket Mode: the immediate (ephemeral) reply.
fn on_command(state: &Arc<AppState>, slack: &Arc<Slack>, f: &HashMap<String, String>) -> Value {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let text = get("text").trim().to_string();
    let ja = text.chars().any(|c| ('\u{3040}'..='\u{30ff}').contains(&c) || ('\u{4e00}'..='\u{9fff}').contains(&c));
    if text.is_empty() {
        let help = "使い方: `/kotae 質問` — Usage: `/kotae your question`";
        return json!({ "response_type": "ephemeral", "text": help });
    }
    let channel = get("channel_id");
    let dm = channel.starts_with('D');
    let ephemeral = !dm && slack.channel(&channel).is_some_and(|c| c.ephemeral);
    let response_url = Some(get("response_url")).filter(|u| slack.trusted_hook(u));
    let job =
        Job { team: get("team_id"), channel, user: get("user_id"), text, thread_ts: None, dm, ephemeral, response_url };
    tokio::spawn(answer(state.clone(), slack.clone(), job));
    let ack = if ja { "確認しています…" } else { "Looking into it…" };
    json!({ "response_type": "ephemeral", "text": ack })
}

/// `POST /slack/interactive`: the feedback buttons and the comment dialog.
pub(crate) async fn interactive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let slack = slack_of(&state)?;
    let f = form(slack.verify(&headers, &body)?);
    let payload = f.get("payload").ok_or_else(|| ApiError::BadRequest("no `payload` field".into()))?;
    on_interaction(&state, &slack, payload)?;
    // An empty 200 also closes a submitted dialog.
    Ok(StatusCode::OK.into_response())
}

/// A button press or a dialog's submission, from HTTP or Socket Mode.
fn on_interaction(state: &Arc<AppState>, slack: &Arc<Slack>, payload: &str) -> Result<(), ApiError> {
    let event: SlackInteractionEvent =
        serde_json::from_str(payload).map_err(|e| ApiError::BadRequest(format!("not a Slack interaction: {e}")))?;
    match event {
        SlackInteractionEvent::BlockActions(a) => {
            let user = a.user.as_ref().map(|u| u.id.to_string()).unwrap_or_default();
            let client = format!("slack:{}:{user}", a.team.id);
            for act in a.actions.unwrap_or_default() {
                let rating = match act.action_id.0.as_str() {
                    "kotae_feedback_up" => "up",
                    "kotae_feedback_down" => "down",
                    _ => continue,
                };
                let message_id = act.value.clone().unwrap_or_default();
                let stored = state.store.add_feedback(&message_id, rating, None, &client)?;
                let (slack, channel, trigger) =
                    (slack.clone(), a.channel.as_ref().map(|c| c.id.to_string()), a.trigger_id.clone());
                let user = user.clone();
                tokio::spawn(async move {
                    match (stored, rating) {
                        (None, _) => {
                            if let Some(channel) = channel {
                                let note = "この回答を評価できるのは質問した人だけです。 Only the person who asked can rate this answer.";
                                let _ = slack
                                    .call(
                                        "chat.postEphemeral",
                                        &json!({ "channel": channel, "user": user, "text": note }),
                                    )
                                    .await;
                            }
                        }
                        (Some(_), "down") => {
                            let _ = slack.call("views.open", &comment_dialog(trigger, &message_id)).await;
                        }
                        _ => {}
                    }
                });
            }
            Ok(())
        }
        SlackInteractionEvent::ViewSubmission(v) => {
            let (meta, values) = match &v.view.view {
                SlackView::Modal(m) => (m.private_metadata.clone(), v.view.state_params.state.clone()),
                _ => (None, None),
            };
            let comment = values
                .and_then(|s| s.values.get(&SlackBlockId::new("comment".into())).cloned())
                .and_then(|m| m.get(&SlackActionId::new("comment".into())).and_then(|x| x.value.clone()))
                .map(|c| c.chars().take(2000).collect::<String>());
            if let (Some(message_id), Some(comment)) = (meta, comment.filter(|c| !c.trim().is_empty())) {
                let client = format!("slack:{}:{}", v.team.id, v.user.id);
                state.store.add_feedback(&message_id, "down", Some(comment.trim()), &client)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn comment_dialog(trigger: SlackTriggerId, message_id: &str) -> SlackApiViewsOpenRequest {
    let input = SlackInputBlock::new(
        pt!("What was wrong? / 何が問題でしたか（任意）"),
        SlackInputBlockElement::PlainTextInput(
            SlackBlockPlainTextInputElement::new()
                .with_action_id("comment".into())
                .with_multiline(true)
                .with_max_length(2000),
        ),
    )
    .with_block_id("comment".into())
    .with_optional(true);
    let view = SlackModalView::new(pt!("Kotae"), vec![input.into()])
        .with_submit(pt!("Send / 送信"))
        .with_close(pt!("Cancel / 閉じる"))
        .with_callback_id("kotae_feedback_comment".into())
        .with_private_metadata(message_id.to_string());
    SlackApiViewsOpenRequest::new(trigger, SlackView::Modal(view))
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The answer as Block Kit: text with `[n]` linked to the document's own address when it has
/// one (else to the source viewer), the sources, and
/// the feedback buttons; a guard block as one calm line.
fn answer_blocks(slack: &Slack, a: &Answer, message_id: Option<&str>) -> Vec<SlackBlock> {
    let mut text = escape(&a.text);
    let links: Vec<(usize, Option<String>, String)> = a
        .citations
        .iter()
        .map(|c| {
            // In `<url|label>` a `|` would end the address, and mrkdwn needs `&<>` escaped.
            let link = c.url.clone().or_else(|| slack.source_link(&c.chunk_id)).map(|l| escape(&l).replace('|', "%7C"));
            (c.n, link, format!("{} — {}", c.source, c.section))
        })
        .collect();
    for (n, link, _) in &links {
        if let Some(l) = link {
            text = text.replace(&format!("[{n}]"), &format!("<{l}|[{n}]>"));
        }
    }
    let mut blocks: Vec<SlackBlock> =
        vec![SlackSectionBlock::new().with_text(md!(text.chars().take(2900).collect::<String>())).into()];
    if a.kind == AnswerKind::Blocked {
        return blocks;
    }
    let mut cited: Vec<&(usize, Option<String>, String)> = links
        .iter()
        .filter(|(n, _, _)| a.kind != AnswerKind::Generated || a.text.contains(&format!("[{n}]")))
        .collect();
    cited.sort_by_key(|c| c.0);
    if !cited.is_empty() {
        let lines: Vec<String> = cited
            .iter()
            .map(|(n, link, label)| match link {
                Some(l) => format!("{n}. <{l}|{}>", escape(label)),
                None => format!("{n}. {}", escape(label)),
            })
            .collect();
        let label = if a.lang == "ja" { "出典" } else { "Sources" };
        blocks.push(
            SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(format!(
                "*{label}*\n{}",
                lines.join("\n")
            )))])
            .into(),
        );
    }
    if let Some(id) = message_id {
        let button = |action: &str, label: &str, a11y: &str| {
            SlackActionBlockElement::Button(
                SlackBlockButtonElement::new(pt!(label))
                    .with_action_id(action.into())
                    .with_value(id.to_string())
                    .with_accessibility_label(a11y.into()),
            )
        };
        blocks.push(
            SlackActionsBlock::new(vec![
                button("kotae_feedback_up", "👍", "Helpful / 役に立った"),
                button("kotae_feedback_down", "👎", "Not helpful / 役に立たなかった"),
            ])
            .with_block_id("kotae_feedback".into())
            .into(),
        );
    }
    blocks
}

fn content(text: &str, blocks: Option<Vec<SlackBlock>>) -> SlackMessageContent {
    let c = SlackMessageContent::new().with_text(text.chars().take(3000).collect());
    match blocks {
        Some(b) => c.with_blocks(b),
        None => c,
    }
}

/// Answer one question in Slack: the same answer path as `/api/chat`.
async fn answer(state: Arc<AppState>, slack: Arc<Slack>, job: Job) {
    if let Err(e) = try_answer(&state, &slack, &job).await {
        tracing::error!(error = %e, channel = %job.channel, "Slack answer failed");
        let text = format!("Kotae could not answer: {e}");
        let _ = match job.response_url.as_deref().filter(|_| job.ephemeral) {
            Some(hook) => slack.respond(hook, &text, None).await,
            None => post(&slack, &job, &text, None).await.map(|_| ()),
        };
    }
}

/// Post to the job's thread (or to the asker only); returns the message's `ts`.
async fn post(slack: &Slack, job: &Job, text: &str, blocks: Option<Vec<SlackBlock>>) -> Result<Option<String>, String> {
    let channel = SlackChannelId::new(job.channel.clone());
    if job.ephemeral {
        let mut req = SlackApiChatPostEphemeralRequest::new(channel, job.user.clone().into(), content(text, blocks));
        if let Some(ts) = &job.thread_ts {
            req = req.with_thread_ts(ts.clone().into());
        }
        slack.call("chat.postEphemeral", &req).await?;
        return Ok(None);
    }
    let mut req = SlackApiChatPostMessageRequest::new(channel, content(text, blocks));
    if let Some(ts) = &job.thread_ts {
        req = req.with_thread_ts(ts.clone().into());
    }
    let v = slack.call("chat.postMessage", &req).await?;
    Ok(v["ts"].as_str().map(String::from))
}

async fn update(slack: &Slack, job: &Job, ts: &str, text: &str, blocks: Option<Vec<SlackBlock>>) -> Result<(), String> {
    let req = SlackApiChatUpdateRequest::new(job.channel.clone().into(), content(text, blocks), ts.to_string().into());
    slack.call("chat.update", &req).await.map(|_| ())
}

async fn try_answer(state: &Arc<AppState>, slack: &Arc<Slack>, job: &Job) -> Result<(), String> {
    let engine = state.engine().map_err(|e| e.to_string())?;
    // What the answer may draw on: the asker's groups, and in a channel only what the
    // channel's configured groups allow (an unlisted channel: public documents only).
    let mine = slack.groups_of(&job.user).await;
    let groups: Vec<String> = if job.dm {
        mine
    } else {
        let allowed = slack.channel(&job.channel).map(|c| c.groups.clone()).unwrap_or_default();
        mine.into_iter().filter(|g| allowed.contains(g)).collect()
    };
    // The thread is the conversation.
    let thread_key = job.thread_ts.as_deref().map(|ts| job.thread_key(ts));
    let existing = match &thread_key {
        Some(k) => state.store.slack_thread(k).map_err(|e| e.to_string())?,
        None => None,
    };
    let conversation = match existing {
        Some(c) => c,
        None => {
            let c = state.store.create_conversation(&job.client()).map_err(|e| e.to_string())?;
            if let Some(k) = &thread_key {
                state.store.set_slack_thread(k, &c).map_err(|e| e.to_string())?;
            }
            c
        }
    };
    let history = history(state, &engine, &conversation).map_err(|e| e.to_string())?;
    let q = Question { text: job.text.clone(), history, groups };
    let asker = Asker { client: job.client(), conversation_id: Some(conversation.clone()) };
    let Run { mut rx, question } = start_answer(state, engine, q, asker, |_| {}).await.map_err(|e| e.to_string())?;
    state.store.add_message(&conversation, "user", &question, None).map_err(|e| e.to_string())?;

    let streaming = slack.cfg.stream && !job.ephemeral;
    let hook = job.response_url.as_deref().filter(|_| slack.cfg.stream && job.ephemeral);
    // Where the answer is written as it comes: a message updated with chat.update, or an
    // ephemeral reply replaced through a slash command's response_url (chat.update cannot edit
    // an ephemeral message; a response_url allows five uses: up to three drafts at least a
    // second apart, then the answer, one use kept for an error).
    let target = match hook {
        Some(hook) => Some((Draft::Hook(hook), 1000, 3)),
        None if streaming => {
            let ts = post(slack, job, "…", None).await?.ok_or("chat.postMessage returned no ts")?;
            Some((Draft::Message(ts), 200, usize::MAX))
        }
        None => None,
    };
    let (a, posted) = if let Some((target, min_ms, max_drafts)) = target {
        let every = Duration::from_millis(slack.cfg.update_interval_ms.max(min_ms));
        let (mut shown, mut last, mut sent_len, mut drafts) = (String::new(), Instant::now(), 0, 0);
        let a = loop {
            match rx.recv().await {
                Some(RunEvent::Text(t)) => {
                    shown.push_str(&t);
                    if drafts < max_drafts
                        && last.elapsed() >= every
                        && shown.len() > sent_len
                        && !shown.trim().is_empty()
                    {
                        target.write(slack, job, &format!("{shown} …"), None).await?;
                        (sent_len, drafts, last) = (shown.len(), drafts + 1, Instant::now());
                    }
                }
                Some(RunEvent::Guard(_)) => {}
                Some(RunEvent::Failed(e)) => return Err(e.to_string()),
                Some(RunEvent::Done(a)) => break a,
                None => return Err("the answer ended without a result".into()),
            }
        };
        let id = store_answer(state, &conversation, &a)?;
        target.write(slack, job, &a.text, Some(answer_blocks(slack, &a, id.as_deref()))).await?;
        let posted = match target {
            Draft::Message(ts) => Some(ts),
            Draft::Hook(_) => None,
        };
        (a, posted)
    } else {
        let a = finished(&mut rx).await.map_err(|e| e.to_string())?;
        let id = store_answer(state, &conversation, &a)?;
        let ts = post(slack, job, &a.text, Some(answer_blocks(slack, &a, id.as_deref()))).await?;
        (a, ts)
    };
    // A slash command's answer starts a thread: follow-ups there continue this conversation.
    if let (None, Some(ts)) = (&job.thread_ts, posted) {
        state.store.set_slack_thread(&job.thread_key(&ts), &conversation).map_err(|e| e.to_string())?;
    }
    observe_answer(state, &a);
    Ok(())
}

/// Where a streamed answer is written: a posted message (its `ts`) or a `response_url`.
enum Draft<'a> {
    Message(String),
    Hook(&'a str),
}

impl Draft<'_> {
    async fn write(&self, slack: &Slack, job: &Job, text: &str, blocks: Option<Vec<SlackBlock>>) -> Result<(), String> {
        match self {
            Draft::Message(ts) => update(slack, job, ts, text, blocks).await,
            Draft::Hook(hook) => slack.respond(hook, text, blocks).await,
        }
    }
}

/// Keep the answer in the conversation; its id is what the feedback buttons carry.
fn store_answer(state: &AppState, conversation: &str, a: &Answer) -> Result<Option<String>, String> {
    let value = serde_json::to_value(a).map_err(|e| e.to_string())?;
    let id = state.store.add_message(conversation, "assistant", &a.text, Some(&value)).map_err(|e| e.to_string())?;
    Ok((a.kind != AnswerKind::Blocked).then_some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_stripped_and_mrkdwn_escaped() {
        assert_eq!(strip_mentions("<@U123ABC> 有給は何日？"), "有給は何日？");
        assert_eq!(strip_mentions("hi <@U1|kotae>  how do I   book?"), "hi how do I book?");
        assert_eq!(escape("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
    }

    #[test]
    fn half_a_configuration_is_refused() {
        assert!(Slack::new(&SlackConfig::default()).unwrap().is_none());
        let half = SlackConfig { signing_secret: Some("s".into()), ..Default::default() };
        assert!(Slack::new(&half).err().unwrap().contains("bot_token"));
    }
}
