//! HTTP handlers.

use super::api::{parse_json, ChatBody, Checked, CompletionBody};
use super::backend::{FinishReason, GenError, GenOutcome, GenRequest, Prompt};
use super::error::ApiError;
use super::queue::{Job, JobEvent, JobQueue, PushError};
use super::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Endpoint label for metrics (a fixed set, so that random paths cannot grow the table).
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/health/ready" => "/health/ready",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        _ => "other",
    }
}

/// Middleware counting every answered request by endpoint and status.
pub async fn count_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let label = endpoint_label(req.uri().path());
    let resp = next.run(req).await;
    st.metrics.record_request(label, resp.status().as_u16());
    resp
}

/// `GET /health`: liveness; touches nothing but an atomic.
pub async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"status": "ok", "ready": st.is_ready()}))
}

/// `GET /health/ready`: 200 once the model is loaded (and not shutting down), else 503.
pub async fn ready(State(st): State<Arc<AppState>>) -> Response {
    if st.shutting_down.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response()
    } else if st.is_ready() {
        Json(json!({"status": "ready", "model": st.model_id})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let body = st
        .metrics
        .render(st.is_ready(), st.workers, st.queue.capacity());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /v1/models`.
pub async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": st.model_id, "object": "model", "created": st.started_unix, "owned_by": "ternforge"}]
    }))
}

/// Answers unknown paths with a JSON 404.
pub async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no such endpoint: {} {}", req.method(), req.uri().path()),
        kind: "invalid_request_error",
        code: "not_found",
    }
}

/// Answers a wrong method on a known path with a JSON 405.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "method {} not allowed on {}",
            req.method(),
            req.uri().path()
        ),
        kind: "invalid_request_error",
        code: "method_not_allowed",
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("request body is larger than the limit of {limit} bytes"),
                kind: "invalid_request_error",
                code: "request_too_large",
            }
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

/// `POST /v1/completions`.
pub async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, st.limits.body_bytes)?;
    let body: CompletionBody = parse_json(&bytes)?;
    let prompt = body.prompt()?;
    let params = body.params.check(st.limits.max_tokens)?;
    generate(st, prompt, params, Kind::Completion).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, st.limits.body_bytes)?;
    let body: ChatBody = parse_json(&bytes)?;
    let prompt = body.prompt()?;
    let params = body.params.check(st.limits.max_tokens)?;
    generate(st, prompt, params, Kind::Chat).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Cancels and unregisters a job when the request (or its SSE stream) is dropped.
struct JobGuard {
    cancel: Arc<AtomicBool>,
    queue: Arc<JobQueue>,
    id: u64,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.queue.forget(self.id);
    }
}

fn gen_error(e: GenError) -> ApiError {
    match e {
        GenError::InvalidRequest(m) => ApiError::bad_request("invalid_request", m),
        GenError::Internal(m) => ApiError::internal(m),
    }
}

async fn generate(
    st: Arc<AppState>,
    prompt: Prompt,
    params: Checked,
    kind: Kind,
) -> Result<Response, ApiError> {
    if st.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable(
            "shutting_down",
            "server is shutting down",
        ));
    }
    let backend = st.backend.get().cloned().ok_or_else(|| {
        ApiError::unavailable("model_loading", "the model is still loading; retry later")
    })?;
    // Refuse at once when the queue is already full, before spending time on tokenizing.
    if st.queue.is_full() {
        st.metrics
            .rejected_queue_full
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::queue_full(st.queue.capacity()));
    }
    // Tokenizing can take a while for long prompts: off the async threads.
    let enc_backend = backend.clone();
    let tokens = tokio::task::spawn_blocking(move || enc_backend.encode_prompt(&prompt))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
        .map_err(gen_error)?;
    let ctx = backend.context_length();
    let n_prompt = tokens.len();
    if n_prompt >= ctx {
        return Err(ApiError::bad_request(
            "context_length_exceeded",
            format!(
                "the prompt is {n_prompt} tokens long; this model's context is {ctx} tokens (prompt + completion)"
            ),
        ));
    }
    let room = ctx - n_prompt;
    let max_tokens = match params.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::bad_request(
                "context_length_exceeded",
                format!(
                    "this model's context is {ctx} tokens, but {} were requested ({n_prompt} in the prompt, {m} in the completion); lower max_tokens",
                    n_prompt + m
                ),
            ))
        }
        Some(m) => m,
        None => room.min(st.limits.default_max_tokens),
    };
    let req = GenRequest {
        prompt_tokens: tokens,
        max_tokens,
        sampling: params.sampling,
        stop: params.stop.clone(),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = unbounded_channel();
    let id = match st.queue.try_push(Job {
        req,
        cancel: cancel.clone(),
        events: tx,
    }) {
        Ok(id) => id,
        Err(PushError::Full) => {
            st.metrics
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::queue_full(st.queue.capacity()));
        }
        Err(PushError::Closed) => {
            return Err(ApiError::unavailable(
                "shutting_down",
                "server is shutting down",
            ))
        }
    };
    let guard = JobGuard {
        cancel,
        queue: st.queue.clone(),
        id,
    };
    let meta = Meta {
        id: format!(
            "{}-{:x}{:06x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            st.started_unix,
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ),
        created: now_unix(),
        model: st.model_id.clone(),
        kind,
        prompt_tokens: n_prompt,
    };
    if params.stream {
        Ok(stream_response(meta, rx, guard, params.include_usage))
    } else {
        whole_response(meta, rx, guard).await
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
}

impl Meta {
    fn usage(&self, completion: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

async fn whole_response(
    meta: Meta,
    mut rx: UnboundedReceiver<JobEvent>,
    guard: JobGuard,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let outcome: GenOutcome = loop {
        match rx.recv().await {
            Some(JobEvent::Started) => {}
            Some(JobEvent::Text(t)) => text.push_str(&t),
            Some(JobEvent::Done(r)) => break r.map_err(gen_error)?,
            None => return Err(ApiError::internal("generation worker vanished")),
        }
    };
    drop(guard);
    if outcome.finish_reason == FinishReason::Cancelled {
        return Err(ApiError::unavailable(
            "cancelled",
            "generation was cancelled (server shutting down)",
        ));
    }
    let finish = outcome.finish_reason.as_openai();
    let choice = match meta.kind {
        Kind::Completion => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        }
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish,
        }),
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": meta.usage(outcome.completion_tokens),
    }))
    .into_response())
}

/// State of an SSE stream.
struct StreamState {
    meta: Meta,
    rx: UnboundedReceiver<JobEvent>,
    _guard: JobGuard,
    include_usage: bool,
    sent_first: bool,
    /// Events ready to go out before reading the channel again.
    pending: std::collections::VecDeque<Event>,
    finished: bool,
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

fn stream_response(
    meta: Meta,
    rx: UnboundedReceiver<JobEvent>,
    guard: JobGuard,
    include_usage: bool,
) -> Response {
    let state = StreamState {
        meta,
        rx,
        _guard: guard,
        include_usage,
        sent_first: false,
        pending: Default::default(),
        finished: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            if s.finished {
                return None;
            }
            match s.rx.recv().await {
                Some(JobEvent::Started) => {
                    if s.meta.kind == Kind::Chat && !s.sent_first {
                        s.sent_first = true;
                        let c = s.meta.chunk(Some(""), true, None);
                        s.pending.push_back(data(&c));
                    }
                }
                Some(JobEvent::Text(t)) => {
                    let first = !s.sent_first;
                    s.sent_first = true;
                    let c = s.meta.chunk(Some(&t), first, None);
                    s.pending.push_back(data(&c));
                }
                Some(JobEvent::Done(Ok(outcome))) => {
                    s.finished = true;
                    let c = s
                        .meta
                        .chunk(None, false, Some(outcome.finish_reason.as_openai()));
                    s.pending.push_back(data(&c));
                    if s.include_usage {
                        let mut u = s.meta.chunk(None, false, None);
                        u["choices"] = json!([]);
                        u["usage"] = s.meta.usage(outcome.completion_tokens);
                        s.pending.push_back(data(&u));
                    }
                    s.pending.push_back(Event::default().data("[DONE]"));
                }
                Some(JobEvent::Done(Err(e))) => {
                    s.finished = true;
                    s.pending.push_back(data(&gen_error(e).body()));
                    s.pending.push_back(Event::default().data("[DONE]"));
                }
                None => {
                    s.finished = true;
                    let e = ApiError::internal("generation worker vanished");
                    s.pending.push_back(data(&e.body()));
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
