//! Reference for [`CodeRule::Packed2`] formats (I2S, QK256 = TQ2_0, I2S64, ...).

use super::{Scales, Ternary};
use crate::table::{CodeRule, FormatSpec, Quantizer, ScaleRule};
use half::f16;

/// `(group_bytes, msb_first)` of a Packed2 spec.
fn params(spec: &FormatSpec) -> (usize, bool) {
    match spec.codes {
        CodeRule::Packed2 {
            group_bytes,
            msb_first,
        } => (group_bytes, msb_first),
        _ => unreachable!("packed2 reference called for {}", spec.name),
    }
}

/// Position of element `e` (0..block_elems) inside a block: (byte index, bit shift).
pub fn element_position(spec: &FormatSpec, e: usize) -> (usize, u32) {
    let (gb, msb) = params(spec);
    let group = e / (4 * gb);
    let within = e % (4 * gb);
    let (j, m) = (within / gb, within % gb);
    let shift = if msb { 6 - 2 * j } else { 2 * j };
    (group * gb + m, shift as u32)
}

/// Byte offset of block `blk` (counting over the whole tensor) and of its f16 scale.
fn block_offset(spec: &FormatSpec, blk: usize) -> usize {
    blk * spec.block_bytes()
}

pub fn decode(spec: &FormatSpec, data: &[u8], n: usize, k: usize) -> Ternary {
    let be = spec.block_elems;
    let nblocks = n * k / be;
    let mut w = vec![0i8; n * k];
    let mut d = Vec::new();
    for blk in 0..nblocks {
        let base = block_offset(spec, blk);
        for e in 0..be {
            let (byte, shift) = element_position(spec, e);
            let c = (data[base + byte] >> shift) & 3;
            // code 3 is never written; it decodes as 0 like code 1
            w[blk * be + e] = if c == 3 { 0 } else { c as i8 - 1 };
        }
        if spec.scale == ScaleRule::BlockF16 {
            let o = base + spec.block_code_bytes;
            d.push(f16::from_le_bytes([data[o], data[o + 1]]).to_f32());
        }
    }
    let scales = match spec.scale {
        ScaleRule::TensorTail { .. } => {
            let o = nblocks * spec.block_code_bytes;
            Scales::Tensor(f32::from_le_bytes(data[o..o + 4].try_into().unwrap()))
        }
        ScaleRule::BlockF16 => Scales::Block { block: be, d },
    };
    Ternary { n, k, w, scales }
}

/// bitnet.cpp `quantize_i2_s` code of one value given the tensor scale (computed in f64).
pub fn sign_max_code(x: f32, scale: f64) -> u8 {
    if (x as f64).abs() < 1e-6 {
        1
    } else if x as f64 * scale > 0.0 {
        2
    } else {
        0
    }
}

/// ggml `lroundf(x * id) + 1` code (`quantize_row_tq2_0_ref`). With `id = 1 / max|x|` the
/// rounded value is in -1..=1; the clamp only defines the degenerate cases ggml leaves
/// unspecified (subnormal max giving an infinite `id`).
pub fn round_code(x: f32, id: f32) -> u8 {
    (((x * id).round() as i32).clamp(-1, 1) + 1) as u8
}

pub fn encode(spec: &FormatSpec, src: &[f32], n: usize, k: usize) -> Vec<u8> {
    let be = spec.block_elems;
    let nblocks = n * k / be;
    let mut out = vec![0u8; super::tensor_bytes(spec, n, k)];
    let tensor_scale = src.iter().fold(0f64, |a, &x| a.max((x as f64).abs()));
    for blk in 0..nblocks {
        let x = &src[blk * be..(blk + 1) * be];
        let base = block_offset(spec, blk);
        let (codes, d): (Vec<u8>, Option<f32>) = match spec.quantizer {
            Quantizer::SignMax => (
                x.iter().map(|&v| sign_max_code(v, tensor_scale)).collect(),
                None,
            ),
            Quantizer::RoundAbsMax => {
                let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
                (x.iter().map(|&v| round_code(v, id)).collect(), Some(amax))
            }
        };
        for (e, c) in codes.into_iter().enumerate() {
            let (byte, shift) = element_position(spec, e);
            out[base + byte] |= c << shift;
        }
        if spec.scale == ScaleRule::BlockF16 {
            let o = base + spec.block_code_bytes;
            let d = d.unwrap_or(tensor_scale as f32);
            out[o..o + 2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        }
    }
    if let ScaleRule::TensorTail { .. } = spec.scale {
        let o = nblocks * spec.block_code_bytes;
        out[o..o + 4].copy_from_slice(&(tensor_scale as f32).to_le_bytes());
    }
    out
}
