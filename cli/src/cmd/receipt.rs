//! Run receipts: what ran, on what, how fast. Written by `ternforge run --receipt FILE`,
//! checked by `ternforge receipt verify FILE [--model PATH]`.

use super::Error;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub const SCHEMA: &str = "ternforge.receipt/1";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Receipt {
    pub schema: String,
    pub ternforge_version: String,
    /// `None` for a synthesized in-memory model.
    pub model_path: Option<String>,
    /// sha256 of the model bytes (file or synthesized buffer).
    pub model_sha256: String,
    pub model_bytes: u64,
    pub architecture: String,
    /// Ternary tensor name -> format.
    pub tensor_formats: BTreeMap<String, String>,
    /// Kernel id -> matmul calls.
    pub kernels: BTreeMap<String, u64>,
    pub cpu_features: Vec<String>,
    pub compiled_isas: String,
    pub build_features: String,
    pub threads: usize,
    /// KV cache element type (`f16`, `f32`); empty in receipts written before it was
    /// recorded.
    #[serde(default)]
    pub kv_cache: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish_reason: String,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), Error> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex(&h.finalize()), n))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Check a receipt's schema and consistency (and, with --model, the model hash).
    Verify {
        file: std::path::PathBuf,
        #[arg(long)]
        model: Option<std::path::PathBuf>,
    },
}

/// Consistency checks of a parsed receipt; returns the problems found.
pub fn check(r: &Receipt) -> Vec<String> {
    let mut bad = Vec::new();
    if r.schema != SCHEMA {
        bad.push(format!("schema {:?}, expected {SCHEMA:?}", r.schema));
    }
    if r.model_sha256.len() != 64 || !r.model_sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
        bad.push("model_sha256 is not a sha256 hex digest".into());
    }
    for (k, calls) in &r.kernels {
        match ternforge::KERNELS.iter().find(|e| e.id == k) {
            None => bad.push(format!("kernel {k} is not in this build's table")),
            Some(e) => {
                if !r.tensor_formats.values().any(|f| f == e.format.name()) {
                    bad.push(format!("kernel {k} runs a format no tensor uses"));
                }
            }
        }
        if *calls == 0 {
            bad.push(format!("kernel {k} listed with 0 calls"));
        }
    }
    for f in r.tensor_formats.values() {
        if ternforge::Format::from_name(f).is_none() {
            bad.push(format!("unknown format {f}"));
        }
    }
    let tps = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    if !close(
        r.prefill_tokens_per_second,
        tps(r.prompt_tokens, r.prefill_seconds),
    ) {
        bad.push("prefill_tokens_per_second does not match tokens / seconds".into());
    }
    if !close(
        r.decode_tokens_per_second,
        tps(r.generated_tokens.saturating_sub(1), r.decode_seconds),
    ) {
        bad.push("decode_tokens_per_second does not match tokens / seconds".into());
    }
    if r.kernels.is_empty() && r.prompt_tokens > 0 {
        bad.push("no kernels recorded for a run that processed tokens".into());
    }
    bad
}

pub fn run(a: Args) -> Result<(), Error> {
    match a.cmd {
        Cmd::Verify { file, model } => {
            let text = std::fs::read_to_string(&file)?;
            let r: Receipt = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a ternforge receipt: {e}", file.display()))?;
            let mut bad = check(&r);
            if let Some(m) = model {
                let (h, n) = sha256_file(&m)?;
                if h != r.model_sha256 || n != r.model_bytes {
                    bad.push(format!(
                        "model {} has sha256 {h} ({n} bytes), receipt says {} ({} bytes)",
                        m.display(),
                        r.model_sha256,
                        r.model_bytes
                    ));
                }
            }
            if bad.is_empty() {
                println!(
                    "receipt ok: {} tokens at {:.2} tok/s with {} kernel(s)",
                    r.generated_tokens,
                    r.decode_tokens_per_second,
                    r.kernels.len()
                );
                Ok(())
            } else {
                Err(format!(
                    "receipt {} is invalid:\n  {}",
                    file.display(),
                    bad.join("\n  ")
                )
                .into())
            }
        }
    }
}
