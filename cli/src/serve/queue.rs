//! Bounded job queue and the blocking worker threads that run generations.
//!
//! The async side only ever calls [`JobQueue::try_push`] (a short critical section, never a
//! wait): a full queue is refused at once. Workers block on a condition variable. Results
//! travel back over an unbounded tokio channel, so a worker never waits for a client either.

use super::backend::{FinishReason, GenError, GenOutcome, GenRequest, GenerationBackend};
use super::metrics::Metrics;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What a worker reports about a job.
#[derive(Debug)]
pub enum JobEvent {
    /// A worker picked the job up.
    Started,
    /// New completion text.
    Text(String),
    /// Generation ended.
    Done(Result<GenOutcome, GenError>),
}

/// One queued generation.
pub struct Job {
    /// The validated request.
    pub req: GenRequest,
    /// Set when the client is gone or the server gives up on the job.
    pub cancel: Arc<AtomicBool>,
    /// Where the worker sends [`JobEvent`]s.
    pub events: UnboundedSender<JobEvent>,
}

/// Why [`JobQueue::try_push`] refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// `capacity` jobs are already waiting.
    Full,
    /// The server is shutting down.
    Closed,
}

struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// Bounded FIFO of jobs plus the registry of every unfinished job's cancel flag.
pub struct JobQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    metrics: Arc<Metrics>,
    live: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    next_id: AtomicU64,
}

impl JobQueue {
    /// Queue holding at most `capacity` waiting jobs.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        JobQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
            metrics,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Maximum number of waiting jobs.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a push right now would be refused as full (a hint: the queue may change).
    pub fn is_full(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .jobs
            .len()
            >= self.capacity
    }

    /// Enqueues a job without waiting; returns the job's registry id.
    pub fn try_push(&self, job: Job) -> Result<u64, PushError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = job.cancel.clone();
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.closed {
                return Err(PushError::Closed);
            }
            if st.jobs.len() >= self.capacity {
                return Err(PushError::Full);
            }
            st.jobs.push_back(job);
            self.metrics
                .queue_depth
                .store(st.jobs.len(), Ordering::Relaxed);
        }
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, cancel);
        self.ready.notify_one();
        Ok(id)
    }

    /// Forgets a finished job's cancel flag.
    pub fn forget(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Refuses new jobs from now on; workers exit once the queue is drained.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }

    /// Sets every unfinished job's cancel flag; returns how many there were.
    pub fn cancel_all(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for c in live.values() {
            c.store(true, Ordering::Relaxed);
        }
        live.len()
    }

    /// Blocks until a job is available; `None` once closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = st.jobs.pop_front() {
                self.metrics
                    .queue_depth
                    .store(st.jobs.len(), Ordering::Relaxed);
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Starts `n` worker threads generating with `backend`. `token_interval` paces each
/// generation to at most one text piece per interval (zero = no pacing).
pub fn spawn_workers(
    n: usize,
    queue: Arc<JobQueue>,
    backend: Arc<dyn GenerationBackend>,
    metrics: Arc<Metrics>,
    token_interval: Duration,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (queue, backend, metrics) = (queue.clone(), backend.clone(), metrics.clone());
            std::thread::Builder::new()
                .name(format!("ternforge-gen-{i}"))
                .spawn(move || {
                    // below the HTTP threads, so /health answers while generation runs
                    crate::prio::lower_this_thread();
                    while let Some(job) = queue.pop() {
                        run_job(job, &*backend, &metrics, token_interval);
                    }
                })
        })
        .collect()
}

fn run_job(job: Job, backend: &dyn GenerationBackend, metrics: &Metrics, interval: Duration) {
    let Job {
        req,
        cancel,
        events,
    } = job;
    if cancel.load(Ordering::Relaxed) || events.send(JobEvent::Started).is_err() {
        // Client gone (or server giving up) while the job waited: nothing to do.
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        let _ = events.send(JobEvent::Done(Ok(GenOutcome {
            completion_tokens: 0,
            finish_reason: FinishReason::Cancelled,
        })));
        return;
    }
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    metrics
        .prompt_tokens
        .fetch_add(req.prompt_tokens.len() as u64, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = started;
    let mut on_text = |text: &str| -> bool {
        if !interval.is_zero() {
            let due = last + interval;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            last = Instant::now();
        }
        if text.is_empty() {
            return !events.is_closed();
        }
        events.send(JobEvent::Text(text.to_string())).is_ok()
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        backend.generate(req, &cancel, &mut on_text)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(GenError::Internal(format!("generation failed: {msg}")))
    });
    let secs = started.elapsed().as_secs_f64();
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    if let Ok(outcome) = &result {
        metrics
            .tokens_generated
            .fetch_add(outcome.completion_tokens as u64, Ordering::Relaxed);
        metrics.record_generation(outcome.completion_tokens, secs);
        if outcome.finish_reason == FinishReason::Cancelled {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = events.send(JobEvent::Done(result));
}
