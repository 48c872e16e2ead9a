//! Helpers shared by the integration tests: kernel lookup, the skip/require-ISA rule, a tiny
//! deterministic RNG and generators of valid packed tensors for any format of the table.
#![allow(dead_code)]

use ternforge::table::{CodeRule, ScaleRule};
use ternforge::{Format, KernelEntry, KernelError, PackedWeights, KERNELS};

/// The registry entry of a kernel id (every id the macros generate must be in the registry).
pub fn entry(id: &str) -> &'static KernelEntry {
    KERNELS
        .iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("kernel id {id} from the table is missing in KERNELS"))
}

/// ISAs listed in `TERNFORGE_REQUIRE_ISA` (comma-separated names).
pub fn required_isas() -> Vec<String> {
    std::env::var("TERNFORGE_REQUIRE_ISA")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `true` when the kernel can run here. Otherwise prints `skipped: <id> (<reason>)` and returns
/// `false`, or panics when `TERNFORGE_REQUIRE_ISA` names the kernel's ISA.
pub fn runnable_or_skip(e: &KernelEntry) -> bool {
    if e.runnable() {
        return true;
    }
    let reason = if !e.compiled() {
        format!(
            "ISA {} not compiled into this build (compiled: {})",
            e.isa.name(),
            ternforge::COMPILED_ISAS
        )
    } else {
        format!("this CPU cannot run {}", e.isa.name())
    };
    if required_isas().iter().any(|r| r == e.isa.name()) {
        panic!(
            "{} cannot run ({reason}) but TERNFORGE_REQUIRE_ISA requires {}",
            e.id,
            e.isa.name()
        );
    }
    println!("skipped: {} ({reason})", e.id);
    false
}

/// xorshift64* — deterministic data from a proptest-chosen seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
    /// Uniform in `[lo, hi)`.
    pub fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    /// -1, 0 or +1.
    pub fn trit(&mut self) -> i8 {
        self.below(3) as i8 - 1
    }
}

/// A 64-bit FNV-1a hash, to derive per-kernel seeds from ids.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Valid K values for a format near `k`: a multiple of the block for block formats, any K for
/// the LUT formats.
pub fn k_of(format: Format, blocks_or_k: usize) -> usize {
    let spec = format.spec();
    if spec.is_lut() {
        blocks_or_k.max(1)
    } else {
        spec.block_elems * blocks_or_k.max(1)
    }
}

/// Write finite scales into a packed tensor (tensor tail f32 or per-block f16).
pub fn write_scales(format: Format, data: &mut [u8], n: usize, k: usize, rng: &mut Rng) {
    let spec = format.spec();
    match spec.scale {
        ScaleRule::TensorTail { tail_bytes } => {
            let o = data.len() - tail_bytes;
            data[o..].fill(0);
            let s = rng.f32_in(1.0 / 256.0, 4.0);
            data[o..o + 4].copy_from_slice(&s.to_le_bytes());
        }
        ScaleRule::BlockF16 => {
            let blocks = n * k / spec.block_elems;
            for b in 0..blocks {
                let o = b * spec.block_bytes() + spec.block_code_bytes;
                let d = match rng.below(8) {
                    0 => 0.0,
                    1 => -rng.f32_in(0.0, 2.0),
                    2 => rng.f32_in(0.0, 1e-4), // f16 subnormals
                    _ => rng.f32_in(0.0, 8.0),
                };
                data[o..o + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            }
        }
    }
}

/// Random bytes made into a valid tensor: every code byte random (code 3 mapped to 1 for 2-bit
/// formats, nibbles reduced mod 9 for LUT formats), finite scales.
pub fn random_tensor(format: Format, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let spec = format.spec();
    let len = format.tensor_bytes(n, k).expect("valid shape");
    let mut d: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    match spec.codes {
        CodeRule::Packed2 { .. } => {
            for b in d.iter_mut() {
                *b &= !((*b & (*b >> 1) & 0x55) << 1);
            }
        }
        CodeRule::Base3 => {}
        CodeRule::PairLut { .. } | CodeRule::TripleLut { .. } => {
            for b in d.iter_mut() {
                *b = ((*b & 15) % 9) | (((*b >> 4) % 9) << 4);
            }
        }
    }
    write_scales(format, &mut d, n, k, rng);
    // a code rule this generator does not know yet: clear whatever validation rejects
    for _ in 0..len {
        match PackedWeights::new(format, &d, n, k) {
            Err(KernelError::InvalidCode { offset, .. }) => d[offset] = 0,
            _ => break,
        }
    }
    PackedWeights::new(format, &d, n, k).expect("generated tensor must be valid");
    d
}

/// Ternary weights `w[i] * scale(row, block)` as f32, with block-constant scales that are f16
/// representable (so that block-scale formats round-trip exactly).
pub fn ternary_f32(format: Format, w: &[i8], n: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let spec = format.spec();
    let per_block = spec.scale == ScaleRule::BlockF16;
    let span = if per_block { spec.block_elems } else { n * k };
    let mut out = vec![0f32; n * k];
    for (c, chunk) in out.chunks_mut(span).enumerate() {
        let s = half::f16::from_f32(rng.f32_in(1.0 / 64.0, 16.0)).to_f32();
        for (o, &t) in chunk.iter_mut().zip(&w[c * span..]) {
            *o = t as f32 * s;
        }
    }
    out
}
