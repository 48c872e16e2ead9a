//! The LM head: logits = E · h over the F16 (or F32) embedding rows, the largest per-token
//! read of a BitNet model (657 MB for 2B4T). F16 rows are converted in registers (F16C /
//! AVX-512) and multiplied with FMA, rows split over the rayon pool; no copy of the
//! embedding is made.
//!
//! The SIMD dots take [`ROWS`] rows at once (one shared load of `h` per step, a prefetch
//! stream per row): against one row at a time this read the 2B4T head at 28-30 instead of
//! 23-24 GB/s on two threads of a 2-vCPU Xeon (same process, alternated). The rows of a group
//! are a quarter of the chunk apart (four streams far apart in memory, like the DRAM
//! reference's fastest reader) rather than consecutive: on that machine, 2 threads,
//! alternated in one process, the head alone read at a median 26.1-29.6 -> 28.0-31.1 GB/s,
//! and in a decode it took 22.9-23.0 -> 22.0-22.1 ms/token (faster in 30 of 40 8-token runs).

use crate::model::{Embedding, Model};
use rayon::prelude::*;

/// Rows per SIMD dot group.
const ROWS: usize = 4;

/// The row grouping of every SIMD head dot: with `q = out.len() / ROWS`, `f(i, q, o)` for
/// each `i < q` computes the [`ROWS`] rows `i, i + q, i + 2q, ..` into `o` (`o.len() ==
/// ROWS`), which land in `out` at those rows; then `f(r, 0, o)` with `o.len() == 1` for each
/// remaining row `r >= ROWS * q`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn in_groups<T: Copy + Default>(out: &mut [T], mut f: impl FnMut(usize, usize, &mut [T])) {
    let q = out.len() / ROWS;
    let mut group = [T::default(); ROWS];
    for i in 0..q {
        f(i, q, &mut group);
        for (j, v) in group.iter().enumerate() {
            out[i + j * q] = *v;
        }
    }
    for r in ROWS * q..out.len() {
        f(r, 0, &mut out[r..r + 1]);
    }
}

/// Logits of one normed hidden state `h` (`n_embd` values).
pub fn logits(model: &Model<'_>, h: &[f32]) -> Vec<f32> {
    let d = model.cfg.n_embd;
    let mut out = vec![0f32; model.cfg.vocab];
    let head = model.lm_head();
    let dots = pick();
    out.par_chunks_mut(512).enumerate().for_each(|(c, o)| {
        let r0 = c * 512;
        match head {
            Embedding::F16(b) => dots(&b[r0 * 2 * d..(r0 + o.len()) * 2 * d], h, o),
            Embedding::F32(_) => {
                let mut row = vec![0f32; d];
                for (i, v) in o.iter_mut().enumerate() {
                    head.row(r0 + i, d, &mut row);
                    *v = row.iter().zip(h).map(|(a, b)| a * b).sum();
                }
            }
        }
    });
    out
}

/// `out[r] = row r · h` for the `out.len()` consecutive F16 rows in `rows`
/// (`rows.len() == 2 * h.len() * out.len()`, checked).
type DotsF16 = fn(&[u8], &[f32], &mut [f32]);

/// The fastest F16 row dots this CPU runs (detected once).
fn pick() -> DotsF16 {
    static PICK: std::sync::OnceLock<DotsF16> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return x86::dots_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return x86::dots_avx2;
            }
        }
        dots_scalar
    })
}

/// Portable F16 row dots (see [`DotsF16`]).
pub fn dots_scalar(rows: &[u8], h: &[f32], out: &mut [f32]) {
    assert_eq!(rows.len(), 2 * h.len() * out.len());
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_scalar(&rows[2 * h.len() * r..2 * h.len() * (r + 1)], h);
    }
}

/// Portable F16 row · f32 vector.
pub fn dot_scalar(row: &[u8], h: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (c, x)) in row.chunks_exact(2).zip(h).enumerate() {
        acc[i % 8] += half::f16::from_le_bytes([c[0], c[1]]).to_f32() * x;
    }
    acc.iter().sum()
}

/// Software prefetch distance (bytes) of the SIMD head dots, in each row's stream (each of
/// the [`ROWS`] streams moves on by one row per group). 2-4 KiB read the strided groups
/// fastest on a 2-vCPU Xeon (8 and 16 KiB 5-7 % slower, alternated in one process).
#[cfg(target_arch = "x86_64")]
const HEAD_PREFETCH: usize = 4 << 10;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{HEAD_PREFETCH as PF, ROWS};

    pub fn dots_avx512(rows: &[u8], h: &[f32], out: &mut [f32]) {
        assert_eq!(rows.len(), 2 * h.len() * out.len());
        let d = h.len();
        super::in_groups(out, |r, q, o| {
            let p = rows[2 * d * r..].as_ptr();
            // SAFETY: selected only when AVX-512F is detected; `rows` holds a row of `d` F16
            // values per output (checked above); the call reads rows r + j * q for j < o.len()
            // (in_groups: all below out.len()) and writes o.len() outputs; `h` holds d values.
            unsafe {
                if o.len() == ROWS {
                    avx512::<ROWS>(p, h.as_ptr(), d, q, o.as_mut_ptr());
                } else {
                    avx512::<1>(p, h.as_ptr(), d, q, o.as_mut_ptr());
                }
            }
        });
    }

    pub fn dots_avx2(rows: &[u8], h: &[f32], out: &mut [f32]) {
        assert_eq!(rows.len(), 2 * h.len() * out.len());
        let d = h.len();
        super::in_groups(out, |r, q, o| {
            let p = rows[2 * d * r..].as_ptr();
            // SAFETY: selected only when AVX2, FMA and F16C are detected; bounds as in
            // `dots_avx512`.
            unsafe {
                if o.len() == ROWS {
                    avx2::<ROWS>(p, h.as_ptr(), d, q, o.as_mut_ptr());
                } else {
                    avx2::<1>(p, h.as_ptr(), d, q, o.as_mut_ptr());
                }
            }
        });
    }

    /// The last `d % step` elements of row `r` (scalar).
    unsafe fn tail(row: *const u8, h: *const f32, from: usize, d: usize) -> f32 {
        let mut s = 0f32;
        for i in from..d {
            let b = [*row.add(2 * i), *row.add(2 * i + 1)];
            s += half::f16::from_le_bytes(b).to_f32() * *h.add(i);
        }
        s
    }

    /// `out[0..R]` = the dots with `h` of the `R` rows of `d` F16 values at `row`, `stride`
    /// rows apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const R: usize>(
        row: *const u8,
        h: *const f32,
        d: usize,
        stride: usize,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 32 <= d {
            let x = [_mm512_loadu_ps(h.add(i)), _mm512_loadu_ps(h.add(i + 16))];
            for (r, a) in acc.iter_mut().enumerate() {
                let p = row.add(2 * (r * stride * d + i));
                // a prefetch never faults, wherever it points
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF) as *const i8);
                for (j, a) in a.iter_mut().enumerate() {
                    let w = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32 * j) as *const __m256i));
                    *a = _mm512_fmadd_ps(w, x[j], *a);
                }
            }
            i += 32;
        }
        for (r, a) in acc.iter().enumerate() {
            *out.add(r) = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]))
                + tail(row.add(2 * r * stride * d), h, i, d);
        }
    }

    /// `out[0..R]` = the dots with `h` of the `R` rows of `d` F16 values at `row`, `stride`
    /// rows apart.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2<const R: usize>(
        row: *const u8,
        h: *const f32,
        d: usize,
        stride: usize,
        out: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 16 <= d {
            let x = [_mm256_loadu_ps(h.add(i)), _mm256_loadu_ps(h.add(i + 8))];
            for (r, a) in acc.iter_mut().enumerate() {
                let p = row.add(2 * (r * stride * d + i));
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF) as *const i8);
                for (j, a) in a.iter_mut().enumerate() {
                    let w = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * j) as *const __m128i));
                    *a = _mm256_fmadd_ps(w, x[j], *a);
                }
            }
            i += 16;
        }
        for (r, a) in acc.iter().enumerate() {
            let v = _mm256_add_ps(a[0], a[1]);
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let s = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
            *out.add(r) = s + tail(row.add(2 * r * stride * d), h, i, d);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every F16 dot implementation this CPU runs (skips printed).
    fn implementations() -> Vec<(&'static str, super::DotsF16)> {
        let mut v: Vec<(&'static str, super::DotsF16)> = vec![("scalar", super::dots_scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(("avx512", super::x86::dots_avx512));
            } else {
                println!("skipped: avx512 head dots");
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(("avx2", super::x86::dots_avx2));
            } else {
                println!("skipped: avx2 head dots");
            }
        }
        v
    }

    #[test]
    fn simd_dots_match_scalar() {
        // row counts around the group size (whole groups, remainders, fewer than a group)
        // and lengths around the vector steps
        for d in [0usize, 1, 7, 16, 31, 64, 65, 130, 2560] {
            for n in [1usize, 2, 3, 4, 5, 7, 8, 9] {
                let rows: Vec<u8> = (0..n * d)
                    .flat_map(|i| {
                        half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 25.0).to_le_bytes()
                    })
                    .collect();
                let h: Vec<f32> = (0..d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
                for (what, dots) in implementations() {
                    let mut got = vec![f32::NAN; n];
                    dots(&rows, &h, &mut got);
                    for (r, &v) in got.iter().enumerate() {
                        let want: f64 = rows[2 * d * r..2 * d * (r + 1)]
                            .chunks_exact(2)
                            .zip(&h)
                            .map(|(c, x)| {
                                half::f16::from_le_bytes([c[0], c[1]]).to_f64() * *x as f64
                            })
                            .sum();
                        assert!(
                            (v as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{what} d={d} n={n} row {r}: {v} vs {want}"
                        );
                    }
                }
            }
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
        let dots = pick_q8();
        let mut out = vec![0f32; self.scale.len()];
        out.par_chunks_mut(512).enumerate().for_each(|(c, o)| {
            let r0 = c * 512;
            let mut raw = [0i32; 512];
            let raw = &mut raw[..o.len()];
            dots(&self.q[r0 * d..(r0 + o.len()) * d], &hu, raw);
            for (i, (v, &x)) in o.iter_mut().zip(raw.iter()).enumerate() {
                let r = r0 + i;
                *v = (x - 128 * self.sum[r]) as f32 * self.scale[r] / s;
            }
        });
        out
    }
}

/// `out[r] = sum(row r * a)` for the `out.len()` consecutive int8 rows in `rows`
/// (`rows.len() == a.len() * out.len()`, checked).
type DotsQ8 = fn(&[i8], &[u8], &mut [i32]);

fn pick_q8() -> DotsQ8 {
    static PICK: std::sync::OnceLock<DotsQ8> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return x86q8::dots_vnni;
            }
        }
        dots_q8_scalar
    })
}

/// Portable `sum(u8 * i8)` per row (see [`DotsQ8`]).
pub fn dots_q8_scalar(rows: &[i8], a: &[u8], out: &mut [i32]) {
    assert_eq!(rows.len(), a.len() * out.len());
    let d = a.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o = rows[d * r..d * (r + 1)]
            .iter()
            .zip(a)
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86q8 {
    use std::arch::x86_64::*;

    use super::{HEAD_PREFETCH as PF, ROWS};

    pub fn dots_vnni(rows: &[i8], a: &[u8], out: &mut [i32]) {
        assert_eq!(rows.len(), a.len() * out.len());
        let d = a.len();
        super::in_groups(out, |r, q, o| {
            let p = rows[d * r..].as_ptr();
            // SAFETY: selected only when AVX-512 BW and VNNI are detected; `rows` holds a row
            // of `d` values per output (checked above); the call reads rows r + j * q for
            // j < o.len() (in_groups: all below out.len()); `a` holds d values.
            unsafe {
                if o.len() == ROWS {
                    vnni::<ROWS>(p, a.as_ptr(), d, q, o.as_mut_ptr());
                } else {
                    vnni::<1>(p, a.as_ptr(), d, q, o.as_mut_ptr());
                }
            }
        });
    }

    /// `out[0..R]` = the u8 x i8 dots with `a` of the `R` rows of `d` values at `w`, `stride`
    /// rows apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni<const R: usize>(
        w: *const i8,
        a: *const u8,
        d: usize,
        stride: usize,
        out: *mut i32,
    ) {
        let mut acc = [_mm512_setzero_si512(); R];
        let mut i = 0;
        while i + 64 <= d {
            let av = _mm512_loadu_si512(a.add(i) as *const _);
            for (r, x) in acc.iter_mut().enumerate() {
                let p = w.add(r * stride * d + i);
                // a prefetch never faults, wherever it points
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF));
                *x = _mm512_dpbusd_epi32(*x, av, _mm512_loadu_si512(p as *const _));
            }
            i += 64;
        }
        for (r, x) in acc.iter().enumerate() {
            let mut s = _mm512_reduce_add_epi32(*x);
            for j in i..d {
                s += *w.add(r * stride * d + j) as i32 * *a.add(j) as i32;
            }
            *out.add(r) = s;
        }
    }
}

#[cfg(test)]
mod q8_tests {
    #[test]
    fn vnni_dots_match_scalar() {
        for d in [0usize, 1, 63, 64, 100, 128, 300, 2560] {
            for n in [1usize, 3, 4, 5, 8, 9] {
                let w: Vec<i8> = (0..n * d)
                    .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                    .collect();
                let a: Vec<u8> = (0..d).map(|i| (i * 91 % 256) as u8).collect();
                let mut got = vec![i32::MIN; n];
                super::pick_q8()(&w, &a, &mut got);
                let want: Vec<i32> = (0..n)
                    .map(|r| {
                        w[r * d..(r + 1) * d]
                            .iter()
                            .zip(&a)
                            .map(|(&x, &y)| x as i32 * y as i32)
                            .sum()
                    })
                    .collect();
                assert_eq!(got, want, "d={d} n={n}");
            }
        }
    }
}
