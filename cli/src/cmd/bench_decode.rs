//! `ternforge bench --decode`: end-to-end prefill and decode of a whole model against the
//! machine's DRAM-bandwidth floor.
//!
//! Decoding one token reads every ternary projection and the LM head once (plus the KV cache
//! so far), so a token cannot take less than `bytes read per token / DRAM read bandwidth`.
//! The benchmark measures that bandwidth (all threads of the pool, best of several passes,
//! before, half-way through and after the run; the highest figure is used), prefills a prompt of
//! `--prompt-tokens` tokens as one batch (GEMM kernels), then decodes `--tokens` tokens greedily
//! and reports tok/s, the floor and the fraction of the floor reached, with the time split
//! into the transformer body and the LM head. Without `--model` it synthesizes a model with
//! the shapes of BitNet b1.58 2B4T (random ternary weights; the timings are those of the real
//! shapes).

use super::Error;
use serde::Serialize;
use std::time::Instant;
use ternforge_engine::forward::Session;
use ternforge_engine::gguf::Gguf;
use ternforge_engine::model::{self, Model};

/// Options of the decode benchmark (part of `ternforge bench`'s arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Benchmark prefill + decode of a whole model instead of the kernels.
    #[arg(long)]
    pub decode: bool,
    /// GGUF model for `--decode` (default: a synthesized 2B4T-shaped model).
    #[arg(long, short)]
    pub model: Option<std::path::PathBuf>,
    /// Ternary format of the synthesized model.
    #[arg(long, default_value = "i2s")]
    pub synth_format: String,
    /// Preset of the synthesized model (`2b4t`, `tiny`).
    #[arg(long, default_value = "2b4t")]
    pub synth_preset: String,
    /// Prompt length, prefilled as one batch.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// LM head: `f16` (the file's tensor) or `q8` (int8 copy built at load).
    #[arg(long, default_value = "f16")]
    pub lm_head: String,
    /// KV cache element type: `f16` (half the bytes per cached position) or `f32`.
    #[arg(long, default_value = "f16", value_parser = super::parse_kv)]
    pub kv_cache: ternforge_engine::kv::KvType,
}

#[derive(Serialize)]
struct Report {
    threads: usize,
    dram_read_gbs: f64,
    model: String,
    architecture: String,
    formats: Vec<String>,
    lm_head: String,
    kv_cache: String,
    weight_bytes_per_token: usize,
    lm_head_bytes_per_token: usize,
    kv_bytes_per_token_mean: f64,
    prompt_tokens: usize,
    prefill_seconds: f64,
    prefill_tokens_per_second: f64,
    prefill_kernels: Vec<String>,
    decode_tokens: usize,
    decode_seconds: f64,
    decode_tokens_per_second: f64,
    decode_body_seconds: f64,
    decode_head_seconds: f64,
    decode_kernels: Vec<String>,
    floor_tokens_per_second: f64,
    pct_of_floor: f64,
    body_pct_of_floor: f64,
    head_pct_of_floor: f64,
}

pub fn run(a: &DecodeArgs, json: bool, quick: bool) -> Result<(), Error> {
    if a.prompt_tokens == 0 || a.tokens == 0 {
        return Err("--prompt-tokens and --tokens must be at least 1".into());
    }
    let owned = super::run::Source::open(
        a.model.as_deref(),
        &a.synth_format,
        &a.synth_preset,
        |msg| {
            if !json {
                eprintln!("  {msg}");
            }
        },
    )?;
    let bytes = owned.bytes();
    let name = match &a.model {
        Some(p) => p.display().to_string(),
        None => format!("synthesized {} {}", a.synth_preset, a.synth_format),
    };
    let g = Gguf::parse_with(bytes, model::parse_options())?;
    let m = Model::load(&g)?;
    let cfg = &m.cfg;
    if a.prompt_tokens + a.tokens > cfg.ctx {
        return Err(format!(
            "--prompt-tokens + --tokens = {} exceeds the context of {}",
            a.prompt_tokens + a.tokens,
            cfg.ctx
        )
        .into());
    }
    let mut s = Session::with_kv(&m, a.kv_cache);
    let head_bytes = match a.lm_head.as_str() {
        "f16" => cfg.vocab * m.lm_head().row_bytes(cfg.n_embd),
        "q8" => {
            let q = std::sync::Arc::new(ternforge_engine::lm_head::Q8Head::build(&m));
            let b = q.bytes();
            s.q8_head = Some(q);
            b
        }
        other => return Err(format!("unknown --lm-head {other:?} (f16, q8)").into()),
    };
    let weight_bytes = m.bytes_per_token() - cfg.vocab * m.lm_head().row_bytes(cfg.n_embd);
    let threads = rayon::current_num_threads();
    if !json {
        eprintln!("  measuring DRAM read bandwidth ({threads} threads)...");
    }
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (_, bw_before) = super::bench::dram_reference(&one, quick);

    // token ids spread over the vocabulary (deterministic)
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|i| ((i * 7919 + 13) % cfg.vocab) as u32)
        .collect();
    if !json {
        eprintln!(
            "  prefill {} tokens, decode {} tokens...",
            a.prompt_tokens, a.tokens
        );
    }
    // warm-up: page in the weights (mmap) and the caches, then start over
    s.forward(&prompt[..1])?;
    s.reset();
    s.kernel_calls.clear();
    let t = Instant::now();
    let mut logits = s.forward(&prompt)?;
    let prefill = t.elapsed().as_secs_f64();
    let prefill_kernels: Vec<String> = s.kernel_calls.keys().map(|k| k.to_string()).collect();
    s.kernel_calls.clear();

    let (mut body, mut head, mut decode) = (0f64, 0f64, 0f64);
    let mut bw_mid = 0f64;
    let mut t_all = Instant::now();
    for i in 0..a.tokens {
        if i == a.tokens / 2 && i > 0 {
            // the reference is measured in the middle of the run too (outside the timed
            // decode): a phase change of the machine's bandwidth during the run then raises
            // the floor instead of flattering the result
            decode += t_all.elapsed().as_secs_f64();
            bw_mid = super::bench::dram_reference(&one, quick).1;
            t_all = Instant::now();
        }
        let next = argmax(&logits);
        let t = Instant::now();
        let h = s.forward_hidden(&[next])?;
        let t_head = Instant::now();
        logits = match &s.q8_head {
            Some(q) => q.logits(&h),
            None => ternforge_engine::lm_head::logits(&m, &h),
        };
        body += t_head.duration_since(t).as_secs_f64();
        head += t_head.elapsed().as_secs_f64();
    }
    decode += t_all.elapsed().as_secs_f64();
    let decode_kernels: Vec<String> = s.kernel_calls.keys().map(|k| k.to_string()).collect();
    // measured again after the run; the highest figure sets the floor (the conservative
    // choice on a machine whose bandwidth varies with its neighbours)
    let (_, bw_after) = super::bench::dram_reference(&one, quick);
    let bw = bw_before.max(bw_mid).max(bw_after);

    // KV cache read per decoded token: K and V of every layer for every position so far
    let kv_per_pos = (cfg.n_layer * 2 * cfg.kv_dim() * a.kv_cache.bytes()) as f64;
    let mean_pos = a.prompt_tokens as f64 + (a.tokens as f64 + 1.0) / 2.0;
    let kv_bytes = kv_per_pos * mean_pos;
    let bw_bytes = bw * 1e9;
    let floor_s = (weight_bytes + head_bytes) as f64 / bw_bytes + kv_bytes / bw_bytes;
    let per_tok = decode / a.tokens as f64;
    let body_floor = (weight_bytes as f64 + kv_bytes) / bw_bytes;
    let head_floor = head_bytes as f64 / bw_bytes;
    let mut formats: Vec<String> = m
        .tensor_formats()
        .into_iter()
        .map(|(_, f)| f.name().to_string())
        .collect();
    formats.sort();
    formats.dedup();
    let r = Report {
        threads,
        dram_read_gbs: bw,
        model: name,
        architecture: cfg.arch.clone(),
        formats,
        lm_head: a.lm_head.clone(),
        kv_cache: a.kv_cache.name().into(),
        weight_bytes_per_token: weight_bytes,
        lm_head_bytes_per_token: head_bytes,
        kv_bytes_per_token_mean: kv_bytes,
        prompt_tokens: a.prompt_tokens,
        prefill_seconds: prefill,
        prefill_tokens_per_second: a.prompt_tokens as f64 / prefill,
        prefill_kernels,
        decode_tokens: a.tokens,
        decode_seconds: decode,
        decode_tokens_per_second: a.tokens as f64 / decode,
        decode_body_seconds: body,
        decode_head_seconds: head,
        decode_kernels,
        floor_tokens_per_second: 1.0 / floor_s,
        pct_of_floor: 100.0 * floor_s / per_tok,
        body_pct_of_floor: 100.0 * body_floor * a.tokens as f64 / body,
        head_pct_of_floor: 100.0 * head_floor * a.tokens as f64 / head,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let mb = |b: f64| b / 1e6;
    println!(
        "model: {} ({}, {}; LM head {})",
        r.model,
        r.architecture,
        r.formats.join(" "),
        r.lm_head
    );
    println!(
        "DRAM read: {:.1} GB/s ({} threads)",
        r.dram_read_gbs, r.threads
    );
    println!(
        "bytes read per token: {:.0} MB ternary + {:.0} MB LM head + {:.0} MB {} KV (mean) -> floor {:.2} tok/s",
        mb(weight_bytes as f64),
        mb(head_bytes as f64),
        mb(kv_bytes),
        r.kv_cache,
        r.floor_tokens_per_second
    );
    println!(
        "prefill: {} tokens in {:.3} s = {:.1} tok/s (kernels: {})",
        r.prompt_tokens,
        r.prefill_seconds,
        r.prefill_tokens_per_second,
        r.prefill_kernels.join(" ")
    );
    println!(
        "decode:  {} tokens in {:.3} s = {:.2} tok/s, {:.1} ms/token (kernels: {})",
        r.decode_tokens,
        r.decode_seconds,
        r.decode_tokens_per_second,
        1e3 * per_tok,
        r.decode_kernels.join(" ")
    );
    println!(
        "         {:.0}% of the DRAM floor (body {:.1} ms/token = {:.0}% of its floor, LM head {:.1} ms/token = {:.0}%)",
        r.pct_of_floor,
        1e3 * body / a.tokens as f64,
        r.body_pct_of_floor,
        1e3 * head / a.tokens as f64,
        r.head_pct_of_floor
    );
    if r.body_pct_of_floor > 100.0 || r.head_pct_of_floor > 100.0 {
        println!(
            "  warning: a part read faster than the DRAM reference measured before, during and \
             after the run: the machine's bandwidth changed, these percentages overstate"
        );
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
