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

/// Incremental stop-string matching over streamed text: text that could be the beginning of
/// a stop string is held back until it is known not to be one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopScan {
    /// No stop string yet; this text is safe to emit (may be empty).
    Continue(String),
    /// A stop string was found; emit this text (before the stop string) and end.
    Stopped(String),
}

impl StopMatcher {
    /// Matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds newly generated text.
    pub fn push(&mut self, text: &str) -> StopScan {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopScan::Continue(std::mem::take(&mut self.held));
        }
        // Earliest complete occurrence of any stop string.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopScan::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices().rev() {
            let suffix = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                keep_from = i;
            }
            if self.held.len() - i >= self.max_stop_len() {
                break;
            }
        }
        let out = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopScan::Continue(out)
    }

    /// Text still held back at the end of generation (no stop string matched).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(|s| s.len()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopScan::Continue(t) => out.push_str(&t),
                StopScan::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn false_prefix_is_released() {
        assert_eq!(run(&["END"], &["aE", "Nx", "y"]), ("aENxy".into(), false));
    }

    #[test]
    fn earliest_of_several_stops() {
        assert_eq!(run(&["zz", "b"], &["azzb"]), ("a".into(), true));
        assert_eq!(run(&["zz", "b"], &["abzz"]), ("a".into(), true));
    }

    #[test]
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn multibyte_text() {
        assert_eq!(run(&["éé"], &["aé", "bé", "é!"]), ("aéb".into(), true));
        assert_eq!(run(&["é!"], &["日本", "é"]), ("日本é".into(), false));
    }

    #[test]
    fn held_text_never_leaks_a_partial_stop() {
        let stops = vec!["<|end|>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("hi <|e"), StopScan::Continue("hi ".into()));
        assert_eq!(m.push("nd"), StopScan::Continue(String::new()));
        assert_eq!(m.push("|>tail"), StopScan::Stopped(String::new()));
    }
}
