//! The bitnet-b1.58 forward pass with a KV cache.
//!
//! Per layer: RMSNorm·attn_norm → Q, K, V (ternary, int8 per-token activations) → NEOX RoPE →
//! causal GQA attention over the cache → RMSNorm·attn_sub_norm → O → +residual;
//! RMSNorm·ffn_norm → gate, up → relu(gate)² · up → RMSNorm·ffn_sub_norm → down → +residual.
//! Final RMSNorm·output_norm and the (tied) LM head. A prompt of `m` tokens runs as one batch
//! (GEMM kernels); decoding runs `m = 1` (GEMV kernels).

use crate::kv::{with_spans, KvRows, KvType};
use crate::model::{FfnAct, Linear, Model};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fmt;
use ternforge::{matmul_prepared_many, prepare_for, quantize_acts, select_matmul, KernelError};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Errors of a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ForwardError {
    /// The context window is full.
    ContextFull {
        ctx: usize,
        needed: usize,
    },
    /// A token id outside the vocabulary.
    BadToken {
        id: u32,
        vocab: usize,
    },
    Kernel(KernelError),
    Empty,
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::ContextFull { ctx, needed } => {
                write!(
                    f,
                    "context window of {ctx} tokens exceeded ({needed} needed)"
                )
            }
            ForwardError::BadToken { id, vocab } => {
                write!(f, "token id {id} is outside the vocabulary of {vocab}")
            }
            ForwardError::Kernel(e) => write!(f, "kernel: {e}"),
            ForwardError::Empty => write!(f, "no tokens to process"),
        }
    }
}

impl std::error::Error for ForwardError {}

impl From<KernelError> for ForwardError {
    fn from(e: KernelError) -> Self {
        ForwardError::Kernel(e)
    }
}

/// `x * w / rms(x)` in place, per row of `d` values.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        // 16 partial sums: a serial f32 sum is one dependent add per element (~2.5 us for
        // 2560 values, four norms per layer on the decode path)
        let ms = dot(row, row) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * inv * g;
        }
    }
}

/// `a · b` with 16 independent partial sums (vectorises; a serial f32 sum cannot).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        // fixed-size views: no bounds checks, one vector (or two, four) per step
        let x: &[f32; 16] = x.try_into().expect("chunk of 16");
        let y: &[f32; 16] = y.try_into().expect("chunk of 16");
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
        w /= 2;
    }
    lanes[0] + rest
}

/// A query group's partial attention over a span of its KV head's cache: `q` holds the
/// group's `g` query heads (`g * head_dim` values, head after head), `k` and `v` the span's
/// positions (`head_dim` values each). For each head `h` it writes the softmax numerator
/// `out[h] = sum_p e^(s_p - mx) v_p` (not yet divided) and `stats[h] = (mx, sum_p e^(s_p - mx))`,
/// where `s_p = q_h · k_p · scale` and `mx` is the span's largest score.
pub type AttendFn = fn(&[f32], &[f32], &[f32], f32, &mut [f32], &mut [(f32, f32)]);

/// The partial attention compiled for the best vector ISA of this CPU (detected once).
pub fn attention_kernel() -> AttendFn {
    static PICK: std::sync::OnceLock<AttendFn> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return |q, k, v, s, o, st| {
                    // SAFETY: selected only when AVX-512F is detected.
                    unsafe { attend_avx512(q, k, v, s, o, st) }
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return |q, k, v, s, o, st| {
                    // SAFETY: selected only when AVX2 and FMA are detected.
                    unsafe { attend_avx2(q, k, v, s, o, st) }
                };
            }
        }
        attend
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    out: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    if avx512::attend(q, k, v, scale, out, stats).is_some() {
        return;
    }
    // other head sizes: 64 output lanes x 4 heads, 16 zmm accumulators
    attend_with::<64>(q, k, v, scale, out, stats, |a, b| {
        // SAFETY: only reached from attend_avx512, i.e. with AVX-512F detected.
        unsafe { avx512::dot(a, b) }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    out: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    attend(q, k, v, scale, out, stats)
}

/// Portable partial attention (the vector copies above are this function compiled with
/// more target features).
#[inline(always)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    out: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    // 16 output lanes x 4 heads: within 16 ymm (AVX2) or 32 NEON registers
    attend_with::<16>(q, k, v, scale, out, stats, dot)
}

/// Cache rows are fetched this many positions ahead of their use: the caches are streamed
/// once per token from beyond L2, and the loops' demand misses alone leave them latency-bound.
const PREFETCH_ROWS: usize = 16;

/// Hint the cache lines of `x[at..at + len]` into L1 (no-op past the end of `x`, and on
/// targets without a stable prefetch).
#[inline(always)]
fn prefetch_lanes<T>(x: &[T], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < x.len() {
        let end = (at + len).min(x.len());
        let mut i = at;
        while i < end {
            // SAFETY: a prefetch never faults, and the address is inside `x`.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    x.as_ptr().add(i) as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
            // one cache line
            i += (64 / std::mem::size_of::<T>()).max(1);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, at, len);
}

/// `out[h][c0..c0 + L] = sum over p of w[h][p] * v(p)[c0..c0 + L]` for `H` heads at once:
/// each value row is loaded once for all heads, `H * L` lanes stay in registers, and per
/// output element the terms are added in position order.
#[inline(always)]
fn weighted_rows<const L: usize, const H: usize>(
    w: [&[f32]; H],
    v: &[f32],
    hd: usize,
    c0: usize,
    out: [&mut [f32]; H],
) {
    let n = w[0].len();
    let mut acc = [[0f32; L]; H];
    for p in 0..n {
        prefetch_lanes(v, (p + PREFETCH_ROWS) * hd + c0, L);
        let vr: &[f32; L] = v[p * hd + c0..p * hd + c0 + L]
            .try_into()
            .expect("L values");
        for h in 0..H {
            let wp = w[h][p];
            for i in 0..L {
                acc[h][i] += wp * vr[i];
            }
        }
    }
    for (o, a) in out.into_iter().zip(&acc) {
        o[c0..c0 + L].copy_from_slice(a);
    }
}

/// [`weighted_rows`] over all lanes of `H` heads (`out[h]` has `hd` values): `L` lanes at a
/// time, then 16, then one by one.
#[inline(always)]
fn weighted_heads<const L: usize, const H: usize>(
    w: [&[f32]; H],
    v: &[f32],
    hd: usize,
    mut out: [&mut [f32]; H],
) {
    let mut c0 = 0;
    while c0 + L <= hd {
        weighted_rows::<L, H>(w, v, hd, c0, out.each_mut().map(|o| &mut **o));
        c0 += L;
    }
    while c0 + 16 <= hd {
        weighted_rows::<16, H>(w, v, hd, c0, out.each_mut().map(|o| &mut **o));
        c0 += 16;
    }
    for c in c0..hd {
        for (o, wh) in out.iter_mut().zip(&w) {
            o[c] = wh
                .iter()
                .enumerate()
                .map(|(p, &wp)| wp * v[p * hd + c])
                .fold(0.0, |a, b| a + b);
        }
    }
}

#[inline(always)]
fn attend_with<const L: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    out: &mut [f32],
    stats: &mut [(f32, f32)],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let g = stats.len();
    let hd = q.len() / g;
    let n = k.len() / hd;
    // plain loops (no iterator adapters that would be compiled outside this function's
    // target features); scores head-major: w[h * n + p]
    let mut w = vec![0f32; g * n];
    // the first rows of both caches up front; inside the key loop, the keys and the values
    // (used after the scores) of a later row
    for p in 0..PREFETCH_ROWS.min(n) {
        prefetch_lanes(k, p * hd, hd);
        prefetch_lanes(v, p * hd, hd);
    }
    for p in 0..n {
        prefetch_lanes(k, (p + PREFETCH_ROWS) * hd, hd);
        prefetch_lanes(v, (p + PREFETCH_ROWS) * hd, hd);
        // one key row, read once for the whole group (then from L1)
        let kr = &k[p * hd..(p + 1) * hd];
        for h in 0..g {
            w[h * n + p] = dot(&q[h * hd..(h + 1) * hd], kr) * scale;
        }
    }
    for (wh, st) in w.chunks_exact_mut(n).zip(stats.iter_mut()) {
        let mx = wh.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for s in wh.iter_mut() {
            // exp(-50) is 2e-22 of the largest term (which is 1): far below f32 resolution.
            // Dropping such terms keeps the result and keeps subnormal floats (tens of
            // cycles each on x86) out of the loops.
            let d = *s - mx;
            *s = if d > -50.0 { exp_neg(d) } else { 0.0 };
        }
        // 16 partial sums (vectorises; the terms are all positive)
        let mut lanes = [0f32; 16];
        let chunks = wh.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += x;
            }
        }
        *st = (mx, lanes.iter().sum::<f32>() + rest.iter().sum::<f32>());
    }
    // the value rows: four heads at a time, then two, then one
    let mut wr: Vec<&[f32]> = w.chunks_exact(n).collect();
    let mut or: Vec<&mut [f32]> = out.chunks_exact_mut(hd).collect();
    while !wr.is_empty() {
        let take = match wr.len() {
            4.. => 4,
            2..=3 => 2,
            _ => 1,
        };
        let ws: Vec<&[f32]> = wr.drain(..take).collect();
        let mut os: Vec<&mut [f32]> = or.drain(..take).collect();
        match take {
            4 => {
                let [a, b, c, d] = &mut os[..] else {
                    unreachable!()
                };
                weighted_heads::<L, 4>([ws[0], ws[1], ws[2], ws[3]], v, hd, [a, b, c, d]);
            }
            2 => {
                let [a, b] = &mut os[..] else { unreachable!() };
                weighted_heads::<L, 2>([ws[0], ws[1]], v, hd, [a, b]);
            }
            _ => weighted_heads::<L, 1>([ws[0]], v, hd, [&mut os[0]]),
        }
    }
}

/// The partial attention over an f16 cache's rows (as [`AttendFn`], K and V in f16).
pub type AttendF16Fn = fn(&[f32], &[half::f16], &[half::f16], f32, &mut [f32], &mut [(f32, f32)]);

/// The f16-cache kernel of this CPU, where it has one: the AVX-512 loops widen the rows as
/// they load them. Elsewhere `None`: the rows are widened into f32 buffers for
/// [`attention_kernel`].
pub fn attention_kernel_f16() -> Option<AttendF16Fn> {
    static PICK: std::sync::OnceLock<Option<AttendF16Fn>> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(|q, k, v, s, o, st| {
                // SAFETY: selected only when AVX-512F is detected.
                if unsafe { avx512::attend(q, k, v, s, o, st) }.is_none() {
                    // head sizes the AVX-512 loops decline: widened rows, portable kernel
                    crate::kv::with_widened(k, v, |k, v| attention_kernel()(q, k, v, s, o, st));
                }
            });
        }
        None
    })
}

/// The partial attention (see [`AttendFn`]) of query group `q` over values `r` of the caches
/// `k` and `v`, with the kernel for their element type (`f16`: the f16 kernel, or `None` to
/// widen the rows for the f32 one).
#[allow(clippy::too_many_arguments)]
fn attend_rows(
    f16: Option<AttendF16Fn>,
    q: &[f32],
    k: &KvRows,
    v: &KvRows,
    r: std::ops::Range<usize>,
    scale: f32,
    out: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    match (k, v, f16) {
        (KvRows::F16(k), KvRows::F16(v), Some(f)) => f(q, &k[r.clone()], &v[r], scale, out, stats),
        _ => with_spans(k, v, r, |k, v| {
            attention_kernel()(q, k, v, scale, out, stats)
        }),
    }
}

/// Combine the partial attentions of one head over consecutive spans (see [`AttendFn`]) into
/// `softmax(q · Kᵀ · scale) · V` over all of them.
pub fn combine_spans(parts: &[(&[f32], (f32, f32))], out: &mut [f32]) {
    let mx = parts
        .iter()
        .fold(f32::NEG_INFINITY, |a, (_, (m, _))| a.max(*m));
    // weight of each span relative to the largest score (dropped below e^-50 as above)
    let f = |m: f32| {
        let d = m - mx;
        if d > -50.0 {
            exp_neg(d)
        } else {
            0.0
        }
    };
    let sum: f32 = parts.iter().map(|(_, (m, l))| f(*m) * l).sum();
    out.iter_mut().for_each(|o| *o = 0.0);
    for (o_s, (m, _)) in parts {
        let fs = f(*m) / sum;
        if fs == 0.0 {
            continue;
        }
        for (o, x) in out.iter_mut().zip(o_s.iter()) {
            *o += fs * x;
        }
    }
}

/// The inputs of one layer's attention for a batch of `m` tokens at positions
/// `pos0..pos0 + m`: their queries (`m x n_head x head_dim`) and the layer's caches, one per KV
/// head (`n_head / kc.len()` query heads share each), holding every position up to the last
/// token's.
pub struct AttnBatch<'a> {
    pub q: &'a [f32],
    pub kc: &'a [KvRows],
    pub vc: &'a [KvRows],
    pub pos0: usize,
    pub m: usize,
    pub n_head: usize,
    pub head_dim: usize,
}

/// Causal GQA attention: per token and query head, `softmax(q · Kᵀ / sqrt(head_dim)) · V` over
/// positions `0..=` its own. The work is split by (token, KV head), each piece reading its
/// keys and values once for the whole query group, and, where that gives the pool too few
/// pieces (decoding), also by spans of positions whose partial results are merged afterwards
/// ([`combine_spans`]).
pub fn attention(b: &AttnBatch<'_>) -> Vec<f32> {
    // about four pieces per thread, no span under 64 positions
    let threads = rayon::current_num_threads();
    let spans = (4 * threads)
        .div_ceil(b.m * b.kc.len())
        .min((b.pos0 + b.m) / 64)
        .max(1);
    attention_in_spans(b, spans, attention_kernel_f16())
}

/// [`attention`] with each token's positions cut into `spans` pieces.
fn attention_in_spans(b: &AttnBatch<'_>, spans: usize, f16: Option<AttendF16Fn>) -> Vec<f32> {
    let (q, kc, vc, pos0, m) = (b.q, b.kc, b.vc, b.pos0, b.m);
    let (nh, hd) = (b.n_head, b.head_dim);
    let nkv = kc.len();
    let (g, d) = (nh / nkv, nh * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut att = vec![0f32; m * d];
    // the query group of token t and KV head kvh, and that token's positions
    let group = |t: usize, kvh: usize| &q[t * d + kvh * g * hd..t * d + (kvh + 1) * g * hd];
    if spans == 1 {
        // without an f16 kernel, an f16 cache is widened once per KV head for all tokens
        // of the batch (not once per token)
        let native = f16.is_some() || kc.iter().chain(vc).all(|r| r.kv_type() == KvType::F32);
        let all = (pos0 + m) * hd;
        let widened =
            (!native).then(|| (crate::kv::prefixes(kc, all), crate::kv::prefixes(vc, all)));
        att.par_chunks_mut(g * hd)
            .enumerate()
            .for_each(|(idx, out)| {
                let (t, kvh) = (idx / nkv, idx % nkv);
                let n = pos0 + t + 1;
                let mut stats = vec![(0f32, 0f32); g];
                match &widened {
                    Some((kw, vw)) => attention_kernel()(
                        group(t, kvh),
                        &kw[kvh][..n * hd],
                        &vw[kvh][..n * hd],
                        scale,
                        out,
                        &mut stats,
                    ),
                    None => attend_rows(
                        f16,
                        group(t, kvh),
                        &kc[kvh],
                        &vc[kvh],
                        0..n * hd,
                        scale,
                        out,
                        &mut stats,
                    ),
                }
                for (o, (_, l)) in out.chunks_exact_mut(hd).zip(&stats) {
                    let inv = 1.0 / l;
                    o.iter_mut().for_each(|x| *x *= inv);
                }
            });
        return att;
    }
    let pieces = m * nkv * spans;
    let mut part = vec![0f32; pieces * g * hd];
    let mut stats = vec![(f32::NEG_INFINITY, 0f32); pieces * g];
    let span = |t: usize, s: usize| {
        let n = pos0 + t + 1;
        let len = n.div_ceil(spans);
        ((s * len).min(n), ((s + 1) * len).min(n))
    };
    part.par_chunks_mut(g * hd)
        .zip(stats.par_chunks_mut(g))
        .enumerate()
        .for_each(|(idx, (out, st))| {
            let (tk, s) = (idx / spans, idx % spans);
            let (t, kvh) = (tk / nkv, tk % nkv);
            let (p0, p1) = span(t, s);
            if p0 < p1 {
                attend_rows(
                    f16,
                    group(t, kvh),
                    &kc[kvh],
                    &vc[kvh],
                    p0 * hd..p1 * hd,
                    scale,
                    out,
                    st,
                );
            }
            // an empty span keeps (-inf, 0) and zeros: weight 0 in the merge
        });
    for (tk, out) in att.chunks_exact_mut(g * hd).enumerate() {
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            let parts: Vec<(&[f32], (f32, f32))> = (0..spans)
                .map(|s| {
                    let idx = tk * spans + s;
                    (
                        &part[(idx * g + h) * hd..(idx * g + h + 1) * hd],
                        stats[idx * g + h],
                    )
                })
                .collect();
            combine_spans(&parts, o);
        }
    }
    att
}

/// `e^x` for `x` in `(-50, 0]` without a library call, so that the softmax loop vectorises:
/// `x = n ln2 + r` with `|r| <= ln2 / 2` (Cody-Waite, two-part ln2), `e^r` by its Taylor
/// polynomial of degree 7 (truncation below 6e-9 relative), `2^n` built in the exponent bits
/// (`n >= -73`: a normal float). Relative error a few f32 ulps.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 355.0 / 512.0; // 9 bits: n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    // round to nearest by the 1.5 * 2^23 shift (|x * log2 e| < 2^22)
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * LOG2E + SHIFT) - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// NEOX RoPE: element `i` of the first half pairs with `i + head_dim/2`.
pub fn rope_neox(x: &mut [f32], heads: usize, head_dim: usize, pos: usize, theta: f32) {
    rope_neox_with(x, heads, head_dim, &rope_table(head_dim, pos, theta));
}

/// `(cos, sin)` of every rotation angle of position `pos` (`head_dim / 2` pairs): computed
/// once per position and shared by every head of every layer.
pub fn rope_table(head_dim: usize, pos: usize, theta: f32) -> Vec<(f32, f32)> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = theta.powf(-2.0 * i as f32 / head_dim as f32);
            let (s, c) = (pos as f32 * freq).sin_cos();
            (c, s)
        })
        .collect()
}

/// [`rope_neox`] with the angles of [`rope_table`].
pub fn rope_neox_with(x: &mut [f32], heads: usize, head_dim: usize, table: &[(f32, f32)]) {
    let half = head_dim / 2;
    for h in 0..heads {
        let v = &mut x[h * head_dim..(h + 1) * head_dim];
        let (lo, hi) = v.split_at_mut(half);
        for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(table) {
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

/// Kernel ids used, with call counts (for receipts).
pub type KernelCounts = BTreeMap<&'static str, u64>;

/// A generation state: the model, its KV cache and the position.
pub struct Session<'m, 'a> {
    pub model: &'m Model<'a>,
    /// KV cache, head-major: entry `layer * n_head_kv + kv_head` holds that head's
    /// `head_dim` values of every position in order (one contiguous stream per head for the
    /// attention loops).
    k_cache: Vec<KvRows>,
    v_cache: Vec<KvRows>,
    pos: usize,
    /// Kernel ids used by this session's matmuls, with call counts.
    pub kernel_calls: KernelCounts,
    /// An int8 LM head to use instead of the F16 one (see [`crate::lm_head::Q8Head`]).
    pub q8_head: Option<std::sync::Arc<crate::lm_head::Q8Head>>,
}

impl<'m, 'a> Session<'m, 'a> {
    /// A session with the default (f16) KV cache.
    pub fn new(model: &'m Model<'a>) -> Self {
        Self::with_kv(model, KvType::default())
    }

    /// A session whose KV cache holds `kv` values.
    pub fn with_kv(model: &'m Model<'a>, kv: KvType) -> Self {
        let cfg = &model.cfg;
        Session {
            model,
            k_cache: vec![KvRows::new(kv); cfg.n_layer * cfg.n_head_kv],
            v_cache: vec![KvRows::new(kv); cfg.n_layer * cfg.n_head_kv],
            pos: 0,
            kernel_calls: KernelCounts::new(),
            q8_head: None,
        }
    }

    /// Element type of the KV cache.
    pub fn kv_type(&self) -> KvType {
        self.k_cache
            .first()
            .map_or(KvType::default(), KvRows::kv_type)
    }

    /// Tokens processed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forget the context.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.k_cache.iter_mut().for_each(KvRows::clear);
        self.v_cache.iter_mut().for_each(KvRows::clear);
    }

    /// `y = x · Wᵀ` for the rows of `x` (`m × k`) with one activation quantization shared
    /// by all `ws` (same input, e.g. Q/K/V); returns one output per weight.
    fn project(
        &mut self,
        x: &[f32],
        m: usize,
        ws: &[Linear<'a>],
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let k = ws[0].w.k();
        let acts = quantize_acts(x, m, k)?;
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|l| vec![0f32; m * l.w.n()]).collect();
        let entries = ws
            .iter()
            .map(|l| select_matmul(l.w.format(), m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prepared: Option<(&'static str, ternforge::PreparedActs)> = None;
        // consecutive weights with the same kernel run as one parallel region
        let mut i = 0;
        while i < ws.len() {
            let e = entries[i];
            let j = i + entries[i..].iter().take_while(|x| x.id == e.id).count();
            if prepared.as_ref().map(|(id, _)| *id) != Some(e.module) {
                prepared = Some((e.module, prepare_for(e, &acts)?));
            }
            let p = &prepared.as_ref().expect("just prepared").1;
            let mut jobs: Vec<(ternforge::PackedWeights<'a>, &mut [f32])> = ws[i..j]
                .iter()
                .zip(outs[i..j].iter_mut())
                .map(|(l, y)| (l.w, y.as_mut_slice()))
                .collect();
            matmul_prepared_many(e, &mut jobs, p)?;
            *self.kernel_calls.entry(e.id).or_default() += (j - i) as u64;
            i = j;
        }
        for (l, y) in ws.iter().zip(outs.iter_mut()) {
            if let Some(sc) = l.scale {
                y.iter_mut().for_each(|v| *v *= sc);
            }
        }
        Ok(outs)
    }

    /// Run `tokens` through the model; returns the logits of the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ForwardError> {
        let h = self.forward_hidden(tokens)?;
        Ok(match &self.q8_head {
            Some(q) => q.logits(&h),
            None => crate::lm_head::logits(self.model, &h),
        })
    }

    /// Run `tokens` and return the final normed hidden state of the last token.
    pub fn forward_hidden(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ForwardError> {
        // The whole pass runs on a worker of the pool: its ~150 parallel regions per token
        // then start on this thread's deque with the other workers still spinning, instead
        // of each waking a sleeping pool from outside and waiting for it (several us each).
        rayon::scope(|_| self.hidden_pass(tokens))
    }

    fn hidden_pass(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ForwardError> {
        let model = self.model;
        let cfg = &model.cfg;
        let m = tokens.len();
        if m == 0 {
            return Err(ForwardError::Empty);
        }
        if self.pos + m > cfg.ctx {
            return Err(ForwardError::ContextFull {
                ctx: cfg.ctx,
                needed: self.pos + m,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(ForwardError::BadToken {
                id,
                vocab: cfg.vocab,
            });
        }
        let (d, hd, nh, nkv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let kvd = cfg.kv_dim();
        let mut x = vec![0f32; m * d];
        for (t, &id) in tokens.iter().enumerate() {
            model
                .embedding
                .row(id as usize, d, &mut x[t * d..(t + 1) * d]);
        }
        // RoPE angles of the batch's positions, shared by all layers and heads
        let ropes: Vec<Vec<(f32, f32)>> = (0..m)
            .map(|t| rope_table(hd, self.pos + t, cfg.rope_theta))
            .collect();
        for (li, layer) in model.layers.iter().enumerate() {
            // attention
            let mut h = x.clone();
            rms_norm(&mut h, &layer.attn_norm, cfg.eps);
            let mut qkv = self.project(&h, m, &[layer.q, layer.k, layer.v])?;
            let v = qkv.pop().expect("v");
            let mut k = qkv.pop().expect("k");
            let mut q = qkv.pop().expect("q");
            for (t, table) in ropes.iter().enumerate() {
                rope_neox_with(&mut q[t * d..(t + 1) * d], nh, hd, table);
                rope_neox_with(&mut k[t * kvd..(t + 1) * kvd], nkv, hd, table);
            }
            let heads = li * nkv..(li + 1) * nkv;
            for t in 0..m {
                for (kvh, (kc, vc)) in self.k_cache[heads.clone()]
                    .iter_mut()
                    .zip(&mut self.v_cache[heads.clone()])
                    .enumerate()
                {
                    let at = t * kvd + kvh * hd;
                    kc.extend(&k[at..at + hd]);
                    vc.extend(&v[at..at + hd]);
                }
            }
            let (kc, vc) = (&self.k_cache[heads.clone()], &self.v_cache[heads]);
            let mut att = attention(&AttnBatch {
                q: &q,
                kc,
                vc,
                pos0: self.pos,
                m,
                n_head: nh,
                head_dim: hd,
            });
            rms_norm(&mut att, &layer.attn_sub_norm, cfg.eps);
            let o = self.project(&att, m, &[layer.o])?.pop().expect("o");
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            // feed-forward
            let mut h = x.clone();
            rms_norm(&mut h, &layer.ffn_norm, cfg.eps);
            let mut gu = self.project(&h, m, &[layer.gate, layer.up])?;
            let up = gu.pop().expect("up");
            let mut act = gu.pop().expect("gate");
            match cfg.ffn_act {
                FfnAct::Relu2 => act.iter_mut().zip(&up).for_each(|(g, u)| {
                    let r = g.max(0.0);
                    *g = r * r * u;
                }),
                FfnAct::Silu => act
                    .iter_mut()
                    .zip(&up)
                    .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u),
            }
            rms_norm(&mut act, &layer.ffn_sub_norm, cfg.eps);
            let down = self.project(&act, m, &[layer.down])?.pop().expect("down");
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
        }
        self.pos += m;
        let mut last = x[(m - 1) * d..].to_vec();
        rms_norm(&mut last, &model.output_norm, cfg.eps);
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax exponential against f64 `exp` over its whole domain (-50, 0].
    #[test]
    fn exp_neg_is_accurate_on_the_softmax_domain() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -50.0 * i as f32 / 2_000_000.0;
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "max relative error {worst:e}"
        );
        assert_eq!(exp_neg(0.0), 1.0);
    }

    /// Uniform values in `[-amp, amp)` from a xorshift state (the attention tests' inputs).
    pub(super) fn uniform(mut seed: u64) -> impl FnMut(f32) -> f32 {
        move |amp| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        }
    }

    /// The partial attention of one query group in f64, from its definition (see
    /// [`AttendFn`]): per head, the largest score, the sum of `e^(s - max)` and the
    /// numerators `sum_p e^(s_p - max) v_p`.
    pub(super) fn partial_f64(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: usize,
        scale: f64,
    ) -> Vec<(f64, f64, Vec<f64>)> {
        let hd = q.len() / g;
        let n = k.len() / hd;
        (0..g)
            .map(|h| {
                let s: Vec<f64> = (0..n)
                    .map(|p| {
                        (0..hd)
                            .map(|c| q[h * hd + c] as f64 * k[p * hd + c] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let out = (0..hd)
                    .map(|c| (0..n).map(|p| e[p] * v[p * hd + c] as f64).sum())
                    .collect();
                (mx, e.iter().sum(), out)
            })
            .collect()
    }

    /// Causal GQA attention in f64, straight from the definition (over the values the
    /// caches hold): per token and KV head, the partial attention of its query group over
    /// positions `0..=` its own, normalised.
    fn attention_f64(b: &AttnBatch<'_>) -> Vec<f64> {
        let (q, pos0, m) = (b.q, b.pos0, b.m);
        let (nh, hd) = (b.n_head, b.head_dim);
        let all = (pos0 + m) * hd;
        let (kc, vc) = (
            crate::kv::prefixes(b.kc, all),
            crate::kv::prefixes(b.vc, all),
        );
        let g = nh / kc.len();
        let mut out = vec![0f64; m * nh * hd];
        for t in 0..m {
            let n = pos0 + t + 1;
            for kvh in 0..kc.len() {
                let h0 = t * nh + kvh * g;
                let group = &q[h0 * hd..(h0 + g) * hd];
                let (k, v) = (&kc[kvh][..n * hd], &vc[kvh][..n * hd]);
                let parts = partial_f64(group, k, v, g, 1.0 / (hd as f64).sqrt());
                for (j, (_, sum, num)) in parts.iter().enumerate() {
                    for (o, x) in out[(h0 + j) * hd..(h0 + j + 1) * hd].iter_mut().zip(num) {
                        *o = x / sum;
                    }
                }
            }
        }
        out
    }

    /// The grouped, span-split attention (every head-block width, spans merged, a head size
    /// with a remainder) against the f64 definition; batch and single-token shapes; f32
    /// and f16 caches.
    #[test]
    fn attention_matches_the_definition() {
        let mut rnd = uniform(7);
        // (query heads, KV heads, head dim, cached positions before the batch, batch)
        for (nh, nkv, hd, pos0, m) in [
            (20, 5, 128, 0, 1),
            (20, 5, 128, 700, 1),
            (14, 2, 72, 300, 1),
            (3, 3, 16, 130, 1),
            (6, 2, 40, 1000, 2),
            (8, 1, 64, 5, 9),
            (4, 4, 8, 0, 40),
        ] {
            let n = pos0 + m;
            let kf: Vec<Vec<f32>> = (0..nkv)
                .map(|_| (0..n * hd).map(|_| rnd(3.0)).collect())
                .collect();
            let vf: Vec<Vec<f32>> = (0..nkv)
                .map(|_| (0..n * hd).map(|_| rnd(1.0)).collect())
                .collect();
            let q: Vec<f32> = (0..m * nh * hd).map(|_| rnd(3.0)).collect();
            for kv in [KvType::F32, KvType::F16] {
                let rows = |c: &[Vec<f32>]| -> Vec<KvRows> {
                    c.iter()
                        .map(|x| {
                            let mut r = KvRows::new(kv);
                            r.extend(x);
                            r
                        })
                        .collect()
                };
                let (kc, vc) = (rows(&kf), rows(&vf));
                let b = AttnBatch {
                    q: &q,
                    kc: &kc,
                    vc: &vc,
                    pos0,
                    m,
                    n_head: nh,
                    head_dim: hd,
                };
                let want = attention_f64(&b);
                // spans beyond a token's positions leave empty pieces
                for spans in [1, 2, 3, 7] {
                    // the f16 kernel where this CPU has one, and the widened rows
                    for f16 in [attention_kernel_f16(), None] {
                        let got = attention_in_spans(&b, spans, f16);
                        let err = got
                            .iter()
                            .zip(&want)
                            .map(|(a, b)| (*a as f64 - b).abs())
                            .fold(0f64, f64::max);
                        assert!(
                    err < 1e-5,
                    "{kv} nh {nh} nkv {nkv} hd {hd} pos0 {pos0} m {m} spans {spans} f16 kernel {}: max error {err}",
                    f16.is_some()
                );
                    }
                }
                assert_eq!(attention(&b).len(), want.len());
            }
        }
    }

    /// The shared RoPE table rotates exactly like the per-head formula.
    #[test]
    fn rope_table_matches_the_direct_rotation() {
        let (heads, hd, theta) = (3, 8, 10000.0f32);
        for pos in [0usize, 1, 17, 4095] {
            let x: Vec<f32> = (0..heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut got = x.clone();
            rope_neox(&mut got, heads, hd, pos, theta);
            for h in 0..heads {
                for i in 0..hd / 2 {
                    let freq = theta.powf(-2.0 * i as f32 / hd as f32);
                    let (s, c) = (pos as f32 * freq).sin_cos();
                    let (a, b) = (x[h * hd + i], x[h * hd + i + hd / 2]);
                    assert_eq!(got[h * hd + i], a * c - b * s);
                    assert_eq!(got[h * hd + i + hd / 2], a * s + b * c);
                }
            }
        }
    }
}
