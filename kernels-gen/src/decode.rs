//! Decode rules of the block formats: how the code bytes of a span (one block, or several
//! contiguous blocks for tensor-scale formats) are cut into vector loads and which
//! activation elements each decoded lane multiplies.
//!
//! `Packed2` is fully described by the table vocabulary (group size, bit order); `Base3` is the
//! one hand-written rule for ggml TQ1_0. The LUT formats have their own template (`lut.rs`).

use crate::backend::CodeOp;
use crate::table::{CodeRule, FormatSpec};

/// Where the activations of a decoded vector live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActPos {
    /// Lane `i` multiplies element `offset + i` of the span (natural order).
    Natural(usize),
    /// Lane `i` multiplies prepared slot `offset + i`; `prepare` gathers element
    /// `lane_elem(i)` there. Used when one load spans several groups.
    Permuted(usize),
}

/// One code vector decoded from a load.
#[derive(Clone, Debug)]
pub struct CodeVec {
    pub op: CodeOp,
    pub act: ActPos,
    /// Span element of each lane `0..width` (for `prepare` and `dequantize`); `None` for a
    /// padding lane whose code is always 0 (its prepared activation slot is 0 too).
    pub lane_elem: Vec<Option<usize>>,
}

/// A load of `width` bytes at span byte `offset`, repeated `repeat` times with a stride of
/// `width` bytes (the activation positions of every vector advance by `width` too).
#[derive(Clone, Debug)]
pub struct Chunk {
    pub offset: usize,
    /// Lanes of the loaded vector (and activation bytes per code vector).
    pub width: usize,
    /// Weight bytes read per load: `width`, or fewer for a broadcast load (`CodeOp::Spread2`)
    /// that repeats them across the vector.
    pub bytes: usize,
    pub repeat: usize,
    /// A lane-gather load (`Some(stride)`): the vector's `width / bytes` parts of `bytes`
    /// bytes each come from span bytes `offset + p * stride` (one block per part, see
    /// [`lane_chunks`]); `None`: one contiguous (or broadcast) load.
    pub lane_stride: Option<usize>,
    pub vecs: Vec<CodeVec>,
}

/// The chunks covering `span_bytes` code bytes for a backend of `w` bytes per vector.
pub fn chunks(spec: &FormatSpec, span_bytes: usize, w: usize) -> Result<Vec<Chunk>, String> {
    match spec.codes {
        CodeRule::Packed2 {
            group_bytes,
            msb_first,
        } => Ok(packed2(group_bytes, msb_first, span_bytes, w)),
        CodeRule::Base3 => base3(span_bytes, w),
        _ => Err(format!("{} is not a block format", spec.name)),
    }
}

/// Bit position of 2-bit field `j` (0..4) of a byte: MSB-first (I2_S) or LSB-first (TQ2_0).
fn field_shift(msb_first: bool, j: usize) -> u32 {
    if msb_first {
        6 - 2 * j as u32
    } else {
        2 * j as u32
    }
}

fn packed2(gb: usize, msb: bool, span: usize, w: usize) -> Vec<Chunk> {
    let shift = |j: usize| field_shift(msb, j);
    let elem = |byte: usize, j: usize| (byte / gb) * 4 * gb + j * gb + byte % gb;
    let mut out = Vec::new();
    if w <= gb {
        // each load lies inside one group: natural activation order, `gb / w` loads per group
        for g in 0..span / gb {
            out.push(Chunk {
                offset: g * gb,
                width: w,
                bytes: w,
                repeat: gb / w,
                lane_stride: None,
                vecs: (0..4)
                    .map(|j| CodeVec {
                        op: CodeOp::Shift2(shift(j)),
                        act: ActPos::Natural(elem(g * gb, j)),
                        lane_elem: (0..w).map(|i| Some(elem(g * gb + i, j))).collect(),
                    })
                    .collect(),
            });
        }
    } else if span == gb
        && w.is_multiple_of(gb)
        && matches!((gb, w), (16, 32) | (16, 64) | (32, 64))
    {
        // the span is one group smaller than a vector (x86 widths; I2S64 blocks): the group
        // broadcast to all `w / gb` parts, part `p` of code vector `v` shifted to field
        // `v * w / gb + p`, so every code vector is `w` consecutive elements (natural order,
        // full vectors) instead of `gb`-lane vectors of a plain load
        let parts = w / gb;
        out.push(Chunk {
            offset: 0,
            width: w,
            bytes: gb,
            repeat: 1,
            lane_stride: None,
            vecs: (0..4 / parts)
                .map(|v| {
                    let mut shifts = [0u32; 4];
                    for (p, s) in shifts.iter_mut().enumerate().take(parts) {
                        *s = shift(v * parts + p);
                    }
                    CodeVec {
                        op: CodeOp::Spread2 { bytes: gb, shifts },
                        act: ActPos::Natural(v * w),
                        lane_elem: (0..w).map(|i| Some(v * w + i)).collect(),
                    }
                })
                .collect(),
        });
    } else {
        // one load spans several groups; activations are permuted by `prepare`
        let l = w.min(span);
        for c in 0..span / l {
            let base = c * l;
            out.push(Chunk {
                offset: base,
                width: l,
                bytes: l,
                repeat: 1,
                lane_stride: None,
                vecs: (0..4)
                    .map(|j| CodeVec {
                        op: CodeOp::Shift2(shift(j)),
                        act: ActPos::Permuted(4 * base + j * l),
                        lane_elem: (0..l).map(|i| Some(elem(base + i, j))).collect(),
                    })
                    .collect(),
            });
        }
    }
    out
}

/// Lane spans of a block-scale `Packed2` format whose block is one group of `lane` bytes
/// (I2S64: 16 bytes) on a `w`-byte vector: a span of `w / lane` consecutive blocks, block `p`'s
/// code bytes gathered into part `p` of the vector (lanes `p * lane..`), so that the i32
/// accumulator lanes of part `p` hold only block `p`'s products and the blocks of a span are
/// separated by a lane-wise reduction instead of one horizontal sum each. Code vector `j`
/// takes field `j` of every byte: lane `p * lane + m` is element `j * lane + m` of block `p`
/// (permuted activations). `None` when the layout is not of that kind.
pub fn lane_chunks(spec: &FormatSpec, lane: usize, w: usize) -> Option<Vec<Chunk>> {
    let CodeRule::Packed2 {
        group_bytes,
        msb_first,
    } = spec.codes
    else {
        return None;
    };
    if group_bytes != lane || spec.block_code_bytes != lane || w <= lane || !w.is_multiple_of(lane)
    {
        return None;
    }
    let shift = |j: usize| field_shift(msb_first, j);
    let be = spec.block_elems;
    Some(vec![Chunk {
        offset: 0,
        width: w,
        bytes: lane,
        repeat: 1,
        lane_stride: Some(spec.block_bytes()),
        vecs: (0..4)
            .map(|j| CodeVec {
                op: CodeOp::Shift2(shift(j)),
                act: ActPos::Permuted(j * w),
                lane_elem: (0..w)
                    .map(|i| Some((i / lane) * be + j * lane + i % lane))
                    .collect(),
            })
            .collect(),
    }])
}

/// ggml TQ1_0: qs[0..32] -> 5 trits per byte (elements n*32 + m), qs[32..48] -> 5 trits
/// (elements 160 + n*16 + m), qh[0..4] -> 4 trits (elements 240 + n*4 + j; the fifth trit of a
/// qh byte is always 0, a padding lane).
///
/// * `w >= 64`: the whole 52-byte block in one (masked) load, 5 trit vectors with permuted
///   activations: 260 prepared slots per block (4 padding slots).
/// * `w >= 32`: qs[0..32] natural (5 vectors), then qs[32..48] + qh in one 20-byte load
///   (5 permuted vectors, slots 160..260).
/// * narrower: the three sections in natural order, `w` bytes per load.
fn base3(span: usize, w: usize) -> Result<Vec<Chunk>, String> {
    if span != 52 {
        return Err(format!(
            "base-3 spans are single 52-byte blocks, got {span}"
        ));
    }
    let elem = |byte: usize, n: usize| -> Option<usize> {
        match byte {
            0..=31 => Some(n * 32 + byte),
            32..=47 => Some(160 + n * 16 + (byte - 32)),
            48..=51 if n < 4 => Some(240 + n * 4 + (byte - 48)),
            _ => None,
        }
    };
    let mut out = Vec::new();
    if w >= 64 {
        out.push(Chunk {
            offset: 0,
            width: 52,
            bytes: 52,
            repeat: 1,
            lane_stride: None,
            vecs: (0..5)
                .map(|n| CodeVec {
                    op: CodeOp::Trit(n as u32),
                    act: ActPos::Permuted(n * 52),
                    lane_elem: (0..52).map(|i| elem(i, n)).collect(),
                })
                .collect(),
        });
        return Ok(out);
    }
    let mut section = |offset: usize, bytes: usize, trits: u32, ebase: usize| {
        let width = w.min(bytes);
        out.push(Chunk {
            offset,
            width,
            bytes: width,
            repeat: bytes / width,
            lane_stride: None,
            vecs: (0..trits)
                .map(|n| CodeVec {
                    op: CodeOp::Trit(n),
                    act: ActPos::Natural(ebase + n as usize * bytes),
                    lane_elem: (0..width)
                        .map(|i| Some(ebase + n as usize * bytes + i))
                        .collect(),
                })
                .collect(),
        });
    };
    section(0, 32, 5, 0);
    if w >= 32 {
        out.push(Chunk {
            offset: 32,
            width: 20,
            bytes: 20,
            repeat: 1,
            lane_stride: None,
            vecs: (0..5)
                .map(|n| CodeVec {
                    op: CodeOp::Trit(n as u32),
                    act: ActPos::Permuted(160 + n * 20),
                    lane_elem: (0..20).map(|i| elem(32 + i, n)).collect(),
                })
                .collect(),
        });
    } else {
        section(32, 16, 5, 160);
        section(48, 4, 4, 240);
    }
    Ok(out)
}
