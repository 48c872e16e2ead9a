//! Templates of the LUT formats (TL1, TL2): quantize, dequantize, prepare (the lookup tables)
//! and the matmul tiles, for the scalar, AVX2, AVX-512 BW and NEON backends.
//!
//! The weight layout is the one of `kernels/reference/lut.rs` (32-row tiles; a chunk is 32
//! index bytes, byte `r` = row `r`, low nibble = unit `2c`, high nibble = unit `2c + 1`, where
//! a unit is a TL1 pair or a TL2 triple). The technique is the table lookup one:
//!
//! * `prepare` builds, per activation row and per unit, the table of every sum the unit's
//!   weights can produce (TL1: 9 sums `b0*w0 + b1*w1` at `3*w0 + w1 + 4`; TL2: the 14 triple
//!   magnitudes), padded to 16 entries, as int16 split into a low-byte and a high-byte
//!   16-entry table (exact; AVX-512 TL2 triples: one signed 32-entry int16 table instead).
//! * a kernel loads the index bytes of 32 rows (AVX2: one chunk per ymm; AVX-512: two chunks
//!   per zmm; NEON: half a chunk per q register), looks the low and high bytes up with
//!   `vpshufb` / `tbl`, interleaves them back into int16, applies the TL2 sign (xor of both
//!   bytes with the row's sign mask gives `!e = -e - 1`; the `+1` per negative triple is
//!   counted in a byte vector and added at the flush), accumulates in int16 for at most 64
//!   units per lane and then widens to int32 (bound in `FLUSH_UNITS`). AVX-512 looks TL2
//!   triples up differently: one `vpermw` per triple and 32 rows in a signed 32-entry int16
//!   table indexed by magnitude and sign bit (no byte split, no interleave, no sign
//!   correction; see `avx512_signed_triples`). The AVX-512 pair tables are split into the
//!   low 5 bits and the rest instead, small enough to be summed in bytes for
//!   `PAIR_BYTE_STEPS` steps before one interleave: the shuffle port, which every lookup and
//!   interleave needs, is what limits these tiles.
//! * a batch tile (`cols > 1`) reuses every loaded index vector and sign mask for `cols`
//!   activation rows.

use crate::backend::target_feature;
use crate::table::{CodeRule, Isa, Row, Tile};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

/// Rows per layout tile the templates are written for (one AVX2 vector of index bytes).
const BM: usize = 32;

/// Units summed per int16 lane before widening. TL1 entries lie in `[-256, 256]`; TL2 entries
/// in `[-384, 384]`, and a negative triple adds `!e` in `[-385, 383]` plus a correction of 1
/// at the flush; so a lane holds at most `64 * 385 + 64 = 24704 <= 32767` (TL1: `64 * 256`).
const FLUSH_UNITS: usize = 64;

fn lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

/// A signed integer literal (a leading `-` token for negative values).
fn ilit(v: i32) -> TokenStream {
    let a = Literal::i32_unsuffixed(v.abs());
    if v < 0 {
        quote! { -#a }
    } else {
        quote! { #a }
    }
}

/// Which table layout a backend reads (see `gen_prepare`; checked at compile time against
/// `reference::lut::table_group`).
fn group_units(isa: Isa) -> usize {
    if isa == Isa::Avx512 {
        4
    } else {
        1
    }
}

pub fn generate_row(row: &Row) -> Result<TokenStream, String> {
    let spec = row.format;
    let (triples, bm) = match spec.codes {
        CodeRule::PairLut { tile_rows } => (false, tile_rows),
        CodeRule::TripleLut { tile_rows } => (true, tile_rows),
        _ => return Err(format!("{} is not a LUT format", spec.ident)),
    };
    if bm != BM {
        return Err(format!(
            "table row {} on {}: the LUT templates are written for {BM}-row tiles, got {bm}",
            spec.ident,
            row.isa.name()
        ));
    }
    if !matches!(
        row.isa,
        Isa::Scalar | Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Neon
    ) {
        return Err(format!(
            "table row {} on {}: no LUT template for this ISA (scalar, avx2, avx512(vnni), neon)",
            spec.ident,
            row.isa.name()
        ));
    }
    // the LUT tiles of AVX-512 VNNI are the AVX-512 BW ones (table lookups need no dot
    // product); the row exists for its panel tiles, which use `vpdpbusd`
    let tisa = if row.isa == Isa::Avx512Vnni {
        Isa::Avx512
    } else {
        row.isa
    };
    for t in row.tiles {
        if t.panel && row.isa != Isa::Avx512Vnni {
            return Err(format!(
                "table row {} on {}: panel tiles need avx512vnni",
                spec.ident,
                row.isa.name()
            ));
        }
        if t.rows != BM {
            return Err(format!(
                "table row {}: LUT tile {}x{} must have {BM} rows",
                spec.ident, t.rows, t.cols
            ));
        }
    }
    let tf = target_feature(row.isa);
    let layout = crate::module_name(row);
    let ident = format_ident!("{}", spec.ident);
    let group = lit(group_units(tisa));
    let isa_ident = format_ident!("{}", format!("{:?}", row.isa));
    let prelude = match tisa {
        Isa::Avx2 | Isa::Avx512 => quote! { use core::arch::x86_64::*; },
        Isa::Neon => quote! { use core::arch::aarch64::*; },
        _ => quote! {},
    };
    let weights = unit_weights(triples);
    let signed = triples && tisa == Isa::Avx512;
    let prepare = gen_prepare(triples, signed);
    let quantize = gen_quantize(triples, &tf);
    let dequantize = gen_dequantize(triples, &tf);
    let zip = gen_zip();
    let flush = gen_flush(tisa, triples, &tf);

    let mut cols: Vec<usize> = row
        .tiles
        .iter()
        .filter(|t| !t.panel)
        .map(|t| t.cols)
        .collect();
    if !cols.contains(&1) {
        cols.push(1);
    }
    let mut tiles = TokenStream::new();
    for &c in &cols {
        tiles.extend(gen_tile(tisa, triples, c, &tf));
    }
    let row_tiles = tisa == Isa::Avx512;
    if row_tiles {
        tiles.extend(gen_tile_rows(triples, &tf));
    }
    for t in row.tiles {
        if t.panel {
            tiles.extend(gen_panel(triples, *t, &tf));
        } else {
            tiles.extend(gen_matmul(*t, row_tiles, &tf));
        }
    }
    let not_signed = if signed {
        quote! {}
    } else {
        quote! { ! }
    };
    let tri_area = if signed {
        quote! { 64 * t }
    } else {
        quote! { area(t) }
    };
    let flush_steps = lit(FLUSH_UNITS / 2);
    let flush_const = if tisa == Isa::Scalar {
        // the scalar tiles accumulate in i32 directly
        quote! {}
    } else {
        quote! {
            /// Chunk steps (two units per int16 lane each) between two widenings: see
            /// `FLUSH_UNITS` in the generator. TL1: `|sum| <= 64 * 256`; TL2:
            /// `|sum| <= 64 * 385 + 64 = 24704`; both below `i16::MAX`.
            const FLUSH_STEPS: usize = #flush_steps;
        }
    };
    let doc = format!(
        " {} on {}: LUT kernels over {BM}-row tiles ({}).",
        spec.ident,
        row.isa.name(),
        if triples {
            "triple magnitudes + sign bits, pair remainder"
        } else {
            "pair indices"
        }
    );
    Ok(quote! {
        #![doc = #doc]
        #![allow(unused_unsafe, unused_mut, unused_variables, unused_parens, unused_braces, clippy::all)]
        #prelude
        use crate::reference::lut::LutGeometry;
        use crate::table::FormatSpec;
        use crate::{PreparedActs, QuantizedActs};

        // the table layout `prepare` writes is the one the runtime checks
        const _: () = assert!(GROUP == crate::reference::lut::table_group(crate::table::Isa::#isa_ident));
        const _: () = assert!(#not_signed crate::reference::lut::signed_triple_tables(SPEC, crate::table::Isa::#isa_ident));

        /// The format of this module.
        const SPEC: &FormatSpec = &crate::table::#ident;
        /// Rows per layout tile.
        pub const BM: usize = #BM;
        /// Activation layout id (checked by the safe API).
        pub const LAYOUT: &str = #layout;
        /// Units whose tables are stored together (AVX-512 interleaves four units so that one
        /// 32-byte broadcast feeds a zmm lookup; 1 = every unit's table on its own).
        pub const GROUP: usize = #group;
        #flush_const

        #weights

        /// Bytes of the table area of `units` units in one activation row.
        #[inline]
        pub fn area(units: usize) -> usize {
            units.div_ceil(GROUP) * GROUP * 32
        }

        /// Bytes of the triple tables of `t` triples in one activation row (AVX-512: one
        /// 64-byte signed table per triple, see `put_signed`; otherwise `area(t)`).
        #[inline]
        pub fn tri_area(t: usize) -> usize {
            #tri_area
        }

        #prepare
        #zip
        #quantize
        #dequantize
        #flush
        #tiles
    })
}

/// `W[idx]`: the weights of every index (TL1 pair index 0..8, TL2 magnitude 0..13, positive
/// sign); indices never written decode as zero weights.
fn unit_weights(triples: bool) -> TokenStream {
    if triples {
        let rows = (0..16).map(|mag: i32| {
            let w = if mag > 13 {
                [0, 0, 0]
            } else {
                let w2 = (mag + 13).rem_euclid(3) - 1;
                let r = (mag - w2) / 3;
                let w1 = (r + 13).rem_euclid(3) - 1;
                [(r - w1) / 3, w1, w2]
            };
            let [a, b, c] = w.map(ilit);
            quote! { [#a, #b, #c] }
        });
        quote! {
            /// Weights `(w0, w1, w2)` of a TL2 magnitude (`9*w0 + 3*w1 + w2`, positive sign).
            pub const W: [[i8; 3]; 16] = [#(#rows),*];
        }
    } else {
        let rows = (0..16).map(|idx: i32| {
            let w = if idx > 8 {
                [0, 0]
            } else {
                let v = idx - 4;
                let w1 = (v + 4).rem_euclid(3) - 1;
                [(v - w1) / 3, w1]
            };
            let [a, b] = w.map(ilit);
            quote! { [#a, #b] }
        });
        quote! {
            /// Weights `(w0, w1)` of a TL1 pair index (`3*w0 + w1 + 4`).
            pub const W: [[i8; 2]; 16] = [#(#rows),*];
        }
    }
}

fn gen_prepare(triples: bool, signed: bool) -> TokenStream {
    let put_tri = if signed {
        quote! { put_signed(dst, t, &e); }
    } else {
        quote! { put::<false>(dst, t, &e); }
    };
    let tw = if triples {
        quote! {
            /// The triple weights as three columns (`TW[c][mag] = w_c`).
            const TW: [[i16; 16]; 3] = {
                let mut t = [[0i16; 16]; 3];
                let mut i = 0;
                while i < 16 {
                    t[0][i] = W[i][0] as i16;
                    t[1][i] = W[i][1] as i16;
                    t[2][i] = W[i][2] as i16;
                    i += 1;
                }
                t
            };
        }
    } else {
        quote! {}
    };
    let tri = if triples {
        quote! {
            for t in 0..g.t {
                let (b0, b1, b2) = (qr[3 * t] as i16, qr[3 * t + 1] as i16, qr[3 * t + 2] as i16);
                let e: [i16; 16] =
                    core::array::from_fn(|i| TW[0][i] * b0 + TW[1][i] * b1 + TW[2][i] * b2);
                #put_tri
            }
        }
    } else {
        quote! {}
    };
    let put_signed = if signed {
        quote! {
            /// Store the signed table of triple `u` at `64 * u`: 32 int16 (little-endian)
            /// indexed by `magnitude | negative << 4`, i.e. `e[0..16]` then `-e[0..16]`, for
            /// the AVX-512 `vpermw` lookups (magnitudes 14 and 15 decode as zero: `e` is 0).
            #[inline]
            fn put_signed(dst: &mut [i8], u: usize, e: &[i16; 16]) {
                let d = &mut dst[64 * u..64 * u + 64];
                for i in 0..16 {
                    d[2 * i..2 * i + 2].copy_from_slice(&e[i].to_le_bytes().map(|b| b as i8));
                    d[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&(-e[i]).to_le_bytes().map(|b| b as i8));
                }
            }
        }
    } else {
        quote! {}
    };
    let pair_w = if triples {
        quote! {
            /// TL1 pair weights (the TL2 remainder uses the pair encoding).
            const PW: [[i8; 2]; 16] = {
                let mut t = [[0i8; 2]; 16];
                let mut i = 0;
                while i < 9 {
                    let v = i as i8 - 4;
                    let w1 = (v + 4).rem_euclid(3) - 1;
                    t[i] = [(v - w1) / 3, w1];
                    i += 1;
                }
                t
            };
        }
    } else {
        quote! { const PW: [[i8; 2]; 16] = W; }
    };
    quote! {
        #pair_w
        #tw
        #put_signed

        /// Store the 16 int16 entries of unit `u` as a low and a high table: the low byte
        /// and the high byte, or (`LOW5`, the AVX-512 pair tables) the low 5 bits and the
        /// rest `e >> 5`, small enough to be summed in bytes over four steps.
        /// `GROUP == 1`: unit `u` at `32 * u` (`lo[16]`, `hi[16]`). `GROUP == 4`: units
        /// `4g..4g+4` in 128 bytes: `[lo(4g), lo(4g+2)]`, `[hi(4g), hi(4g+2)]`,
        /// `[lo(4g+1), lo(4g+3)]`, `[hi(4g+1), hi(4g+3)]` (16 bytes each).
        #[inline]
        fn put<const LOW5: bool>(dst: &mut [i8], u: usize, e: &[i16; 16]) {
            let (lo, hi) = if GROUP == 1 {
                (32 * u, 32 * u + 16)
            } else {
                let (g, j) = (u / 4, u % 4);
                let base = 128 * g + 64 * (j % 2) + 16 * (j / 2);
                (base, base + 32)
            };
            let (l, h): ([i8; 16], [i8; 16]) = if LOW5 {
                (
                    core::array::from_fn(|i| (e[i] & 31) as i8),
                    core::array::from_fn(|i| (e[i] >> 5) as i8),
                )
            } else {
                (
                    core::array::from_fn(|i| e[i] as u8 as i8),
                    core::array::from_fn(|i| (e[i] >> 8) as i8),
                )
            };
            dst[lo..lo + 16].copy_from_slice(&l);
            dst[hi..hi + 16].copy_from_slice(&h);
        }

        /// The pair weights as two columns (`PT[0][idx] = w0`), for vectorisable table builds.
        const PT: [[i16; 16]; 2] = {
            let mut t = [[0i16; 16]; 2];
            let mut i = 0;
            while i < 16 {
                t[0][i] = PW[i][0] as i16;
                t[1][i] = PW[i][1] as i16;
                i += 1;
            }
            t
        };

        /// LUT activation layout: the int8 row in `reference::lut::prepared_k` slots (TL2: the
        /// triples' elements, zero-padded to whole groups of four triples, then the pair
        /// elements; TL1: the row padded with zeros to whole pairs of pairs) and, per
        /// activation row, `tri_area(T)` bytes of triple tables (TL2) then
        /// `area(pair_elems / 2)` bytes of pair tables (see `put`). The tables are built from
        /// the slots; the panel tiles read the slots directly.
        pub fn prepare(acts: &QuantizedActs) -> PreparedActs {
            let (m, k) = (acts.m, acts.k);
            let g = LutGeometry::new(SPEC, 1, k);
            let ts = crate::reference::lut::triple_slots(g.t);
            let kp = ts + g.pair_elems;
            debug_assert_eq!(kp, crate::reference::lut::prepared_k(SPEC, k));
            let mut q = crate::AlignedI8::zeroed(m * kp);
            for row in 0..m {
                let src = acts.row(row);
                let dst = &mut q[row * kp..(row + 1) * kp];
                dst[..3 * g.t].copy_from_slice(&src[..3 * g.t]);
                let pb = g.pair_base();
                dst[ts..ts + (k - pb)].copy_from_slice(&src[pb..]);
            }
            let tri_bytes = tri_area(g.t);
            let row_bytes = tri_bytes + area(g.pair_elems / 2);
            let mut lut = crate::AlignedI8::zeroed(m * row_bytes);
            for row in 0..m {
                let qr = &q[row * kp..(row + 1) * kp];
                let dst = &mut lut[row * row_bytes..(row + 1) * row_bytes];
                #tri
                let dst = &mut dst[tri_bytes..];
                let pb = ts;
                for p in 0..g.pair_elems / 2 {
                    let (b0, b1) = (qr[pb + 2 * p] as i16, qr[pb + 2 * p + 1] as i16);
                    let e: [i16; 16] = core::array::from_fn(|i| PT[0][i] * b0 + PT[1][i] * b1);
                    put::<{ GROUP == 4 }>(dst, p, &e);
                }
            }
            PreparedActs {
                m,
                k,
                stride: kp,
                layout: LAYOUT,
                q,
                scale: acts.scale.clone(),
                sum: acts.sum.clone(),
                bsum: Vec::new(),
                lut,
            }
        }
    }
}

fn gen_quantize(triples: bool, tf: &TokenStream) -> TokenStream {
    let (tri_setup, tri_pack) = if triples {
        (
            quote! {
                // one negative flag per triple of the row (0 past T, a whole sign byte each)
                let mut neg = vec![0u8; g.t.div_ceil(8) * 8];
                // `v + 13` of every triple of the row
                let mut tv = vec![0u8; g.t];
            },
            quote! {
                // `9*u0 + 3*u1 + u2 = v + 13` of every triple, for codes `u = w + 1`
                for (d, ch) in tv.iter_mut().zip(u[..3 * g.t].chunks_exact(3)) {
                    *d = 9 * ch[0] + 3 * ch[1] + ch[2];
                }
                for (ng, &t) in neg.iter_mut().zip(&tv) {
                    *ng = (t < 13) as u8;
                }
                let (mag, rest) = dst.split_at_mut(g.t / 2);
                for (m, p) in mag.iter_mut().zip(tv.chunks_exact(2)) {
                    *m = p[0].abs_diff(13) | (p[1].abs_diff(13) << 4);
                }
                // eight 0/1 flag bytes -> one byte, flag `j` at bit `j`: the product moves
                // byte `j`'s bit to bit `56 + j`; no two partial products meet there
                for (s, ch) in rest.iter_mut().zip(neg.chunks_exact(8)) {
                    let f = u64::from_le_bytes([ch[0], ch[1], ch[2], ch[3], ch[4], ch[5], ch[6], ch[7]]);
                    *s = (f.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
                }
            },
        )
    } else {
        (quote! {}, quote! {})
    };
    quote! {
        /// Quantize `n x k` f32 weights (bitnet.cpp sign/absmax rule), byte-exact with
        /// `reference::lut::encode`: `|x| < 1e-6` (compared in f64, see [`crate::sign_code`])
        /// is 0, else the sign; the f32 tensor max is exact.
        ///
        /// Per row, vectorisable passes turn the floats into codes `w + 1` (0, 1, 2) and the
        /// codes into the row's chunk bytes (contiguous); a tile's 32 rows are then
        /// interleaved into the chunk layout by zipping rows pairwise (u8 -> u16 -> u32 ->
        /// u64), so every chunk is written as four 8-byte words.
        ///
        /// # Safety
        /// `src` holds `n * k` values and `out` has room for the format's tensor size.
        #tf
        pub unsafe fn quantize(src: *const f32, n: usize, k: usize, out: *mut u8) {
            let g = LutGeometry::new(SPEC, n, k);
            let total = g.codes_bytes() + crate::reference::lut::TAIL;
            let all = core::slice::from_raw_parts(src, n * k);
            let o = core::slice::from_raw_parts_mut(out, total);
            // the tensor max is folded in row by row (one pass over the input)
            let mut tmax = 0f32;
            let (pb, po) = (g.pair_base(), g.pair_offset() / BM);
            let chunks = g.tile_bytes / BM;
            // one row of codes + 1; elements past K stay 1 (zero weights; TL1 index 4)
            let mut u = vec![1u8; pb + g.pair_elems];
            #tri_setup
            // the chunk bytes of a tile's rows (row-major), then the zip stages
            let mut rb = vec![0u8; BM * chunks];
            let mut z = ZipBuf::new(chunks);
            // a row past N: zero weights (TL2 magnitude 0 with sign 0, TL1 index 4)
            let mut pad = vec![0u8; chunks];
            pad[po..].fill(0x44);
            for (ti, tile) in o[..g.codes_bytes()].chunks_exact_mut(g.tile_bytes).enumerate() {
                for (r, dst) in rb.chunks_exact_mut(chunks).enumerate() {
                    let row = ti * BM + r;
                    if row >= n {
                        dst.copy_from_slice(&pad);
                        continue;
                    }
                    let src = &all[row * k..(row + 1) * k];
                    let rmax = crate::absmax_codes(src, &mut u, crate::sign_code);
                    if rmax > tmax {
                        tmax = rmax;
                    }
                    #tri_pack
                    // pair bytes: `3*u0 + u1 = 3*w0 + w1 + 4`
                    for (p, ch) in dst[po..].iter_mut().zip(u[pb..].chunks_exact(4)) {
                        *p = (3 * ch[0] + ch[1]) | ((3 * ch[2] + ch[3]) << 4);
                    }
                }
                zip_tile(&rb, &mut z, tile);
            }
            o[g.codes_bytes()..].fill(0);
            let s = tmax.to_le_bytes();
            o[g.codes_bytes()..g.codes_bytes() + 4].copy_from_slice(&s);
        }
    }
}

/// Helpers shared by quantize and dequantize: a tile's chunk layout (chunk `c` = byte `r` of
/// every row `r`) to and from row-major chunk bytes (`rb[r * chunks + c]`), by zipping rows
/// pairwise through u16, u32 and u64 lanes (vectorisable, one 8-byte word per 8 rows).
fn gen_zip() -> TokenStream {
    quote! {
        /// Scratch of the zip stages for tiles of `chunks` chunks.
        struct ZipBuf {
            chunks: usize,
            w16: Vec<u16>,
            w32: Vec<u32>,
            w64: Vec<u64>,
        }

        impl ZipBuf {
            fn new(chunks: usize) -> ZipBuf {
                ZipBuf {
                    chunks,
                    w16: vec![0; BM / 2 * chunks],
                    w32: vec![0; BM / 4 * chunks],
                    w64: vec![0; BM / 8 * chunks],
                }
            }
        }

        /// Row-major chunk bytes `rb` (BM rows) -> the tile's chunk layout.
        #[inline(always)]
        fn zip_tile(rb: &[u8], z: &mut ZipBuf, tile: &mut [u8]) {
            let ch = z.chunks;
            for (i, d) in z.w16.chunks_exact_mut(ch).enumerate() {
                let (a, b) = (&rb[2 * i * ch..], &rb[(2 * i + 1) * ch..]);
                for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                    *d = a as u16 | (b as u16) << 8;
                }
            }
            for (i, d) in z.w32.chunks_exact_mut(ch).enumerate() {
                let (a, b) = (&z.w16[2 * i * ch..], &z.w16[(2 * i + 1) * ch..]);
                for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                    *d = a as u32 | (b as u32) << 16;
                }
            }
            for (i, d) in z.w64.chunks_exact_mut(ch).enumerate() {
                let (a, b) = (&z.w32[2 * i * ch..], &z.w32[(2 * i + 1) * ch..]);
                for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                    *d = a as u64 | (b as u64) << 32;
                }
            }
            for (c, chunk) in tile.chunks_exact_mut(BM).enumerate() {
                for (q, word) in chunk.chunks_exact_mut(8).enumerate() {
                    word.copy_from_slice(&z.w64[q * ch + c].to_le_bytes());
                }
            }
        }

        /// The tile's chunk layout -> row-major chunk bytes `rb` (BM rows).
        #[inline(always)]
        fn unzip_tile(tile: &[u8], z: &mut ZipBuf, rb: &mut [u8]) {
            let ch = z.chunks;
            for (c, chunk) in tile.chunks_exact(BM).enumerate() {
                for (q, word) in chunk.chunks_exact(8).enumerate() {
                    z.w64[q * ch + c] = u64::from_le_bytes([
                        word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
                    ]);
                }
            }
            for (i, s) in z.w64.chunks_exact(ch).enumerate() {
                let (a, b) = z.w32[2 * i * ch..(2 * i + 2) * ch].split_at_mut(ch);
                for ((a, b), &s) in a.iter_mut().zip(b.iter_mut()).zip(s) {
                    *a = s as u32;
                    *b = (s >> 32) as u32;
                }
            }
            for (i, s) in z.w32.chunks_exact(ch).enumerate() {
                let (a, b) = z.w16[2 * i * ch..(2 * i + 2) * ch].split_at_mut(ch);
                for ((a, b), &s) in a.iter_mut().zip(b.iter_mut()).zip(s) {
                    *a = s as u16;
                    *b = (s >> 16) as u16;
                }
            }
            for (i, s) in z.w16.chunks_exact(ch).enumerate() {
                let (a, b) = rb[2 * i * ch..(2 * i + 2) * ch].split_at_mut(ch);
                for ((a, b), &s) in a.iter_mut().zip(b.iter_mut()).zip(s) {
                    *a = s as u8;
                    *b = (s >> 8) as u8;
                }
            }
        }
    }
}

fn gen_dequantize(triples: bool, tf: &TokenStream) -> TokenStream {
    let (tri_setup, tri) = if triples {
        (
            quote! {
                // (index byte, its two sign bits) -> six scaled weights
                // six weights padded to eight, so that a copy is one 32-byte move (the two
                // extra lanes are overwritten by the next copy)
                let mut tri: Box<[[f32; 8]; 1024]> = Box::new([[0f32; 8]; 1024]);
                for (key, t) in tri.iter_mut().enumerate() {
                    let (b, s) = (key & 255, key >> 8);
                    for h in 0..2 {
                        let mag = (b >> (4 * h)) & 15;
                        let neg = (s >> h) & 1 == 1;
                        for i in 0..3 {
                            let w = W[mag][i];
                            t[3 * h + i] = (if neg { -w } else { w }) as f32 * scale;
                        }
                    }
                }
                let tri = &*tri;
            },
            quote! {
                let (mag, rest) = bytes.split_at(g.t / 2);
                let sgn = &rest[..g.t.div_ceil(8)];
                // eight triples (four magnitude bytes, one sign byte) = 24 weights at a time
                // (plain indices: the iterator form kept its state on the stack)
                for g8 in 0..g.t / 8 {
                    let s = sgn[g8] as usize;
                    let m = &mag[4 * g8..4 * g8 + 4];
                    let o24 = &mut o[24 * g8..24 * g8 + 24];
                    o24[0..8].copy_from_slice(&tri[m[0] as usize | (s & 3) << 8]);
                    o24[6..14].copy_from_slice(&tri[m[1] as usize | (s >> 2 & 3) << 8]);
                    o24[12..20].copy_from_slice(&tri[m[2] as usize | (s >> 4 & 3) << 8]);
                    o24[18..24].copy_from_slice(&tri[m[3] as usize | (s >> 6) << 8][..6]);
                }
                // the last (T mod 8) triples
                for c in 4 * (g.t / 8)..g.t / 2 {
                    let key = mag[c] as usize | ((sgn[c / 4] as usize >> (2 * (c % 4))) & 3) << 8;
                    o[6 * c..6 * c + 6].copy_from_slice(&tri[key][..6]);
                }
            },
        )
    } else {
        (quote! {}, quote! {})
    };
    quote! {
        /// Dequantize `n x k` weights to f32 (`w * scale`): per tile the chunk layout is
        /// unzipped into row-major bytes, then every row is written front to back through
        /// per-call tables of scaled weights (one lookup per index byte).
        ///
        /// # Safety
        /// `data` holds a valid tensor of this format and shape, `out` has room for `n * k`
        /// values.
        #tf
        pub unsafe fn dequantize(data: *const u8, n: usize, k: usize, out: *mut f32) {
            let g = LutGeometry::new(SPEC, n, k);
            let d = core::slice::from_raw_parts(data, g.codes_bytes() + 4);
            let cb = g.codes_bytes();
            let scale = f32::from_le_bytes([d[cb], d[cb + 1], d[cb + 2], d[cb + 3]]);
            // a pair byte -> four scaled weights
            let mut pair = [[0f32; 4]; 256];
            for (b, t) in pair.iter_mut().enumerate() {
                for h in 0..2 {
                    let idx = (b >> (4 * h)) & 15;
                    t[2 * h] = PW[idx][0] as f32 * scale;
                    t[2 * h + 1] = PW[idx][1] as f32 * scale;
                }
            }
            #tri_setup
            let (pb, po) = (g.pair_base(), g.pair_offset() / BM);
            let chunks = g.tile_bytes / BM;
            let mut rb = vec![0u8; BM * chunks];
            let mut z = ZipBuf::new(chunks);
            let dst = core::slice::from_raw_parts_mut(out, n * k);
            for (ti, tile) in d[..cb].chunks_exact(g.tile_bytes).enumerate() {
                unzip_tile(tile, &mut z, &mut rb);
                let rows = (n - ti * BM).min(BM);
                let tile_out = &mut dst[ti * BM * k..(ti * BM + rows) * k];
                for (o, bytes) in tile_out.chunks_exact_mut(k).zip(rb.chunks_exact(chunks)) {
                    #tri
                    // pair chunks: four weights per byte, the last one cut at K
                    let pairs = &bytes[po..];
                    let po_out = &mut o[pb..];
                    let whole = po_out.len() / 4;
                    for (o4, &b) in po_out.chunks_exact_mut(4).zip(pairs) {
                        o4.copy_from_slice(&pair[b as usize]);
                    }
                    let tail = po_out.len() % 4;
                    if tail > 0 {
                        let w = &pair[pairs[whole] as usize];
                        po_out[4 * whole..].copy_from_slice(&w[..tail]);
                    }
                }
            }
        }
    }
}

/// `flush(acc, a, b, neg)`: add two int16 accumulators (plus the TL2 negative-triple counts
/// `neg`, u8 lanes in the accumulators' byte order) into the int32 row accumulators (AVX-512:
/// `flush(acc, a, b)` for the pair lookups, `flush16` for the signed triple lookups).
fn gen_flush(isa: Isa, triples: bool, tf: &TokenStream) -> TokenStream {
    match isa {
        Isa::Scalar => quote! {},
        Isa::Avx2 => quote! {
            /// `a` holds rows 0-7 | 16-23, `b` rows 8-15 | 24-31 (vpunpck{l,h}bw order).
            #[inline]
            #tf
            unsafe fn flush(acc: &mut [i32; BM], a: __m256i, b: __m256i, neg: __m256i) {
                let z = _mm256_setzero_si256();
                let a = _mm256_add_epi16(a, _mm256_unpacklo_epi8(neg, z));
                let b = _mm256_add_epi16(b, _mm256_unpackhi_epi8(neg, z));
                let parts = [
                    _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)),
                    _mm256_cvtepi16_epi32(_mm256_castsi256_si128(b)),
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(a)),
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(b)),
                ];
                let p = acc.as_mut_ptr() as *mut __m256i;
                for (i, v) in parts.into_iter().enumerate() {
                    _mm256_storeu_si256(p.add(i), _mm256_add_epi32(_mm256_loadu_si256(p.add(i)), v));
                }
            }
        },
        Isa::Avx512 => {
            let flush16 = if triples {
                quote! {
                    /// Add an int16 accumulator of 32 rows in row order (the signed triple
                    /// lookups) into the int32 row accumulators.
                    #[inline]
                    #tf
                    unsafe fn flush16(acc: &mut [i32; BM], a: __m512i) {
                        let p = acc.as_mut_ptr() as *mut __m512i;
                        let lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(a));
                        let hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(a));
                        _mm512_storeu_si512(p as *mut _, _mm512_add_epi32(_mm512_loadu_si512(p as *const _), lo));
                        _mm512_storeu_si512(p.add(1) as *mut _, _mm512_add_epi32(_mm512_loadu_si512(p.add(1) as *const _), hi));
                    }
                }
            } else {
                quote! {}
            };
            quote! {
                /// 128-bit lanes of `a`: rows 0-7 of chunk A | rows 0-7 of chunk B | rows 16-23 A |
                /// rows 16-23 B; `b` the same for rows 8-15 and 24-31 (the pair lookups).
                #[inline]
                #tf
                unsafe fn flush(acc: &mut [i32; BM], a: __m512i, b: __m512i) {
                    let fold = |v: __m512i| {
                        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
                    };
                    let parts = [
                        fold(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(a))),
                        fold(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(b))),
                        fold(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(a))),
                        fold(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(b))),
                    ];
                    let p = acc.as_mut_ptr() as *mut __m256i;
                    for (i, v) in parts.into_iter().enumerate() {
                        _mm256_storeu_si256(p.add(i), _mm256_add_epi32(_mm256_loadu_si256(p.add(i)), v));
                    }
                }
                #flush16
            }
        }
        Isa::Neon => quote! {
            /// `a[i]` holds rows `8i..8i+8`; `neg[h]` the counts of rows `16h..16h+16`.
            #[inline]
            #tf
            unsafe fn flush(acc: &mut [i32; BM], a: [int16x8_t; 4], neg: [uint8x16_t; 2]) {
                let z = vdupq_n_u8(0);
                let p = acc.as_mut_ptr();
                for i in 0..4 {
                    let n = if i % 2 == 0 {
                        vzip1q_u8(neg[i / 2], z)
                    } else {
                        vzip2q_u8(neg[i / 2], z)
                    };
                    let v = vaddq_s16(a[i], vreinterpretq_s16_u8(n));
                    let lo = vmovl_s16(vget_low_s16(v));
                    let hi = vmovl_high_s16(v);
                    vst1q_s32(p.add(8 * i), vaddq_s32(vld1q_s32(p.add(8 * i)), lo));
                    vst1q_s32(p.add(8 * i + 4), vaddq_s32(vld1q_s32(p.add(8 * i + 4)), hi));
                }
            }
        },
        _ => unreachable!(),
    }
}

fn idents(p: &str, c: usize) -> Vec<Ident> {
    (0..c).map(|j| format_ident!("{}{}", p, j)).collect()
}

/// One tile: `acc[j][r] += sum_k w[row0 + r, k] * q[col + j, k]` for the 32 rows of a layout
/// tile `wt` and `c` activation rows whose table areas start at `t[j]`.
fn gen_tile(isa: Isa, triples: bool, c: usize, tf: &TokenStream) -> TokenStream {
    let name = format_ident!("tile_{}", c);
    let cl = lit(c);
    let (tri, pairs) = match isa {
        Isa::Scalar => (scalar_triples(c), scalar_pairs(c)),
        Isa::Avx2 => (avx2_triples(c), avx2_pairs(c)),
        Isa::Avx512 => {
            let ts = idents("t", c);
            let js = (0..c).map(lit);
            let tri = avx512_signed_triples(1, c);
            (
                quote! {
                    let (w0, sg0) = (w, sg);
                    #(let #ts = t[#js];)*
                    #tri
                },
                avx512_pairs(c),
            )
        }
        Isa::Neon => (neon_triples(c), neon_pairs(c)),
        _ => unreachable!(),
    };
    // x86: software prefetch of the index stream into later tiles (tiles are contiguous)
    let pf = match isa {
        Isa::Avx2 | Isa::Avx512 => {
            quote! { let pf = crate::prefetch_distance(g.tile_bytes, true); }
        }
        _ => quote! {},
    };
    let tri = if triples {
        quote! {{
            let nmag = g.t / 2;
            let w = wt;
            let sg = wt.add(g.sign_offset());
            #tri
        }}
    } else {
        quote! {}
    };
    quote! {
        /// Integer accumulators of one layout tile times `C` activation rows.
        #[inline]
        #tf
        unsafe fn #name(
            wt: *const u8, g: &LutGeometry, t: [*const i8; #cl], tri_bytes: usize,
            acc: &mut [[i32; BM]; #cl],
        ) {
            #pf
            #tri
            {
                let nch = g.pair_elems / 4;
                let w = wt.add(g.pair_offset());
                let t: [*const i8; #cl] = core::array::from_fn(|j| t[j].add(tri_bytes));
                #pairs
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar: the same table lookups, one row at a time.
// ---------------------------------------------------------------------------------------------

fn scalar_entry() -> TokenStream {
    quote! {
        #[inline(always)]
        unsafe fn entry(p: *const i8, i: u8) -> i32 {
            ((*p.add(16 + i as usize) as i32) << 8) | (*p.add(i as usize) as u8 as i32)
        }
    }
}

fn scalar_pairs(c: usize) -> TokenStream {
    let cl = lit(c);
    let entry = scalar_entry();
    quote! {
        #entry
        for ch in 0..nch {
            for r in 0..BM {
                let b = *w.add(ch * BM + r);
                for j in 0..#cl {
                    let p = t[j].add(ch * 64);
                    acc[j][r] += entry(p, b & 15) + entry(p.add(32), b >> 4);
                }
            }
        }
    }
}

fn scalar_triples(c: usize) -> TokenStream {
    let cl = lit(c);
    let entry = scalar_entry();
    quote! {
        #entry
        for ch in 0..nmag {
            for r in 0..BM {
                let b = *w.add(ch * BM + r);
                let s = *sg.add((ch / 4) * BM + r) as u32;
                // sign masks: 0 or -1
                let m0 = -(((s >> ((2 * ch) % 8)) & 1) as i32);
                let m1 = -(((s >> ((2 * ch + 1) % 8)) & 1) as i32);
                for j in 0..#cl {
                    let p = t[j].add(ch * 64);
                    acc[j][r] += ((entry(p, b & 15) ^ m0) - m0) + ((entry(p.add(32), b >> 4) ^ m1) - m1);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2: one chunk (32 rows) per ymm; tables broadcast to both 128-bit lanes.
// ---------------------------------------------------------------------------------------------

/// Per-column lookups of one AVX2 chunk step; `signed` xors with the masks `ml`, `mh`.
fn avx2_step(c: usize, signed: bool) -> TokenStream {
    let t = idents("t", c);
    let a = idents("a", c);
    let b = idents("b", c);
    let (xl, xh) = if signed {
        (quote! { ml }, quote! { mh })
    } else {
        (quote! { z }, quote! { z })
    };
    quote! {
        let v = _mm256_loadu_si256(w.add(ch * BM) as *const __m256i);
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(ch * BM + pf) as *const i8);
        let il = _mm256_and_si256(v, nib);
        let ih = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
        #(
            let p = #t.add(ch * 64) as *const __m128i;
            let l0 = _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(p)), il), #xl);
            let h0 = _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(1))), il), #xl);
            let l1 = _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(2))), ih), #xh);
            let h1 = _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(3))), ih), #xh);
            #a = _mm256_add_epi16(#a, _mm256_add_epi16(_mm256_unpacklo_epi8(l0, h0), _mm256_unpacklo_epi8(l1, h1)));
            #b = _mm256_add_epi16(#b, _mm256_add_epi16(_mm256_unpackhi_epi8(l0, h0), _mm256_unpackhi_epi8(l1, h1)));
        )*
    }
}

fn avx2_common(c: usize) -> (TokenStream, TokenStream, TokenStream) {
    let t = idents("t", c);
    let a = idents("a", c);
    let b = idents("b", c);
    let js = (0..c).map(lit);
    let setup = quote! {
        let nib = _mm256_set1_epi8(0x0f);
        let z = _mm256_setzero_si256();
        #(let #t = t[#js];)*
    };
    let zero = quote! { #(let mut #a = z; let mut #b = z;)* let mut neg = z; };
    let js = (0..c).map(lit);
    let fl = quote! { #(flush(&mut acc[#js], #a, #b, neg);)* };
    (setup, zero, fl)
}

fn avx2_pairs(c: usize) -> TokenStream {
    let (setup, zero, fl) = avx2_common(c);
    let step = avx2_step(c, false);
    quote! {
        #setup
        let mut ch = 0usize;
        while ch < nch {
            let end = if nch - ch > FLUSH_STEPS { ch + FLUSH_STEPS } else { nch };
            #zero
            while ch < end {
                #step
                ch += 1;
            }
            #fl
        }
    }
}

fn avx2_triples(c: usize) -> TokenStream {
    let (setup, zero, fl) = avx2_common(c);
    let step = avx2_step(c, true);
    let unrolled = (0..4).map(|cc| {
        let (bl, bh) = (
            Literal::u8_unsuffixed(1u8 << (2 * cc)),
            Literal::u8_unsuffixed(1u8 << (2 * cc + 1)),
        );
        let ccl = lit(cc);
        quote! {{
            let ch = grp * 4 + #ccl;
            let bl = _mm256_set1_epi8(#bl as u8 as i8);
            let bh = _mm256_set1_epi8(#bh as u8 as i8);
            let ml = _mm256_cmpeq_epi8(_mm256_and_si256(s, bl), bl);
            let mh = _mm256_cmpeq_epi8(_mm256_and_si256(s, bh), bh);
            neg = _mm256_sub_epi8(neg, _mm256_add_epi8(ml, mh));
            #step
        }}
    });
    quote! {
        #setup
        // a sign chunk covers 8 triples = 4 magnitude chunks
        let groups = nmag / 4;
        let flush_groups = FLUSH_STEPS / 4;
        let mut grp = 0usize;
        while grp < groups {
            let end = if groups - grp > flush_groups { grp + flush_groups } else { groups };
            #zero
            while grp < end {
                let s = _mm256_loadu_si256(sg.add(grp * BM) as *const __m256i);
                _mm_prefetch::<_MM_HINT_T0>(sg.wrapping_add(grp * BM + pf) as *const i8);
                #(#unrolled)*
                grp += 1;
            }
            #fl
        }
        let rem = nmag - groups * 4;
        if rem > 0 {
            #zero
            let s = _mm256_loadu_si256(sg.add(groups * BM) as *const __m256i);
            for cc in 0..rem {
                let ch = groups * 4 + cc;
                let bl = _mm256_set1_epi8((1u8 << (2 * cc)) as i8);
                let bh = _mm256_set1_epi8((1u8 << (2 * cc + 1)) as i8);
                let ml = _mm256_cmpeq_epi8(_mm256_and_si256(s, bl), bl);
                let mh = _mm256_cmpeq_epi8(_mm256_and_si256(s, bh), bh);
                neg = _mm256_sub_epi8(neg, _mm256_add_epi8(ml, mh));
                #step
            }
            #fl
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 BW pair lookups (TL1, TL2's remainder): two chunks (chunk A = 2d, chunk B = 2d + 1)
// per zmm. The index vector's 128-bit lanes are reordered to [A rows 0-15 | B rows 0-15 |
// A rows 16-31 | B rows 16-31] (one vshufi64x2 shared by all columns) so that a 32-byte table
// pair [unit of A | unit of B] broadcast with vbroadcasti64x4 (a plain load) serves every lane.
// ---------------------------------------------------------------------------------------------

fn avx512_common(c: usize) -> (TokenStream, TokenStream, TokenStream) {
    let t = idents("t", c);
    let a = idents("a", c);
    let b = idents("b", c);
    let js = (0..c).map(lit);
    let setup = quote! {
        let nib = _mm512_set1_epi8(0x0f);
        let z = _mm512_setzero_si512();
        #(let #t = t[#js];)*
    };
    let zero = quote! { #(let mut #a = z; let mut #b = z;)* };
    let js = (0..c).map(lit);
    let fl = quote! { #(flush(&mut acc[#js], #a, #b);)* };
    (setup, zero, fl)
}

/// Load dchunk `dc` (two chunks, or one zero-extended when `full` is false: the missing
/// units' tables are zero, so their lanes add nothing).
fn avx512_load(full: TokenStream) -> TokenStream {
    quote! {
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(dc * 2 * BM + pf) as *const i8);
        let v = if #full {
            _mm512_loadu_si512(w.add(dc * 2 * BM) as *const _)
        } else {
            _mm512_zextsi256_si512(_mm256_loadu_si256(w.add(dc * 2 * BM) as *const __m256i))
        };
    }
}

/// Layout tiles per AVX-512 GEMV step (`tile_rows`): four concurrent streams.
const ROW_TILES: usize = 4;

/// Pair steps per byte-sum group (`PAIR_BYTE_STEPS` in the generated code): the AVX-512 pair
/// tables hold `e & 31` and `e >> 5` of entries `e` in `[-255, 256]` (`put::<true>`), i.e.
/// low parts in `[0, 31]` and high parts in `[-8, 8]`; two units per step add at most 62 and
/// `[-16, 16]` per byte lane, so four steps stay within `u8` (248) and `i8` (64).
const PAIR_BYTE_STEPS: usize = 4;

/// `v` (already loaded) -> pair lookups for dchunk `dc`, summed in bytes into `lo`/`hi`: four
/// `vpshufb` and two byte adds per column, no interleave (the shuffle port is the limit).
fn avx512_pair_step(c: usize) -> TokenStream {
    let t = idents("t", c);
    let lo = idents("lo", c);
    let hi = idents("hi", c);
    quote! {
        let v = _mm512_shuffle_i64x2::<0b11_01_10_00>(v, v);
        let il = _mm512_and_si512(v, nib);
        let ih = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
        #(
            let p = #t.add(dc * 128) as *const __m256i;
            let l0 = _mm512_shuffle_epi8(_mm512_broadcast_i64x4(_mm256_loadu_si256(p)), il);
            let h0 = _mm512_shuffle_epi8(_mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(1))), il);
            let l1 = _mm512_shuffle_epi8(_mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(2))), ih);
            let h1 = _mm512_shuffle_epi8(_mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(3))), ih);
            #lo = _mm512_add_epi8(#lo, _mm512_add_epi8(l0, l1));
            #hi = _mm512_add_epi8(#hi, _mm512_add_epi8(h0, h1));
        )*
    }
}

fn avx512_pairs(c: usize) -> TokenStream {
    let (setup, zero, fl) = avx512_common(c);
    let step = avx512_pair_step(c);
    let load_full = avx512_load(quote! { true });
    let load_any = avx512_load(quote! { 2 * dc + 1 < nch });
    let body = avx512_pair_loop(c, zero, load_full, load_any, step, fl);
    quote! {
        #setup
        #body
    }
}

/// The pair loop of the AVX-512 tiles over `u` accumulator sets (`lo{i}`/`hi{i}` byte sums
/// widened into `a{i}`/`b{i}`): FLUSH_STEPS dchunks per flush, PAIR_BYTE_STEPS per widening,
/// then an odd last chunk. `zero`/`fl` start and flush the int16 sums, `load_*` load dchunk
/// `dc` (all of it / the last, maybe half), `step` looks it up.
fn avx512_pair_loop(
    u: usize,
    zero: TokenStream,
    load_full: TokenStream,
    load_any: TokenStream,
    step: TokenStream,
    fl: TokenStream,
) -> TokenStream {
    let a = idents("a", u);
    let b = idents("b", u);
    let lo = idents("lo", u);
    let hi = idents("hi", u);
    let zero_bytes = quote! { #(let mut #lo = z; let mut #hi = z;)* };
    // byte sums -> int16 lanes in the order of the interleaved layout (vpunpck{l,h}bw):
    // low parts zero-extended, high parts as `hi << 8 >> 3 = hi * 32`
    let widen = quote! {
        #(
            #a = _mm512_add_epi16(#a, _mm512_add_epi16(
                _mm512_unpacklo_epi8(#lo, z),
                _mm512_srai_epi16::<3>(_mm512_unpacklo_epi8(z, #hi)),
            ));
            #b = _mm512_add_epi16(#b, _mm512_add_epi16(
                _mm512_unpackhi_epi8(#lo, z),
                _mm512_srai_epi16::<3>(_mm512_unpackhi_epi8(z, #hi)),
            ));
        )*
    };
    let bs = lit(PAIR_BYTE_STEPS);
    quote! {
        let nd = nch / 2;
        let mut dc = 0usize;
        while dc < nd {
            let end = if nd - dc > FLUSH_STEPS { dc + FLUSH_STEPS } else { nd };
            #zero
            while dc < end {
                let group_end = if end - dc > #bs { dc + #bs } else { end };
                #zero_bytes
                while dc < group_end {
                    #load_full
                    #step
                    dc += 1;
                }
                #widen
            }
            #fl
        }
        if nch % 2 == 1 {
            let dc = nd;
            #zero
            #zero_bytes
            #load_any
            #step
            #widen
            #fl
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 TL2 triples: signed tables looked up with `vpermw`. A chunk's 32 index bytes are
// zero-extended to 32 words (word r = row r), so the low-nibble triple's magnitude sits in
// bits 0-3 of its row's word (the high-nibble triple's after one shift); the triple's sign
// bit, moved to bit 4, completes a 5-bit index into its 32-word table (`put_signed`: the 16
// sums, then their negations). One `vpermw` per triple and 32 rows gives the signed int16
// sums in row order: no byte split, no interleave, no sign correction, and the index vectors
// serve every activation row (`c > 1`) and the tables every layout tile (`r > 1`).
// ---------------------------------------------------------------------------------------------

/// Sign bit `j` (0..8) of every word's low byte moved to bit 4 (the other bits are don't-cares:
/// the select keeps bit 4 and up of it, and `vpermw` reads bits 0-4 of its index).
fn sign_to_bit4(s: &Ident, j: usize) -> TokenStream {
    match j {
        0..=3 => {
            let n = lit(4 - j);
            quote! { _mm512_slli_epi16::<#n>(#s) }
        }
        4 => quote! { #s },
        _ => {
            let n = lit(j - 4);
            quote! { _mm512_srli_epi16::<#n>(#s) }
        }
    }
}

/// The triple part of `r` layout tiles (`w{i}`: magnitude chunks, `sg{i}`: sign chunks) times
/// `c` activation rows (`t{j}`: triple tables, `tri_area` layout), added into
/// `acc[i * c + j]`; `nmag` chunks, `pf` bytes of prefetch ahead in each tile's streams. A
/// sign chunk covers 8 triples = 4 magnitude chunks (a group, unrolled); FLUSH_STEPS chunks
/// (two triples per int16 lane each, `|e| <= 384`) between widenings.
fn avx512_signed_triples(r: usize, c: usize) -> TokenStream {
    let w = idents("w", r);
    let sg = idents("sg", r);
    let s = idents("s", r);
    let t = idents("t", c);
    let ta = idents("ta", c);
    let tb = idents("tb", c);
    let acc_id = |i: usize, j: usize| format_ident!("a{}_{}", i, j);
    let accs: Vec<Ident> = (0..r)
        .flat_map(|i| (0..c).map(move |j| acc_id(i, j)))
        .collect();
    let slots: Vec<Literal> = (0..r * c).map(lit).collect();
    // one chunk `ch`; `sh(i, h)`: tile i's sign vector with the bit of triple `2ch + h` at bit 4
    let chunk = |ch: TokenStream, sh: &dyn Fn(usize, usize) -> TokenStream| {
        let per_tile = (0..r).map(|i| {
            let wi = &w[i];
            let (s0, s1) = (sh(i, 0), sh(i, 1));
            let looks = (0..c).map(|j| {
                let (a, ta, tb) = (acc_id(i, j), &ta[j], &tb[j]);
                quote! {
                    #a = _mm512_add_epi16(#a, _mm512_add_epi16(
                        _mm512_permutexvar_epi16(i0, #ta),
                        _mm512_permutexvar_epi16(i1, #tb),
                    ));
                }
            });
            quote! {{
                let z = _mm512_cvtepu8_epi16(_mm256_loadu_si256(#wi.add(ch * BM) as *const __m256i));
                // bits 0-3 from the magnitude, bit 4 (and up) from the shifted signs
                let i0 = _mm512_ternarylogic_epi32::<0xE4>(z, #s0, low4);
                let i1 = _mm512_ternarylogic_epi32::<0xE4>(_mm512_srli_epi16::<4>(z), #s1, low4);
                #(#looks)*
            }}
        });
        quote! {{
            let ch = #ch;
            #(
                let #ta = _mm512_loadu_si512(#t.add(ch * 128) as *const _);
                let #tb = _mm512_loadu_si512(#t.add(ch * 128 + 64) as *const _);
            )*
            #(#per_tile)*
        }}
    };
    let unrolled = (0..4).map(|cc| {
        let ccl = lit(cc);
        let sh = |i: usize, h: usize| sign_to_bit4(&s[i], 2 * cc + h);
        chunk(quote! { grp * 4 + #ccl }, &sh)
    });
    let sh_rt = |i: usize, h: usize| {
        let si = &s[i];
        let hl = lit(h);
        quote! { shift_sign(#si, 2 * cc + #hl) }
    };
    let last = chunk(quote! { groups * 4 + cc }, &sh_rt);
    let signs = |grp: TokenStream| {
        quote! {
            #(let #s = _mm512_cvtepu8_epi16(_mm256_loadu_si256(#sg.add(#grp * BM) as *const __m256i));)*
        }
    };
    let signs_grp = signs(quote! { grp });
    let signs_last = signs(quote! { groups });
    let zero = quote! { #(let mut #accs = zero;)* };
    let fl = quote! { #(flush16(&mut acc[#slots], #accs);)* };
    quote! {
        let low4 = _mm512_set1_epi16(0x0f);
        let zero = _mm512_setzero_si512();
        // the partial group's sign bits (run-time bit position)
        let shift_sign = |s: __m512i, j: usize| {
            if j < 4 {
                _mm512_sll_epi16(s, _mm_cvtsi64_si128((4 - j) as i64))
            } else {
                _mm512_srl_epi16(s, _mm_cvtsi64_si128((j - 4) as i64))
            }
        };
        let groups = nmag / 4;
        let flush_groups = FLUSH_STEPS / 4;
        let mut grp = 0usize;
        while grp < groups {
            let end = if groups - grp > flush_groups { grp + flush_groups } else { groups };
            #zero
            while grp < end {
                #(
                    _mm_prefetch::<_MM_HINT_T0>(#w.wrapping_add(grp * 4 * BM + pf) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(#w.wrapping_add(grp * 4 * BM + 64 + pf) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(#sg.wrapping_add(grp * BM + pf) as *const i8);
                )*
                #signs_grp
                #(#unrolled)*
                grp += 1;
            }
            #fl
        }
        let rem = nmag - groups * 4;
        if rem > 0 {
            #zero
            #signs_last
            for cc in 0..rem {
                #last
            }
            #fl
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 GEMV over `r` layout tiles at once (one activation row): every step loads one index
// vector of each tile and the four table vectors once for all of them. The driver takes the
// tiles from `r` evenly spaced parts of the row range, so a step reads `r` concurrent DRAM
// streams (faster than one: see the block-format GEMV in dot.rs), and each table load
// serves `r` tiles (the tables of K = 6912, 110 KiB, do not stay in L1). Same lookups, same
// byte/int16 sums and flushes per tile as the one-tile loops above.
// ---------------------------------------------------------------------------------------------

/// Load dchunk `dc` of every tile (see `avx512_load`).
fn avx512_rows_load(r: usize, full: TokenStream) -> TokenStream {
    let v = idents("v", r);
    let w = idents("w", r);
    quote! {
        #(
            _mm_prefetch::<_MM_HINT_T0>(#w.wrapping_add(dc * 2 * BM + pf) as *const i8);
            let #v = if #full {
                _mm512_loadu_si512(#w.add(dc * 2 * BM) as *const _)
            } else {
                _mm512_zextsi256_si512(_mm256_loadu_si256(#w.add(dc * 2 * BM) as *const __m256i))
            };
        )*
    }
}

/// The shared tables of dchunk `dc`, then per tile the lookups of `avx512_pair_step`.
fn avx512_rows_step(r: usize) -> TokenStream {
    let per = (0..r).map(|i| {
        let v = format_ident!("v{}", i);
        let (lo, hi) = (format_ident!("lo{}", i), format_ident!("hi{}", i));
        quote! {{
            let v = _mm512_shuffle_i64x2::<0b11_01_10_00>(#v, #v);
            let il = _mm512_and_si512(v, nib);
            let ih = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
            let l0 = _mm512_shuffle_epi8(tb[0], il);
            let h0 = _mm512_shuffle_epi8(tb[1], il);
            let l1 = _mm512_shuffle_epi8(tb[2], ih);
            let h1 = _mm512_shuffle_epi8(tb[3], ih);
            #lo = _mm512_add_epi8(#lo, _mm512_add_epi8(l0, l1));
            #hi = _mm512_add_epi8(#hi, _mm512_add_epi8(h0, h1));
        }}
    });
    quote! {
        let p = t0.add(dc * 128) as *const __m256i;
        let tb = [
            _mm512_broadcast_i64x4(_mm256_loadu_si256(p)),
            _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(1))),
            _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(2))),
            _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(3))),
        ];
        #(#per)*
    }
}

/// The pair part over `r` tiles (`w0..`: the tiles' pair chunks, `t0`: the pair tables).
fn avx512_rows_pairs(r: usize) -> TokenStream {
    let a = idents("a", r);
    let b = idents("b", r);
    let is = (0..r).map(lit);
    let zero = quote! { #(let mut #a = z; let mut #b = z;)* };
    let fl = quote! { #(flush(&mut acc[#is], #a, #b);)* };
    let step = avx512_rows_step(r);
    let load_full = avx512_rows_load(r, quote! { true });
    let load_any = avx512_rows_load(r, quote! { 2 * dc + 1 < nch });
    let body = avx512_pair_loop(r, zero, load_full, load_any, step, fl);
    quote! {
        let nib = _mm512_set1_epi8(0x0f);
        let z = _mm512_setzero_si512();
        #body
    }
}

/// `tile_rows`: `acc[i][r] += sum_k w[tile i row r, k] * q[k]` for `ROW_TILES` layout tiles
/// `wt[i]` and one activation row whose table area starts at `t` (AVX-512 GEMV).
fn gen_tile_rows(triples: bool, tf: &TokenStream) -> TokenStream {
    let r = ROW_TILES;
    let rl = lit(r);
    let w = idents("w", r);
    let sg = idents("sg", r);
    let is: Vec<Literal> = (0..r).map(lit).collect();
    let tri = if triples {
        let body = avx512_signed_triples(r, 1);
        quote! {{
            let nmag = g.t / 2;
            let t0 = t;
            #(let #w = wt[#is]; let #sg = wt[#is].add(g.sign_offset());)*
            #body
        }}
    } else {
        quote! {}
    };
    let pairs = avx512_rows_pairs(r);
    quote! {
        /// Integer accumulators of `ROW_TILES` layout tiles times one activation row.
        #[inline]
        #tf
        unsafe fn tile_rows(
            wt: [*const u8; #rl], g: &LutGeometry, t: *const i8, tri_bytes: usize,
            acc: &mut [[i32; BM]; #rl],
        ) {
            // per stream a step advances one chunk pair: prefetch a few KiB ahead in each
            let pf = crate::prefetch_distance(0, false);
            #tri
            {
                let nch = g.pair_elems / 4;
                #(let #w = wt[#is].add(g.pair_offset());)*
                let t0 = t.add(tri_bytes);
                #pairs
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NEON: a chunk is two q registers (rows 0-15, 16-31); `tbl` looks 16 rows up at once.
// ---------------------------------------------------------------------------------------------

fn neon_step(c: usize, signed: bool) -> TokenStream {
    let t = idents("t", c);
    let a = idents("a", c);
    let (xl, xh) = if signed {
        (quote! { ml[h] }, quote! { mh[h] })
    } else {
        (quote! { z }, quote! { z })
    };
    quote! {
        let v = [vld1q_u8(w.add(ch * BM)), vld1q_u8(w.add(ch * BM + 16))];
        let il = [vandq_u8(v[0], nib), vandq_u8(v[1], nib)];
        let ih = [vshrq_n_u8::<4>(v[0]), vshrq_n_u8::<4>(v[1])];
        #(
            let tb = vld1q_u8_x4(#t.add(ch * 64) as *const u8);
            for h in 0..2 {
                let l0 = veorq_u8(vqtbl1q_u8(tb.0, il[h]), #xl);
                let h0 = veorq_u8(vqtbl1q_u8(tb.1, il[h]), #xl);
                let l1 = veorq_u8(vqtbl1q_u8(tb.2, ih[h]), #xh);
                let h1 = veorq_u8(vqtbl1q_u8(tb.3, ih[h]), #xh);
                let lo = vaddq_s16(vreinterpretq_s16_u8(vzip1q_u8(l0, h0)), vreinterpretq_s16_u8(vzip1q_u8(l1, h1)));
                let hi = vaddq_s16(vreinterpretq_s16_u8(vzip2q_u8(l0, h0)), vreinterpretq_s16_u8(vzip2q_u8(l1, h1)));
                #a[2 * h] = vaddq_s16(#a[2 * h], lo);
                #a[2 * h + 1] = vaddq_s16(#a[2 * h + 1], hi);
            }
        )*
    }
}

fn neon_common(c: usize) -> (TokenStream, TokenStream, TokenStream) {
    let t = idents("t", c);
    let a = idents("a", c);
    let js = (0..c).map(lit);
    let setup = quote! {
        let nib = vdupq_n_u8(0x0f);
        let z = vdupq_n_u8(0);
        let z16 = vdupq_n_s16(0);
        #(let #t = t[#js];)*
    };
    let zero = quote! { #(let mut #a = [z16; 4];)* let mut neg = [z; 2]; };
    let js = (0..c).map(lit);
    let fl = quote! { #(flush(&mut acc[#js], #a, neg);)* };
    (setup, zero, fl)
}

fn neon_pairs(c: usize) -> TokenStream {
    let (setup, zero, fl) = neon_common(c);
    let step = neon_step(c, false);
    quote! {
        #setup
        let mut ch = 0usize;
        while ch < nch {
            let end = if nch - ch > FLUSH_STEPS { ch + FLUSH_STEPS } else { nch };
            #zero
            while ch < end {
                #step
                ch += 1;
            }
            #fl
        }
    }
}

fn neon_triples(c: usize) -> TokenStream {
    let (setup, zero, fl) = neon_common(c);
    let step = neon_step(c, true);
    let masks = quote! {
        let ml = [vtstq_u8(s[0], bl), vtstq_u8(s[1], bl)];
        let mh = [vtstq_u8(s[0], bh), vtstq_u8(s[1], bh)];
        // a set mask is 0xff = -1: subtracting it counts the negative triple
        neg[0] = vsubq_u8(vsubq_u8(neg[0], ml[0]), mh[0]);
        neg[1] = vsubq_u8(vsubq_u8(neg[1], ml[1]), mh[1]);
    };
    let unrolled = (0..4).map(|cc| {
        let (bl, bh) = (
            Literal::u8_unsuffixed(1u8 << (2 * cc)),
            Literal::u8_unsuffixed(1u8 << (2 * cc + 1)),
        );
        let ccl = lit(cc);
        quote! {{
            let ch = grp * 4 + #ccl;
            let bl = vdupq_n_u8(#bl);
            let bh = vdupq_n_u8(#bh);
            #masks
            #step
        }}
    });
    quote! {
        #setup
        let groups = nmag / 4;
        let flush_groups = FLUSH_STEPS / 4;
        let mut grp = 0usize;
        while grp < groups {
            let end = if groups - grp > flush_groups { grp + flush_groups } else { groups };
            #zero
            while grp < end {
                let s = [vld1q_u8(sg.add(grp * BM)), vld1q_u8(sg.add(grp * BM + 16))];
                #(#unrolled)*
                grp += 1;
            }
            #fl
        }
        let rem = nmag - groups * 4;
        if rem > 0 {
            #zero
            let s = [vld1q_u8(sg.add(groups * BM)), vld1q_u8(sg.add(groups * BM + 16))];
            for cc in 0..rem {
                let ch = groups * 4 + cc;
                let bl = vdupq_n_u8(1u8 << (2 * cc));
                let bh = vdupq_n_u8(1u8 << (2 * cc + 1));
                #masks
                #step
            }
            #fl
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The matmul entry points.
// ---------------------------------------------------------------------------------------------

fn gen_matmul(t: Tile, row_tiles: bool, tf: &TokenStream) -> TokenStream {
    let name = format_ident!("mm{}x{}", t.rows, t.cols);
    // GEMV with `tile_rows`: the range's layout tiles as ROW_TILES evenly spaced streams
    let gemv = if row_tiles && t.cols == 1 {
        let rt = lit(ROW_TILES);
        quote! {
            if m == 1 {
                let first = r0 / BM;
                let tiles = (r1 - r0).div_ceil(BM);
                let per = tiles / #rt;
                for i in 0..per {
                    let ts: [usize; #rt] = core::array::from_fn(|s| first + s * per + i);
                    let mut acc = [[0i32; BM]; #rt];
                    tile_rows(ts.map(|ti| w.add(ti * g.tile_bytes)), &g, lut, tri_bytes, &mut acc);
                    for (a, &ti) in acc.iter().zip(&ts) {
                        let row = ti * BM;
                        finish(a, 0, row, if r1 - row < BM { r1 - row } else { BM });
                    }
                }
                for ti in first + #rt * per..first + tiles {
                    let row = ti * BM;
                    let mut acc = [[0i32; BM]; 1];
                    tile_1(w.add(ti * g.tile_bytes), &g, [lut], tri_bytes, &mut acc);
                    finish(&acc[0], 0, row, if r1 - row < BM { r1 - row } else { BM });
                }
                return;
            }
        }
    } else {
        quote! {}
    };
    let full = format_ident!("tile_{}", t.cols);
    let cl = lit(t.cols);
    let doc = format!(
        " Matmul over weight rows `r0..r1` (layout tiles of {BM} rows) and every activation row, \
         {} activation row(s) per table pass.",
        t.cols
    );
    let body = quote! {
            let tri_bytes = tri_area(g.t);
            let row_bytes = tri_bytes + area(g.pair_elems / 2);
            let lut = acts.lut.as_ptr();
            let m = acts.m;
            let finish = |acc: &[i32; BM], col: usize, row: usize, rows: usize| {
                let s = *acts.scale.get_unchecked(col);
                let o = out.add(col * n + row);
                for r in 0..rows {
                    *o.add(r) = acc[r] as f32 / s * ws;
                }
            };
            #gemv
            // Column blocks whose tables stay in L2 (about 128 KiB) while every row tile of
            // r0..r1 streams past them; inside a block, C columns share each index load.
            let block = ((128 << 10) / row_bytes.max(1) / #cl).max(1) * #cl;
            let mut c0 = 0;
            while c0 < m {
                let c1 = if m - c0 > block { c0 + block } else { m };
                let mut row = r0;
                while row < r1 {
                    let wt = w.add(row / BM * g.tile_bytes);
                    let rows = if r1 - row < BM { r1 - row } else { BM };
                    let mut col = c0;
                    while col + #cl <= c1 {
                        let mut acc = [[0i32; BM]; #cl];
                        let t: [*const i8; #cl] = core::array::from_fn(|j| lut.add((col + j) * row_bytes));
                        #full(wt, &g, t, tri_bytes, &mut acc);
                        for (j, a) in acc.iter().enumerate() {
                            finish(a, col + j, row, rows);
                        }
                        col += #cl;
                    }
                    while col < c1 {
                        let mut acc = [[0i32; BM]; 1];
                        tile_1(wt, &g, [lut.add(col * row_bytes)], tri_bytes, &mut acc);
                        finish(&acc[0], col, row, rows);
                        col += 1;
                    }
                    row += BM;
                }
                c0 = c1;
            }
    };
    matmul_entry(&name, &doc, tf, body)
}

/// A matmul entry point of a LUT row: the signature and safety contract every tile kind
/// shares, the geometry `g` and the tensor scale `ws`, then `body`.
fn matmul_entry(name: &Ident, doc: &str, tf: &TokenStream, body: TokenStream) -> TokenStream {
    quote! {
        #[doc = #doc]
        ///
        /// # Safety
        /// `w` is a valid `n x k` tensor of this format, `acts` was made by [`prepare`] for the
        /// same `k`, `r0` is a multiple of `BM`, `r0 <= r1 <= n`, and `out` is valid for writes
        /// at `m * n + row` for every activation row `m` and `row` in `r0..r1` (no other thread
        /// writes those).
        #tf
        pub unsafe fn #name(
            w: *const u8, n: usize, k: usize, acts: &PreparedActs, r0: usize, r1: usize, out: *mut f32,
        ) {
            let g = LutGeometry::new(SPEC, n, k);
            let tp = w.add(g.codes_bytes());
            let ws = f32::from_le_bytes([*tp, *tp.add(1), *tp.add(2), *tp.add(3)]);
            #body
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Panel tiles (AVX-512 VNNI): a layout tile's index bytes decoded straight into the panel.
// ---------------------------------------------------------------------------------------------

/// A panel matmul (`Tile::panel`, 32 rows = one layout tile): the index chunks of a tile hold
/// one byte per row, so they decode straight into panel vectors (16 rows of four codes per
/// zmm) with one dword lookup per unit; TL2 triples apply their sign bits with a masked
/// `0x00020202 - codes`, and four triples' twelve codes are packed into three dwords (shifts
/// and ors), so that no slot is spent on padding. The activations are `prepare`'s slots, and
/// `crate::panel::run` does the rest, as for the block formats.
fn gen_panel(triples: bool, t: Tile, tf: &TokenStream) -> TokenStream {
    let name = format_ident!("pn{}x{}", t.rows, t.cols);
    let c = lit(t.cols);
    let tri = if triples {
        quote! {
            let tri = _mm512_loadu_si512(PANEL_TRIPLE.as_ptr() as *const _);
            let two = _mm512_set1_epi32(0x0002_0202);
            // The signed codes of the triples of chunk `ch` (16 rows from `16 * h`), one
            // dword per row: the low then the high nibble's triple.
            let codes = |ch: usize, h: usize| {
                let x = _mm512_cvtepu8_epi32(_mm_loadu_si128(wt.add(ch * BM + 16 * h) as *const __m128i));
                let sg = wt.add(g.sign_offset() + ch / 4 * BM + 16 * h);
                let s = _mm512_cvtepu8_epi32(_mm_loadu_si128(sg as *const __m128i));
                let signed = |mag: __m512i, tr: usize| {
                    let c = _mm512_permutexvar_epi32(mag, tri);
                    let neg = _mm512_test_epi32_mask(s, _mm512_set1_epi32(1 << (tr % 8)));
                    _mm512_mask_sub_epi32(c, neg, two, c)
                };
                [
                    signed(_mm512_and_si512(x, nib), 2 * ch),
                    signed(_mm512_srli_epi32::<4>(x), 2 * ch + 1),
                ]
            };
            // four triples (two chunks) in three panel dwords: the twelve codes in order
            // (a missing last chunk decodes as zero codes; its activation slots are 0)
            for gq in 0..g.t.div_ceil(4) {
                for h in 0..2 {
                    let [v0, v1] = codes(2 * gq, h);
                    let [v2, v3] = if 2 * gq + 1 < g.t / 2 {
                        codes(2 * gq + 1, h)
                    } else {
                        [_mm512_setzero_si512(); 2]
                    };
                    let packed = [
                        _mm512_or_si512(v0, _mm512_slli_epi32::<24>(v1)),
                        _mm512_or_si512(_mm512_srli_epi32::<8>(v1), _mm512_slli_epi32::<16>(v2)),
                        _mm512_or_si512(_mm512_srli_epi32::<16>(v2), _mm512_slli_epi32::<8>(v3)),
                    ];
                    for (j, v) in packed.into_iter().enumerate() {
                        _mm512_storeu_si512(panel.add(((3 * gq + j) * BM + 16 * h) * 4) as *mut _, v);
                    }
                }
            }
        }
    } else {
        quote! {}
    };
    let tri_table = if triples {
        quote! {
            /// Codes `w + 1` of a TL2 magnitude's triple (positive sign) in bytes 0-2 of a
            /// dword, byte 3 zero (a negative triple is `0x00020202 - codes`).
            const PANEL_TRIPLE: [i32; 16] = {
                let mut t = [0i32; 16];
                let mut i = 0;
                while i < 16 {
                    t[i] = (W[i][0] + 1) as i32
                        | ((W[i][1] + 1) as i32) << 8
                        | ((W[i][2] + 1) as i32) << 16;
                    i += 1;
                }
                t
            };
        }
    } else {
        quote! {}
    };
    let doc = format!(
        " Panel matmul over weight rows `r0..r1`: one layout tile ({BM} rows) decoded into a \
         panel at a time, every activation row against it {} at a time.",
        t.cols
    );
    let entry = matmul_entry(&name, &doc, tf, panel_body(tri, c));
    quote! {
        /// Panel dwords of a pair index: codes `w + 1` of the pair in bytes 0-1
        /// (`PANEL_PAIR_HI`: bytes 2-3, the byte's high nibble).
        const PANEL_PAIR: [i32; 16] = {
            let mut t = [0i32; 16];
            let mut i = 0;
            while i < 16 {
                t[i] = (PW[i][0] + 1) as i32 | ((PW[i][1] + 1) as i32) << 8;
                i += 1;
            }
            t
        };
        const PANEL_PAIR_HI: [i32; 16] = {
            let mut t = [0i32; 16];
            let mut i = 0;
            while i < 16 {
                t[i] = PANEL_PAIR[i] << 16;
                i += 1;
            }
            t
        };
        #tri_table
        #entry
    }
}

/// (The body of [`gen_panel`]'s entry point.)
fn panel_body(tri: TokenStream, c: Literal) -> TokenStream {
    quote! {
            // slot groups: three per four triples, then one per pair of pairs
            let tri4 = crate::reference::lut::triple_slots(g.t) / 4;
            let k4 = tri4 + g.pair_elems / 4;
            let nib = _mm512_set1_epi32(15);
            let plo = _mm512_loadu_si512(PANEL_PAIR.as_ptr() as *const _);
            let phi = _mm512_loadu_si512(PANEL_PAIR_HI.as_ptr() as *const _);
            crate::panel::with_buffers(k4 * BM * 4, 0, |buf, _| {
                let panel = buf.as_mut_ptr();
                let mut row = r0;
                while row < r1 {
                    let wt = w.add(row / BM * g.tile_bytes);
                    let rows = if r1 - row < BM { r1 - row } else { BM };
                    #tri
                    for ch in 0..g.pair_elems / 4 {
                        let src = wt.add(g.pair_offset() + ch * BM);
                        let dst = panel.add((tri4 + ch) * BM * 4);
                        for h in 0..2 {
                            let x = _mm512_cvtepu8_epi32(_mm_loadu_si128(src.add(16 * h) as *const __m128i));
                            let v = _mm512_or_si512(
                                _mm512_permutexvar_epi32(_mm512_and_si512(x, nib), plo),
                                _mm512_permutexvar_epi32(_mm512_srli_epi32::<4>(x), phi),
                            );
                            _mm512_storeu_si512(dst.add(64 * h) as *mut _, v);
                        }
                    }
                    crate::panel::run::<2, #c>(
                        panel, k4, None, ws, acts,
                        crate::panel::Dest { out, n, row, rows },
                    );
                    row += BM;
                }
            })
    }
}
