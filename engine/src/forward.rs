//! The bitnet-b1.58 forward pass with a KV cache.
//!
//! Per layer: RMSNorm·attn_norm → Q, K, V (ternary, int8 per-token activations) → NEOX RoPE →
//! causal GQA attention over the cache → RMSNorm·attn_sub_norm → O → +residual;
//! RMSNorm·ffn_norm → gate, up → relu(gate)² · up → RMSNorm·ffn_sub_norm → down → +residual.
//! Final RMSNorm·output_norm and the (tied) LM head. A prompt of `m` tokens runs as one batch
//! (GEMM kernels); decoding runs `m = 1` (GEMV kernels).

use crate::model::{FfnAct, Linear, Model};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fmt;
use ternforge::{matmul_prepared_many, prepare_for, quantize_acts, select_matmul, KernelError};

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
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
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

/// One KV head's cache rows: position `p` of it is `k[p * stride + off..][..head_dim]`.
pub struct KvView<'c> {
    pub k: &'c [f32],
    pub v: &'c [f32],
    pub stride: usize,
    pub off: usize,
}

/// `out = softmax(q · Kᵀ · scale) · V` for one query head over the positions of `kv`.
type AttendFn = fn(&[f32], &KvView<'_>, f32, &mut [f32]);

/// The attention of one head, compiled for the best vector ISA of this CPU (detected once).
pub fn attention_kernel() -> AttendFn {
    static PICK: std::sync::OnceLock<AttendFn> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return |q, kv, s, o| {
                    // SAFETY: selected only when AVX-512F is detected.
                    unsafe { attend_avx512(q, kv, s, o) }
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return |q, kv, s, o| {
                    // SAFETY: selected only when AVX2 and FMA are detected.
                    unsafe { attend_avx2(q, kv, s, o) }
                };
            }
        }
        attend
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_avx512(q: &[f32], kv: &KvView<'_>, scale: f32, out: &mut [f32]) {
    attend_with(q, kv, scale, out, |a, b| {
        // SAFETY: only reached from attend_avx512, i.e. with AVX-512F detected.
        unsafe { dot_avx512(a, b) }
    })
}

/// `a · b` in four 16-lane FMA accumulators (AVX-512F).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, x) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * j + 16 <= n: inside both slices.
            *x = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16 * j)),
                _mm512_loadu_ps(pb.add(i + 16 * j)),
                *x,
            );
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i)),
            _mm512_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 16;
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut s = _mm512_reduce_add_ps(v);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(q: &[f32], kv: &KvView<'_>, scale: f32, out: &mut [f32]) {
    attend(q, kv, scale, out)
}

/// Portable attention of one head (the vector copies above are this function compiled with
/// more target features).
#[inline(always)]
pub fn attend(q: &[f32], kv: &KvView<'_>, scale: f32, out: &mut [f32]) {
    attend_with(q, kv, scale, out, dot)
}

/// `out = sum over p of w[p] * v(p)` for `L` lanes kept in registers, terms added in
/// position order; zero weights (dropped softmax terms) are skipped.
#[inline(always)]
fn weighted_rows<'v, const L: usize>(w: &[f32], v: impl Fn(usize) -> &'v [f32], out: &mut [f32]) {
    let mut acc = [0f32; L];
    for (p, &wp) in w.iter().enumerate() {
        if wp == 0.0 {
            continue;
        }
        let v = v(p);
        for i in 0..L {
            acc[i] += wp * v[i];
        }
    }
    out.copy_from_slice(&acc);
}

#[inline(always)]
fn attend_with(
    q: &[f32],
    kv: &KvView<'_>,
    scale: f32,
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let hd = q.len();
    let n_pos = kv.k.len() / kv.stride;
    let (stride, off) = (kv.stride, kv.off);
    #[inline(always)]
    fn at(c: &[f32], p: usize, stride: usize, off: usize, hd: usize) -> &[f32] {
        &c[p * stride + off..p * stride + off + hd]
    }
    let row = |c, p| at(c, p, stride, off, hd);
    // plain loops (no iterator adapters that would be compiled outside this function's
    // target features)
    let mut w = vec![0f32; n_pos];
    for (p, s) in w.iter_mut().enumerate() {
        *s = dot(q, row(kv.k, p)) * scale;
    }
    let mx = w.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for s in w.iter_mut() {
        // exp(-50) is 2e-22 of the largest term (which is 1): far below f32 resolution.
        // Dropping such terms keeps the result and keeps subnormal floats (tens of cycles
        // each on x86) out of the loops.
        let d = *s - mx;
        *s = if d > -50.0 { exp_neg(d) } else { 0.0 };
    }
    // 16 partial sums (vectorises; the terms are all positive)
    let mut lanes = [0f32; 16];
    let chunks = w.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum = lanes.iter().sum::<f32>() + rest.iter().sum::<f32>();
    let inv = 1.0 / sum;
    w.iter_mut().for_each(|s| *s *= inv);
    // 128 (then 16) output lanes at a time kept in registers over all positions: eight
    // independent accumulator vectors per position instead of one dependency chain (per
    // output element the terms are added in position order, as in a plain loop)
    let mut c0 = 0;
    while c0 + 128 <= hd {
        weighted_rows::<128>(&w, |p| &row(kv.v, p)[c0..c0 + 128], &mut out[c0..c0 + 128]);
        c0 += 128;
    }
    while c0 + 16 <= hd {
        weighted_rows::<16>(&w, |p| &row(kv.v, p)[c0..c0 + 16], &mut out[c0..c0 + 16]);
        c0 += 16;
    }
    for (c, o) in out.iter_mut().enumerate().skip(c0) {
        *o = w
            .iter()
            .enumerate()
            .filter(|(_, &wp)| wp != 0.0)
            .map(|(p, &wp)| wp * row(kv.v, p)[c])
            .fold(0.0, |a, b| a + b);
    }
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
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    pos: usize,
    /// Kernel ids used by this session's matmuls, with call counts.
    pub kernel_calls: KernelCounts,
    /// An int8 LM head to use instead of the F16 one (see [`crate::lm_head::Q8Head`]).
    pub q8_head: Option<std::sync::Arc<crate::lm_head::Q8Head>>,
}

impl<'m, 'a> Session<'m, 'a> {
    pub fn new(model: &'m Model<'a>) -> Self {
        let cfg = &model.cfg;
        Session {
            model,
            k_cache: vec![Vec::new(); cfg.n_layer * cfg.n_head_kv],
            v_cache: vec![Vec::new(); cfg.n_layer * cfg.n_head_kv],
            pos: 0,
            kernel_calls: KernelCounts::new(),
            q8_head: None,
        }
    }

    /// Tokens processed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forget the context.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.k_cache.iter_mut().for_each(Vec::clear);
        self.v_cache.iter_mut().for_each(Vec::clear);
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
                    kc.extend_from_slice(&k[at..at + hd]);
                    vc.extend_from_slice(&v[at..at + hd]);
                }
            }
            let (kc, vc) = (&self.k_cache[heads.clone()], &self.v_cache[heads]);
            let pos0 = self.pos;
            let group = nh / nkv;
            let scale = 1.0 / (hd as f32).sqrt();
            // per (token, head): softmax(q·K / sqrt(hd)) · V over positions 0..=pos
            let mut att = vec![0f32; m * d];
            let attend = attention_kernel();
            att.par_chunks_mut(hd).enumerate().for_each(|(idx, out)| {
                let (t, head) = (idx / nh, idx % nh);
                let kvh = head / group;
                let qv = &q[t * d + head * hd..t * d + (head + 1) * hd];
                let n_pos = pos0 + t + 1;
                let kv = KvView {
                    k: &kc[kvh][..n_pos * hd],
                    v: &vc[kvh][..n_pos * hd],
                    stride: hd,
                    off: 0,
                };
                attend(qv, &kv, scale, out);
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
