//! The OpenAPI description served at `/openapi.json`. A test checks that every route of the
//! router is described here.

use axum::Json;
use serde_json::{json, Value};

fn err() -> Value {
    json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kotae",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Answers from a company's own documents, with citations. Errors are JSON `{\"error\": {\"code\", \"message\"}}`; 429 and 503 carry `Retry-After`. Credentials: `Authorization: Bearer` with an API key or an OpenID Connect JWT, or the headers of a trusted single-sign-on proxy; a credential that does not verify is refused (401), never treated as anonymous, and repeated failures from one address are refused with 429 for the rest of the minute. `/admin/api/…` needs the admin role (403 otherwise)."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
                    "code": { "type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "payload_too_large", "rate_limited", "in_flight_limit", "busy", "not_ready", "timeout", "internal"] },
                    "message": { "type": "string" } } } } },
                "ChatRequest": { "type": "object", "required": ["message"], "properties": {
                    "message": { "type": "string", "maxLength": 4000 },
                    "conversation_id": { "type": "string", "description": "continue a conversation; omit to start one" },
                    "stream": { "type": "boolean", "default": true } } },
                "Citation": { "type": "object", "properties": {
                    "n": { "type": "integer" }, "source": { "type": "string" }, "section": { "type": "string" },
                    "span": { "type": "array", "items": { "type": "integer" } }, "snippet": { "type": "string" },
                    "chunk_id": { "type": "string" }, "kind": { "type": "string" }, "marked": { "type": "boolean" },
                    "url": { "type": "string", "format": "uri", "description": "the document's own address on the intranet (its front matter or canonical link, or an [[ingest.links]] rule), when known" } } },
                "Answer": { "type": "object", "properties": {
                    "text": { "type": "string" }, "lang": { "type": "string" },
                    "kind": { "type": "string", "enum": ["generated", "direct", "declined", "blocked"] },
                    "guard": { "type": "object", "description": "set when the guardrails stopped the question (direction input) or the answer (output); the text is then the refusal",
                        "properties": { "direction": { "type": "string" }, "category": { "type": "string" }, "rule": { "type": "string" } } },
                    "citations": { "type": "array", "items": { "$ref": "#/components/schemas/Citation" } },
                    "search_query": { "type": "string" }, "relevance": { "type": ["number", "null"] },
                    "prompt_tokens": { "type": "integer" }, "completion_tokens": { "type": "integer" },
                    "finish_reason": { "type": "string", "enum": ["stop", "length", "cancelled"] },
                    "timings": { "type": "object", "additionalProperties": { "type": "number" } } } },
                "ChatResponse": { "type": "object", "properties": {
                    "conversation_id": { "type": "string" }, "message_id": { "type": "string" },
                    "answer": { "$ref": "#/components/schemas/Answer" } } },
                "SearchRequest": { "type": "object", "required": ["query"], "properties": {
                    "query": { "type": "string" }, "top_k": { "type": "integer", "minimum": 1, "maximum": 100 },
                    "mode": { "type": "string", "enum": ["hybrid", "bm25", "dense"] } } },
                "ClassifyRequest": { "type": "object", "required": ["text"], "properties": {
                    "text": { "type": "string" },
                    "task": { "type": "string", "description": "one head (e.g. routing, safety); all loaded heads when absent" } } },
                "FeedbackRequest": { "type": "object", "required": ["message_id", "rating"], "properties": {
                    "message_id": { "type": "string" }, "rating": { "type": "string", "enum": ["up", "down"] },
                    "comment": { "type": "string", "maxLength": 2000 } } },
                "CompletionRequest": { "type": "object", "required": ["messages"], "description": "OpenAI chat completion request; temperature, top_p, max_tokens, seed, stop and stream are honoured" }
            }
        },
        "security": [{ "bearer": [] }, {}],
        "paths": {
            "/api/chat": { "post": {
                "summary": "Ask a question (in a conversation). With stream=true (default) the response is text/event-stream: `meta` {conversation_id}, `token` {text}…, then `done` (ChatResponse) or `error` (Error). When the guardrails stop the question or a sentence of the answer, `guard` {direction, category, rule} comes before `done`, whose answer (kind `blocked`) is the refusal; a blocked sentence is never sent.",
                "requestBody": body("ChatRequest"),
                "responses": {
                    "200": { "description": "answer", "content": {
                        "text/event-stream": { "schema": { "type": "string" } },
                        "application/json": { "schema": { "$ref": "#/components/schemas/ChatResponse" } } } },
                    "400": err(), "404": err(), "413": err(), "429": err(), "503": err() } } },
            "/api/search": { "post": {
                "summary": "Hybrid search over the knowledge base with the client's access groups",
                "requestBody": body("SearchRequest"),
                "responses": { "200": { "description": "`{mode, hits, took_ms}`" }, "400": err(), "429": err(), "504": err() } } },
            "/api/classify": { "post": {
                "summary": "Classify a text with the trained heads on the frozen embedder (kotae finetune head): routing to a help desk, content safety",
                "requestBody": body("ClassifyRequest"),
                "responses": { "200": { "description": "`{results: [{task, label, score, scores}], took_ms}`" }, "400": err(), "404": err(), "429": err() } } },
            "/api/feedback": { "post": {
                "summary": "Thumbs up/down on an answer",
                "requestBody": body("FeedbackRequest"),
                "responses": { "201": { "description": "`{id}` (a second vote on the same answer replaces the first)" }, "400": err(), "404": err() } } },
            "/api/conversations/{id}": { "get": {
                "summary": "Messages of one of the client's conversations",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "`{id, messages}`" }, "404": err() } } },
            "/api/me": { "get": {
                "summary": "Who the server takes the client for: `{id, role, groups, via}` (via: api_key, jwt, sso, anonymous)",
                "responses": { "200": { "description": "the client" }, "401": err(), "429": err() } } },
            "/api/sources/{chunk_id}": { "get": {
                "summary": "A cited passage for the source viewer (a citation's `chunk_id`): `{chunk_id, source, section, kind, lang, text, url}` (`url`: the document's own address, or null); 404 when it does not exist or the client's groups may not read it",
                "parameters": [{ "name": "chunk_id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "the passage" }, "400": err(), "404": err() } } },
            "/admin/api/keys": {
                "get": { "summary": "API keys (admin): `{keys: [{name, role, groups, source (config or admin), created_by, created_unix, revoked_by, revoked_unix}]}`; never a key or its digest",
                    "responses": { "200": { "description": "keys" }, "401": err(), "403": err() } },
                "post": { "summary": "Make an API key for a service (admin, audited), usable at once: body `{name, groups, role (user or admin)}`; 201 `{name, key, role, groups}`, the key shown this once (Kotae keeps its SHA-256); 409 when the name is taken, also by a revoked key",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["name"],
                        "properties": { "name": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" }, "groups": { "type": "array", "items": { "type": "string" } }, "role": { "type": "string", "enum": ["user", "admin"] } } } } } },
                    "responses": { "201": { "description": "`{name, key, role, groups}`" }, "400": err(), "401": err(), "403": err(), "409": err() } } },
            "/admin/api/keys/{name}": { "delete": { "summary": "Revoke a key made with POST /admin/api/keys (admin, audited): refused from the next request on, on every replica; 409 for a key of server.api_keys (remove it from the file) or one already revoked",
                "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "`{name, revoked}`" }, "401": err(), "403": err(), "404": err(), "409": err() } } },
            "/admin/api/feedback": { "get": {
                "summary": "The feedback review queue (admin), newest first: `{feedback: [{id, rating, comment, client, created_unix, message_id, question, answer, citations, kind}]}`",
                "parameters": [{ "name": "rating", "in": "query", "schema": { "type": "string", "enum": ["up", "down"] } },
                               { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }],
                "responses": { "200": { "description": "votes" }, "400": err(), "401": err(), "403": err() } } },
            "/admin/api/eval": { "get": {
                "summary": "The latest nightly evaluation report (admin): the report.json of `kotae eval all`",
                "responses": { "200": { "description": "the report" }, "401": err(), "403": err(), "404": err() } } },
            "/admin/api/audit": { "get": {
                "summary": "Audit trail (admin): admin actions and authentication failures, newest first: `{entries: [{id, actor, action, target, result, detail, ip, created_unix}]}`",
                "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                               { "name": "before", "in": "query", "description": "page back: entries with a smaller id", "schema": { "type": "integer" } }],
                "responses": { "200": { "description": "entries" }, "401": err(), "403": err() } } },
            "/admin/api/guard-events": { "get": {
                "summary": "Guardrail decisions (admin), newest first, without the offending text: `{events}`",
                "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }],
                "responses": { "200": { "description": "events" }, "401": err(), "403": err() } } },
            "/admin/api/quarantine": { "get": {
                "summary": "Texts the training-data guard held back (admin): `{items: [{id, source, ref, text, category, rule, client, status, created_unix}]}`",
                "parameters": [{ "name": "status", "in": "query", "schema": { "type": "string", "enum": ["pending", "released", "rejected"] } }],
                "responses": { "200": { "description": "items" }, "400": err(), "401": err(), "403": err() } } },
            "/admin/api/quarantine/{id}": { "post": {
                "summary": "Review a held-back text (admin): `released` lets it into training data, `rejected` keeps it out; audited",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["status"], "properties": { "status": { "type": "string", "enum": ["released", "rejected"] } } } } } },
                "responses": { "200": { "description": "`{id, status}`" }, "400": err(), "401": err(), "403": err(), "404": err() } } },
            "/admin/api/documents": {
                "get": { "summary": "Indexed documents (admin): `{documents: [{source, root, uploaded, groups, chunks, version, ingested_unix}], chunks_total}`",
                    "responses": { "200": { "description": "documents" }, "401": err(), "403": err() } },
                "post": { "summary": "Upload documents (admin): multipart/form-data with `groups` (comma-separated, required) and one or more `file` parts (Markdown, HTML, PDF, text, inquiry logs as CSV/JSONL; each at most ingest.max_file_bytes). A file of the same name is replaced by the new version. Nothing is stored unless every file arrived whole; the ingestion runs as a background job: 202 `{job, files}`, then poll `/admin/api/jobs/{id}`. Searches see the old or the new version, never a mix.",
                    "requestBody": { "required": true, "content": { "multipart/form-data": { "schema": { "type": "object", "required": ["groups", "file"], "properties": {
                        "groups": { "type": "string" }, "file": { "type": "array", "items": { "type": "string", "format": "binary" } } } } } } },
                    "responses": { "202": { "description": "`{job, files}`" }, "400": err(), "401": err(), "403": err(), "413": err() } } },
            "/admin/api/documents/{source}": { "delete": {
                "summary": "Remove a document from the index, and its uploaded file (admin); a background job: 202 `{job}`",
                "parameters": [{ "name": "source", "in": "path", "required": true, "schema": { "type": "string" }, "description": "the document's source path as listed" }],
                "responses": { "202": { "description": "`{job}`" }, "401": err(), "403": err() } },
              "patch": {
                "summary": "Change who may read an uploaded document (admin): `{groups: [..]}`; a background job re-indexes it with the new groups: 202 `{job}`. Documents ingested from a folder take their groups from its rules (400).",
                "parameters": [{ "name": "source", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["groups"], "properties": {
                    "groups": { "type": "array", "items": { "type": "string" } } } } } } },
                "responses": { "202": { "description": "`{job}`" }, "400": err(), "401": err(), "403": err() } } },
            "/admin/api/eval/runs": { "post": {
                "summary": "Run the nightly evaluation suites on this server now (admin), as a job: 202 `{job}`; 409 while one runs. Body (optional): `{split: dev|heldout|all, limit, red_team}`. The job's report: `{passed, run, summary, threshold_failures, regressions, report}`.",
                "responses": { "202": { "description": "`{job}`" }, "400": err(), "401": err(), "403": err(), "409": err() } } },
            "/admin/api/finetune": { "post": {
                "summary": "Train a classification head on the frozen embedder, or LoRA adapters on the generator, from this knowledge base (admin, audited), as a job (`kind` finetune for a head, lora for the generator) that the writer runs in its training lane, beside uploads: body `{task: routing|safety, epochs?, hidden?, tune_layers?}` or `{task: lora, base?, epochs?, max_steps?, r?}`; 202 `{job}`. lora: the merged model is written to `<data-dir>/runs/lora-<base>-<time>/merged-q8_0.gguf` (the job's report names it as `model`, with the perplexities before and after) and `/admin/api/generator` offers it. routing: inquiry → the help desk's category (the inquiry logs); safety: safe / harmful / jailbreak. The head is saved to `<data-dir>/heads/<task>/` by a rename; every process serving the data folder classifies with it (`/api/classify`, the guard) within about a second, without a restart; 409 while another fine-tuning job is queued or running. The job's report: `{task, labels, examples, validation: {accuracy, macro_f1, examples}, tuned_layers, seconds}`.",
                "responses": { "202": { "description": "`{job}`" }, "400": err(), "401": err(), "403": err(), "503": err() } } },
            "/admin/api/generator": {
                "get": { "summary": "The generator this process serves (`served`), the data folder's choice (`published`), the generators an admin may choose (`choices`: installed catalog generators, the configured one, fine-tuned models `runs/<run>/merged-q8_0.gguf`), and `error` when this process could not load the published one (admin)",
                    "responses": { "200": { "description": "`{served, published, choices, error}`" }, "401": err(), "403": err(), "503": err() } },
                "put": { "summary": "Serve another generator (admin, audited): body `{model}`, one of the choices. This process loads it and swaps its engine (answers in flight finish on the old one), then every process serving the data folder takes it up within about a second; a restart keeps it (`<data-dir>/generator.json`). A model that does not load changes nothing: 400 with why",
                    "responses": { "200": { "description": "`{served, published, choices, error}`" }, "400": err(), "401": err(), "403": err(), "503": err() } } },
            "/admin/api/jobs": { "get": { "summary": "Admin jobs, newest first (admin): `{jobs: [{id, kind, actor, status (queued, running, done, failed, cancelled), detail, report, progress, cancel_requested, created_unix, finished_unix}]}`; `progress` of a running ingest: `{phase, files_total, files_done, chunks_written}`",
                "responses": { "200": { "description": "jobs" }, "401": err(), "403": err() } } },
            "/admin/api/jobs/{id}": { "get": { "summary": "One job (admin); `report` holds the ingest summary (files ingested, skipped with reasons, flagged instructions, markers, group changes) or `{error}`",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "the job" }, "401": err(), "403": err(), "404": err() } } },
            "/admin/api/jobs/{id}/retry": { "post": { "summary": "Run a failed or cancelled ingest job again (admin), e.g. one a restart interrupted (documents already in are skipped): 202 `{job}`",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "202": { "description": "`{job}`" }, "400": err(), "401": err(), "403": err(), "404": err() } } },
            "/admin/api/access-rules": {
                "get": { "summary": "Who may read what (admin): `{rules: [{path, groups, origin: config|admin, updated_by, updated_unix}], default_groups, markers}`; rules longest path first (the longest holding a file decides)",
                    "responses": { "200": { "description": "the rules" }, "401": err(), "403": err() } },
                "put": { "summary": "Set a folder (or file) → groups rule while serving (admin, audited): `{path, groups}`; the path is a folder on the server (absolute, or relative to its working directory) and must exist; it replaces a rule for the same folder, kotae.toml's too. A re-index job applies it to the indexed documents: 202 `{job, rule}`",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["path", "groups"], "properties": {
                        "path": { "type": "string" }, "groups": { "type": "array", "items": { "type": "string" } } } } } } },
                    "responses": { "202": { "description": "`{job, rule}`" }, "400": err(), "401": err(), "403": err() } },
                "delete": { "summary": "Remove a rule set through the admin API (admin, audited); documents keep their groups unless another rule now applies (a re-index job applies it): 202 `{job, removed}`; 404 no such rule; 409 the rule is kotae.toml's",
                    "parameters": [{ "name": "path", "in": "query", "required": true, "schema": { "type": "string" } }],
                    "responses": { "202": { "description": "`{job, removed}`" }, "400": err(), "401": err(), "403": err(), "404": err(), "409": err() } } },
            "/admin/api/reindex": { "post": { "summary": "Re-index (admin, audited): a job that reads every indexed document again from the folder it came from; changed files are re-ingested (all of them with body `{\"force\": true}`, e.g. after a chunking change; vectors of unchanged chunks are reused), files that are gone are reported in `skipped` (their indexed version keeps serving); new files in those folders are left to `kotae ingest`: 202 `{job}`",
                "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "force": { "type": "boolean" } } } } } },
                "responses": { "202": { "description": "`{job}`" }, "400": err(), "401": err(), "403": err(), "503": err() } } },
            "/admin/api/jobs/{id}/cancel": { "post": { "summary": "Cancel a queued or running ingest, remove, finetune or lora job (admin, audited): a queued job never starts, a running fine-tuning stops at its next epoch and saves nothing, a running ingest stops before its next commit (documents committed before stay, nothing is half-indexed) and ends `cancelled`: 202 `{job, status: cancelling}`; 409 when the job has ended or is an evaluation",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "202": { "description": "`{job, status}`" }, "401": err(), "403": err(), "404": err(), "409": err() } } },
            "/admin/api/jobs/{id}/events": { "get": { "summary": "The job as it moves on (admin), as server-sent events: `progress` (the job, whenever its status or progress changes), then `end` (the finished job with its report); the stream then closes",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "text/event-stream", "content": { "text/event-stream": {} } }, "401": err(), "403": err(), "404": err() } } },
            "/v1/chat/completions": { "post": {
                "summary": "OpenAI-compatible chat completion (retrieval-augmented); streaming with stream=true",
                "requestBody": body("CompletionRequest"),
                "responses": { "200": { "description": "chat.completion or a stream of chat.completion.chunk, ending with [DONE]" }, "400": err(), "429": err(), "503": err() } } },
            "/v1/models": { "get": { "summary": "OpenAI-compatible model list", "responses": { "200": { "description": "list" } } } },
            "/widget.js": { "get": { "summary": "The embeddable chat widget (one script tag; see README)", "security": [], "responses": { "200": { "description": "JavaScript" } } } },
            "/admin/login": { "get": { "summary": "The admin console's single sign-on settings (authorization code with PKCE): `{authorize_url, token_url, client_id, scope}`; 404 when server.jwt does not name the provider's endpoints", "security": [], "responses": { "200": { "description": "settings" }, "404": err() } } },
            "/chat": { "get": { "summary": "The chat as a full page", "security": [], "responses": { "200": { "description": "HTML" } } } },
            "/admin": { "get": { "summary": "The admin console (its data comes from /admin/api, which needs the admin role)", "security": [], "responses": { "200": { "description": "HTML" } } } },
            "/healthz": { "get": { "summary": "Liveness", "security": [], "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "Readiness: models loaded, index open", "security": [], "responses": { "200": { "description": "ready" }, "503": err() } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [], "responses": { "200": { "description": "text exposition format" } } } },
            "/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1" } } } }
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
