//! Format-independent half of the panel GEMM kernels (`Tile::panel` rows of the table).
//!
//! A generated `pn*` kernel of a block format decodes a group of `16 * H` weight rows once
//! into their 2-bit codes (one byte each, in the prepared activation slot order of that
//! kernel family), and [`transpose`] turns them into a panel whose vectors hold four
//! consecutive slots of 16 rows (`[slot / 4][row][4]`); the LUT formats' index chunks are
//! already row-interleaved and their template writes the panel directly. [`run`] then runs
//! every activation row against the panel with `vpdpbusd` (AVX2: `vpmaddubsw`, ymm panels of
//! 8 rows per vector, [`transpose_avx2`], [`run_avx2`]): the
//! weight vector is the unsigned operand, four activation bytes broadcast to all lanes the
//! signed one, so each i32 lane accumulates one (weight row, activation row) pair and no
//! horizontal sum is needed. Decoding is paid once per weight for all activation rows.
//!
//! Results are the reference's, bit for bit: every lane computes the same integer sums and
//! then the reference's float operations in its order (`s as f32 / scale * ws` for tensor
//! scales; `f += d_b * s_b as f32` in block order, then `f / scale`, for block scales).

use crate::PreparedActs;
use core::arch::x86_64::*;

thread_local! {
    /// Per-thread code scratch, panel and block scales, reused by every panel call (a fresh
    /// allocation of a few hundred KiB per call was page faults: 2-5 % of a GEMM).
    static BUFFERS: core::cell::RefCell<(crate::AlignedBytes, Vec<f32>)> =
        core::cell::RefCell::new((crate::AlignedBytes::zeroed(0), Vec::new()));
}

/// Runs `f` with this thread's buffers: `bytes` initialised bytes (64-byte aligned) and
/// `floats` f32s, contents unspecified (left from earlier calls).
pub fn with_buffers<T>(
    bytes: usize,
    floats: usize,
    f: impl FnOnce(&mut [u8], &mut [f32]) -> T,
) -> T {
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            let (bb, fb) = &mut *b;
            if bb.len() < bytes {
                *bb = crate::AlignedBytes::zeroed(bytes);
            }
            if fb.len() < floats {
                fb.resize(floats, 0.0);
            }
            f(&mut bb[..bytes], &mut fb[..floats])
        }
        // not reentrant in practice (kernels do not nest); stay correct if it ever is
        Err(_) => f(
            &mut crate::AlignedBytes::zeroed(bytes),
            &mut vec![0.0; floats],
        ),
    })
}

/// Rounds a prepared row length up to the panel's code row pitch (whole 16x16 blocks).
pub const fn pitch(stride: usize) -> usize {
    stride.div_ceil(64) * 64
}

/// Transposes `16 * H` code rows of `pitch` bytes (`scratch`, row `i` at `i * pitch`) into the
/// panel layout: for every group of four slots `t` (`t < pitch / 4`), 16 * H dwords, dword `r`
/// holding row `r`'s codes of slots `4t..4t + 4`.
///
/// # Safety
/// The CPU supports AVX-512 F; `pitch` is a multiple of 64; `scratch` is readable for
/// `16 * H * pitch` bytes and `panel` writable for as many.
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose<const H: usize>(scratch: *const u8, pitch: usize, panel: *mut u8) {
    // Four butterfly levels swap bit `s` of the row and the lane index of dwords where they
    // differ; after all four, row r lane j holds what row j lane r held.
    let idx = |s: u32, hi: bool| -> __m512i {
        let mut v = [0i32; 16];
        for (j, x) in v.iter_mut().enumerate() {
            let j = j as i32;
            let bit = j & s as i32 != 0;
            *x = match (hi, bit) {
                (false, false) => j,
                (false, true) => 16 + j - s as i32,
                (true, false) => j + s as i32,
                (true, true) => 16 + j,
            };
        }
        // SAFETY: [i32; 16] and __m512i have the same size; any bit pattern is valid.
        unsafe { core::mem::transmute::<[i32; 16], __m512i>(v) }
    };
    let levels = [
        (idx(8, false), idx(8, true)),
        (idx(4, false), idx(4, true)),
        (idx(2, false), idx(2, true)),
        (idx(1, false), idx(1, true)),
    ];
    let rows = 16 * H;
    for h in 0..H {
        for q in 0..pitch / 64 {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                // SAFETY: row 16h + i < 16H, bytes q*64..q*64+64 < pitch (caller's bounds).
                *v = unsafe {
                    _mm512_loadu_si512(scratch.add((16 * h + i) * pitch + q * 64) as *const _)
                };
            }
            level::<8>(&mut r, levels[0]);
            level::<4>(&mut r, levels[1]);
            level::<2>(&mut r, levels[2]);
            level::<1>(&mut r, levels[3]);
            for (t, v) in r.iter().enumerate() {
                // SAFETY: slot group q*16 + t < pitch / 4; dwords 16h..16h+16 of its 16H.
                unsafe {
                    _mm512_storeu_si512(panel.add(((q * 16 + t) * rows + 16 * h) * 4) as *mut _, *v)
                };
            }
        }
    }
}

/// One butterfly level of [`transpose`]: rows `i` and `i + S` (bit `S` of `i` clear)
/// exchange the dwords whose lane has bit `S` set in row `i` / clear in row `i + S`.
/// A const `S` so that the 16 rows stay in registers (fully unrolled).
#[inline(always)]
fn level<const S: usize>(r: &mut [__m512i; 16], (lo, hi): (__m512i, __m512i)) {
    for i in 0..16 {
        if i & S == 0 {
            let (a, b) = (r[i], r[i + S]);
            // SAFETY: only called from `transpose`, whose target features include AVX-512 F.
            unsafe {
                r[i] = _mm512_permutex2var_epi32(a, lo, b);
                r[i + S] = _mm512_permutex2var_epi32(a, hi, b);
            }
        }
    }
}

/// 8x8 dword transpose for AVX2 panels: as [`transpose`] with `8 * H` rows of 8-dword
/// blocks (`unpack` / `permute2x128` network).
///
/// # Safety
/// The CPU supports AVX2; `pitch` is a multiple of 32; `scratch` is readable for
/// `8 * H * pitch` bytes and `panel` writable for as many.
#[target_feature(enable = "avx2")]
pub unsafe fn transpose_avx2<const H: usize>(scratch: *const u8, pitch: usize, panel: *mut u8) {
    let rows = 8 * H;
    for h in 0..H {
        for q in 0..pitch / 32 {
            let mut r = [_mm256_setzero_si256(); 8];
            for (i, v) in r.iter_mut().enumerate() {
                // SAFETY: row 8h + i < 8H, bytes q*32..q*32+32 < pitch (caller's bounds).
                *v = unsafe {
                    _mm256_loadu_si256(scratch.add((8 * h + i) * pitch + q * 32) as *const _)
                };
            }
            // rows (0,1), (2,3), ...: 32-bit interleave; then 64-bit; then 128-bit halves
            let t: [__m256i; 8] = core::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_epi32(a, b)
                } else {
                    _mm256_unpackhi_epi32(a, b)
                }
            });
            // t[0] = r0r1 lo, t[1] = r0r1 hi, t[2] = r2r3 lo, ...
            let u: [__m256i; 8] = core::array::from_fn(|i| {
                let base = (i / 4) * 4 + (i % 2);
                let (a, b) = (t[base], t[base + 2]);
                if (i / 2) % 2 == 0 {
                    _mm256_unpacklo_epi64(a, b)
                } else {
                    _mm256_unpackhi_epi64(a, b)
                }
            });
            // u[0..4]: rows 0-3 of columns (0 | 4), (2 | 6), (1 | 5), (3 | 7) in the (low | high)
            // 128-bit halves; u[4..8] the same for rows 4-7
            let lane = |j: usize| -> __m256i {
                // column j (0..8): 128-bit half j / 4 of u[c] for rows 0-3 and of u[4 + c]
                // for rows 4-7, where c = position of column j % 4 in the order (0, 2, 1, 3)
                let c = [0usize, 2, 1, 3][j % 4];
                if j < 4 {
                    _mm256_permute2x128_si256::<0x20>(u[c], u[4 + c])
                } else {
                    _mm256_permute2x128_si256::<0x31>(u[c], u[4 + c])
                }
            };
            for j in 0..8 {
                let v = lane(j);
                // SAFETY: slot group q*8 + j < pitch / 4; dwords 8h..8h+8 of its 8H.
                unsafe {
                    _mm256_storeu_si256(panel.add(((q * 8 + j) * rows + 8 * h) * 4) as *mut _, v)
                };
            }
        }
    }
}

/// The vector vocabulary of the panel loops: AVX-512 VNNI ([`Zmm`]) and AVX2 ([`Ymm`]).
/// Every method is a thin wrapper of one or a few intrinsics, inlined into the
/// `#[target_feature]` entry points ([`run`], [`run_avx2`]) that are the only callers.
trait Simd {
    type I: Copy;
    type F: Copy;
    /// i32 lanes per vector: weight rows per panel vector.
    const L: usize;
    unsafe fn zero() -> Self::I;
    unsafe fn zerof() -> Self::F;
    unsafe fn load(p: *const u8) -> Self::I;
    unsafe fn loadf(p: *const f32) -> Self::F;
    unsafe fn splat(x: i32) -> Self::I;
    unsafe fn splatf(x: f32) -> Self::F;
    /// `acc + ` the four-byte dot products of `w` (u8 codes) and `x` (i8) per i32 lane.
    unsafe fn dot(acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// Steps a narrow accumulator takes before it must be widened (0: `dot` only).
    const NARROW_STEPS: usize;
    /// `n + ` the dot products in the narrow accumulator layout (AVX2: i16 pair sums).
    unsafe fn dot_narrow(n: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// `acc + ` the narrow accumulator `n` widened to i32 lanes.
    unsafe fn widen(acc: Self::I, n: Self::I) -> Self::I;
    unsafe fn sub(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn cvt(a: Self::I) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn div(a: Self::F, b: Self::F) -> Self::F;
    /// Store lanes `0..valid` (`valid <= L`) of `v` at `p`; no other byte is written.
    unsafe fn store(p: *mut f32, valid: usize, v: Self::F);
}

struct Zmm;
struct Ymm;

impl Simd for Zmm {
    type I = __m512i;
    type F = __m512;
    const L: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zerof() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn splatf(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, w, x)
    }
    const NARROW_STEPS: usize = 0;
    #[inline(always)]
    unsafe fn dot_narrow(n: __m512i, w: __m512i, x: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(n, w, x)
    }
    #[inline(always)]
    unsafe fn widen(acc: __m512i, n: __m512i) -> __m512i {
        _mm512_add_epi32(acc, n)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, valid: usize, v: __m512) {
        // SAFETY: masked-off lanes are neither written nor able to fault.
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << valid) - 1) as u16, v) }
    }
}

impl Simd for Ymm {
    type I = __m256i;
    type F = __m256;
    const L: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zerof() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const _)
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> __m256i {
        _mm256_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn splatf(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        Self::widen(acc, _mm256_maddubs_epi16(w, x))
    }
    /// Codes <= 2 and |activation| <= 128: a `vpmaddubsw` pair sum is at most 512 in
    /// magnitude (never saturates), so 63 of them add up exactly in i16 (63 * 512 = 32256).
    const NARROW_STEPS: usize = 63;
    #[inline(always)]
    unsafe fn dot_narrow(n: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi16(n, _mm256_maddubs_epi16(w, x))
    }
    #[inline(always)]
    unsafe fn widen(acc: __m256i, n: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(n, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, valid: usize, v: __m256) {
        if valid == 8 {
            // SAFETY: all 8 lanes are in bounds (caller).
            unsafe { _mm256_storeu_ps(p, v) }
        } else {
            let m = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(valid as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            // SAFETY: vmaskmovps writes only the lanes whose mask is set and does not fault
            // on the others.
            unsafe { _mm256_maskstore_ps(p, m, v) }
        }
    }
}

/// Where the outputs of one row group go: `out[col * n + row + i]` for `i < rows`.
#[derive(Clone, Copy)]
pub struct Dest {
    pub out: *mut f32,
    pub n: usize,
    pub row: usize,
    pub rows: usize,
}

impl Dest {
    /// Stores vector `h` (rows `L*h..L*h + L` of the group) for activation row `col`.
    ///
    /// # Safety
    /// `out` is writable at `col * n + row + i` for every valid row `i` (the caller's
    /// contract of the kernel).
    #[inline(always)]
    unsafe fn store<S: Simd>(&self, col: usize, h: usize, v: S::F) {
        let valid = self.rows.saturating_sub(S::L * h).min(S::L);
        if valid > 0 {
            // SAFETY: only the valid rows are written; they are in bounds (above).
            unsafe { S::store(self.out.add(col * self.n + self.row + S::L * h), valid, v) }
        }
    }
}

/// The block scales of a block-scale format: `d[blk * R + r]` for row `r` of the group of `R`
/// rows, and where each block's slot groups lie. Blocks come in main spans of `span_blocks`
/// blocks and `span4` slot groups each; within a span, block `p`'s groups are the runs of
/// `run4` groups starting at `j * span_blocks * run4 + p * run4` (one run of `span4` groups
/// when a span is one block; lane spans interleave their blocks). The blocks after the last
/// whole span have `tail4` contiguous groups each.
#[derive(Clone, Copy)]
pub struct Blocks {
    pub d: *const f32,
    pub nb: usize,
    pub span4: usize,
    pub span_blocks: usize,
    pub run4: usize,
    pub tail4: usize,
}

impl Blocks {
    /// Block `blk`'s slot groups as `(first group, distance between runs, runs, run length)`.
    #[inline(always)]
    fn runs(&self, blk: usize) -> (usize, usize, usize, usize) {
        let sb = self.span_blocks;
        let spans = self.nb / sb;
        if blk < spans * sb {
            let (sp, p) = (blk / sb, blk % sb);
            let step = sb * self.run4;
            (
                sp * self.span4 + p * self.run4,
                step,
                self.span4 / step,
                self.run4,
            )
        } else {
            let first = spans * self.span4 + (blk - spans * sb) * self.tail4;
            (first, 0, 1, self.tail4)
        }
    }
}

/// Start of activation rows `col..col + C` as 4-slot groups (one pointer per row, so the
/// loops index them with the slot group instead of advancing C pointers).
///
/// # Safety
/// Rows `col..col + C` exist in `acts`.
#[inline(always)]
unsafe fn cols_ptrs<const C: usize>(acts: &PreparedActs, col: usize) -> [*const i32; C] {
    // SAFETY: in bounds by the caller's contract; unaligned reads only.
    core::array::from_fn(|c| unsafe { acts.q.as_ptr().add((col + c) * acts.stride) as *const i32 })
}

/// `acc[c][h] += ` the dots of panel vector `h` of slot groups `ts` with activation row `c`'s
/// four bytes of each group (broadcast to all lanes).
///
/// # Safety
/// As [`run`]: the groups exist in the panel and in every row `a[c]` points to.
#[inline(always)]
unsafe fn dots<S: Simd, const H: usize, const C: usize>(
    panel: *const u8,
    ts: core::ops::Range<usize>,
    a: &[*const i32; C],
    acc: &mut [[S::I; H]; C],
) {
    let vb = S::L * 4;
    if S::NARROW_STEPS == 0 {
        for t in ts {
            let w: [S::I; H] = core::array::from_fn(|h| S::load(panel.add((t * H + h) * vb)));
            for (c, acc) in acc.iter_mut().enumerate() {
                let x = S::splat(a[c].add(t).read_unaligned());
                for h in 0..H {
                    acc[h] = S::dot(acc[h], w[h], x);
                }
            }
        }
        return;
    }
    // narrow accumulators for NARROW_STEPS groups at a time, then widened into `acc`
    let mut t0 = ts.start;
    while t0 < ts.end {
        let t1 = ts.end.min(t0 + S::NARROW_STEPS);
        let mut nacc = [[S::zero(); H]; C];
        for t in t0..t1 {
            let w: [S::I; H] = core::array::from_fn(|h| S::load(panel.add((t * H + h) * vb)));
            for (c, n) in nacc.iter_mut().enumerate() {
                let x = S::splat(a[c].add(t).read_unaligned());
                for h in 0..H {
                    n[h] = S::dot_narrow(n[h], w[h], x);
                }
            }
        }
        for (acc, n) in acc.iter_mut().zip(nacc.iter()) {
            for h in 0..H {
                acc[h] = S::widen(acc[h], n[h]);
            }
        }
        t0 = t1;
    }
}

/// `C` activation rows from `col` against the panel (tensor scale `ws`).
///
/// # Safety
/// As [`run`], for rows `col..col + C`.
#[inline(always)]
unsafe fn tensor_cols<S: Simd, const H: usize, const C: usize>(
    panel: *const u8,
    k4: usize,
    acts: &PreparedActs,
    col: usize,
    ws: f32,
    dest: Dest,
) {
    let mut acc = [[S::zero(); H]; C];
    let a = cols_ptrs::<C>(acts, col);
    dots::<S, H, C>(panel, 0..k4, &a, &mut acc);
    let wsv = S::splatf(ws);
    for (c, acc) in acc.iter().enumerate() {
        let sum = S::splat(*acts.sum.get_unchecked(col + c));
        let scale = S::splatf(*acts.scale.get_unchecked(col + c));
        for (h, &v) in acc.iter().enumerate() {
            let s = S::cvt(S::sub(v, sum));
            dest.store::<S>(col + c, h, S::mul(S::div(s, scale), wsv));
        }
    }
}

/// `C` activation rows from `col` against the panel, block by block.
///
/// # Safety
/// As [`run`], with `panel` holding every block's slot groups (`b.runs`), `b.d` readable for
/// `nb * L * H` floats and `acts.bsum` holding `nb` sums per activation row.
#[inline(always)]
unsafe fn block_cols<S: Simd, const H: usize, const C: usize>(
    panel: *const u8,
    b: Blocks,
    acts: &PreparedActs,
    col: usize,
    dest: Dest,
) {
    let mut f = [[S::zerof(); H]; C];
    let a = cols_ptrs::<C>(acts, col);
    for blk in 0..b.nb {
        let mut acc = [[S::zero(); H]; C];
        let (first, step, runs, len) = b.runs(blk);
        for j in 0..runs {
            let t0 = first + j * step;
            dots::<S, H, C>(panel, t0..t0 + len, &a, &mut acc);
        }
        let d: [S::F; H] = core::array::from_fn(|h| S::loadf(b.d.add((blk * H + h) * S::L)));
        for (c, (f, acc)) in f.iter_mut().zip(acc.iter()).enumerate() {
            let bs = S::splat(*acts.bsum.get_unchecked((col + c) * b.nb + blk));
            for h in 0..H {
                let s = S::cvt(S::sub(acc[h], bs));
                f[h] = S::add(f[h], S::mul(d[h], s));
            }
        }
    }
    for (c, f) in f.iter().enumerate() {
        let scale = S::splatf(*acts.scale.get_unchecked(col + c));
        for (h, &v) in f.iter().enumerate() {
            dest.store::<S>(col + c, h, S::div(v, scale));
        }
    }
}

/// Every activation row against one row group's panel: `C` rows at a time, then the
/// remainder four and one at a time.
///
/// # Safety
/// As [`run`].
#[inline(always)]
unsafe fn run_with<S: Simd, const H: usize, const C: usize>(
    panel: *const u8,
    k4: usize,
    blocks: Option<Blocks>,
    ws: f32,
    acts: &PreparedActs,
    dest: Dest,
) {
    let m = acts.m;
    let mut col = 0;
    // SAFETY (all calls): columns col..col + width are < m; the rest is the caller's contract.
    macro_rules! cols {
        ($w:expr) => {
            while m - col >= $w {
                match blocks {
                    Some(b) => unsafe { block_cols::<S, H, $w>(panel, b, acts, col, dest) },
                    None => unsafe { tensor_cols::<S, H, $w>(panel, k4, acts, col, ws, dest) },
                }
                col += $w;
            }
        };
    }
    cols!(C);
    cols!(4);
    cols!(1);
}

/// Every activation row against one row group's panel of `16 * H` rows (AVX-512 VNNI).
/// `blocks`: the block scales (block-scale formats), else the tensor scale `ws` applies.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VNNI; `panel` holds `k4 * 16H` dwords of codes for `acts`'
/// layout (`4 * k4 == acts.stride`, and with blocks, `k4` covering every block's slot groups); `dest` as in
/// [`Dest::store`] for every activation row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn run<const H: usize, const C: usize>(
    panel: *const u8,
    k4: usize,
    blocks: Option<Blocks>,
    ws: f32,
    acts: &PreparedActs,
    dest: Dest,
) {
    // SAFETY: the caller's contract, for 16-lane vectors.
    unsafe { run_with::<Zmm, H, C>(panel, k4, blocks, ws, acts, dest) }
}

/// As [`run`] for a panel of `8 * H` rows on AVX2 (`vpmaddubsw` + `vpmaddwd` dots).
///
/// # Safety
/// As [`run`], the CPU supporting AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn run_avx2<const H: usize, const C: usize>(
    panel: *const u8,
    k4: usize,
    blocks: Option<Blocks>,
    ws: f32,
    acts: &PreparedActs,
    dest: Dest,
) {
    // SAFETY: the caller's contract, for 8-lane vectors.
    unsafe { run_with::<Ymm, H, C>(panel, k4, blocks, ws, acts, dest) }
}
