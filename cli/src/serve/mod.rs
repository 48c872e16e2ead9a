//! `ternforge serve`: an OpenAI-compatible HTTP server (axum + tokio).
//!
//! Layout:
//! - [`backend`]: the [`GenerationBackend`] trait the server generates through;
//! - [`queue`]: bounded job queue + blocking worker threads (generation never runs on the
//!   async threads);
//! - [`routes`]: the handlers; [`api`]: request bodies; [`error`]: JSON errors;
//! - [`metrics`]: counters and Prometheus text.
//!
//! Endpoints:
//! - `GET /health` (liveness, always 200), `GET /health/ready` (200 once the model is loaded,
//!   503 while loading or shutting down), `GET /metrics` (Prometheus text);
//! - `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (OpenAI bodies;
//!   `stream: true` answers with server-sent events ending in `data: [DONE]`; extensions
//!   `top_k` and `repetition_penalty`).
//!
//! Errors are `{"error": {"message", "type", "code"}}`: 400 bad JSON / values / prompt too
//! long for the context, 413 body too large, 429 queue full, 503 loading or shutting down.
//!
//! The server listens before the model is loaded: `/health` answers at once,
//! `/health/ready` says 503 until the model is in, generation endpoints answer 503 meanwhile.
//! On SIGINT/SIGTERM it stops accepting, lets running and queued generations finish for
//! the shutdown timeout, then cancels whatever is left.

pub mod api;
pub mod backend;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod queue;
pub mod routes;

pub use backend::GenerationBackend;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics::Metrics;
use queue::JobQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body (413 above).
    pub body_bytes: usize,
    /// Largest accepted `max_tokens` (400 above).
    pub max_tokens: usize,
    /// Completion length when the request gives no `max_tokens` (further capped by the
    /// context left after the prompt).
    pub default_max_tokens: usize,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Name reported as `model`.
    pub model_id: String,
    /// Generation worker threads.
    pub workers: usize,
    /// Waiting requests accepted beyond the running ones (429 above).
    pub queue: usize,
    /// Request limits.
    pub limits: Limits,
    /// How long in-flight generations may run on after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Minimum time between two text pieces of one generation (zero = unpaced).
    pub token_interval: Duration,
}

/// Loads the model (runs on a blocking thread).
pub type Loader = Box<dyn FnOnce() -> Result<Arc<dyn GenerationBackend>, String> + Send>;

/// Shared state of the handlers.
pub struct AppState {
    /// Reported model name.
    pub model_id: String,
    /// Server start, Unix seconds.
    pub started_unix: u64,
    /// Set once the model is loaded.
    pub backend: OnceLock<Arc<dyn GenerationBackend>>,
    /// The job queue.
    pub queue: Arc<JobQueue>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Set on SIGINT/SIGTERM.
    pub shutting_down: AtomicBool,
    /// Number of generation workers.
    pub workers: usize,
    /// Request limits.
    pub limits: Limits,
}

impl AppState {
    /// Whether the model is loaded.
    pub fn is_ready(&self) -> bool {
        self.backend.get().is_some()
    }
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/health/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/v1/models", get(routes::models))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::count_requests,
        ))
        .with_state(state)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Serves on `listener` until SIGINT/SIGTERM (or until `load` fails, which is returned as
/// the error). The model is loaded in the background while the server already answers.
pub async fn serve(listener: TcpListener, opts: ServeOptions, load: Loader) -> Result<(), String> {
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(JobQueue::new(opts.queue, metrics.clone()));
    let state = Arc::new(AppState {
        model_id: opts.model_id.clone(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        backend: OnceLock::new(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        shutting_down: AtomicBool::new(false),
        workers: opts.workers,
        limits: opts.limits,
    });
    let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();

    // Load the model in the background.
    let (fail_tx, fail_rx) = oneshot::channel::<String>();
    {
        let (state, workers, queue, metrics) = (
            state.clone(),
            workers.clone(),
            queue.clone(),
            metrics.clone(),
        );
        let (n, interval) = (opts.workers, opts.token_interval);
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let result = load().and_then(|backend| {
                let handles = queue::spawn_workers(n, queue, backend.clone(), metrics, interval)
                    .map_err(|e| format!("cannot start worker threads: {e}"))?;
                workers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(handles);
                Ok(backend)
            });
            match result {
                Ok(backend) => {
                    let _ = state.backend.set(backend);
                    eprintln!(
                        "ternforge serve: model loaded in {:.2}s, {n} worker(s); ready",
                        t0.elapsed().as_secs_f64()
                    );
                }
                Err(e) => {
                    let _ = fail_tx.send(e);
                }
            }
        });
    }

    let load_error: Arc<Mutex<Option<String>>> = Arc::default();
    let stopping = Arc::new(Notify::new());
    let shutdown = {
        let (state, load_error, stopping) = (state.clone(), load_error.clone(), stopping.clone());
        let timeout = opts.shutdown_timeout;
        async move {
            tokio::select! {
                _ = shutdown_signal() => {
                    eprintln!("ternforge serve: shutting down (in-flight requests get {:.1}s)", timeout.as_secs_f64());
                }
                Ok(e) = fail_rx => {
                    *load_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            state.shutting_down.store(true, Ordering::Relaxed);
            state.queue.close();
            stopping.notify_one();
            let queue = state.queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let n = queue.cancel_all();
                if n > 0 {
                    eprintln!("ternforge serve: cancelled {n} unfinished request(s)");
                }
            });
        }
    };

    let app = router(state.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    // Connections that stay open after the in-flight work was cancelled must not hold the
    // process: give up on them a little after the shutdown timeout.
    let hard_stop = {
        let timeout = opts.shutdown_timeout;
        async move {
            stopping.notified().await;
            tokio::time::sleep(timeout + Duration::from_secs(2)).await;
        }
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("server error: {e}"))?,
        _ = hard_stop => eprintln!("ternforge serve: connections still open after the shutdown timeout; closing"),
    }

    // Workers exit once the (closed) queue is drained; every job is cancelled by now or
    // will be at the timeout.
    let handles = std::mem::take(&mut *workers.lock().unwrap_or_else(|e| e.into_inner()));
    let joined = tokio::task::spawn_blocking(move || {
        for h in handles {
            let _ = h.join();
        }
    });
    if tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .is_err()
    {
        eprintln!("ternforge serve: a generation worker did not stop; exiting anyway");
    }
    if let Some(e) = load_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn answers_while_loading_and_ready_after() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let path =
            std::env::temp_dir().join(format!("ternforge-serve-unit-{}.gguf", std::process::id()));
        let bytes = ternforge_engine::synth::synthesize(
            ternforge_engine::synth::Shape::TINY,
            ternforge::Format::I2S,
            1,
        )
        .unwrap();
        std::fs::write(&path, bytes).unwrap();
        let model_path = path.clone();
        let loader: Loader = Box::new(move || {
            go_rx.recv().map_err(|e| e.to_string())?;
            let b = engine::EngineBackend::load(&model_path)?;
            Ok(Arc::new(b) as Arc<dyn GenerationBackend>)
        });
        let opts = ServeOptions {
            model_id: "m".into(),
            workers: 1,
            queue: 1,
            limits: Limits {
                body_bytes: 1024,
                max_tokens: 16,
                default_max_tokens: 4,
            },
            shutdown_timeout: Duration::from_secs(1),
            token_interval: Duration::ZERO,
        };
        rt.spawn(serve(listener, opts, loader));

        let (st, body) = http(addr, "GET", "/health", "");
        assert_eq!(st, 200);
        assert!(body.contains("\"ready\":false"), "{body}");
        let (st, body) = http(addr, "GET", "/health/ready", "");
        assert_eq!(st, 503);
        assert!(body.contains("loading"), "{body}");
        let (st, body) = http(addr, "POST", "/v1/completions", r#"{"prompt":"a"}"#);
        assert_eq!(st, 503);
        assert!(body.contains("model_loading"), "{body}");
        assert!(http(addr, "GET", "/metrics", "")
            .1
            .contains("ternforge_ready 0\n"));

        go_tx.send(()).unwrap();
        let t0 = Instant::now();
        while http(addr, "GET", "/health/ready", "").0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(10), "never ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (st, body) = http(addr, "POST", "/v1/completions", r#"{"prompt":"a"}"#);
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("\"usage\""), "{body}");
        let _ = std::fs::remove_file(&path);
    }
}
