//! Text generation: prefill (one batch), decode loop, stop conditions, streaming, timings.

use crate::forward::{ForwardError, Session};
use crate::sample::{Sampler, SamplerConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Token ids that end generation (not emitted).
    pub stop_ids: HashSet<u32>,
    /// Strings that end generation (not emitted; matched across token boundaries).
    pub stop_strings: Vec<String>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The callback asked to stop (e.g. a client disconnected).
    Cancelled,
    /// The context window is full.
    Context,
}

/// Result and timings of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Generation {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    /// Generated tokens per second of the decode loop (the first token comes from prefill).
    pub fn decode_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Holds back text that could be the start of a stop string.
struct StopMatcher<'s> {
    stops: &'s [String],
    pending: String,
}

impl StopMatcher<'_> {
    /// Add text; returns (text safe to emit, whether a stop string was found).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // keep the longest suffix that is a prefix of a stop string
        let mut keep = 0;
        for s in self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if suffix.len() > keep && s.starts_with(suffix) {
                    keep = suffix.len();
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }
}

/// Generate from `prompt` (token ids). `on_text` receives each newly decoded piece of text and
/// returns `false` to cancel.
pub fn generate(
    session: &mut Session<'_, '_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, ForwardError> {
    generate_cancellable(
        session,
        tokenizer,
        prompt,
        params,
        &AtomicBool::new(false),
        on_text,
    )
}

/// [`generate`] that also stops as soon as `cancel` is set: checked before the prefill and
/// before every token, including tokens that decode to no text yet (control tokens, partial
/// UTF-8).
pub fn generate_cancellable(
    session: &mut Session<'_, '_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    cancel: &AtomicBool,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, ForwardError> {
    let cancelled = || cancel.load(Ordering::Relaxed);
    let t0 = Instant::now();
    if cancelled() {
        return Ok(Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Cancelled,
            prompt_tokens: prompt.len(),
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
        });
    }
    let mut logits = session.forward(prompt)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut sampler = Sampler::new(params.sampler.clone());
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut dec = StreamDecoder::new(true);
    let mut stops = StopMatcher {
        stops: &params.stop_strings,
        pending: String::new(),
    };
    let mut finish = FinishReason::Length;
    while tokens.len() < params.max_tokens {
        if cancelled() {
            finish = FinishReason::Cancelled;
            break;
        }
        let id = sampler.sample(&logits, &history);
        if params.stop_ids.contains(&id) {
            finish = FinishReason::Stop;
            break;
        }
        tokens.push(id);
        history.push(id);
        let (piece, stopped) = stops.push(&dec.push(tokenizer, id));
        text.push_str(&piece);
        if !piece.is_empty() && !on_text(&piece) {
            finish = FinishReason::Cancelled;
            break;
        }
        if stopped {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() == params.max_tokens {
            break;
        }
        if session.pos() + 1 > session.model.cfg.ctx {
            finish = FinishReason::Context;
            break;
        }
        logits = session.forward(&[id])?;
    }
    if finish == FinishReason::Length || finish == FinishReason::Context {
        let (rest, _) = stops.push(&dec.finish());
        let tail = rest + &std::mem::take(&mut stops.pending);
        if !tail.is_empty() {
            text.push_str(&tail);
            on_text(&tail);
        }
    }
    Ok(Generation {
        tokens,
        text,
        finish,
        prompt_tokens: prompt.len(),
        prefill,
        decode: t1.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_split_across_pieces_are_held_back() {
        let stops = vec!["</s>".to_string(), "STOP".to_string()];
        let mut m = StopMatcher {
            stops: &stops,
            pending: String::new(),
        };
        assert_eq!(m.push("hello <"), ("hello ".to_string(), false));
        assert_eq!(m.push("/"), (String::new(), false));
        assert_eq!(m.push("s> more"), (String::new(), true));
        let mut m = StopMatcher {
            stops: &stops,
            pending: String::new(),
        };
        assert_eq!(m.push("ST"), (String::new(), false));
        assert_eq!(m.push("AB"), ("STAB".to_string(), false));
        assert_eq!(m.push("x STO"), ("x ".to_string(), false));
        assert_eq!(m.push("P!"), (String::new(), true));
    }
}
