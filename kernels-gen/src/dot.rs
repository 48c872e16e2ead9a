//! Templates of the block (dot-product) formats: quantize, dequantize, prepare and the matmul
//! register tiles, for any backend and any decode rule from `decode.rs`.
//!
//! Matmul semantics (see `kernels/reference/mod.rs`): tensor-scale formats accumulate
//! `sum(c * q)` over the whole row in i32 lanes and finish with
//! `(hsum - sum(q)) as f32 / s * ws`; block-scale formats reduce every block to its exact i32
//! sum `hsum - bsum_b` and add `d_b * sum` in block order, so every output is bit-exact.

use crate::backend::{backend, target_feature, Backend, Scalar};
use crate::decode::{chunks, ActPos, Chunk};
use crate::table::{FormatSpec, Quantizer, Row, ScaleRule, Tile};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

/// Layout decisions for one (format, backend) pair.
pub struct Plan {
    /// Blocks per main span (tensor-scale formats group blocks to fill a vector; lane spans
    /// one block per vector part).
    pub span_blocks: usize,
    /// The main spans are lane spans (`decode::lane_chunks`, block-scale formats only).
    pub lanes: bool,
    pub main: Vec<Chunk>,
    /// Chunks of a single-block tail span (only when `span_blocks > 1`).
    pub tail: Option<Vec<Chunk>>,
}

pub fn plan(spec: &FormatSpec, w: usize) -> Result<Plan, String> {
    let bcb = spec.block_code_bytes;
    let span_blocks = match spec.scale {
        ScaleRule::TensorTail { .. } if w > bcb && w.is_multiple_of(bcb) => w / bcb,
        _ => 1,
    };
    let main = chunks(spec, span_blocks * bcb, w)?;
    let tail = if span_blocks > 1 {
        Some(chunks(spec, bcb, w)?)
    } else {
        None
    };
    Ok(Plan {
        span_blocks,
        lanes: false,
        main,
        tail,
    })
}

/// The plan of the matmul tiles and their activation layout: as [`plan`], except that a
/// block-scale format whose block is one group of the backend's `lane_part` bytes gets lane
/// spans (I2S64 on AVX-512: four blocks per zmm, one per 128-bit part), so that a tile reduces
/// four blocks of four rows with one lane-wise reduction instead of four horizontal sums; the
/// blocks after the last whole span keep the one-block chunks.
pub fn matmul_plan(spec: &FormatSpec, b: &dyn Backend) -> Result<Plan, String> {
    let base = plan(spec, b.width())?;
    // the span's scales are gathered as halfwords from one 64-byte window per row
    // (`lanes_load_f16`): an even block size, all four within the window
    let bb = spec.block_bytes();
    let lane = match (spec.scale, b.lane_part(), b.quad_ty()) {
        (ScaleRule::BlockF16, Some(lane), Some(_))
            if bb.is_multiple_of(2) && (b.width() / lane - 1) * bb < 64 =>
        {
            lane
        }
        _ => return Ok(base),
    };
    match crate::decode::lane_chunks(spec, lane, b.width()) {
        Some(main) => Ok(Plan {
            span_blocks: b.width() / lane,
            lanes: true,
            main,
            tail: Some(base.main),
        }),
        None => Ok(base),
    }
}

/// Prepared-slot -> span-element map of a chunk list (`None`: a padding slot, always 0).
/// Checked: every element of the span appears in exactly one slot, natural vectors really are
/// natural, and no slot is used twice.
pub fn slot_map(
    spec: &FormatSpec,
    ch: &[Chunk],
    span_elems: usize,
) -> Result<Vec<Option<usize>>, String> {
    let mut map: Vec<Option<Option<usize>>> = Vec::new();
    let mut seen = vec![false; span_elems];
    for c in ch {
        for rep in 0..c.repeat {
            for v in &c.vecs {
                for (i, &e) in v.lane_elem.iter().enumerate() {
                    let e = e.map(|e| e + rep * c.width);
                    let (o, natural) = match v.act {
                        ActPos::Natural(o) => (o, true),
                        ActPos::Permuted(o) => (o, false),
                    };
                    let slot = o + rep * c.width + i;
                    if natural && v.lane_elem[i] != Some(o + i) {
                        return Err(format!(
                            "{}: natural lane {i} is element {:?}, not {}",
                            spec.name,
                            v.lane_elem[i],
                            o + i
                        ));
                    }
                    if map.len() <= slot {
                        map.resize(slot + 1, None);
                    }
                    if map[slot].is_some() {
                        return Err(format!("{}: decode rule uses slot {slot} twice", spec.name));
                    }
                    if let Some(e) = e {
                        if e >= span_elems || seen[e] {
                            return Err(format!(
                                "{}: decode rule maps element {e} twice or outside the span",
                                spec.name
                            ));
                        }
                        seen[e] = true;
                    }
                    map[slot] = Some(e);
                }
            }
        }
    }
    if let Some(e) = seen.iter().position(|s| !s) {
        return Err(format!(
            "{}: decode rule never reads element {e}",
            spec.name
        ));
    }
    map.into_iter()
        .enumerate()
        .map(|(s, e)| e.ok_or_else(|| format!("{}: decode rule leaves slot {s} unused", spec.name)))
        .collect()
}

fn lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

/// The four outputs of weight rows `row + r0 + i * rs` (`i < 4`) and activation row
/// `col + j`, written by `store(ptr)` (a four-lane store at `ptr`): straight into `out`
/// where the rows are adjacent (`rs == 1`), else staged and stored lane by lane (rows `rs`
/// apart: the GEMV's parallel streams).
fn quad_out(r0: usize, j: usize, store: impl Fn(TokenStream) -> TokenStream) -> TokenStream {
    let (rl, jl) = (lit(r0), lit(j));
    let direct = store(quote! { out.add((col + #jl) * n + row + #rl) });
    let staged = store(quote! { t.as_mut_ptr() });
    quote! {
        if rs == 1 {
            #direct
        } else {
            let mut t = [0f32; 4];
            #staged
            for (i, v) in t.iter().enumerate() {
                *out.add((col + #jl) * n + row + (#rl + i) * rs) = *v;
            }
        }
    }
}

/// The weight load of a chunk: `bytes` bytes at `ptr`, broadcast to the vector when the chunk
/// spreads one group (`CodeOp::Spread2`).
fn load_weights(b: &dyn Backend, ch: &Chunk, ptr: TokenStream) -> TokenStream {
    if let Some(stride) = ch.lane_stride {
        let ptrs: Vec<TokenStream> = (0..ch.width / ch.bytes)
            .map(|p| {
                let o = lit(p * stride);
                quote! { (#ptr).add(#o) }
            })
            .collect();
        return b.load_lanes(&ptrs);
    }
    if ch.bytes == ch.width {
        b.load(ch.width, ptr)
    } else {
        b.load_bcast(ch.bytes, ptr).unwrap_or_else(|| {
            panic!(
                "{}: no {}-byte broadcast load for a {}-lane chunk",
                b.isa().name(),
                ch.bytes,
                ch.width
            )
        })
    }
}

pub fn generate_row(row: &Row) -> Result<TokenStream, String> {
    let spec = row.format;
    let b = backend(row.isa);
    if b.isa() != row.isa {
        return Err(format!(
            "backend for {} reports ISA {}",
            row.isa.name(),
            b.isa().name()
        ));
    }
    let plan = plan(spec, b.width())?;
    let tf = target_feature(row.isa);
    let prelude = b.prelude();
    let be = lit(spec.block_elems);
    let bcb = lit(spec.block_code_bytes);
    let bb = lit(spec.block_bytes());
    let per_block = spec.scale == ScaleRule::BlockF16;

    let layout = crate::module_name(row);

    let quantize = gen_quantize(spec, &*b, &tf);
    let dequantize = gen_dequantize(spec, &*b, &plan, &tf)?;
    // the matmul tiles and their activation layout may use narrower vectors
    // (`matmul_backend`): their own plan
    let b = crate::backend::matmul_backend(row.isa, spec);
    let plan = matmul_plan(spec, &*b)?;
    let main_map = slot_map(spec, &plan.main, plan.span_blocks * spec.block_elems)?;
    let tail_map = match &plan.tail {
        Some(t) => slot_map(spec, t, spec.block_elems)?,
        None => (0..spec.block_elems).map(Some).collect(),
    };
    let identity = main_map.iter().enumerate().all(|(s, &e)| Some(s) == e)
        && tail_map.iter().enumerate().all(|(s, &e)| Some(s) == e);
    let main_slots = lit(main_map.len());
    let tail_slots = lit(tail_map.len());
    let sb = lit(plan.span_blocks);
    let prepare = gen_prepare(spec, &plan, &main_map, &tail_map, identity);
    let mut tiles = TokenStream::new();
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    for t in row.tiles.iter().filter(|t| !t.panel) {
        for s in [(t.rows, t.cols), (t.rows, 1), (1, 1)] {
            if !shapes.contains(&s) {
                shapes.push(s);
            }
        }
    }
    for &(r, c) in &shapes {
        tiles.extend(gen_tile(spec, &*b, &plan, r, c, &tf));
    }
    for t in row.tiles {
        if t.panel {
            let tail = plan.tail.as_ref().map(|_| tail_map.len());
            tiles.extend(gen_panel(
                spec,
                &*b,
                &plan,
                (main_map.len(), tail),
                *t,
                &tf,
            )?);
        } else {
            tiles.extend(gen_matmul(spec, &*b, *t, &tf));
        }
    }
    let scale_doc = if per_block {
        "per-block f16 scales"
    } else {
        "one f32 tensor scale"
    };
    let doc = format!(
        " {} on {}: {} code bytes per {}-element block, {scale_doc}; {} block(s) per span.",
        spec.ident,
        row.isa.name(),
        spec.block_code_bytes,
        spec.block_elems,
        plan.span_blocks
    );
    Ok(quote! {
        #![doc = #doc]
        #![allow(unused_unsafe, unused_mut, unused_variables, unused_parens, unused_braces, clippy::all)]
        #prelude
        use crate::{PreparedActs, QuantizedActs};

        /// Elements per block.
        pub const BE: usize = #be;
        /// Code bytes per block.
        pub const BCB: usize = #bcb;
        /// Bytes per block including a per-block scale.
        pub const BB: usize = #bb;
        /// Blocks per main span.
        pub const SPAN_BLOCKS: usize = #sb;
        /// Prepared activation slots per main span / per tail block.
        pub const MAIN_SLOTS: usize = #main_slots;
        pub const TAIL_SLOTS: usize = #tail_slots;
        /// Activation layout id (checked by the safe API).
        pub const LAYOUT: &str = #layout;

        /// Prepared activation row length for a row of `k` elements.
        #[inline]
        pub const fn prepared_stride(k: usize) -> usize {
            let nb = k / BE;
            let spans = nb / SPAN_BLOCKS;
            spans * MAIN_SLOTS + (nb - spans * SPAN_BLOCKS) * TAIL_SLOTS
        }

        #prepare
        #quantize
        #dequantize
        #tiles
    })
}

fn gen_prepare(
    spec: &FormatSpec,
    plan: &Plan,
    main: &[Option<usize>],
    tail: &[Option<usize>],
    identity: bool,
) -> TokenStream {
    let be = lit(spec.block_elems);
    let bsum = if spec.scale == ScaleRule::BlockF16 {
        quote! {
            let nb = k / #be;
            let mut bsum = Vec::with_capacity(m * nb);
            for row in 0..m {
                for blk in 0..nb {
                    let s = &acts.q[row * k + blk * #be..row * k + (blk + 1) * #be];
                    bsum.push(s.iter().map(|&v| v as i32).sum::<i32>());
                }
            }
        }
    } else {
        quote! { let bsum = Vec::new(); }
    };
    let permute = if identity {
        quote! { let q = crate::AlignedI8::copy_from(&acts.q); }
    } else {
        // The slot -> element maps as runs of consecutive slots holding consecutive
        // elements (slot, element, length); padding slots are in no run and stay 0.
        let runs = |m: &[Option<usize>]| -> Vec<TokenStream> {
            let mut out: Vec<(usize, usize, usize)> = Vec::new();
            for (slot, e) in m.iter().enumerate() {
                let Some(e) = *e else { continue };
                match out.last_mut() {
                    Some((s0, e0, len)) if *s0 + *len == slot && *e0 + *len == e => *len += 1,
                    _ => out.push((slot, e, 1)),
                }
            }
            out.into_iter()
                .map(|(s0, e0, len)| {
                    let (s0, e0, len) = (lit(s0), lit(e0), lit(len));
                    quote! { (#s0, #e0, #len) }
                })
                .collect()
        };
        let main_len = lit(main.len());
        let main_runs = runs(main);
        let main_n = lit(main_runs.len());
        let tail_len = lit(tail.len());
        let tail_runs = runs(tail);
        let tail_n = lit(tail_runs.len());
        let sb = lit(plan.span_blocks);
        quote! {
            /// Prepared slots per main span and per single-block tail span.
            const MAIN_LEN: usize = #main_len;
            const TAIL_LEN: usize = #tail_len;
            /// Slot -> element map of a main span (derived from the decode rule) as runs
            /// `(first slot, first element, length)`; slots in no run are padding (0).
            const MAIN_RUNS: [(usize, usize, usize); #main_n] = [#(#main_runs),*];
            /// The same for a single-block tail span.
            const TAIL_RUNS: [(usize, usize, usize); #tail_n] = [#(#tail_runs),*];
            let stride = prepared_stride(k);
            let mut q = crate::AlignedI8::zeroed(m * stride);
            let nb = k / #be;
            let main_spans = nb / #sb;
            for row in 0..m {
                let src = &acts.q[row * k..(row + 1) * k];
                let dst = &mut q[row * stride..(row + 1) * stride];
                for sp in 0..main_spans {
                    let (s0, e0) = (sp * MAIN_LEN, sp * #sb * #be);
                    for &(s, e, len) in MAIN_RUNS.iter() {
                        dst[s0 + s..s0 + s + len].copy_from_slice(&src[e0 + e..e0 + e + len]);
                    }
                }
                for blk in main_spans * #sb..nb {
                    let s0 = main_spans * MAIN_LEN + (blk - main_spans * #sb) * TAIL_LEN;
                    let e0 = blk * #be;
                    for &(s, e, len) in TAIL_RUNS.iter() {
                        dst[s0 + s..s0 + s + len].copy_from_slice(&src[e0 + e..e0 + e + len]);
                    }
                }
            }
        }
    };
    quote! {
        /// Activation layout of this kernel family: int8 values reordered to the decode
        /// order of the packed weights (with zero padding slots where the decode rule has
        /// them), plus per-block sums for block-scale formats.
        /// `acts.k` must be a multiple of the block size (checked by the caller).
        pub fn prepare(acts: &QuantizedActs) -> PreparedActs {
            let (m, k) = (acts.m, acts.k);
            #permute
            #bsum
            PreparedActs {
                m, k, stride: prepared_stride(k), layout: LAYOUT, q,
                scale: acts.scale.clone(), sum: acts.sum.clone(), bsum, lut: crate::AlignedI8::zeroed(0),
            }
        }
    }
}

/// Portable quantizer (the table's `Quantizer`, byte-exact with the upstream reference),
/// compiled with the row's target features so the loops vectorise.
fn gen_quantize(spec: &FormatSpec, b: &dyn Backend, tf: &TokenStream) -> TokenStream {
    let be = lit(spec.block_elems);
    let bcb = lit(spec.block_code_bytes);
    let bb = lit(spec.block_bytes());
    // Both rules are written as comparisons (no rounding calls) so the loops vectorise; the
    // equivalence with the upstream formulas is documented per rule and pinned by the tests.
    let code_fn = match spec.quantizer {
        Quantizer::SignMax => quote! {
            /// bitnet.cpp quantize_i2_s: [`crate::sign_code`].
            #[inline(always)]
            fn code(x: f32, _id: f32) -> u8 {
                crate::sign_code(x)
            }
        },
        Quantizer::RoundAbsMax => quote! {
            /// ggml `lroundf(x * id) + 1` for `|x * id| <= 1` (id = 1/max|x|): round half away
            /// from zero gives +1 for t >= 0.5, -1 for t <= -0.5, else 0; NaN gives 0.
            #[inline(always)]
            fn code(x: f32, id: f32, ) -> u8 {
                let t = x * id;
                1 + (t >= 0.5) as u8 - (t <= -0.5) as u8
            }
        },
    };
    let tensor_scale = quote! {
        // max|x| in f32 is exact (and ignores NaN like the f64 fold upstream)
        let tmax = tmax_acc as f64;
    };
    let bmax_x = b.block_absmax(quote! { x }, spec.block_elems);
    let bmax_src = b.block_absmax(quote! { src.add(blk * #be) }, spec.block_elems);
    let block_scale = match spec.quantizer {
        Quantizer::RoundAbsMax => quote! {
            let amax = amaxs[blk - blk0];
            let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        },
        // the codes do not depend on the tensor scale: its max is folded in block by block
        // (one pass over the input)
        Quantizer::SignMax => quote! {
            let bmax = #bmax_x;
            if bmax > tmax_acc { tmax_acc = bmax; }
            let id = 0f32;
        },
    };
    let needs_tmax = spec.quantizer == Quantizer::SignMax;
    let tmax_stmt = if needs_tmax {
        tensor_scale
    } else {
        quote! {}
    };
    let pack = match spec.codes {
        crate::table::CodeRule::Packed2 {
            group_bytes,
            msb_first,
        } => {
            let gb = lit(group_bytes);
            let shifts: Vec<u32> = (0..4)
                .map(|j| if msb_first { 6 - 2 * j } else { 2 * j })
                .collect();
            let terms = (0..4usize).map(|j| {
                let s = Literal::u32_unsuffixed(shifts[j]);
                let jl = lit(j);
                quote! { (code(*x.add(g * 4 * #gb + #jl * #gb + mm), id) << #s) }
            });
            quote! {
                for g in 0..#bcb / #gb {
                    for mm in 0..#gb {
                        *o.add(g * #gb + mm) = #(#terms)|*;
                    }
                }
            }
        }
        crate::table::CodeRule::Base3 => quote! {
            // the block's codes first (one contiguous vectorisable pass), then the base-3
            // digits from them in u8 lanes (5 digits <= 242)
            let mut c = [0u8; 256];
            for (c, i) in c.iter_mut().zip(0..256usize) {
                *c = code(*x.add(i), id);
            }
            #[inline(always)]
            fn byte(q: u8) -> u8 {
                ((q as u16 * 256 + 242) / 243) as u8
            }
            // qs[0..32]: elements n*32 + m; qs[32..48]: 160 + n*16 + m; qh: 240 + n*4 + j
            let (q0, q1) = (&c[..160], &c[160..240]);
            for mm in 0..32usize {
                let q = (((q0[mm] * 3 + q0[32 + mm]) * 3 + q0[64 + mm]) * 3 + q0[96 + mm]) * 3
                    + q0[128 + mm];
                *o.add(mm) = byte(q);
            }
            for mm in 0..16usize {
                let q = (((q1[mm] * 3 + q1[16 + mm]) * 3 + q1[32 + mm]) * 3 + q1[48 + mm]) * 3
                    + q1[64 + mm];
                *o.add(32 + mm) = byte(q);
            }
            let q2 = &c[240..];
            for j in 0..4usize {
                let q = (((q2[j] * 3 + q2[4 + j]) * 3 + q2[8 + j]) * 3 + q2[12 + j]) * 3;
                *o.add(48 + j) = byte(q);
            }
        },
        _ => unreachable!(),
    };
    let (block_ptr, store_scale, tail) = match spec.scale {
        ScaleRule::BlockF16 => (
            quote! { let o = out.add(blk * #bb); },
            {
                let h = b.store_f16(quote! { amax });
                quote! { let h = #h.to_le_bytes(); *o.add(#bcb) = h[0]; *o.add(#bcb + 1) = h[1]; }
            },
            quote! {},
        ),
        ScaleRule::TensorTail { tail_bytes } => {
            let tb = lit(tail_bytes);
            (
                quote! { let o = out.add(blk * #bcb); },
                quote! {},
                quote! {
                    let t = out.add(nblocks * #bcb);
                    for i in 0..#tb { *t.add(i) = 0; }
                    let s = (tmax as f32).to_le_bytes();
                    for i in 0..4 { *t.add(i) = s[i]; }
                },
            )
        }
    };
    // one block: its codes and (block-scale formats) its scale
    let block = quote! {
        let x = src.add(blk * #be);
        #block_ptr
        #block_scale
        #pack
        #store_scale
    };
    let blocks = match spec.quantizer {
        // blocks in groups of at least 4 and 256 elements: the group's maxima first
        // (independent reductions the core overlaps), then its codes (TQ1_0 quantize with
        // one 256-element block per group: 3.6-4.3 instead of 3.9-4.8 Gelem/s best-of on
        // AVX-512 VNNI, 2.6-2.7 instead of 2.9 on AVX2; 64-element blocks in groups of 16
        // instead of 4 were slower)
        Quantizer::RoundAbsMax => {
            let g = lit((256 / spec.block_elems).max(4));
            quote! {
                let mut blk0 = 0usize;
                while blk0 < nblocks {
                    let blk1 = (blk0 + #g).min(nblocks);
                    let mut amaxs = [0f32; #g];
                    for blk in blk0..blk1 {
                        amaxs[blk - blk0] = #bmax_src;
                    }
                    for blk in blk0..blk1 {
                        #block
                    }
                    blk0 = blk1;
                }
            }
        }
        Quantizer::SignMax => quote! {
            for blk in 0..nblocks {
                #block
            }
        },
    };
    quote! {
        #code_fn

        /// Quantize `n x k` f32 weights into this format (byte-exact with the upstream
        /// reference quantizer).
        ///
        /// # Safety
        /// `src` holds `n * k` values, `out` has room for the format's tensor size, and `k`
        /// is a multiple of the block size.
        #tf
        pub unsafe fn quantize(src: *const f32, n: usize, k: usize, out: *mut u8) {
            let nblocks = n * k / #be;
            let mut tmax_acc = 0f32;
            #blocks
            #tmax_stmt
            #tail
        }
    }
}

fn gen_dequantize(
    spec: &FormatSpec,
    b: &dyn Backend,
    plan: &Plan,
    tf: &TokenStream,
) -> Result<TokenStream, String> {
    let be = lit(spec.block_elems);
    let bcb = lit(spec.block_code_bytes);
    let bb = lit(spec.block_bytes());
    let sb = lit(plan.span_blocks);
    let vt = b.vec_ty();
    // 2-bit codes: a lookup table of the scale `d` (`tab`), made where `d` is
    let table = match spec.codes {
        crate::table::CodeRule::Packed2 { .. } => b.dequant_table(quote! { d }),
        _ => None,
    };
    let tab = table.as_ref().map(|t| quote! { let tab = #t; });
    let span_body = |ch: &[Chunk]| -> TokenStream {
        let mut body = TokenStream::new();
        for c in ch {
            let off = lit(c.offset);
            let w = lit(c.width);
            let step = b.dequant_step();
            // a run of `step` lanes is stored with one vector op when its lanes are real,
            // consecutive elements; other lanes (narrow chunks, padding) go through the scalar
            // vocabulary one byte at a time.
            let run_ok = |v: &crate::decode::CodeVec, l: usize| {
                l + step <= c.width
                    && v.lane_elem[l].is_some()
                    && (0..step).all(|t| v.lane_elem[l + t] == v.lane_elem[l].map(|e| e + t))
            };
            let wb = lit(c.bytes);
            let load = load_weights(b, c, quote! { p.add(#off + rep * #wb) });
            let mut inner = quote! { let v: #vt = #load; };
            // byte offsets already widened for `dequant_lookup` (`x{offset}`), and the
            // lookups by output element: stored in address order after every vector (in the
            // code vectors' order, which alternates between groups: I2S 2.7-3.1 instead of
            // 3.8-4.1 Gelem/s)
            let mut widened: Vec<usize> = Vec::new();
            let mut lookups: Vec<(usize, TokenStream)> = Vec::new();
            let sc = Scalar;
            for (vi, v) in c.vecs.iter().enumerate() {
                let cv = format_ident!("c{}", vi);
                let code = b.code(&format_ident!("v"), v.op);
                let mut vector_runs = TokenStream::new();
                let mut leftovers: Vec<(usize, usize)> = Vec::new();
                let mut needs_code = false;
                let mut l = 0;
                while l < c.width {
                    if l % step == 0 && run_ok(v, l) {
                        let elem = v.lane_elem[l].expect("checked");
                        let e = lit(elem);
                        let out = quote! { o.add(#e + rep * #w) };
                        // a run of one 2-bit field straight from its bytes (the lane's byte
                        // is lane `l` of the load, or of the broadcast group)
                        let shift = match v.op {
                            crate::backend::CodeOp::Shift2(s) => Some(s),
                            crate::backend::CodeOp::Spread2 { bytes, shifts } if step <= bytes => {
                                Some(shifts[l / bytes])
                            }
                            _ => None,
                        };
                        let direct = shift.filter(|_| table.is_some()).and_then(|s| {
                            let byte = if c.bytes < c.width { l % c.bytes } else { l };
                            let x = format_ident!("x{}", byte);
                            if !widened.contains(&byte) {
                                let bl = lit(byte);
                                let e =
                                    b.dequant_widen(quote! { p.add(#off + rep * #wb + #bl) })?;
                                widened.push(byte);
                                inner.extend(quote! { let #x = #e; });
                            }
                            Some(b.dequant_lookup(s, &x, &format_ident!("tab"), out.clone()))
                        });
                        match direct {
                            Some(st) => lookups.push((elem, st)),
                            None => {
                                needs_code = true;
                                vector_runs.extend(b.store_dequant(&cv, l, step, quote! { d }, out))
                            }
                        }
                        l += step;
                    } else {
                        if let Some(e) = v.lane_elem[l] {
                            leftovers.push((l, e));
                        }
                        l += 1;
                    }
                }
                if !vector_runs.is_empty() {
                    if needs_code {
                        inner.extend(quote! { let #cv: #vt = #code; });
                    }
                    inner.extend(vector_runs);
                }
                if !leftovers.is_empty() {
                    let scode = sc.code(&format_ident!("v"), v.op);
                    let lanes = leftovers.iter().map(|&(l, _)| lit(l));
                    let elems = leftovers.iter().map(|&(_, e)| lit(e));
                    inner.extend(quote! {
                        for (&i, &e) in [#(#lanes),*].iter().zip([#(#elems),*].iter()) {
                            let v = *p.add(#off + rep * #w + i) as i32;
                            *o.add(e + rep * #w) = (#scode - 1) as f32 * d;
                        }
                    });
                }
            }
            lookups.sort_by_key(|&(e, _)| e);
            inner.extend(lookups.into_iter().map(|(_, st)| st));
            let reps = lit(c.repeat);
            body.extend(quote! { for rep in 0..#reps { #inner } });
        }
        body
    };
    let main = span_body(&plan.main);
    let prologue = b.prologue();
    let (tail_prologue, block_scale) = match spec.scale {
        ScaleRule::TensorTail { .. } => (
            quote! {
                let t = data.add(nblocks * #bcb);
                let d = f32::from_le_bytes([*t, *t.add(1), *t.add(2), *t.add(3)]);
                #tab
            },
            quote! {},
        ),
        ScaleRule::BlockF16 => (quote! {}, {
            let l = b.load_f16(quote! { p.add(#bcb) });
            quote! { let d = #l; #tab }
        }),
    };
    let stride = if spec.scale == ScaleRule::BlockF16 {
        quote! { #bb }
    } else {
        quote! { #bcb }
    };
    let tail_loop = match &plan.tail {
        Some(t) => {
            let tb = span_body(t);
            quote! {
                for blk in spans * #sb..nblocks {
                    let p = data.add(blk * #stride);
                    let o = out.add(blk * #be);
                    #tb
                }
            }
        }
        None => quote! {},
    };
    Ok(quote! {
        /// Dequantize `n x k` weights to f32 (`w * scale`).
        ///
        /// # Safety
        /// `data` holds a valid tensor of this format and shape, `out` has room for `n * k`
        /// values.
        #tf
        pub unsafe fn dequantize(data: *const u8, n: usize, k: usize, out: *mut f32) {
            #prologue
            let nblocks = n * k / #be;
            #prologue
            #tail_prologue
            let spans = nblocks / #sb;
            for sp in 0..spans {
                let p = data.add(sp * #sb * #stride);
                let o = out.add(sp * #sb * #be);
                #block_scale
                #main
            }
            #tail_loop
        }
    })
}

/// Shifts used by the main spans' chunks when every code there is a 2-bit field and the
/// backend can dot scaled codes (one accumulator per shift); `None` otherwise.
///
/// Scaled codes save the shift of every non-zero field (one op per code vector) and cost a
/// merge of the class accumulators (a shift and an add per extra class and accumulator) at
/// every flush: once per row for tensor-scale formats, but once per block for block-scale
/// ones, where they are used only if a block has more shifted code vectors than the merge
/// costs (QK256 and I2S64 on AVX-512 have one code vector per field and block: plain codes).
/// A tensor-scale row's tail (at most one block, after the merge) always dots plain codes
/// into the merged accumulators, so its decode (e.g. I2S's broadcast odd block on
/// AVX-512) does not decide for the main spans.
fn scaled_classes(
    b: &dyn Backend,
    spec: &FormatSpec,
    plan: &Plan,
    r: usize,
    c: usize,
) -> Option<Vec<u32>> {
    let mut shifts = Vec::new();
    let mut shifted = 0usize;
    for ch in &plan.main {
        for v in &ch.vecs {
            match v.op {
                crate::backend::CodeOp::Shift2(s) => {
                    if !shifts.contains(&s) {
                        shifts.push(s)
                    }
                }
                _ => return None,
            }
        }
    }
    for ch in &plan.main {
        for v in &ch.vecs {
            if matches!(v.op, crate::backend::CodeOp::Shift2(s) if s != 0) {
                shifted += ch.repeat;
            }
        }
    }
    let probe = format_ident!("probe");
    if r * c * shifts.len() > 16 || b.code_scaled(&probe, 0).is_none() {
        return None;
    }
    if spec.scale == ScaleRule::BlockF16 && shifted <= 2 * (shifts.len() - 1) {
        return None;
    }
    shifts.sort();
    Some(shifts)
}

fn acc_ident(i: usize, j: usize, class: Option<u32>) -> Ident {
    match class {
        Some(s) => format_ident!("acc{}_{}_s{}", i, j, s),
        None => format_ident!("acc{}_{}", i, j),
    }
}

/// Statements: the weight vector of row `i` of a tile for `chunk` bound to `name`, plus the
/// streaming prefetch of the same position `pf` bytes ahead (a later tile) at line starts.
fn row_load(b: &dyn Backend, chunk: &Chunk, i: usize, name: &Ident, far: bool) -> TokenStream {
    let vt = b.vec_ty();
    let off = lit(chunk.offset);
    let wb = lit(chunk.bytes);
    let wp = format_ident!("w{}", i);
    let load = load_weights(b, chunk, quote! { #wp.add(span_off + #off + rep * #wb) });
    let mut st = quote! { let #name: #vt = #load; };
    if chunk.offset.is_multiple_of(64) {
        st.extend(b.prefetch(
            quote! { #wp.wrapping_add(span_off + #off + rep * #wb + pf) },
            far,
        ));
    }
    if let Some(stride) = chunk.lane_stride {
        // a lane span covers more than one line: every line of it
        let span = (chunk.width / chunk.bytes - 1) * stride + chunk.bytes;
        for line in (64..span).step_by(64) {
            let l = lit(chunk.offset + line);
            st.extend(b.prefetch(quote! { #wp.wrapping_add(span_off + #l + pf) }, far));
        }
    }
    st
}

/// Statements: the activation vectors `x{j}_{vi}` of `chunk` for columns `0..c`.
fn act_loads(b: &dyn Backend, chunk: &Chunk, c: usize) -> TokenStream {
    let vt = b.vec_ty();
    let w = lit(chunk.width);
    let mut st = TokenStream::new();
    for j in 0..c {
        let ap = format_ident!("a{}", j);
        for (vi, cv) in chunk.vecs.iter().enumerate() {
            let a = format_ident!("x{}_{}", j, vi);
            let o = match cv.act {
                ActPos::Natural(o) | ActPos::Permuted(o) => lit(o),
            };
            let load = b.load(chunk.width, quote! { #ap.add(span_elem + #o + rep * #w) });
            st.extend(quote! { let #a: #vt = #load; });
        }
    }
    st
}

/// Emit the loads, decodes and dot products of one span for an `r x c` tile.
fn span_dots(
    b: &dyn Backend,
    ch: &[Chunk],
    r: usize,
    c: usize,
    classes: bool,
    split: bool,
    far_prefetch: bool,
) -> TokenStream {
    if split {
        return split_dots(b, ch, r, c, far_prefetch);
    }
    let vt = b.vec_ty();
    let mut body = TokenStream::new();
    for chunk in ch {
        let mut st = TokenStream::new();
        for i in 0..r {
            let v = format_ident!("v{}", i);
            st.extend(row_load(b, chunk, i, &v, far_prefetch));
            for (vi, cv) in chunk.vecs.iter().enumerate() {
                let code = format_ident!("c{}_{}", i, vi);
                let expr = match (classes, cv.op) {
                    (true, crate::backend::CodeOp::Shift2(s)) => {
                        b.code_scaled(&v, s).expect("scaled codes")
                    }
                    _ => b.code(&v, cv.op),
                };
                st.extend(quote! { let #code: #vt = #expr; });
            }
        }
        st.extend(act_loads(b, chunk, c));
        for i in 0..r {
            for j in 0..c {
                if classes {
                    for (vi, cv) in chunk.vecs.iter().enumerate() {
                        let crate::backend::CodeOp::Shift2(sh) = cv.op else {
                            unreachable!("scaled classes need 2-bit fields")
                        };
                        let acc = acc_ident(i, j, Some(sh));
                        let pair = (
                            format_ident!("c{}_{}", i, vi),
                            format_ident!("x{}_{}", j, vi),
                        );
                        st.extend(b.dot(&acc, &[pair]));
                    }
                } else {
                    let acc = acc_ident(i, j, None);
                    let pairs: Vec<(Ident, Ident)> = (0..chunk.vecs.len())
                        .map(|vi| {
                            (
                                format_ident!("c{}_{}", i, vi),
                                format_ident!("x{}_{}", j, vi),
                            )
                        })
                        .collect();
                    st.extend(b.dot(&acc, &pairs));
                }
            }
        }
        let reps = lit(chunk.repeat);
        body.extend(quote! { for rep in 0..#reps { #st } });
    }
    body
}

/// Base-3 formats on a backend with [`Backend::byte_triple`]: the trit vectors are never
/// extracted. With `q_n = 3^n b mod 256` (one byte triple per step) the trit is
/// `t_n = (3 q_n - q_{n+1}) / 256`, so per (row, column) accumulator `_d` takes the dots of
/// `q_n` and `_e` those of `q_{n+1}` (both with trit `n`'s activations); the tile merges them
/// as `3 d - e` and divides the horizontal sum by 256 (exact).
fn trit_split(b: &dyn Backend, spec: &FormatSpec, plan: &Plan) -> bool {
    let all_trits = plan
        .main
        .iter()
        .chain(plan.tail.iter().flatten())
        .flat_map(|ch| ch.vecs.iter())
        .all(|v| matches!(v.op, crate::backend::CodeOp::Trit(_)));
    all_trits && spec.scale == ScaleRule::BlockF16 && b.byte_triple(quote! { v }).is_some()
}

fn split_dots(
    b: &dyn Backend,
    ch: &[Chunk],
    r: usize,
    c: usize,
    far_prefetch: bool,
) -> TokenStream {
    let vt = b.vec_ty();
    let mut body = TokenStream::new();
    for chunk in ch {
        let trit = |op| match op {
            crate::backend::CodeOp::Trit(n) => n as usize,
            _ => unreachable!("trit_split checked the ops"),
        };
        let top = chunk.vecs.iter().map(|v| trit(v.op)).max().unwrap_or(0) + 1;
        let mut st = TokenStream::new();
        for i in 0..r {
            st.extend(row_load(
                b,
                chunk,
                i,
                &format_ident!("q{}_0", i),
                far_prefetch,
            ));
            for n in 1..=top {
                let (prev, q) = (
                    format_ident!("q{}_{}", i, n - 1),
                    format_ident!("q{}_{}", i, n),
                );
                let e = b.byte_triple(quote! { #prev }).expect("byte_triple");
                st.extend(quote! { let #q: #vt = #e; });
            }
        }
        st.extend(act_loads(b, chunk, c));
        for i in 0..r {
            for j in 0..c {
                for (suffix, step) in [("d", 0usize), ("e", 1)] {
                    let acc = format_ident!("acc{}_{}_{}", i, j, suffix);
                    let pairs: Vec<(Ident, Ident)> = chunk
                        .vecs
                        .iter()
                        .enumerate()
                        .map(|(vi, cv)| {
                            (
                                format_ident!("q{}_{}", i, trit(cv.op) + step),
                                format_ident!("x{}_{}", j, vi),
                            )
                        })
                        .collect();
                    st.extend(b.dot(&acc, &pairs));
                }
            }
        }
        let reps = lit(chunk.repeat);
        body.extend(quote! { for rep in 0..#reps { #st } });
    }
    body
}

fn gen_tile(
    spec: &FormatSpec,
    b: &dyn Backend,
    plan: &Plan,
    r: usize,
    c: usize,
    tf: &TokenStream,
) -> TokenStream {
    let name = format_ident!("tile_{}x{}", r, c);
    let bcb = lit(spec.block_code_bytes);
    let bb = lit(spec.block_bytes());
    let vt = b.vec_ty();
    let zero = b.zero();
    let per_block = spec.scale == ScaleRule::BlockF16;
    let wptrs = (0..r).map(|i| {
        let wp = format_ident!("w{}", i);
        let il = lit(i);
        quote! { let #wp = w.add((row + #il * rs) * row_bytes); }
    });
    let aptrs = (0..c).map(|j| {
        let ap = format_ident!("a{}", j);
        let jl = lit(j);
        quote! { let #ap = acts.q.as_ptr().add((col + #jl) * acts.stride); }
    });
    // lane spans dot plain codes (their flush is once per span and row already)
    let classes = if plan.lanes {
        None
    } else {
        scaled_classes(b, spec, plan, r, c)
    };
    let split = trit_split(b, spec, plan);
    let far = far_prefetch(spec);
    let accs: Vec<Ident> = (0..r)
        .flat_map(|i| (0..c).map(move |j| (i, j)))
        .flat_map(|(i, j)| match &classes {
            Some(sh) => sh
                .iter()
                .map(|&s| acc_ident(i, j, Some(s)))
                .collect::<Vec<_>>(),
            None if split => vec![
                format_ident!("acc{}_{}_d", i, j),
                format_ident!("acc{}_{}_e", i, j),
            ],
            None => vec![acc_ident(i, j, None)],
        })
        .collect();
    // with scaled codes: acc = sum over shifts of (acc_s >> s), exact (lanes are multiples)
    let merge: TokenStream = match &classes {
        Some(sh) => (0..r)
            .flat_map(|i| (0..c).map(move |j| (i, j)))
            .map(|(i, j)| {
                let target = acc_ident(i, j, None);
                let mut e: Option<TokenStream> = None;
                for &s in sh {
                    let a = acc_ident(i, j, Some(s));
                    let t = if s == 0 {
                        quote! { #a }
                    } else {
                        b.srai32(quote! { #a }, s)
                    };
                    e = Some(match e {
                        None => t,
                        Some(prev) => b.add32(prev, t),
                    });
                }
                let e = e.expect("at least one class");
                quote! { let mut #target: #vt = #e; }
            })
            .collect(),
        // trit split: acc = 3 d - e, whose horizontal sum is 256 times the trit dot
        None if split => (0..r)
            .flat_map(|i| (0..c).map(move |j| (i, j)))
            .map(|(i, j)| {
                let target = acc_ident(i, j, None);
                let d = format_ident!("acc{}_{}_d", i, j);
                let e = format_ident!("acc{}_{}_e", i, j);
                let three = b.add32(b.add32(quote! { #d }, quote! { #d }), quote! { #d });
                let m = b.sub32(three, quote! { #e });
                quote! { let #target: #vt = #m; }
            })
            .collect(),
        None => quote! {},
    };
    let main = span_dots(b, &plan.main, r, c, classes.is_some(), split, far);
    // block-scale formats: per block, fresh integer accumulators, the dots, then a flush
    // into the f32 accumulators (`init`), stored at the end
    // lane spans: the spans of `SPAN_BLOCKS` blocks with their own flush (`lanes`: the
    // flush and what follows the spans), then the remaining blocks one by one
    let tail = plan
        .tail
        .as_ref()
        .filter(|_| plan.lanes)
        .map(|t| span_dots(b, t, r, c, false, false, far));
    let sb = lit(plan.span_blocks);
    let block_loop = |init: TokenStream,
                      flush: TokenStream,
                      lanes: Option<(TokenStream, TokenStream)>,
                      stores: TokenStream| {
        match (lanes, &tail) {
            (Some((lane_flush, after)), Some(tail)) => {
                let spans = span_loops(
                    spec,
                    plan,
                    quote! { #(let mut #accs: #vt = #zero;)* #main #lane_flush },
                    after,
                    Some(quote! { #(let mut #accs: #vt = #zero;)* #tail #flush }),
                );
                quote! {
                    #init
                    #spans
                    #stores
                }
            }
            _ => quote! {
                #init
                for blk in 0..nb {
                    let span_off = blk * #bb;
                    let span_elem = blk * MAIN_SLOTS;
                    #(let mut #accs: #vt = #zero;)*
                    #main
                    #merge
                    #flush
                }
                #stores
            },
        }
    };
    // the lane-span flush of rows `rows` (four, or one row four times) and column `j` into
    // the 4-lane f32 accumulator `f`
    let lane_update = |rows: [usize; 4], j: usize, f: &Ident| {
        let accs: [TokenStream; 4] = rows.map(|i| {
            let a = format_ident!("acc{}_{}", i, j);
            quote! { #a }
        });
        let hs = b.hsum4_lanes(accs);
        let jl = lit(j);
        let bsum = quote! { acts.bsum.as_ptr().add((col + #jl) * nb + sp * #sb) };
        b.lanes_update(f, quote! { dl }, hs, bsum)
    };
    // the lane-span flush of rows `rows`: their scales once, then every column `j` into
    // the 4-lane accumulator `f(j)`
    let lane_flush = |rows: [usize; 4], f: &dyn Fn(usize) -> Ident| {
        let dl = b.lanes_load_f16(
            rows.map(|i| {
                let wp = format_ident!("w{}", i);
                quote! { #wp.add(span_off + #bcb) }
            }),
            spec.block_bytes(),
        );
        let per_col = (0..c).map(|j| lane_update(rows, j, &f(j)));
        quote! {{
            let dl = #dl;
            #(#per_col)*
        }}
    };
    let quad = b.quad_ty().filter(|_| r.is_multiple_of(4));
    let body = if let (true, Some(qt)) = (per_block, quad) {
        // four rows at a time: one 4-way horizontal sum per column and block, the block
        // scales applied lane-wise (each lane is one row: same operations, same order, as
        // the one-row flush below)
        let groups = r / 4;
        let fq = |g: usize, j: usize| format_ident!("fq{}_{}", g, j);
        let fqs: Vec<Ident> = (0..groups)
            .flat_map(|g| (0..c).map(move |j| fq(g, j)))
            .collect();
        let qz = b.quad_zero();
        let flush = (0..groups).map(|g| {
            // the four rows' block scales as one vector, once for all columns
            let dq = b.quad_load_f16(core::array::from_fn(|i| {
                let wp = format_ident!("w{}", 4 * g + i);
                quote! { #wp.add(span_off + #bcb) }
            }));
            let loads = quote! { let dq = #dq; };
            let per_col = (0..c).map(|j| {
                let accs: [TokenStream; 4] = core::array::from_fn(|i| {
                    let a = format_ident!("acc{}_{}", 4 * g + i, j);
                    quote! { #a }
                });
                let hs = b.hsum4(accs);
                let hs = if split { b.quad_srai(hs, 8) } else { hs };
                let jl = lit(j);
                let bsum = quote! { *acts.bsum.get_unchecked((col + #jl) * nb + blk) };
                b.quad_update(&fq(g, j), quote! { dq }, hs, bsum)
            });
            quote! {{
                #loads
                #(#per_col)*
            }}
        });
        let stores = (0..groups)
            .flat_map(|g| (0..c).map(move |j| (g, j)))
            .map(|(g, j)| {
                let f = fq(g, j);
                let jl = lit(j);
                let scale = quote! { *acts.scale.get_unchecked(col + #jl) };
                quad_out(4 * g, j, |to| b.quad_store(&f, scale.clone(), to))
            });
        let lanes = plan.lanes.then(|| {
            let flush =
                (0..groups).map(|g| lane_flush(core::array::from_fn(|i| 4 * g + i), &|j| fq(g, j)));
            (quote! { #(#flush)* }, quote! {})
        });
        block_loop(
            quote! { #(let mut #fqs: #qt = #qz;)* },
            quote! { #(#flush)* },
            lanes,
            quote! { #(#stores)* },
        )
    } else if per_block {
        let flush = (0..r).map(|i| {
            let wp = format_ident!("w{}", i);
            let f16 = b.load_f16(quote! { #wp.add(span_off + #bcb) });
            let per_col = (0..c).map(|j| {
                let acc = format_ident!("acc{}_{}", i, j);
                let f = format_ident!("f{}_{}", i, j);
                let h = b.hsum(quote! { #acc });
                let h = if split {
                    quote! { (#h >> 8) }
                } else {
                    h
                };
                let jl = lit(j);
                quote! {
                    let s = #h - *acts.bsum.get_unchecked((col + #jl) * nb + blk);
                    #f += d * s as f32;
                }
            });
            quote! {{
                let d = #f16;
                #(#per_col)*
            }}
        });
        let fs = (0..r).flat_map(|i| (0..c).map(move |j| format_ident!("f{}_{}", i, j)));
        let stores = (0..r).flat_map(|i| (0..c).map(move |j| (i, j))).map(|(i, j)| {
            let f = format_ident!("f{}_{}", i, j);
            let (il, jl) = (lit(i), lit(j));
            quote! { *out.add((col + #jl) * n + row + #il * rs) = #f / *acts.scale.get_unchecked(col + #jl); }
        });
        // lane spans on fewer than four rows: each row's flush as a 4-lane one of the row
        // four times (every lane the same), its lane 0 then continuing in `f`
        let fq = |i: usize, j: usize| format_ident!("fq{}_{}", i, j);
        let lanes = plan.lanes.then(|| {
            let flush = (0..r).map(|i| lane_flush([i; 4], &|j| fq(i, j)));
            let after = (0..r)
                .flat_map(|i| (0..c).map(move |j| (i, j)))
                .map(|(i, j)| {
                    let (f, q) = (format_ident!("f{}_{}", i, j), fq(i, j));
                    let first = b.quad_first(quote! { #q });
                    quote! { let mut #f = #first; }
                });
            (quote! { #(#flush)* }, quote! { #(#after)* })
        });
        // `f` starts at 0, or (lane spans) where the spans' 4-lane accumulators ended
        let init = match (&lanes, b.quad_ty()) {
            (Some(_), Some(qt)) => {
                let qz = b.quad_zero();
                let fqs = (0..r).flat_map(|i| (0..c).map(move |j| fq(i, j)));
                quote! { #(let mut #fqs: #qt = #qz;)* }
            }
            _ => quote! { #(let mut #fs = 0f32;)* },
        };
        block_loop(init, quote! { #(#flush)* }, lanes, quote! { #(#stores)* })
    } else {
        let tail = plan
            .tail
            .as_ref()
            .map(|t| span_dots(b, t, r, c, false, split, far));
        let spans = span_loops(spec, plan, main, merge, tail);
        // four rows at a time where the ISA has 4-lane vectors: one 4-way horizontal sum
        // and the output formula lane-wise (same operations, same roundings, as one row's)
        let quads = if b.quad_ty().is_some() { r / 4 } else { 0 };
        let quad_stores = (0..quads)
            .flat_map(|g| (0..c).map(move |j| (g, j)))
            .map(|(g, j)| {
                let accs: [TokenStream; 4] = core::array::from_fn(|i| {
                    let a = format_ident!("acc{}_{}", 4 * g + i, j);
                    quote! { #a }
                });
                let hs = b.hsum4(accs);
                let jl = lit(j);
                let sum = quote! { *acts.sum.get_unchecked(col + #jl) };
                let scale = quote! { *acts.scale.get_unchecked(col + #jl) };
                let out = quad_out(4 * g, j, |to| {
                    b.quad_store_scaled(quote! { hs }, sum.clone(), scale.clone(), to)
                });
                quote! {{
                    let hs = #hs;
                    #out
                }}
            });
        let stores = (4 * quads..r).flat_map(|i| (0..c).map(move |j| (i, j))).map(|(i, j)| {
            let acc = format_ident!("acc{}_{}", i, j);
            let h = b.hsum(quote! { #acc });
            let (il, jl) = (lit(i), lit(j));
            quote! {
                let s = #h - *acts.sum.get_unchecked(col + #jl);
                *out.add((col + #jl) * n + row + #il * rs) = s as f32 / *acts.scale.get_unchecked(col + #jl) * ws;
            }
        });
        let stores = quad_stores.chain(stores);
        quote! {
            #(let mut #accs: #vt = #zero;)*
            #spans
            #(#stores)*
        }
    };
    let prologue = b.prologue();
    quote! {
        /// One register tile: weight rows `row + i * rs` (`i < R`) times activation rows
        /// `col..col + C`.
        #[inline]
        #tf
        unsafe fn #name(
            w: *const u8, row_bytes: usize, nb: usize, n: usize, k: usize, ws: f32,
            acts: &PreparedActs, row: usize, col: usize, out: *mut f32, pf: usize, rs: usize,
        ) {
            #prologue
            #(#wptrs)*
            #(#aptrs)*
            #body
        }
    }
}

/// Tensor-scale layouts stream best with far prefetches into L2, block-scale layouts
/// (compute-heavier per byte) with near ones into L1 (measured; see `prefetch_distance`).
fn far_prefetch(spec: &FormatSpec) -> bool {
    spec.scale != ScaleRule::BlockF16
}

fn gen_matmul(spec: &FormatSpec, b: &dyn Backend, t: Tile, tf: &TokenStream) -> TokenStream {
    let name = format_ident!("mm{}x{}", t.rows, t.cols);
    let far = far_prefetch(spec);
    let full = format_ident!("tile_{}x{}", t.rows, t.cols);
    let rowcol = format_ident!("tile_{}x1", t.rows);
    let (tr, tc) = (lit(t.rows), lit(t.cols));
    // the loads prefetch `pf` bytes ahead, so the first `pf` bytes of a stream (at most
    // `len`) are fetched up front (tensor-scale layouts: a range starts a new DRAM stream)
    let head_pf = |start: TokenStream, len: TokenStream| {
        if !far {
            return quote! {};
        }
        let p = b.prefetch(quote! { start.wrapping_add(o) }, true);
        quote! {
            let start = #start;
            let head = (#len).min(pf);
            let mut o = 0;
            while o < head {
                #p
                o += 64;
            }
        }
    };
    let prologue_pf = head_pf(
        quote! { w.add(r0 * row_bytes) },
        quote! { (r1 - r0) * row_bytes },
    );
    let doc = format!(
        " Matmul with a {}x{} register tile over weight rows `r0..r1` and every activation row.",
        t.rows, t.cols
    );
    // GEMV (one activation row, a one-column tile): the tile's rows are taken from R evenly
    // spaced parts of the range, so every step of the tile reads one line of each of R
    // concurrent streams (each part is contiguous; the loads' prefetches stay in their
    // stream). Concurrent streams read DRAM faster than one: I2S GEMV from DRAM on one
    // thread of the 2-vCPU Xeon 11-14.6 -> 17.5-19.7 GB/s, QK256 12.4-13 -> 17.7-20.7
    // (old and new binaries alternated).
    let gemv = if t.cols == 1 && t.rows > 1 {
        let stream = head_pf(
            quote! { w.add((r0 + i * q) * row_bytes) },
            quote! { q * row_bytes },
        );
        let head = if stream.is_empty() {
            stream
        } else {
            quote! {
                for i in 0..#tr {
                    #stream
                }
            }
        };
        quote! {
            if m == 1 {
                let q = (r1 - r0) / #tr;
                // per stream a tile advances one row: the same near distance for every
                // format (64 KiB ahead in each of four streams measured slower: I2S 1 / 2
                // threads 14.9-17.6 / 19.5-24.6 GB/s against 16.7-19.7 / 27-36.6 at 4 KiB)
                let pf = crate::prefetch_distance(row_bytes, false);
                #head
                for row in r0..r0 + q {
                    #full(w, row_bytes, nb, n, k, ws, acts, row, 0, out, pf, q);
                }
                for row in r0 + #tr * q..r1 {
                    tile_1x1(w, row_bytes, nb, n, k, ws, acts, row, 0, out, pf, 1);
                }
                return;
            }
        }
    } else {
        quote! {}
    };
    let body = quote! {
            let m = acts.m;
            #gemv
            // prefetch distance: the same bytes two row tiles ahead, at least 4 KiB
            let pf = crate::prefetch_distance(row_bytes * #tr, #far);
            #prologue_pf
            // Cache blocking: rows in blocks of about 256 KiB of weights (kept in L2), and
            // for each block the activation column tiles outermost, so that one column
            // tile's activations stay in L1 while the block's row tiles stream past them.
            let rb = ((256usize << 10) / (row_bytes * #tr)).max(1) * #tr;
            let mut b0 = r0;
            while b0 < r1 {
                let b1 = (b0 + rb).min(r1);
                let full_end = b0 + (b1 - b0) / #tr * #tr;
                let mut col = 0;
                while col + #tc <= m {
                    let mut row = b0;
                    while row < full_end {
                        #full(w, row_bytes, nb, n, k, ws, acts, row, col, out, pf, 1);
                        row += #tr;
                    }
                    col += #tc;
                }
                while col < m {
                    let mut row = b0;
                    while row < full_end {
                        #rowcol(w, row_bytes, nb, n, k, ws, acts, row, col, out, pf, 1);
                        row += #tr;
                    }
                    col += 1;
                }
                for row in full_end..b1 {
                    for col in 0..m {
                        tile_1x1(w, row_bytes, nb, n, k, ws, acts, row, col, out, pf, 1);
                    }
                }
                b0 = b1;
            }
    };
    matmul_entry(spec, &name, &doc, tf, body)
}

/// The span loops of a row with multi-block spans (tensor-scale rows, lane spans): `main`
/// for every span of `SPAN_BLOCKS` blocks, then `merge` (e.g. the merge of scaled-class
/// accumulators), then `tail` for each remaining single block (`span_off`, `span_elem` set
/// for both).
fn span_loops(
    spec: &FormatSpec,
    plan: &Plan,
    main: TokenStream,
    merge: TokenStream,
    tail: Option<TokenStream>,
) -> TokenStream {
    // bytes per block: code bytes, plus the f16 scale of a block-scale format
    let (sb, bb) = (lit(plan.span_blocks), lit(spec.block_bytes()));
    let tail = tail.map(|td| {
        quote! {
            for blk in spans * #sb..nb {
                let span_off = blk * #bb;
                let span_elem = spans * MAIN_SLOTS + (blk - spans * #sb) * TAIL_SLOTS;
                #td
            }
        }
    });
    quote! {
        let spans = nb / #sb;
        for sp in 0..spans {
            let span_off = sp * #sb * #bb;
            let span_elem = sp * MAIN_SLOTS;
            #main
        }
        #merge
        #tail
    }
}

/// A matmul entry point of a block-format row: the signature and safety contract every tile
/// kind shares, then `nb` (blocks per row), `row_bytes` and the tensor scale `ws` (0 for
/// block scales), then `body`.
fn matmul_entry(
    spec: &FormatSpec,
    name: &Ident,
    doc: &str,
    tf: &TokenStream,
    body: TokenStream,
) -> TokenStream {
    let be = lit(spec.block_elems);
    let (row_bytes, ws) = match spec.scale {
        ScaleRule::BlockF16 => {
            let bb = lit(spec.block_bytes());
            (quote! { nb * #bb }, quote! { 0f32 })
        }
        ScaleRule::TensorTail { .. } => {
            let bcb = lit(spec.block_code_bytes);
            (
                quote! { nb * #bcb },
                quote! {{
                    let t = w.add(n * row_bytes);
                    f32::from_le_bytes([*t, *t.add(1), *t.add(2), *t.add(3)])
                }},
            )
        }
    };
    quote! {
        #[doc = #doc]
        ///
        /// # Safety
        /// `w` is a valid `n x k` tensor of this format, `acts` was made by [`prepare`] for the
        /// same `k`, `r0 <= r1 <= n`, and `out` is valid for writes at `m * n + row` for every
        /// activation row `m` and `row` in `r0..r1` (no other thread writes those).
        #tf
        pub unsafe fn #name(
            w: *const u8, n: usize, k: usize, acts: &PreparedActs, r0: usize, r1: usize, out: *mut f32,
        ) {
            let nb = k / #be;
            let row_bytes = #row_bytes;
            let ws = #ws;
            #body
        }
    }
}

/// Statements decoding one span's codes into code bytes at their prepared slots
/// (`dst + span_elem + slot`), reading the weights at `w0 + span_off`.
fn span_codes(b: &dyn Backend, ch: &[Chunk]) -> Result<TokenStream, String> {
    let vt = b.vec_ty();
    let mut body = TokenStream::new();
    for chunk in ch {
        let off = lit(chunk.offset);
        let w = lit(chunk.width);
        let wb = lit(chunk.bytes);
        let load = load_weights(b, chunk, quote! { w0.add(span_off + #off + rep * #wb) });
        let mut st = quote! { let v: #vt = #load; };
        for cv in &chunk.vecs {
            let o = match cv.act {
                ActPos::Natural(o) | ActPos::Permuted(o) => lit(o),
            };
            let code = b.code(&format_ident!("v"), cv.op);
            let store = b
                .store_codes(
                    chunk.width,
                    quote! { dst.add(span_elem + #o + rep * #w) },
                    &format_ident!("c"),
                )
                .ok_or_else(|| format!("{} has no code store for panel tiles", b.isa().name()))?;
            st.extend(quote! {{ let c: #vt = #code; #store }});
        }
        let reps = lit(chunk.repeat);
        body.extend(quote! { for rep in 0..#reps { #st } });
    }
    Ok(body)
}

/// A panel matmul (`Tile::panel`): per group of `t.rows` weight rows, their codes decoded
/// once into slot order (the activation layout of this row's `prepare`), transposed into a
/// panel and run against every activation row by `crate::panel` (format independent).
fn gen_panel(
    spec: &FormatSpec,
    b: &dyn Backend,
    plan: &Plan,
    (main_slots, tail_slots): (usize, Option<usize>),
    t: Tile,
    tf: &TokenStream,
) -> Result<TokenStream, String> {
    // `MAIN_SLOTS` / `TAIL_SLOTS` of the row (its slot maps), whole 4-slot groups
    if !main_slots.is_multiple_of(4) || !tail_slots.unwrap_or(0).is_multiple_of(4) {
        return Err(format!(
            "{}: panel tiles need spans of whole 4-slot groups ({main_slots} / {tail_slots:?} slots)",
            spec.name
        ));
    }
    let name = format_ident!("pn{}x{}", t.rows, t.cols);
    // the ISA's half of `crate::panel`: rows per vector, transpose and dot loops
    let (lanes, transpose, run) = match b.isa() {
        crate::table::Isa::Avx512Vnni => (16, quote! { transpose }, quote! { run }),
        crate::table::Isa::Avx2 => (8, quote! { transpose_avx2 }, quote! { run_avx2 }),
        other => return Err(format!("{}: no panel tiles on {}", spec.name, other.name())),
    };
    let (rl, h, c) = (lit(t.rows), lit(t.rows / lanes), lit(t.cols));
    let bcb = lit(spec.block_code_bytes);
    let bb = lit(spec.block_bytes());
    let main = span_codes(b, &plan.main)?;
    let floats = if spec.scale == ScaleRule::BlockF16 {
        quote! { nb * #rl }
    } else {
        quote! { 0 }
    };
    let (decode, blocks) = match spec.scale {
        ScaleRule::BlockF16 if plan.lanes => {
            // lane spans: a span's blocks interleaved in runs of one part (`lane_chunks`),
            // then the remaining blocks one by one
            let f16 = b.load_f16(quote! { w0.add(span_off + p * #bb + #bcb) });
            let tail_f16 = b.load_f16(quote! { w0.add(span_off + #bcb) });
            let tail = span_codes(b, plan.tail.as_deref().unwrap_or_default())?;
            let sb = lit(plan.span_blocks);
            let run4 = lit(plan.main[0].bytes / 4);
            (
                span_loops(
                    spec,
                    plan,
                    quote! {
                        #main
                        for p in 0..#sb {
                            *dsc.get_unchecked_mut((sp * #sb + p) * #rl + i) = #f16;
                        }
                    },
                    quote! {},
                    Some(quote! {
                        #tail
                        *dsc.get_unchecked_mut(blk * #rl + i) = #tail_f16;
                    }),
                ),
                quote! {
                    Some(crate::panel::Blocks {
                        d: dsc.as_ptr(), nb, span4: MAIN_SLOTS / 4, span_blocks: #sb,
                        run4: #run4, tail4: TAIL_SLOTS / 4,
                    })
                },
            )
        }
        ScaleRule::BlockF16 => {
            let f16 = b.load_f16(quote! { w0.add(span_off + #bcb) });
            (
                quote! {
                    for blk in 0..nb {
                        let span_off = blk * #bb;
                        let span_elem = blk * MAIN_SLOTS;
                        #main
                        *dsc.get_unchecked_mut(blk * #rl + i) = #f16;
                    }
                },
                quote! {
                    Some(crate::panel::Blocks {
                        d: dsc.as_ptr(), nb, span4: MAIN_SLOTS / 4, span_blocks: 1,
                        run4: MAIN_SLOTS / 4, tail4: MAIN_SLOTS / 4,
                    })
                },
            )
        }
        ScaleRule::TensorTail { .. } => {
            let tail = match &plan.tail {
                Some(tc) => Some(span_codes(b, tc)?),
                None => None,
            };
            (
                span_loops(spec, plan, main, quote! {}, tail),
                quote! { None },
            )
        }
    };
    let doc = format!(
        " Panel matmul: groups of {} weight rows decoded once, every activation row {} at a time.",
        t.rows, t.cols
    );
    let body = quote! {
            let stride = acts.stride;
            let pitch = crate::panel::pitch(stride);
            // this thread's buffers: the group's codes (row i at i * pitch, slot order), the
            // transposed panel and (block scales) d[blk * rows + i]. Slots past `stride`, and
            // rows past `rows` of a last partial group, hold stale bytes: their lanes are
            // never read (`stride / 4` slot groups) or never stored (masked rows).
            let floats = #floats;
            crate::panel::with_buffers(2 * #rl * pitch, floats, |buf, dsc| {
                let (scratch, panel) = buf.split_at_mut(#rl * pitch);
                let mut row = r0;
                while row < r1 {
                    let rows = (r1 - row).min(#rl);
                    for i in 0..rows {
                        let w0 = w.add((row + i) * row_bytes);
                        let dst = scratch.as_mut_ptr().add(i * pitch);
                        #decode
                    }
                    crate::panel::#transpose::<#h>(scratch.as_ptr(), pitch, panel.as_mut_ptr());
                    crate::panel::#run::<#h, #c>(
                        panel.as_ptr(), stride / 4, #blocks, ws, acts,
                        crate::panel::Dest { out, n, row, rows },
                    );
                    row += #rl;
                }
            })
    };
    Ok(matmul_entry(spec, &name, &doc, tf, body))
}
