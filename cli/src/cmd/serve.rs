//! `ternforge serve`: OpenAI-compatible HTTP server over one model (see `crate::serve`).

use super::Error;
use crate::serve::engine::EngineBackend;
use crate::serve::{self, Limits, Loader, ServeOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF model file.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free port; the chosen address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Generation worker threads (requests generated at the same time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// Requests that may wait for a worker; more are refused with 429.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Name reported as `model` (default: the file name without extension).
    #[arg(long)]
    model_id: Option<String>,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Largest `max_tokens` a request may ask for (400 above).
    #[arg(long, default_value_t = 4096)]
    max_tokens_limit: usize,
    /// Completion length when a request gives no `max_tokens`.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// Seconds in-flight requests may run on after SIGINT/SIGTERM before being cancelled.
    #[arg(long, default_value_t = 10.0)]
    shutdown_timeout: f64,
    /// Minimum milliseconds between two tokens of one request (0 = as fast as possible);
    /// simulates a slower model for client and load testing.
    #[arg(long, default_value_t = 0)]
    token_interval_ms: u64,
}

pub fn run(a: Args) -> Result<(), Error> {
    if !(a.shutdown_timeout.is_finite() && a.shutdown_timeout >= 0.0) {
        return Err("--shutdown-timeout must be a number of seconds >= 0".into());
    }
    if a.max_body == 0 || a.max_tokens_limit == 0 || a.default_max_tokens == 0 {
        return Err("--max-body, --max-tokens-limit and --default-max-tokens must be >= 1".into());
    }
    if !a.model.is_file() {
        return Err(format!("model file {} not found", a.model.display()).into());
    }
    // the matmul pool computes at a lower priority than the HTTP threads (see crate::prio)
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("ternforge-mm-{i}"))
        .start_handler(|_| crate::prio::lower_this_thread())
        .build_global()?;
    let model_id = a.model_id.clone().unwrap_or_else(|| {
        a.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let path = a.model.clone();
    let loader: Loader = Box::new(move || {
        EngineBackend::load(&path).map(|b| Arc::new(b) as Arc<dyn serve::GenerationBackend>)
    });
    let opts = ServeOptions {
        model_id,
        workers: a.parallel as usize,
        queue: a.queue,
        limits: Limits {
            body_bytes: a.max_body,
            max_tokens: a.max_tokens_limit,
            default_max_tokens: a.default_max_tokens,
        },
        shutdown_timeout: Duration::from_secs_f64(a.shutdown_timeout),
        token_interval: Duration::from_millis(a.token_interval_ms),
    };
    // Two async threads are plenty: all heavy work runs on the generation workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        println!("ternforge serve: listening on http://{addr}");
        std::io::stdout().flush()?;
        serve::serve(listener, opts, loader)
            .await
            .map_err(Error::from)
    })
}
