//! The chat server (`kotae serve`): HTTP, streaming, persistence of conversations and
//! feedback, rate limits and metrics.
//!
//! Only this crate knows HTTP. It answers through [`kotae_answer::Answerer`] and a
//! [`kotae_models::GeneratorWorker`]; it never runs a model on an async thread (embedding and
//! search go to the blocking pool, generation to the worker).

// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

mod admin;
mod api;
pub mod auth;
pub mod documents;
pub mod error;
pub mod generators;
pub mod heads;
pub mod metrics;
mod openai;
mod openapi;
pub mod slack;
pub mod store;
mod web;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kotae_answer::{Answerer, RetrievalSettings};
use kotae_index::KnowledgeIndex;
use kotae_models::{Embedder, GeneratorWorker};
use serde::{Deserialize, Serialize};

pub use auth::{ApiKey, Client, JwtConfig, Role, SsoConfig};
pub use error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Largest upload request (all its files); each file is also held to `ingest.max_file_bytes`.
pub const UPLOAD_LIMIT: usize = 256 << 20;

/// Server settings (`[server]` in `kotae.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub addr: String,
    /// `all` (the default): this process serves and also runs the admin jobs that change the
    /// knowledge base, its own and those replicas queue in the shared state database.
    /// `replica`: it serves a knowledge base that another (`all`) process writes, following
    /// its commits, and queues its admin jobs for that process; needs the state in PostgreSQL
    /// (`state.url`) and the vectors on a Qdrant server (`vector_store.url`).
    pub role: ServerRole,
    /// Jobs that may wait for the generator behind the running ones; more get 503.
    pub queue_capacity: usize,
    /// Answers generated together, a token each in turn (int8 runtime): a long answer then
    /// delays a new question's first token by a token, not by its whole length. Each holds
    /// its own key/value cache (Qwen2.5 0.5B: 24 KiB per token, 24 MiB for a 1,000-token answer).
    pub parallel_answers: usize,
    /// Requests per minute per client (API key, or IP address for anonymous clients).
    pub rate_limit_per_minute: u32,
    /// Requests a client may send at once before the per-minute rate applies.
    pub rate_limit_burst: u32,
    /// Time limit of search requests, seconds.
    pub request_timeout_s: u64,
    /// Longest time one answer may generate; the answer ends there (finish reason
    /// `cancelled`) and the worker moves on.
    pub generation_timeout_s: u64,
    /// Longest question accepted, in characters.
    pub max_question_chars: usize,
    /// Clients without a credential read `public` documents only; `false` requires one.
    pub allow_anonymous: bool,
    pub api_keys: Vec<ApiKey>,
    /// Employees' bearer tokens from an OpenID Connect provider.
    pub jwt: Option<JwtConfig>,
    /// Identity headers set by a single-sign-on proxy (only believed from `trusted_proxies`).
    pub sso: Option<SsoConfig>,
    /// Addresses or CIDR ranges of reverse proxies whose `X-Forwarded-For` (and SSO headers)
    /// are believed. Empty: the peer address is the client's.
    pub trusted_proxies: Vec<String>,
    /// Users in any of these groups (from a JWT or the SSO proxy) are admins.
    pub admin_groups: Vec<String>,
    /// Failed authentications an address may make per minute before it is refused.
    pub auth_failures_per_minute: u32,
    /// Answers one client may have queued or generating at once.
    pub answers_in_flight_per_client: usize,
    /// Model id shown by the OpenAI-compatible API.
    pub model_id: String,
    /// Origins of intranet pages that embed the chat widget (`https://intranet.example`):
    /// their pages may call the API (CORS). Empty: only pages served by Kotae itself.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            role: ServerRole::All,
            queue_capacity: 8,
            parallel_answers: 4,
            rate_limit_per_minute: 120,
            rate_limit_burst: 20,
            request_timeout_s: 120,
            generation_timeout_s: 300,
            max_question_chars: 4000,
            allow_anonymous: true,
            api_keys: Vec::new(),
            jwt: None,
            sso: None,
            trusted_proxies: Vec::new(),
            admin_groups: Vec::new(),
            auth_failures_per_minute: 10,
            answers_in_flight_per_client: 2,
            model_id: "kotae".into(),
            cors_origins: Vec::new(),
        }
    }
}

/// What a server process does besides answering (`server.role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Serves, and runs the jobs that write the knowledge base.
    #[default]
    All,
    /// Serves a knowledge base another process writes; its jobs run there.
    Replica,
}

/// Everything that answers: built by the app once models are loaded.
pub struct Engine {
    pub answerer: Answerer,
    pub worker: GeneratorWorker,
    pub index: Arc<KnowledgeIndex>,
    pub embedder: Option<Arc<dyn Embedder>>,
    pub retrieval: RetrievalSettings,
    pub embedder_name: String,
    /// Trained classification heads on the embedder's vectors, by task (reloaded when a
    /// fine-tuning job writes new ones).
    pub classifiers: heads::Classifiers,
    /// Changes the knowledge base (the admin API's uploads and deletions).
    pub knowledge: Option<Arc<dyn documents::Knowledge>>,
}

/// Runs the nightly evaluation suites on the served engine with the given options (`split`,
/// `limit`, `red_team`), records the run and writes the report; returns the job's report
/// (`passed`, `summary`, `threshold_failures`, `regressions`, `report`). Set by the app, which
/// owns the suites.
pub type Evaluator = Arc<dyn Fn(&Engine, &serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

/// Runs a fine-tuning job (`POST /admin/api/finetune`, `kind` "finetune" or "lora") on the engine's
/// knowledge base with the job's options; writes the result where every process serving the
/// data folder finds it, and returns the job's report (`{"cancelled": true}` when `progress`
/// said stop). Set by the app, which owns the training code.
pub type Trainer = Arc<
    dyn Fn(&Engine, &serde_json::Value, Arc<documents::Progress>) -> Result<serde_json::Value, String> + Send + Sync,
>;

/// Shared state of all handlers.
pub struct AppState {
    pub cfg: ServerConfig,
    /// The engine answering now: replaced whole when the generator changes (answers in flight
    /// keep the one they started on).
    engine: std::sync::RwLock<Option<Arc<Engine>>>,
    load_error: OnceLock<String>,
    pub store: store::Store,
    pub metrics: metrics::Metrics,
    limiter: DefaultKeyedRateLimiter<String>,
    auth: auth::Authenticator,
    failures: auth::FailureLimiter,
    in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Wake the job runner's lanes (`store::Lane::ALL`; one runner per process, started on
    /// first use; each lane runs its jobs one at a time, oldest first, whichever replica
    /// queued them).
    pub(crate) job_wake: [Arc<tokio::sync::Notify>; 2],
    pub(crate) job_runner: OnceLock<tokio::task::AbortHandle>,
    /// Cancel flags of the admin jobs this process runs.
    pub(crate) cancels: documents::Cancels,
    /// Where the nightly evaluation writes its latest report (`report.json`).
    reports: OnceLock<std::path::PathBuf>,
    /// The Slack app, when `[slack]` is configured.
    pub(crate) slack: OnceLock<Arc<slack::Slack>>,
    /// The nightly evaluation, run in this process (`POST /admin/api/eval/runs`), and the
    /// job of the run in progress (one at a time).
    pub(crate) evaluator: OnceLock<Evaluator>,
    /// Fine-tuning jobs, run by the writer's job runner.
    pub(crate) trainer: OnceLock<Trainer>,
    /// Changing the generator while serving (`/admin/api/generator`).
    pub(crate) generators: OnceLock<Arc<generators::Switching>>,
    pub(crate) eval_job: std::sync::Mutex<Option<String>>,
    started: Instant,
}

impl AppState {
    pub fn new(cfg: ServerConfig, store: store::Store) -> Result<Arc<Self>, String> {
        let per_min = std::num::NonZeroU32::new(cfg.rate_limit_per_minute)
            .ok_or("server.rate_limit_per_minute must be at least 1")?;
        let burst =
            std::num::NonZeroU32::new(cfg.rate_limit_burst).ok_or("server.rate_limit_burst must be at least 1")?;
        let limiter = RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst));
        let auth = auth::Authenticator::new(&cfg)?;
        match store.fail_interrupted_jobs() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "admin jobs were interrupted by the last stop; they are marked failed"),
            Err(e) => return Err(format!("cannot read the job table: {e}")),
        }
        let failures = auth::FailureLimiter::new(cfg.auth_failures_per_minute);
        for o in &cfg.cors_origins {
            web::check_origin(o)?;
        }
        Ok(Arc::new(Self {
            auth,
            failures,
            in_flight: Default::default(),
            job_wake: Default::default(),
            job_runner: OnceLock::new(),
            cancels: Default::default(),
            cfg,
            engine: Default::default(),
            load_error: OnceLock::new(),
            store,
            metrics: metrics::Metrics::default(),
            limiter,
            reports: OnceLock::new(),
            slack: OnceLock::new(),
            evaluator: OnceLock::new(),
            trainer: OnceLock::new(),
            generators: OnceLock::new(),
            eval_job: std::sync::Mutex::new(None),
            started: Instant::now(),
        }))
    }

    /// Install the engine: the server becomes ready. A later call replaces it (a new
    /// generator): requests that hold the old one finish on it.
    pub fn set_engine(&self, engine: Engine) {
        *self.engine.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(engine));
    }

    /// The folder of the latest nightly evaluation report (shown in the admin console).
    pub fn set_report_dir(&self, dir: std::path::PathBuf) {
        let _ = self.reports.set(dir);
    }

    /// Let admins run the nightly evaluation in this process (`POST /admin/api/eval/runs`).
    pub fn set_evaluator(&self, f: Evaluator) {
        let _ = self.evaluator.set(f);
    }

    /// Let admins fine-tune from the admin API (`POST /admin/api/finetune`): the jobs run on
    /// the writer.
    pub fn set_trainer(&self, f: Trainer) {
        let _ = self.trainer.set(f);
    }

    /// Answer in Slack (`/slack/…`).
    pub fn set_slack(&self, slack: Arc<slack::Slack>) {
        let _ = self.slack.set(slack);
    }

    /// Record why the engine could not load (shown by `/readyz`).
    pub fn set_load_error(&self, e: String) {
        let _ = self.load_error.set(e);
    }

    pub fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        let engine = self.engine.read().unwrap_or_else(|e| e.into_inner()).clone();
        match (engine, self.load_error.get()) {
            (Some(e), _) => Ok(e),
            (None, Some(err)) => Err(ApiError::NotReady(format!("the models failed to load: {err}"))),
            (None, None) => Err(ApiError::NotReady("models are still loading; retry in a few seconds".into())),
        }
    }
}

/// One answer a client has in flight; released when dropped.
pub(crate) struct InFlight {
    state: Arc<AppState>,
    client: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self.state.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

impl AppState {
    /// Take one of the client's answer slots (`server.answers_in_flight_per_client`).
    pub(crate) fn begin_answer(self: &Arc<Self>, client: &str) -> Result<InFlight, ApiError> {
        let limit = self.cfg.answers_in_flight_per_client.max(1);
        let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(client.to_string()).or_insert(0);
        if *n >= limit {
            return Err(ApiError::InFlight { limit });
        }
        *n += 1;
        Ok(InFlight { state: self.clone(), client: client.to_string() })
    }
}

/// The HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/admin/api/audit", get(admin::audit))
        .route("/admin/api/guard-events", get(admin::guard_events))
        .route("/admin/api/quarantine", get(admin::quarantine))
        .route("/admin/api/quarantine/{id}", post(admin::review))
        .route(
            "/admin/api/documents",
            get(documents::list).post(documents::upload).layer(axum::extract::DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/admin/api/documents/{*source}", axum::routing::delete(documents::remove).patch(documents::set_groups))
        .route(
            "/admin/api/access-rules",
            get(documents::access_rules).put(documents::set_access_rule).delete(documents::remove_access_rule),
        )
        .route("/admin/api/reindex", post(documents::reindex))
        .route("/admin/api/jobs", get(documents::jobs))
        .route("/admin/api/jobs/{id}", get(documents::job))
        .route("/admin/api/jobs/{id}/retry", post(documents::retry))
        .route("/admin/api/jobs/{id}/cancel", post(documents::cancel))
        .route("/admin/api/jobs/{id}/events", get(documents::events))
        .route("/admin/api/feedback", get(admin::feedback))
        .route("/admin/api/keys", get(admin::keys).post(admin::create_key))
        .route("/admin/api/keys/{name}", axum::routing::delete(admin::revoke_key))
        .route("/admin/api/eval", get(web::eval_report))
        .route("/admin/api/eval/runs", post(documents::start_eval))
        .route("/admin/api/finetune", post(documents::start_finetune))
        .route("/admin/api/generator", get(generators::get_generator).put(generators::set_generator))
        .route_layer(axum::middleware::from_fn(admin_only));
    let limited = Router::new()
        .route("/api/chat", post(api::chat))
        .route("/api/search", post(api::search))
        .route("/api/feedback", post(api::feedback))
        .route("/api/classify", post(api::classify))
        .route("/api/conversations/{id}", get(api::conversation))
        .route("/api/me", get(api::me))
        .route("/api/sources/{*chunk_id}", get(web::source))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .merge(admin)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access));
    Router::new()
        .merge(limited)
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::document))
        .merge(web::pages())
        // Slack signs its requests; they pass no other access check.
        .route("/slack/events", post(slack::events))
        .route("/slack/interactive", post(slack::interactive))
        .route("/slack/commands", post(slack::commands))
        .fallback(|| async { ApiError::NotFound("no such endpoint; GET /openapi.json lists them".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(web::cors(&state.cfg.cors_origins))
        .with_state(state)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(e) = state.engine() {
        state.metrics.queue_depth.set(e.worker.load() as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

/// Counts requests and their latency by route and status.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let t = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    state.metrics.requests.get_or_create(&metrics::RequestLabels { route: route.clone(), status }).inc();
    state.metrics.latency.get_or_create(&metrics::RouteLabels { route }).observe(t.elapsed().as_secs_f64());
    resp
}

/// A key an admin made through `/admin/api/keys` (looked up by its SHA-256 in the state
/// database at every request, so a revocation holds at once, on every replica). A database
/// that cannot answer refuses the request rather than guess.
fn managed_key(state: &AppState, token: &str, ip: std::net::IpAddr) -> Result<Option<Client>, ApiError> {
    Ok(state.store.api_key(&auth::key_digest(token))?.map(|(name, role, groups)| Client {
        id: format!("key:{name}"),
        groups,
        role: if role == "admin" { Role::Admin } else { Role::User },
        via: "api_key",
        ip,
    }))
}

/// Identifies the client (API key, JWT, SSO proxy headers or anonymous), refuses what does
/// not verify, applies the per-client rate limit.
async fn access(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let ip = state.auth.client_ip(peer, req.headers());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    let offers_credential = bearer.is_some() || req.headers().contains_key(header::AUTHORIZATION);
    if offers_credential {
        if let Some(wait) = state.failures.locked(ip) {
            return Err(ApiError::RateLimited { retry_after_s: wait });
        }
    }
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let deny = |how: &str, why: String| {
        state.failures.failed(ip);
        tracing::warn!(client_ip = %ip, how, reason = %why, route = %route, "authentication failed");
        state.store.audit(&store::AuditEntry {
            actor: format!("ip:{ip}"),
            action: "authenticate".into(),
            target: route.clone(),
            result: "denied".into(),
            detail: format!("{how}: {why}"),
            ip: ip.to_string(),
        });
    };
    let client = match bearer {
        Some(token) if auth::looks_like_jwt(&token) && state.auth.jwt().is_some() => {
            let Some(jwt) = state.auth.jwt() else { unreachable!() };
            match jwt.verify(&token).await {
                Ok((user, groups)) => state.auth.from_claims(user, groups, ip),
                Err(auth::Denied(why)) => {
                    deny("jwt", why);
                    return Err(ApiError::Unauthorized(
                        "the bearer token was refused (signature, issuer, audience or expiry): sign in again".into(),
                    ));
                }
            }
        }
        Some(token) => match state
            .auth
            .api_key(&token, ip)
            .map_or_else(|| managed_key(&state, &token, ip), |c| Ok(Some(c)))?
        {
            Some(c) => c,
            // OpenAI clients insist on sending some key; on a server with no credentials at
            // all and anonymous access on, such a key means nothing and is ignored.
            None if state.cfg.allow_anonymous && !state.auth.has_credentials() && !state.store.has_api_keys()? => {
                anonymous(ip)
            }
            None => {
                deny("api_key", "unknown API key".into());
                return Err(ApiError::Unauthorized("unknown API key".into()));
            }
        },
        None if req.headers().contains_key(header::AUTHORIZATION) => {
            deny("authorization", "not a bearer credential".into());
            return Err(ApiError::Unauthorized("send `Authorization: Bearer <token or API key>`".into()));
        }
        None => match state.auth.sso(peer, ip, req.headers()) {
            Ok(Some(c)) => c,
            Ok(None) if state.cfg.allow_anonymous => anonymous(ip),
            Ok(None) => {
                return Err(ApiError::Unauthorized(
                    "sign-in required: send `Authorization: Bearer <token or API key>`".into(),
                ))
            }
            Err(auth::Denied(why)) => {
                // Identity headers from outside the proxy are ignored, never believed.
                tracing::warn!(client_ip = %ip, reason = %why, "ignored SSO headers");
                if state.cfg.allow_anonymous {
                    anonymous(ip)
                } else {
                    return Err(ApiError::Unauthorized("sign-in required".into()));
                }
            }
        },
    };
    // Proxy sign-in travels with every browser request (cookies at the proxy), so a page on
    // another site could make a signed-in employee's browser post here: changes through it
    // must come from Kotae's own pages or an allowed origin.
    if client.via == "sso" && !req.method().is_safe() && !web::same_site(&req, &state.cfg.cors_origins) {
        tracing::warn!(client_ip = %ip, route = %route, "cross-site request refused");
        return Err(ApiError::Forbidden(
            "cross-site request refused: changes must come from Kotae's own pages or a `server.cors_origins` origin"
                .into(),
        ));
    }
    if let Err(not_until) = state.limiter.check_key(&client.id) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::RateLimited { retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64 });
    }
    req.extensions_mut().insert(client);
    Ok(next.run(req).await)
}

fn anonymous(ip: std::net::IpAddr) -> Client {
    Client { id: format!("ip:{ip}"), groups: Vec::new(), role: Role::User, via: "anonymous", ip }
}

/// Admin endpoints: 401 for anonymous clients, 403 for signed-in users without the role.
async fn admin_only(req: Request, next: Next) -> Result<Response, ApiError> {
    match req.extensions().get::<Client>() {
        Some(c) if c.role == Role::Admin => Ok(next.run(req).await),
        Some(c) if c.via == "anonymous" => {
            Err(ApiError::Unauthorized("admin endpoints need an admin credential".into()))
        }
        _ => Err(ApiError::Forbidden("this endpoint is for admins".into())),
    }
}

/// Serve until `shutdown` resolves. The engine is installed by the caller (possibly after
/// the listener is up, so `/readyz` can say "loading").
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Forget rate-limit state of clients that have been quiet, so the map does not grow
    // with every address ever seen.
    // A weak handle: an aborted pruner must not keep the state (and the index) alive.
    let st = Arc::downgrade(&state);
    // Jobs queued before a restart or by replicas run here (a replica leaves them to the writer).
    documents::start_job_runner(&state);
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(st) = st.upgrade() else { return };
            st.limiter.retain_recent();
            st.limiter.shrink_to_fit();
            st.failures.prune();
            // With state shared by replicas, a replica that died leaves its jobs running:
            // whichever replica sees the heartbeat stopped marks them failed.
            if st.store.backend() == "postgres" {
                let s2 = st.clone();
                if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || s2.store.fail_interrupted_jobs()).await {
                    if n > 0 {
                        tracing::warn!(jobs = n, "jobs of a replica that stopped are marked failed");
                    }
                }
            }
        }
    });
    // Slack over Socket Mode, when an app-level token is set: a WebSocket of its own.
    let socket = state
        .slack
        .get()
        .filter(|s| s.socket_mode())
        .map(|s| tokio::spawn(slack::run_socket_mode(Arc::downgrade(&state), s.clone())));
    // Once shutting down, no new job starts here (one queued now waits for the next start).
    let runner = Arc::downgrade(&state);
    let shutdown = async move {
        shutdown.await;
        if let Some(h) = runner.upgrade().and_then(|s| s.job_runner.get().cloned()) {
            h.abort();
        }
    };
    let app = router(state);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    pruner.abort();
    if let Some(s) = socket {
        s.abort();
        let _ = s.await;
    }
    served
}

/// Seconds since the server started.
pub fn uptime_s(state: &AppState) -> f64 {
    state.started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_flight_are_limited_per_client_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig { answers_in_flight_per_client: 2, ..Default::default() };
        let state = AppState::new(cfg, store::Store::open(&dir.path().join("s.sqlite3")).unwrap()).unwrap();
        let a1 = state.begin_answer("key:a").unwrap();
        let _a2 = state.begin_answer("key:a").unwrap();
        assert!(matches!(state.begin_answer("key:a"), Err(ApiError::InFlight { limit: 2 })));
        // Another client is not held back by the first one's answers.
        let _b = state.begin_answer("key:b").unwrap();
        drop(a1);
        let _a3 = state.begin_answer("key:a").unwrap();
        drop((_a2, _a3, _b));
        assert!(state.in_flight.lock().unwrap().is_empty(), "released slots leave nothing behind");
    }
}

// The server is tested through real HTTP with real models in `apps/kotae/tests/it/serve.rs`
// (it needs the ingested knowledge base); `store` has its own unit tests.
