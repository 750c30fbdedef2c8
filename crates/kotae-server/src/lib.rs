//! The chat server (`kotae serve`): HTTP, streaming, persistence of conversations and
//! feedback, rate limits and metrics.
//!
//! Only this crate knows HTTP. It answers through [`kotae_answer::Answerer`] and a
//! [`kotae_models::GeneratorWorker`]; it never runs a model on an async thread (embedding and
//! search go to the blocking pool, generation to the worker).

mod api;
pub mod error;
pub mod metrics;
mod openai;
mod openapi;
pub mod store;

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

pub use error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// An API key and the access groups its holder may read.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Name used in logs and as the rate-limit key (never the secret).
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("groups", &self.groups)
            .finish()
    }
}

/// Server settings (`[server]` in `kotae.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub addr: String,
    /// Jobs that may wait for the generator behind the running one; more get 503.
    pub queue_capacity: usize,
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
    /// Clients without a key read `public` documents only; `false` requires a key.
    pub allow_anonymous: bool,
    pub api_keys: Vec<ApiKey>,
    /// Model id shown by the OpenAI-compatible API.
    pub model_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            queue_capacity: 8,
            rate_limit_per_minute: 120,
            rate_limit_burst: 20,
            request_timeout_s: 120,
            generation_timeout_s: 300,
            max_question_chars: 4000,
            allow_anonymous: true,
            api_keys: Vec::new(),
            model_id: "kotae".into(),
        }
    }
}

/// Everything that answers: built by the app once models are loaded.
pub struct Engine {
    pub answerer: Answerer,
    pub worker: GeneratorWorker,
    pub index: Arc<KnowledgeIndex>,
    pub embedder: Option<Arc<dyn Embedder>>,
    pub retrieval: RetrievalSettings,
    pub embedder_name: String,
    /// Trained classification heads on the embedder's vectors, by task.
    pub classifiers: std::collections::BTreeMap<String, Arc<kotae_models::Head>>,
}

/// Shared state of all handlers.
pub struct AppState {
    pub cfg: ServerConfig,
    engine: OnceLock<Arc<Engine>>,
    load_error: OnceLock<String>,
    pub store: store::Store,
    pub metrics: metrics::Metrics,
    limiter: DefaultKeyedRateLimiter<String>,
    started: Instant,
}

impl AppState {
    pub fn new(cfg: ServerConfig, store: store::Store) -> Result<Arc<Self>, String> {
        let per_min = std::num::NonZeroU32::new(cfg.rate_limit_per_minute)
            .ok_or("server.rate_limit_per_minute must be at least 1")?;
        let burst =
            std::num::NonZeroU32::new(cfg.rate_limit_burst).ok_or("server.rate_limit_burst must be at least 1")?;
        let limiter = RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst));
        Ok(Arc::new(Self {
            cfg,
            engine: OnceLock::new(),
            load_error: OnceLock::new(),
            store,
            metrics: metrics::Metrics::default(),
            limiter,
            started: Instant::now(),
        }))
    }

    /// Install the engine: the server becomes ready.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(Arc::new(engine));
    }

    /// Record why the engine could not load (shown by `/readyz`).
    pub fn set_load_error(&self, e: String) {
        let _ = self.load_error.set(e);
    }

    pub fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        match (self.engine.get(), self.load_error.get()) {
            (Some(e), _) => Ok(e.clone()),
            (None, Some(err)) => Err(ApiError::NotReady(format!("the models failed to load: {err}"))),
            (None, None) => Err(ApiError::NotReady("models are still loading; retry in a few seconds".into())),
        }
    }
}

/// Who is asking: set by the access middleware from the API key or the peer address.
#[derive(Debug, Clone)]
pub struct Client {
    /// Rate-limit and ownership key: `key:<name>` or `ip:<address>`.
    pub id: String,
    pub groups: Vec<String>,
}

/// The HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let limited = Router::new()
        .route("/api/chat", post(api::chat))
        .route("/api/search", post(api::search))
        .route("/api/feedback", post(api::feedback))
        .route("/api/classify", post(api::classify))
        .route("/api/conversations/{id}", get(api::conversation))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access));
    Router::new()
        .merge(limited)
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::NotFound("no such endpoint; GET /openapi.json lists them".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
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

/// Identifies the client (API key or IP), applies the per-client rate limit.
async fn access(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let client = match bearer {
        Some(k) => match state.cfg.api_keys.iter().find(|a| a.key == k) {
            Some(a) => Client { id: format!("key:{}", a.name), groups: a.groups.clone() },
            // OpenAI clients insist on sending some key; with anonymous access on, an unknown
            // key is treated as anonymous rather than rejected.
            None if state.cfg.allow_anonymous && state.cfg.api_keys.is_empty() => anonymous(&req),
            None => return Err(ApiError::Unauthorized("unknown API key".into())),
        },
        None if state.cfg.allow_anonymous => anonymous(&req),
        None => {
            return Err(ApiError::Unauthorized("an API key is required: send `Authorization: Bearer <key>`".into()))
        }
    };
    if let Err(not_until) = state.limiter.check_key(&client.id) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::RateLimited { retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64 });
    }
    req.extensions_mut().insert(client);
    Ok(next.run(req).await)
}

fn anonymous(req: &Request) -> Client {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    Client { id: format!("ip:{ip}"), groups: Vec::new() }
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
    let st = state.clone();
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            st.limiter.retain_recent();
            st.limiter.shrink_to_fit();
        }
    });
    let app = router(state);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    pruner.abort();
    served
}

/// Seconds since the server started.
pub fn uptime_s(state: &AppState) -> f64 {
    state.started.elapsed().as_secs_f64()
}

// The server is tested through real HTTP with real models in `apps/kotae/tests/it/serve.rs`
// (it needs the ingested knowledge base); `store` has its own unit tests.
