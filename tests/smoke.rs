use ternforge::*;
#[test]
fn smoke() {
    for e in KERNELS.iter().filter(|e| e.runnable()) {
        let f = e.format;
        let (n, k) = (13usize, 512usize);
        let mut s = 12345u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let w: Vec<f32> = (0..n * k)
            .map(|_| {
                [-0.25f32, 0.0, 0.25][(rnd() % 3) as usize]
                    * if f.spec().scale == table::ScaleRule::BlockF16 {
                        1.0 + (rnd() % 7) as f32
                    } else {
                        1.0
                    }
            })
            .collect();
        let packed = reference::quantize(f.spec(), &w, n, k);
        match e.op {
            KernelOp::Quantize => {
                let q = quantize_with(e, f, &w, n, k).unwrap();
                assert_eq!(q, packed, "{}", e.id);
            }
            KernelOp::Dequantize => {
                let pw = PackedWeights::new(f, &packed, n, k).unwrap();
                let mut o = vec![0f32; n * k];
                dequantize_with(e, &pw, &mut o).unwrap();
                assert_eq!(
                    o,
                    reference::dequantize(f.spec(), &packed, n, k),
                    "{}",
                    e.id
                );
            }
            KernelOp::Matmul(_) => {
                let pw = PackedWeights::new(f, &packed, n, k).unwrap();
                for m in [1usize, 3, 5, 9] {
                    let x: Vec<f32> = (0..m * k)
                        .map(|_| (rnd() % 2001) as f32 / 1000.0 - 1.0)
                        .collect();
                    let a = quantize_acts(&x, m, k).unwrap();
                    let mut o = vec![0f32; m * n];
                    matmul_with(e, &pw, &a, &mut o).unwrap();
                    let r = reference::matmul(f.spec(), &packed, n, k, &a);
                    assert_eq!(o, r, "{} m={m}", e.id);
                }
            }
        }
        println!("ok {}", e.id);
    }
}
