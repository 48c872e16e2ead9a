//! Runtime side of the generated registry: kernel entries and their function pointers.

use crate::table::{Isa, Tile};
use crate::{Format, PreparedActs, QuantizedActs};

/// What a kernel does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelOp {
    /// f32 weights -> packed format.
    Quantize,
    /// packed format -> f32 weights.
    Dequantize,
    /// packed weights x int8 activations -> f32, with a register tile (`cols == 1`: GEMV).
    Matmul(Tile),
}

/// Quantize kernel: `(src, n, k, out)`. Unsafe contract: see the generated function docs.
pub type QuantizeFn = unsafe fn(*const f32, usize, usize, *mut u8);
/// Dequantize kernel: `(data, n, k, out)`.
pub type DequantizeFn = unsafe fn(*const u8, usize, usize, *mut f32);
/// Activation layout of a matmul kernel family.
pub type PrepareFn = fn(&QuantizedActs) -> PreparedActs;
/// Matmul kernel: `(w, n, k, acts, r0, r1, out)`.
pub type MatmulFn = unsafe fn(*const u8, usize, usize, &PreparedActs, usize, usize, *mut f32);

/// Function pointer(s) of a kernel, or `NotCompiled` when its ISA is not in this build.
#[derive(Clone, Copy)]
pub enum KernelFn {
    Quantize(QuantizeFn),
    Dequantize(DequantizeFn),
    Matmul { prepare: PrepareFn, run: MatmulFn },
    NotCompiled,
}

/// One kernel of the table.
#[derive(Clone, Copy)]
pub struct KernelEntry {
    /// `format.isa.op`, e.g. `i2s.avx512vnni.mm4x1`.
    pub id: &'static str,
    pub format: Format,
    pub isa: Isa,
    pub op: KernelOp,
    /// Generated module (file `OUT_DIR/generated/<module>.rs`).
    pub module: &'static str,
    pub func: KernelFn,
}

impl KernelEntry {
    /// Whether this build contains the kernel.
    pub fn compiled(&self) -> bool {
        !matches!(self.func, KernelFn::NotCompiled)
    }
    /// Whether this build contains the kernel and this CPU can run it.
    pub fn runnable(&self) -> bool {
        self.compiled() && crate::cpu::supports(self.isa)
    }
    /// The formatted generated source of the kernel's module, when compiled.
    pub fn source(&self) -> Option<&'static str> {
        crate::SOURCES
            .iter()
            .find(|(m, _)| *m == self.module)
            .map(|(_, s)| *s)
    }
}

impl std::fmt::Debug for KernelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelEntry")
            .field("id", &self.id)
            .field("compiled", &self.compiled())
            .finish()
    }
}
