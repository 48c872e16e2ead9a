//! `cargo +nightly fuzz run gguf_parse`: the GGUF parser on arbitrary bytes must return
//! Ok or Err and never panic; what it accepts must be readable without panicking.
//! `engine/tests/gguf_robustness.rs` drives the same entry point on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ternforge_engine::gguf::{Gguf, LutFormat, LutSizer, ParseOptions};

fn sizer(f: LutFormat, dims: &[u64]) -> Option<u64> {
    let row = *dims.first()?;
    let rows = dims[1..].iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    match f {
        LutFormat::Tl1 if row % 2 == 0 => (row / 2).checked_mul(rows),
        LutFormat::Tl2 if row % 3 == 0 => (row / 3).checked_mul(rows),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let s: &LutSizer = &sizer;
    for opts in [ParseOptions::default(), ParseOptions { lut_sizer: Some(s) }] {
        if let Ok(g) = Gguf::parse_with(data, opts) {
            for (k, _) in g.metadata().iter() {
                let _ = g.get_str(k);
                let _ = g.get_u64(k);
                let _ = g.get_f32(k);
            }
            let mut sum = 0u64;
            for t in g.tensors() {
                sum = sum.wrapping_add(t.data.iter().map(|&b| b as u64).sum::<u64>());
                assert_eq!(g.tensor(t.name).map(|v| v.data.len()), Some(t.data.len()));
            }
            std::hint::black_box(sum);
        }
    }
});
