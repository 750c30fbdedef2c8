//! Which generator answers, changed while serving: an admin names an installed model (a catalog
//! generator, or a fine-tuned model under the data folder, `kotae finetune lora`'s merged GGUF)
//! with `PUT /admin/api/generator`; the process loads it, swaps its engine (answers in flight
//! finish on the old one) and publishes the choice in the data folder, where every other
//! process serving that folder takes it up within about a second, and a restart keeps it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::auth::Client;
use crate::error::ApiError;
use crate::{AppState, Engine};

/// What the app provides: the models there are, and how to build an engine around one.
pub trait GeneratorSwitch: Send + Sync {
    /// The generators an admin may choose: installed catalog names, and fine-tuned models in
    /// the data folder (as paths relative to it).
    fn choices(&self) -> Vec<String>;
    /// An engine like `current` (the same index, embedder and settings) whose generator is
    /// `model`, one of the choices.
    fn load(&self, current: &Engine, model: &str) -> Result<Engine, String>;
    /// Make `model` the data folder's generator (written atomically).
    fn publish(&self, model: &str) -> Result<(), String>;
    /// The data folder's generator as last published (`None`: the configuration's).
    fn published(&self) -> Option<String>;
}

/// How often a process looks at the data folder's choice.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A switch and what became of the last change this process tried.
pub(crate) struct Switching {
    pub(crate) switch: Arc<dyn GeneratorSwitch>,
    /// One change at a time in this process (a PUT or the watcher).
    pub(crate) busy: Mutex<()>,
    /// The published choice this process could not load, and why (not retried until the
    /// choice changes).
    pub(crate) failed: Mutex<Option<(String, String)>>,
}

impl AppState {
    /// Let admins change the generator while serving, and follow the data folder's choice: a
    /// thread of this process loads a newly published generator and swaps the engine.
    pub fn set_generator_switch(self: &Arc<Self>, switch: Arc<dyn GeneratorSwitch>) {
        let s = Arc::new(Switching { switch, busy: Mutex::new(()), failed: Mutex::new(None) });
        if self.generators.set(s).is_err() {
            return;
        }
        let weak: Weak<AppState> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("kotae-generator".into()).spawn(move || loop {
            std::thread::sleep(LOOK_EVERY);
            let Some(state) = weak.upgrade() else { return };
            state.follow_published();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to follow generator changes: a restart takes them up");
        }
    }

    /// Load the published generator when it is not the one served (and did not fail before).
    fn follow_published(&self) {
        let Some(s) = self.generators.get() else { return };
        let Some(model) = s.switch.published() else { return };
        let Ok(current) = self.engine() else { return };
        if current.worker.name() == model {
            return;
        }
        if s.failed.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|(m, _)| *m == model) {
            return;
        }
        let _one = s.busy.lock().unwrap_or_else(|e| e.into_inner());
        // Another change may have landed while this one waited.
        let Ok(current) = self.engine() else { return };
        if current.worker.name() == model {
            return;
        }
        match s.switch.load(&current, &model) {
            Ok(engine) => {
                tracing::info!(generator = %model, "the data folder's generator changed: now serving it");
                self.set_engine(engine);
                *s.failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                tracing::error!(generator = %model, error = %e, "cannot load the data folder's generator: still serving the old one");
                *s.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some((model, e));
            }
        }
    }
}

fn switching(state: &AppState) -> Result<&Arc<Switching>, ApiError> {
    state.generators.get().ok_or_else(|| ApiError::NotReady("this server cannot change its generator".into()))
}

fn status(state: &AppState, s: &Switching) -> Value {
    let served = state.engine().ok().map(|e| e.worker.name().to_string());
    let failed = s.failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    json!({
        "served": served,
        "published": s.switch.published(),
        "choices": s.switch.choices(),
        "error": failed.map(|(model, error)| json!({ "model": model, "message": error })),
    })
}

/// `GET /admin/api/generator`: the generator this process serves, the data folder's choice,
/// the installed choices, and the error of a published choice this process could not load.
pub async fn get_generator(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let s = switching(&state)?;
    Ok(Json(status(&state, s)).into_response())
}

/// `PUT /admin/api/generator` with `{"model": "…"}`, one of the choices: loads it, swaps this
/// process's engine (answers in flight finish on the old one), then publishes it for every
/// process serving the data folder. A model that does not load changes nothing (400 with why).
pub async fn set_generator(
    State(state): State<Arc<AppState>>,
    Extension(admin): Extension<Client>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let s = switching(&state)?.clone();
    let choices = s.switch.choices();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body must be JSON `{{\"model\": \"…\"}}`: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(ApiError::BadRequest("the body must be a JSON object `{\"model\": \"…\"}`".into()));
    };
    if let Some(k) = o.keys().find(|k| *k != "model") {
        return Err(ApiError::BadRequest(format!("unknown field `{k}`: the only field is `model`")));
    }
    let Some(model) = o.get("model").and_then(Value::as_str).map(str::trim).filter(|m| !m.is_empty()) else {
        return Err(ApiError::BadRequest(format!("give `model`, one of: {}", choices.join(", "))));
    };
    if !choices.iter().any(|c| c == model) {
        crate::documents::audit(&state, &admin, "generator.set", model, "rejected", "not a choice".into());
        return Err(ApiError::BadRequest(format!(
            "`{model}` is not an installed generator; choose one of: {} (install others with `kotae models install`, or fine-tune one with `kotae finetune lora`)",
            choices.join(", ")
        )));
    }
    let model = model.to_string();
    let st = state.clone();
    let m = model.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let _one = s.busy.lock().unwrap_or_else(|e| e.into_inner());
        let current = st.engine().map_err(|e| e.to_string())?;
        // Loaded first, published second, swapped last: a model that does not load, or a
        // choice that cannot be written, changes nothing anywhere.
        let engine = if current.worker.name() != m { Some(s.switch.load(&current, &m)?) } else { None };
        s.switch.publish(&m)?;
        if let Some(engine) = engine {
            st.set_engine(engine);
        }
        *s.failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    })
    .await
    .map_err(crate::api::join_error)?;
    if let Err(e) = result {
        crate::documents::audit(&state, &admin, "generator.set", &model, "failed", e.clone());
        return Err(ApiError::BadRequest(format!("`{model}` could not be served, nothing changed: {e}")));
    }
    crate::documents::audit(&state, &admin, "generator.set", &model, "ok", String::new());
    let s = switching(&state)?;
    Ok(Json(status(&state, s)).into_response())
}
