//! The fast activation quantizer behind `ternforge::quantize_acts` must equal the reference
//! (`reference::quantize_acts`, the spec) bit for bit: values, scales and sums. Covers exact
//! rounding ties (±k.5 after scaling), values that scale to ±127/±128, NaN, infinities,
//! subnormals, all-zero rows and row lengths that are not a multiple of the vector width.

use proptest::prelude::*;
use ternforge::{quantize_acts, reference};

fn check(x: &[f32], m: usize, k: usize) {
    let fast = quantize_acts(x, m, k).expect("quantize_acts");
    let want = reference::quantize_acts(x, m, k);
    assert_eq!(fast.q, want.q, "values differ (m={m}, k={k})");
    assert_eq!(fast.sum, want.sum, "sums differ (m={m}, k={k})");
    let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&fast.scale), bits(&want.scale), "scales differ");
}

#[test]
fn rounding_ties_and_saturation() {
    // With max |x| = 127 the scale is exactly 1, so x itself is rounded: every tie k + 0.5.
    let mut x: Vec<f32> = (-255..=255).map(|i| i as f32 * 0.5).collect();
    x.retain(|v| v.abs() <= 127.0);
    x.push(127.0);
    let k = x.len();
    check(&x, 1, k);
    // scaled values just around the ties and the saturation bounds
    let mut y = vec![127.0f32];
    for base in [0.5f32, 1.5, 2.5, 126.5, -0.5, -1.5, -126.5, -127.5] {
        y.push(base);
        y.push(f32::from_bits(base.to_bits() + 1));
        y.push(f32::from_bits(base.to_bits() - 1));
    }
    let k = y.len();
    check(&y, 1, k);
}

#[test]
fn special_values() {
    let rows: Vec<Vec<f32>> = vec![
        vec![0.0; 37],
        vec![-0.0; 64],
        vec![f32::NAN, 1.0, -0.5, 0.25, f32::NAN],
        // NaNs with payloads and the sign bit set (the fast path reads float bits)
        [0x7fc0_00ffu32, 0xffc0_0001, 0x7f80_0001, 0xff80_7f80]
            .iter()
            .map(|&b| f32::from_bits(b))
            .chain((0..60).map(|i| i as f32 - 30.0))
            .collect(),
        vec![f32::INFINITY, 1.0, -2.0],
        vec![f32::NEG_INFINITY, 0.0, 3.0, 4.0],
        vec![1e-40, -1e-40, 1e-45, 0.0],
        vec![1e-6, -1e-6, 5e-6, 0.0],
        vec![1e30, -1e30, 1.0],
        vec![f32::MAX, f32::MIN, 0.5],
    ];
    for r in rows {
        let k = r.len();
        check(&r, 1, k);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn equals_reference(m in 1usize..6, k in 1usize..700, seed in any::<u64>(), scale in -20i32..20) {
        let mut s = seed | 1;
        let amp = 2f32.powi(scale);
        let x: Vec<f32> = (0..m * k)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect();
        check(&x, m, k);
    }
}
