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
use ternforge_engine::tokenizer::{Tokenizer, TokenizerConfig};

/// A loaded model. The memory-mapped file is leaked on purpose: the server serves one model
/// for the life of the process and every worker borrows the weights from it.
pub struct EngineBackend {
    model: Model<'static>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: HashSet<u32>,
    add_bos: bool,
}

/// Tokenizer settings from the GGUF `tokenizer.*` metadata.
fn tokenizer_config(g: &GgufFile) -> Result<TokenizerConfig, String> {
    let req = |k: &str| g.get_str(k).map(str::to_string).map_err(|e| e.to_string());
    Ok(TokenizerConfig {
        model: req("tokenizer.ggml.model")?,
        pre: g.get_str("tokenizer.ggml.pre").ok().map(str::to_string),
        tokens: g
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(|e| e.to_string())?
            .to_vec(),
        merges: g
            .get_str_array("tokenizer.ggml.merges")
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
        token_types: g
            .get_i32_array("tokenizer.ggml.token_type")
            .ok()
            .map(<[i32]>::to_vec),
        bos_token_id: g.get_u32("tokenizer.ggml.bos_token_id").ok(),
        eos_token_id: g.get_u32("tokenizer.ggml.eos_token_id").ok(),
        eot_token_id: g.get_u32("tokenizer.ggml.eot_token_id").ok(),
        eom_token_id: g.get_u32("tokenizer.ggml.eom_token_id").ok(),
        add_bos_token: g.get_bool("tokenizer.ggml.add_bos_token").ok(),
        chat_template: g
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string),
    })
}

impl EngineBackend {
    /// Opens and checks a GGUF model file.
    pub fn load(path: &Path) -> Result<EngineBackend, String> {
        let at = |e: &dyn std::fmt::Display| format!("cannot load {}: {e}", path.display());
        let file = model::open(path).map_err(|e| at(&e))?;
        let tcfg = tokenizer_config(&file).map_err(|e| at(&e))?;
        let tokenizer = Tokenizer::from_config(&tcfg).map_err(|e| at(&e))?;
        let file: &'static GgufFile = Box::leak(Box::new(file));
        let model = Model::load(file).map_err(|e| at(&e))?;
        Ok(EngineBackend {
            template: ChatTemplate::detect(tcfg.chat_template.as_deref()),
            stop_ids: tokenizer.stop_ids(),
            add_bos: tokenizer.bos_id().is_some() && tcfg.add_bos_token.unwrap_or(true),
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
        let out = generate::generate(
            &mut session,
            &self.tokenizer,
            &req.prompt_tokens,
            &params,
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
