//! `/admin/api/documents` and `/admin/api/jobs`: admins add, replace and delete documents
//! while Kotae serves. Uploads are streamed to a temporary file, checked, and moved into the
//! knowledge base's upload folder only when every file of the request arrived whole; then a
//! background job ingests them into the live index, whose searches see each commit at once (a
//! document's old chunks or its new ones, never a mix). Jobs are kept in the state database:
//! a job that a crash interrupted is reported failed at the next start and can be run again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::store::{AccessRuleRow, AuditEntry, Lane};
use crate::{AppState, Client};

/// What the admin API needs from the program that owns ingestion (the `kotae` app).
pub trait Knowledge: Send + Sync {
    /// Where uploaded documents live (one folder per knowledge base).
    fn uploads_dir(&self) -> PathBuf;
    /// Largest file accepted, bytes.
    fn max_file_bytes(&self) -> u64;
    /// Why a file name cannot be ingested (unsupported type), if it cannot.
    fn check_name(&self, name: &str) -> Result<(), String>;
    /// Ingest these files (all in `uploads_dir`) with these groups: the run's summary (with
    /// `"cancelled": true` when `progress` asked it to stop). `progress` gets how far the run
    /// is, as often as the run likes, and returns `false` once the job is cancelled: the run
    /// then stops before its next commit (what it committed before stays).
    fn ingest(&self, files: &[PathBuf], groups: &[String], progress: Arc<Progress>) -> Result<Value, String>;
    /// Read every indexed document again from where it came from (changed files re-ingested,
    /// all of them with `force`; files that are gone reported): the run's summary.
    fn reindex(&self, force: bool, progress: Arc<Progress>) -> Result<Value, String>;
    /// Remove a document from the index; whether it was there.
    fn remove(&self, source: &str) -> Result<bool, String>;
    /// Every indexed document with its status, and who may read what (`access_rules()`, the
    /// default groups, the confidentiality markers).
    fn documents(&self) -> Value;
    /// The knowledge base's name (rules set through the admin API are kept per knowledge base).
    fn kb(&self) -> String;
    /// What the jobs that change this knowledge base are queued under in the state database:
    /// its identity, shared by its writer and its replicas (the knowledge base's `kb.id`).
    fn queue(&self) -> String {
        self.kb()
    }
    /// The canonical path of a folder or file on this server that a rule names, or why it
    /// cannot be one.
    fn rule_path(&self, path: &str) -> Result<String, String>;
    /// The folder rules admins set, as the state database holds them now: every run from now
    /// on applies them (with kotae.toml's; an admin rule wins for the same folder).
    fn set_admin_rules(&self, rules: Vec<AccessRuleRow>);
    /// The folder rules in force, longest path first: `{path, groups, origin}` (`origin`
    /// `config` or `admin`, with who set it and when).
    fn access_rules(&self) -> Value;
}

/// Load the admin rules of `k`'s knowledge base from the store into it. A run that cannot
/// read them does not run (it could give documents groups the rules forbid).
fn refresh_rules(state: &AppState, k: &dyn Knowledge) -> Result<(), ApiError> {
    k.set_admin_rules(state.store.access_rules(&k.kb())?);
    Ok(())
}

fn knowledge(state: &AppState) -> Result<Arc<dyn Knowledge>, ApiError> {
    state
        .engine()?
        .knowledge
        .clone()
        .ok_or_else(|| ApiError::NotReady("this server cannot change its knowledge base".into()))
}

pub(crate) fn audit(state: &AppState, who: &Client, action: &str, target: &str, result: &str, detail: String) {
    state.store.audit(&AuditEntry {
        actor: who.id.clone(),
        action: action.into(),
        target: target.into(),
        result: result.into(),
        detail,
        ip: who.ip.to_string(),
    });
}

/// `GET /admin/api/documents`: every document with its status (groups, chunks, languages,
/// version, flagged chunks), the error of its latest upload job if that job left it out (it
/// keeps the version listed), and `failed`: uploads that never got in, with why.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    refresh_rules(&state, k.as_ref())?;
    let mut docs = tokio::task::spawn_blocking(move || k.documents()).await.map_err(crate::api::join_error)?;
    attach_errors(&mut docs, &state.store.jobs(200)?);
    Ok(Json(docs).into_response())
}

/// What the latest upload jobs said about each file, oldest job first, so that a later
/// success clears an earlier error: onto the listed documents, and the rest as `failed`.
fn attach_errors(docs: &mut Value, jobs: &[Value]) {
    let mut latest: std::collections::BTreeMap<String, Value> = Default::default();
    for j in jobs.iter().rev().filter(|j| j["kind"] == "ingest") {
        let files: Vec<&str> =
            j["detail"]["files"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let error = |reason: &Value| json!({ "reason": reason, "job": j["id"], "unix": j["finished_unix"] });
        match j["status"].as_str() {
            Some("done") => {
                let skipped: std::collections::BTreeMap<&str, &Value> = j["report"]["skipped"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| Some((s["path"].as_str()?, &s["reason"]))).collect())
                    .unwrap_or_default();
                for f in files {
                    match skipped.get(f) {
                        Some(reason) => latest.insert(f.to_string(), error(reason)),
                        None => latest.remove(f),
                    };
                }
            }
            Some("failed") => {
                for f in files {
                    latest.insert(f.to_string(), error(&j["report"]["error"]));
                }
            }
            _ => {}
        }
    }
    if let Some(list) = docs["documents"].as_array_mut() {
        for d in list {
            if let Some(e) = d["source"].as_str().and_then(|s| latest.remove(s)) {
                d["error"] = e;
            }
        }
    }
    docs["failed"] = latest.into_iter().map(|(source, e)| json!({ "source": source, "error": e })).collect();
}

/// A file name as the uploads folder may hold it: its last path component, no hidden names.
fn safe_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if name.is_empty() || name.starts_with('.') || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "the file name '{raw}' cannot be stored: give a plain name such as manual.md"
        )));
    }
    Ok(name.to_string())
}

/// Removes the temporary files of an upload that did not complete.
struct Staged(Vec<(PathBuf, PathBuf)>);

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.0 {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// `POST /admin/api/documents` (multipart): `groups` (comma-separated, required) and one or
/// more `file` parts. New names are added, existing names replaced by the new version.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let dir = k.uploads_dir();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
    let limit = k.max_file_bytes();
    let mut groups: Vec<String> = Vec::new();
    let mut staged = Staged(Vec::new());
    let bad = |m: String| ApiError::BadRequest(m);
    while let Some(mut field) =
        form.next_field().await.map_err(|e| bad(format!("the upload is not valid multipart/form-data: {e}")))?
    {
        match field.name() {
            Some("groups") => {
                let text = field.text().await.map_err(|e| bad(format!("`groups`: {e}")))?;
                groups.extend(text.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()));
            }
            Some("file") => {
                let name = safe_name(field.file_name().unwrap_or(""))?;
                k.check_name(&name).map_err(|e| bad(format!("{name}: {e}")))?;
                if staged.0.iter().any(|(_, p)| p.file_name().is_some_and(|n| n == name.as_str())) {
                    return Err(bad(format!("{name} is in the upload twice")));
                }
                let tmp = dir.join(format!(".upload-{}", uuid::Uuid::new_v4()));
                staged.0.push((tmp.clone(), dir.join(&name)));
                let mut out = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| ApiError::Internal(format!("{}: {e}", tmp.display())))?;
                let mut size = 0u64;
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| bad(format!("{name}: the upload broke off: {e}")))?
                {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(bad(format!(
                            "{name} is larger than {limit} bytes (ingest.max_file_bytes): split it or raise the limit"
                        )));
                    }
                    tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                        .await
                        .map_err(|e| ApiError::Internal(format!("{}: {e}", tmp.display())))?;
                }
                tokio::io::AsyncWriteExt::flush(&mut out).await.map_err(|e| ApiError::Internal(e.to_string()))?;
                if size == 0 {
                    return Err(bad(format!("{name} is empty")));
                }
            }
            other => return Err(bad(format!("unexpected form field {other:?}: send `groups` and `file` parts"))),
        }
    }
    if staged.0.is_empty() {
        return Err(bad("no `file` part in the upload".into()));
    }
    if groups.is_empty() {
        return Err(bad("`groups` is required: who may read these documents (e.g. public, staff, hr)".into()));
    }
    // Every file arrived whole: move them into place (same folder, so each rename is atomic).
    let mut files = Vec::new();
    for (tmp, dest) in std::mem::take(&mut staged.0) {
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApiError::Internal(format!("{}: {e}", dest.display())));
        }
        files.push(dest);
    }
    let names: Vec<String> =
        files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    let detail = json!({ "files": names, "groups": groups });
    let id = state.store.create_job_for(&k.queue(), "ingest", &admin.id, &detail)?;
    audit(
        &state,
        &admin,
        "documents.upload",
        &names.join(","),
        "accepted",
        format!("job {id}, groups {}", groups.join(",")),
    );
    queue_job(&state);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id, "files": names }))).into_response())
}

/// `DELETE /admin/api/documents/{*source}`: remove a document from the index (and its
/// uploaded file).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    UrlPath(source): UrlPath<String>,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let id = state.store.create_job_for(&k.queue(), "remove", &admin.id, &json!({ "source": source }))?;
    audit(&state, &admin, "documents.remove", &source, "accepted", format!("job {id}"));
    queue_job(&state);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id }))).into_response())
}

/// `PATCH /admin/api/documents/{*source}` with `{"groups": [...]}`: who may read an uploaded
/// document, changed without uploading it again (a job re-indexes its file with the new
/// groups; until it ends, the old groups apply). Documents ingested from a folder take their
/// groups from the folder's rules: change those instead.
pub async fn set_groups(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    UrlPath(source): UrlPath<String>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let groups = groups_of(&body)?;
    let file = k.uploads_dir().join(&source);
    if Path::new(&source).components().count() != 1 || !file.is_file() {
        return Err(ApiError::BadRequest(format!(
            "{source} was not uploaded here: its groups come from the folder rules it was ingested with (ingest.access, --groups)"
        )));
    }
    let id =
        state.store.create_job_for(&k.queue(), "ingest", &admin.id, &json!({ "files": [source], "groups": groups }))?;
    audit(&state, &admin, "documents.groups", &source, "accepted", format!("job {id}, groups {}", groups.join(",")));
    queue_job(&state);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id }))).into_response())
}

/// The body's `groups`: a non-empty list of access group names.
fn groups_of(body: &Value) -> Result<Vec<String>, ApiError> {
    let mut groups: Vec<String> = body["groups"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_str()).map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect())
        .unwrap_or_default();
    groups.sort();
    groups.dedup();
    if groups.is_empty() {
        return Err(ApiError::BadRequest(
            "give `groups`, a non-empty list of access groups (e.g. [\"public\"] or [\"hr\", \"managers\"])".into(),
        ));
    }
    Ok(groups)
}

/// `GET /admin/api/access-rules`: the folder → groups rules in force (kotae.toml's and those
/// set here, longest path first: the longest that holds a file decides who may read it), the
/// default groups of unlabelled documents and the confidentiality markers.
pub async fn access_rules(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    refresh_rules(&state, k.as_ref())?;
    let docs = tokio::task::spawn_blocking(move || k.documents()).await.map_err(crate::api::join_error)?;
    Ok(Json(json!({
        "rules": docs["access_rules"],
        "default_groups": docs["default_groups"],
        "markers": docs["markers"],
    }))
    .into_response())
}

/// `PUT /admin/api/access-rules` with `{"path": "/srv/manuals/hr", "groups": ["hr"]}`: who may
/// read the documents under a folder (or one file) on this server, set while Kotae serves. It
/// replaces a rule for the same folder (kotae.toml's too). A re-index job applies it to the
/// documents already indexed (their vectors are reused); until the job ends, the old groups
/// apply. Revocation works the same way: give the folder the narrower groups.
pub async fn set_access_rule(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let raw = body["path"].as_str().map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err(ApiError::BadRequest(
            "give `path`, a folder or file on the server (absolute, or relative to the server's working directory)"
                .into(),
        ));
    }
    let groups = groups_of(&body)?;
    let path = k.rule_path(raw).map_err(ApiError::BadRequest)?;
    state.store.set_access_rule(&k.kb(), &path, &groups, &admin.id)?;
    let id = apply_rules(&state, k, &admin, "access_rules.set", &path, &format!("groups {}", groups.join(",")))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id, "rule": { "path": path, "groups": groups } }))).into_response())
}

/// `DELETE /admin/api/access-rules?path=…`: remove a rule set here. Documents under it keep
/// the groups they have unless another rule (a shorter folder's, or kotae.toml's for the same
/// folder) now applies: a re-index job applies what is left. Rules in kotae.toml are changed
/// there.
pub async fn remove_access_rule(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let raw = q.get("path").map(|p| p.trim()).unwrap_or_default();
    if raw.is_empty() {
        return Err(ApiError::BadRequest("give the rule's folder as `?path=`".into()));
    }
    // A folder that is gone can still lose its rule: then the path is the rule's own.
    let path = k.rule_path(raw).unwrap_or_else(|_| raw.to_string());
    if !state.store.remove_access_rule(&k.kb(), &path)? {
        let in_config = k.access_rules().as_array().is_some_and(|a| a.iter().any(|r| r["path"] == path.as_str()));
        return Err(if in_config {
            ApiError::Conflict(format!("the rule for {path} is in kotae.toml ([[ingest.access]]): change it there"))
        } else {
            ApiError::NotFound(format!("no rule for {path} was set through the admin API"))
        });
    }
    let id = apply_rules(&state, k, &admin, "access_rules.remove", &path, "removed")?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id, "removed": path }))).into_response())
}

/// After a rule for `path` changed: the rules reloaded, the change audited, and a re-index job
/// started that applies it to the indexed documents. The job's id.
fn apply_rules(
    state: &Arc<AppState>,
    k: Arc<dyn Knowledge>,
    admin: &Client,
    action: &str,
    path: &str,
    what: &str,
) -> Result<String, ApiError> {
    refresh_rules(state, k.as_ref())?;
    let id = state.store.create_job_for(&k.queue(), "reindex", &admin.id, &json!({ "force": false, "rule": path }))?;
    audit(state, admin, action, path, "ok", format!("{what}, job {id}"));
    queue_job(state);
    Ok(id)
}

/// What a running job calls with how far it is; `false`: stop, the job is cancelled.
pub type Progress = dyn Fn(Value) -> bool + Send + Sync;

/// How often a running job's progress is written to the state database (where every replica
/// reads it, and where a cancel asked on another replica is seen).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The cancel flags of the jobs this process runs.
#[derive(Default)]
pub(crate) struct Cancels(std::sync::Mutex<std::collections::HashMap<String, Arc<AtomicBool>>>);

impl Cancels {
    fn register(&self, id: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), flag.clone());
        flag
    }
    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    fn cancel(&self, id: &str) {
        if let Some(f) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// A job's progress reporter: writes the latest progress to the store at most every
/// `PROGRESS_EVERY`, and says stop once the job's cancel flag is set (here, or in the store
/// by another replica).
fn reporter(state: &Arc<AppState>, id: &str, cancel: Arc<AtomicBool>) -> Arc<Progress> {
    let (state, id) = (state.clone(), id.to_string());
    let last = std::sync::Mutex::new(None::<std::time::Instant>);
    Arc::new(move |p: Value| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            *last = Some(std::time::Instant::now());
            match state.store.set_job_progress(&id, &p) {
                Ok(true) => cancel.store(true, Ordering::SeqCst),
                Ok(false) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot record the job's progress"),
            }
        }
        !cancel.load(Ordering::SeqCst)
    })
}

enum Work {
    Ingest { files: Vec<PathBuf>, groups: Vec<String> },
    Reindex { force: bool },
    Remove { source: String },
    Finetune { options: Value },
}

/// While the returned guard lives, the job's heartbeat is written every `JOB_HEARTBEAT_S`
/// seconds (replicas sharing the state tell a live job from a dead one by it).
fn heartbeat(state: &Arc<AppState>, id: &str) -> AbortOnDrop {
    let (st, id) = (state.clone(), id.to_string());
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(crate::store::JOB_HEARTBEAT_S));
        loop {
            tick.tick().await;
            let (st, id) = (st.clone(), id.clone());
            let _ = tokio::task::spawn_blocking(move || st.store.touch_job(&id)).await;
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the job runner looks for jobs that other replicas queued in a shared state
/// database (its own wake it at once).
const JOB_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// A job was queued: wake this process's runners (started on first use). On a replica
/// nothing runs here: the writer's runners take the job from the shared state database.
fn queue_job(state: &Arc<AppState>) {
    if state.cfg.role == crate::ServerRole::Replica {
        return;
    }
    start_job_runner(state);
    for w in &state.job_wake {
        w.notify_one();
    }
}

/// Start the process's job runner unless it runs or this is a replica: once the knowledge
/// base is loaded it claims queued jobs (this process's, another replica's, or left queued by
/// a stop) in two lanes (`store::Lane`): ingest, re-index and remove jobs one at a time oldest
/// first, and beside them fine-tuning jobs one at a time. A claim is one conditional update,
/// so a job never runs twice, whichever replicas look.
pub fn start_job_runner(state: &Arc<AppState>) {
    if state.cfg.role == crate::ServerRole::Replica {
        return;
    }
    state.job_runner.get_or_init(|| {
        // A weak handle: the runner must not keep the state (and the index) alive.
        tokio::spawn(run_jobs(Arc::downgrade(state))).abort_handle()
    });
}

async fn run_jobs(state: std::sync::Weak<AppState>) {
    let Some((shared, wakes)) = state.upgrade().map(|s| (s.store.backend() == "postgres", s.job_wake.clone())) else {
        return;
    };
    // Until the engine is loaded there is no knowledge base to change.
    let kb = loop {
        match state.upgrade() {
            None => return,
            Some(st) => {
                if let Ok(k) = knowledge(&st) {
                    break k.queue();
                }
            }
        }
        tokio::time::sleep(JOB_POLL).await;
    };
    // This process holds the knowledge base now: what its writer was running when it stopped
    // is over, and jobs queued before jobs named their knowledge base are this one's. Done
    // once, before either lane claims (a lane's fresh claim must not be failed as a leftover).
    if let Some(st) = state.upgrade() {
        let kb = kb.clone();
        let r = tokio::task::spawn_blocking(move || {
            Ok::<_, ApiError>((st.store.fail_jobs_of_stopped_writer(&kb)?, st.store.adopt_unnamed_jobs(&kb)?))
        })
        .await;
        match r {
            Ok(Ok((failed, adopted))) if failed + adopted > 0 => tracing::warn!(
                failed,
                adopted,
                "jobs the writer's last stop cut short are marked failed; older queued jobs adopted"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the job queue"),
            _ => {}
        }
    }
    let [index, train] = Lane::ALL;
    tokio::join!(
        run_lane(state.clone(), index, wakes[0].clone(), shared),
        run_lane(state.clone(), train, wakes[1].clone(), shared)
    );
}

/// One lane of the job runner: claim the lane's oldest queued job, run it, look again.
async fn run_lane(state: std::sync::Weak<AppState>, lane: Lane, wake: Arc<tokio::sync::Notify>, shared: bool) {
    loop {
        let (ran, loaded) = match state.upgrade() {
            None => return,
            Some(state) => match knowledge(&state) {
                // The engine is being replaced: look again soon.
                Err(_) => (false, false),
                Ok(k) => {
                    let (st, kb) = (state.clone(), k.queue());
                    match tokio::task::spawn_blocking(move || st.store.claim_job(&kb, lane)).await {
                        Ok(Ok(Some(job))) => {
                            run_claimed(&state, k, job).await;
                            (true, true)
                        }
                        Ok(Ok(None)) => (false, true),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, lane = lane.name(), "cannot read the job queue");
                            (false, true)
                        }
                        Err(_) => (false, true),
                    }
                }
            },
        };
        if ran {
            continue;
        }
        // Only replicas sharing the state database queue jobs this process is not told of;
        // else its own wake-ups are enough.
        if loaded && !shared {
            wake.notified().await;
        } else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(JOB_POLL) => {}
            }
        }
    }
}

impl Work {
    /// The work a queued job records (`detail`): uploaded files are named relative to the
    /// upload folder, which the replicas share.
    fn of(job: &Value, uploads: &Path) -> Result<Work, String> {
        let d = &job["detail"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
        };
        match job["kind"].as_str() {
            Some("ingest") => {
                let files: Vec<PathBuf> = strings(&d["files"]).iter().map(|f| uploads.join(f)).collect();
                if files.is_empty() {
                    return Err("the job names no files".into());
                }
                Ok(Work::Ingest { files, groups: strings(&d["groups"]) })
            }
            Some("reindex") => Ok(Work::Reindex { force: d["force"].as_bool().unwrap_or(false) }),
            Some("remove") => d["source"]
                .as_str()
                .map(|s| Work::Remove { source: s.to_string() })
                .ok_or_else(|| "the job names no source".to_string()),
            // LoRA is its own kind (see `store::Lane`); an earlier version queued it as a task
            // of `finetune`, which runs the same.
            Some("finetune" | "lora") => Ok(Work::Finetune { options: d.clone() }),
            other => Err(format!("a {other:?} job does not run from the queue")),
        }
    }
}

/// Run a claimed job on the blocking pool, recording its end in the store. A job whose cancel
/// was asked for before it started never starts.
async fn run_claimed(state: &Arc<AppState>, k: Arc<dyn Knowledge>, job: Value) {
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let cancel = state.cancels.register(&id);
    // Read again now that a cancel asked here would find the flag: one asked between the
    // claim and the registration is in the store.
    let job = state.store.job(&id).ok().flatten().unwrap_or(job);
    if !job["cancel_requested"].is_null() {
        let _ = state.store.set_job(&id, "cancelled", Some(&json!({ "cancelled": true, "files_ingested": 0 })));
        tracing::info!(job = %id, "admin job cancelled before it started");
        state.cancels.forget(&id);
        return;
    }
    let uploads = k.uploads_dir();
    let work = match Work::of(&job, &uploads) {
        Ok(w) => w,
        Err(e) => {
            let _ = state.store.set_job(&id, "failed", Some(&json!({ "error": e })));
            state.cancels.forget(&id);
            return;
        }
    };
    // The rules as they are when the job starts (another replica may have changed them).
    let rules = refresh_rules(state, k.as_ref()).map_err(|e| e.to_string());
    let progress = reporter(state, &id, cancel);
    let (trainer, engine) = (state.trainer.get().cloned(), state.engine());
    run_recorded(state, &id, move || match work {
        Work::Finetune { options } => match (trainer, engine) {
            (Some(train), Ok(engine)) => train(&engine, &options, progress),
            (None, _) => Err("this server cannot run fine-tuning jobs".into()),
            (_, Err(e)) => Err(e.to_string()),
        },
        _ if rules.is_err() => Err(format!("cannot read the access rules: {}", rules.err().unwrap_or_default())),
        Work::Ingest { files, groups } => k.ingest(&files, &groups, progress),
        Work::Reindex { force } => k.reindex(force, progress),
        Work::Remove { source } => {
            let removed = k.remove(&source)?;
            // Its uploaded file goes too, so a later re-ingest of the folder does not bring it back.
            let file = uploads.join(&source);
            if Path::new(&source).components().count() == 1 && file.exists() {
                std::fs::remove_file(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            }
            if removed {
                Ok(json!({ "removed": source }))
            } else {
                Err(format!("no document {source} in the knowledge base"))
            }
        }
    })
    .await;
    state.cancels.forget(&id);
}

/// Run `work` on the blocking pool as job `id`: marked running, its heartbeat kept while it
/// runs, its end (`done` with the report, `cancelled` when the report says so, or `failed`
/// with the error) recorded. The status.
async fn run_recorded(
    state: &Arc<AppState>,
    id: &str,
    work: impl FnOnce() -> Result<Value, String> + Send + 'static,
) -> &'static str {
    let _ = state.store.set_job(id, "running", None);
    let _alive = heartbeat(state, id);
    let result = tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(format!("the job failed: {e}")));
    let (status, report) = match result {
        Ok(v) if v["cancelled"] == true => ("cancelled", v),
        Ok(v) => ("done", v),
        Err(e) => ("failed", json!({ "error": e })),
    };
    if let Err(e) = state.store.set_job(id, status, Some(&report)) {
        tracing::error!(error = %e, job = %id, "cannot record the job's end");
    }
    tracing::info!(job = %id, status, "admin job ended");
    status
}

/// `POST /admin/api/eval/runs`: run the nightly evaluation suites on the served engine, as a
/// job (`kind` "eval"), one at a time. The body may set `split` (`dev`, `heldout`, `all`),
/// `limit` (answer questions per file) and `red_team` (harmful prompts per language). The job's
/// report says whether it passed; the console's evaluation tab shows the new report. This is
/// how a scheduler evaluates a running deployment (`kotae eval all --server`): a second process
/// could not open the knowledge base the server holds.
pub async fn start_eval(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let opts = options(&body)?;
    let Some(o) = opts.as_object() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object: {\"split\", \"limit\", \"red_team\"}".into(),
        ));
    };
    for (k, v) in o {
        let ok = match k.as_str() {
            "split" => matches!(v.as_str(), Some("dev" | "heldout" | "all")),
            "limit" => v.as_u64().is_some_and(|n| (1..=100_000).contains(&n)),
            "red_team" => v.as_u64().is_some_and(|n| n <= 1000),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown field `{k}`: the options are split, limit and red_team"
                )))
            }
        };
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "bad `{k}`: {v} (split is dev, heldout or all; limit 1–100000; red_team 0–1000)"
            )));
        }
    }
    let Some(evaluate) = state.evaluator.get().cloned() else {
        return Err(ApiError::NotReady("this server cannot run the evaluation suites".into()));
    };
    let engine = state.engine()?;
    let id = {
        let mut running = state.eval_job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = running.as_ref() {
            return Err(ApiError::Conflict(format!("an evaluation is already running (job {j}): wait for it")));
        }
        let id = state.store.create_job("eval", &admin.id, &opts)?;
        *running = Some(id.clone());
        id
    };
    audit(&state, &admin, "eval.run", "all", "accepted", format!("job {id}"));
    let st = state.clone();
    let job = id.clone();
    tokio::spawn(async move {
        run_recorded(&st, &job, move || evaluate(&engine, &opts)).await;
        *st.eval_job.lock().unwrap_or_else(|p| p.into_inner()) = None;
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id }))).into_response())
}

/// `POST /admin/api/finetune`: train a classification head on the frozen embedder (the seed
/// article's transfer learning), or LoRA adapters on the generator (`{"task": "lora"}`, the
/// seed's fine-tuning; optional `base`, `epochs`, `max_steps`, `r`: the merged model lands
/// under `<data-dir>/runs/` and `/admin/api/generator` offers it), from this knowledge base,
/// as a job (`kind` "finetune" for a head, "lora" for the generator; run in the writer's
/// training lane, beside uploads):
/// `{"task": "routing"}` (inquiry → the help desk's category, from the inquiry logs) or
/// `{"task": "safety"}` (safe / harmful / jailbreak; the company's questions as safe examples),
/// optionally `epochs` (1–1000), `hidden` (0–4096; 0: a linear head) and `tune_layers` (0–6:
/// the embedder's top layers fine-tuned with the head). Any replica accepts it; the writer
/// runs it; every process serving the data folder classifies with the new head once it is
/// saved, without a restart. One fine-tuning job at a time (409 while one is queued or
/// running); a cancelled one stops at its next epoch and saves nothing.
pub async fn start_finetune(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    const FIELDS: &str = "task (routing, safety or lora), epochs (1–1000), hidden (0–4096), tune_layers (0–6); for lora: base (a catalog generator), max_steps (1–100000), r (1–256)";
    let opts = options(&body)?;
    let Some(o) = opts.as_object() else {
        return Err(ApiError::BadRequest(format!("the body must be a JSON object: {FIELDS}")));
    };
    for (k, v) in o {
        let ok = match k.as_str() {
            "task" => matches!(v.as_str(), Some("routing" | "safety" | "lora")),
            "epochs" => v.as_u64().is_some_and(|n| (1..=1000).contains(&n)),
            "hidden" => v.as_u64().is_some_and(|n| n <= 4096),
            "tune_layers" => v.as_u64().is_some_and(|n| n <= 6),
            "base" => v.as_str().is_some_and(|b| !b.trim().is_empty() && b.len() <= 200),
            "max_steps" => v.as_u64().is_some_and(|n| (1..=100_000).contains(&n)),
            "r" => v.as_u64().is_some_and(|n| (1..=256).contains(&n)),
            _ => return Err(ApiError::BadRequest(format!("unknown field `{k}`: the fields are {FIELDS}"))),
        };
        if !ok {
            return Err(ApiError::BadRequest(format!("bad `{k}`: {v} ({FIELDS})")));
        }
    }
    if o.get("task").is_none() {
        return Err(ApiError::BadRequest(format!("`task` is missing: {FIELDS}")));
    }
    let lora = o["task"] == "lora";
    if let Some(k) = ["base", "max_steps", "r"].iter().find(|k| !lora && o.contains_key(**k)) {
        return Err(ApiError::BadRequest(format!("`{k}` is for task lora only: {FIELDS}")));
    }
    if let Some(k) = ["hidden", "tune_layers"].iter().find(|k| lora && o.contains_key(**k)) {
        return Err(ApiError::BadRequest(format!("`{k}` is for the heads (routing, safety), not lora: {FIELDS}")));
    }
    if state.trainer.get().is_none() {
        return Err(ApiError::NotReady("this server cannot run fine-tuning jobs".into()));
    }
    // One at a time: fine-tuning jobs share the writer's training lane (uploads go on in
    // the other lane while one trains).
    let pending = state.store.jobs(200)?.into_iter().find(|j| {
        (j["kind"] == "finetune" || j["kind"] == "lora") && (j["status"] == "queued" || j["status"] == "running")
    });
    if let Some(j) = pending {
        return Err(ApiError::Conflict(format!(
            "fine-tuning job {} is {}: wait for it, or cancel it (POST /admin/api/jobs/{}/cancel)",
            j["id"].as_str().unwrap_or_default(),
            j["status"].as_str().unwrap_or_default(),
            j["id"].as_str().unwrap_or_default()
        )));
    }
    let k = knowledge(&state)?;
    let id = state.store.create_job_for(&k.queue(), if lora { "lora" } else { "finetune" }, &admin.id, &opts)?;
    let action = if lora { "finetune.lora" } else { "finetune.head" };
    audit(&state, &admin, action, o["task"].as_str().unwrap_or_default(), "accepted", format!("job {id}"));
    queue_job(&state);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id }))).into_response())
}

/// `GET /admin/api/jobs`.
pub async fn jobs(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "jobs": state.store.jobs(100)? })).into_response())
}

/// `GET /admin/api/jobs/{id}`.
pub async fn job(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    match state.store.job(&id)? {
        Some(j) => Ok(Json(j).into_response()),
        None => Err(ApiError::NotFound(format!("no job {id}"))),
    }
}

/// A job's options: the JSON body, or `{}` when there is none.
fn options(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

/// `POST /admin/api/reindex` (body `{"force": true}` optional): a job that reads every
/// indexed document again from the folder it came from: changed files are re-ingested (with
/// `force`, all of them: after a chunking or cleaning change; vectors of unchanged chunks are
/// reused), files that are gone are reported (their indexed version keeps serving), new files
/// in those folders are left to `kotae ingest`.
pub async fn reindex(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let opts = options(&body)?;
    let force = match opts.as_object().map(|o| o.iter().collect::<Vec<_>>()).as_deref() {
        Some([]) => false,
        Some([(k, v)]) if k.as_str() == "force" && v.is_boolean() => v.as_bool().unwrap_or(false),
        _ => return Err(ApiError::BadRequest("the body is {} or {\"force\": true|false}".into())),
    };
    let id = state.store.create_job_for(&k.queue(), "reindex", &admin.id, &json!({ "force": force }))?;
    audit(&state, &admin, "documents.reindex", "all", "accepted", format!("job {id}, force {force}"));
    queue_job(&state);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id }))).into_response())
}

/// `POST /admin/api/jobs/{id}/cancel`: stop a queued or running ingest or remove job. A queued
/// job never starts; a running ingest stops before its next commit: documents committed before
/// stay ingested (the report says which), the rest is not, and nothing is left half-indexed.
/// The job ends `cancelled` and can be run again (`retry`), which skips what is already in.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let Some(j) = state.store.job(&id)? else { return Err(ApiError::NotFound(format!("no job {id}"))) };
    if j["kind"] == "eval" {
        return Err(ApiError::Conflict(format!(
            "job {id} is an evaluation run, which cannot be cancelled: it ends on its own"
        )));
    }
    if !state.store.request_cancel(&id, &admin.id)? {
        return Err(ApiError::Conflict(format!("job {id} has already ended ({}): nothing to cancel", j["status"])));
    }
    state.cancels.cancel(&id);
    audit(&state, &admin, "jobs.cancel", &id, "accepted", format!("{} job", j["kind"].as_str().unwrap_or("")));
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": id, "status": "cancelling" }))).into_response())
}

/// `GET /admin/api/jobs/{id}/events`: the job as it moves on, as server-sent events: a
/// `progress` event (the job: status and progress) whenever it changes, then one `end` event
/// with the finished job (its report), and the stream closes.
pub async fn events(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if state.store.job(&id)?.is_none() {
        return Err(ApiError::NotFound(format!("no job {id}")));
    }
    let stream =
        futures_util::stream::unfold((state, id, None::<Value>, false), |(state, id, last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let (st, jid) = (state.clone(), id.clone());
                let job = tokio::task::spawn_blocking(move || st.store.job(&jid)).await.ok()?.ok().flatten()?;
                let finished = matches!(job["status"].as_str(), Some("done" | "failed" | "cancelled"));
                let seen = json!([job["status"], job["progress"], job["cancel_requested"]]);
                if finished {
                    let ev = Event::default().event("end").json_data(&job).ok()?;
                    return Some((Ok::<_, std::convert::Infallible>(ev), (state, id, Some(seen), true)));
                }
                if last.as_ref() != Some(&seen) {
                    let ev = Event::default().event("progress").json_data(&job).ok()?;
                    return Some((Ok(ev), (state, id, Some(seen), false)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// `POST /admin/api/jobs/{id}/retry`: run a failed or cancelled ingest job again (its files
/// are still in the upload folder).
pub async fn retry(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let k = knowledge(&state)?;
    let Some(j) = state.store.job(&id)? else { return Err(ApiError::NotFound(format!("no job {id}"))) };
    if !(j["status"] == "failed" || j["status"] == "cancelled") || j["kind"] != "ingest" {
        return Err(ApiError::BadRequest(format!(
            "job {id} is {} {}: only failed or cancelled ingest jobs run again",
            j["status"], j["kind"]
        )));
    }
    let dir = k.uploads_dir();
    let files: Vec<&str> = j["detail"]["files"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).filter(|f| dir.join(f).exists()).collect())
        .unwrap_or_default();
    let groups: Vec<String> = j["detail"]["groups"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if files.is_empty() {
        return Err(ApiError::BadRequest(format!("the files of job {id} are gone: upload them again")));
    }
    let detail = json!({ "files": files, "groups": groups, "retry_of": id });
    let new = state.store.create_job_for(&k.queue(), "ingest", &admin.id, &detail)?;
    audit(&state, &admin, "jobs.retry", &id, "accepted", format!("job {new}"));
    queue_job(&state);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": new }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_upload_job_says_which_documents_failed() {
        let job = |id: &str, status: &str, files: &[&str], report: Value| json!({ "id": id, "kind": "ingest", "status": status, "detail": { "files": files }, "report": report, "finished_unix": 1 });
        // Newest first, as the store lists them.
        let jobs = vec![
            job("j4", "done", &["a.md"], json!({ "skipped": [] })),
            job("j3", "failed", &["c.md"], json!({ "error": "the embedder failed" })),
            job(
                "j2",
                "done",
                &["b.md", "d.pdf"],
                json!({ "skipped": [{ "path": "d.pdf", "reason": "no text" }, { "path": "b.md", "reason": "too large" }] }),
            ),
            job("j1", "done", &["a.md", "b.md"], json!({ "skipped": [{ "path": "a.md", "reason": "broken" }] })),
        ];
        let mut docs = json!({ "documents": [{ "source": "a.md" }, { "source": "b.md" }, { "source": "c.md" }] });
        attach_errors(&mut docs, &jobs);
        let d = &docs["documents"];
        assert!(d[0]["error"].is_null(), "a later success clears it: {docs}");
        assert_eq!(d[1]["error"]["reason"], "too large", "b.md keeps its earlier version");
        assert_eq!(d[2]["error"]["reason"], "the embedder failed");
        assert_eq!(
            docs["failed"],
            json!([{ "source": "d.pdf", "error": { "reason": "no text", "job": "j2", "unix": 1 } }])
        );
    }
}
