//! Runtime dispatch: which kernel runs, chosen once per process from the CPU features (or an
//! explicit override), plus the safe entry points that validate and then call kernels.

use crate::registry::{KernelEntry, KernelFn, KernelOp};
use crate::table::Isa;
use crate::{cpu, Format, KernelError, PackedWeights, PreparedActs, QuantizedActs, KERNELS};
use rayon::prelude::*;
use std::sync::OnceLock;

/// ISA preference, fastest first.
const PREFERENCE: [Isa; 6] = [
    Isa::Avx512Vnni,
    Isa::Avx512,
    Isa::Avx2,
    Isa::NeonDot,
    Isa::Neon,
    Isa::Scalar,
];

/// The dispatch decision: the ISA kernels are taken from (falling back, per format, to the
/// next ISA in preference order that has a row for it; never above the chosen one).
#[derive(Clone, Debug)]
pub struct Dispatch {
    /// Highest ISA allowed.
    pub isa: Isa,
    /// `true` when set by `TERNFORGE_ISA` or [`Dispatch::with_isa`].
    pub overridden: bool,
    /// GEMV tile height to prefer where a table row lists one (`None`: the row's first GEMV
    /// tile); from the CPU vendor ([`crate::table::AMD_GEMV_ROWS`]), also under an override.
    pub gemv_rows: Option<usize>,
}

/// The GEMV tile height this CPU prefers (see [`Dispatch::gemv_rows`]).
fn gemv_rows() -> Option<usize> {
    cpu::is_amd().then_some(crate::table::AMD_GEMV_ROWS)
}

impl Dispatch {
    /// Detect the best ISA this build and CPU can run.
    pub fn detect() -> Dispatch {
        let isa = PREFERENCE
            .into_iter()
            .find(|&i| compiled(i) && cpu::supports(i))
            .unwrap_or(Isa::Scalar);
        Dispatch {
            isa,
            overridden: false,
            gemv_rows: gemv_rows(),
        }
    }

    /// An explicit ISA; an error if it is not compiled in or this CPU cannot run it.
    pub fn with_isa(isa: Isa) -> Result<Dispatch, KernelError> {
        if !compiled(isa) {
            return Err(KernelError::IsaNotCompiled(isa));
        }
        if !cpu::supports(isa) {
            return Err(KernelError::IsaUnsupported(isa));
        }
        Ok(Dispatch {
            isa,
            overridden: true,
            gemv_rows: gemv_rows(),
        })
    }

    /// From an ISA name (`TERNFORGE_ISA` syntax).
    pub fn from_name(name: &str) -> Result<Dispatch, KernelError> {
        let isa = Isa::from_name(name).ok_or_else(|| KernelError::UnknownIsa(name.into()))?;
        Dispatch::with_isa(isa)
    }

    fn allowed(&self) -> impl Iterator<Item = Isa> + '_ {
        let start = PREFERENCE.iter().position(|&i| i == self.isa).unwrap_or(0);
        let arch_of_choice = self.isa.arch();
        PREFERENCE[start..]
            .iter()
            .copied()
            .filter(move |i| i.arch().is_none() || i.arch() == arch_of_choice)
    }

    /// The kernel for a format and operation. For matmul, `m` (activation rows) picks the
    /// tile: for `m == 1` the GEMV tile (`cols == 1`) of [`Dispatch::gemv_rows`] rows if the
    /// table row lists one, else its first GEMV tile; else the first listed GEMM tile not
    /// wider than `m` (nor above its `min_batch`).
    pub fn select(
        &self,
        format: Format,
        op: KernelOp,
        m: usize,
    ) -> Result<&'static KernelEntry, KernelError> {
        for isa in self.allowed() {
            let mut cands = KERNELS.iter().filter(|e| {
                e.format == format
                    && e.isa == isa
                    && e.runnable()
                    && std::mem::discriminant(&e.op) == std::mem::discriminant(&op)
            });
            // Tiles are ranked by the table: a row lists its tiles in order of preference.
            // m == 1: the GEMV tile (cols == 1) of the preferred height, else the first one;
            // m > 1: the first listed GEMM tile with no more columns than m and m at least
            // its minimum batch, else the narrowest.
            let best = match op {
                KernelOp::Matmul(_) => {
                    // every candidate is a matmul (same op discriminant): pair it with its tile
                    let cands: Vec<(&'static KernelEntry, crate::Tile)> = cands
                        .filter_map(|e| match e.op {
                            KernelOp::Matmul(t) => Some((e, t)),
                            _ => None,
                        })
                        .collect();
                    let best = if m <= 1 {
                        let gemv = cands.iter().filter(|(_, t)| t.cols == 1);
                        gemv.clone()
                            .find(|(_, t)| Some(t.rows) == self.gemv_rows)
                            .or_else(|| gemv.clone().next())
                    } else {
                        let gemm = cands.iter().filter(|(_, t)| t.cols > 1);
                        gemm.clone()
                            .find(|(_, t)| t.min_batch.max(t.cols) <= m)
                            .or_else(|| gemm.clone().min_by_key(|(_, t)| t.cols))
                    };
                    best.or(cands.first()).map(|&(e, _)| e)
                }
                _ => cands.next_back(),
            };
            if let Some(e) = best {
                return Ok(e);
            }
        }
        Err(KernelError::NoKernel(format!(
            "{} {op:?} at ISA {}",
            format.name(),
            self.isa.name()
        )))
    }
}

fn compiled(isa: Isa) -> bool {
    KERNELS.iter().any(|e| e.isa == isa && e.compiled())
}

/// The process-wide dispatch: `TERNFORGE_ISA=<name>` forces an ISA (an error at first use if
/// this build or CPU cannot run it), otherwise the best detected. Cached after the first call.
pub fn dispatch() -> Result<&'static Dispatch, KernelError> {
    static D: OnceLock<Result<Dispatch, KernelError>> = OnceLock::new();
    D.get_or_init(|| match std::env::var("TERNFORGE_ISA") {
        Ok(name) if !name.is_empty() && name != "auto" => Dispatch::from_name(&name),
        _ => Ok(Dispatch::detect()),
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The matmul kernel dispatch picks for `m` activation rows.
pub fn select_matmul(format: Format, m: usize) -> Result<&'static KernelEntry, KernelError> {
    dispatch()?.select(format, KernelOp::Matmul(crate::Tile::new(1, 1)), m)
}

fn check_entry(entry: &KernelEntry, format: Format, op: KernelOp) -> Result<(), KernelError> {
    if entry.format != format || std::mem::discriminant(&entry.op) != std::mem::discriminant(&op) {
        return Err(KernelError::NoKernel(format!(
            "kernel {} does not {op:?} {}",
            entry.id,
            format.name()
        )));
    }
    if !entry.compiled() {
        return Err(KernelError::IsaNotCompiled(entry.isa));
    }
    if !cpu::supports(entry.isa) {
        return Err(KernelError::IsaUnsupported(entry.isa));
    }
    Ok(())
}

/// Quantize `n x k` f32 weights with the dispatched kernel.
pub fn quantize(format: Format, src: &[f32], n: usize, k: usize) -> Result<Vec<u8>, KernelError> {
    let e = dispatch()?.select(format, KernelOp::Quantize, 1)?;
    quantize_with(e, format, src, n, k)
}

/// Quantize with a specific kernel (tests, benches).
pub fn quantize_with(
    entry: &KernelEntry,
    format: Format,
    src: &[f32],
    n: usize,
    k: usize,
) -> Result<Vec<u8>, KernelError> {
    check_entry(entry, format, KernelOp::Quantize)?;
    let bytes = format.tensor_bytes(n, k)?;
    if src.len() != n * k {
        return Err(KernelError::BufferLength {
            what: "f32 weights",
            expected: n * k,
            got: src.len(),
        });
    }
    let mut out = vec![0u8; bytes];
    let KernelFn::Quantize(f) = entry.func else {
        unreachable!("checked op")
    };
    // SAFETY: shape validated, src has n*k values, out has the format's tensor size.
    unsafe { f(src.as_ptr(), n, k, out.as_mut_ptr()) };
    Ok(out)
}

/// Dequantize with the dispatched kernel into `out` (`n * k` values).
pub fn dequantize(w: &PackedWeights<'_>, out: &mut [f32]) -> Result<(), KernelError> {
    let e = dispatch()?.select(w.format(), KernelOp::Dequantize, 1)?;
    dequantize_with(e, w, out)
}

/// Dequantize with a specific kernel.
pub fn dequantize_with(
    entry: &KernelEntry,
    w: &PackedWeights<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_entry(entry, w.format(), KernelOp::Dequantize)?;
    let len = w.n() * w.k();
    if out.len() != len {
        return Err(KernelError::BufferLength {
            what: "dequantize output",
            expected: len,
            got: out.len(),
        });
    }
    let KernelFn::Dequantize(f) = entry.func else {
        unreachable!("checked op")
    };
    // SAFETY: `w` is a validated tensor of its shape; out has n*k values.
    unsafe { f(w.data().as_ptr(), w.n(), w.k(), out.as_mut_ptr()) };
    Ok(())
}

/// Put activations in the layout of a matmul kernel (reusable across weights that share the
/// kernel family, e.g. Q/K/V projections).
pub fn prepare_for(entry: &KernelEntry, acts: &QuantizedActs) -> Result<PreparedActs, KernelError> {
    check_entry(
        entry,
        entry.format,
        KernelOp::Matmul(crate::Tile::new(1, 1)),
    )?;
    let KernelFn::Matmul { prepare, .. } = entry.func else {
        return Err(KernelError::NoKernel(format!(
            "{} is not a matmul kernel",
            entry.id
        )));
    };
    check_acts(entry.format, acts)?;
    Ok(prepare(acts))
}

fn check_acts(format: Format, acts: &QuantizedActs) -> Result<(), KernelError> {
    if acts.m == 0 {
        return Err(KernelError::Activations("no activation rows".into()));
    }
    let spec = format.spec();
    if !spec.is_lut() && !acts.k.is_multiple_of(spec.block_elems) {
        return Err(KernelError::Activations(format!(
            "K = {} is not a multiple of the {} block ({})",
            acts.k,
            format.name(),
            spec.block_elems
        )));
    }
    if acts.q.len() != acts.m * acts.k || acts.scale.len() != acts.m || acts.sum.len() != acts.m {
        return Err(KernelError::Activations(
            "inconsistent activation buffers".into(),
        ));
    }
    Ok(())
}

/// Matmul with the dispatched kernels: `out[m * n + row] = sum_k w[row, k] * x[m, k]`
/// (see `reference` for the exact arithmetic). Uses the rayon pool for large products.
pub fn matmul(
    w: &PackedWeights<'_>,
    acts: &QuantizedActs,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let e = dispatch()?.select(w.format(), KernelOp::Matmul(crate::Tile::new(1, 1)), acts.m)?;
    matmul_with(e, w, acts, out)
}

/// Matmul with a specific kernel.
pub fn matmul_with(
    entry: &KernelEntry,
    w: &PackedWeights<'_>,
    acts: &QuantizedActs,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if acts.k != w.k() {
        return Err(KernelError::Activations(format!(
            "K = {} but the weights have K = {}",
            acts.k,
            w.k()
        )));
    }
    let p = prepare_for(entry, acts)?;
    matmul_prepared(entry, w, &p, out)
}

/// Matmul on activations already prepared by `prepare_for(entry, ..)`.
pub fn matmul_prepared(
    entry: &KernelEntry,
    w: &PackedWeights<'_>,
    acts: &PreparedActs,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_prepared_many(entry, &mut [(*w, out)], acts)
}

/// Several matmuls of the same prepared activations (e.g. the Q, K and V projections of one
/// input) in one parallel region: the rows of all weights are cut into chunks shared by the
/// rayon pool, so small matrices do not each pay a fork/join and a cold start. Every weight
/// must be of the entry's format and K; `jobs[i].1` receives `m x n_i` outputs.
pub fn matmul_prepared_many(
    entry: &KernelEntry,
    jobs: &mut [(PackedWeights<'_>, &mut [f32])],
    acts: &PreparedActs,
) -> Result<(), KernelError> {
    // the same order of checks as for one matmul: ISA and format, kind, then shapes
    for (w, _) in jobs.iter() {
        check_entry(entry, w.format(), entry.op)?;
    }
    let KernelFn::Matmul { prepare: _, run } = entry.func else {
        return Err(KernelError::NoKernel(format!(
            "{} is not a matmul kernel",
            entry.id
        )));
    };
    for (w, out) in jobs.iter() {
        check_prepared(entry, w, acts, out)?;
    }
    let Some((first, _)) = jobs.first() else {
        return Ok(());
    };
    let (k, m) = (first.k(), acts.m);
    let spec = first.format().spec();
    let unit = spec.tile_rows().max(match entry.op {
        KernelOp::Matmul(t) => t.rows,
        _ => 1,
    });
    let total_rows: usize = jobs.iter().map(|(w, _)| w.n()).sum();
    let work = total_rows * k * m;
    let threads = rayon::current_num_threads();
    // Chunks over all the rows, each a whole number of tiles. A GEMV (m = 1) streams its
    // weights: one chunk per thread, so each thread reads one share with its tiles' streams
    // far apart and starts no new streams mid-region (2B4T decode on a 2-vCPU Xeon against
    // four chunks per thread, alternated in one process: body 1.5-7 % faster by the median,
    // faster in 38 of 48 eight-token runs). Batches keep about four per thread for balance.
    let per_thread = if m == 1 { 1 } else { 4 };
    let target = if work < (1 << 20) || threads == 1 {
        1
    } else {
        threads * per_thread
    };
    let rows_per = total_rows
        .div_ceil(target)
        .div_ceil(unit)
        .max(1)
        .saturating_mul(unit);
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new();
    for (i, (w, _)) in jobs.iter().enumerate() {
        let mut r0 = 0;
        while r0 < w.n() {
            let r1 = (r0 + rows_per).min(w.n());
            chunks.push((i, r0, r1));
            r0 = r1;
        }
    }
    let ptrs: Vec<(usize, usize, OutPtr)> = jobs
        .iter_mut()
        .map(|(w, out)| (w.data().as_ptr() as usize, w.n(), OutPtr(out.as_mut_ptr())))
        .collect();
    let body = |&(i, r0, r1): &(usize, usize, usize)| {
        let (data, n, p) = (ptrs[i].0, ptrs[i].1, ptrs[i].2);
        // SAFETY: every weight was validated for (n, k) and its output for m * n values
        // (check_prepared); acts were prepared for this kernel and K; r0..r1 lies inside 0..n
        // and starts on a tile boundary; chunks of one output are disjoint row ranges and
        // each writes only its rows.
        unsafe { run(data as *const u8, n, k, acts, r0, r1, p.0) };
    };
    if chunks.len() == 1 {
        body(&chunks[0]);
    } else {
        chunks.par_iter().for_each(body);
    }
    Ok(())
}

/// The shape checks of [`matmul_prepared`] for one weight and its output (after
/// `check_entry`).
fn check_prepared(
    entry: &KernelEntry,
    w: &PackedWeights<'_>,
    acts: &PreparedActs,
    out: &[f32],
) -> Result<(), KernelError> {
    if acts.k != w.k() {
        return Err(KernelError::Activations(format!(
            "K = {} but the weights have K = {}",
            acts.k,
            w.k()
        )));
    }
    let (n, m) = (w.n(), acts.m);
    let spec = w.format().spec();
    if acts.layout != entry.module {
        return Err(KernelError::Activations(format!(
            "activations were prepared for {} kernels, not {}",
            if acts.layout.is_empty() {
                "no"
            } else {
                acts.layout
            },
            entry.id
        )));
    }
    let block_sums = if spec.scale == crate::table::ScaleRule::BlockF16 {
        m * (acts.k / spec.block_elems)
    } else {
        acts.bsum.len()
    };
    let lut_ok = !spec.is_lut()
        || acts.lut.len() == m * crate::reference::lut::prepared_row_bytes(spec, acts.k, entry.isa);
    if m == 0
        || !lut_ok
        || acts.q.len() != m * acts.stride
        || acts.scale.len() != m
        || acts.sum.len() != m
        || acts.bsum.len() != block_sums
    {
        return Err(KernelError::Activations(format!(
            "inconsistent prepared activations for {}",
            entry.id
        )));
    }
    if out.len() != m * n {
        return Err(KernelError::BufferLength {
            what: "matmul output",
            expected: m * n,
            got: out.len(),
        });
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint row ranges of the outputs (see matmul_prepared_many).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
