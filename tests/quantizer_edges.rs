//! Edge cases of the format quantizers where a vectorised formula could drift from the
//! upstream reference: the 1e-6 threshold of bitnet.cpp's I2_S quantizer (compared in f64),
//! exact ±0.5 ties of ggml's `lroundf`, NaN, infinities and subnormal block maxima.
//! Every compiled quantize kernel this CPU runs must agree with the reference byte for byte.

use ternforge::{quantize_with, reference, Format, KernelOp, KERNELS};

fn edge_values() -> Vec<f32> {
    let t = 1e-6f32; // the f32 nearest 1e-6 lies just below 1e-6 (f64)
    let up = f32::from_bits(t.to_bits() + 1);
    let down = f32::from_bits(t.to_bits() - 1);
    vec![
        0.0,
        -0.0,
        t,
        -t,
        up,
        -up,
        down,
        -down,
        1.0,
        -1.0,
        0.5,
        -0.5,
        0.25,
        -0.25,
        0.75,
        -0.75,
        0.4999999,
        -0.4999999,
        0.5000001,
        -0.5000001,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        3.0,
        -3.0,
        1e30,
        -1e30,
    ]
}

fn check_all(name: &str, x: &[f32], n: usize, k: usize) {
    for e in KERNELS.iter().filter(|e| e.op == KernelOp::Quantize) {
        if !e.runnable() {
            println!("skipped: {} ({name})", e.id);
            continue;
        }
        let f = e.format;
        if f.check_shape(n, k).is_err() {
            continue;
        }
        let want = reference::quantize(f.spec(), x, n, k);
        let got = quantize_with(e, f, x, n, k).unwrap();
        assert_eq!(got, want, "{} differs from the reference on {name}", e.id);
    }
}

fn fill(k: usize, pattern: &[f32]) -> Vec<f32> {
    (0..k)
        .map(|i| pattern[(i * 7 + i / 5) % pattern.len()])
        .collect()
}

#[test]
fn thresholds_and_ties() {
    let k = 768; // multiple of 64, 128 and 256
    let v = edge_values();
    check_all("edge values", &fill(k, &v), 1, k);
    // a block whose max is 1.0 makes t = x exactly; ±0.5 are ties rounding away from zero
    check_all(
        "ties",
        &fill(k, &[1.0, 0.5, -0.5, 0.0, -1.0, 0.49999997, -0.50000006]),
        1,
        k,
    );
}

#[test]
fn special_values() {
    let k = 512;
    check_all("nan", &fill(k, &[f32::NAN, 1.0, -0.5, 0.0]), 1, k);
    check_all(
        "inf",
        &fill(k, &[f32::INFINITY, 1.0, -0.5, f32::NEG_INFINITY]),
        1,
        k,
    );
    check_all(
        "subnormal max",
        &fill(k, &[1e-40, -1e-40, 5e-41, 0.0]),
        1,
        k,
    );
    check_all("all zero", &vec![0.0; k], 1, k);
}

#[test]
fn i2s_matches_bitnet_threshold_semantics() {
    // |x| < 1e-6 (in f64) is zero, anything else keeps its sign
    let t = 1e-6f32;
    let up = f32::from_bits(t.to_bits() + 1);
    let mut x = vec![0f32; 128];
    x[0] = t; // (double)1e-6f < 1e-6: zero
    x[1] = up; // >= 1e-6: +1
    x[2] = -up; // -1
    x[3] = 0.9; // sets the tensor scale
    let packed = reference::quantize(Format::I2S.spec(), &x, 1, 128);
    let w = reference::decode(Format::I2S.spec(), &packed, 1, 128).w;
    assert_eq!(&w[..4], &[0, 1, -1, 1]);
    check_all("i2s threshold", &x, 1, 128);
}
