//! AArch64 Advanced SIMD backends: `Isa::Neon` (ARMv8.0, no dot product) and `Isa::NeonDot`
//! (FEAT_DotProd `sdot`).
//!
//! Every vector the templates see is a `uint8x16_t`, accumulators included: the i32
//! accumulators are reinterpreted (`vreinterpretq_*`, no instruction) around each update, so
//! the single `vec_ty` of the [`Backend`] trait suffices.
//!
//! * Codes: NEON shifts bytes directly (`ushr`), so a 2-bit field is `ushr` + `and` (`ushr`
//!   alone for the top field, `and` alone for the bottom one). A base-3 trit uses the byte
//!   multiply `mul` for `q = v * 3^n mod 256`, then `(q * 3) >> 8` in bytes as
//!   `ushr(uhadd(q, ushr(q, 1)), 6)`.
//! * Dot (`NeonDot`): one `sdot` per (codes, acts) pair; codes are 0..=2 so reading them as
//!   signed bytes is exact.
//! * Dot (`Neon`): `smull` + `smlal2` per pair into i16 lanes, then one `sadalp` into the i32
//!   accumulator per group of at most [`I16_PAIRS`] pairs. Each product is at most
//!   `2 * 128 = 256` in magnitude and each pair adds two products per i16 lane, so a group
//!   adds at most `2 * 256 * I16_PAIRS` (4096 for 8 pairs) — far from the i16 limit.
//! * Loads narrower than 16 bytes read exactly `l` bytes (`ldr b/h/s/d`, which zero the rest
//!   of the register).

use crate::backend::{Backend, CodeOp};
use crate::table::Isa;
use proc_macro2::{Ident, Literal, TokenStream};
use quote::quote;

/// Most (codes, acts) pairs summed in i16 lanes before widening (`Isa::Neon`).
/// Bound: `2 * 256 * I16_PAIRS <= i16::MAX`.
pub const I16_PAIRS: usize = 8;
const _: () = assert!(2 * 256 * I16_PAIRS <= i16::MAX as usize);

pub struct Neon {
    pub isa: Isa,
}

impl Neon {
    /// `sdot` on i32/i8 vectors: `vdotq_s32` is still unstable (`stdarch_neon_dotprod`, also
    /// on Debian's rustc 1.96), so the instruction is emitted with `asm!`. Soundness of the
    /// emitted block: it only reads and writes the three vector registers it names (no memory,
    /// stack or flags: `pure, nomem, nostack, preserves_flags`), and it only appears in
    /// functions compiled with `#[target_feature(enable = "neon,dotprod")]`, which dispatch
    /// calls only after `cpu::supports(Isa::NeonDot)` saw FEAT_DotProd.
    fn sdot(acc: &Ident, c: &Ident, a: &Ident) -> TokenStream {
        quote! {
            core::arch::asm!(
                "sdot {acc:v}.4s, {c:v}.16b, {a:v}.16b",
                acc = inout(vreg) #acc,
                c = in(vreg) #c,
                a = in(vreg) #a,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
    }
}

impl Backend for Neon {
    fn isa(&self) -> Isa {
        self.isa
    }
    fn width(&self) -> usize {
        16
    }
    fn vec_ty(&self) -> TokenStream {
        quote! { uint8x16_t }
    }
    fn prelude(&self) -> TokenStream {
        quote! { use core::arch::aarch64::*; }
    }
    fn zero(&self) -> TokenStream {
        quote! { vdupq_n_u8(0) }
    }
    fn load(&self, l: usize, ptr: TokenStream) -> TokenStream {
        let p = quote! { (#ptr as *const u8) };
        // Narrow loads go through a general register; LLVM folds the read and the lane insert
        // into one `ldr b/h/s` that zeroes the other lanes.
        let narrow = |x: TokenStream| {
            quote! { vreinterpretq_u8_u64(vsetq_lane_u64::<0>(#x as u64, vdupq_n_u64(0))) }
        };
        match l {
            1 => narrow(quote! { (*#p) }),
            2 => narrow(quote! { (#p as *const u16).read_unaligned() }),
            4 => narrow(quote! { (#p as *const u32).read_unaligned() }),
            8 => quote! { vcombine_u8(vld1_u8(#p), vdup_n_u8(0)) },
            16 => quote! { vld1q_u8(#p) },
            _ => panic!("neon backend: no {l}-byte load at width 16"),
        }
    }
    fn code(&self, v: &Ident, op: CodeOp) -> TokenStream {
        match op {
            CodeOp::Shift2(0) => quote! { vandq_u8(#v, vdupq_n_u8(3)) },
            CodeOp::Shift2(6) => quote! { vshrq_n_u8::<6>(#v) },
            CodeOp::Shift2(s) => {
                assert!(s < 6, "neon backend: 2-bit field at shift {s}");
                let s = Literal::i32_unsuffixed(s as i32);
                quote! { vandq_u8(vshrq_n_u8::<#s>(#v), vdupq_n_u8(3)) }
            }
            CodeOp::Spread2 { .. } => unreachable!("neon: 16-byte vectors never spread a group"),
            CodeOp::Trit(n) => {
                let p = 3u32.pow(n);
                assert!(p < 256, "neon backend: trit {n} out of range");
                let q = if p == 1 {
                    quote! { #v }
                } else {
                    let p = Literal::u8_suffixed(p as u8);
                    quote! { vmulq_u8(#v, vdupq_n_u8(#p)) }
                };
                // (q * 3) >> 8 without widening: uhadd(q, q >> 1) = floor(floor(3q / 2) / 2)
                // and floor(floor(floor(3q / 2) / 2) / 64) = floor(3q / 256) (nested floor
                // division by integers); checked for all 256 bytes by the generator's tests.
                quote! {{
                    let q = #q;
                    vshrq_n_u8::<6>(vhaddq_u8(q, vshrq_n_u8::<1>(q)))
                }}
            }
        }
    }
    fn dot(&self, acc: &Ident, pairs: &[(Ident, Ident)]) -> TokenStream {
        let mut out = TokenStream::new();
        if self.isa == Isa::NeonDot {
            let st = pairs.iter().map(|(c, a)| Neon::sdot(acc, c, a));
            out.extend(quote! {{
                let mut #acc = vreinterpretq_s32_u8(#acc);
                #(#st)*
                vreinterpretq_u8_s32(#acc)
            }});
            return quote! { #acc = #out; };
        }
        for group in pairs.chunks(I16_PAIRS) {
            let (c0, a0) = &group[0];
            let rest = group[1..].iter().map(|(c, a)| {
                quote! { p = vmlal_s8(p, vget_low_s8(vreinterpretq_s8_u8(#c)), vget_low_s8(vreinterpretq_s8_u8(#a))); }
            });
            let highs = group.iter().map(|(c, a)| {
                quote! { p = vmlal_high_s8(p, vreinterpretq_s8_u8(#c), vreinterpretq_s8_u8(#a)); }
            });
            out.extend(quote! {{
                let mut p = vmull_s8(vget_low_s8(vreinterpretq_s8_u8(#c0)), vget_low_s8(vreinterpretq_s8_u8(#a0)));
                #(#rest)*
                #(#highs)*
                #acc = vreinterpretq_u8_s32(vpadalq_s16(vreinterpretq_s32_u8(#acc), p));
            }});
        }
        out
    }
    fn hsum(&self, acc: TokenStream) -> TokenStream {
        quote! { vaddvq_s32(vreinterpretq_s32_u8(#acc)) }
    }
    fn store_dequant(
        &self,
        codes: &Ident,
        lane: usize,
        count: usize,
        scale: TokenStream,
        out: TokenStream,
    ) -> TokenStream {
        assert!(count == 4 && matches!(lane, 0 | 4 | 8 | 12));
        // c - 1 in i8, widened twice to the i32 lanes `lane..lane + 4`; the widening of a half
        // is shared by the calls of one vector (identical pure expressions, CSE'd by LLVM).
        let half = if lane < 8 {
            quote! { vget_low_s8 }
        } else {
            quote! { vget_high_s8 }
        };
        let quarter = if lane % 8 < 4 {
            quote! { vget_low_s16 }
        } else {
            quote! { vget_high_s16 }
        };
        quote! {{
            let w = vsubq_s8(vreinterpretq_s8_u8(#codes), vdupq_n_s8(1));
            let h = vmovl_s8(#half(w));
            let i = vmovl_s16(#quarter(h));
            vst1q_f32(#out, vmulq_f32(vcvtq_f32_s32(i), vdupq_n_f32(#scale)));
        }}
    }
    fn dequant_step(&self) -> usize {
        4
    }
    fn quad_ty(&self) -> Option<TokenStream> {
        Some(quote! { float32x4_t })
    }
    fn quad_zero(&self) -> TokenStream {
        quote! { vdupq_n_f32(0.0) }
    }
    fn hsum4(&self, accs: [TokenStream; 4]) -> TokenStream {
        let [a0, a1, a2, a3] = accs;
        // pairwise adds: [a0, a0, a1, a1] halves, then [a0, a1, a2, a3]
        quote! {{
            let (a0, a1, a2, a3) = (
                vreinterpretq_s32_u8(#a0),
                vreinterpretq_s32_u8(#a1),
                vreinterpretq_s32_u8(#a2),
                vreinterpretq_s32_u8(#a3),
            );
            vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3))
        }}
    }
    fn quad_load_f16(&self, ptrs: [TokenStream; 4]) -> TokenStream {
        let [d0, d1, d2, d3] = ptrs.map(|p| self.load_f16(p));
        quote! {{
            let d = [#d0, #d1, #d2, #d3];
            vld1q_f32(d.as_ptr())
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
            let s = vcvtq_f32_s32(vsubq_s32(#hs, vdupq_n_s32(#bsum)));
            #f = vaddq_f32(#f, vmulq_f32(#d, s));
        }}
    }
    fn quad_store(&self, f: &Ident, scale: TokenStream, out: TokenStream) -> TokenStream {
        quote! { vst1q_f32(#out, vdivq_f32(#f, vdupq_n_f32(#scale))); }
    }
    fn quad_store_scaled(
        &self,
        hs: TokenStream,
        sum: TokenStream,
        scale: TokenStream,
        out: TokenStream,
    ) -> TokenStream {
        quote! {{
            let s = vcvtq_f32_s32(vsubq_s32(#hs, vdupq_n_s32(#sum)));
            vst1q_f32(#out, vmulq_f32(vdivq_f32(s, vdupq_n_f32(#scale)), vdupq_n_f32(ws)));
        }}
    }
    fn load_f16(&self, ptr: TokenStream) -> TokenStream {
        // `fcvt Sd, Hn` is base ARMv8 floating point (FEAT_FP16 only adds f16 arithmetic) and
        // converts exactly (subnormals, infinities; NaNs quieted as `half` does). The stable
        // `float16x4_t` intrinsics do not exist yet, hence `asm!` on register operands only:
        // the u32 goes to an S register (`fmov`), whose low half is the f16. (The default, the
        // `half` crate, detects CPU features and calls out of line on AArch64, which spills a
        // tile's vector accumulators at every block.)
        quote! {{
            let h: u32 = (#ptr as *const u16).read_unaligned() as u32;
            let f: f32;
            core::arch::asm!(
                "fcvt {f:s}, {h:h}",
                h = in(vreg) h,
                f = lateout(vreg) f,
                options(pure, nomem, nostack, preserves_flags)
            );
            f
        }}
    }
    fn store_f16(&self, v: TokenStream) -> TokenStream {
        // `fcvt Hd, Sn` (base ARMv8 floating point), rounding to nearest even; it zeroes the
        // rest of the register, so the u32 read back is the f16's bits
        quote! {{
            let x: f32 = #v;
            let h: u32;
            core::arch::asm!(
                "fcvt {h:h}, {x:s}",
                x = in(vreg) x,
                h = lateout(vreg) h,
                options(pure, nomem, nostack, preserves_flags)
            );
            h as u16
        }}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-only trit sequence equals the scalar vocabulary's `((v * 3^n) & 0xff) * 3 >> 8`
    /// for every byte and every trit position, modelling each NEON op on `u8` lanes.
    #[test]
    fn trit_byte_ops_match_ggml() {
        for n in 0..5u32 {
            let p = 3u32.pow(n);
            for v in 0..=255u32 {
                let q = (v * p) as u8; // vmulq_u8 keeps the low byte
                let h = ((q as u32 + (q >> 1) as u32) >> 1) as u8; // vhaddq_u8(q, q >> 1)
                let t = h >> 6; // vshrq_n_u8::<6>
                assert_eq!(t as u32, (((v * p) & 0xff) * 3) >> 8, "v={v} n={n}");
                assert!(t <= 2);
            }
        }
    }

    /// Every NEON table row generates code that parses, for both ISAs, and the emitted
    /// kernels use the instructions this backend promises (and no x86 intrinsics).
    #[test]
    fn neon_rows_generate() {
        let files = crate::generate(&[Isa::Scalar, Isa::Neon, Isa::NeonDot], "/nonexistent")
            .expect("generation");
        // block-format rows only: the LUT rows have their own template (lut.rs)
        let lut_modules: Vec<String> = crate::table::TABLE
            .iter()
            .filter(|r| r.format.is_lut())
            .map(|r| format!("{}.rs", crate::module_name(r)))
            .collect();
        let neon: Vec<_> = files
            .iter()
            .filter(|f| f.name.ends_with("_neon.rs") || f.name.ends_with("_neondot.rs"))
            .filter(|f| !lut_modules.contains(&f.name))
            .collect();
        let rows = crate::table::TABLE
            .iter()
            .filter(|r| matches!(r.isa, Isa::Neon | Isa::NeonDot) && !r.format.is_lut())
            .count();
        assert_eq!(neon.len(), rows);
        for f in neon {
            assert!(f.contents.contains("core::arch::aarch64"), "{}", f.name);
            assert!(!f.contents.contains("_mm"), "{}", f.name);
            let dot = f.name.ends_with("_neondot.rs");
            assert_eq!(f.contents.contains("sdot"), dot, "{}", f.name);
            assert_eq!(f.contents.contains("vpadalq_s16"), !dot, "{}", f.name);
        }
    }
}
