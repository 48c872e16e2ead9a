//! Fast activation quantizer: the per-token int8 scheme of [`crate::reference::acts`], bit for
//! bit, written so that it vectorises (it runs before every matmul, so on the decode hot path).
//!
//! * `max |x|` with the 64-lane [`crate::absmax`] instead of a serial fold (same value: the
//!   maximum is exact and both ignore NaN);
//! * `round_half_even(y)` as `(y + 1.5·2²³) − 1.5·2²³`, exact round-to-nearest-even for
//!   `|y| ≤ 2²²`, applied after clamping `y` to `[-128, 127]`: clamping to integer bounds
//!   commutes with rounding, NaN stays NaN (and becomes 0 in the `as i8` cast, as in the
//!   reference). The reference calls `roundevenf`, a library call per element on x86-64
//!   baselines without SSE4.1.
//!
//! Compiled once portable and, where the build has them, once each for AVX2 and AVX-512;
//! the copy is chosen at run time by the cached CPU detection. `tests/acts.rs` pins it to the
//! reference.

use crate::reference::acts::{row_scale, QuantizedActs};

/// `round_half_even(clamp(y, -128, 127))` as i8, without a library call.
#[inline(always)]
fn q8(y: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let c = y.clamp(-128.0, 127.0);
    // NaN -> 0, as the reference's `as i8` does
    let c = if c.is_nan() { 0.0 } else { c };
    // `c + MAGIC` lies in [2^23, 2^24), where the float spacing is 1: the addition rounds `c`
    // to the nearest integer, ties to even, and the low mantissa bits then hold that integer
    // offset from MAGIC's bits. Integer arithmetic on the bits vectorises; a saturating
    // `as i8` (or `as i32`) of a float is compiled to one scalar conversion per element.
    ((c + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8
}

#[inline(always)]
fn body(x: &[f32], m: usize, k: usize) -> QuantizedActs {
    let mut q = vec![0i8; m * k];
    let mut scale = Vec::with_capacity(m);
    let mut sum = Vec::with_capacity(m);
    for (row, out) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)) {
        let s = row_scale(crate::absmax(row));
        for (o, &v) in out.iter_mut().zip(row) {
            *o = q8(v * s);
        }
        // 16 lanes so the widening sum vectorises
        let mut lanes = [0i32; 16];
        let chunks = out.chunks_exact(16);
        let rest: i32 = chunks.remainder().iter().map(|&v| v as i32).sum();
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v as i32;
            }
        }
        scale.push(s);
        sum.push(lanes.iter().sum::<i32>() + rest);
    }
    QuantizedActs {
        m,
        k,
        q,
        scale,
        sum,
    }
}

#[cfg(all(target_arch = "x86_64", tf_isa_avx512))]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn body_avx512(x: &[f32], m: usize, k: usize) -> QuantizedActs {
    body(x, m, k)
}

#[cfg(all(target_arch = "x86_64", tf_isa_avx2))]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2(x: &[f32], m: usize, k: usize) -> QuantizedActs {
    body(x, m, k)
}

/// Quantize `m` rows of `k` activations (`x.len() == m * k`, `k > 0`; checked by the caller).
pub(crate) fn quantize_acts(x: &[f32], m: usize, k: usize) -> QuantizedActs {
    debug_assert_eq!(x.len(), m * k);
    if k == 0 || m == 0 {
        return crate::reference::acts::quantize_acts(x, m, k);
    }
    #[cfg(all(target_arch = "x86_64", tf_isa_avx512))]
    if crate::cpu::supports(crate::Isa::Avx512) {
        // SAFETY: the CPU supports AVX-512 F/BW/VL (and AVX2/FMA), checked just above.
        return unsafe { body_avx512(x, m, k) };
    }
    #[cfg(all(target_arch = "x86_64", tf_isa_avx2))]
    if crate::cpu::supports(crate::Isa::Avx2) {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { body_avx2(x, m, k) };
    }
    body(x, m, k)
}
