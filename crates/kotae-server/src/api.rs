//! Kotae's own API: `/api/chat` (SSE), `/api/search`, `/api/feedback`, conversations, health.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kotae_answer::{Action, Answer, GuardNote, Question};
use kotae_guard::{GateEvent, Verdict};
use kotae_index::SearchMode;
use kotae_models::{ChatMessage, FinishReason, GenEvent, Role, SamplingParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::metrics::{DirectionLabels, GuardLabels, KindLabels};
use crate::store::GuardEvent;
use crate::{AppState, Client, Engine};

/// What an answer run reports to the handler.
pub(crate) enum RunEvent {
    Text(String),
    /// The guardrails stopped the question or the answer; `Done` follows with the refusal.
    Guard(GuardNote),
    Done(Box<Answer>),
    Failed(ApiError),
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("task failed: {e}"))
}

/// Who asked, for the audit trail.
#[derive(Clone)]
pub(crate) struct Asker {
    pub client: String,
    pub conversation_id: Option<String>,
}

/// A started answer run.
pub(crate) struct Run {
    pub rx: mpsc::UnboundedReceiver<RunEvent>,
    /// The question as it may be stored (personal data redacted by the input guard).
    pub question: String,
}

/// Record guard decisions in the audit table and the metrics. The audit never holds the
/// offending text, only what decided.
pub(crate) fn record_guard(state: &AppState, request_id: &str, asker: &Asker, verdicts: &[Verdict]) {
    let mut events = Vec::new();
    for v in verdicts {
        state
            .metrics
            .guard_check_seconds
            .get_or_create(&DirectionLabels { direction: v.direction.as_str().into() })
            .observe(v.took_us as f64 / 1e6);
        for f in &v.findings {
            state
                .metrics
                .guard_decisions
                .get_or_create(&GuardLabels {
                    direction: v.direction.as_str().into(),
                    category: f.category.as_str().into(),
                    action: f.action.as_str().into(),
                })
                .inc();
            events.push(GuardEvent {
                request_id: request_id.into(),
                conversation_id: asker.conversation_id.clone(),
                client: asker.client.clone(),
                direction: v.direction.as_str().into(),
                category: f.category.as_str().into(),
                rule: f.rule.clone(),
                score: f.score as f64,
                action: f.action.as_str().into(),
                took_us: v.took_us as i64,
            });
        }
    }
    if let Err(e) = state.store.add_guard_events(&events) {
        tracing::error!(error = %e, "cannot write the guard audit");
    }
}

/// Retrieve and plan on the blocking pool (the input guard runs first), then either finish
/// at once (blocked, declined, past inquiry) or queue the generation. Errors here (queue
/// full, bad question) come back before any byte of a stream, so they keep their HTTP
/// status. Generated text passes the output gate sentence by sentence on the blocking pool,
/// never on the generator's thread: a blocked sentence is never sent.
pub(crate) async fn start_answer(
    state: &Arc<AppState>,
    engine: Arc<Engine>,
    q: Question,
    asker: Asker,
    tweak: impl FnOnce(&mut SamplingParams),
) -> Result<Run, ApiError> {
    // Fair use: the client's own limit first, then a full queue refuses before the costly
    // retrieval rather than after it.
    let slot = state.begin_answer(&asker.client)?;
    if engine.worker.is_full() {
        return Err(ApiError::from(kotae_answer::Error::Busy(kotae_models::SubmitError::QueueFull {
            capacity: engine.worker.capacity(),
        })));
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let e2 = engine.clone();
    let original = q.text.clone();
    let mut plan = tokio::task::spawn_blocking(move || e2.answerer.plan(&q)).await.map_err(join_error)??;
    record_guard(state, &request_id, &asker, &plan.verdicts);
    let question = plan.redacted_question.clone().unwrap_or(original);
    let (tx, rx) = mpsc::unbounded_channel();
    let (prompt, params) = match &mut plan.action {
        Action::Done(a) => {
            if let Some(note) = &a.guard {
                let _ = tx.send(RunEvent::Guard(note.clone()));
            }
            let _ = tx.send(RunEvent::Text(a.text.clone()));
            let answer = engine.answerer.complete(plan, None);
            let _ = tx.send(RunEvent::Done(Box::new(answer)));
            return Ok(Run { rx, question });
        }
        Action::Generate { prompt, params } => {
            tweak(params);
            (prompt.clone(), params.clone())
        }
    };
    let limit = std::time::Duration::from_secs(state.cfg.generation_timeout_s.max(1));
    let mut deadline: Option<std::time::Instant> = None;
    let (raw_tx, raw_rx) = std::sync::mpsc::channel::<GenEvent>();
    // The sink sees the client's channel too: a client that left (while its job waited, or
    // mid-answer) stops the generation at once, not at the next released sentence.
    let client_tx = tx.clone();
    let sink = Box::new(move |ev: GenEvent| {
        if matches!(ev, GenEvent::Started { .. }) {
            deadline = Some(std::time::Instant::now() + limit);
        }
        let text = matches!(ev, GenEvent::Text(_) | GenEvent::Started { .. });
        raw_tx.send(ev).is_ok()
            && (!text || (!client_tx.is_closed() && deadline.is_none_or(|d| std::time::Instant::now() < d)))
    });
    engine
        .worker
        .submit_for(&asker.client, prompt, params, sink)
        .map_err(|e| ApiError::from(kotae_answer::Error::Busy(e)))?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        // The client's answer slot is held until the run ends.
        let _slot = slot;
        let mut gate = plan.gate(engine.answerer.guard().cloned());
        let mut queued = 0.0;
        let mut tokens = 0usize;
        let observe_gate = |g: &kotae_guard::Gate| {
            if g.sentences > 0 {
                let per = g.check_us as f64 / g.sentences as f64 / 1e6;
                st.metrics
                    .guard_check_seconds
                    .get_or_create(&DirectionLabels { direction: "output".into() })
                    .observe(per);
            }
        };
        // Ends the run with the refusal; dropping `raw_rx` stops the generation.
        let blocked = |v: &Verdict, plan, tokens| {
            record_guard(&st, &request_id, &asker, std::slice::from_ref(v));
            let a = engine.answerer.complete_blocked(plan, v, tokens);
            if let Some(note) = &a.guard {
                let _ = tx.send(RunEvent::Guard(note.clone()));
            }
            let _ = tx.send(RunEvent::Done(Box::new(a)));
        };
        while let Ok(ev) = raw_rx.recv() {
            let released = match ev {
                // A client that left while its job waited: skip the job.
                GenEvent::Started { queued_ms } => {
                    queued = queued_ms;
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
                GenEvent::Text(t) => {
                    tokens += 1;
                    gate.push(&t)
                }
                GenEvent::Done(Ok(g)) => {
                    if g.finish_reason == FinishReason::Cancelled {
                        st.metrics.answers.get_or_create(&KindLabels { kind: "cancelled".into() }).inc();
                    }
                    st.metrics.decode_tokens_per_s.observe(g.decode_tokens_per_s());
                    st.metrics.prompt_tokens_per_s.observe(g.prompt_tokens_per_s());
                    if g.finish_reason == FinishReason::Length {
                        gate.cut();
                    }
                    for ev in gate.finish() {
                        match ev {
                            GateEvent::Release(t) => {
                                let _ = tx.send(RunEvent::Text(t));
                            }
                            GateEvent::Blocked(v) => {
                                observe_gate(&gate);
                                return blocked(&v, plan, g.completion_tokens);
                            }
                        }
                    }
                    observe_gate(&gate);
                    let a = engine.answerer.complete_gated(plan, g, queued, &gate);
                    if let Some(hold) = gate.first_hold_ms {
                        st.metrics.guard_hold_seconds.observe(hold / 1e3);
                    }
                    // The quoted evidence, or the extractive answer when nothing generated
                    // survived grounding: the client sees it too.
                    if let Some(tail) = a.unsent(gate.released()) {
                        let _ = tx.send(RunEvent::Text(tail));
                    }
                    let _ = tx.send(RunEvent::Done(Box::new(a)));
                    return;
                }
                GenEvent::Done(Err(e)) => {
                    let _ = tx.send(RunEvent::Failed(match e {
                        kotae_models::Error::PromptTooLong { .. } => ApiError::from(kotae_answer::Error::Model(e)),
                        other => ApiError::Internal(other.to_string()),
                    }));
                    return;
                }
            };
            for ev in released {
                match ev {
                    GateEvent::Release(t) => {
                        // The client went away: returning drops `raw_rx`, which stops the worker.
                        if tx.send(RunEvent::Text(t)).is_err() {
                            return;
                        }
                    }
                    GateEvent::Blocked(v) => {
                        observe_gate(&gate);
                        return blocked(&v, plan, tokens);
                    }
                }
            }
        }
    });
    Ok(Run { rx, question })
}

/// Wait for the end of an answer run (non-streaming responses).
pub(crate) async fn finished(rx: &mut mpsc::UnboundedReceiver<RunEvent>) -> Result<Box<Answer>, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            RunEvent::Text(_) | RunEvent::Guard(_) => {}
            RunEvent::Failed(e) => return Err(e),
            RunEvent::Done(a) => return Ok(a),
        }
    }
    Err(ApiError::Internal("the answer ended without a result".into()))
}

/// Count a finished answer in the metrics.
pub(crate) fn observe_answer(state: &AppState, a: &Answer) {
    let kind = serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    state.metrics.answers.get_or_create(&KindLabels { kind }).inc();
    if a.completion_tokens > 0 {
        state.metrics.time_to_first_token.observe(a.timings.first_token_ms / 1e3);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub message: String,
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Server-Sent Events (default) or one JSON response.
    #[serde(default = "yes")]
    pub stream: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize)]
struct ChatDone<'a> {
    conversation_id: &'a str,
    message_id: &'a str,
    answer: &'a Answer,
}

pub(crate) fn check_question(state: &AppState, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest("`message` is empty: write a question".into()));
    }
    let n = text.chars().count();
    if n > state.cfg.max_question_chars {
        return Err(ApiError::BadRequest(format!(
            "the question has {n} characters; the limit is {}: shorten it",
            state.cfg.max_question_chars
        )));
    }
    Ok(())
}

/// The last turns of a conversation for the model (`answer.history_messages`). Turns the
/// guard blocked (the question and its refusal) never reach the model again.
pub(crate) fn history(state: &AppState, engine: &Engine, conversation: &str) -> Result<Vec<ChatMessage>, ApiError> {
    let keep = engine.answerer.config().history_messages;
    let stored = state.store.messages(conversation)?;
    let mut turns: Vec<&crate::store::StoredMessage> = Vec::with_capacity(stored.len());
    for m in &stored {
        let blocked = m.answer.as_ref().is_some_and(|a| a["kind"] == "blocked");
        if blocked {
            if turns.last().is_some_and(|p| p.role == "user") {
                turns.pop();
            }
            continue;
        }
        turns.push(m);
    }
    Ok(turns[turns.len().saturating_sub(keep)..]
        .iter()
        .map(|m| ChatMessage::new(if m.role == "user" { Role::User } else { Role::Assistant }, m.content.clone()))
        .collect())
}

/// `POST /api/chat`: ask within a conversation; streams `meta`, `token`… and `done` events.
pub async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<ChatRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    check_question(&state, &req.message)?;
    if let Some(id) = &req.conversation_id {
        match state.store.conversation_owner(id)? {
            Some(owner) if owner == client.id => {}
            _ => {
                return Err(ApiError::NotFound(format!(
                    "no conversation {id} for this client: omit `conversation_id` to start one"
                )))
            }
        }
    }
    let engine = state.engine()?;
    let conversation = match &req.conversation_id {
        Some(id) => id.clone(),
        None => state.store.create_conversation(&client.id)?,
    };
    let history = history(&state, &engine, &conversation)?;
    let q = Question { text: req.message.clone(), history, groups: client.groups.clone() };
    let asker = Asker { client: client.id.clone(), conversation_id: Some(conversation.clone()) };
    let Run { mut rx, question } = start_answer(&state, engine, q, asker, |_| {}).await?;
    state.store.add_message(&conversation, "user", &question, None)?;

    if !req.stream {
        let a = finished(&mut rx).await?;
        let value = serde_json::to_value(&*a).map_err(|e| ApiError::Internal(e.to_string()))?;
        let id = state.store.add_message(&conversation, "assistant", &a.text, Some(&value))?;
        observe_answer(&state, &a);
        return Ok(Json(ChatDone { conversation_id: &conversation, message_id: &id, answer: &a }).into_response());
    }

    let (sse_tx, sse_rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let meta = json!({ "conversation_id": conversation });
        if sse_tx.send(Ok(Event::default().event("meta").data(meta.to_string()))).await.is_err() {
            return;
        }
        while let Some(ev) = rx.recv().await {
            let event = match ev {
                RunEvent::Text(t) => Event::default().event("token").data(json!({ "text": t }).to_string()),
                RunEvent::Guard(note) => Event::default().event("guard").data(json!(note).to_string()),
                RunEvent::Failed(e) => {
                    Event::default().event("error").data(serde_json::to_string(&e.body()).unwrap_or_default())
                }
                RunEvent::Done(a) => {
                    let value = serde_json::to_value(&*a).unwrap_or_default();
                    let id = match state.store.add_message(&conversation, "assistant", &a.text, Some(&value)) {
                        Ok(id) => id,
                        Err(e) => {
                            let _ = sse_tx
                                .send(Ok(Event::default()
                                    .event("error")
                                    .data(serde_json::to_string(&e.body()).unwrap_or_default())))
                                .await;
                            return;
                        }
                    };
                    observe_answer(&state, &a);
                    let done = ChatDone { conversation_id: &conversation, message_id: &id, answer: &a };
                    Event::default().event("done").data(serde_json::to_string(&done).unwrap_or_default())
                }
            };
            // The client went away: dropping `rx` makes the worker stop generating.
            if sse_tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub query: String,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub mode: Option<SearchMode>,
}

/// `POST /api/search`: the same retrieval the answers use, with the client's groups.
pub async fn search(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<SearchBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    check_question(&state, &req.query)?;
    let top_k = req.top_k.unwrap_or(10);
    if top_k == 0 || top_k > 100 {
        return Err(ApiError::BadRequest("`top_k` must be between 1 and 100".into()));
    }
    let engine = state.engine()?;
    let limit = state.cfg.request_timeout_s.max(1);
    let work = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let t = std::time::Instant::now();
        let r = kotae_answer::search(
            &engine.index,
            engine.embedder.as_deref(),
            &kotae_answer::SearchQuery {
                text: &req.query,
                mode: req.mode.unwrap_or(engine.retrieval.mode),
                top_k,
                groups: client.groups.clone(),
                lang: None,
                fusion: engine.retrieval.fusion,
            },
        )?;
        Ok(json!({ "mode": r.mode, "hits": r.hits, "took_ms": t.elapsed().as_secs_f64() * 1e3 }))
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(limit), work)
        .await
        .map_err(|_| ApiError::Timeout(limit))?
        .map_err(join_error)??;
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    pub text: String,
    #[serde(default)]
    pub task: Option<String>,
}

/// `POST /api/classify`: the trained heads (`kotae finetune head`) on the text's vector.
pub async fn classify(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<ClassifyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    check_question(&state, &req.text)?;
    let engine = state.engine()?;
    let loaded = engine.classifiers.get();
    let heads: Vec<(String, Arc<kotae_models::Head>)> = match &req.task {
        Some(t) => match loaded.get(t) {
            Some(h) => vec![(t.clone(), h.clone())],
            None => {
                let have: Vec<&str> = loaded.keys().map(String::as_str).collect();
                return Err(ApiError::NotFound(format!(
                    "no classifier for task '{t}' (loaded: {}); train one with `kotae finetune head --task {t}` or POST /admin/api/finetune",
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                )));
            }
        },
        None => loaded.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    if heads.is_empty() {
        return Err(ApiError::NotFound(
            "no classifiers are loaded; train one with `kotae finetune head` or POST /admin/api/finetune".into(),
        ));
    }
    let Some(embedder) = engine.embedder.clone() else {
        return Err(ApiError::NotReady("the embedder is not loaded".into()));
    };
    let out = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let t = std::time::Instant::now();
        let mut results = Vec::new();
        for (task, head) in heads {
            let p = head
                .probabilities_of_texts(embedder.as_ref(), &[req.text.trim()])
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let p = &p[0];
            // Labels learned from documents the caller may not read are never shown (their
            // names alone can say what a restricted log is about).
            let visible: Vec<usize> =
                (0..p.len()).filter(|&i| head.card.label_visible(&head.card.labels[i], &client.groups)).collect();
            let Some(best) = visible.iter().copied().reduce(|b, i| if p[i] > p[b] { i } else { b }) else {
                continue;
            };
            let scores: serde_json::Map<String, serde_json::Value> =
                visible.iter().map(|&i| (head.card.labels[i].clone(), json!(p[i]))).collect();
            results.push(json!({ "task": task, "label": head.card.labels[best], "score": p[best], "scores": scores }));
        }
        Ok(json!({ "results": results, "took_ms": t.elapsed().as_secs_f64() * 1e3 }))
    })
    .await
    .map_err(join_error)??;
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    pub message_id: String,
    /// `up` or `down`.
    pub rating: String,
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /api/feedback`: thumbs up/down on an answer, with an optional comment.
pub async fn feedback(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<FeedbackBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    if req.rating != "up" && req.rating != "down" {
        return Err(ApiError::BadRequest(format!("`rating` is '{}': use \"up\" or \"down\"", req.rating)));
    }
    if req.comment.as_ref().is_some_and(|c| c.chars().count() > 2000) {
        return Err(ApiError::BadRequest("`comment` is longer than 2000 characters: shorten it".into()));
    }
    match state.store.add_feedback(&req.message_id, &req.rating, req.comment.as_deref(), &client.id)? {
        Some(id) => Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response()),
        None => Err(ApiError::NotFound(format!("no answer with message_id {}", req.message_id))),
    }
}

/// `GET /api/conversations/{id}`: the stored messages of one of the client's conversations.
pub async fn conversation(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.store.conversation_owner(&id)? {
        Some(owner) if owner == client.id => {}
        _ => return Err(ApiError::NotFound(format!("no conversation {id} for this client"))),
    }
    let messages = state.store.messages(&id)?;
    Ok(Json(json!({ "id": id, "messages": messages })).into_response())
}

/// `GET /api/me`: who the server takes the client for.
pub async fn me(Extension(client): Extension<Client>) -> Response {
    Json(json!({ "id": client.id, "role": client.role, "groups": client.groups, "via": client.via })).into_response()
}

pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({ "status": "ok", "uptime_s": crate::uptime_s(&state) })).into_response()
}

/// Ready when the models are loaded and the index is open.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let e = state.engine()?;
    if !e.worker.alive() {
        return Err(ApiError::NotReady("the generation worker has stopped; restart the server".into()));
    }
    Ok(Json(json!({
        "status": "ready",
        "generator_panics": e.worker.panics(),
        "generator": e.worker.name(),
        "embedder": e.embedder_name,
        "chunks": e.index.num_chunks(),
        "queue": { "load": e.worker.load(), "capacity": e.worker.capacity(), "parallel": e.worker.parallel() },
    }))
    .into_response())
}
