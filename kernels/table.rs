//! THE kernel table: the single source of truth for every ternforge kernel.
//!
//! This file is compiled twice: into the runtime crate (`ternforge::table`) and into the code
//! generator (`ternforge_gen::table`), which `build.rs` and the proc-macros use. Everything the
//! build generates — kernels, registry, dispatch tables, per-variant tests and bench lists — is
//! derived from [`TABLE`]. Nothing here may depend on anything outside `core`.
//!
//! Adding a format is adding a [`FormatSpec`] const and rows that name it. When the layout is
//! expressible with [`CodeRule::Packed2`] (2-bit codes, any group size, MSB- or LSB-first) and one
//! of the [`ScaleRule`]s, nothing else changes: the generator derives the SIMD decode, the
//! activation order, the tests and the benches. Other code rules have one decode rule each in
//! `kernels-gen/src/decode.rs` (block formats) or a template (`kernels-gen/src/lut.rs`).

/// An instruction set a kernel is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, always compiled and always runnable.
    Scalar,
    /// x86-64 AVX2 (+FMA not required): `vpmaddubsw`/`vpmaddwd` dot products, `vpshufb` lookups.
    Avx2,
    /// x86-64 AVX-512 F+BW (512-bit `vpmaddubsw`), for CPUs without VNNI.
    Avx512,
    /// x86-64 AVX-512 F+BW+VNNI: `vpdpbusd` dot products.
    Avx512Vnni,
    /// AArch64 Advanced SIMD without the dot-product extension (`smull`/`sadalp`, `tbl`).
    Neon,
    /// AArch64 Advanced SIMD with FEAT_DotProd (`sdot`).
    NeonDot,
}

impl Isa {
    /// Every ISA, in preference order from slowest to fastest within an architecture.
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDot,
    ];

    /// Short lowercase name used in kernel ids, file names, CLI flags and env vars.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neondot",
        }
    }

    /// The `target_arch` this ISA belongs to (`None` for scalar, which runs everywhere).
    pub const fn arch(self) -> Option<&'static str> {
        match self {
            Isa::Scalar => None,
            Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni => Some("x86_64"),
            Isa::Neon | Isa::NeonDot => Some("aarch64"),
        }
    }

    /// The cargo feature that selects this ISA (`None`: always compiled).
    pub const fn cargo_feature(self) -> Option<&'static str> {
        match self {
            Isa::Scalar => None,
            Isa::Avx2 => Some("avx2"),
            Isa::Avx512 | Isa::Avx512Vnni => Some("avx512"),
            Isa::Neon | Isa::NeonDot => Some("neon"),
        }
    }

    /// Comma-separated `#[target_feature(enable = ...)]` list for generated functions.
    pub const fn target_features(self) -> &'static str {
        match self {
            Isa::Scalar => "",
            Isa::Avx2 => "avx2,fma,f16c",
            Isa::Avx512 => "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            Isa::Avx512Vnni => "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon,dotprod",
        }
    }

    /// Parse a name as printed by [`Isa::name`].
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL.iter().copied().find(|i| i.name() == s)
    }
}

/// How the ternary codes of one block are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeRule {
    /// 2-bit codes `c = w + 1` (3 is never written and decodes as 0). The block's code bytes
    /// are cut into groups of `group_bytes` bytes covering `4 * group_bytes` elements; byte `m`
    /// of a group holds elements `m + j * group_bytes` (j = 0..4) at bits `6 - 2j` when
    /// `msb_first` (Microsoft I2_S), at bits `2j` otherwise (ggml TQ2_0).
    Packed2 { group_bytes: usize, msb_first: bool },
    /// ggml TQ1_0: five base-3 trits per byte scaled to fill the byte, then four per byte.
    /// Decode rule: `base3` in `kernels-gen/src/decode.rs`.
    Base3,
    /// Microsoft TL1 pair indices `3*w0 + w1 + 4` (0..8), two per byte, rows tiled by
    /// `tile_rows`: for each row tile and each pair of pairs `(p, p+1)` there are `tile_rows`
    /// bytes, byte `r` = `idx(r, p) | idx(r, p+1) << 4`. Decode rule: the
    /// `kernels-gen/src/lut.rs` template.
    PairLut { tile_rows: usize },
    /// Microsoft TL2 triple indices `|9*w0 + 3*w1 + w2|` (0..13) with a sign bit per triple,
    /// rows tiled by `tile_rows`; a K remainder that is not whole triple pairs uses the TL1
    /// pair layout. Decode rule: the `kernels-gen/src/lut.rs` template.
    TripleLut { tile_rows: usize },
}

/// Where the weight scale(s) live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleRule {
    /// One f32 for the whole tensor in a tail of `tail_bytes` bytes after all code bytes
    /// (only the first 4 bytes are meaningful; the rest are written as zero).
    TensorTail { tail_bytes: usize },
    /// One f16 per block, stored right after the block's code bytes.
    BlockF16,
}

/// How f32 weights become codes (the format's reference quantizer, matched byte for byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantizer {
    /// bitnet.cpp `quantize_i2_s`: scale = max|x| over the tensor, `|x| < 1e-6` -> 0,
    /// otherwise the sign of `x`. Exact on already-ternarised weights `{-s, 0, s}`.
    SignMax,
    /// ggml `quantize_row_tq*_ref`: `d = max|x|` of the block (stored as f16), code
    /// `lroundf(x / d)` (round half away from zero), `d = 0` gives all zero codes.
    RoundAbsMax,
}

/// A weight format: one row of the format half of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatSpec {
    /// Lowercase id used in kernel ids and file names (`i2s`).
    pub name: &'static str,
    /// Rust identifier of the generated `Format` enum variant (`I2S`).
    pub ident: &'static str,
    /// GGUF / ggml tensor type id, when the format has one.
    pub ggml_type: Option<u32>,
    /// Elements per block along K. A row's length must be a multiple of this, except for the
    /// LUT formats which pad any K (see their code rules).
    pub block_elems: usize,
    /// Code bytes per block (scales excluded).
    pub block_code_bytes: usize,
    pub codes: CodeRule,
    pub scale: ScaleRule,
    pub quantizer: Quantizer,
    /// One line for `ternforge kernels` and the docs.
    pub doc: &'static str,
}

impl FormatSpec {
    /// Bytes of one block including its scale (per-block scale formats only add the f16).
    pub const fn block_bytes(&self) -> usize {
        match self.scale {
            ScaleRule::TensorTail { .. } => self.block_code_bytes,
            ScaleRule::BlockF16 => self.block_code_bytes + 2,
        }
    }

    /// True for the LUT formats (TL1, TL2), whose kernels tile rows instead of blocks.
    pub const fn is_lut(&self) -> bool {
        matches!(
            self.codes,
            CodeRule::PairLut { .. } | CodeRule::TripleLut { .. }
        )
    }

    /// Rows per layout tile (1 for the block formats).
    pub const fn tile_rows(&self) -> usize {
        match self.codes {
            CodeRule::PairLut { tile_rows } | CodeRule::TripleLut { tile_rows } => tile_rows,
            _ => 1,
        }
    }
}

/// A tile of a matmul kernel: `rows` weight rows times `cols` activation rows (tokens)
/// computed together. `cols == 1` is a GEMV kernel.
///
/// A register tile (`panel == false`) decodes its rows' codes inside the dot-product loop,
/// once per column tile. A panel tile (`panel == true`: every format on AVX-512 VNNI, the
/// block formats on AVX2)
/// decodes a group of `rows` weight rows once into a code panel in cache and runs every
/// activation row against it, `cols` at a time, with one `vpdpbusd` lane per (weight row,
/// token): decoding is paid once for the whole batch (prefill, GEMM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub rows: usize,
    pub cols: usize,
    pub panel: bool,
    /// Smallest batch (activation rows) dispatch uses this tile for (at least `cols`): a
    /// panel pays its decode once per weight, which only a large enough batch amortises.
    pub min_batch: usize,
}

impl Tile {
    /// A register tile.
    pub const fn new(rows: usize, cols: usize) -> Tile {
        Tile {
            rows,
            cols,
            panel: false,
            min_batch: cols,
        }
    }

    /// A panel tile (`rows` a multiple of 16).
    pub const fn panel(rows: usize, cols: usize) -> Tile {
        Tile {
            rows,
            cols,
            panel: true,
            min_batch: cols,
        }
    }

    /// The same tile, used by dispatch only from `m` activation rows on.
    pub const fn from_batch(self, m: usize) -> Tile {
        Tile {
            min_batch: if m > self.cols { m } else { self.cols },
            ..self
        }
    }

    /// Kernel name suffix: `mm4x4` for register tiles, `pn32x12` for panel tiles.
    pub const fn prefix(&self) -> &'static str {
        if self.panel {
            "pn"
        } else {
            "mm"
        }
    }
}

/// One row of the kernel half of the table: a format on an ISA with its matmul tiles.
/// Every (format, isa) row gets a quantize and a dequantize kernel; every tile a matmul kernel.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub format: &'static FormatSpec,
    pub isa: Isa,
    pub tiles: &'static [Tile],
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

/// Microsoft bitnet.cpp I2_S (GGUF type 36), byte-exact: 128-element blocks of 32 bytes, byte g
/// holds elements g, g+32, g+64, g+96 MSB-first; one f32 scale in a 32-byte tensor tail.
pub const I2S: FormatSpec = FormatSpec {
    name: "i2s",
    ident: "I2S",
    ggml_type: Some(36),
    block_elems: 128,
    block_code_bytes: 32,
    codes: CodeRule::Packed2 {
        group_bytes: 32,
        msb_first: true,
    },
    scale: ScaleRule::TensorTail { tail_bytes: 32 },
    quantizer: Quantizer::SignMax,
    doc: "Microsoft I2_S: 2 bpw, 128-blocks, MSB-first, one f32 tensor scale (GGUF 36)",
};

/// ggml TQ2_0 (GGUF type 35), byte-exact: 256-element blocks of 64 code bytes + f16 d,
/// two 32-byte groups, LSB-first.
pub const QK256: FormatSpec = FormatSpec {
    name: "qk256",
    ident: "QK256",
    ggml_type: Some(35),
    block_elems: 256,
    block_code_bytes: 64,
    codes: CodeRule::Packed2 {
        group_bytes: 32,
        msb_first: false,
    },
    scale: ScaleRule::BlockF16,
    quantizer: Quantizer::RoundAbsMax,
    doc: "ggml TQ2_0: 2.06 bpw, 256-blocks, LSB-first, f16 block scale (GGUF 35)",
};

/// ggml TQ1_0 (GGUF type 34), byte-exact: 256-element blocks, qs[48] + qh[4] + f16 d.
pub const TQ1_0: FormatSpec = FormatSpec {
    name: "tq1_0",
    ident: "TQ1_0",
    ggml_type: Some(34),
    block_elems: 256,
    block_code_bytes: 52,
    codes: CodeRule::Base3,
    scale: ScaleRule::BlockF16,
    quantizer: Quantizer::RoundAbsMax,
    doc: "ggml TQ1_0: 1.69 bpw, base-3 trits, f16 block scale (GGUF 34)",
};

/// Microsoft TL1 index scheme, ternforge tiling of 32 rows (recorded in GGUF metadata).
pub const TL1: FormatSpec = FormatSpec {
    name: "tl1",
    ident: "TL1",
    ggml_type: Some(38),
    block_elems: 4,
    block_code_bytes: 0,
    codes: CodeRule::PairLut { tile_rows: 32 },
    scale: ScaleRule::TensorTail { tail_bytes: 32 },
    quantizer: Quantizer::SignMax,
    doc: "Microsoft TL1: 2 bpw pair indices, pshufb/tbl LUT kernels, 32-row tiles",
};

/// Microsoft TL2 index scheme, ternforge tiling of 32 rows (recorded in GGUF metadata).
pub const TL2: FormatSpec = FormatSpec {
    name: "tl2",
    ident: "TL2",
    ggml_type: Some(39),
    block_elems: 6,
    block_code_bytes: 0,
    codes: CodeRule::TripleLut { tile_rows: 32 },
    scale: ScaleRule::TensorTail { tail_bytes: 32 },
    quantizer: Quantizer::SignMax,
    doc: "Microsoft TL2: 1.67 bpw triple indices + sign, LUT kernels, 32-row tiles",
};

/// An I2S variant added purely as table rows: 64-element blocks (16-byte groups, MSB-first)
/// with a per-block f16 scale. No generator code was written for it.
pub const I2S64: FormatSpec = FormatSpec {
    name: "i2s64",
    ident: "I2S64",
    ggml_type: None,
    block_elems: 64,
    block_code_bytes: 16,
    codes: CodeRule::Packed2 {
        group_bytes: 16,
        msb_first: true,
    },
    scale: ScaleRule::BlockF16,
    quantizer: Quantizer::RoundAbsMax,
    doc: "I2S variant: 64-blocks, MSB-first, f16 block scale (table rows only)",
};

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

const GEMV4: Tile = Tile::new(4, 1);
const GEMV1: Tile = Tile::new(1, 1);
const GEMV2: Tile = Tile::new(2, 1);
const GEMM4X4: Tile = Tile::new(4, 4);
const GEMM2X8: Tile = Tile::new(2, 8);
const LUT1: Tile = Tile::new(32, 1);
const LUT4: Tile = Tile::new(32, 4);
/// Panel tiles, from the batch where they overtake the register tiles (measured on the
/// Emerald Rapids Xeon, 2560x2560, one thread: I2S mm4x4 decodes so cheaply that the panel
/// wins from m ~ 28, QK256 from ~ 14, TQ1_0 and I2S64 from ~ 8). 32 rows x 8 columns beat
/// 32x12, 16x12, 32x6, 48x4 and 64x3 at m = 128 (I2S64 224 vs 191-209 GMAC/s; the block
/// formats keep 16 f32 accumulators next to 16 i32 ones).
const PANEL: Tile = Tile::panel(32, 8);
const PANEL_I2S: Tile = Tile::panel(32, 8).from_batch(32);
const PANEL_QK256: Tile = Tile::panel(32, 8).from_batch(16);
const PANEL_LUT: Tile = Tile::panel(32, 8);
/// AVX2 panels (16 ymm): 16 rows x 4 columns, i16 accumulation between widenings; m = 128
/// on 2560x6912: I2S 100 vs 80 GMAC/s (mm4x4), QK256 94 vs 71, TQ1_0 66 vs 23, I2S64 56 vs
/// 39 (16x4 vs 8x8 / 16x6 within noise, 16x4 best or equal for three of four formats).
/// Crossover against mm4x4 at 2560x2560: ~32 rows for I2S and QK256, ~8 for TQ1_0, ~12-16
/// for I2S64.
const PANEL_AVX2_FAST_DECODE: Tile = Tile::panel(16, 4).from_batch(32);
const PANEL_AVX2_TQ1: Tile = Tile::panel(16, 4).from_batch(8);
const PANEL_AVX2_I2S64: Tile = Tile::panel(16, 4).from_batch(16);

/// GEMV tile height dispatch prefers on AMD x86 CPUs, where a row lists a GEMV tile of that
/// many rows (otherwise the row's first GEMV tile, as everywhere else). Measured on a 2-vCPU
/// AVX-512 VNNI EPYC (Zen 4, 2026-12-02), I2S 6912x2560 from DRAM, three alternations: one
/// thread 25.4-27.5 GB/s for 2 rows against 22.3-23.5 for 4 rows, two threads 30.2-32.3
/// against 29.0-30.5 (`ternforge bench`, two alternations, 1T: 24.2-26.8 against 23.0-25.1);
/// 2B4T decode body within that machine's noise (20.6-25.6 against 21.1-29.5 ms/token over
/// five alternations). The Xeon measurements below favour 4 rows, so it is a vendor choice,
/// not a table order.
pub const AMD_GEMV_ROWS: usize = 2;

/// The table. Row order is irrelevant; within a row, tiles are listed in order of preference
/// (dispatch takes the first GEMV tile for one activation row, or on AMD one of
/// [`AMD_GEMV_ROWS`] rows, and the widest GEMM tile that fits for more). Measured: on an
/// AVX-512 VNNI EPYC I2S streamed DRAM best with 2-/4-row GEMV tiles and QK256 with one-row
/// tiles; on an AVX-512 VNNI Xeon (Emerald Rapids, 2 cores)
/// 4-row GEMV tiles stream best for both (I2S 2560x6912 16.9 vs 16.2 GB/s for 2 rows, 6912x2560
/// 14.9 vs 13.3; QK256 13.0 vs 12.0 for one row), where they also win for the per-block
/// reductions of TQ1_0 and I2S64. GEMM: 4x4 beats 2x8 (I2S VNNI m=128: 215 vs 135 GMAC/s).
/// `build.rs` validates it (unique rows, tiles that fit the
/// ISA's registers, formats the generator has a decode rule for).
#[rustfmt::skip]
pub const TABLE: &[Row] = &[
    // I2S
    Row { format: &I2S, isa: Isa::Scalar, tiles: &[GEMV1, GEMV4, GEMM4X4] },
    Row { format: &I2S, isa: Isa::Avx2, tiles: &[GEMV4, GEMV1, PANEL_AVX2_FAST_DECODE, GEMM4X4] },
    Row { format: &I2S, isa: Isa::Avx512, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &I2S, isa: Isa::Avx512Vnni, tiles: &[GEMV4, GEMV2, GEMV1, PANEL_I2S, GEMM4X4, GEMM2X8] },
    Row { format: &I2S, isa: Isa::Neon, tiles: &[GEMV1, GEMV4, GEMM4X4] },
    Row { format: &I2S, isa: Isa::NeonDot, tiles: &[GEMV1, GEMV4, GEMM4X4] },
    // QK256 = TQ2_0
    Row { format: &QK256, isa: Isa::Scalar, tiles: &[GEMV1, GEMV4, GEMM4X4] },
    Row { format: &QK256, isa: Isa::Avx2, tiles: &[GEMV4, GEMV1, PANEL_AVX2_FAST_DECODE, GEMM4X4] },
    Row { format: &QK256, isa: Isa::Avx512, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &QK256, isa: Isa::Avx512Vnni, tiles: &[GEMV4, GEMV1, PANEL_QK256, GEMM4X4] },
    Row { format: &QK256, isa: Isa::Neon, tiles: &[GEMV1, GEMV4, GEMM4X4] },
    Row { format: &QK256, isa: Isa::NeonDot, tiles: &[GEMV1, GEMV4, GEMM4X4] },
    // TQ1_0
    Row { format: &TQ1_0, isa: Isa::Scalar, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &TQ1_0, isa: Isa::Avx2, tiles: &[GEMV4, GEMV1, PANEL_AVX2_TQ1, GEMM4X4] },
    Row { format: &TQ1_0, isa: Isa::Avx512, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &TQ1_0, isa: Isa::Avx512Vnni, tiles: &[GEMV4, GEMV1, PANEL, GEMM4X4] },
    Row { format: &TQ1_0, isa: Isa::Neon, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &TQ1_0, isa: Isa::NeonDot, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    // TL1
    Row { format: &TL1, isa: Isa::Scalar, tiles: &[LUT1, LUT4] },
    Row { format: &TL1, isa: Isa::Avx2, tiles: &[LUT1, LUT4] },
    Row { format: &TL1, isa: Isa::Avx512, tiles: &[LUT1, LUT4] },
    Row { format: &TL1, isa: Isa::Avx512Vnni, tiles: &[LUT1, PANEL_LUT, LUT4] },
    Row { format: &TL1, isa: Isa::Neon, tiles: &[LUT1, LUT4] },
    // TL2
    Row { format: &TL2, isa: Isa::Scalar, tiles: &[LUT1, LUT4] },
    Row { format: &TL2, isa: Isa::Avx2, tiles: &[LUT1, LUT4] },
    Row { format: &TL2, isa: Isa::Avx512, tiles: &[LUT1, LUT4] },
    Row { format: &TL2, isa: Isa::Avx512Vnni, tiles: &[LUT1, PANEL_LUT, LUT4] },
    Row { format: &TL2, isa: Isa::Neon, tiles: &[LUT1, LUT4] },
    // I2S64: added as rows only (see its FormatSpec)
    Row { format: &I2S64, isa: Isa::Scalar, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &I2S64, isa: Isa::Avx2, tiles: &[GEMV4, GEMV1, PANEL_AVX2_I2S64, GEMM4X4] },
    Row { format: &I2S64, isa: Isa::Avx512Vnni, tiles: &[GEMV4, GEMV1, PANEL, GEMM4X4] },
    Row { format: &I2S64, isa: Isa::Neon, tiles: &[GEMV4, GEMV1, GEMM4X4] },
    Row { format: &I2S64, isa: Isa::NeonDot, tiles: &[GEMV4, GEMV1, GEMM4X4] },
];
