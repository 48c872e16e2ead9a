//! Development backend used until the engine's forward pass lands: bytes are tokens and the
//! "model" spells out a fixed text. Selected with `--dev-backend` (hidden).

use super::backend::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// The byte-level development backend.
pub struct DevBackend {
    /// Context length in tokens (bytes).
    pub context: usize,
}

const TEXT: &str = "the quick brown fox jumps over the lazy dog. ";

impl GenerationBackend for DevBackend {
    fn context_length(&self) -> usize {
        self.context
    }

    fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, GenError> {
        let text = match prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(m) => {
                if let Some(bad) = m
                    .iter()
                    .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
                {
                    return Err(GenError::InvalidRequest(format!(
                        "unsupported message role {:?}",
                        bad.role
                    )));
                }
                m.iter()
                    .map(|m| format!("{}: {}\n", m.role, m.content))
                    .collect()
            }
        };
        Ok(text.bytes().map(u32::from).collect())
    }

    fn generate(
        &self,
        req: GenRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenOutcome, GenError> {
        let mut stop = StopMatcher::new(&req.stop);
        let start = req.sampling.seed.unwrap_or(0) as usize % TEXT.len();
        for i in 0..req.max_tokens {
            if cancel.load(Ordering::Relaxed) {
                return Ok(GenOutcome {
                    completion_tokens: i,
                    finish_reason: FinishReason::Cancelled,
                });
            }
            let at = (start + i) % TEXT.len();
            match stop.push(&TEXT[at..at + 1]) {
                StopScan::Continue(t) => {
                    if !on_text(&t) {
                        return Ok(GenOutcome {
                            completion_tokens: i + 1,
                            finish_reason: FinishReason::Cancelled,
                        });
                    }
                }
                StopScan::Stopped(t) => {
                    on_text(&t);
                    return Ok(GenOutcome {
                        completion_tokens: i + 1,
                        finish_reason: FinishReason::Stop,
                    });
                }
            }
        }
        on_text(&stop.finish());
        Ok(GenOutcome {
            completion_tokens: req.max_tokens,
            finish_reason: FinishReason::Length,
        })
    }
}
