//! The partial attention of one query group (see [`super::AttendFn`]) in AVX-512 registers,
//! for head sizes that are a multiple of 16.
//!
//! The portable [`super::attend_with`] compiled for AVX-512 keeps its value accumulators in
//! memory (arrays of f32 that the vectoriser does not promote to registers), reduces every
//! score on its own and computes the exponentials one by one. Here: scores four cached
//! positions at a time (each key piece loaded once for all heads, each query piece once for
//! the four positions, four sums reduced by one shuffle tree), the softmax 16 lanes per
//! instruction, and the weighted values of four heads from one load of each value.
//! Generic over the cache's element type ([`Elem`]): f16 rows are widened as they are
//! loaded (`vcvtph2ps`), so an f16 cache streams half the bytes through the same loops.

use super::{prefetch_lanes, PREFETCH_ROWS};
use half::f16;
use std::arch::x86_64::*;

/// An element type of the KV cache the AVX-512 loops read.
pub(super) trait Elem: Copy {
    /// The 16 values at `p` as f32 lanes (exact).
    ///
    /// # Safety
    /// AVX-512F; `p` is valid for reads of 16 values.
    unsafe fn load16(p: *const Self) -> __m512;
    /// One value as f32 (exact).
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        // f16 is a plain 2-byte value (half's layout); the widening is exact
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// `a · b` in four 16-lane FMA accumulators.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, x) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * j + 16 <= n: inside both slices.
            *x = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16 * j)),
                E::load16(pb.add(i + 16 * j)),
                *x,
            );
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), E::load16(pb.add(i)), acc[0]);
        i += 16;
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut s = _mm512_reduce_add_ps(v);
    while i < n {
        s += a[i] * b[i].to_f32();
        i += 1;
    }
    s
}

/// The AVX-512 partial attention, or `None` where the shapes are not its (head size not a
/// multiple of 16, inconsistent lengths): the caller then runs the portable one.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend<E: Elem>(
    q: &[f32],
    k: &[E],
    v: &[E],
    scale: f32,
    out: &mut [f32],
    stats: &mut [(f32, f32)],
) -> Option<()> {
    let g = stats.len();
    if g == 0 || !q.len().is_multiple_of(g) {
        return None;
    }
    let hd = q.len() / g;
    if hd == 0
        || !hd.is_multiple_of(16)
        || !k.len().is_multiple_of(hd)
        || v.len() != k.len()
        || out.len() != q.len()
    {
        return None;
    }
    let n = k.len() / hd;
    if n == 0 {
        // no positions: weight 0 in any merge
        out.iter_mut().for_each(|o| *o = 0.0);
        stats.iter_mut().for_each(|s| *s = (f32::NEG_INFINITY, 0.0));
        return Some(());
    }
    // scores, head-major: w[h * n + p]
    let mut w = vec![0f32; g * n];
    // SAFETY (all three passes): q holds g * hd values, k and v n * hd, w g * n, out g * hd
    // (checked above); every pointer below stays inside its slice.
    scores(q.as_ptr(), k, v, hd, n, g, scale, w.as_mut_ptr());
    for (wh, st) in w.chunks_exact_mut(n).zip(stats.iter_mut()) {
        *st = softmax_numerators(wh);
    }
    let (wp, vp, op) = (w.as_ptr(), v.as_ptr(), out.as_mut_ptr());
    let mut h = 0;
    while h + 4 <= g {
        let ws = [0, 1, 2, 3].map(|j| wp.add((h + j) * n));
        let os = [0, 1, 2, 3].map(|j| op.add((h + j) * hd));
        weighted_heads::<E, 4>(ws, vp, hd, n, os);
        h += 4;
    }
    while h < g {
        weighted_heads::<E, 1>([wp.add(h * n)], vp, hd, n, [op.add(h * hd)]);
        h += 1;
    }
    Some(())
}

/// `w[h * n + p] = (q_h · k_p) * scale` for every head and position. Four positions at a
/// time: each 16-lane piece of their key rows is loaded once for all heads and each piece of
/// a query once for the four rows; four heads (or four rows of one head) are reduced
/// together ([`reduce4`]). The caches of later positions are prefetched.
///
/// # Safety
/// AVX-512F; `q` points to `g * hd` values, `w` to `g * n`; `k`, `v` hold `n * hd`;
/// `hd % 16 == 0`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores<E: Elem>(
    q: *const f32,
    k: &[E],
    v: &[E],
    hd: usize,
    n: usize,
    g: usize,
    scale: f32,
    w: *mut f32,
) {
    for p in 0..PREFETCH_ROWS.min(n) {
        prefetch_lanes(k, p * hd, hd);
        prefetch_lanes(v, p * hd, hd);
    }
    let kp = k.as_ptr();
    let sc = _mm_set1_ps(scale);
    let mut p = 0;
    while p + 4 <= n {
        for r in p..p + 4 {
            prefetch_lanes(k, (r + PREFETCH_ROWS) * hd, hd);
            prefetch_lanes(v, (r + PREFETCH_ROWS) * hd, hd);
        }
        let kr = [
            kp.add(p * hd),
            kp.add((p + 1) * hd),
            kp.add((p + 2) * hd),
            kp.add((p + 3) * hd),
        ];
        let mut h = 0;
        while h + 4 <= g {
            // acc[r][j]: row p + r, head h + j
            let acc = dots_4x4(q.add(h * hd), hd, kr);
            for (r, a) in acc.iter().enumerate() {
                let s = _mm_mul_ps(reduce4(a[0], a[1], a[2], a[3]), sc);
                let mut four = [0f32; 4];
                _mm_storeu_ps(four.as_mut_ptr(), s);
                for (j, x) in four.into_iter().enumerate() {
                    *w.add((h + j) * n + p + r) = x;
                }
            }
            h += 4;
        }
        while h < g {
            let a = dots_1x4(q.add(h * hd), hd, kr);
            let s = _mm_mul_ps(reduce4(a[0], a[1], a[2], a[3]), sc);
            _mm_storeu_ps(w.add(h * n + p), s);
            h += 1;
        }
        p += 4;
    }
    // the last positions (fewer than four) one dot at a time
    while p < n {
        let kr = &k[p * hd..(p + 1) * hd];
        for h in 0..g {
            // SAFETY: head h's query is q[h * hd..(h + 1) * hd] (q holds g * hd values).
            let qh = std::slice::from_raw_parts(q.add(h * hd), hd);
            *w.add(h * n + p) = dot(qh, kr) * scale;
        }
        p += 1;
    }
}

/// The 16-lane partial dot products of four consecutive heads of `q` (`hd` values each)
/// with four key rows, `[row][head]`, still to be reduced.
///
/// # Safety
/// AVX-512F; `q` points to `4 * hd` values, each `k[r]` to `hd`; `hd % 16 == 0`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dots_4x4<E: Elem>(q: *const f32, hd: usize, k: [*const E; 4]) -> [[__m512; 4]; 4] {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut c = 0;
    while c < hd {
        let kv = [
            E::load16(k[0].add(c)),
            E::load16(k[1].add(c)),
            E::load16(k[2].add(c)),
            E::load16(k[3].add(c)),
        ];
        for j in 0..4 {
            let qv = _mm512_loadu_ps(q.add(j * hd + c));
            for (a, kr) in acc.iter_mut().zip(&kv) {
                a[j] = _mm512_fmadd_ps(qv, *kr, a[j]);
            }
        }
        c += 16;
    }
    acc
}

/// [`dots_4x4`] for one head, `[row]`.
///
/// # Safety
/// AVX-512F; `q` points to `hd` values, each `k[r]` to `hd`; `hd % 16 == 0`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dots_1x4<E: Elem>(q: *const f32, hd: usize, k: [*const E; 4]) -> [__m512; 4] {
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut c = 0;
    while c < hd {
        let qv = _mm512_loadu_ps(q.add(c));
        for (a, kr) in acc.iter_mut().zip(&k) {
            *a = _mm512_fmadd_ps(qv, E::load16(kr.add(c)), *a);
        }
        c += 16;
    }
    acc
}

/// The horizontal sums of four vectors, lane `i` for vector `i`: the 128-bit quarters of
/// each vector are added by two rounds of quarter shuffles that also pack the four vectors
/// into one, then the four floats of each quarter by two in-quarter permutes.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // [a0 + a2, a1 + a3, b0 + b2, b1 + b3] in quarters, and the same for c, d
    let ab = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    );
    let cd = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(c, d),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d),
    );
    // quarter i: the elementwise sum of the four quarters of vector i
    let s = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
    );
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
    // every float of quarter i is vector i's total: take element 0 of each quarter
    let pick = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps128(_mm512_permutexvar_ps(pick, s))
}

/// One head's scores in place -> `e^(s - mx)` (0 below `e^-50`, as
/// [`super::attend_with`]), returning `(mx, sum)`.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn softmax_numerators(w: &mut [f32]) -> (f32, f32) {
    let n = w.len();
    let p = w.as_mut_ptr();
    // SAFETY: every load and store is of lanes i..i + 16 with i + 16 <= n, or masked to
    // the lanes below n.
    let tail = |i: usize| -> __mmask16 { ((1u32 << (n - i)) - 1) as __mmask16 };
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 16 <= n {
        mx = _mm512_max_ps(mx, _mm512_loadu_ps(p.add(i)));
        i += 16;
    }
    if i < n {
        let m = tail(i);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, p.add(i)));
    }
    let m = _mm512_reduce_max_ps(mx);
    let mv = _mm512_set1_ps(m);
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let lanes = if i + 16 <= n { 0xffff } else { tail(i) };
        let e = exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, p.add(i)), mv));
        let e = _mm512_maskz_mov_ps(lanes, e);
        _mm512_mask_storeu_ps(p.add(i), lanes, e);
        sum = _mm512_add_ps(sum, e);
        i += 16;
    }
    (m, _mm512_reduce_add_ps(sum))
}

/// [`super::exp_neg`] on 16 lanes, and 0 where `x <= -50`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp_neg16(x: __m512) -> __m512 {
    let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(-50.0));
    // the kept lanes are in (-50, 0]; the others are clamped only to keep the exponent
    // bits below meaningful (they are zeroed)
    let x = _mm512_max_ps(x, _mm512_set1_ps(-50.0));
    let shift = _mm512_set1_ps(12_582_912.0);
    let nf = _mm512_sub_ps(
        _mm512_add_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            shift,
        ),
        shift,
    );
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(nf, _mm512_set1_ps(355.0 / 512.0))),
        _mm512_mul_ps(nf, _mm512_set1_ps(-2.121_944_4e-4)),
    );
    let mut poly = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        poly = _mm512_add_ps(_mm512_mul_ps(poly, r), _mm512_set1_ps(c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(nf),
        _mm512_set1_epi32(127),
    ));
    _mm512_maskz_mul_ps(keep, poly, _mm512_castsi512_ps(bits))
}

/// `out[h][..hd] = sum over p of w[h][p] * v(p)` for `H` heads (1 or 4): 128 (one head)
/// or 64 (four heads: 16 accumulators) lanes of the value rows at a time, then 16; each
/// value is loaded once for all `H` heads.
///
/// # Safety
/// AVX-512F; `w[h]` points to `n` weights, `v` to `n * hd` values, `out[h]` to `hd`;
/// `hd % 16 == 0`.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_heads<E: Elem, const H: usize>(
    w: [*const f32; H],
    v: *const E,
    hd: usize,
    n: usize,
    out: [*mut f32; H],
) {
    let mut c0 = 0;
    if H == 1 {
        while c0 + 128 <= hd {
            weighted_block::<E, H, 8>(w, v, hd, n, c0, out);
            c0 += 128;
        }
    }
    while c0 + 64 <= hd {
        weighted_block::<E, H, 4>(w, v, hd, n, c0, out);
        c0 += 64;
    }
    while c0 < hd {
        weighted_block::<E, H, 1>(w, v, hd, n, c0, out);
        c0 += 16;
    }
}

/// [`weighted_heads`] for the `16 * C` lanes from `c0`: `H * C` accumulators; per output
/// element the terms are added in position order.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn weighted_block<E: Elem, const H: usize, const C: usize>(
    w: [*const f32; H],
    v: *const E,
    hd: usize,
    n: usize,
    c0: usize,
    out: [*mut f32; H],
) {
    let mut acc = [[_mm512_setzero_ps(); C]; H];
    for p in 0..n {
        let row = v.add(p * hd + c0);
        let mut vr = [_mm512_setzero_ps(); C];
        for (c, r) in vr.iter_mut().enumerate() {
            *r = E::load16(row.add(16 * c));
        }
        for (a, wh) in acc.iter_mut().zip(&w) {
            let b = _mm512_set1_ps(*wh.add(p));
            for (x, r) in a.iter_mut().zip(&vr) {
                *x = _mm512_fmadd_ps(b, *r, *x);
            }
        }
    }
    for (a, o) in acc.iter().zip(&out) {
        for (c, x) in a.iter().enumerate() {
            _mm512_storeu_ps(o.add(c0 + 16 * c), *x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{partial_f64, uniform};
    use half::f16;

    /// Every head-group width (4s and leftovers), position count (four-row blocks and
    /// leftovers, fewer than the prefetch distance) and head size (128-, 64- and 16-lane
    /// value blocks) against the definition; head sizes that are not a multiple of 16 are
    /// declined.
    #[test]
    fn avx512_attention_matches_the_definition() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rnd = uniform(11);
        for (g, hd, n) in [
            (4, 128, 192),
            (4, 128, 1),
            (4, 128, 7),
            (1, 16, 3),
            (2, 64, 33),
            (3, 48, 17),
            (5, 144, 21),
            (8, 80, 40),
            (9, 256, 13),
            (7, 32, 66),
        ] {
            let q: Vec<f32> = (0..g * hd).map(|_| rnd(2.0)).collect();
            let k: Vec<f32> = (0..n * hd).map(|_| rnd(2.0)).collect();
            let v: Vec<f32> = (0..n * hd).map(|_| rnd(1.0)).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            // f32 rows, then the same rows stored as f16 (against the definition over the
            // stored values)
            let (k16, v16): (Vec<f16>, Vec<f16>) = (
                k.iter().map(|&x| f16::from_f32(x)).collect(),
                v.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            let widened = |x: &[f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<f32>>();
            let (kw, vw) = (widened(&k16), widened(&v16));
            for elem in ["f32", "f16"] {
                let mut out = vec![0f32; g * hd];
                let mut st = vec![(0f32, 0f32); g];
                // SAFETY: AVX-512F detected above.
                let done = unsafe {
                    if elem == "f32" {
                        super::attend(&q, &k, &v, scale, &mut out, &mut st)
                    } else {
                        super::attend(&q, &k16, &v16, scale, &mut out, &mut st)
                    }
                };
                assert!(done.is_some(), "{elem} g {g} hd {hd} n {n} declined");
                let (k, v) = if elem == "f32" { (&k, &v) } else { (&kw, &vw) };
                for (h, (mx, sum, want)) in
                    partial_f64(&q, k, v, g, scale as f64).iter().enumerate()
                {
                    let what = format!("{elem} g {g} hd {hd} n {n} head {h}");
                    assert!(
                        (st[h].0 as f64 - mx).abs() < 1e-5,
                        "{what}: max {} vs {mx}",
                        st[h].0
                    );
                    assert!(
                        (st[h].1 as f64 - sum).abs() < 1e-5 * sum,
                        "{what}: sum {} vs {sum}",
                        st[h].1
                    );
                    for (c, w) in want.iter().enumerate() {
                        let got = out[h * hd + c] as f64;
                        assert!(
                            (got - w).abs() < 1e-5 * sum,
                            "{what} lane {c}: {got} vs {w}"
                        );
                    }
                }
            }
        }
        let (q, k) = (vec![0f32; 2 * 24], vec![0f32; 3 * 24]);
        let (mut out, mut st) = (vec![0f32; 2 * 24], vec![(0f32, 0f32); 2]);
        // SAFETY: as above.
        let done = unsafe { super::attend(&q, &k, &k, 1.0, &mut out, &mut st) };
        assert!(
            done.is_none(),
            "head size 24 must be left to the portable kernel"
        );
    }
}
