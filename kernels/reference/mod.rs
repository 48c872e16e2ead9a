//! The hand-written scalar reference: the specification every generated kernel is checked
//! against. Each code rule has a decoder (bytes -> ternary weights + scales) and the format's
//! quantizer (f32 -> bytes); matmul semantics are shared by all formats:
//!
//! * per-tensor scale formats: `acc = sum_k w[n,k] * q[m,k]` (i32), `y = acc as f32 / s_m * ws`
//! * per-block scale formats: `acc_b = sum_{k in b} w[n,k] * q[m,k]` (i32),
//!   `f = sum_b d_b * acc_b as f32` (sequential, mul then add), `y = f / s_m`
//!
//! Generated kernels reproduce the integer accumulators bit for bit; per-tensor outputs are
//! bit-exact, per-block outputs are within the bound of [`block_output_tolerance`] (SIMD kernels
//! sum the block terms in lane order).
//!
//! This module is deliberately simple and slow; it allocates, and it assumes the caller
//! validated the shape (the public API in the crate root does).

pub mod acts;
pub mod base3;
pub mod lut;
pub mod packed2;

use crate::table::{CodeRule, FormatSpec, ScaleRule};
pub use acts::{quantize_acts, QuantizedActs};

/// Weight scales of a decoded tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    /// One scale for the whole tensor.
    Tensor(f32),
    /// One scale per block of `block` elements: `d[n * (k / block) + b]`.
    Block { block: usize, d: Vec<f32> },
}

/// A decoded tensor: ternary weights (row-major `n x k`, values -1/0/1) and scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Ternary {
    pub n: usize,
    pub k: usize,
    pub w: Vec<i8>,
    pub scales: Scales,
}

impl Ternary {
    /// The f32 value of every weight (`w * scale`).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.scales {
            Scales::Tensor(s) => self.w.iter().map(|&w| w as f32 * s).collect(),
            Scales::Block { block, d } => self
                .w
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let (row, col) = (i / self.k, i % self.k);
                    w as f32 * d[row * (self.k / block) + col / block]
                })
                .collect(),
        }
    }
}

/// Total bytes of an `n x k` tensor (shape assumed valid for the format).
pub fn tensor_bytes(spec: &FormatSpec, n: usize, k: usize) -> usize {
    match spec.codes {
        CodeRule::Packed2 { .. } | CodeRule::Base3 => {
            let blocks = n * (k / spec.block_elems);
            match spec.scale {
                ScaleRule::TensorTail { tail_bytes } => blocks * spec.block_code_bytes + tail_bytes,
                ScaleRule::BlockF16 => blocks * spec.block_bytes(),
            }
        }
        CodeRule::PairLut { .. } | CodeRule::TripleLut { .. } => lut::tensor_bytes(spec, n, k),
    }
}

/// Decode a tensor to ternary weights and scales.
pub fn decode(spec: &FormatSpec, data: &[u8], n: usize, k: usize) -> Ternary {
    match spec.codes {
        CodeRule::Packed2 { .. } => packed2::decode(spec, data, n, k),
        CodeRule::Base3 => base3::decode(spec, data, n, k),
        CodeRule::PairLut { .. } | CodeRule::TripleLut { .. } => lut::decode(spec, data, n, k),
    }
}

/// The format's quantizer (byte-exact with the upstream reference quantizer).
pub fn quantize(spec: &FormatSpec, src: &[f32], n: usize, k: usize) -> Vec<u8> {
    match spec.codes {
        CodeRule::Packed2 { .. } => packed2::encode(spec, src, n, k),
        CodeRule::Base3 => base3::encode(spec, src, n, k),
        CodeRule::PairLut { .. } | CodeRule::TripleLut { .. } => lut::encode(spec, src, n, k),
    }
}

/// Dequantize to f32 (`w * scale`).
pub fn dequantize(spec: &FormatSpec, data: &[u8], n: usize, k: usize) -> Vec<f32> {
    decode(spec, data, n, k).to_f32()
}

/// Integer accumulators: `acc[(m * n_rows + row) * nb + b]` with `nb` = blocks per row for
/// per-block formats and 1 for per-tensor formats.
pub fn accumulators(t: &Ternary, acts: &QuantizedActs) -> (usize, Vec<i32>) {
    let span = match t.scales {
        Scales::Tensor(_) => t.k,
        Scales::Block { block, .. } => block,
    };
    let nb = t.k / span;
    let mut acc = vec![0i32; acts.m * t.n * nb];
    for m in 0..acts.m {
        let q = acts.row(m);
        for row in 0..t.n {
            let w = &t.w[row * t.k..(row + 1) * t.k];
            for b in 0..nb {
                let s: i32 = (b * span..(b + 1) * span)
                    .map(|i| w[i] as i32 * q[i] as i32)
                    .sum();
                acc[(m * t.n + row) * nb + b] = s;
            }
        }
    }
    (nb, acc)
}

/// Reference matmul: `out[m * n + row]`, `m` activation rows by `n` weight rows.
pub fn matmul(
    spec: &FormatSpec,
    data: &[u8],
    n: usize,
    k: usize,
    acts: &QuantizedActs,
) -> Vec<f32> {
    let t = decode(spec, data, n, k);
    let (nb, acc) = accumulators(&t, acts);
    let mut out = vec![0f32; acts.m * n];
    for m in 0..acts.m {
        let s = acts.scale[m];
        for row in 0..n {
            let a = &acc[(m * n + row) * nb..(m * n + row + 1) * nb];
            out[m * n + row] = match &t.scales {
                Scales::Tensor(ws) => a[0] as f32 / s * ws,
                Scales::Block { d, .. } => {
                    let mut f = 0f32;
                    for (b, &v) in a.iter().enumerate() {
                        f += d[row * nb + b] * v as f32;
                    }
                    f / s
                }
            };
        }
    }
    out
}

/// Error bound for per-block outputs whose block terms a kernel may add in another order:
/// `nb * 2^-23 * sum_b |d_b * acc_b| / s` plus one ulp of the result (0 for per-tensor
/// formats, which must match exactly).
pub fn block_output_tolerance(
    t: &Ternary,
    acts: &QuantizedActs,
    acc: &[i32],
    nb: usize,
    m: usize,
    row: usize,
) -> f32 {
    match &t.scales {
        Scales::Tensor(_) => 0.0,
        Scales::Block { d, .. } => {
            let a = &acc[(m * t.n + row) * nb..(m * t.n + row + 1) * nb];
            let mag: f32 = a
                .iter()
                .enumerate()
                .map(|(b, &v)| (d[row * nb + b] * v as f32).abs())
                .sum();
            let bound = (nb as f32 + 2.0) * f32::EPSILON * mag / acts.scale[m];
            bound + f32::EPSILON * bound.max(f32::MIN_POSITIVE)
        }
    }
}
