//! Activation quantization: the int8 per-token scheme every kernel consumes (the spec).

/// Activations quantized per row (token): `q = round_half_even(x * s)` clamped to
/// `[-128, 127]` with `s = 127 / max(|x|, 1e-5)`, plus `sum(q)` per row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantizedActs {
    /// Number of rows (tokens).
    pub m: usize,
    /// Row length (the matmul's K).
    pub k: usize,
    /// `m * k` int8 values, row-major.
    pub q: Vec<i8>,
    /// Per-row scale `s` (divide by it to get back to the float domain).
    pub scale: Vec<f32>,
    /// Per-row `sum(q)`.
    pub sum: Vec<i32>,
}

impl QuantizedActs {
    /// Row `i` of the quantized values.
    pub fn row(&self, i: usize) -> &[i8] {
        &self.q[i * self.k..(i + 1) * self.k]
    }

    /// Build from already-quantized values (tests, benches, LUT experiments). `scale` must be
    /// positive and finite for every row.
    pub fn from_parts(m: usize, k: usize, q: Vec<i8>, scale: Vec<f32>) -> Option<QuantizedActs> {
        if q.len() != m.checked_mul(k)? || scale.len() != m {
            return None;
        }
        if scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return None;
        }
        let sum = (0..m)
            .map(|i| q[i * k..(i + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        Some(QuantizedActs {
            m,
            k,
            q,
            scale,
            sum,
        })
    }
}

/// Quantization of one value with a row scale; shared by the reference and the SIMD paths'
/// scalar tails so that every path rounds identically.
#[inline(always)]
pub fn quantize_one(x: f32, s: f32) -> i8 {
    // `as i8` saturates and maps NaN to 0; the clamp keeps the documented range explicit.
    (x * s).round_ties_even().clamp(-128.0, 127.0) as i8
}

/// Row scale of the per-token scheme.
#[inline(always)]
pub fn row_scale(absmax: f32) -> f32 {
    127.0 / absmax.max(1e-5)
}

/// Reference activation quantizer (scalar; the SIMD version in `crate::acts` must match it
/// bit for bit).
pub fn quantize_acts(x: &[f32], m: usize, k: usize) -> QuantizedActs {
    assert_eq!(
        x.len(),
        m * k,
        "quantize_acts: x has {} values, expected {m}x{k}",
        x.len()
    );
    let mut q = vec![0i8; m * k];
    let mut scale = Vec::with_capacity(m);
    let mut sum = Vec::with_capacity(m);
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let absmax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let s = row_scale(absmax);
        let mut acc = 0i32;
        for (o, &v) in q[i * k..(i + 1) * k].iter_mut().zip(row) {
            *o = quantize_one(v, s);
            acc += *o as i32;
        }
        scale.push(s);
        sum.push(acc);
    }
    QuantizedActs {
        m,
        k,
        q,
        scale,
        sum,
    }
}
