//! Reference for [`CodeRule::Base3`]: ggml TQ1_0, byte-exact with `quantize_row_tq1_0_ref`.
//!
//! Block of 256 elements = 54 bytes: `qs[48]`, `qh[4]`, f16 `d`.
//! * `qs[0..32]`: byte `m` holds elements `n*32 + m` for trits n = 0..5 (n = 0 most significant)
//! * `qs[32..48]`: byte `m` holds elements `160 + n*16 + m`, n = 0..5
//! * `qh[0..4]`: byte `j` holds elements `240 + n*4 + j`, n = 0..4 (a fifth, zero trit pads it)
//!
//! A byte stores `ceil(v * 256 / 243)` of the base-3 number `v`; trit `n` is recovered as
//! `((byte * 3^n) mod 256) * 3 >> 8`.

use super::{Scales, Ternary};
use crate::table::FormatSpec;
use half::f16;

pub const BLOCK: usize = 256;
pub const QS: usize = 48;
pub const QH: usize = 4;
pub const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// Element index of trit `n` of code byte `byte` (0..52: qs then qh).
pub fn element_of(byte: usize, n: usize) -> Option<usize> {
    match byte {
        0..=31 if n < 5 => Some(n * 32 + byte),
        32..=47 if n < 5 => Some(160 + n * 16 + (byte - 32)),
        48..=51 if n < 4 => Some(240 + n * 4 + (byte - 48)),
        _ => None,
    }
}

/// Trit `n` (0, 1 or 2) of a stored byte.
#[inline(always)]
pub fn trit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as u8
}

pub fn decode(spec: &FormatSpec, data: &[u8], n: usize, k: usize) -> Ternary {
    let nblocks = n * k / BLOCK;
    let bb = spec.block_bytes();
    let mut w = vec![0i8; n * k];
    let mut d = Vec::with_capacity(nblocks);
    for blk in 0..nblocks {
        let b = &data[blk * bb..(blk + 1) * bb];
        for (byte, &v) in b[..QS + QH].iter().enumerate() {
            for t in 0..5 {
                if let Some(e) = element_of(byte, t) {
                    w[blk * BLOCK + e] = trit(v, t) as i8 - 1;
                }
            }
        }
        d.push(f16::from_le_bytes([b[QS + QH], b[QS + QH + 1]]).to_f32());
    }
    Ternary {
        n,
        k,
        w,
        scales: Scales::Block { block: BLOCK, d },
    }
}

fn pack(codes: impl Iterator<Item = u8>, pad_trit: bool) -> u8 {
    let mut q: u8 = 0;
    for c in codes {
        q = q * 3 + c;
    }
    if pad_trit {
        q *= 3;
    }
    (q as u16 * 256).div_ceil(243) as u8
}

pub fn encode(spec: &FormatSpec, src: &[f32], n: usize, k: usize) -> Vec<u8> {
    let nblocks = n * k / BLOCK;
    let bb = spec.block_bytes();
    let mut out = vec![0u8; nblocks * bb];
    for blk in 0..nblocks {
        let x = &src[blk * BLOCK..(blk + 1) * BLOCK];
        let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        // lroundf(x * id) + 1, as ggml; values outside [-1, 1] cannot occur since d = amax
        let code = |e: usize| -> u8 { super::packed2::round_code(x[e], id) };
        let o = &mut out[blk * bb..(blk + 1) * bb];
        for (byte, slot) in o[..QS + QH].iter_mut().enumerate() {
            let trits = (0..5).filter_map(|t| element_of(byte, t)).map(code);
            *slot = pack(trits, byte >= QS);
        }
        o[QS + QH..].copy_from_slice(&f16::from_f32(amax).to_le_bytes());
    }
    out
}
