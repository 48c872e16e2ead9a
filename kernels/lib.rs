//! ternforge: generated, proven-equal CPU kernels for ternary (BitNet b1.58) weights.
//!
//! Everything here is derived from one table, [`table::TABLE`]: `build.rs` runs the
//! `ternforge-gen` code generator over it and writes one formatted module per (format, ISA)
//! row plus the registry into `OUT_DIR/generated/`. The hand-written scalar code in
//! [`reference`] is the specification every generated kernel is tested against.
//!
//! The safe API validates every buffer and shape and then calls the kernel that runtime
//! dispatch picked for this CPU (detected once and cached):
//!
//! ```
//! use ternforge::{quantize, quantize_acts, matmul, Format, PackedWeights};
//! let (n, k) = (8, 256);
//! let w: Vec<f32> = (0..n * k).map(|i| [-0.5f32, 0.0, 0.5][i % 3]).collect();
//! let packed = quantize(Format::I2S, &w, n, k).unwrap();
//! let weights = PackedWeights::new(Format::I2S, &packed, n, k).unwrap();
//! let x: Vec<f32> = (0..k).map(|i| (i as f32).sin()).collect();
//! let acts = quantize_acts(&x, 1, k).unwrap();
//! let mut y = vec![0f32; n];
//! matmul(&weights, &acts, &mut y).unwrap();
//! ```

mod acts;
mod aligned;
pub mod cpu;
mod dispatch;
#[cfg(target_arch = "x86_64")]
mod panel;
pub mod reference;
pub mod registry;
pub mod table;

mod gen {
    include!(concat!(env!("TERNFORGE_GENERATED_DIR"), "/registry.rs"));
}

pub use aligned::{Aligned, AlignedBytes, AlignedI8};
pub use dispatch::{
    dequantize, dequantize_with, dispatch, matmul, matmul_prepared, matmul_prepared_many,
    matmul_with, prepare_for, quantize, quantize_with, select_matmul, Dispatch,
};
pub use gen::{generated, Format, KERNELS, SOURCES};
pub use reference::acts::QuantizedActs;
pub use registry::{KernelEntry, KernelFn, KernelOp};
pub use table::{FormatSpec, Isa, Tile};

use std::fmt;

/// ISAs compiled into this build (cargo features / target).
pub const COMPILED_ISAS: &str = env!("TERNFORGE_COMPILED_ISAS");
/// ISA cargo features this build was made with (empty: all of the target).
pub const BUILD_FEATURES: &str = env!("TERNFORGE_BUILD_FEATURES");
/// Directory holding the generated, formatted kernel sources of this build.
pub const GENERATED_DIR: &str = env!("TERNFORGE_GENERATED_DIR");

/// Activations in a matmul kernel's layout, made by that kernel family's `prepare` (see
/// [`prepare_for`]). The fields are private so that only `prepare` can build one: the kernels
/// trust its lengths, and the safe API checks that it belongs to the kernel being run.
#[derive(Clone, Debug, Default)]
pub struct PreparedActs {
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// Length of one prepared row in `q` (K plus any padding slots of the layout).
    pub(crate) stride: usize,
    /// The kernel family (generated module) whose layout this is.
    pub(crate) layout: &'static str,
    /// `m * stride` int8 values in the kernel's element order.
    pub(crate) q: AlignedI8,
    pub(crate) scale: Vec<f32>,
    pub(crate) sum: Vec<i32>,
    /// Per-block sums `bsum[m * nb + b]` (block-scale formats only).
    pub(crate) bsum: Vec<i32>,
    /// Lookup tables (LUT formats only).
    pub(crate) lut: AlignedI8,
}

impl PreparedActs {
    /// Activation rows.
    pub fn m(&self) -> usize {
        self.m
    }
    /// Row length of the original activations.
    pub fn k(&self) -> usize {
        self.k
    }
    /// The generated module whose kernels consume this layout.
    pub fn layout(&self) -> &'static str {
        self.layout
    }
}

/// Every error of the kernel API. Bad input never panics.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelError {
    /// The shape is not valid for the format (e.g. K not a multiple of the block).
    Shape {
        format: Format,
        n: usize,
        k: usize,
        reason: String,
    },
    /// A buffer has the wrong length.
    BufferLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// Packed data holds a code the format never writes (corrupt tensor).
    InvalidCode {
        format: Format,
        offset: usize,
        value: u8,
    },
    /// Activations do not match the weights (K) or were prepared for another kernel.
    Activations(String),
    /// The ISA is known but not compiled into this build.
    IsaNotCompiled(Isa),
    /// The ISA is compiled but this CPU cannot run it.
    IsaUnsupported(Isa),
    /// No ISA of that name.
    UnknownIsa(String),
    /// No kernel matches the request.
    NoKernel(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Shape { format, n, k, reason } => {
                write!(f, "invalid {n}x{k} shape for {}: {reason}", format.name())
            }
            KernelError::BufferLength { what, expected, got } => {
                write!(f, "{what}: expected {expected} elements/bytes, got {got}")
            }
            KernelError::InvalidCode { format, offset, value } => write!(
                f,
                "corrupt {} tensor: byte {offset} holds code {value:#04x}, which the format never writes",
                format.name()
            ),
            KernelError::Activations(m) => write!(f, "activations: {m}"),
            KernelError::IsaNotCompiled(i) => write!(
                f,
                "ISA {} is not compiled into this build (compiled: {COMPILED_ISAS}); rebuild with --features {}",
                i.name(),
                i.cargo_feature().unwrap_or("")
            ),
            KernelError::IsaUnsupported(i) => {
                write!(f, "this CPU cannot run {} kernels (supported: scalar {})", i.name(), cpu::feature_names().join(" "))
            }
            KernelError::UnknownIsa(s) => write!(
                f,
                "unknown ISA {s:?}; known: {}",
                Isa::ALL.map(|i| i.name()).join(", ")
            ),
            KernelError::NoKernel(m) => write!(f, "no kernel: {m}"),
        }
    }
}

impl std::error::Error for KernelError {}

impl Format {
    /// Lowercase name (`i2s`).
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// Parse a name as printed by [`Format::name`] (case-insensitive; `tq2_0` means QK256).
    pub fn from_name(s: &str) -> Option<Format> {
        let s = s.to_ascii_lowercase();
        let s = if s == "tq2_0" { "qk256".to_string() } else { s };
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The GGUF/ggml tensor type, when the format has one.
    pub const fn ggml_type(self) -> Option<u32> {
        self.spec().ggml_type
    }

    /// The format of a GGUF/ggml tensor type.
    pub fn from_ggml_type(t: u32) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.ggml_type() == Some(t))
    }

    /// Check that an `n x k` tensor (n rows of k elements) is valid for the format.
    pub fn check_shape(self, n: usize, k: usize) -> Result<(), KernelError> {
        let spec = self.spec();
        let err = |reason: String| {
            Err(KernelError::Shape {
                format: self,
                n,
                k,
                reason,
            })
        };
        if n == 0 || k == 0 {
            return err("empty tensor".into());
        }
        if n.checked_mul(k).is_none_or(|e| e > (1usize << 40)) {
            return err("too many elements".into());
        }
        if !spec.is_lut() && !k.is_multiple_of(spec.block_elems) {
            return err(format!("K must be a multiple of {}", spec.block_elems));
        }
        if k > (1 << 22) {
            return err("K above 2^22 could overflow i32 accumulators".into());
        }
        Ok(())
    }

    /// Size in bytes of an `n x k` tensor.
    pub fn tensor_bytes(self, n: usize, k: usize) -> Result<usize, KernelError> {
        self.check_shape(n, k)?;
        Ok(reference::tensor_bytes(self.spec(), n, k))
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated view of packed weights: length and codes checked once at construction, so the
/// kernels can trust it.
#[derive(Clone, Copy, Debug)]
pub struct PackedWeights<'a> {
    format: Format,
    n: usize,
    k: usize,
    data: &'a [u8],
}

impl<'a> PackedWeights<'a> {
    /// Validate `data` as an `n x k` tensor of `format`.
    pub fn new(format: Format, data: &'a [u8], n: usize, k: usize) -> Result<Self, KernelError> {
        let expected = format.tensor_bytes(n, k)?;
        if data.len() != expected {
            return Err(KernelError::BufferLength {
                what: "packed weights",
                expected,
                got: data.len(),
            });
        }
        validate_codes(format, data, n, k)?;
        Ok(PackedWeights { format, n, k, data })
    }
    pub fn format(&self) -> Format {
        self.format
    }
    /// Rows (output features).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Row length (input features).
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Reject codes a format never writes, so that every kernel agrees with the reference.
fn validate_codes(format: Format, data: &[u8], n: usize, k: usize) -> Result<(), KernelError> {
    use table::{CodeRule, ScaleRule};
    let spec = format.spec();
    let bad = |offset: usize, value: u8| {
        Err(KernelError::InvalidCode {
            format,
            offset,
            value,
        })
    };
    match spec.codes {
        CodeRule::Packed2 { .. } => {
            // a byte holds four 2-bit codes; code 3 has both bits set
            let blocks = n * k / spec.block_elems;
            for b in 0..blocks {
                let start = b * spec.block_bytes();
                let codes = &data[start..start + spec.block_code_bytes];
                if let Some(i) = codes.iter().position(|&x| x & (x >> 1) & 0x55 != 0) {
                    return bad(start + i, codes[i]);
                }
            }
            let _ = ScaleRule::BlockF16;
        }
        CodeRule::Base3 => {}
        CodeRule::PairLut { .. } | CodeRule::TripleLut { .. } => {
            reference::lut::validate(spec, data, n, k).map_err(|(offset, value)| {
                KernelError::InvalidCode {
                    format,
                    offset,
                    value,
                }
            })?;
        }
    }
    Ok(())
}

/// `max |x|` ignoring NaN (like `f32::max`), exact. 64 independent lanes (four vectors of
/// 16) so the reduction vectorises without a serial dependency chain, then a halving tree;
/// used by the generated quantizers. The lanes start at 0 and take `v` only when `v > lane`,
/// so a NaN never enters them (one `maxps` per vector, no NaN fix-ups).
#[doc(hidden)]
#[inline(always)]
pub fn absmax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 64];
    let chunks = x.chunks_exact(64);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = lane_max(*l, v.abs());
        }
    }
    for (l, &v) in lanes.iter_mut().zip(rest) {
        *l = lane_max(*l, v.abs());
    }
    fold_lanes(lanes)
}

/// bitnet.cpp's sign rule as a code `w + 1`: `fabs((double)x) < 1e-6` -> 1 (weight 0), else
/// 2 for `x > 0` and 0 for `x < 0` (`x * scale > 0` in f64 with `scale = max|x| > 0` is
/// `x > 0`); NaN -> 0. `T32` is the smallest f32 not below 1e-6 (f64), so `|x| < T32` equals
/// the f64 test exactly. Branch-free so the quantizer loops vectorise; used by the I2S-family
/// and LUT quantizers.
#[doc(hidden)]
#[inline(always)]
pub fn sign_code(x: f32) -> u8 {
    const T32: f32 = 1.0000001e-6;
    (x.abs() < T32) as u8 | (((x >= T32) as u8) << 1)
}

/// [`absmax`] of `x` fused with a per-element map into `out` (`out[i] = code(x[i])` for
/// `i < x.len()`, `out` at least as long as `x`): one pass over the input for both, same
/// lanes and NaN rule as [`absmax`]. Used by the LUT quantizers.
#[doc(hidden)]
#[inline(always)]
pub fn absmax_codes(x: &[f32], out: &mut [u8], code: impl Fn(f32) -> u8) -> f32 {
    let out = &mut out[..x.len()];
    let mut lanes = [0f32; 64];
    let chunks = x.chunks_exact(64);
    let rest = chunks.remainder();
    let mut oc = out.chunks_exact_mut(64);
    for (c, o) in chunks.zip(&mut oc) {
        // two loops over the chunk: fused into one, the lane update compiled to a masked
        // store into the stack array and a reload of it next chunk (a store-forwarding
        // chain that made the LUT quantizers ~2x slower)
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = lane_max(*l, v.abs());
        }
        for (o, &v) in o.iter_mut().zip(c) {
            *o = code(v);
        }
    }
    for ((l, &v), o) in lanes.iter_mut().zip(rest).zip(oc.into_remainder()) {
        *l = lane_max(*l, v.abs());
        *o = code(v);
    }
    fold_lanes(lanes)
}

/// The lane update of [`absmax`]: `b` only when `b > a` (a NaN `b` never enters).
#[inline(always)]
fn lane_max(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// The halving tree of [`absmax`] over its 64 lanes.
#[inline(always)]
fn fold_lanes(mut lanes: [f32; 64]) -> f32 {
    let mut w = 32;
    while w > 0 {
        for i in 0..w {
            lanes[i] = lane_max(lanes[i], lanes[i + w]);
        }
        w /= 2;
    }
    lanes[0]
}

/// Software prefetch distance (bytes) used by the generated matmul kernels: each weight load
/// also prefetches the byte this far ahead in the same row stream, i.e. into later row
/// tiles. `far` (tensor-scale layouts, prefetched into L2): 64 KiB, measured best on an
/// AVX-512 EPYC (I2S GEMV streaming DRAM at 70-90% of the read bandwidth, against ~40-60%
/// with near L1 prefetches); otherwise 4 KiB into L1 (better for the block-scale layouts).
/// The LUT (TL1/TL2) x86 tiles use the far distance with L1 prefetches of their index
/// stream (GEMV from DRAM 6-7 -> 9-11 GB/s on a 2-vCPU Xeon). At least two tiles ahead.
/// `TERNFORGE_PREFETCH` overrides all of them.
#[doc(hidden)]
pub fn prefetch_distance(tile_bytes: usize, far: bool) -> usize {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let o = OVERRIDE.get_or_init(|| {
        std::env::var("TERNFORGE_PREFETCH")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    o.unwrap_or((2 * tile_bytes).max(if far { 64 << 10 } else { 4 << 10 }))
}

/// Quantize activations (`m` rows of `k` f32) to the int8 per-token scheme.
pub fn quantize_acts(x: &[f32], m: usize, k: usize) -> Result<QuantizedActs, KernelError> {
    if m.checked_mul(k) != Some(x.len()) {
        return Err(KernelError::BufferLength {
            what: "activations",
            expected: m.saturating_mul(k),
            got: x.len(),
        });
    }
    Ok(acts::quantize_acts(x, m, k))
}
