//! Synthesized models: random ternary weights with the real BitNet b1.58 shapes, written as
//! GGUF. `tiny` is for tests and the default `ternforge run`; `2b4t` has the shapes of
//! BitNet b1.58 2B4T (30 layers, 2560/6912, 20/5 heads, vocab 128256) for benchmarks.
//!
//! Every ternary tensor is `{-s, 0, s}` with an f16-representable `s`, so each format stores
//! exactly the same weights and all formats compute the same integer accumulators.

use crate::gguf::{GgufError, GgufWriter, TensorType};
use crate::tokenizer::byte_token;
use ternforge::Format;

/// Model shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub vocab: usize,
    pub ctx: usize,
}

impl Shape {
    /// 2 layers, hidden 256, FFN 512, 4 heads / 2 KV heads, a byte-level vocabulary.
    pub const TINY: Shape = Shape {
        n_layer: 2,
        n_embd: 256,
        n_ff: 512,
        n_head: 4,
        n_head_kv: 2,
        vocab: 320,
        ctx: 512,
    };
    /// BitNet b1.58 2B4T shapes.
    pub const B2B4T: Shape = Shape {
        n_layer: 30,
        n_embd: 2560,
        n_ff: 6912,
        n_head: 20,
        n_head_kv: 5,
        vocab: 128_256,
        ctx: 4096,
    };

    pub fn from_name(s: &str) -> Option<Shape> {
        match s {
            "tiny" => Some(Shape::TINY),
            "2b4t" | "2B4T" => Some(Shape::B2B4T),
            _ => None,
        }
    }
}

/// Deterministic splitmix64 stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Write a synthesized model with ternary tensors in `format` to GGUF bytes.
pub fn synthesize(shape: Shape, format: Format, seed: u64) -> Result<Vec<u8>, SynthError> {
    let mut rng = Rng(seed);
    let arch = "bitnet-b1.58";
    let mut w = GgufWriter::new();
    // tensors on cache-line boundaries (the 64-byte vector loads of the AVX-512 kernels;
    // see ternforge::AlignedBytes)
    w.set_alignment(64)?;
    let d = shape.n_embd;
    let hd = d / shape.n_head;
    w.add_kv("general.architecture", arch)?;
    w.add_kv(
        "general.name",
        format!("ternforge synthetic {}", format.name()).as_str(),
    )?;
    w.add_kv(format!("{arch}.block_count"), shape.n_layer as u32)?;
    w.add_kv(format!("{arch}.embedding_length"), d as u32)?;
    w.add_kv(format!("{arch}.feed_forward_length"), shape.n_ff as u32)?;
    w.add_kv(format!("{arch}.attention.head_count"), shape.n_head as u32)?;
    w.add_kv(
        format!("{arch}.attention.head_count_kv"),
        shape.n_head_kv as u32,
    )?;
    w.add_kv(format!("{arch}.rope.freq_base"), 500_000f32)?;
    w.add_kv(format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5f32)?;
    w.add_kv(format!("{arch}.context_length"), shape.ctx as u32)?;
    w.add_kv(format!("{arch}.vocab_size"), shape.vocab as u32)?;
    if format.spec().is_lut() {
        w.add_kv("ternforge.lut.tile_rows", format.spec().tile_rows() as u32)?;
    }
    // tokenizer: 256 byte tokens, three specials, reserved control tokens up to the vocab
    let mut tokens: Vec<String> = (0..=255u8).map(byte_token).collect();
    let mut types = vec![1i32; 256];
    for s in ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] {
        tokens.push(s.to_string());
        types.push(3);
    }
    while tokens.len() < shape.vocab {
        tokens.push(format!("<|reserved_special_token_{}|>", tokens.len()));
        types.push(3);
    }
    tokens.truncate(shape.vocab);
    types.truncate(shape.vocab);
    w.add_kv("tokenizer.ggml.model", "gpt2")?;
    w.add_kv("tokenizer.ggml.pre", "llama-bpe")?;
    w.add_kv(
        "tokenizer.ggml.tokens",
        tokens.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    w.add_kv("tokenizer.ggml.token_type", types)?;
    w.add_kv("tokenizer.ggml.merges", Vec::<&str>::new())?;
    w.add_kv("tokenizer.ggml.bos_token_id", 256u32)?;
    w.add_kv("tokenizer.ggml.eos_token_id", 257u32)?;
    w.add_kv("tokenizer.ggml.eot_token_id", 258u32)?;

    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let norm = |rng: &mut Rng, n: usize| -> Vec<u8> {
        f32_bytes(&(0..n).map(|_| 0.75 + 0.5 * rng.unit()).collect::<Vec<_>>())
    };
    let ternary = |rng: &mut Rng, n: usize, k: usize| -> Result<Vec<u8>, SynthError> {
        // s = 2^-e: exact in f16 and f32
        let s = 2f32.powi(-((rng.next() % 3) as i32 + 1));
        let v: Vec<f32> = (0..n * k)
            .map(|_| match rng.next() % 3 {
                0 => -s,
                1 => 0.0,
                _ => s,
            })
            .collect();
        Ok(ternforge::quantize(format, &v, n, k)?)
    };
    let ty = match format {
        Format::TL1 => TensorType::TL1,
        Format::TL2 => TensorType::TL2,
        f => {
            let id = f
                .ggml_type()
                .ok_or_else(|| SynthError(format!("{} has no GGUF tensor type", f.name())))?;
            TensorType::from_id(id)
                .ok_or_else(|| SynthError(format!("GGUF type {id} unknown to the writer")))?
        }
    };
    let emb: Vec<u8> = (0..shape.vocab * d)
        .flat_map(|_| half::f16::from_f32(rng.unit() * 2.0 - 1.0).to_le_bytes())
        .collect();
    w.add_tensor(
        "token_embd.weight",
        &[d as u64, shape.vocab as u64],
        TensorType::F16,
        emb,
    )?;
    let out_norm = norm(&mut rng, d);
    w.add_tensor("output_norm.weight", &[d as u64], TensorType::F32, out_norm)?;
    let kv = shape.n_head_kv * hd;
    for i in 0..shape.n_layer {
        let p = |s: &str| format!("blk.{i}.{s}");
        let lin = [
            ("attn_q.weight", d, d),
            ("attn_k.weight", kv, d),
            ("attn_v.weight", kv, d),
            ("attn_output.weight", d, d),
            ("ffn_gate.weight", shape.n_ff, d),
            ("ffn_up.weight", shape.n_ff, d),
            ("ffn_down.weight", d, shape.n_ff),
        ];
        for (name, n, k) in lin {
            let data = ternary(&mut rng, n, k)?;
            w.add_tensor(p(name), &[k as u64, n as u64], ty, data)?;
        }
        for (name, n) in [
            ("attn_norm.weight", d),
            ("attn_sub_norm.weight", d),
            ("ffn_norm.weight", d),
            ("ffn_sub_norm.weight", shape.n_ff),
        ] {
            let data = norm(&mut rng, n);
            w.add_tensor(p(name), &[n as u64], TensorType::F32, data)?;
        }
    }
    let sizer = crate::model::parse_options();
    let w = match sizer.lut_sizer {
        Some(s) => w.with_lut_sizer(s),
        None => w,
    };
    Ok(w.to_bytes()?)
}

/// Errors of synthesis.
#[derive(Debug)]
pub struct SynthError(pub String);

impl std::fmt::Display for SynthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "synth: {}", self.0)
    }
}
impl std::error::Error for SynthError {}
impl From<GgufError> for SynthError {
    fn from(e: GgufError) -> Self {
        SynthError(e.to_string())
    }
}
impl From<ternforge::KernelError> for SynthError {
    fn from(e: ternforge::KernelError) -> Self {
        SynthError(e.to_string())
    }
}
