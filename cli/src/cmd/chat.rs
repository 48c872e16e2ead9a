//! `ternforge chat`: an interactive instruct conversation on stdin/stdout, using the model's
//! chat template (BitNet 2B4T or LLaMA-3 style). The KV cache is kept across turns; each turn
//! only prefills its new tokens.

use super::Error;
use std::io::{BufRead, Write};
use ternforge_engine::chat::{ChatMessage, ChatTemplate};
use ternforge_engine::forward::Session;
use ternforge_engine::generate::{generate, GenerateParams};
use ternforge_engine::gguf::Gguf;
use ternforge_engine::model::{self, Model};
use ternforge_engine::sample::SamplerConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF model.
    #[arg(long, short)]
    pub model: std::path::PathBuf,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// KV cache element type: `f16` (half the bytes per cached position) or `f32`.
    #[arg(long, default_value = "f16", value_parser = super::parse_kv)]
    pub kv_cache: ternforge_engine::kv::KvType,
}

pub fn run(a: Args) -> Result<(), Error> {
    let file = model::open(&a.model)?;
    let g: &Gguf<_> = &file;
    let m = Model::load(g)?;
    let tok = model::tokenizer(g)?;
    let template = ChatTemplate::detect(g.get_str("tokenizer.chat_template").ok());
    let sampler = SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repeat_penalty,
        seed: a.seed,
        ..Default::default()
    };
    sampler.validate()?;
    let mut stop_ids = tok.stop_ids();
    stop_ids.extend(tok.eos_id());
    let mut history: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut session = Session::with_kv(&m, a.kv_cache);
    // tokens already in the KV cache
    let mut cached: Vec<u32> = Vec::new();
    eprintln!(
        "ternforge chat ({} template); empty line or Ctrl-D to quit",
        template.name()
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        history.push(ChatMessage::new("user", line.trim_end()));
        let all = template.encode(&tok, &history, true, true)?;
        // reuse the cached prefix when the rendered conversation extends it
        let new: Vec<u32> = if all.starts_with(&cached) {
            all[cached.len()..].to_vec()
        } else {
            session.reset();
            cached.clear();
            all.clone()
        };
        let params = GenerateParams {
            max_tokens: a.max_tokens,
            sampler: SamplerConfig {
                seed: sampler.seed.wrapping_add(history.len() as u64),
                ..sampler.clone()
            },
            stop_ids: stop_ids.clone(),
            stop_strings: vec![],
        };
        let mut out = std::io::stdout().lock();
        let gen = generate(&mut session, &tok, &new, &params, |t| {
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
            true
        })?;
        drop(out);
        println!();
        eprintln!(
            "[{} tokens, {:.2} tok/s]",
            gen.tokens.len(),
            gen.decode_tps()
        );
        // the KV cache holds the rendered conversation and the generated tokens that were
        // fed back (a prefix of gen.tokens); the next turn reuses it when its rendering
        // extends exactly these tokens, and re-prefills otherwise
        let fed = session.pos() - all.len().min(session.pos());
        cached = all;
        cached.extend_from_slice(&gen.tokens[..fed.min(gen.tokens.len())]);
        if session.pos() != cached.len() {
            session.reset();
            cached.clear();
        }
        history.push(ChatMessage::new("assistant", gen.text.trim()));
    }
}
