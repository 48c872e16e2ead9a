//! Reference for the LUT formats: Microsoft's TL1 pair and TL2 triple index schemes with the
//! ternforge tiling (any shape, any batch; the tile height is the format's `tile_rows`,
//! recorded in GGUF metadata by the engine).
//!
//! Rows are grouped in tiles of `BM = tile_rows` rows (the last tile is padded with zero
//! weights); tiles are stored one after the other, then a 32-byte tail holding the f32 tensor
//! scale.
//!
//! **TL1** (`PairLut`): K is padded with zeros to a multiple of 4. Pair `p` = elements
//! `(2p, 2p+1)`, index `3*w0 + w1 + 4` (0..8). A tile is `Kp/4` chunks of `BM` bytes; in chunk
//! `c`, byte `r` = `idx(r, 2c) | idx(r, 2c+1) << 4`.
//!
//! **TL2** (`TripleLut`): `T` = number of triples = `floor(K/3)` rounded down to even; the
//! `R = K - 3T` remaining elements (0..=5) are padded with zeros to `Rp` = a multiple of 4 and
//! use the TL1 pair encoding. Triple `t` = elements `(3t, 3t+1, 3t+2)`, `v = 9*w0 + 3*w1 + w2`.
//! A tile is: `T/2` chunks of `BM` bytes (`|v(r,2c)| | |v(r,2c+1)| << 4`), then `ceil(T/8)`
//! chunks of `BM` sign bytes (bit `j` of byte `r` in chunk `c` = `v(r, 8c+j) < 0`), then
//! `Rp/4` TL1 chunks for the remainder.

use super::{Scales, Ternary};
use crate::table::{CodeRule, FormatSpec, Isa};

pub const TAIL: usize = 32;

/// Geometry of a LUT-format tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LutGeometry {
    pub triples: bool,
    pub bm: usize,
    pub n: usize,
    pub k: usize,
    pub tiles: usize,
    /// TL2: number of triples (even). TL1: 0.
    pub t: usize,
    /// Elements handled by pair chunks (padded to a multiple of 4).
    pub pair_elems: usize,
    /// Bytes per tile.
    pub tile_bytes: usize,
}

impl LutGeometry {
    pub fn new(spec: &FormatSpec, n: usize, k: usize) -> LutGeometry {
        let (triples, bm) = match spec.codes {
            CodeRule::PairLut { tile_rows } => (false, tile_rows),
            CodeRule::TripleLut { tile_rows } => (true, tile_rows),
            _ => unreachable!("lut reference called for {}", spec.name),
        };
        let tiles = n.div_ceil(bm);
        let (t, rem) = if triples {
            let t = (k / 3) & !1;
            (t, k - 3 * t)
        } else {
            (0, k)
        };
        let pair_elems = rem.div_ceil(4) * 4;
        let chunks = t / 2 + t.div_ceil(8) + pair_elems / 4;
        LutGeometry {
            triples,
            bm,
            n,
            k,
            tiles,
            t,
            pair_elems,
            tile_bytes: chunks * bm,
        }
    }

    /// First element of the pair section.
    pub fn pair_base(&self) -> usize {
        3 * self.t
    }
    /// Byte offset of the sign chunks inside a tile.
    pub fn sign_offset(&self) -> usize {
        self.t / 2 * self.bm
    }
    /// Byte offset of the pair chunks inside a tile.
    pub fn pair_offset(&self) -> usize {
        (self.t / 2 + self.t.div_ceil(8)) * self.bm
    }
    pub fn codes_bytes(&self) -> usize {
        self.tiles * self.tile_bytes
    }
}

pub fn tensor_bytes(spec: &FormatSpec, n: usize, k: usize) -> usize {
    LutGeometry::new(spec, n, k).codes_bytes() + TAIL
}

/// TL1 pair index of two weights.
pub fn pair_index(w0: i8, w1: i8) -> u8 {
    (3 * w0 + w1 + 4) as u8
}

/// Weights of a TL1 pair index (indices 9..15 are never written and decode as zeros).
pub fn pair_weights(idx: u8) -> (i8, i8) {
    if idx > 8 {
        return (0, 0);
    }
    let v = idx as i8 - 4;
    let w1 = (v + 4).rem_euclid(3) - 1;
    ((v - w1) / 3, w1)
}

/// Weights of a TL2 triple magnitude (0..13; 14, 15 decode as zeros) and sign.
pub fn triple_weights(mag: u8, negative: bool) -> [i8; 3] {
    if mag > 13 {
        return [0; 3];
    }
    let v = if negative { -(mag as i8) } else { mag as i8 };
    // balanced ternary digits of v
    let w2 = (v + 13).rem_euclid(3) - 1;
    let r = (v - w2) / 3;
    let w1 = (r + 13).rem_euclid(3) - 1;
    let w0 = (r - w1) / 3;
    [w0, w1, w2]
}

pub fn decode(spec: &FormatSpec, data: &[u8], n: usize, k: usize) -> Ternary {
    let g = LutGeometry::new(spec, n, k);
    let mut w = vec![0i8; n * k];
    let mut put = |row: usize, e: usize, v: i8| {
        if row < n && e < k {
            w[row * k + e] = v;
        }
    };
    for tile in 0..g.tiles {
        let base = tile * g.tile_bytes;
        for r in 0..g.bm {
            let row = tile * g.bm + r;
            for c in 0..g.t / 2 {
                let b = data[base + c * g.bm + r];
                for (h, mag) in [(0, b & 15), (1, b >> 4)] {
                    let t = 2 * c + h;
                    let sb = data[base + g.sign_offset() + (t / 8) * g.bm + r];
                    let neg = (sb >> (t % 8)) & 1 == 1;
                    for (i, v) in triple_weights(mag, neg).into_iter().enumerate() {
                        put(row, 3 * t + i, v);
                    }
                }
            }
            for c in 0..g.pair_elems / 4 {
                let b = data[base + g.pair_offset() + c * g.bm + r];
                for (h, idx) in [(0, b & 15), (1, b >> 4)] {
                    let (w0, w1) = pair_weights(idx);
                    let e = g.pair_base() + 4 * c + 2 * h;
                    put(row, e, w0);
                    put(row, e + 1, w1);
                }
            }
        }
    }
    let o = g.codes_bytes();
    let scale = f32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    Ternary {
        n,
        k,
        w,
        scales: Scales::Tensor(scale),
    }
}

pub fn encode(spec: &FormatSpec, src: &[f32], n: usize, k: usize) -> Vec<u8> {
    let g = LutGeometry::new(spec, n, k);
    let scale = src.iter().fold(0f64, |a, &x| a.max((x as f64).abs()));
    let wt = |row: usize, e: usize| -> i8 {
        if row < n && e < k {
            super::packed2::sign_max_code(src[row * k + e], scale) as i8 - 1
        } else {
            0
        }
    };
    let mut out = vec![0u8; g.codes_bytes() + TAIL];
    for tile in 0..g.tiles {
        let base = tile * g.tile_bytes;
        for r in 0..g.bm {
            let row = tile * g.bm + r;
            for t in 0..g.t {
                let v = 9 * wt(row, 3 * t) + 3 * wt(row, 3 * t + 1) + wt(row, 3 * t + 2);
                out[base + (t / 2) * g.bm + r] |= (v.unsigned_abs()) << (4 * (t % 2));
                if v < 0 {
                    out[base + g.sign_offset() + (t / 8) * g.bm + r] |= 1 << (t % 8);
                }
            }
            for p in 0..g.pair_elems / 2 {
                let e = g.pair_base() + 2 * p;
                let idx = pair_index(wt(row, e), wt(row, e + 1));
                out[base + g.pair_offset() + (p / 2) * g.bm + r] |= idx << (4 * (p % 2));
            }
        }
    }
    let o = g.codes_bytes();
    out[o..o + 4].copy_from_slice(&(scale as f32).to_le_bytes());
    out
}

/// Check that every index is one the format writes (TL1: 0..=8, TL2 magnitudes 0..=13).
/// Returns the offending byte offset and value.
pub fn validate(spec: &FormatSpec, data: &[u8], n: usize, k: usize) -> Result<(), (usize, u8)> {
    let g = LutGeometry::new(spec, n, k);
    for tile in 0..g.tiles {
        let base = tile * g.tile_bytes;
        let tri = &data[base..base + g.sign_offset()];
        if let Some(i) = tri.iter().position(|&b| (b & 15) > 13 || (b >> 4) > 13) {
            return Err((base + i, tri[i]));
        }
        let po = base + g.pair_offset();
        let pairs = &data[po..base + g.tile_bytes];
        if let Some(i) = pairs.iter().position(|&b| (b & 15) > 8 || (b >> 4) > 8) {
            return Err((po + i, pairs[i]));
        }
    }
    Ok(())
}

/// The prepared activation row length of the LUT kernels: the TL2 triples' elements in
/// order, three slots per triple, padded with zeros to whole groups of four triples (twelve
/// slots, three 4-byte groups of the panel tiles), then the pair elements padded to whole
/// pairs of pairs.
pub fn prepared_k(spec: &FormatSpec, k: usize) -> usize {
    let g = LutGeometry::new(spec, 1, k);
    triple_slots(g.t) + g.pair_elems
}

/// Prepared slots of `t` TL2 triples: `3 * t` rounded up to whole groups of four triples.
pub const fn triple_slots(t: usize) -> usize {
    3 * t.div_ceil(4) * 4
}

/// Units whose activation tables a kernel of `isa` stores together in `PreparedActs::lut`:
/// AVX-512 interleaves four units (`[lo(4g), lo(4g+2)]`, `[hi(4g), hi(4g+2)]`,
/// `[lo(4g+1), lo(4g+3)]`, `[hi(4g+1), hi(4g+3)]`, 16 bytes each, so that one 32-byte broadcast
/// feeds a zmm `vpshufb`); every other ISA stores unit `u` alone at `32 * u` (`lo[16]`,
/// `hi[16]`). `lo`/`hi` are the low and high bytes of the 16 int16 sums of the unit. (TL2's
/// triple tables on AVX-512 are not grouped: see [`signed_triple_tables`].)
pub const fn table_group(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni => 4,
        _ => 1,
    }
}

/// Whether the TL2 triple tables a kernel of `isa` reads are the signed ones: AVX-512 stores
/// one 64-byte table per triple, 32 int16 sums indexed by `magnitude | negative << 4` (the
/// 16 sums, then their negations), looked up with `vpermw`; every other ISA (and every pair
/// table) stores the 16 sums of the unit and applies the sign itself.
pub const fn signed_triple_tables(spec: &FormatSpec, isa: Isa) -> bool {
    matches!(spec.codes, CodeRule::TripleLut { .. }) && matches!(isa, Isa::Avx512 | Isa::Avx512Vnni)
}

/// Bytes of lookup tables per activation row prepared for a LUT kernel of `isa`: the triple
/// tables (TL2) then the pair tables, each area rounded up to whole groups.
pub fn prepared_row_bytes(spec: &FormatSpec, k: usize, isa: Isa) -> usize {
    let g = LutGeometry::new(spec, 1, k);
    let area = |units: usize| units.div_ceil(table_group(isa)) * table_group(isa) * 32;
    let tri = if signed_triple_tables(spec, isa) {
        64 * g.t
    } else {
        area(g.t)
    };
    tri + area(g.pair_elems / 2)
}

#[cfg(test)]
mod tests {
    //! Every runnable LUT kernel against this reference over shapes that hit every padding
    //! case (K mod 24, N mod 32), several int16 flushes, and the extreme sums (all weights of
    //! one sign times activations of -128) that bound the int16 accumulators.
    use crate::{
        dequantize_with, matmul_with, quantize_with, reference, KernelOp, PackedWeights,
        QuantizedActs, KERNELS,
    };

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn weights(rng: &mut Rng, n: usize, k: usize) -> Vec<f32> {
        let mut w = Vec::with_capacity(n * k);
        for row in 0..n {
            for _ in 0..k {
                let v = match row % 4 {
                    0 | 3 => [-0.5f32, 0.0, 0.5][(rng.next() % 3) as usize],
                    1 => -0.5,
                    _ => 0.5,
                };
                w.push(v);
            }
        }
        w
    }

    fn acts(rng: &mut Rng, m: usize, k: usize) -> QuantizedActs {
        let mut q = Vec::with_capacity(m * k);
        for row in 0..m {
            for _ in 0..k {
                q.push(match row % 4 {
                    0 => rng.next() as i8,
                    1 => -128,
                    2 => 127,
                    _ => [-128i8, 127][(rng.next() % 2) as usize],
                });
            }
        }
        let scale = (0..m).map(|i| 0.75 + i as f32 * 0.37).collect();
        QuantizedActs::from_parts(m, k, q, scale).unwrap()
    }

    #[test]
    fn lut_kernels_match_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let ks: Vec<usize> = (1..=50).chain([191, 192, 193, 385, 1000, 1541]).collect();
        let mut checked = 0;
        for e in KERNELS
            .iter()
            .filter(|e| e.format.spec().is_lut() && e.runnable())
        {
            let f = e.format;
            for &n in &[1usize, 31, 32, 33, 70] {
                for &k in &ks {
                    if n * k > 40_000 && n != 33 {
                        continue;
                    }
                    let w = weights(&mut rng, n, k);
                    let packed = reference::quantize(f.spec(), &w, n, k);
                    let pw = PackedWeights::new(f, &packed, n, k).unwrap();
                    match e.op {
                        KernelOp::Quantize => {
                            let q = quantize_with(e, f, &w, n, k).unwrap();
                            assert_eq!(q, packed, "{} {n}x{k}", e.id);
                        }
                        KernelOp::Dequantize => {
                            let mut o = vec![0f32; n * k];
                            dequantize_with(e, &pw, &mut o).unwrap();
                            let r = reference::dequantize(f.spec(), &packed, n, k);
                            assert_eq!(o, r, "{} {n}x{k}", e.id);
                        }
                        KernelOp::Matmul(_) => {
                            // m = 37 with K >= 1000 spans several column blocks of the
                            // kernels (tables of about 128 KiB per block)
                            let ms: &[usize] = if k >= 1000 {
                                &[1, 5, 37]
                            } else {
                                &[1, 2, 4, 5, 8]
                            };
                            for &m in ms {
                                let a = acts(&mut rng, m, k);
                                let mut o = vec![f32::NAN; m * n];
                                matmul_with(e, &pw, &a, &mut o).unwrap();
                                let r = reference::matmul(f.spec(), &packed, n, k, &a);
                                assert_eq!(
                                    o.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    "{} {n}x{k} m={m}",
                                    e.id
                                );
                            }
                        }
                    }
                    checked += 1;
                }
            }
        }
        // scalar TL1 and TL2 rows always run: at least their 2 x 4 kernels were checked
        assert!(checked >= 8, "only {checked} LUT checks ran");
    }

    /// Activations prepared for one LUT kernel run on another only when the table layouts
    /// agree; a layout of another size is rejected (never read out of bounds).
    #[test]
    fn prepared_tables_are_checked_across_kernels() {
        let mut rng = Rng(7);
        let (n, k, m) = (40usize, 20usize, 3usize);
        let mm = |e: &&crate::KernelEntry| matches!(e.op, KernelOp::Matmul(_)) && e.runnable();
        let mut pairs = 0;
        for a in KERNELS
            .iter()
            .filter(|e| e.format.spec().is_lut())
            .filter(mm)
        {
            for b in KERNELS.iter().filter(|e| e.format == a.format).filter(mm) {
                let f = a.format;
                let w = weights(&mut rng, n, k);
                let packed = reference::quantize(f.spec(), &w, n, k);
                let pw = PackedWeights::new(f, &packed, n, k).unwrap();
                let x = acts(&mut rng, m, k);
                let p = crate::prepare_for(a, &x).unwrap();
                let mut o = vec![0f32; m * n];
                // prepared activations are accepted only by kernels of the same generated
                // module (same table layout); every other kernel refuses them
                let same = a.module == b.module;
                let res = crate::matmul_prepared(b, &pw, &p, &mut o);
                if same {
                    res.unwrap();
                    assert_eq!(
                        o,
                        reference::matmul(f.spec(), &packed, n, k, &x),
                        "{} -> {}",
                        a.id,
                        b.id
                    );
                } else {
                    assert!(res.is_err(), "{} -> {}", a.id, b.id);
                }
                pairs += 1;
            }
        }
        assert!(pairs >= 8, "only {pairs} kernel pairs");
    }

    #[test]
    fn triple_and_pair_indices_round_trip() {
        for w0 in -1i8..=1 {
            for w1 in -1i8..=1 {
                assert_eq!(super::pair_weights(super::pair_index(w0, w1)), (w0, w1));
                for w2 in -1i8..=1 {
                    let v = 9 * w0 + 3 * w1 + w2;
                    let got = super::triple_weights(v.unsigned_abs(), v < 0);
                    assert_eq!(got, [w0, w1, w2]);
                }
            }
        }
    }
}
