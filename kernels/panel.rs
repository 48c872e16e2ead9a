//! Format-independent half of the panel GEMM kernels (`Tile::panel` rows of the table).
//!
//! A generated `pn*` kernel of a block format decodes a group of `16 * H` weight rows once
//! into their 2-bit codes (one byte each, in the prepared activation slot order of that
//! kernel family), and [`transpose`] turns them into a panel whose vectors hold four
//! consecutive slots of 16 rows (`[slot / 4][row][4]`); the LUT formats' index chunks are
//! already row-interleaved and their template writes the panel directly. [`run`] then runs
//! every activation row against the panel with `vpdpbusd`: the
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

/// Where the outputs of one row group go: `out[col * n + row + i]` for `i < rows`.
#[derive(Clone, Copy)]
pub struct Dest {
    pub out: *mut f32,
    pub n: usize,
    pub row: usize,
    pub rows: usize,
}

impl Dest {
    /// Lane mask of the valid rows of vector `h`.
    #[inline(always)]
    fn mask(&self, h: usize) -> u16 {
        let valid = self.rows.saturating_sub(16 * h).min(16);
        ((1u32 << valid) - 1) as u16
    }

    /// Stores lanes of vector `h` for activation row `col`.
    ///
    /// # Safety
    /// `out` is writable at `col * n + row + i` for every valid row `i` (the caller's
    /// contract of the kernel).
    #[inline(always)]
    unsafe fn store(&self, col: usize, h: usize, v: __m512) {
        // SAFETY: masked-off lanes are not written; the valid ones are in bounds (above).
        unsafe {
            _mm512_mask_storeu_ps(
                self.out.add(col * self.n + self.row + 16 * h),
                self.mask(h),
                v,
            )
        }
    }
}

/// The block scales of a block-scale format: `d[blk * 16H + r]` for row `r` of the group,
/// `bk4` slot groups per block.
#[derive(Clone, Copy)]
pub struct Blocks {
    pub d: *const f32,
    pub nb: usize,
    pub bk4: usize,
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
/// As [`tensor_cols`]: the groups exist in the panel and in every row `a[c]` points to.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dots<const H: usize, const C: usize>(
    panel: *const u8,
    ts: core::ops::Range<usize>,
    a: &[*const i32; C],
    acc: &mut [[__m512i; H]; C],
) {
    for t in ts {
        let mut w = [_mm512_setzero_si512(); H];
        for (h, v) in w.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(panel.add((t * H + h) * 64) as *const _);
        }
        for (c, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32(a[c].add(t).read_unaligned());
            for h in 0..H {
                acc[h] = _mm512_dpbusd_epi32(acc[h], w[h], x);
            }
        }
    }
}

/// `C` activation rows from `col` against the panel (tensor scale `ws`).
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VNNI; `panel` holds `k4 * 16H` dwords; `acts` rows
/// `col..col + C` exist and have `stride >= 4 * k4`; `dest` as in [`Dest::store`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tensor_cols<const H: usize, const C: usize>(
    panel: *const u8,
    k4: usize,
    acts: &PreparedActs,
    col: usize,
    ws: f32,
    dest: Dest,
) {
    let mut acc = [[_mm512_setzero_si512(); H]; C];
    let a = cols_ptrs::<C>(acts, col);
    dots::<H, C>(panel, 0..k4, &a, &mut acc);
    let wsv = _mm512_set1_ps(ws);
    for (c, acc) in acc.iter().enumerate() {
        let sum = _mm512_set1_epi32(*acts.sum.get_unchecked(col + c));
        let scale = _mm512_set1_ps(*acts.scale.get_unchecked(col + c));
        for (h, &v) in acc.iter().enumerate() {
            let s = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, sum));
            dest.store(col + c, h, _mm512_mul_ps(_mm512_div_ps(s, scale), wsv));
        }
    }
}

/// `C` activation rows from `col` against the panel, block by block.
///
/// # Safety
/// As [`tensor_cols`], with `panel` holding `nb * bk4 * 16H` dwords, `b.d` readable for
/// `nb * 16H` floats and `acts.bsum` holding `nb` sums per activation row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_cols<const H: usize, const C: usize>(
    panel: *const u8,
    b: Blocks,
    acts: &PreparedActs,
    col: usize,
    dest: Dest,
) {
    let mut f = [[_mm512_setzero_ps(); H]; C];
    let a = cols_ptrs::<C>(acts, col);
    for blk in 0..b.nb {
        let mut acc = [[_mm512_setzero_si512(); H]; C];
        dots::<H, C>(panel, blk * b.bk4..(blk + 1) * b.bk4, &a, &mut acc);
        let mut d = [_mm512_setzero_ps(); H];
        for (h, v) in d.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.d.add((blk * H + h) * 16));
        }
        for (c, (f, acc)) in f.iter_mut().zip(acc.iter()).enumerate() {
            let bs = _mm512_set1_epi32(*acts.bsum.get_unchecked((col + c) * b.nb + blk));
            for h in 0..H {
                let s = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[h], bs));
                f[h] = _mm512_add_ps(f[h], _mm512_mul_ps(d[h], s));
            }
        }
    }
    for (c, f) in f.iter().enumerate() {
        let scale = _mm512_set1_ps(*acts.scale.get_unchecked(col + c));
        for (h, &v) in f.iter().enumerate() {
            dest.store(col + c, h, _mm512_div_ps(v, scale));
        }
    }
}

/// Every activation row against one row group's panel: `C` rows at a time, then the
/// remainder four and one at a time. `blocks`: the block scales (block-scale formats), else
/// the tensor scale `ws` applies.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VNNI; `panel` holds `k4 * 16H` dwords of codes for `acts`'
/// layout (`4 * k4 == acts.stride`, and `k4 == nb * bk4` with blocks); `dest` as in
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
    let m = acts.m;
    let mut col = 0;
    // SAFETY (all calls): columns col..col + width are < m; the rest is the caller's contract.
    macro_rules! cols {
        ($w:expr) => {
            while m - col >= $w {
                match blocks {
                    Some(b) => unsafe { block_cols::<H, $w>(panel, b, acts, col, dest) },
                    None => unsafe { tensor_cols::<H, $w>(panel, k4, acts, col, ws, dest) },
                }
                col += $w;
            }
        };
    }
    cols!(C);
    cols!(4);
    cols!(1);
}
