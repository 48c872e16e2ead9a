//! The LM head: logits = E · h over the F16 (or F32) embedding rows, the largest per-token
//! read of a BitNet model (657 MB for 2B4T). F16 rows are converted in registers (F16C /
//! AVX-512) and multiplied with FMA, rows split over the rayon pool; no copy of the
//! embedding is made.

use crate::model::{Embedding, Model};
use rayon::prelude::*;

/// Logits of one normed hidden state `h` (`n_embd` values).
pub fn logits(model: &Model<'_>, h: &[f32]) -> Vec<f32> {
    let d = model.cfg.n_embd;
    let mut out = vec![0f32; model.cfg.vocab];
    let head = model.lm_head();
    let dot = pick();
    out.par_chunks_mut(512).enumerate().for_each(|(c, o)| {
        let mut row = vec![0f32; d];
        for (i, v) in o.iter_mut().enumerate() {
            let r = c * 512 + i;
            *v = match head {
                Embedding::F16(b) => dot(&b[r * 2 * d..(r + 1) * 2 * d], h),
                Embedding::F32(_) => {
                    head.row(r, d, &mut row);
                    row.iter().zip(h).map(|(a, b)| a * b).sum()
                }
            };
        }
    });
    out
}

type DotF16 = fn(&[u8], &[f32]) -> f32;

/// The fastest F16 dot product this CPU runs (detected once).
fn pick() -> DotF16 {
    static PICK: std::sync::OnceLock<DotF16> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return x86::dot_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return x86::dot_avx2;
            }
        }
        dot_scalar
    })
}

/// Portable F16 row · f32 vector.
pub fn dot_scalar(row: &[u8], h: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (c, x)) in row.chunks_exact(2).zip(h).enumerate() {
        acc[i % 8] += half::f16::from_le_bytes([c[0], c[1]]).to_f32() * x;
    }
    acc.iter().sum()
}

/// Software prefetch distance (bytes) of the SIMD head dots: the head is streamed row after
/// row, so this lands a few rows ahead.
#[cfg(target_arch = "x86_64")]
const HEAD_PREFETCH: usize = 16 << 10;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::HEAD_PREFETCH as PF;

    pub fn dot_avx512(row: &[u8], h: &[f32]) -> f32 {
        assert_eq!(row.len(), 2 * h.len());
        // SAFETY: selected only when AVX-512F is detected; lengths checked above.
        unsafe { avx512(row.as_ptr(), h.as_ptr(), h.len()) }
    }

    pub fn dot_avx2(row: &[u8], h: &[f32]) -> f32 {
        assert_eq!(row.len(), 2 * h.len());
        // SAFETY: selected only when AVX2, FMA and F16C are detected; lengths checked above.
        unsafe { avx2(row.as_ptr(), h.as_ptr(), h.len()) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(row: *const u8, h: *const f32, d: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= d {
            // the head is streamed row after row: fetch the two lines PF bytes ahead (the
            // rows that follow; a prefetch never faults, wherever it points)
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + PF) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + PF + 64) as *const i8);
            for (j, a) in acc.iter_mut().enumerate() {
                let w = _mm512_cvtph_ps(_mm256_loadu_si256(
                    row.add(2 * (i + 16 * j)) as *const __m256i
                ));
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(h.add(i + 16 * j)), *a);
            }
            i += 64;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ));
        while i < d {
            let b = [*row.add(2 * i), *row.add(2 * i + 1)];
            s += half::f16::from_le_bytes(b).to_f32() * *h.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2(row: *const u8, h: *const f32, d: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= d {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + PF) as *const i8);
            for (j, a) in acc.iter_mut().enumerate() {
                let w =
                    _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * (i + 8 * j)) as *const __m128i));
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(h.add(i + 8 * j)), *a);
            }
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        let mut s: f32 = lanes.iter().sum();
        while i < d {
            let b = [*row.add(2 * i), *row.add(2 * i + 1)];
            s += half::f16::from_le_bytes(b).to_f32() * *h.add(i);
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn simd_dot_matches_scalar() {
        for d in [1usize, 7, 64, 65, 130, 2560] {
            let row: Vec<u8> = (0..d)
                .flat_map(|i| {
                    half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 25.0).to_le_bytes()
                })
                .collect();
            let h: Vec<f32> = (0..d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
            let want: f64 = row
                .chunks_exact(2)
                .zip(&h)
                .map(|(c, x)| half::f16::from_le_bytes([c[0], c[1]]).to_f64() * *x as f64)
                .sum();
            let got = super::pick()(&row, &h) as f64;
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "d={d}: {got} vs {want}"
            );
            let s = super::dot_scalar(&row, &h) as f64;
            assert!(
                (s - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "d={d}: {s} vs {want}"
            );
        }
    }
}

/// An int8 copy of the LM head (per-row absmax scales), built once at load: half the bytes
/// of F16 per token, dotted with int8-quantized hidden states (`vpdpbusd` where available).
/// Logits differ from the F16 head by the int8 rounding of both sides (about 1%).
pub struct Q8Head {
    d: usize,
    /// Cache-line aligned (the 64-byte loads of the VNNI dot never span two lines).
    q: ternforge::AlignedI8,
    scale: Vec<f32>,
    /// Per-row sum of `q` (for the unsigned-activation correction of `vpdpbusd`).
    sum: Vec<i32>,
}

impl Q8Head {
    /// Quantize every row of the model's LM head.
    pub fn build(model: &Model<'_>) -> Q8Head {
        let (d, vocab) = (model.cfg.n_embd, model.cfg.vocab);
        let head = model.lm_head();
        let mut q = ternforge::AlignedI8::zeroed(vocab * d);
        let mut scale = vec![0f32; vocab];
        let mut sum = vec![0i32; vocab];
        q.par_chunks_mut(d)
            .zip(scale.par_iter_mut())
            .zip(sum.par_iter_mut())
            .enumerate()
            .for_each_init(
                || vec![0f32; d],
                |row, (r, ((qr, sc), su))| {
                    head.row(r, d, row);
                    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let s = if amax > 0.0 { 127.0 / amax } else { 1.0 };
                    let mut acc = 0i32;
                    for (o, v) in qr.iter_mut().zip(row.iter()) {
                        *o = (v * s).round().clamp(-127.0, 127.0) as i8;
                        acc += *o as i32;
                    }
                    *sc = 1.0 / s;
                    *su = acc;
                },
            );
        Q8Head { d, q, scale, sum }
    }

    /// Bytes read per token.
    pub fn bytes(&self) -> usize {
        self.q.len()
    }

    /// Logits of a normed hidden state.
    pub fn logits(&self, h: &[f32]) -> Vec<f32> {
        let d = self.d;
        let amax = h.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = 127.0 / amax.max(1e-5);
        // activations as unsigned bytes: q + 128 (vpdpbusd takes u8 x s8)
        let hu: Vec<u8> = h
            .iter()
            .map(|v| ((v * s).round().clamp(-127.0, 127.0) as i32 + 128) as u8)
            .collect();
        let dot = pick_q8();
        let mut out = vec![0f32; self.scale.len()];
        out.par_chunks_mut(512).enumerate().for_each(|(c, o)| {
            for (i, v) in o.iter_mut().enumerate() {
                let r = c * 512 + i;
                let raw = dot(&self.q[r * d..(r + 1) * d], &hu);
                *v = (raw - 128 * self.sum[r]) as f32 * self.scale[r] / s;
            }
        });
        out
    }
}

type DotQ8 = fn(&[i8], &[u8]) -> i32;

fn pick_q8() -> DotQ8 {
    static PICK: std::sync::OnceLock<DotQ8> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return x86q8::dot_vnni;
            }
        }
        dot_q8_scalar
    })
}

/// Portable `sum(u8 * i8)`.
pub fn dot_q8_scalar(w: &[i8], a: &[u8]) -> i32 {
    w.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86q8 {
    use std::arch::x86_64::*;

    use super::HEAD_PREFETCH as PF;

    pub fn dot_vnni(w: &[i8], a: &[u8]) -> i32 {
        assert_eq!(w.len(), a.len());
        // SAFETY: selected only when AVX-512 BW and VNNI are detected; lengths checked.
        unsafe { vnni(w.as_ptr(), a.as_ptr(), w.len()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni(w: *const i8, a: *const u8, d: usize) -> i32 {
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut i = 0;
        while i + 128 <= d {
            // rows are streamed one after another: fetch the lines PF bytes ahead (a
            // prefetch never faults, wherever it points)
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(i + PF));
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(i + PF + 64));
            for (j, x) in acc.iter_mut().enumerate() {
                let av = _mm512_loadu_si512(a.add(i + 64 * j) as *const _);
                let wv = _mm512_loadu_si512(w.add(i + 64 * j) as *const _);
                *x = _mm512_dpbusd_epi32(*x, av, wv);
            }
            i += 128;
        }
        let mut s = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]));
        while i < d {
            s += *w.add(i) as i32 * *a.add(i) as i32;
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod q8_tests {
    #[test]
    fn vnni_dot_matches_scalar() {
        for d in [1usize, 100, 128, 300, 2560] {
            let w: Vec<i8> = (0..d)
                .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                .collect();
            let a: Vec<u8> = (0..d).map(|i| (i * 91 % 256) as u8).collect();
            assert_eq!(
                super::pick_q8()(&w, &a),
                super::dot_q8_scalar(&w, &a),
                "d={d}"
            );
        }
    }
}
