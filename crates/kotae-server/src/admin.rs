//! `/admin/api/…`: what admins read and decide (the audit trail, the guardrails' decisions,
//! the training-data quarantine). Every route needs the admin role (see `admin_only`), and
//! every change an admin makes is audited.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::store::AuditEntry;
use crate::{AppState, Client};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    #[serde(default)]
    pub limit: Option<usize>,
    /// Entries older than this id (the last id of the previous page).
    #[serde(default)]
    pub before: Option<i64>,
}

fn limit_of(p: &Page) -> Result<usize, ApiError> {
    match p.limit.unwrap_or(100) {
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::BadRequest(format!("`limit` is {n}: use 1 to 1000"))),
    }
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("{}: check the query parameters", e.body_text()))
}

/// `GET /admin/api/audit`: admin actions and authentication failures, newest first.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = q.map_err(bad_query)?;
    let entries = state.store.audit_entries(limit_of(&p)?, p.before)?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

/// `GET /admin/api/guard-events`: the guardrails' decisions (never the offending text).
pub async fn guard_events(
    State(state): State<Arc<AppState>>,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = q.map_err(bad_query)?;
    if p.before.is_some() {
        return Err(ApiError::BadRequest("`before` is not supported here; use `limit`".into()));
    }
    let events = state.store.guard_events(limit_of(&p)?)?;
    Ok(Json(json!({ "events": events })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineQuery {
    #[serde(default)]
    pub status: Option<String>,
}

/// `GET /admin/api/quarantine`: texts the training-data guard held back, for review.
pub async fn quarantine(
    State(state): State<Arc<AppState>>,
    q: Result<Query<QuarantineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    if let Some(s) = &q.status {
        if !["pending", "released", "rejected"].contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!("`status` is '{s}': use pending, released or rejected")));
        }
    }
    let items = state.store.quarantined(q.status.as_deref())?;
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// `released` (may be trained on) or `rejected`.
    pub status: String,
}

/// `POST /admin/api/quarantine/{id}`: release a held-back text into training data, or reject it.
pub async fn review(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    Path(id): Path<i64>,
    body: Result<Json<Review>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body?;
    let found = state.store.review_quarantine(id, &r.status);
    let result = match &found {
        Ok(true) => "ok",
        Ok(false) => "not_found",
        Err(_) => "failed",
    };
    state.store.audit(&AuditEntry {
        actor: admin.id.clone(),
        action: "quarantine.review".into(),
        target: format!("quarantine/{id}"),
        result: result.into(),
        detail: format!("status={}", r.status),
        ip: admin.ip.to_string(),
    });
    match found? {
        true => Ok(Json(json!({ "id": id, "status": r.status })).into_response()),
        false => Err(ApiError::NotFound(format!("no quarantined text {id}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackQuery {
    #[serde(default)]
    pub rating: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /admin/api/feedback?rating=down`: the review queue of votes, newest first, each with
/// its question, answer, sources and comment.
pub async fn feedback(
    State(state): State<Arc<AppState>>,
    q: Result<Query<FeedbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    if let Some(r) = q.rating.as_deref().filter(|r| *r != "up" && *r != "down") {
        return Err(ApiError::BadRequest(format!("`rating` is '{r}': use up or down, or leave it out")));
    }
    let limit = limit_of(&Page { limit: q.limit, before: None })?;
    let items = state.store.feedback_review(q.rating.as_deref(), limit)?;
    Ok(Json(json!({ "feedback": items })).into_response())
}

/// `GET /admin/api/keys`: the API keys, those of `server.api_keys` (`source: config`) and
/// those made here (`source: admin`, with who made and revoked them). Never a key or digest.
pub async fn keys(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut keys: Vec<serde_json::Value> = state
        .auth
        .configured_keys()
        .map(|(name, role, groups)| json!({ "name": name, "role": role, "groups": groups, "source": "config" }))
        .collect();
    keys.extend(state.store.api_keys()?);
    Ok(Json(json!({ "keys": keys })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub role: crate::Role,
}

/// `POST /admin/api/keys` `{name, groups, role}`: a new API key for a service, usable at once.
/// The key is in the answer only (Kotae keeps its SHA-256). Names are unique for good: a
/// name owns its conversations, so a revoked key's name is never given again.
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    body: Result<Json<NewKey>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(k) = body?;
    let name = k.name.trim().to_string();
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::BadRequest(format!(
            "the key name '{name}' cannot be used: give 1–64 letters, digits, '-', '_' or '.' (e.g. report-bot)"
        )));
    }
    let groups: Vec<String> = {
        let mut g: Vec<String> = k.groups.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect();
        g.sort();
        g.dedup();
        g
    };
    if state.auth.configured_keys().any(|(n, _, _)| n == name) {
        return Err(ApiError::Conflict(format!("a key named '{name}' is in server.api_keys: choose another name")));
    }
    let key = crate::auth::new_key();
    let role = match k.role {
        crate::Role::Admin => "admin",
        crate::Role::User => "user",
    };
    let added = state.store.add_api_key(&name, &crate::auth::key_digest(&key), role, &groups, &admin.id)?;
    state.store.audit(&AuditEntry {
        actor: admin.id.clone(),
        action: "keys.create".into(),
        target: format!("key:{name}"),
        result: if added { "ok" } else { "denied" }.into(),
        detail: format!("role={role}, groups={}", groups.join(",")),
        ip: admin.ip.to_string(),
    });
    if !added {
        return Err(ApiError::Conflict(format!(
            "the name '{name}' is taken (by a live or a revoked key; names own conversations): choose another"
        )));
    }
    Ok((
        axum::http::StatusCode::CREATED,
        Json(json!({
            "name": name,
            "key": key,
            "role": role,
            "groups": groups,
            "note": "the key is shown this once: Kotae keeps only its SHA-256",
        })),
    )
        .into_response())
}

/// `DELETE /admin/api/keys/{name}`: revoke a key made here; it is refused from the next
/// request on, on every replica. Keys of `server.api_keys` are removed from the file.
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if state.auth.configured_keys().any(|(n, _, _)| n == name) {
        return Err(ApiError::Conflict(format!(
            "'{name}' is a key of server.api_keys: remove it from kotae.toml and restart (keys made with POST /admin/api/keys are revoked at once)"
        )));
    }
    let r = state.store.revoke_api_key(&name, &admin.id)?;
    state.store.audit(&AuditEntry {
        actor: admin.id.clone(),
        action: "keys.revoke".into(),
        target: format!("key:{name}"),
        result: match r {
            Some(true) => "ok",
            Some(false) => "already_revoked",
            None => "not_found",
        }
        .into(),
        detail: String::new(),
        ip: admin.ip.to_string(),
    });
    match r {
        Some(true) => Ok(Json(json!({ "name": name, "revoked": true })).into_response()),
        Some(false) => Err(ApiError::Conflict(format!("the key '{name}' is already revoked"))),
        None => Err(ApiError::NotFound(format!("no key named '{name}'"))),
    }
}
