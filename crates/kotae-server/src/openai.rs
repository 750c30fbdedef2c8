//! OpenAI-compatible endpoints, so existing clients and tools can talk to Kotae. Every
//! completion is a retrieval-augmented answer: the last user message is the question, earlier
//! user/assistant messages the history. Citations ride along in an extra `kotae` field.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kotae_answer::{Answer, Question};
use kotae_models::{ChatMessage, FinishReason, Role};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{check_question, finished, observe_answer, start_answer, Asker, Run, RunEvent};
use crate::error::ApiError;
use crate::{AppState, Client};

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    /// A string, or content parts (`[{"type": "text", "text": …}]`).
    pub content: Value,
}

/// The subset of the OpenAI request Kotae honours; other fields are accepted and ignored,
/// as OpenAI clients send many.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Option<Value>,
    pub frequency_penalty: Option<f32>,
}

fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n")),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::BadRequest("message `content` must be a string or a list of text parts".into())),
    }
}

fn finish_reason(a: &Answer) -> &'static str {
    if a.guard.is_some() {
        return "content_filter";
    }
    match a.finish_reason {
        Some(FinishReason::Length) => "length",
        _ => "stop",
    }
}

fn kotae_extra(a: &Answer) -> Value {
    json!({ "kind": a.kind, "citations": a.citations, "timings": a.timings, "lang": a.lang, "guard": a.guard })
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<CompletionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let mut msgs = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            // Kotae's own system prompt governs answers; client system prompts are ignored.
            "system" | "developer" | "tool" => continue,
            other => return Err(ApiError::BadRequest(format!("unknown message role '{other}'"))),
        };
        msgs.push(ChatMessage::new(role, text_of(&m.content)?));
    }
    let Some(last) = msgs.pop().filter(|m| m.role == Role::User) else {
        return Err(ApiError::BadRequest("the last message must be the user's question".into()));
    };
    check_question(&state, &last.content)?;
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::BadRequest("`temperature` must be between 0 and 2".into()));
        }
    }
    let engine = state.engine()?;
    let model = req.model.clone().unwrap_or_else(|| state.cfg.model_id.clone());
    let q = Question { text: last.content, history: msgs, groups: client.groups.clone() };
    let cap = engine.answerer.config().sampling.max_tokens.max(1);
    let asker = Asker { client: client.id.clone(), conversation_id: None };
    let Run { mut rx, .. } = start_answer(&state, engine, q, asker, |p| {
        if let Some(t) = req.temperature {
            p.temperature = t;
        }
        if let Some(t) = req.top_p {
            p.top_p = t;
        }
        if let Some(n) = req.max_completion_tokens.or(req.max_tokens) {
            p.max_tokens = n.clamp(1, cap);
        }
        if let Some(s) = req.seed {
            p.seed = s;
        }
        if let Some(f) = req.frequency_penalty {
            p.repeat_penalty = 1.0 + f.clamp(0.0, 2.0) / 2.0;
        }
        match &req.stop {
            Some(Value::String(s)) => p.stop.push(s.clone()),
            Some(Value::Array(a)) => p.stop.extend(a.iter().filter_map(|v| v.as_str().map(String::from))),
            _ => {}
        }
    })
    .await?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);

    if !req.stream {
        let a = finished(&mut rx).await?;
        observe_answer(&state, &a);
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": a.text },
                "finish_reason": finish_reason(&a),
            }],
            "usage": {
                "prompt_tokens": a.prompt_tokens,
                "completion_tokens": a.completion_tokens,
                "total_tokens": a.prompt_tokens + a.completion_tokens,
            },
            "kotae": kotae_extra(&a),
        }))
        .into_response());
    }

    let (sse_tx, sse_rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>, extra: Option<Value>| {
            let mut v = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            });
            if let Some(x) = extra {
                v["kotae"] = x;
            }
            Event::default().data(v.to_string())
        };
        if sse_tx.send(Ok(chunk(json!({ "role": "assistant", "content": "" }), None, None))).await.is_err() {
            return;
        }
        let mut blocked = false;
        let mut sent_any = false;
        while let Some(ev) = rx.recv().await {
            let (event, last) = match ev {
                // After a block, the refusal arrives with `Done`.
                RunEvent::Text(_) if blocked => continue,
                RunEvent::Text(t) => {
                    sent_any = true;
                    (chunk(json!({ "content": t }), None, None), false)
                }
                RunEvent::Guard(_) => {
                    blocked = true;
                    continue;
                }
                RunEvent::Done(a) if blocked => {
                    observe_answer(&state, &a);
                    let text = if sent_any { format!("\n\n{}", a.text) } else { a.text.clone() };
                    if sse_tx.send(Ok(chunk(json!({ "content": text }), None, None))).await.is_err() {
                        return;
                    }
                    (chunk(json!({}), Some(finish_reason(&a)), Some(kotae_extra(&a))), true)
                }
                RunEvent::Failed(e) => {
                    (Event::default().data(serde_json::to_string(&e.body()).unwrap_or_default()), true)
                }
                RunEvent::Done(a) => {
                    observe_answer(&state, &a);
                    (chunk(json!({}), Some(finish_reason(&a)), Some(kotae_extra(&a))), true)
                }
            };
            if sse_tx.send(Ok(event)).await.is_err() {
                return;
            }
            if last {
                let _ = sse_tx.send(Ok(Event::default().data("[DONE]"))).await;
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response())
}

/// `GET /v1/models`
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let e = state.engine()?;
    Ok(Json(json!({
        "object": "list",
        "data": [{ "id": state.cfg.model_id, "object": "model", "created": 0, "owned_by": "kotae", "generator": e.worker.name() }],
    }))
    .into_response())
}
