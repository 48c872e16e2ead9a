//! The boundary between the HTTP server and the model: [`GenerationBackend`].
//!
//! The server tokenizes prompts through [`GenerationBackend::encode_prompt`] (on a blocking
//! thread, before queueing, so that over-long prompts are refused with 400 at once) and runs
//! [`GenerationBackend::generate`] on its worker threads. `generate` is blocking and CPU-bound;
//! it must check `cancel` once per generated token and stop when it is set or when `on_text`
//! returns `false` (the client went away).

use std::fmt;
use std::sync::atomic::AtomicBool;

/// One chat message of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Text content.
    pub content: String,
}

/// What to complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text completion (`/v1/completions`).
    Text(String),
    /// A conversation rendered with the model's chat template (`/v1/chat/completions`).
    Chat(Vec<Message>),
}

/// Sampling settings of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Fixed seed for reproducible sampling.
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    /// Prompt token ids from [`GenerationBackend::encode_prompt`].
    pub prompt_tokens: Vec<u32>,
    /// Generate at most this many tokens (`prompt + max_tokens <= context` is checked).
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or stop string.
    Stop,
    /// `max_tokens` reached (or the context is full).
    Length,
    /// The cancel flag was set or `on_text` returned false.
    Cancelled,
}

impl FinishReason {
    /// OpenAI `finish_reason` value (a cancelled generation has nobody to read it; "stop").
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::Cancelled => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Result of a finished generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenOutcome {
    /// Tokens sampled (including a final stop token, as OpenAI counts them).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// Errors of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenError {
    /// The request cannot be served (bad prompt, ...): HTTP 400.
    InvalidRequest(String),
    /// Anything else: HTTP 500.
    Internal(String),
}

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenError::InvalidRequest(m) | GenError::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for GenError {}

/// A loaded model the server can generate with. Shared by all worker threads.
pub trait GenerationBackend: Send + Sync + 'static {
    /// Context length in tokens (prompt + completion).
    fn context_length(&self) -> usize;

    /// Tokenizes a prompt as generation will see it (BOS, chat template).
    fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, GenError>;

    /// Generates a completion, calling `on_text` with each new piece of text (never text of
    /// or after a stop string). Checks `cancel` once per token; `on_text` returning `false`
    /// also cancels.
    fn generate(
        &self,
        req: GenRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenOutcome, GenError>;
}
