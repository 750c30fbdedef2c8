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
    /// Who asked (a client id; empty: nobody in particular).
    client: Arc<str>,
}

/// How long a client's recent tokens count against it when generations compete, seconds.
const SERVICE_MEMORY_S: f64 = 10.0;

/// Generator time (seconds) each client had recently, decaying with `SERVICE_MEMORY_S`:
/// time, not tokens, since reading a prompt costs as much as writing many tokens.
#[derive(Default)]
struct Service(std::collections::HashMap<Arc<str>, (f64, Instant)>);

impl Service {
    fn of(&self, client: &str, now: Instant) -> f64 {
        self.0.get(client).map_or(0.0, |(v, t)| v * (-(now - *t).as_secs_f64() / SERVICE_MEMORY_S).exp())
    }
    fn add(&mut self, client: &Arc<str>, now: Instant, seconds: f64) {
        let v = self.of(client, now) + seconds;
        self.0.insert(client.clone(), (v, now));
        // Forget clients whose service has decayed away.
        if self.0.len() > 1024 {
            self.0.retain(|_, (v, t)| *v * (-(now - *t).as_secs_f64() / SERVICE_MEMORY_S).exp() > 0.01);
        }
    }
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
    /// Jobs waiting plus those generating.
    load: Arc<AtomicUsize>,
    capacity: usize,
    /// Generations that advance together (a token each in turn).
    parallel: usize,
    /// Generations that panicked (each ended its job with an error).
    panics: Arc<AtomicUsize>,
    /// False once the worker thread has ended.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// How a job's generation began: under way a token at a time, or generated whole.
enum Begun {
    Stepping(crate::generate::Decoding),
    Whole(Result<Generation>),
}

/// A job whose generation is under way, a token at a time.
struct Running {
    job: Job,
    decoding: crate::generate::Decoding,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl GeneratorWorker {
    /// Start the worker thread; at most `capacity` jobs wait behind the running one.
    pub fn spawn(generator: Box<dyn Generator>, capacity: usize) -> Result<Self> {
        Self::spawn_parallel(generator, capacity, 1)
    }

    /// Start the worker thread with up to `parallel` generations under way at once, advanced a
    /// token at a time (when the generator can: the int8 runtime; else one at a time), the one
    /// with the fewest tokens first (least attained service): a long answer delays a new
    /// question's first sentence by a token, not by its whole length, and a client that keeps
    /// long answers going gets the time others leave; at most `capacity` more jobs wait.
    pub fn spawn_parallel(mut generator: Box<dyn Generator>, capacity: usize, parallel: usize) -> Result<Self> {
        let parallel = if generator.stepwise().is_some() { parallel.max(1) } else { 1 };
        let (tx, rx) = sync_channel::<Job>(capacity);
        let format = generator.format();
        let name: Arc<str> = generator.name().into();
        let load = Arc::new(AtomicUsize::new(0));
        let worker_load = load.clone();
        let panics = Arc::new(AtomicUsize::new(0));
        let worker_panics = panics.clone();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let worker_alive = alive.clone();
        let left = load.clone();
        // The end of a job: logged, its last event sent, the load counted down.
        let finish = move |mut job: Job, result: Result<Generation>| {
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
            worker_load.fetch_sub(1, Ordering::SeqCst);
        };
        let panicked = {
            let p = panics.clone();
            move |what: String| {
                p.fetch_add(1, Ordering::SeqCst);
                tracing::error!(panic = %what, "the generator panicked; the worker goes on with the next job");
                Error::Generation(format!("the generator failed: {what}"))
            }
        };
        std::thread::Builder::new()
            .name(format!("generate-{name}"))
            .spawn(move || {
                let mut running: std::collections::VecDeque<Running> = Default::default();
                let mut service = Service::default();
                'serve: loop {
                    // Take new jobs while there is room (waiting for one when idle).
                    while running.len() < parallel {
                        let mut job = if running.is_empty() {
                            match rx.recv() {
                                Ok(j) => j,
                                Err(_) => break 'serve,
                            }
                        } else {
                            match rx.try_recv() {
                                Ok(j) => j,
                                Err(_) => break,
                            }
                        };
                        let queued_ms = job.submitted.elapsed().as_secs_f64() * 1e3;
                        if !(job.sink)(GenEvent::Started { queued_ms }) {
                            left.fetch_sub(1, Ordering::SeqCst);
                            continue;
                        }
                        let _span = tracing::info_span!("generate", queued_ms).entered();
                        // A panic in one generation (a model bug, a bad input) must not stop
                        // every later answer: it ends this job with an error and the worker
                        // goes on with the next one.
                        let begun =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match generator.stepwise() {
                                Some(g) => g.begin(&job.prompt, &job.params).map(Begun::Stepping),
                                None => {
                                    let sink = &mut job.sink;
                                    Ok(Begun::Whole(generator.generate(&job.prompt, &job.params, &mut |t: &str| {
                                        sink(GenEvent::Text(t.to_string()))
                                    })))
                                }
                            }))
                            .unwrap_or_else(|p| Err(panicked(panic_text(p))));
                        match begun {
                            Ok(Begun::Stepping(decoding)) => running.push_back(Running { job, decoding }),
                            Ok(Begun::Whole(result)) => finish(job, result),
                            Err(e) => finish(job, Err(e)),
                        }
                    }
                    // One step (a chunk of prompt, or a token) of a generation of the client
                    // that had the least generator time lately, then of the one with the fewest
                    // tokens; equals take turns. A client that keeps answers going gets the
                    // time others leave; a user who asks now and then is served at full speed.
                    let now = Instant::now();
                    let Some(next) = running
                        .iter()
                        .enumerate()
                        .min_by(|(_, a), (_, b)| {
                            service
                                .of(&a.job.client, now)
                                .total_cmp(&service.of(&b.job.client, now))
                                .then(a.decoding.produced().cmp(&b.decoding.produced()))
                        })
                        .map(|(i, _)| i)
                    else {
                        continue;
                    };
                    let Some(mut r) = running.remove(next) else { continue };
                    let Some(g) = generator.stepwise() else {
                        unreachable!("only a stepwise generator has running jobs")
                    };
                    let sink = &mut r.job.sink;
                    let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        g.step(&mut r.decoding, &mut |t: &str| sink(GenEvent::Text(t.to_string())))
                    }));
                    service.add(&r.job.client, Instant::now(), now.elapsed().as_secs_f64());
                    match stepped {
                        Ok(Ok(false)) => running.push_back(r),
                        Ok(Ok(true)) => {
                            let sink = &mut r.job.sink;
                            let done = g.end(r.decoding, &mut |t: &str| sink(GenEvent::Text(t.to_string())));
                            finish(r.job, Ok(done));
                        }
                        Ok(Err(e)) => {
                            g.end(r.decoding, &mut |_| false);
                            finish(r.job, Err(e));
                        }
                        Err(p) => {
                            g.end(r.decoding, &mut |_| false);
                            finish(r.job, Err(panicked(panic_text(p))));
                        }
                    }
                }
                worker_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| Error::Generation(format!("cannot start the worker thread: {e}")))?;
        Ok(Self { tx, format, name, load, capacity, parallel, panics, alive })
    }

    /// Queue a job; its events go to `sink` from the worker thread.
    pub fn submit(&self, prompt: String, params: SamplingParams, sink: Sink) -> std::result::Result<(), SubmitError> {
        self.submit_for("", prompt, params, sink)
    }

    /// Queue a job for `client`: among generations under way, those of clients served least
    /// lately go first.
    pub fn submit_for(
        &self,
        client: &str,
        prompt: String,
        params: SamplingParams,
        sink: Sink,
    ) -> std::result::Result<(), SubmitError> {
        self.load.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Job { prompt, params, sink, submitted: Instant::now(), client: client.into() }) {
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

    /// Generations under way at once.
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Whether a new job would find the queue full (every generation slot taken and
    /// `capacity` jobs waiting).
    pub fn is_full(&self) -> bool {
        self.load() >= self.capacity + self.parallel
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
