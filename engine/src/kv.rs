//! The KV cache's storage: one stream of `positions × head_dim` values per layer and KV head,
//! in f16 (the default, as llama.cpp's `--cache-type-k/v f16`) or f32.
//!
//! f16 halves what the attention reads per decoded token (at 2B4T shapes 77 KB instead of
//! 154 KB per cached position) and the cache's memory, at one rounding of every K and V value
//! (to nearest even). The attention kernels compute in f32 either way: the f16 rows of a
//! piece of work are widened (exactly) into a per-thread buffer first.

use half::f16;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::ops::Range;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }

    /// `f16` or `f32`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "f32" => Some(KvType::F32),
            _ => None,
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One KV head's cached values (positions one after another).
#[derive(Clone, Debug)]
pub enum KvRows {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvRows {
    pub fn new(t: KvType) -> Self {
        match t {
            KvType::F16 => KvRows::F16(Vec::new()),
            KvType::F32 => KvRows::F32(Vec::new()),
        }
    }

    pub fn kv_type(&self) -> KvType {
        match self {
            KvRows::F16(_) => KvType::F16,
            KvRows::F32(_) => KvType::F32,
        }
    }

    /// Number of cached values.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F16(v) => v.len(),
            KvRows::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        match self {
            KvRows::F16(v) => v.clear(),
            KvRows::F32(v) => v.clear(),
        }
    }

    /// Append `x` (rounded to nearest even for an f16 cache).
    pub fn extend(&mut self, x: &[f32]) {
        match self {
            KvRows::F32(v) => v.extend_from_slice(x),
            KvRows::F16(v) => {
                let at = v.len();
                v.resize(at + x.len(), f16::ZERO);
                narrow(x, &mut v[at..]);
            }
        }
    }

    /// Values `r` as f32: the cache itself for f32, widened into `buf` for f16.
    ///
    /// # Panics
    /// If `r` is not inside `0..self.len()` (callers slice within the positions cached).
    pub fn f32_span<'s>(&'s self, r: Range<usize>, buf: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            KvRows::F32(v) => &v[r],
            KvRows::F16(v) => widened(&v[r], buf),
        }
    }
}

thread_local! {
    /// Per-thread buffers for the widened K and V rows of one piece of attention work.
    static SPANS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Run `f` on values `r` of `k` and of `v` as f32 slices (borrowed for an f32 cache,
/// widened into this thread's buffers for f16). `f` must not call `with_spans` or
/// `with_widened` itself (they borrow the same buffers).
pub fn with_spans<R>(
    k: &KvRows,
    v: &KvRows,
    r: Range<usize>,
    f: impl FnOnce(&[f32], &[f32]) -> R,
) -> R {
    if let (KvRows::F32(k), KvRows::F32(v)) = (k, v) {
        return f(&k[r.clone()], &v[r]);
    }
    SPANS.with(|b| {
        let mut b = b.borrow_mut();
        let (kb, vb) = &mut *b;
        f(k.f32_span(r.clone(), kb), v.f32_span(r, vb))
    })
}

/// Run `f` on `k` and `v` widened to f32 (this thread's buffers). `f` must not call
/// `with_spans` or `with_widened` itself.
pub fn with_widened<R>(k: &[f16], v: &[f16], f: impl FnOnce(&[f32], &[f32]) -> R) -> R {
    SPANS.with(|b| {
        let mut b = b.borrow_mut();
        let (kb, vb) = &mut *b;
        f(widened(k, kb), widened(v, vb))
    })
}

/// `src` widened into the first `src.len()` values of `buf`. The buffer is grown, never
/// shrunk or cleared: the values about to be overwritten are not zeroed first.
fn widened<'b>(src: &[f16], buf: &'b mut Vec<f32>) -> &'b [f32] {
    if buf.len() < src.len() {
        buf.resize(src.len(), 0.0);
    }
    let dst = &mut buf[..src.len()];
    widen(src, dst);
    dst
}

/// The first `n` values of every cache in `c` as f32: borrowed for f32 caches, widened
/// copies for f16.
///
/// # Panics
/// If a cache holds fewer than `n` values.
pub fn prefixes(c: &[KvRows], n: usize) -> Vec<Cow<'_, [f32]>> {
    c.iter()
        .map(|r| match r {
            KvRows::F32(v) => Cow::Borrowed(&v[..n]),
            KvRows::F16(v) => {
                let mut w = vec![0f32; n];
                widen(&v[..n], &mut w);
                Cow::Owned(w)
            }
        })
        .collect()
}

/// `dst[i] = src[i] as f32` (exact).
///
/// # Panics
/// If the lengths differ.
pub fn widen(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; the lengths are equal (asserted).
        unsafe { widen_avx512(src, dst) };
        return;
    }
    // F16C on other x86 CPUs and FP16 on AArch64 where detected, else software (all exact)
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// `dst[i] = f16::from_f32(src[i])`: rounded to nearest even, overflow to infinity.
///
/// # Panics
/// If the lengths differ.
pub fn narrow(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "narrow: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; the lengths are equal (asserted).
        unsafe { narrow_avx512(src, dst) };
        return;
    }
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src);
}

/// [`narrow`] 16 values per `vcvtps2ph` (round to nearest even), the tail masked.
///
/// # Safety
/// AVX-512F; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn narrow_avx512(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut u16);
    let mut i = 0;
    // SAFETY: loads of 16 floats and stores of 16 halves at i with i + 16 <= n, then the
    // tail masked to the lanes below n.
    while i + 16 <= n {
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(s.add(i)));
        _mm256_storeu_si256(d.add(i) as *mut __m256i, h);
        i += 16;
    }
    if i < n {
        let m = ((1u32 << (n - i)) - 1) as __mmask16;
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_maskz_loadu_ps(m, s.add(i)));
        _mm256_mask_storeu_epi16(d.add(i) as *mut i16, m, h);
    }
}

/// [`widen`] 16 values per `vcvtph2ps`, the tail masked.
///
/// # Safety
/// AVX-512F; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let (s, d) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY: loads of 16 halves and stores of 16 floats at i with i + 16 <= n, then
    // the tail masked to the lanes below n; f16 is a 2-byte plain value (half's layout).
    while i + 16 <= n {
        let h = _mm256_loadu_si256(s.add(i) as *const __m256i);
        _mm512_storeu_ps(d.add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
    if i < n {
        let m = ((1u32 << (n - i)) - 1) as __mmask16;
        let h = _mm256_maskz_loadu_epi16(m, s.add(i) as *const i16);
        _mm512_mask_storeu_ps(d.add(i), m, _mm512_cvtph_ps(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_for_every_f16() {
        // every bit pattern (NaNs compared as NaN), at lengths with and without a tail
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for len in [all.len(), 37, 16, 15, 1, 0] {
            let src = &all[..len];
            let mut dst = vec![0f32; len];
            widen(src, &mut dst);
            for (h, f) in src.iter().zip(&dst) {
                let want = h.to_f32();
                assert!(
                    want.to_bits() == f.to_bits() || (want.is_nan() && f.is_nan()),
                    "{:#06x}: {f} vs {want}",
                    h.to_bits()
                );
            }
        }
    }

    #[test]
    fn narrowing_rounds_like_half() {
        // ties, subnormals, overflow, infinities, NaN and a sweep of magnitudes
        let mut x = vec![
            0.0f32,
            -0.0,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            65504.0,
            65520.0,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            5.96e-8,
            2.98e-8,
            1.0e-7,
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..5000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // exponents from about 2^-30 to 2^20
            let e = (s % 51) as i32 - 30;
            x.push(((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2f32.powi(e));
        }
        for len in [x.len(), 31, 16, 3] {
            let mut got = vec![f16::ZERO; len];
            narrow(&x[..len], &mut got);
            for (v, h) in x.iter().zip(&got) {
                let want = f16::from_f32(*v);
                assert!(
                    want.to_bits() == h.to_bits() || (want.is_nan() && h.is_nan()),
                    "{v}: {:#06x} vs {:#06x}",
                    h.to_bits(),
                    want.to_bits()
                );
            }
        }
    }

    #[test]
    fn caches_round_once_and_span() {
        let x = [1.0f32, 1.0 + 1e-4, -65504.0, 3.0e-8, 0.1];
        let mut h = KvRows::new(KvType::F16);
        let mut f = KvRows::new(KvType::F32);
        h.extend(&x);
        f.extend(&x);
        assert_eq!((h.len(), f.len()), (5, 5));
        let mut buf = Vec::new();
        let got = h.f32_span(1..4, &mut buf).to_vec();
        let want: Vec<f32> = x[1..4].iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(got, want);
        assert_eq!(f.f32_span(1..4, &mut buf), &x[1..4]);
        let sum = with_spans(&h, &f, 0..5, |a, b| a.len() + b.len());
        assert_eq!(sum, 10);
        h.clear();
        assert!(h.is_empty());
        assert_eq!(KvType::parse("F16"), Some(KvType::F16));
        assert_eq!(KvType::parse("q8"), None);
    }
}
