//! `ternforge run`: generate text from a prompt with a BitNet b1.58 GGUF model. Without
//! `--model` it synthesizes a tiny random-weight model in memory (so the command works on a
//! fresh machine; the text is meaningless, the kernels and timings are real).

use super::Error;
use std::collections::HashSet;
use std::io::Write;
use ternforge::Format;
use ternforge_engine::chat::{ChatMessage, ChatTemplate};
use ternforge_engine::forward::Session;
use ternforge_engine::generate::{generate, GenerateParams};
use ternforge_engine::gguf::Gguf;
use ternforge_engine::model::{self, Model};
use ternforge_engine::sample::SamplerConfig;
use ternforge_engine::synth::{synthesize, Shape};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF model (architecture bitnet-b1.58 / bitnet-25 / bitnet). Default: a synthesized
    /// tiny model.
    #[arg(long, short)]
    pub model: Option<std::path::PathBuf>,
    /// Prompt text.
    #[arg(long, short, default_value = "Hello world! BitNet b1.58 runs on CPUs.")]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (instruct models).
    #[arg(long)]
    pub chat: bool,
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0x7e4f_0c2a_9d1b_3865)]
    pub seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Format and preset of the synthesized default model.
    #[arg(long, default_value = "i2s")]
    pub synth_format: String,
    #[arg(long, default_value = "tiny")]
    pub synth_preset: String,
    /// Threads (default: all cores).
    #[arg(long, short)]
    pub threads: Option<usize>,
    /// LM head: `f16` (exact, the file's tensor) or `q8` (an int8 copy built at load, half
    /// the bytes per token).
    #[arg(long, default_value = "f16")]
    pub lm_head: String,
    /// KV cache element type: `f16` (half the bytes per cached position) or `f32`.
    #[arg(long, default_value = "f16", value_parser = super::parse_kv)]
    pub kv_cache: ternforge_engine::kv::KvType,
    /// Write a JSON receipt (model hash, formats, kernels, CPU, timings) to this file.
    #[arg(long)]
    pub receipt: Option<std::path::PathBuf>,
}

pub fn run(a: Args) -> Result<(), Error> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    let sampler = SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repeat_penalty,
        seed: a.seed,
        ..Default::default()
    };
    sampler.validate()?;
    let owned = Source::open(
        a.model.as_deref(),
        &a.synth_format,
        &a.synth_preset,
        |msg| eprintln!("ternforge: no --model given: {msg}"),
    )?;
    let bytes = owned.bytes();
    let g = Gguf::parse_with(bytes, model::parse_options())?;
    let m = Model::load(&g)?;
    let tok = model::tokenizer(&g)?;
    let prompt = if a.chat {
        let t = ChatTemplate::detect(g.get_str("tokenizer.chat_template").ok());
        t.encode(&tok, &[ChatMessage::new("user", &a.prompt)], true, true)?
    } else {
        tok.encode(&a.prompt, tok.add_bos_token())?
    };
    let mut stop_ids: HashSet<u32> = tok.stop_ids();
    stop_ids.extend(tok.eos_id());
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampler,
        stop_ids,
        stop_strings: a.stop.clone(),
    };
    let mut s = Session::with_kv(&m, a.kv_cache);
    match a.lm_head.as_str() {
        "f16" => {}
        "q8" => {
            s.q8_head = Some(std::sync::Arc::new(
                ternforge_engine::lm_head::Q8Head::build(&m),
            ))
        }
        other => return Err(format!("unknown --lm-head {other:?} (f16, q8)").into()),
    }
    let mut out = std::io::stdout().lock();
    let g = generate(&mut s, &tok, &prompt, &params, |t| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
        true
    })?;
    drop(out);
    println!();
    if let Some(path) = &a.receipt {
        let (sha, nbytes) = match &a.model {
            Some(p) => super::receipt::sha256_file(p)?,
            None => (super::receipt::sha256_bytes(bytes), bytes.len() as u64),
        };
        let r = super::receipt::Receipt {
            schema: super::receipt::SCHEMA.into(),
            ternforge_version: env!("CARGO_PKG_VERSION").into(),
            model_path: a.model.as_ref().map(|p| p.display().to_string()),
            model_sha256: sha,
            model_bytes: nbytes,
            architecture: m.cfg.arch.clone(),
            tensor_formats: m
                .tensor_formats()
                .into_iter()
                .map(|(n, f)| (n.to_string(), f.name().to_string()))
                .collect(),
            kernels: s
                .kernel_calls
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            cpu_features: ternforge::cpu::feature_names()
                .into_iter()
                .map(String::from)
                .collect(),
            compiled_isas: ternforge::COMPILED_ISAS.into(),
            build_features: ternforge::BUILD_FEATURES.into(),
            threads: rayon::current_num_threads(),
            kv_cache: s.kv_type().name().into(),
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.tokens.len(),
            finish_reason: format!("{:?}", g.finish),
            prefill_seconds: g.prefill.as_secs_f64(),
            decode_seconds: g.decode.as_secs_f64(),
            prefill_tokens_per_second: g.prefill_tps(),
            decode_tokens_per_second: g.decode_tps(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&r)?)?;
    }
    eprintln!(
        "ternforge: {} prompt tokens at {:.1} tok/s, {} generated at {:.2} tok/s ({:?}); kernels: {}",
        g.prompt_tokens,
        g.prefill_tps(),
        g.tokens.len(),
        g.decode_tps(),
        g.finish,
        s.kernel_calls.keys().copied().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// Model bytes: a memory-mapped file or a synthesized buffer.
pub(super) enum Source {
    File(ternforge_engine::gguf::GgufFile),
    /// A synthesized model, copied to a cache-line aligned buffer (a plain `Vec` starts 16
    /// bytes past a line: every 64-byte load of its tensors would span two lines).
    Mem(ternforge::AlignedBytes),
}

impl Source {
    /// Map `model`, or without one synthesize a `preset` model with random `format` weights
    /// (`announce` is told which).
    pub(super) fn open(
        model: Option<&std::path::Path>,
        format: &str,
        preset: &str,
        announce: impl FnOnce(&str),
    ) -> Result<Source, Error> {
        if let Some(p) = model {
            return Ok(Source::File(model::open(p)?));
        }
        let f = Format::from_name(format).ok_or_else(|| format!("unknown format {format:?}"))?;
        let shape = Shape::from_name(preset)
            .ok_or_else(|| format!("unknown preset {preset:?} (tiny, 2b4t)"))?;
        announce(&format!(
            "synthesized a {preset} model with random {} weights",
            f.name()
        ));
        let bytes = synthesize(shape, f, 1)?;
        Ok(Source::Mem(ternforge::AlignedBytes::copy_from(&bytes)))
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Source::File(f) => f.bytes(),
            Source::Mem(v) => v,
        }
    }
}
