//! BitNet b1.58 model: hyper-parameters from GGUF metadata and zero-copy weight views.
//!
//! Architectures `bitnet-b1.58` (official 2B4T files), `bitnet-25` (older official files) and
//! `bitnet` (llama.cpp). Tensor names follow llama.cpp. Ternary projections are
//! [`PackedWeights`] views straight into the GGUF bytes (validated once at load); norms are
//! f32; the token embedding (also the tied LM head) is F16 or F32.

use crate::gguf::{GgmlType, Gguf, LutFormat, ParseOptions, TensorType};
use std::fmt;
use std::path::Path;
use ternforge::{Format, PackedWeights};

/// Errors loading a model.
#[derive(Debug)]
pub enum ModelError {
    Gguf(crate::gguf::GgufError),
    /// A required metadata key is missing or has the wrong type.
    Metadata {
        key: String,
        reason: String,
    },
    /// A tensor is missing, has the wrong shape or an unsupported type.
    Tensor {
        name: String,
        reason: String,
    },
    Unsupported(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Gguf(e) => write!(f, "GGUF: {e}"),
            ModelError::Metadata { key, reason } => write!(f, "metadata key {key}: {reason}"),
            ModelError::Tensor { name, reason } => write!(f, "tensor {name}: {reason}"),
            ModelError::Unsupported(m) => write!(f, "unsupported model: {m}"),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<crate::gguf::GgufError> for ModelError {
    fn from(e: crate::gguf::GgufError) -> Self {
        ModelError::Gguf(e)
    }
}

/// Architectures this engine runs.
pub const ARCHITECTURES: [&str; 3] = ["bitnet-b1.58", "bitnet-25", "bitnet"];

/// Model hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    pub eps: f32,
    pub ctx: usize,
    /// FFN gate activation: `relu(g)^2` for bitnet-b1.58 / bitnet-25 (2B4T), `silu(g)` for
    /// llama.cpp's `bitnet` architecture (1bitLLM models).
    pub ffn_act: FfnAct,
}

/// The FFN gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnAct {
    Relu2,
    Silu,
}

impl Config {
    /// Read from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf<D: AsRef<[u8]>>(g: &Gguf<D>) -> Result<Config, ModelError> {
        let arch = g
            .get_str("general.architecture")
            .map_err(|e| meta("general.architecture", e))?
            .to_string();
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::Unsupported(format!(
                "architecture {arch:?} (supported: {})",
                ARCHITECTURES.join(", ")
            )));
        }
        let u = |k: &str| -> Result<usize, ModelError> {
            let key = format!("{arch}.{k}");
            g.get_u64(&key)
                .map(|v| v as usize)
                .map_err(|e| meta(&key, e))
        };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head);
        let key_len = format!("{arch}.attention.key_length");
        let head_dim = match g.get_u64(&key_len) {
            Ok(v) => v as usize,
            Err(_) if n_head > 0 => n_embd / n_head,
            Err(e) => return Err(meta(&key_len, e)),
        };
        let vocab = match g.get_u64(&format!("{arch}.vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => {
                g.tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .ok_or_else(|| tensor("token_embd.weight", "missing"))? as usize
            }
        };
        let cfg = Config {
            n_layer: u("block_count")?,
            n_embd,
            n_ff: u("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            vocab,
            rope_theta: g
                .get_f32(&format!("{arch}.rope.freq_base"))
                .unwrap_or(500_000.0),
            eps: g
                .get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            ctx: u("context_length").unwrap_or(4096),
            ffn_act: if arch == "bitnet" {
                FfnAct::Silu
            } else {
                FfnAct::Relu2
            },
            arch,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sanity checks that keep every later index in bounds.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |k: &str, r: String| Err(meta(k, r));
        if self.n_layer == 0 || self.n_layer > 1024 {
            return bad("block_count", format!("{} layers", self.n_layer));
        }
        if self.n_head == 0 || self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(
                "attention.head_count_kv",
                format!("{} heads / {} kv heads", self.n_head, self.n_head_kv),
            );
        }
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.head_dim * self.n_head != self.n_embd
        {
            return bad(
                "attention.key_length",
                format!(
                    "head_dim {} x {} heads != embedding {}",
                    self.head_dim, self.n_head, self.n_embd
                ),
            );
        }
        if self.n_embd == 0 || self.n_ff == 0 || self.vocab == 0 || self.ctx == 0 {
            return bad("embedding_length", "zero-sized dimension".into());
        }
        if !(self.eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rope.freq_base", "non-positive eps or rope theta".into());
        }
        Ok(())
    }

    /// Rows of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

fn meta(key: &str, reason: impl fmt::Display) -> ModelError {
    ModelError::Metadata {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn tensor(name: &str, reason: impl fmt::Display) -> ModelError {
    ModelError::Tensor {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// GGUF parse options that size TL1/TL2 tensors with the kernel crate's layout.
pub fn parse_options() -> ParseOptions<'static> {
    static SIZER: fn(LutFormat, &[u64]) -> Option<u64> = |f, dims| {
        let fmt = match f {
            LutFormat::Tl1 => Format::TL1,
            LutFormat::Tl2 => Format::TL2,
        };
        let (k, n) = (
            *dims.first()? as usize,
            dims.get(1).copied().unwrap_or(1) as usize,
        );
        fmt.tensor_bytes(n, k).ok().map(|b| b as u64)
    };
    ParseOptions {
        lut_sizer: Some(&SIZER),
    }
}

/// Open a GGUF model file (memory-mapped, TL1/TL2 sizes known).
pub fn open(path: impl AsRef<Path>) -> Result<crate::gguf::GgufFile, ModelError> {
    Ok(Gguf::open_with(path, parse_options())?)
}

/// A ternary projection.
#[derive(Clone, Copy, Debug)]
pub struct Linear<'a> {
    pub name: &'a str,
    pub w: PackedWeights<'a>,
    /// Output multiplier from a `<name>.scale` tensor (llama.cpp `bitnet` files).
    pub scale: Option<f32>,
}

/// The token embedding / tied LM head.
#[derive(Clone, Copy, Debug)]
pub enum Embedding<'a> {
    F16(&'a [u8]),
    F32(&'a [u8]),
}

impl Embedding<'_> {
    /// Row `i` (`d` values) as f32.
    pub fn row(&self, i: usize, d: usize, out: &mut [f32]) {
        match self {
            Embedding::F16(b) => {
                let bytes = &b[i * d * 2..(i + 1) * d * 2];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Embedding::F32(b) => {
                let bytes = &b[i * d * 4..(i + 1) * d * 4];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Bytes per row of `d` values.
    pub fn row_bytes(&self, d: usize) -> usize {
        match self {
            Embedding::F16(_) => 2 * d,
            Embedding::F32(_) => 4 * d,
        }
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub q: Linear<'a>,
    pub k: Linear<'a>,
    pub v: Linear<'a>,
    pub o: Linear<'a>,
    pub attn_sub_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: Linear<'a>,
    pub up: Linear<'a>,
    pub down: Linear<'a>,
    pub ffn_sub_norm: Vec<f32>,
}

/// A loaded model borrowing its weights from a parsed GGUF file.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    pub cfg: Config,
    pub layers: Vec<Layer<'a>>,
    pub embedding: Embedding<'a>,
    /// Separate LM head when the file has `output.weight` (else the embedding is tied).
    pub output: Option<Embedding<'a>>,
    pub output_norm: Vec<f32>,
}

impl<'a> Model<'a> {
    /// Build views over every tensor, checking names, shapes and types.
    pub fn load<D: AsRef<[u8]>>(g: &'a Gguf<D>) -> Result<Model<'a>, ModelError> {
        let cfg = Config::from_gguf(g)?;
        let d = cfg.n_embd;
        let norm = |name: String, len: usize| -> Result<Vec<f32>, ModelError> {
            let t = g.tensor(&name).ok_or_else(|| tensor(&name, "missing"))?;
            if t.n_elements() != len as u64 {
                return Err(tensor(
                    &name,
                    format!("{} elements, expected {len}", t.n_elements()),
                ));
            }
            match t.ty {
                TensorType::Known(GgmlType::F32) => Ok(t
                    .data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()),
                TensorType::Known(GgmlType::F16) => Ok(t
                    .data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect()),
                other => Err(tensor(
                    &name,
                    format!("type {} (norms are F32/F16)", other.name()),
                )),
            }
        };
        let linear = |name: String, n: usize, k: usize| -> Result<Linear<'a>, ModelError> {
            let t = g.tensor(&name).ok_or_else(|| tensor(&name, "missing"))?;
            if t.dims.len() != 2 || t.dims[0] != k as u64 || t.dims[1] != n as u64 {
                return Err(tensor(
                    &name,
                    format!("dims {:?}, expected [{k}, {n}]", t.dims),
                ));
            }
            let format = Format::from_ggml_type(t.ty.id()).ok_or_else(|| {
                tensor(
                    &name,
                    format!("type {} is not a ternary format", t.ty.name()),
                )
            })?;
            let bytes = format.tensor_bytes(n, k).map_err(|e| tensor(&name, e))?;
            let data = t.data.get(..bytes).ok_or_else(|| {
                tensor(&name, format!("{} bytes, {} needed", t.data.len(), bytes))
            })?;
            let w = PackedWeights::new(format, data, n, k).map_err(|e| tensor(&name, e))?;
            // the name lives as long as the file's tensor directory
            let name = g
                .tensor_infos()
                .iter()
                .find(|i| i.name == name)
                .map(|i| i.name.as_str())
                .unwrap_or("");
            let scale_name = name.trim_end_matches(".weight").to_string() + ".scale";
            let scale = match g.tensor(&scale_name) {
                None => None,
                Some(t) if t.ty == TensorType::F32 && t.data.len() == 4 => {
                    Some(f32::from_le_bytes([
                        t.data[0], t.data[1], t.data[2], t.data[3],
                    ]))
                }
                Some(t) => {
                    return Err(tensor(
                        &scale_name,
                        format!(
                            "type {} with {} bytes, expected one F32",
                            t.ty.name(),
                            t.data.len()
                        ),
                    ))
                }
            };
            Ok(Linear { name, w, scale })
        };
        let embedding = |name: &str| -> Result<Option<Embedding<'a>>, ModelError> {
            let Some(t) = g.tensor(name) else {
                return Ok(None);
            };
            if t.dims.len() != 2 || t.dims[0] != d as u64 || t.dims[1] != cfg.vocab as u64 {
                return Err(tensor(
                    name,
                    format!("dims {:?}, expected [{d}, {}]", t.dims, cfg.vocab),
                ));
            }
            match t.ty {
                TensorType::Known(GgmlType::F16) => Ok(Some(Embedding::F16(t.data))),
                TensorType::Known(GgmlType::F32) => Ok(Some(Embedding::F32(t.data))),
                other => Err(tensor(
                    name,
                    format!("type {} (supported: F16, F32)", other.name()),
                )),
            }
        };
        let (kv, ff) = (cfg.kv_dim(), cfg.n_ff);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: norm(p("attn_norm.weight"), d)?,
                q: linear(p("attn_q.weight"), d, d)?,
                k: linear(p("attn_k.weight"), kv, d)?,
                v: linear(p("attn_v.weight"), kv, d)?,
                o: linear(p("attn_output.weight"), d, d)?,
                attn_sub_norm: norm(p("attn_sub_norm.weight"), d)?,
                ffn_norm: norm(p("ffn_norm.weight"), d)?,
                gate: linear(p("ffn_gate.weight"), ff, d)?,
                up: linear(p("ffn_up.weight"), ff, d)?,
                down: linear(p("ffn_down.weight"), d, ff)?,
                ffn_sub_norm: norm(p("ffn_sub_norm.weight"), ff)?,
            });
        }
        Ok(Model {
            embedding: embedding("token_embd.weight")?
                .ok_or_else(|| tensor("token_embd.weight", "missing"))?,
            output: embedding("output.weight")?,
            output_norm: norm("output_norm.weight".into(), d)?,
            layers,
            cfg,
        })
    }

    /// The LM head (tied to the embedding unless the file has `output.weight`).
    pub fn lm_head(&self) -> Embedding<'a> {
        self.output.unwrap_or(self.embedding)
    }

    /// Bytes of weights read per decoded token (ternary projections + LM head).
    pub fn bytes_per_token(&self) -> usize {
        let lin: usize = self
            .layers
            .iter()
            .flat_map(|l| [l.q, l.k, l.v, l.o, l.gate, l.up, l.down])
            .map(|l| l.w.data().len())
            .sum();
        lin + self.cfg.vocab * self.lm_head().row_bytes(self.cfg.n_embd)
    }

    /// Formats of the ternary tensors (name, format).
    pub fn tensor_formats(&self) -> Vec<(&'a str, Format)> {
        self.layers
            .iter()
            .flat_map(|l| [l.q, l.k, l.v, l.o, l.gate, l.up, l.down])
            .map(|l| (l.name, l.w.format()))
            .collect()
    }
}

/// The tokenizer described by a GGUF file's `tokenizer.*` metadata.
pub fn tokenizer<D: AsRef<[u8]>>(g: &Gguf<D>) -> Result<crate::tokenizer::Tokenizer, ModelError> {
    use crate::tokenizer::{Tokenizer, TokenizerConfig};
    let s = |k: &str| g.get_str(k).map(str::to_string).map_err(|e| meta(k, e));
    let opt_u32 = |k: &str| g.get(k).and_then(|_| g.get_u32(k).ok());
    let cfg = TokenizerConfig {
        model: s("tokenizer.ggml.model")?,
        pre: g.get_str("tokenizer.ggml.pre").ok().map(str::to_string),
        tokens: g
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(|e| meta("tokenizer.ggml.tokens", e))?
            .to_vec(),
        merges: match g.get("tokenizer.ggml.merges") {
            Some(_) => g
                .get_str_array("tokenizer.ggml.merges")
                .map_err(|e| meta("tokenizer.ggml.merges", e))?
                .to_vec(),
            None => Vec::new(),
        },
        token_types: g
            .get_i32_array("tokenizer.ggml.token_type")
            .ok()
            .map(<[i32]>::to_vec),
        bos_token_id: opt_u32("tokenizer.ggml.bos_token_id"),
        eos_token_id: opt_u32("tokenizer.ggml.eos_token_id"),
        eot_token_id: opt_u32("tokenizer.ggml.eot_token_id"),
        eom_token_id: opt_u32("tokenizer.ggml.eom_token_id"),
        add_bos_token: g.get_bool("tokenizer.ggml.add_bos_token").ok(),
        chat_template: g
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string),
    };
    Tokenizer::from_config(&cfg).map_err(|e| meta("tokenizer.ggml.*", e))
}
