//! A generator on its own thread behind a bounded queue.
//!
//! Requests that find the queue full are refused at once ([`SubmitError::QueueFull`]) instead
//! of piling up; the caller turns that into 503 + `Retry-After`. Each job streams its events
//! into a sink; a sink that returns `false` (its client went away) cancels the job, whether it
//! is still queued or already generating.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use crate::chat::PromptFormat;
use crate::generate::{Generation, Generator, SamplingParams};
use crate::{Error, Result};

/// What a job reports, in order: `Started` once, `Text` any number of times, then `Done`.
#[derive(Debug)]
pub enum GenEvent {
    /// The worker picked the job up after waiting `queued_ms`.
    Started {
        queued_ms: f64,
    },
    Text(String),
    Done(Result<Generation>),
}

/// Receives a job's events; returns `false` when nobody listens any more.
pub type Sink = Box<dyn FnMut(GenEvent) -> bool + Send>;

struct Job {
    prompt: String,
    params: SamplingParams,
    sink: Sink,
    submitted: Instant,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the generation queue is full ({capacity} waiting); retry shortly")]
    QueueFull { capacity: usize },
    #[error("the generation worker has stopped")]
    Stopped,
}

/// Handle to the worker thread; cheap to clone.
#[derive(Clone)]
pub struct GeneratorWorker {
    tx: SyncSender<Job>,
    format: Arc<PromptFormat>,
    name: Arc<str>,
    /// Jobs waiting plus the one running.
    load: Arc<AtomicUsize>,
    capacity: usize,
    /// Generations that panicked (each ended its job with an error).
    panics: Arc<AtomicUsize>,
    /// False once the worker thread has ended.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl GeneratorWorker {
    /// Start the worker thread; at most `capacity` jobs wait behind the running one.
    pub fn spawn(mut generator: Box<dyn Generator>, capacity: usize) -> Result<Self> {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let format = generator.format();
        let name: Arc<str> = generator.name().into();
        let load = Arc::new(AtomicUsize::new(0));
        let worker_load = load.clone();
        let panics = Arc::new(AtomicUsize::new(0));
        let worker_panics = panics.clone();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let worker_alive = alive.clone();
        std::thread::Builder::new()
            .name(format!("generate-{name}"))
            .spawn(move || {
                while let Ok(mut job) = rx.recv() {
                    let queued_ms = job.submitted.elapsed().as_secs_f64() * 1e3;
                    if (job.sink)(GenEvent::Started { queued_ms }) {
                        let sink = &mut job.sink;
                        let _span = tracing::info_span!("generate", queued_ms).entered();
                        // A panic in one generation (a model bug, a bad input) must not stop
                        // every later answer: it ends this job with an error and the worker
                        // goes on with the next one.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            generator.generate(&job.prompt, &job.params, &mut |t: &str| {
                                sink(GenEvent::Text(t.to_string()))
                            })
                        }))
                        .unwrap_or_else(|p| {
                            let what = p
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "unknown panic".into());
                            worker_panics.fetch_add(1, Ordering::SeqCst);
                            tracing::error!(panic = %what, "the generator panicked; the worker goes on with the next job");
                            Err(Error::Generation(format!("the generator failed: {what}")))
                        });
                        match &result {
                            Ok(g) => tracing::info!(
                                prompt_tokens = g.prompt_tokens,
                                completion_tokens = g.completion_tokens,
                                first_token_ms = g.first_token_ms,
                                decode_tok_s = g.decode_tokens_per_s(),
                                finish = ?g.finish_reason,
                                "generated"
                            ),
                            Err(e) => tracing::warn!(error = %e, "generation failed"),
                        }
                        let sink = &mut job.sink;
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(GenEvent::Done(result)))).is_err() {
                            worker_panics.fetch_add(1, Ordering::SeqCst);
                            tracing::error!("a job's sink panicked; the worker goes on with the next job");
                        }
                    }
                    worker_load.fetch_sub(1, Ordering::SeqCst);
                }
                worker_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| Error::Generation(format!("cannot start the worker thread: {e}")))?;
        Ok(Self { tx, format, name, load, capacity, panics, alive })
    }

    /// Queue a job; its events go to `sink` from the worker thread.
    pub fn submit(&self, prompt: String, params: SamplingParams, sink: Sink) -> std::result::Result<(), SubmitError> {
        self.load.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Job { prompt, params, sink, submitted: Instant::now() }) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.load.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull { capacity: self.capacity },
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// Run a job and wait for it (for command-line use).
    pub fn run_blocking(
        &self,
        prompt: String,
        params: SamplingParams,
        mut on_text: impl FnMut(&str) + Send + 'static,
    ) -> Result<Generation> {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let sink: Sink = Box::new(move |ev| {
            match ev {
                GenEvent::Text(t) => on_text(&t),
                GenEvent::Done(r) => {
                    let _ = done_tx.send(r);
                }
                GenEvent::Started { .. } => {}
            }
            true
        });
        self.submit(prompt, params, sink).map_err(|e| Error::Generation(e.to_string()))?;
        done_rx.recv().map_err(|_| Error::Generation("the worker stopped".into()))?
    }

    pub fn format(&self) -> &Arc<PromptFormat> {
        &self.format
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Jobs waiting or running.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Generations that panicked since start.
    pub fn panics(&self) -> usize {
        self.panics.load(Ordering::SeqCst)
    }

    /// Whether the worker thread still takes jobs.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}
