//! What a browser loads: the embeddable chat widget (`/widget.js`), a full-page chat
//! (`/chat`), the admin console (`/admin`), the source viewer's endpoint, and the browser
//! rules (CORS for the intranet pages that embed the widget, same-site checks for
//! proxy sign-in). The pages are plain HTML/JS/CSS compiled into the binary: nothing to
//! build, nothing fetched from elsewhere.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::join_error;
use crate::error::ApiError;
use crate::{AppState, Client};

const WIDGET_JS: &str = include_str!("../assets/widget.js");
const ADMIN_HTML: &str = include_str!("../assets/admin.html");
const ADMIN_JS: &str = include_str!("../assets/admin.js");
const CHAT_HTML: &str = include_str!("../assets/chat.html");

/// Content-Security-Policy of Kotae's own pages: only their own script, no framing.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The asset routes (no credentials needed: they hold no data).
pub(crate) fn pages() -> Router<Arc<AppState>> {
    Router::new()
        .route("/widget.js", get(|h: HeaderMap| async move { asset(&h, WIDGET_JS, "application/javascript", true) }))
        .route("/admin", get(admin_page))
        .route("/admin/login", get(login_config))
        .route("/admin/", get(|| async { axum::response::Redirect::permanent("/admin") }))
        .route("/admin/app.js", get(|h: HeaderMap| async move { asset(&h, ADMIN_JS, "application/javascript", false) }))
        .route("/chat", get(|h: HeaderMap| async move { page(&h, CHAT_HTML) }))
}

fn etag(body: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", hex::encode(&Sha256::digest(body.as_bytes())[..12]))
}

/// A static asset with an ETag (a reload costs a 304). `cross_origin`: other sites' pages
/// load it (the widget).
fn asset(h: &HeaderMap, body: &'static str, mime: &str, cross_origin: bool) -> Response {
    let tag = etag(body);
    let fresh = h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, mime)], body).into_response()
    };
    let hs = resp.headers_mut();
    hs.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex etag"));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300, must-revalidate"));
    hs.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if cross_origin {
        hs.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    }
    if let Some(ct) = hs.get_mut(header::CONTENT_TYPE) {
        if !fresh {
            *ct = HeaderValue::from_str(&format!("{mime}; charset=utf-8")).expect("mime");
        }
    }
    resp
}

/// The console's sign-in settings, when `[server.jwt]` names the provider's endpoints.
fn login(state: &AppState) -> Option<(&str, &str, &str, &str)> {
    let j = state.cfg.jwt.as_ref()?;
    Some((j.authorize_url.as_deref()?, j.token_url.as_deref()?, j.client_id.as_deref()?, j.scopes.as_str()))
}

/// `GET /admin/login`: what the console needs to sign in with the provider (nothing secret).
async fn login_config(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let (authorize_url, token_url, client_id, scope) = login(&state).ok_or_else(|| {
        ApiError::NotFound(
            "no single sign-on for the console: set server.jwt.authorize_url, token_url and client_id".into(),
        )
    })?;
    Ok(Json(json!({ "authorize_url": authorize_url, "token_url": token_url, "client_id": client_id, "scope": scope }))
        .into_response())
}

/// The console; its page may also talk to the provider's token endpoint.
async fn admin_page(State(state): State<Arc<AppState>>, h: HeaderMap) -> Response {
    let idp = login(&state)
        .and_then(|(_, token, _, _)| reqwest::Url::parse(token).ok())
        .map(|u| u.origin().ascii_serialization());
    let mut resp = page(&h, ADMIN_HTML);
    if let Some(origin) = idp {
        let csp = PAGE_CSP.replace("connect-src 'self'", &format!("connect-src 'self' {origin}"));
        if let Ok(v) = HeaderValue::from_str(&csp) {
            resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}

/// One of Kotae's own pages: strict CSP, never framed, never cached with someone's data.
fn page(h: &HeaderMap, body: &'static str) -> Response {
    let mut resp = asset(h, body, "text/html", false);
    let hs = resp.headers_mut();
    hs.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    hs.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    hs.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `server.cors_origins` entries are bare origins: `https://host[:port]`.
pub(crate) fn check_origin(o: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "server.cors_origins: '{o}' is not an origin; write the scheme, host and port only, e.g. \"https://intranet.example\""
        )
    };
    if o == "*" {
        return Err(
            "server.cors_origins: '*' is not allowed (the widget sends credentials); list the intranet origins".into(),
        );
    }
    let url = reqwest::Url::parse(o).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && !o.ends_with('/');
    if !plain || url.origin().ascii_serialization() != o.to_ascii_lowercase() {
        return Err(bad());
    }
    Ok(())
}

/// CORS for the pages that embed the widget: only the listed origins, with credentials.
pub(crate) fn cors(origins: &[String]) -> CorsLayer {
    let list: Vec<HeaderValue> =
        origins.iter().filter_map(|o| HeaderValue::from_str(&o.to_ascii_lowercase()).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .allow_credentials(true)
        .max_age(std::time::Duration::from_secs(600))
}

/// Does a state-changing request come from Kotae's own pages or an allowed origin? (The
/// browser sets `Origin` and `Sec-Fetch-Site`; a page cannot forge them.)
pub(crate) fn same_site(req: &Request, origins: &[String]) -> bool {
    let h = req.headers();
    if h.get("sec-fetch-site").is_some_and(|v| v == "same-origin") {
        return true;
    }
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let bare = origin.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
    !host.is_empty() && bare.eq_ignore_ascii_case(host)
}

/// `GET /api/sources/{chunk_id}`: the cited passage for the source viewer, if the client may
/// read it (else 404, the same as a chunk that does not exist).
pub(crate) async fn source(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::NotFound(format!("no source passage {id} for this client"));
    let Some(chunk) = kotae_index::ChunkId::parse(&id) else {
        return Err(ApiError::BadRequest(format!("'{id}' is not a chunk id (16 hex digits, from a citation)")));
    };
    let engine = state.engine()?;
    let groups = client.groups.clone();
    let (found, url) = tokio::task::spawn_blocking(move || {
        let found = engine.index.get_many(&[chunk], &groups)?;
        let url = found.first().and_then(|c| engine.index.document_link(&c.source));
        Ok::<_, kotae_index::Error>((found, url))
    })
    .await
    .map_err(join_error)?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let c = found.into_iter().next().ok_or_else(missing)?;
    Ok(Json(json!({
        "url": url,
        "chunk_id": c.id.to_string(),
        "source": c.source,
        "section": c.section.join(" > "),
        "kind": c.kind,
        "lang": c.lang,
        "text": c.text,
    }))
    .into_response())
}

/// `GET /admin/api/eval`: the latest nightly evaluation report.
pub(crate) async fn eval_report(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let none = || ApiError::NotFound("no evaluation report yet: run `kotae eval all` (nightly)".into());
    let dir = state.reports.get().ok_or_else(none)?;
    let text = match tokio::fs::read_to_string(dir.join("report.json")).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(none()),
        Err(e) => return Err(ApiError::Internal(format!("cannot read the evaluation report: {e}"))),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("the evaluation report is not valid JSON: {e}")))?;
    Ok(Json(v).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_must_be_bare_origins() {
        for ok in ["https://intranet.example", "http://127.0.0.1:8000", "https://a.example:8443"] {
            assert!(check_origin(ok).is_ok(), "{ok}");
        }
        for bad in ["*", "intranet.example", "https://intranet.example/", "https://x.example/path", "ftp://x.example"] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_widget_fits_its_size_budget() {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(WIDGET_JS.as_bytes()).unwrap();
        let n = z.finish().unwrap().len();
        // Everything a host page loads before the first question: the one script (its CSS
        // is inside it). The budget is 30 kB gzipped.
        println!("widget.js: {} bytes, {n} bytes gzipped", WIDGET_JS.len());
        assert!(n <= 30 * 1024, "widget.js is {n} bytes gzipped; the budget is 30 kB");
    }
}
