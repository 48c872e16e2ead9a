//! Per-ISA instruction vocabularies. A backend turns abstract vector operations into the
//! intrinsics of one ISA; the templates in `dot.rs` and `lut.rs` only talk to this trait.
//!
//! Vectors are always full width (`width()` bytes). Narrower loads zero-extend, so a template
//! can process a 4-, 16- or 32-byte chunk with the same accumulators: zero code lanes times
//! zero activation lanes add nothing.

use crate::table::Isa;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

/// How a code vector is derived from a loaded byte vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeOp {
    /// `(v >> shift) & 3`: a 2-bit field.
    Shift2(u32),
    /// `((v * 3^n) mod 256) * 3 >> 8`: base-3 trit `n` (ggml TQ1_0).
    Trit(u32),
    /// `(v >> shift[g]) & 3` where `g` is the lane's group of `bytes` lanes: the 2-bit fields of
    /// one group broadcast to every `bytes`-lane part of the vector (see `Backend::load_bcast`).
    Spread2 { bytes: usize, shifts: [u32; 4] },
}

pub trait Backend {
    fn isa(&self) -> Isa;
    /// Bytes per vector register.
    fn width(&self) -> usize;
    /// Vector type used for all byte/i32 vectors.
    fn vec_ty(&self) -> TokenStream;
    /// `use` lines for the generated module.
    fn prelude(&self) -> TokenStream;
    /// Zero vector.
    fn zero(&self) -> TokenStream;
    /// Load `l` bytes (`l` in 1, 2, 4, 8, 16, 32, 64; `l <= width`) from `ptr` (a `*const u8`
    /// or `*const i8`), zero-extended to a full vector.
    fn load(&self, l: usize, ptr: TokenStream) -> TokenStream;
    /// Derive a u8 code vector (lanes 0..=2) from a loaded vector.
    fn code(&self, v: &Ident, op: CodeOp) -> TokenStream;
    /// `l` bytes at `ptr` repeated to fill a vector (`l` a proper divisor of the width), for
    /// `CodeOp::Spread2`; `None` where the backend has no such load (the decode rule then
    /// keeps plain loads).
    fn load_bcast(&self, _l: usize, _ptr: TokenStream) -> Option<TokenStream> {
        None
    }
    /// Statements: `acc += sum over pairs of dot(codes_u8, acts_i8)` in i32 lanes.
    fn dot(&self, acc: &Ident, pairs: &[(Ident, Ident)]) -> TokenStream;
    /// Horizontal i32 sum of an accumulator, as an `i32` expression.
    fn hsum(&self, acc: TokenStream) -> TokenStream;
    /// Statements: convert lanes `lane..lane + count` of code vector `codes` to
    /// `(c - 1) as f32 * scale` (scale: an f32 expression) and store them at `out`
    /// (a `*mut f32` expression).
    fn store_dequant(
        &self,
        codes: &Ident,
        lane: usize,
        count: usize,
        scale: TokenStream,
        out: TokenStream,
    ) -> TokenStream;
    /// The widest contiguous run `store_dequant` handles in one step.
    fn dequant_step(&self) -> usize;
    /// Expression: the dequantization table of 2-bit codes for the f32 scale `scale`, each
    /// entry `(c - 1) as f32 * scale` computed like `store_dequant`'s formula (code 3, never
    /// written, included: the same value as every other dequantize kernel gives it), for
    /// `dequant_lookup`; `None` where the backend has none.
    fn dequant_table(&self, _scale: TokenStream) -> Option<TokenStream> {
        None
    }
    /// Expression: the `dequant_step` weight bytes at `src` zero-extended to i32 lanes, for
    /// `dequant_lookup` (one per run of bytes, shared by the fields of those bytes).
    fn dequant_widen(&self, _src: TokenStream) -> Option<TokenStream> {
        None
    }
    /// Statement: the values of 2-bit field `shift` of the widened bytes `x` (a
    /// `dequant_widen` vector): shifted, looked up in `table` (a `dequant_table`) and stored
    /// at `out`. The same values as `store_dequant` on the decoded codes, without decoding
    /// whole vectors and extracting their parts.
    fn dequant_lookup(
        &self,
        _shift: u32,
        _x: &Ident,
        _table: &Ident,
        _out: TokenStream,
    ) -> TokenStream {
        unreachable!("dequant_lookup without dequant_widen")
    }
    /// For 2-bit fields: `v & (3 << shift)`, i.e. the code scaled by `2^shift`, when the dot
    /// product takes u8 operands up to 192 without intermediate saturation (VNNI). Templates
    /// then keep one accumulator per shift and rescale at the end, saving the shifts and
    /// breaking the accumulator dependency chain.
    fn code_scaled(&self, _v: &Ident, _shift: u32) -> Option<TokenStream> {
        None
    }
    /// Expression: lanes of an i32 accumulator arithmetically shifted right by `s` (exact
    /// division of lanes that are multiples of `2^s`). Needed with `code_scaled`.
    fn srai32(&self, _acc: TokenStream, _s: u32) -> TokenStream {
        unreachable!("srai32 is only used with code_scaled")
    }
    /// Expression: lane-wise i32 sum of two accumulators.
    fn add32(&self, _a: TokenStream, _b: TokenStream) -> TokenStream {
        unreachable!("add32 is only used with code_scaled")
    }
    /// Statements run once at the start of every kernel function (constants the other
    /// snippets refer to).
    fn prologue(&self) -> TokenStream {
        quote! {}
    }
    /// Expression: the f32 value of the little-endian f16 at `ptr` (a `*const u8`).
    fn load_f16(&self, ptr: TokenStream) -> TokenStream {
        quote! { half::f16::from_le_bytes([*#ptr, *#ptr.add(1)]).to_f32() }
    }
    /// Expression: the f16 bits (`u16`) of the f32 `v`, rounded to nearest even (the
    /// quantizers' block scales; `half::f16::from_f32`, which the tests compare against).
    fn store_f16(&self, v: TokenStream) -> TokenStream {
        quote! { half::f16::from_f32(#v).to_bits() }
    }
    /// Expression: `crate::absmax` of the `elems` f32 values at `ptr` (a `*const f32`): the
    /// largest `|x|`, NaN ignored, 0 for none. The maximum of a set of non-NaN values does
    /// not depend on the order it is folded in, so a vector ISA may reduce in any order as
    /// long as no NaN survives its first step.
    fn block_absmax(&self, ptr: TokenStream, elems: usize) -> TokenStream {
        quote! { crate::absmax(core::slice::from_raw_parts(#ptr, #elems)) }
    }
    /// Four-row block flush (block-scale formats), when the ISA has 4-lane f32 vectors:
    /// `Some(ty)` is the type of a 4-lane f32 accumulator. With it, `hsum4`, `quad_zero`,
    /// `quad_update` and `quad_store` must be implemented.
    fn quad_ty(&self) -> Option<TokenStream> {
        None
    }
    /// Expression: zero 4-lane f32 accumulator.
    fn quad_zero(&self) -> TokenStream {
        unreachable!("quad_zero without quad_ty")
    }
    /// Expression: a 4-lane i32 vector whose lane `i` is the horizontal sum of `accs[i]`
    /// (exact: integer adds in any order).
    fn hsum4(&self, _accs: [TokenStream; 4]) -> TokenStream {
        unreachable!("hsum4 without quad_ty")
    }
    /// Expression: the 4-lane f32 vector of the little-endian f16 block scales at `ptrs`
    /// (lane `i` from `ptrs[i]`), each converted exactly as `load_f16` converts it.
    fn quad_load_f16(&self, _ptrs: [TokenStream; 4]) -> TokenStream {
        unreachable!("quad_load_f16 without quad_ty")
    }
    /// Statement: lane-wise `f[i] += d[i] * ((hs[i] - bsum) as f32)` (`d`: a `quad_load_f16`
    /// vector) with the product and the sum rounded separately, exactly like the scalar
    /// `f += d * s as f32` of each row.
    fn quad_update(
        &self,
        _f: &Ident,
        _d: TokenStream,
        _hs: TokenStream,
        _bsum: TokenStream,
    ) -> TokenStream {
        unreachable!("quad_update without quad_ty")
    }
    /// Statement: store `f[i] / scale` at `out + i` (a `*mut f32` expression).
    fn quad_store(&self, _f: &Ident, _scale: TokenStream, _out: TokenStream) -> TokenStream {
        unreachable!("quad_store without quad_ty")
    }
    /// Statement (tensor-scale formats): store `((hs[i] - sum) as f32) / scale * ws` at
    /// `out + i` (a `*mut f32` expression) for the lanes of a `hsum4` vector, rounded
    /// exactly like the scalar formula of each row (`ws`: the tensor scale in scope).
    fn quad_store_scaled(
        &self,
        _hs: TokenStream,
        _sum: TokenStream,
        _scale: TokenStream,
        _out: TokenStream,
    ) -> TokenStream {
        unreachable!("quad_store_scaled without quad_ty")
    }
    /// Lane spans (`decode::lane_chunks`): the part size in bytes that this backend gathers
    /// from separate blocks into one vector and reduces part-wise (`load_lanes`,
    /// `hsum4_lanes`, `lanes_load_f16`, `lanes_update`, `quad_first`, all with `quad_ty`);
    /// `None` where it has no such vocabulary.
    fn lane_part(&self) -> Option<usize> {
        None
    }
    /// Expression: a vector whose part `p` (of `lane_part` bytes) is loaded from `ptrs[p]`.
    fn load_lanes(&self, _ptrs: &[TokenStream]) -> TokenStream {
        unreachable!("load_lanes without lane_part")
    }
    /// Expression: an i32 vector whose 4 lanes of part `p` are the sums of part `p` of
    /// `accs[0..4]` (exact: integer adds), i.e. `hsum4` without folding the parts.
    fn hsum4_lanes(&self, _accs: [TokenStream; 4]) -> TokenStream {
        unreachable!("hsum4_lanes without lane_part")
    }
    /// Expression: an f32 vector whose lane `4p + i` is the f16 at `ptrs[i] + p * stride`
    /// (bytes), converted exactly as `load_f16` converts it.
    fn lanes_load_f16(&self, _ptrs: [TokenStream; 4], _stride: usize) -> TokenStream {
        unreachable!("lanes_load_f16 without lane_part")
    }
    /// Statement: for every part `p` in order, `quad_update` of `f` with the lanes of part `p`
    /// of `d` (a `lanes_load_f16` vector) and of `hs` (a `hsum4_lanes` vector) and the block
    /// sum `*bsum.add(p)` (`bsum`: a `*const i32` expression): the blocks of a span added to
    /// `f` one after another, each rounded exactly like the one-block flush.
    fn lanes_update(
        &self,
        _f: &Ident,
        _d: TokenStream,
        _hs: TokenStream,
        _bsum: TokenStream,
    ) -> TokenStream {
        unreachable!("lanes_update without lane_part")
    }
    /// Expression: lane 0 of a 4-lane f32 accumulator, as an `f32`.
    fn quad_first(&self, _f: TokenStream) -> TokenStream {
        unreachable!("quad_first without lane_part")
    }
    /// Statement: software prefetch of the cache line at `ptr` (a `*const u8`), into L2 when
    /// `far` (long-distance streaming) else into L1; nothing where the ISA has no portable
    /// hint. Prefetches never fault.
    fn prefetch(&self, _ptr: TokenStream, _far: bool) -> TokenStream {
        quote! {}
    }
    /// Base-3 dots without trit extraction (VNNI: full-range u8 operands, no saturation):
    /// the expression `3 * v mod 256` per byte lane (`v`: a vector expression), or `None`
    /// where the dot product cannot take bytes up to 255. With it, a trit `t_n = (3 q_n -
    /// q_{n+1}) / 256` of `q_n = 3^n b mod 256` is never formed: two accumulators take the
    /// dots of `q_n` and of `q_{n+1}`, merged exactly after the horizontal sum.
    fn byte_triple(&self, _v: TokenStream) -> Option<TokenStream> {
        None
    }
    /// Expression: lane-wise i32 difference (with `byte_triple`).
    fn sub32(&self, _a: TokenStream, _b: TokenStream) -> TokenStream {
        unreachable!("sub32 is only used with byte_triple")
    }
    /// Expression: the lanes of a 4-lane i32 vector (`hsum4`) shifted right arithmetically
    /// by `s` (with `byte_triple`: exact, the sums are multiples of `2^s`).
    fn quad_srai(&self, _hs: TokenStream, _s: u32) -> TokenStream {
        unreachable!("quad_srai is only used with byte_triple")
    }
    /// Statement: store the first `l` byte lanes of code vector `v` at `ptr` (a `*mut u8`),
    /// writing no byte past them. Only the ISAs that have panel tiles implement it.
    fn store_codes(&self, _l: usize, _ptr: TokenStream, _v: &Ident) -> Option<TokenStream> {
        None
    }
}

pub fn backend(isa: Isa) -> Box<dyn Backend> {
    match isa {
        Isa::Scalar => Box::new(Scalar),
        Isa::Avx2 => Box::new(X86 { isa, w: 32 }),
        Isa::Avx512 | Isa::Avx512Vnni => Box::new(X86 { isa, w: 64 }),
        Isa::Neon | Isa::NeonDot => Box::new(crate::backend_neon::Neon { isa }),
    }
}

/// The backend of the matmul tiles of a format: as [`backend`], except that block-scale
/// formats whose blocks have at most 32 code bytes use 256-bit vectors on the AVX-512 ISAs
/// (their per-block dots and flushes then work on ymm registers, VNNI through AVX-512 VL,
/// instead of zmm registers that are three quarters zero) unless a block is one 16-byte
/// group, which the decode rule spreads over a whole zmm by broadcast (I2S64: one `vpdpbusd`
/// per block and row instead of four on ymm; L2-resident GEMV 9.0 -> 11.1 GB/s).
pub fn matmul_backend(isa: Isa, spec: &crate::table::FormatSpec) -> Box<dyn Backend> {
    // a block that is one 2-bit group of 16 bytes fills a zmm by broadcast (`Spread2`)
    let spread = matches!(spec.codes, crate::table::CodeRule::Packed2 { group_bytes, .. }
        if group_bytes == 16 && spec.block_code_bytes == 16);
    let short_blocks =
        spec.scale == crate::table::ScaleRule::BlockF16 && spec.block_code_bytes <= 32 && !spread;
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni if short_blocks => Box::new(X86 { isa, w: 32 }),
        _ => backend(isa),
    }
}

/// The `#[target_feature]` attribute of an ISA (empty for scalar).
pub fn target_feature(isa: Isa) -> TokenStream {
    let f = isa.target_features();
    if f.is_empty() {
        quote! {}
    } else {
        quote! { #[target_feature(enable = #f)] }
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar: one byte per "vector", i32 accumulators.
// ---------------------------------------------------------------------------------------------

pub struct Scalar;

impl Backend for Scalar {
    fn isa(&self) -> Isa {
        Isa::Scalar
    }
    fn width(&self) -> usize {
        1
    }
    fn vec_ty(&self) -> TokenStream {
        quote! { i32 }
    }
    fn prelude(&self) -> TokenStream {
        quote! {}
    }
    fn zero(&self) -> TokenStream {
        quote! { 0i32 }
    }
    fn load(&self, l: usize, ptr: TokenStream) -> TokenStream {
        assert_eq!(l, 1, "scalar loads one byte");
        quote! { (*(#ptr as *const u8)) as i32 }
    }
    fn code(&self, v: &Ident, op: CodeOp) -> TokenStream {
        match op {
            CodeOp::Shift2(s) => {
                let s = proc_macro2::Literal::u32_unsuffixed(s);
                quote! { ((#v >> #s) & 3) }
            }
            CodeOp::Spread2 { .. } => unreachable!("scalar vectors are one byte"),
            CodeOp::Trit(n) => {
                let p = proc_macro2::Literal::i32_unsuffixed(3i32.pow(n));
                quote! { ((((#v * #p) & 0xff) * 3) >> 8) }
            }
        }
    }
    fn dot(&self, acc: &Ident, pairs: &[(Ident, Ident)]) -> TokenStream {
        // activations are loaded as u8 and must be sign-extended
        let terms = pairs
            .iter()
            .map(|(c, a)| quote! { #c * ((#a as u8 as i8) as i32) });
        quote! { #acc += #(#terms)+*; }
    }
    fn hsum(&self, acc: TokenStream) -> TokenStream {
        acc
    }
    fn store_dequant(
        &self,
        codes: &Ident,
        lane: usize,
        count: usize,
        scale: TokenStream,
        out: TokenStream,
    ) -> TokenStream {
        assert!(lane == 0 && count == 1);
        quote! { *#out = (#codes - 1) as f32 * #scale; }
    }
    fn dequant_step(&self) -> usize {
        1
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64: AVX2 (ymm), AVX-512 BW (zmm, vpmaddubsw) and AVX-512 VNNI (zmm, vpdpbusd).
// ---------------------------------------------------------------------------------------------

pub struct X86 {
    pub isa: Isa,
    pub w: usize,
}

impl X86 {
    fn wide(&self) -> bool {
        self.w == 64
    }
    /// Intrinsic name with the width prefix (`_mm256_` / `_mm512_`).
    fn f(&self, name: &str) -> Ident {
        if self.wide() {
            format_ident!("_mm512_{}", name)
        } else {
            format_ident!("_mm256_{}", name)
        }
    }
}

impl Backend for X86 {
    fn isa(&self) -> Isa {
        self.isa
    }
    fn width(&self) -> usize {
        self.w
    }
    fn vec_ty(&self) -> TokenStream {
        if self.wide() {
            quote! { __m512i }
        } else {
            quote! { __m256i }
        }
    }
    fn prelude(&self) -> TokenStream {
        quote! { use core::arch::x86_64::*; }
    }
    fn zero(&self) -> TokenStream {
        let f = self.f("setzero_si512");
        if self.wide() {
            quote! { #f() }
        } else {
            quote! { _mm256_setzero_si256() }
        }
    }
    fn load(&self, l: usize, ptr: TokenStream) -> TokenStream {
        let p = quote! { (#ptr as *const u8) };
        let x128 = match l {
            1 => Some(quote! { _mm_cvtsi32_si128(*#p as i32) }),
            2 => Some(quote! { _mm_cvtsi32_si128((#p as *const u16).read_unaligned() as i32) }),
            4 => Some(quote! { _mm_cvtsi32_si128((#p as *const i32).read_unaligned()) }),
            8 => Some(quote! { _mm_loadl_epi64(#p as *const __m128i) }),
            16 => Some(quote! { _mm_loadu_si128(#p as *const __m128i) }),
            _ => None,
        };
        match (l, self.wide(), x128) {
            (20, false, None) => quote! {
                _mm256_set_m128i(
                    _mm_cvtsi32_si128(((#p).add(16) as *const i32).read_unaligned()),
                    _mm_loadu_si128(#p as *const __m128i),
                )
            },
            (l, true, None) if l < 64 => {
                // masked-off lanes are neither read nor able to fault
                let mask = proc_macro2::Literal::u64_unsuffixed((1u64 << l) - 1);
                quote! { _mm512_maskz_loadu_epi8(#mask, #p as *const i8) }
            }
            (_, false, Some(x)) => quote! { _mm256_zextsi128_si256(#x) },
            (_, true, Some(x)) => quote! { _mm512_zextsi128_si512(#x) },
            (32, false, None) => quote! { _mm256_loadu_si256(#p as *const __m256i) },
            (32, true, None) => {
                quote! { _mm512_zextsi256_si512(_mm256_loadu_si256(#p as *const __m256i)) }
            }
            (64, true, None) => quote! { _mm512_loadu_si512(#p as *const _) },
            _ => panic!("x86 backend: no {l}-byte load at width {}", self.w),
        }
    }
    fn load_bcast(&self, l: usize, ptr: TokenStream) -> Option<TokenStream> {
        let p = quote! { (#ptr as *const u8) };
        match (l, self.wide()) {
            (16, true) => {
                Some(quote! { _mm512_broadcast_i32x4(_mm_loadu_si128(#p as *const __m128i)) })
            }
            (32, true) => {
                Some(quote! { _mm512_broadcast_i64x4(_mm256_loadu_si256(#p as *const __m256i)) })
            }
            (16, false) => {
                Some(quote! { _mm256_broadcastsi128_si256(_mm_loadu_si128(#p as *const __m128i)) })
            }
            _ => None,
        }
    }
    fn code(&self, v: &Ident, op: CodeOp) -> TokenStream {
        let and = self.f("and_si512");
        let and = if self.wide() {
            quote! { #and }
        } else {
            quote! { _mm256_and_si256 }
        };
        let set1_8 = self.f("set1_epi8");
        let srli16 = self.f("srli_epi16");
        match op {
            CodeOp::Shift2(0) => quote! { #and(#v, #set1_8(3)) },
            CodeOp::Shift2(s) => {
                let s = proc_macro2::Literal::i32_unsuffixed(s as i32);
                quote! { #and(#srli16::<#s>(#v), #set1_8(3)) }
            }
            CodeOp::Spread2 { bytes, shifts } => {
                // one variable dword shift: a right shift by s <= 6 leaves every byte's own
                // bits s, s+1 at bits 0, 1 (nothing from the next byte survives the mask)
                let lanes = self.w / 4;
                let counts: Vec<proc_macro2::Literal> = (0..lanes)
                    .rev()
                    .map(|d| proc_macro2::Literal::i32_unsuffixed(shifts[d * 4 / bytes] as i32))
                    .collect();
                if self.wide() {
                    quote! { _mm512_and_si512(_mm512_srlv_epi32(#v, _mm512_set_epi32(#(#counts),*)), _mm512_set1_epi8(3)) }
                } else {
                    quote! { _mm256_and_si256(_mm256_srlv_epi32(#v, _mm256_set_epi32(#(#counts),*)), _mm256_set1_epi8(3)) }
                }
            }
            CodeOp::Trit(n) => {
                // Trit n of byte b is the high byte of the 16-bit product 3 q_n, where
                // q_n = 3^n b mod 256 is the low byte of the previous product 3 q_(n-1).
                // `vpmaddubsw` with the byte weights (3, 0) multiplies the low byte of each
                // 16-bit lane by 3 and ignores the high one (the previous trit), so one
                // instruction per step gives trit and next q of the even bytes; weights
                // (0, 3) start the chain of the odd bytes (their q then sits in the low byte
                // too). No lane saturates (3 * 255 = 765). The trits are merged back in
                // byte order: even ones shifted down, odd ones masked in place. Per trit
                // vector: 2 multiplies + 2 (AVX-512: ternary logic) or 3 ops, against 2 adds
                // + 4 or 5 ops for tripling in bytes and comparing with 85 and 170. LLVM
                // shares the chains between the trits of one load.
                let maddubs = self.f("maddubs_epi16");
                let set1_16 = self.f("set1_epi16");
                let mut e = quote! { #maddubs(#v, #set1_16(3)) };
                let mut o = quote! { #maddubs(#v, #set1_16(0x300)) };
                for _ in 0..n {
                    e = quote! { #maddubs(#e, #set1_16(3)) };
                    o = quote! { #maddubs(#o, #set1_16(3)) };
                }
                if self.wide() {
                    // A | (B & C): even trits | (odd products & 0xff00)
                    return quote! {
                        _mm512_ternarylogic_epi32::<0xF8>(#srli16::<8>(#e), #o, _mm512_set1_epi16(0xff00u16 as i16))
                    };
                }
                quote! {
                    _mm256_or_si256(#srli16::<8>(#e), #and(#o, _mm256_set1_epi16(0xff00u16 as i16)))
                }
            }
        }
    }
    fn dot(&self, acc: &Ident, pairs: &[(Ident, Ident)]) -> TokenStream {
        if self.isa == Isa::Avx512Vnni {
            let dpbusd = self.f("dpbusd_epi32");
            let st = pairs.iter().map(|(c, a)| {
                quote! { #acc = #dpbusd(#acc, #c, #a); }
            });
            return quote! { #(#st)* };
        }
        // vpmaddubsw: |c0*a0 + c1*a1| <= 2*2*128 = 512 per i16 lane; up to 4 products are
        // summed in i16 (<= 2048, no overflow) before one vpmaddwd widens them to i32.
        let maddubs = self.f("maddubs_epi16");
        let madd = self.f("madd_epi16");
        let add16 = self.f("add_epi16");
        let add32 = self.f("add_epi32");
        let set1_16 = self.f("set1_epi16");
        let mut out = TokenStream::new();
        for group in pairs.chunks(4) {
            let mut it = group.iter();
            let (c, a) = it.next().unwrap();
            let mut sum = quote! { #maddubs(#c, #a) };
            for (c, a) in it {
                sum = quote! { #add16(#sum, #maddubs(#c, #a)) };
            }
            out.extend(quote! { #acc = #add32(#acc, #madd(#sum, #set1_16(1))); });
        }
        out
    }
    fn hsum(&self, acc: TokenStream) -> TokenStream {
        if self.wide() {
            quote! { _mm512_reduce_add_epi32(#acc) }
        } else {
            quote! {{
                let v = #acc;
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
                _mm_cvtsi128_si32(s)
            }}
        }
    }
    fn store_dequant(
        &self,
        codes: &Ident,
        lane: usize,
        count: usize,
        scale: TokenStream,
        out: TokenStream,
    ) -> TokenStream {
        if self.wide() {
            assert!(count == 16 && lane.is_multiple_of(16));
            let idx = (lane / 16) as i32;
            quote! {{
                let b = _mm512_extracti32x4_epi32::<#idx>(#codes);
                let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(b), _mm512_set1_epi32(1)));
                _mm512_storeu_ps(#out, _mm512_mul_ps(f, _mm512_set1_ps(#scale)));
            }}
        } else {
            assert!(count == 8 && lane.is_multiple_of(8));
            let half = (lane / 16) as i32;
            let shift = (lane % 16) as i32;
            let x = if shift == 0 {
                quote! { _mm256_extracti128_si256::<#half>(#codes) }
            } else {
                quote! { _mm_srli_si128::<8>(_mm256_extracti128_si256::<#half>(#codes)) }
            };
            quote! {{
                let b = #x;
                let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(b), _mm256_set1_epi32(1)));
                _mm256_storeu_ps(#out, _mm256_mul_ps(f, _mm256_set1_ps(#scale)));
            }}
        }
    }
    fn dequant_step(&self) -> usize {
        if self.wide() {
            16
        } else {
            8
        }
    }
    fn dequant_table(&self, scale: TokenStream) -> Option<TokenStream> {
        // vpermps reads the low 4 bits of each index: the four code values repeated, so a
        // shifted byte's bits above its field select a copy of the same entry
        self.wide().then(|| {
            quote! {{
                let s = #scale;
                _mm512_broadcast_f32x4(_mm_setr_ps(
                    (0i32 - 1) as f32 * s, 0 as f32 * s, 1 as f32 * s, 2 as f32 * s,
                ))
            }}
        })
    }
    fn dequant_widen(&self, src: TokenStream) -> Option<TokenStream> {
        // one vpmovzxbd from memory per 16 bytes, then per field a dword shift and one
        // vpermps, instead of extracting the 16-byte parts of decoded codes and converting
        // and scaling them (1M elements, old and new binaries alternated: I2S 2.9-3.2 ->
        // 3.7-4.1 Gelem/s, QK256 2.7-3.4 -> 3.8-4.0, a plain store loop 3.9-4.4)
        self.wide().then(|| {
            quote! { _mm512_cvtepu8_epi32(_mm_loadu_si128((#src as *const u8) as *const __m128i)) }
        })
    }
    fn dequant_lookup(
        &self,
        shift: u32,
        x: &Ident,
        table: &Ident,
        out: TokenStream,
    ) -> TokenStream {
        let s = proc_macro2::Literal::u32_unsuffixed(shift);
        quote! { _mm512_storeu_ps(#out, _mm512_permutexvar_ps(_mm512_srli_epi32::<#s>(#x), #table)); }
    }
    fn prefetch(&self, ptr: TokenStream, far: bool) -> TokenStream {
        if far {
            quote! { _mm_prefetch::<_MM_HINT_T1>(#ptr as *const i8); }
        } else {
            quote! { _mm_prefetch::<_MM_HINT_T0>(#ptr as *const i8); }
        }
    }
    fn store_codes(&self, l: usize, ptr: TokenStream, v: &Ident) -> Option<TokenStream> {
        let p = quote! { (#ptr as *mut u8) };
        if self.isa == Isa::Avx2 {
            // no byte-masked stores: whole 128-bit parts, then one dword
            return match l {
                32 => Some(quote! { _mm256_storeu_si256(#p as *mut __m256i, #v); }),
                16 => Some(
                    quote! { _mm_storeu_si128(#p as *mut __m128i, _mm256_castsi256_si128(#v)); },
                ),
                20 => Some(quote! {
                    _mm_storeu_si128(#p as *mut __m128i, _mm256_castsi256_si128(#v));
                    ((#p).add(16) as *mut i32).write_unaligned(_mm256_extract_epi32::<4>(#v));
                }),
                _ => None,
            };
        }
        if self.isa != Isa::Avx512Vnni || l > self.w {
            return None;
        }
        Some(match (l == self.w, self.wide()) {
            (true, true) => quote! { _mm512_storeu_si512(#p as *mut _, #v); },
            (true, false) => quote! { _mm256_storeu_si256(#p as *mut __m256i, #v); },
            (false, wide) => {
                // AVX-512 BW (+VL): masked-off bytes are not written
                let mask = proc_macro2::Literal::u64_unsuffixed((1u64 << l) - 1);
                if wide {
                    quote! { _mm512_mask_storeu_epi8(#p as *mut i8, #mask, #v); }
                } else {
                    let mask = proc_macro2::Literal::u32_unsuffixed(((1u64 << l) - 1) as u32);
                    quote! { _mm256_mask_storeu_epi8(#p as *mut i8, #mask, #v); }
                }
            }
        })
    }
    fn load_f16(&self, ptr: TokenStream) -> TokenStream {
        // F16C (part of every target feature list of the x86 ISAs): one vcvtph2ps
        quote! { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((#ptr as *const u16).read_unaligned() as i32))) }
    }
    fn block_absmax(&self, ptr: TokenStream, elems: usize) -> TokenStream {
        // four accumulators of `max(|x|, acc)`: vmaxps returns its second operand when
        // either is NaN, so a NaN never enters an accumulator (they start at +0); then the
        // accumulators and the lanes are folded (no NaN left, any order is exact). The
        // generic 64-lane fold compiles to ~75 extracts and maxes per call, which dominated
        // the 64-element blocks of I2S64.
        let lanes = self.w / 4;
        if !elems.is_multiple_of(4 * lanes) {
            return quote! { crate::absmax(core::slice::from_raw_parts(#ptr, #elems)) };
        }
        let bits = 8 * self.w;
        let ty = format_ident!("__m{}", bits);
        let (zero, max, load, set1) = (
            self.f("setzero_ps"),
            self.f("max_ps"),
            self.f("loadu_ps"),
            self.f("set1_epi32"),
        );
        let (and, to_i, to_f) = (
            self.f(&format!("and_si{bits}")),
            self.f(&format!("castps_si{bits}")),
            self.f(&format!("castsi{bits}_ps")),
        );
        let reduce = if self.wide() {
            quote! { _mm512_reduce_max_ps(a) }
        } else {
            quote! {{
                let h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
            }}
        };
        let steps = elems / (4 * lanes);
        quote! {{
            let p: *const f32 = #ptr;
            let m = #set1(0x7fff_ffff);
            let mut acc: [#ty; 4] = [#zero(); 4];
            for s in 0..#steps {
                for (j, a) in acc.iter_mut().enumerate() {
                    let x = #to_f(#and(#to_i(#load(p.add((4 * s + j) * #lanes))), m));
                    *a = #max(x, *a);
                }
            }
            let a = #max(#max(acc[0], acc[1]), #max(acc[2], acc[3]));
            #reduce
        }}
    }
    fn store_f16(&self, v: TokenStream) -> TokenStream {
        // one vcvtps2ph, round to nearest even (the `half` crate checks for F16C at run time
        // and converts out of line: a call per block of the quantizer)
        quote! { (_mm_extract_epi16::<0>(_mm_cvtps_ph::<0>(_mm_set_ss(#v))) as u16) }
    }
    fn quad_ty(&self) -> Option<TokenStream> {
        Some(quote! { __m128 })
    }
    fn quad_zero(&self) -> TokenStream {
        quote! { _mm_setzero_ps() }
    }
    fn hsum4(&self, accs: [TokenStream; 4]) -> TokenStream {
        // per 128-bit lane: [a0, a1, a2, a3] sums (`hsum4_lanes`), then the lanes folded
        let q = self.hsum4_lanes(accs);
        let fold = if self.wide() {
            quote! {
                let h = _mm256_add_epi32(_mm512_castsi512_si256(q), _mm512_extracti64x4_epi64::<1>(q));
                _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
            }
        } else {
            quote! { _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)) }
        };
        quote! {{
            let q = #q;
            #fold
        }}
    }
    fn lane_part(&self) -> Option<usize> {
        self.wide().then_some(16)
    }
    fn load_lanes(&self, ptrs: &[TokenStream]) -> TokenStream {
        assert!(
            self.wide() && ptrs.len() == 4,
            "x86 lane loads: four 16-byte parts of a zmm"
        );
        let p: Vec<TokenStream> = ptrs
            .iter()
            .map(|p| quote! { _mm_loadu_si128((#p as *const u8) as *const __m128i) })
            .collect();
        let (p0, p1, p2, p3) = (&p[0], &p[1], &p[2], &p[3]);
        quote! {{
            let v = _mm512_castsi128_si512(#p0);
            let v = _mm512_inserti32x4::<1>(v, #p1);
            let v = _mm512_inserti32x4::<2>(v, #p2);
            _mm512_inserti32x4::<3>(v, #p3)
        }}
    }
    fn hsum4_lanes(&self, accs: [TokenStream; 4]) -> TokenStream {
        let [a0, a1, a2, a3] = accs;
        let (lo32, hi32, lo64, hi64, add) = (
            self.f("unpacklo_epi32"),
            self.f("unpackhi_epi32"),
            self.f("unpacklo_epi64"),
            self.f("unpackhi_epi64"),
            self.f("add_epi32"),
        );
        // per 128-bit lane: [a0, a1, a0, a1] partial sums, then [a0, a1, a2, a3]
        quote! {{
            let (a0, a1, a2, a3) = (#a0, #a1, #a2, #a3);
            let p01 = #add(#lo32(a0, a1), #hi32(a0, a1));
            let p23 = #add(#lo32(a2, a3), #hi32(a2, a3));
            #add(#lo64(p01, p23), #hi64(p01, p23))
        }}
    }
    fn lanes_load_f16(&self, ptrs: [TokenStream; 4], stride: usize) -> TokenStream {
        // per row one masked load of its four scales (halfwords 0, s, 2s, 3s for a stride of
        // s halfwords; nothing else is read) and one masked permute moving scale p to
        // halfword 4p + i; then one vcvtph2ps of the 16 halfwords
        assert!(self.wide() && stride.is_multiple_of(2) && 3 * stride < 64);
        let s = stride / 2;
        let load_mask =
            proc_macro2::Literal::u32_unsuffixed((0..4).fold(0u32, |m, p| m | 1 << (p * s)));
        let idx: Vec<proc_macro2::Literal> = (0..32)
            .rev()
            .map(|h| {
                proc_macro2::Literal::i16_unsuffixed(if h < 16 { (h / 4 * s) as i16 } else { 0 })
            })
            .collect();
        let rows = ptrs.iter().enumerate().map(|(i, p)| {
            let k = proc_macro2::Literal::u32_unsuffixed(0x1111u32 << i);
            let src =
                quote! { _mm512_maskz_loadu_epi16(#load_mask, (#p as *const u8) as *const i16) };
            quote! { let h = _mm512_mask_permutexvar_epi16(h, #k, idx, #src); }
        });
        quote! {{
            let idx = _mm512_set_epi16(#(#idx),*);
            let h = _mm512_setzero_si512();
            #(#rows)*
            _mm512_cvtph_ps(_mm512_castsi512_si256(h))
        }}
    }
    fn lanes_update(
        &self,
        f: &Ident,
        d: TokenStream,
        hs: TokenStream,
        bsum: TokenStream,
    ) -> TokenStream {
        // the span's four block sums, each spread over its part, subtracted lane-wise; then
        // the products of part 0, 1, 2, 3 added in that (block) order
        quote! {{
            let bs = _mm512_permutexvar_epi32(
                _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                _mm512_castsi128_si512(_mm_loadu_si128(#bsum as *const __m128i)),
            );
            let p = _mm512_mul_ps(#d, _mm512_cvtepi32_ps(_mm512_sub_epi32(#hs, bs)));
            #f = _mm_add_ps(#f, _mm512_castps512_ps128(p));
            #f = _mm_add_ps(#f, _mm512_extractf32x4_ps::<1>(p));
            #f = _mm_add_ps(#f, _mm512_extractf32x4_ps::<2>(p));
            #f = _mm_add_ps(#f, _mm512_extractf32x4_ps::<3>(p));
        }}
    }
    fn quad_first(&self, f: TokenStream) -> TokenStream {
        quote! { _mm_cvtss_f32(#f) }
    }
    fn quad_store(&self, f: &Ident, scale: TokenStream, out: TokenStream) -> TokenStream {
        quote! { _mm_storeu_ps(#out, _mm_div_ps(#f, _mm_set1_ps(#scale))); }
    }
    fn quad_store_scaled(
        &self,
        hs: TokenStream,
        sum: TokenStream,
        scale: TokenStream,
        out: TokenStream,
    ) -> TokenStream {
        quote! {{
            let s = _mm_cvtepi32_ps(_mm_sub_epi32(#hs, _mm_set1_epi32(#sum)));
            _mm_storeu_ps(#out, _mm_mul_ps(_mm_div_ps(s, _mm_set1_ps(#scale)), _mm_set1_ps(ws)));
        }}
    }
    fn quad_load_f16(&self, ptrs: [TokenStream; 4]) -> TokenStream {
        // four 16-bit inserts and one vcvtph2ps (the same conversion as `load_f16`, lane-wise)
        // instead of four scalar conversions and a `setr`
        let [p0, p1, p2, p3] =
            ptrs.map(|p| quote! { ((#p) as *const u16).read_unaligned() as i32 });
        quote! {{
            let h = _mm_cvtsi32_si128(#p0);
            let h = _mm_insert_epi16::<1>(h, #p1);
            let h = _mm_insert_epi16::<2>(h, #p2);
            let h = _mm_insert_epi16::<3>(h, #p3);
            _mm_cvtph_ps(h)
        }}
    }
    fn quad_update(
        &self,
        f: &Ident,
        d: TokenStream,
        hs: TokenStream,
        bsum: TokenStream,
    ) -> TokenStream {
        quote! {{
            let s = _mm_cvtepi32_ps(_mm_sub_epi32(#hs, _mm_set1_epi32(#bsum)));
            #f = _mm_add_ps(#f, _mm_mul_ps(#d, s));
        }}
    }
    fn code_scaled(&self, v: &Ident, shift: u32) -> Option<TokenStream> {
        if self.isa != Isa::Avx512Vnni {
            return None;
        }
        // codes <= 2, so (c << 6) <= 128 fits the unsigned vpdpbusd operand
        let m = proc_macro2::Literal::i8_unsuffixed((3u8 << shift) as i8);
        if self.wide() {
            Some(quote! { _mm512_and_si512(#v, _mm512_set1_epi8(#m)) })
        } else {
            Some(quote! { _mm256_and_si256(#v, _mm256_set1_epi8(#m)) })
        }
    }
    fn byte_triple(&self, v: TokenStream) -> Option<TokenStream> {
        if self.isa != Isa::Avx512Vnni {
            return None;
        }
        // `q + q + q` on bytes is a multiply to LLVM, which lowers it as 16-bit multiplies,
        // shifts and a blend (the TQ1_0 GEMV with L2-resident weights ran 14-28 % slower that
        // way); hiding `2q` behind an empty `asm!` on its register keeps the two byte adds.
        Some(quote! {{
            let q = #v;
            let mut d = _mm512_add_epi8(q, q);
            // SAFETY: an empty template: no instruction runs and no memory is touched; `d`
            // is handed over and back in the same register.
            core::arch::asm!("/* {0} */", inout(zmm_reg) d, options(pure, nomem, nostack, preserves_flags));
            _mm512_add_epi8(d, q)
        }})
    }
    fn sub32(&self, a: TokenStream, b: TokenStream) -> TokenStream {
        let f = self.f("sub_epi32");
        quote! { #f(#a, #b) }
    }
    fn quad_srai(&self, hs: TokenStream, s: u32) -> TokenStream {
        let s = proc_macro2::Literal::u32_unsuffixed(s);
        quote! { _mm_srai_epi32::<#s>(#hs) }
    }
    fn srai32(&self, acc: TokenStream, s: u32) -> TokenStream {
        let f = self.f("srai_epi32");
        let s = proc_macro2::Literal::u32_unsuffixed(s);
        quote! { #f::<#s>(#acc) }
    }
    fn add32(&self, a: TokenStream, b: TokenStream) -> TokenStream {
        let f = self.f("add_epi32");
        quote! { #f(#a, #b) }
    }
}
