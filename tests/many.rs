//! `matmul_prepared_many` (several weights sharing one prepared activation set, run as one
//! parallel region) must give exactly the outputs of one `matmul_prepared` per weight, and
//! reject a bad weight or output before running anything.

use ternforge::{
    matmul_prepared, matmul_prepared_many, prepare_for, quantize, quantize_acts, select_matmul,
    Format, KernelError, PackedWeights,
};

mod common;

fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = common::Rng::new(seed);
    (0..n * k).map(|_| rng.trit() as f32 * 0.5).collect()
}

#[test]
fn equals_one_call_per_weight() {
    for f in [Format::I2S, Format::QK256, Format::TQ1_0, Format::TL2] {
        let k = 1024;
        // sizes that cut into uneven chunks across weights (and are large enough to go
        // parallel for m = 1 too: 1550 rows x 1024 >= 2^20 MACs)
        let shapes = [1030usize, 260, 260];
        let packed: Vec<Vec<u8>> = shapes
            .iter()
            .enumerate()
            .map(|(i, &n)| quantize(f, &weights(n, k, 7 + i as u64), n, k).unwrap())
            .collect();
        let views: Vec<PackedWeights> = packed
            .iter()
            .zip(shapes)
            .map(|(d, n)| PackedWeights::new(f, d, n, k).unwrap())
            .collect();
        for m in [1usize, 5] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let acts = quantize_acts(&x, m, k).unwrap();
            let e = select_matmul(f, m).unwrap();
            let p = prepare_for(e, &acts).unwrap();
            let want: Vec<Vec<f32>> = views
                .iter()
                .map(|w| {
                    let mut y = vec![0f32; m * w.n()];
                    matmul_prepared(e, w, &p, &mut y).unwrap();
                    y
                })
                .collect();
            let mut got: Vec<Vec<f32>> = views.iter().map(|w| vec![0f32; m * w.n()]).collect();
            let mut jobs: Vec<(PackedWeights, &mut [f32])> = views
                .iter()
                .zip(got.iter_mut())
                .map(|(w, y)| (*w, y.as_mut_slice()))
                .collect();
            matmul_prepared_many(e, &mut jobs, &p).unwrap();
            for (g, w) in got.iter().zip(&want) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(g), bits(w), "{} m={m}", e.id);
            }
        }
    }
}

#[test]
fn bad_jobs_are_errors() {
    let (f, k) = (Format::I2S, 256);
    let a = quantize(f, &weights(8, k, 1), 8, k).unwrap();
    let b = quantize(f, &weights(8, 2 * k, 2), 8, 2 * k).unwrap();
    let wa = PackedWeights::new(f, &a, 8, k).unwrap();
    let wb = PackedWeights::new(f, &b, 8, 2 * k).unwrap();
    let acts = quantize_acts(&vec![0.5f32; k], 1, k).unwrap();
    let e = select_matmul(f, 1).unwrap();
    let p = prepare_for(e, &acts).unwrap();
    let (mut y1, mut y2) = (vec![0f32; 8], vec![0f32; 7]);
    let r = matmul_prepared_many(e, &mut [(wa, &mut y1), (wa, &mut y2)], &p);
    assert!(
        matches!(
            r,
            Err(KernelError::BufferLength {
                expected: 8,
                got: 7,
                ..
            })
        ),
        "{r:?}"
    );
    let mut y3 = vec![0f32; 8];
    let r = matmul_prepared_many(e, &mut [(wa, &mut y1), (wb, &mut y3)], &p);
    assert!(matches!(r, Err(KernelError::Activations(_))), "{r:?}");
    // nothing was written by the rejected calls
    assert!(y1.iter().all(|&v| v == 0.0));
    // no jobs: nothing to do
    assert_eq!(matmul_prepared_many(e, &mut [], &p), Ok(()));
}
