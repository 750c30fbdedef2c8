//! A generator's residual stream as features of a text, for probes (transfer learning on the
//! language model): the text is asked as a user message in the model's chat template, the
//! first layers of the int8 model run on it, and one layer's state is pooled (the last
//! position's, or the mean over positions). The guard's second safety classifier reads these:
//! the language model knows far more about what a request means than the small embedder.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::chat::{ChatMessage, PromptFormat, Role};
use crate::int8::Int8Lm;
use crate::{Error, Result};

/// How a layer's token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatePool {
    /// The state of the prompt's last position (the assistant's turn about to start).
    Last,
    /// The mean over all positions of the prompt.
    #[default]
    Mean,
}

impl StatePool {
    pub fn as_str(self) -> &'static str {
        match self {
            StatePool::Last => "last",
            StatePool::Mean => "mean",
        }
    }
}

impl std::str::FromStr for StatePool {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "last" => Ok(StatePool::Last),
            "mean" => Ok(StatePool::Mean),
            o => Err(format!("unknown pooling '{o}': use last or mean")),
        }
    }
}

/// Prompts longer than this keep their beginning and their last [`TAIL`] tokens.
pub const MAX_TOKENS: usize = 160;
const TAIL: usize = 24;

/// Reads one layer's pooled state of texts. Thread-safe (one text at a time).
pub struct LmStates {
    model: Mutex<Int8Lm>,
    format: Arc<PromptFormat>,
    layer: usize,
    pool: StatePool,
    id: String,
}

impl LmStates {
    pub fn new(model_name: &str, model: Int8Lm, format: Arc<PromptFormat>, layer: usize, pool: StatePool) -> Self {
        let id = Self::id_of(model_name, layer, pool);
        Self { model: Mutex::new(model), format, layer, pool, id }
    }

    /// What a head trained on these features records as its input (`model@L9/mean`): a head
    /// reads features of this exact model, layer and pooling or none.
    pub fn id_of(model_name: &str, layer: usize, pool: StatePool) -> String {
        format!("{model_name}@L{layer}/{}", pool.as_str())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn pool(&self) -> StatePool {
        self.pool
    }

    /// Token ids of `text` asked as a user message (special tokens in it neutralized),
    /// shortened to [`MAX_TOKENS`].
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        let prompt = self.format.render(&[ChatMessage::new(Role::User, self.format.neutralize(text))])?;
        let mut ids = self.format.encode(&prompt)?;
        if ids.len() > MAX_TOKENS {
            let tail = ids[ids.len() - TAIL..].to_vec();
            ids.truncate(MAX_TOKENS - TAIL);
            ids.extend(tail);
        }
        Ok(ids)
    }

    /// The pooled state of `text`, `[hidden]`.
    pub fn features(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.prompt_ids(text)?;
        // Every run starts from an empty cache: a run that panicked leaves nothing to distrust.
        let mut m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let mut states = m.layer_states(&ids, self.layer + 1)?;
        let (last, mean) =
            states.pop().ok_or_else(|| Error::Generation(format!("the model has no layer {}", self.layer)))?;
        Ok(match self.pool {
            StatePool::Last => last,
            StatePool::Mean => mean,
        })
    }
}
