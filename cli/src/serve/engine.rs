//! [`GenerationBackend`] over the ternforge engine: a GGUF BitNet b1.58 model, its
//! tokenizer and chat template.

use super::backend::*;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use ternforge_engine::chat::{ChatMessage, ChatTemplate};
use ternforge_engine::forward::Session;
use ternforge_engine::generate::{self, GenerateParams};
use ternforge_engine::gguf::GgufFile;
use ternforge_engine::model::{self, Model};
use ternforge_engine::sample::SamplerConfig;
use ternforge_engine::tokenizer::Tokenizer;

/// A loaded model. The memory-mapped file is leaked on purpose: the server serves one model
/// for the life of the process and every worker borrows the weights from it.
pub struct EngineBackend {
    model: Model<'static>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: HashSet<u32>,
    add_bos: bool,
}

impl EngineBackend {
    /// Opens and checks a GGUF model file.
    pub fn load(path: &Path) -> Result<EngineBackend, String> {
        let at = |e: &dyn std::fmt::Display| format!("cannot load {}: {e}", path.display());
        let file = model::open(path).map_err(|e| at(&e))?;
        let tokenizer = model::tokenizer(&file).map_err(|e| at(&e))?;
        let template = ChatTemplate::detect(file.get_str("tokenizer.chat_template").ok());
        let file: &'static GgufFile = Box::leak(Box::new(file));
        let model = Model::load(file).map_err(|e| at(&e))?;
        Ok(EngineBackend {
            template,
            stop_ids: tokenizer.stop_ids(),
            add_bos: tokenizer.bos_id().is_some() && tokenizer.add_bos_token(),
            model,
            tokenizer,
        })
    }
}

/// Seed for requests that give none: different for every request.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl GenerationBackend for EngineBackend {
    fn context_length(&self) -> usize {
        self.model.cfg.ctx
    }

    fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, GenError> {
        let r = match prompt {
            Prompt::Text(t) => self.tokenizer.encode(t, self.add_bos),
            Prompt::Chat(msgs) => {
                let msgs: Vec<ChatMessage> = msgs
                    .iter()
                    .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect();
                self.template
                    .encode(&self.tokenizer, &msgs, true, self.add_bos)
            }
        };
        let ids =
            r.map_err(|e| GenError::InvalidRequest(format!("cannot tokenize the prompt: {e}")))?;
        if ids.is_empty() {
            return Err(GenError::InvalidRequest(
                "the prompt is empty (and this model has no BOS token)".into(),
            ));
        }
        Ok(ids)
    }

    fn generate(
        &self,
        req: GenRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenOutcome, GenError> {
        let sampler = SamplerConfig {
            temperature: req.sampling.temperature,
            top_k: req.sampling.top_k,
            top_p: req.sampling.top_p,
            repetition_penalty: req.sampling.repetition_penalty,
            seed: req.sampling.seed.unwrap_or_else(fresh_seed),
            ..SamplerConfig::default()
        };
        sampler.validate().map_err(GenError::InvalidRequest)?;
        let params = GenerateParams {
            max_tokens: req.max_tokens,
            sampler,
            stop_ids: self.stop_ids.clone(),
            stop_strings: req.stop,
        };
        let mut session = Session::new(&self.model);
        let out = generate::generate_cancellable(
            &mut session,
            &self.tokenizer,
            &req.prompt_tokens,
            &params,
            cancel,
            |text| !cancel.load(Ordering::Relaxed) && on_text(text),
        )
        .map_err(|e| GenError::Internal(format!("generation failed: {e}")))?;
        let finish_reason = match out.finish {
            generate::FinishReason::Stop => FinishReason::Stop,
            generate::FinishReason::Length | generate::FinishReason::Context => {
                FinishReason::Length
            }
            generate::FinishReason::Cancelled => FinishReason::Cancelled,
        };
        Ok(GenOutcome {
            completion_tokens: out.tokens.len(),
            finish_reason,
        })
    }
}
