//! OpenAI-compatible request bodies and their validation. Unknown fields are ignored.

use super::backend::{Message, Prompt, Sampling};
use super::error::ApiError;
use serde::Deserialize;
use serde_json::Value;

/// Body of `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// A string, or an array holding exactly one string.
    pub prompt: Option<Value>,
    /// Common parameters.
    #[serde(flatten)]
    pub params: Params,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    /// The conversation.
    pub messages: Option<Vec<ChatMessageBody>>,
    /// Common parameters.
    #[serde(flatten)]
    pub params: Params,
}

/// One message: `content` is a string or an array of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessageBody {
    /// Role.
    pub role: String,
    /// Content (null allowed, as for assistant tool-call messages).
    #[serde(default)]
    pub content: Value,
}

/// `stop`: a string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Parameters shared by both endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    /// Completion length limit.
    pub max_tokens: Option<i64>,
    /// Newer OpenAI name of `max_tokens` (chat).
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature, 0..=2 (0 = greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, (0, 1].
    pub top_p: Option<f64>,
    /// Top-k (extension), 0 = off.
    pub top_k: Option<i64>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Repetition penalty (extension), > 0, 1 = off.
    pub repetition_penalty: Option<f64>,
    /// Stream with server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices (only 1 is supported).
    pub n: Option<i64>,
}

/// Most stop strings accepted in one request.
pub const MAX_STOP_STRINGS: usize = 16;

/// Checked parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Requested completion length (`None` = as long as the context allows, up to the
    /// server's default).
    pub max_tokens: Option<usize>,
    /// Sampling.
    pub sampling: Sampling,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Streaming?
    pub stream: bool,
    /// Final usage chunk when streaming.
    pub include_usage: bool,
}

impl Params {
    /// Validates ranges; `max_tokens_limit` is the server's cap on `max_tokens`.
    pub fn check(&self, max_tokens_limit: usize) -> Result<Checked, ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_value", m);
        if let Some(n) = self.n {
            if n != 1 {
                return Err(bad(format!("'n' must be 1 (got {n})")));
            }
        }
        let max_tokens = match self.max_tokens.or(self.max_completion_tokens) {
            None => None,
            Some(m) if m < 1 => return Err(bad(format!("'max_tokens' must be >= 1 (got {m})"))),
            Some(m) if m as u64 > max_tokens_limit as u64 => {
                return Err(bad(format!(
                    "'max_tokens' is {m}, above this server's limit of {max_tokens_limit}"
                )))
            }
            Some(m) => Some(m as usize),
        };
        let mut sampling = Sampling::default();
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(bad(format!(
                    "'temperature' must be between 0 and 2 (got {t})"
                )));
            }
            sampling.temperature = t as f32;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad(format!("'top_p' must be in (0, 1] (got {p})")));
            }
            sampling.top_p = p as f32;
        }
        if let Some(k) = self.top_k {
            if k < 0 {
                return Err(bad(format!("'top_k' must be >= 0 (got {k})")));
            }
            sampling.top_k = usize::try_from(k).unwrap_or(usize::MAX);
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return Err(bad(format!("'repetition_penalty' must be > 0 (got {r})")));
            }
            sampling.repetition_penalty = r as f32;
        }
        // Negative seeds (allowed by OpenAI) keep their bits.
        sampling.seed = self.seed.map(|s| s as u64);
        let stop: Vec<String> = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(bad(format!(
                "at most {MAX_STOP_STRINGS} stop strings are accepted (got {})",
                stop.len()
            )));
        }
        let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
        Ok(Checked {
            max_tokens,
            sampling,
            stop,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl CompletionBody {
    /// The prompt text.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let bad = |m: &str| ApiError::bad_request("invalid_prompt", m);
        match &self.prompt {
            None | Some(Value::Null) => Err(bad("'prompt' is required")),
            Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s)] => Ok(Prompt::Text(s.clone())),
                _ => Err(bad(
                    "'prompt' must be a string or an array of exactly one string",
                )),
            },
            Some(_) => Err(bad("'prompt' must be a string")),
        }
    }
}

impl ChatBody {
    /// The conversation.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_messages", m);
        let msgs = self
            .messages
            .as_ref()
            .ok_or_else(|| bad("'messages' is required".into()))?;
        if msgs.is_empty() {
            return Err(bad("'messages' must not be empty".into()));
        }
        let mut out = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let content = match &m.content {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Array(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => text.push_str(t),
                            _ => {
                                return Err(bad(format!(
                                    "messages[{i}].content: only text parts are supported"
                                )))
                            }
                        }
                    }
                    text
                }
                _ => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or an array of text parts"
                    )))
                }
            };
            out.push(Message {
                role: m.role.clone(),
                content,
            });
        }
        Ok(Prompt::Chat(out))
    }
}

/// Parses a JSON body into `T`, answering 400 with serde's message on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_ranges() {
        let p: Params = serde_json::from_str(r#"{"temperature": 3}"#).unwrap();
        assert!(p.check(100).is_err());
        let p: Params = serde_json::from_str(r#"{"max_tokens": 101}"#).unwrap();
        assert!(p.check(100).unwrap_err().message.contains("limit of 100"));
        let p: Params = serde_json::from_str(r#"{"max_tokens": 0}"#).unwrap();
        assert!(p.check(100).is_err());
        let p: Params = serde_json::from_str(r#"{"top_p": 0}"#).unwrap();
        assert!(p.check(100).is_err());
        let p: Params = serde_json::from_str(r#"{"n": 2}"#).unwrap();
        assert!(p.check(100).is_err());
        let p: Params =
            serde_json::from_str(r#"{"stop": "x", "seed": -1, "top_k": 5, "whatever": [1]}"#)
                .unwrap();
        let c = p.check(100).unwrap();
        assert_eq!(c.stop, vec!["x".to_string()]);
        assert_eq!(c.sampling.seed, Some(u64::MAX));
        assert_eq!(c.sampling.top_k, 5);
        let p: Params = serde_json::from_str(r#"{"stop": ["a", "", "b"]}"#).unwrap();
        assert_eq!(p.check(100).unwrap().stop, vec!["a", "b"]);
    }

    #[test]
    fn prompts() {
        let b: CompletionBody = serde_json::from_str(r#"{"prompt": ["hi"]}"#).unwrap();
        assert_eq!(b.prompt().unwrap(), Prompt::Text("hi".into()));
        let b: CompletionBody = serde_json::from_str(r#"{"prompt": [1, 2]}"#).unwrap();
        assert!(b.prompt().is_err());
        let b: ChatBody = serde_json::from_str(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            b.prompt().unwrap(),
            Prompt::Chat(vec![Message {
                role: "user".into(),
                content: "ab".into()
            }])
        );
        let b: ChatBody = serde_json::from_str(r#"{"messages": []}"#).unwrap();
        assert!(b.prompt().is_err());
    }
}
